"""
Starting a task's process in a session (and so a process group) of its own.

Killing a task must kill everything it started, so each task runs in its own
process group.  The portable way is the C{setsid} program as a wrapper, but
that costs a second C{exec} per task: at two slots, 2,000 quick tasks took
about 0.8 s longer.  Twisted's L{Process} starts children with
C{posix_spawnp} when it can (and forks otherwise); L{SessionProcess} asks
C{posix_spawnp} for a new session directly, and calls C{setsid()} in the
forked child otherwise.

This leans on two private hooks of L{twisted.internet.process.Process}.
L{available} says whether they are there; where they are not, the executor
falls back to the C{setsid} wrapper.
"""

from __future__ import annotations

import fcntl
import os
import signal
from typing import Any

from twisted.internet import process as _process

_HOOKS = ("_trySpawnInsteadOfFork", "_execChild")
_HELPERS = ("_listOpenFDs", "_getFileActions", "_PS_CLOSE", "_PS_DUP2")


def available() -> bool:
    """Whether this Twisted has the hooks L{SessionProcess} needs."""
    return (
        getattr(os, "posix_spawnp", None) is not None
        and all(hasattr(_process.Process, name) for name in _HOOKS)
        and all(hasattr(_process, name) for name in _HELPERS)
    )


class SessionProcess(_process.Process):
    """A L{Process} whose child leads a new session and process group."""

    def _execChild(self, path: Any, uid: Any, gid: Any, executable: Any, args: Any, environment: Any) -> None:
        """In the forked child: a session of its own, then exec as usual."""
        os.setsid()
        super()._execChild(path, uid, gid, executable, args, environment)

    def _trySpawnInsteadOfFork(
        self, path: Any, uid: Any, gid: Any, executable: Any, args: Any, environment: Any, kwargs: Any
    ) -> bool:
        """
        As L{Process._trySpawnInsteadOfFork} (same conditions, same file
        actions, same signal resets), with C{setsid=True}.
        """
        if (
            uid is not None
            or gid is not None
            or (path is not None and os.path.abspath(path) != os.path.abspath("."))
            or getattr(self._reactor, "_neverUseSpawn", False)
        ):
            return False
        fd_states = []
        for fd in _process._listOpenFDs():
            try:
                close_on_exec = fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC)
            except OSError:
                pass
            else:
                fd_states.append((fd, close_on_exec))
        if environment is None:
            environment = os.environ
        ignored = [number for number in range(1, signal.NSIG) if signal.getsignal(number) == signal.SIG_IGN]
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=_process._getFileActions(
                fd_states, kwargs.get("fdmap"), doClose=_process._PS_CLOSE, doDup2=_process._PS_DUP2
            ),
            setsigdef=ignored,
            setsid=True,
        )
        self.status = -1
        return True


def spawn(reactor: Any, protocol: Any, executable: str, args: list[str], env: dict[str, str],
          path: Any, childFDs: dict[int, Any]) -> Any:
    """Start C{executable} as a L{SessionProcess} on C{reactor}; return its transport."""
    return SessionProcess(reactor, executable, args, env, path, protocol, None, None, childFDs)
