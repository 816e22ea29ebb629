"""
The client commands: submitting, listing, following, cancelling and rerunning jobs, task output,
cluster and node status.

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON
from p2pexec.commands.errors import (
    BadJob,
    JobRunning,
    JournalUnwritable,
    NotStarted,
    OutputGone,
    ShuttingDown,
    StaleBallot,
    UnknownJob,
    UnknownTask,
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
    most C{limit}) and the C{next} offset (-1 after the last); C{state}: only those in these states.
    """

    commandName = b"JOB_TASKS"
    arguments = [
        (b"job", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"limit", amp.Integer()),
        (b"state", amp.Unicode(optional=True)),
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


# Issue 14: task output (shared by client and logs)


TASK_OUTPUT_LIMIT = 60_000
"""The most bytes of output one TASK_OUTPUT answer carries (it fits one AMP value)."""


class TaskOutput(amp.Command):
    """
    TASK_OUTPUT: a piece (at most C{limit}, 60,000, bytes from C{offset}) of a
    stream of a task's newest attempt, from any node: the job's master asks
    the worker that holds it (naming C{attempt}). See docs/protocol.rst.
    """

    commandName = b"TASK_OUTPUT"
    arguments = [
        (b"job", amp.Unicode()),
        (b"task", amp.Unicode()),
        (b"stream", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"limit", amp.Integer(optional=True)),
        (b"attempt", amp.Integer(optional=True)),
    ]
    response = [
        (b"data", amp.String()),
        (b"next_offset", amp.Integer()),
        (b"size", amp.Integer()),
        (b"ended", amp.Boolean()),
        (b"cut", amp.Boolean()),
        (b"attempt", amp.Integer()),
        (b"node", amp.Unicode()),
    ]
    errors = _errors(UNKNOWN_JOB=UnknownJob, UNKNOWN_TASK=UnknownTask, NOT_STARTED=NotStarted, OUTPUT_GONE=OutputGone)


# -- Rerun what failed (issue 14, rerun) -------------------------------------------


class RerunTasks(amp.Command):
    """
    RERUN_TASKS, from an operator's client (no handshake needed; forwarded
    to the job's master like CANCEL_JOB): run again, as new attempts of the
    same job, the tasks of a finished job chosen by C{which}: C{"failed"},
    every task whose result is not a success (failed, timed-out, error,
    cancelled).  The master reopens the job and answers once that is in its
    journal (and, for a replicated job, committed): C{count}, how many tasks
    run again (0: nothing to run again, the job is left as it was), and
    C{tasks}, their ids (as many as fit in one AMP value).
    """

    commandName = b"RERUN_TASKS"
    arguments = [(b"job", amp.Unicode()), (b"which", amp.Unicode())]
    response = [(b"count", amp.Integer()), (b"tasks", JSON())]
    errors = _errors(UNKNOWN_JOB=UnknownJob, JOB_RUNNING=JobRunning, JOURNAL_UNWRITABLE=JournalUnwritable)
