"""
The AMP commands of the p2pexec wire protocol: declarations only.

Each command pins its wire name (the message name of the original system)
and declares every error it can answer with, so that a refusal keeps the
connection open.  Lists travel as one JSON value per AMP key; a list longer
than one AMP value allows (65,535 bytes) is split into several commands by
L{chunk} (see L{p2pexec.chunking}).

The full contract, with every field and error, is in C{docs/protocol.rst}.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from p2pexec.chunking import MAX_VALUE_BYTES as MAX_VALUE_BYTES
from p2pexec.chunking import Chunk as Chunk
from p2pexec.chunking import chunk as chunk
from p2pexec.chunking import encode_json as encode_json
from p2pexec.chunking import encode_result_within as encode_result_within
from p2pexec.model import loads_strict


class JSON(amp.Argument):
    """
    An AMP argument holding a JSON document (UTF-8, compact).

    Decoding errors surface as L{BadArguments} through
    L{p2pexec.peer.PeerProtocol.locateResponder}.
    """

    def toString(self, inObject: Any) -> bytes:
        """Encode C{inObject} as compact UTF-8 JSON (a L{Chunk} is encoded already)."""
        if isinstance(inObject, Chunk):
            return inObject.encoded
        return encode_json(inObject)

    def fromString(self, inString: bytes) -> Any:
        """Decode UTF-8 JSON (a lone surrogate is refused, as malformed)."""
        return loads_strict(inString)


class RawJSON(JSON):
    """
    A JSON argument taken as its bytes, undecoded (REPLICATE's records: a
    replica stores them as received, and decodes them only when it needs
    them).  The wire is the same as L{JSON}'s.
    """

    def toString(self, inObject: Any) -> bytes:
        """Bytes as they are, else as L{JSON} encodes."""
        if isinstance(inObject, bytes):
            return inObject
        return super().toString(inObject)

    def fromString(self, inString: bytes) -> Any:
        """The bytes, undecoded."""
        return inString


class BadArguments(Exception):
    """A command's arguments are missing, malformed or out of range."""


class ConnectRequired(Exception):
    """A command other than CONNECT_REQUEST arrived before CONNECT_REQUEST."""


class ClusterMismatch(Exception):
    """The two nodes belong to different clusters."""


class VersionMismatch(Exception):
    """The two nodes speak different protocol versions."""


class DuplicateConnection(Exception):
    """The two nodes are already connected; the new connection is refused."""


class NameConflict(Exception):
    """Another live node already uses this name in the cluster."""


class ShuttingDown(Exception):
    """The node is leaving and takes no new connections or tasks."""


class JournalUnwritable(Exception):
    """The node's journal cannot be written (a full disk, say): it accepts no new job until it can."""


class NotCapable(Exception):
    """An assignment holds a task of a kind this node does not run."""


class UnknownJob(Exception):
    """A confirmation names a job this node is not the master of."""


class BadJob(Exception):
    """A submitted job is not valid; the description names the task and field."""


class UnknownUpload(Exception):
    """A SUBMIT_JOB continues an upload this connection did not start."""


class AuthRequired(Exception):
    """A command other than AUTHENTICATE arrived on a connection not yet authenticated; it is closed."""


class AuthFailed(Exception):
    """The other side does not hold the cluster key; the connection is closed."""


class StaleBallot(Exception):
    """
    A job-scoped command, or a REPLICATE or PROMISE, comes from a ballot
    older than one the receiver has seen or promised for that job (its
    sender was deposed).  The description is JSON naming the newer ballot:
    C{{"job", "epoch", "leader", "message"}} (see L{p2pexec.replicas.stale_description}).
    """


_COMMON_ERRORS: dict[type[Exception], bytes] = {
    BadArguments: b"BAD_ARGUMENTS",
    ConnectRequired: b"CONNECT_REQUIRED",
    AuthRequired: b"AUTH_REQUIRED",
}


def _errors(**more: type[Exception]) -> dict[type[Exception], bytes]:
    errors = dict(_COMMON_ERRORS)
    for code, error in more.items():
        errors[error] = code.encode("ascii")
    return errors


