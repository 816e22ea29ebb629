"""
The client commands: submitting, listing, following and cancelling jobs, cluster and node status.

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON
from p2pexec.commands.errors import (
    BadJob,
    JournalUnwritable,
    ShuttingDown,
    StaleBallot,
    UnknownJob,
    UnknownUpload,
    _errors,
)


class CancelJob(amp.Command):
    """
    CANCEL_JOB: sent to a job's master (by an operator's client or any
    peer), it cancels the job: no task without a result starts, and the
    master sends CANCEL_JOB on to every worker holding some of its tasks,
    which stop them (their process groups) and send no result for them.
    The answer counts the tasks cancelled (on the master) or stopped and
    dropped (on a worker).
    """

    commandName = b"CANCEL_JOB"
    arguments = [(b"job", amp.Unicode()), (b"epoch", amp.Integer(optional=True))]
    response = [(b"cancelled", amp.Integer())]
    errors = _errors(UNKNOWN_JOB=UnknownJob, STALE_BALLOT=StaleBallot)


class SubmitJob(amp.Command):
    """
    SUBMIT_JOB, from an operator's client (no handshake needed): hand the
    receiving node a job, which it becomes the master of.  A job too big for
    one AMP value is sent in parts: each part but the last has C{final}
    false and is answered with an C{upload} id that the next part quotes;
    the last (C{final} true) is answered with the C{job} id, once the job is
    in the master's journal.  Tasks are job-file task objects (see
    docs/jobs.rst), C{defaults} a job file's [defaults] table; C{priority}
    (optional, read from the last part) the job's priority (issue 15).
    """

    commandName = b"SUBMIT_JOB"
    arguments = [
        (b"tasks", JSON()),
        (b"defaults", JSON()),
        (b"upload", amp.Unicode()),
        (b"final", amp.Boolean()),
        (b"priority", amp.Integer(optional=True)),
    ]
    response = [
        (b"upload", amp.Unicode()),
        (b"job", amp.Unicode()),
    ]
    errors = _errors(
        BAD_JOB=BadJob, UNKNOWN_UPLOAD=UnknownUpload, SHUTTING_DOWN=ShuttingDown, JOURNAL_UNWRITABLE=JournalUnwritable
    )


CLIENT_OUTPUT_TAIL = 8 * 1024
"""JOB_TASKS gives at most this much of each output tail (the HTTP API gives all of it)."""


class ListJobs(amp.Command):
    """
    LIST_JOBS, from a client: the jobs this node is master of, newest first,
    as summaries; then those it holds replica records of (marked
    C{"answered_by": "replica"}).
    """

    commandName = b"LIST_JOBS"
    arguments = []
    response = [(b"jobs", JSON())]
    errors = _errors()


class JobStatus(amp.Command):
    """JOB_STATUS, from a client: one job's summary (see docs/api.rst for its fields)."""

    commandName = b"JOB_STATUS"
    arguments = [(b"job", amp.Unicode())]
    response = [(b"status", JSON())]
    errors = _errors(UNKNOWN_JOB=UnknownJob)


class JobTasks(amp.Command):
    """
    JOB_TASKS, from a client: a page of one job's tasks with their results,
    from C{offset}; the answer holds as many as fit in one AMP value (at
    most C{limit}) and the C{next} offset (-1 after the last).
    """

    commandName = b"JOB_TASKS"
    arguments = [
        (b"job", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"limit", amp.Integer()),
    ]
    response = [
        (b"tasks", JSON()),
        (b"next", amp.Integer()),
    ]
    errors = _errors(UNKNOWN_JOB=UnknownJob)


class ClusterStatus(amp.Command):
    """CLUSTER_STATUS, from a client: this node and its peers, as docs/api.rst's peer objects."""

    commandName = b"CLUSTER_STATUS"
    arguments = []
    response = [
        (b"node", JSON()),
        (b"peers", JSON()),
    ]
    errors = _errors()


class NodeStatus(amp.Command):
    """
    NODE_STATUS, between peers (after the handshake): the sender wants the
    receiver's load and links, for its dashboard and status views.
    """

    commandName = b"NODE_STATUS"
    arguments = []
    response = [(b"status", JSON())]
    errors = _errors()
