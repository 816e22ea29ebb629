"""
The commands between nodes: authentication, connection, assignment, results, heartbeats.

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON
from p2pexec.commands.errors import (
    AuthFailed,
    ClusterMismatch,
    DoesNotFit,
    DuplicateConnection,
    NameConflict,
    NotCapable,
    ShuttingDown,
    StaleBallot,
    UnknownJob,
    VersionMismatch,
    _errors,
)


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
        DOES_NOT_FIT=DoesNotFit,
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