class Authenticate(amp.Command):
    """
    AUTHENTICATE, the first command on a connection of a cluster with a key:
    the dialler's random C{nonce}; the acceptor answers with its own and
    its C{proof} (HMAC-SHA256, with the connection key, of "acceptor" and
    both nonces).  See docs/security.rst.
    """

    commandName = b"AUTHENTICATE"
    arguments = [(b"nonce", amp.String())]
    response = [(b"nonce", amp.String()), (b"proof", amp.String())]
    errors = _errors(AUTH_FAILED=AuthFailed)


class AuthProof(amp.Command):
    """AUTH_PROOF: the dialler's C{proof} ("dialler" and both nonces); then the connection is open."""

    commandName = b"AUTH_PROOF"
    arguments = [(b"proof", amp.String())]
    response = []
    errors = _errors(AUTH_FAILED=AuthFailed)


class ConnectRequest(amp.Command):
    """
    CONNECT_REQUEST, answered by CONNECT_ACK: the dialling node introduces
    itself.  It must be the first command on a connection.
    """

    commandName = b"CONNECT_REQUEST"
    arguments = [
        (b"cluster", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"instance", amp.Unicode()),
        (b"version", amp.Integer()),
    ]
    response = [
        (b"name", amp.Unicode()),
        (b"instance", amp.Unicode()),
        (b"version", amp.Integer()),
    ]
    errors = _errors(
        CLUSTER_MISMATCH=ClusterMismatch,
        VERSION_MISMATCH=VersionMismatch,
        DUPLICATE_CONNECTION=DuplicateConnection,
        NAME_CONFLICT=NameConflict,
        SHUTTING_DOWN=ShuttingDown,
    )


class Handshake(amp.Command):
    """
    HANDSHAKE, answered by HANDSHAKE_RESPONSE: both sides exchange their full
    node description (address, capabilities, slots).
    """

    commandName = b"HANDSHAKE"
    arguments = [(b"node", JSON())]
    response = [(b"node", JSON())]
    errors = _errors(
        CLUSTER_MISMATCH=ClusterMismatch,
        VERSION_MISMATCH=VersionMismatch,
    )


class PeerExchange(amp.Command):
    """
    PEER_EXCHANGE: each side sends the peers it knows and gets the other's
    list back, so that membership spreads even where datagrams are lost.
    """

    commandName = b"PEER_EXCHANGE"
    arguments = [(b"peers", JSON())]
    response = [(b"peers", JSON())]
    errors = _errors()


class InstructionAssignment(amp.Command):
    """
    INSTRUCTION_ASSIGNMENT: the master hands a worker a batch of tasks of one
    job.  The answer says how many were accepted (all, or an error).
    """

    commandName = b"INSTRUCTION_ASSIGNMENT"
    arguments = [
        (b"job", amp.Unicode()),
        (b"master", amp.Unicode()),
        (b"master_instance", amp.Unicode()),
        (b"tasks", JSON()),
        (b"epoch", amp.Integer(optional=True)),
    ]
    response = [(b"accepted", amp.Integer())]
    errors = _errors(
        NOT_CAPABLE=NotCapable,
        SHUTTING_DOWN=ShuttingDown,
        STALE_BALLOT=StaleBallot,
    )


class ExecutionConfirmation(amp.Command):
    """
    EXECUTION_CONFIRMATION: a worker reports a batch of finished attempts to
    the job's master.  The answer counts the results applied and the stale
    ones dropped.
    """

    commandName = b"EXECUTION_CONFIRMATION"
    arguments = [
        (b"job", amp.Unicode()),
        (b"results", JSON()),
        (b"epoch", amp.Integer(optional=True)),
    ]
    response = [
        (b"applied", amp.Integer()),
        (b"stale", amp.Integer()),
        (b"epoch", amp.Integer(optional=True)),
    ]
    errors = _errors(UNKNOWN_JOB=UnknownJob)


class TaskComplete(amp.Command):
    """
    TASK_COMPLETE: the master tells each worker that took part that the job
    has finished, with its totals.
    """

    commandName = b"TASK_COMPLETE"
    arguments = [
        (b"job", amp.Unicode()),
        (b"succeeded", amp.Integer()),
        (b"failed", amp.Integer()),
        (b"elapsed", amp.Float()),
        (b"epoch", amp.Integer(optional=True)),
    ]
    response = []
    errors = _errors()


