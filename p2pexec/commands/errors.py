"""
The errors the AMP commands declare (each answered on the wire by its code; the connection stays up).

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations


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


class DoesNotFit(Exception):
    """A task asks for more CPUs, memory, GPUs or named resources than the node has at all (issue 15)."""


class UnknownJob(Exception):
    """A confirmation names a job this node is not the master of."""


class UnknownTask(Exception):
    """The job has no task of that id (issue 14)."""


class NotStarted(Exception):
    """The task has no attempt that started yet: ask again later (issue 14)."""


class OutputGone(Exception):
    """The worker that held the attempt's output is gone, keeps none, or removed it (issue 14)."""


class JobRunning(Exception):
    """The job has not ended yet: nothing of it can be run again (issue 14)."""


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


# -- Files (issue 16, part "wire": p2pexec/file_service.py) -------------------------


class TransferRefused(Exception):
    """A PUT_BLOB (or a transfer) was refused: the description says why, in one sentence."""


class NoSuchBlob(Exception):
    """A FETCH_BLOB names a blob that neither this node nor any peer it can ask holds."""


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
