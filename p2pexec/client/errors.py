"""
The exceptions of L{p2pexec.client}: one hierarchy under L{ClientError},
each with a one-line C{message} that names the node and the reason, fit to
print as it is.

A program that only wants to report the failure catches L{ClientError}; one
that reacts to some of them catches the subclass (L{JobNotFound} to stop
asking, L{ConnectionLost} to ask another node, L{OutputNotReady} to ask
again later).
"""

from __future__ import annotations


class ClientError(Exception):
    """
    A connection or a command failed: C{message} says which node, and why,
    in one line.

    @ivar lost: whether the connection to the node was lost (closed, reset,
        or silent past the timeout), so that another node may be asked.
    """

    def __init__(self, message: str, lost: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.lost = lost


class BadAddress(ClientError, ValueError):
    """The node's address is not C{HOST:PORT}, C{HOST} or C{[IPV6]:PORT} (a L{ValueError} too)."""


class KeyProblem(ClientError):
    """The key file cannot be read, or holds no key; or TLS was asked for without a key."""


class ConnectFailed(ClientError):
    """The node cannot be reached: refused, timed out, unknown host, failed TLS handshake."""


class AuthenticationFailed(ClientError):
    """The node and this key do not match, or the node wants a key (or its owner's local token)."""


class ConnectionLost(ClientError):
    """The connection was closed, reset, or silent past the timeout; another node may know the job."""

    def __init__(self, message: str, lost: bool = True) -> None:
        super().__init__(message, lost)


class JobNotFound(ClientError):
    """No node asked knows the job (UNKNOWN_JOB)."""


class TaskNotFound(ClientError):
    """The job has no task of that id (UNKNOWN_TASK)."""


class JobRefused(ClientError):
    """The node refused a job: a bad task, a full journal, or it is shutting down."""


class OutputNotReady(ClientError):
    """The task has not started yet, so it has no output (NOT_STARTED): ask again later."""


class OutputGone(ClientError):
    """The worker that held the task's output is gone, or forgot it (OUTPUT_GONE)."""


class NodeError(ClientError):
    """The node answered with another error, or does not know the command (an older p2pexec)."""


class ClientClosed(ClientError):
    """The client was closed, or used where it cannot work (the reactor's own thread)."""