class DisconnectRequest(amp.Command):
    """
    DISCONNECT_REQUEST, answered by DISCONNECT_ACK: the sender is leaving.
    The receiver puts back any of the sender's unconfirmed tasks at once,
    answers, and expects the connection to close.
    """

    commandName = b"DISCONNECT_REQUEST"
    arguments = [(b"reason", amp.Unicode())]
    response = []
    errors = _errors()


class Heartbeat(amp.Command):
    """
    HEARTBEAT: "are you there?"  Sent on a connection where work flows
    whenever it has been quiet for one heartbeat interval; the answer (like
    any other bytes) shows the sender is alive.
    """

    commandName = b"HEARTBEAT"
    arguments = []
    response = []
    errors = _errors()


class ResultQuery(amp.Command):
    """
    RESULT_QUERY: a master that restarted (or reconnected) asks a worker what
    became of attempts it had assigned to it.  The worker answers with the
    task ids in three lists: C{done} (their results follow again as
    EXECUTION_CONFIRMATION, from the worker's cache), C{running} (queued or
    running: their confirmations will come), and C{unknown} (the worker does
    not have them: the master runs them again).
    """

    commandName = b"RESULT_QUERY"
    arguments = [
        (b"job", amp.Unicode()),
        (b"tasks", JSON()),
        (b"epoch", amp.Integer(optional=True)),
    ]
    response = [
        (b"done", JSON()),
        (b"running", JSON()),
        (b"unknown", JSON()),
    ]
    errors = _errors()


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
    docs/jobs.rst), C{defaults} a job file's [defaults] table.
    """

    commandName = b"SUBMIT_JOB"
    arguments = [
        (b"tasks", JSON()),
        (b"defaults", JSON()),
        (b"upload", amp.Unicode()),
        (b"final", amp.Boolean()),
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


# -- Replication and failover (issue 13, core) ------------------------------------------------------


class Replicate(amp.Command):
    """
    REPLICATE: a job's master sends records of the job's log to a member of
    its replica set, under its ballot (C{ballot_epoch}, C{ballot_node}).
    C{records} is a JSON list of C{{"seq", "kind", "data"}} objects, in
    seq order from C{first_seq} to C{last_seq} (optional: without it, the
    receiver decodes the records to count them).  The answer, once the
    records are durable in the receiver's journal: C{held_seq}, the highest
    seq up to which it holds every record of the job.
    """

    commandName = b"REPLICATE"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"first_seq", amp.Integer()),
        (b"records", RawJSON()),
        (b"last_seq", amp.Integer(optional=True)),
    ]
    response = [(b"held_seq", amp.Integer())]
    errors = _errors(STALE_BALLOT=StaleBallot)


class Promise(amp.Command):
    """
    PROMISE: a successor asks a member of a job's replica set to promise its
    ballot (never again to take records of a lower one; written to its
    journal before it answers).  The answer: C{held_seq}, the ballot it last
    accepted records under (C{accepted_epoch} 0 and C{accepted_node} empty
    for none), and the C{records} it holds with seq above C{after_seq}
    (C{{"seq", "kind", "data", "epoch", "node"}}, as many as fit in one
    value), then C{next_seq}: the C{after_seq} to ask with for the rest, or
    -1 after the last.  A member that holds nothing of the job promises too
    (and says so: C{held_seq} 0, no records).
    """

    commandName = b"PROMISE"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"after_seq", amp.Integer()),
    ]
    response = [
        (b"held_seq", amp.Integer()),
        (b"accepted_epoch", amp.Integer()),
        (b"accepted_node", amp.Unicode()),
        (b"records", JSON()),
        (b"next_seq", amp.Integer()),
    ]
    errors = _errors(STALE_BALLOT=StaleBallot)


class JobLeader(amp.Command):
    """
    JOB_LEADER: a node that took a job over tells every connected peer that
    it leads the job now, at ballot (C{ballot_epoch}, C{ballot_node}); its
    name is C{master}.  An older master of the job that hears it steps
    down; workers raise their fence for the job.
    """

    commandName = b"JOB_LEADER"
    arguments = [
        (b"job", amp.Unicode()),
        (b"ballot_epoch", amp.Integer()),
        (b"ballot_node", amp.Unicode()),
        (b"master", amp.Unicode()),
    ]
    response = []
    errors = _errors()


# -- Master failover: fencing and adoption (issue 13, fence) ----------------------------


class HeldTasks(amp.Command):
    """
    HELD_TASKS: a job's new leader (after a takeover, at ballot C{epoch} and
    its own name) asks a worker what it holds of the job.  The worker answers
    with C{running}: C{[task id, attempt]} pairs queued or running there (or
    finished, when their results did not fit in C{finished}: those come as
    EXECUTION_CONFIRMATION), and C{finished}: C{{"id", "attempt", "result"}}
    objects, results not yet acknowledged.  Its kept results of the job then
    go to the new leader as EXECUTION_CONFIRMATION.  STALE_BALLOT if the
    worker has seen a newer ballot for the job.
    """

    commandName = b"HELD_TASKS"
    arguments = [(b"job", amp.Unicode()), (b"epoch", amp.Integer())]
    response = [(b"running", JSON()), (b"finished", JSON())]
    errors = _errors(STALE_BALLOT=StaleBallot)


# -- Clients follow the job (issue 13, part 4) -------------------------------------


FORWARDED_COMMANDS = ("JOB_STATUS", "JOB_TASKS", "CANCEL_JOB", "RERUN_TASKS")
"""The client commands a node forwards (FORWARD_CLIENT) to a job's master it is connected to."""


