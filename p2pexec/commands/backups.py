"""
The commands of backup copies (issue 15, tail: p2pexec/speculation.py).

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from twisted.protocols import amp

from p2pexec.commands.arguments import JSON
from p2pexec.commands.errors import (
    StaleBallot,
    _errors,
)

# -- Backup copies (issue 15, tail: p2pexec/speculation.py) -----------------------------


class CancelAttempts(amp.Command):
    """
    CANCEL_ATTEMPTS, from a job's master to a worker (after the handshake):
    stop these attempts of the job, the losing copies of tasks that ran
    twice (a backup finished first, or the original did).  C{tasks} is a list
    of C{{"id": task id, "attempt": attempt}} objects; the worker stops each
    one it holds for this master (queued ones never start, running ones are
    terminated with their process groups) and sends no result for them.  An
    attempt it does not hold (finished, never arrived) is skipped.  The
    answer counts the attempts stopped and dropped.  C{epoch}, as in
    CANCEL_JOB: STALE_BALLOT if the worker has seen a newer ballot for the job.
    A peer without this command answers UNKNOWN_COMMAND: the losing copy runs
    to its end, and its result is dropped as stale.
    """

    commandName = b"CANCEL_ATTEMPTS"
    arguments = [(b"job", amp.Unicode()), (b"tasks", JSON()), (b"epoch", amp.Integer(optional=True))]
    response = [(b"cancelled", amp.Integer())]
    errors = _errors(STALE_BALLOT=StaleBallot)