class ForwardClient(amp.Command):
    """
    FORWARD_CLIENT, between peers (after the handshake): a node asks a job's
    master, on behalf of one of its own clients, one of the client commands
    of L{FORWARDED_COMMANDS} about a job it does not lead.  C{command} is the
    client command's name, C{arguments} its arguments as a JSON object
    (C{job}, and for JOB_TASKS C{offset} and C{limit}), C{client} says who
    asked (for the master's log line).  The answer is the client command's
    own answer, as a JSON object of its response fields.

    The receiver answers only from the jobs it leads itself: it never
    forwards again (one hop, so no loop), and answers UNKNOWN_JOB for a job
    it does not lead.  A forwarded CANCEL_JOB is taken only on a connection
    that proved the cluster key: without one, AUTH_REQUIRED (a peer proves
    nothing about the client's local token).
    """

    commandName = b"FORWARD_CLIENT"
    arguments = [
        (b"command", amp.Unicode()),
        (b"arguments", JSON()),
        (b"client", amp.Unicode()),
    ]
    response = [(b"answer", JSON())]
    errors = _errors(UNKNOWN_JOB=UnknownJob)


# Issue 14: task output (shared by client and logs)


TASK_OUTPUT_LIMIT = 60_000
"""The most bytes of output one TASK_OUTPUT answer carries (it fits one AMP value)."""


class UnknownTask(Exception):
    """The job has no task of that id."""


class NotStarted(Exception):
    """The task has no attempt that started yet: ask again later."""


class OutputGone(Exception):
    """The worker that held the attempt's output is gone, keeps none, or removed it."""


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


class JobRunning(Exception):
    """The job has not ended yet: nothing of it can be run again."""


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


# -- Master failover: the takeover's pre-round (issue 13, prevote) -------------------------


class PrePromise(amp.Command):
    """
    PRE_PROMISE: a successor about to take a job over asks a member of its
    replica set whether it would promise C{ballot} (see L{Promise}), before
    anyone (itself included) promises anything.  The receiver changes
    nothing.  C{granted}: it would promise that ballot, and it has lost the
    job's leader itself (it has no live connection to the leader it knows,
    or that leader is the asker).  Otherwise C{leader_epoch} and
    C{leader_node} name the leader it still has (the receiver itself, when
    it leads the job); 0 and empty when granted.  C{STALE_BALLOT} if it
    promised a higher ballot.
    """

    commandName = b"PRE_PROMISE"
    arguments = [(b"job", amp.Unicode()), (b"ballot_epoch", amp.Integer()), (b"ballot_node", amp.Unicode())]
    response = [(b"granted", amp.Boolean()), (b"leader_epoch", amp.Integer()), (b"leader_node", amp.Unicode())]
    errors = _errors(STALE_BALLOT=StaleBallot)
