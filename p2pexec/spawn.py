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
L{available} says whether they are there; where they are not,
L{SessionGroups} falls back to the C{setsid} wrapper.

L{ProcessGroups} is what the executor needs of the operating system: start
a task in a group of its own, signal that group, and see whether anything
is left in it.  L{SessionGroups} does it for real;
L{p2pexec.testing.processes.FakeProcessGroups} pretends, for tests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet import process as _process
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol

ChildFDs = Mapping[int, int | str]
"""A child's descriptors: a descriptor of ours to pass, or C{"r"}/C{"w"} for a pipe."""

_HOOKS = ("_trySpawnInsteadOfFork", "_execChild")
_HELPERS = ("_listOpenFDs", "_getFileActions", "_PS_CLOSE", "_PS_DUP2")


def available() -> bool:
    """Whether this Twisted has the hooks L{SessionProcess} needs."""
    return (
        getattr(os, "posix_spawnp", None) is not None
        and all(hasattr(_process.Process, name) for name in _HOOKS)
        and all(hasattr(_process, name) for name in _HELPERS)
    )


def close_on_exec_everywhere() -> int:
    """
    Mark every open descriptor above 2 close-on-exec, once, when the executor
    starts: those inherited from whoever started the node (a test harness,
    a shell, systemd's socket activation), which Python leaves as they are.
    Every descriptor Python opens later is close-on-exec already (PEP 446),
    so from then on a task inherits only what it is given: its standard
    input, output and error.

    @return: how many descriptors had to be changed.
    """
    changed = 0
    for fd in _process._listOpenFDs():
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                changed += 1
        except OSError:
            pass  # Closed since it was listed (the listing's own, for one).
    return changed


def _fd_states(fdmap: dict[int, int]) -> list[tuple[int, bool]]:
    """
    (descriptor, close-on-exec) for the descriptors a spawn maps, which is all
    C{_getFileActions} needs once every other one is close-on-exec (see
    L{close_on_exec_everywhere}).  Twisted lists and inspects every open
    descriptor instead, about 70 microseconds per spawn for a node's twenty
    or so.
    """
    states = []
    for fd in set(fdmap) | set(fdmap.values()):
        try:
            states.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
        except OSError:
            pass
    return states


_ignored: list[tuple[int, ...]] = []


def _ignored_signals() -> tuple[int, ...]:
    """
    The signals this process ignores, which a child must get back at their
    defaults (Python ignores SIGPIPE, for one).  Read once: asking for all
    64 dispositions costs about 40 microseconds, a tenth of a quick task's
    spawn, and a node does not change what it ignores while it runs.
    """
    if not _ignored:
        _ignored.append(tuple(number for number in range(1, signal.NSIG) if signal.getsignal(number) == signal.SIG_IGN))
    return _ignored[0]


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
        As L{Process._trySpawnInsteadOfFork} (same conditions, same signal
        resets, the same dup2 actions for the mapped descriptors), with
        C{setsid=True}.  Unlike it, descriptors that are not mapped are left
        to close-on-exec (see L{close_on_exec_everywhere}) rather than listed
        and closed one by one.
        """
        if (
            uid is not None
            or gid is not None
            or (path is not None and os.path.abspath(path) != os.path.abspath("."))
            or getattr(self._reactor, "_neverUseSpawn", False)
        ):
            return False
        fdmap = kwargs.get("fdmap") or {}
        if environment is None:
            environment = os.environ
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=_process._getFileActions(
                _fd_states(fdmap), fdmap, doClose=_process._PS_CLOSE, doDup2=_process._PS_DUP2
            ),
            setsigdef=_ignored_signals(),
            setsid=True,
        )
        self.status = -1
        return True


def spawn(
    reactor: Any,
    protocol: ProcessProtocol,
    executable: str,
    args: list[str],
    env: dict[str, str],
    path: str | None,
    childFDs: ChildFDs,
) -> IProcessTransport:
    """Start C{executable} as a L{SessionProcess} on C{reactor}; return its transport."""
    return SessionProcess(reactor, executable, args, env, path, protocol, None, None, childFDs)


class ProcessGroups(Protocol):
    """
    How the executor starts each task in a process group of its own, and
    signals that group.  A group is named by the pid of the task's process,
    which leads it.
    """

    def start(
        self,
        reactor: IReactorProcess,
        protocol: ProcessProtocol,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        child_fds: ChildFDs,
    ) -> IProcessTransport:
        """
        Start C{program} (with C{argv}, C{argv[0]} as given) on C{reactor}, in
        a session and process group of its own; return its transport.

        @raise OSError: it could not be started.
        @raise ValueError: it could not be started.
        """

    def signal(self, pid: int, number: int) -> None:
        """Send signal C{number} to the group C{pid} leads, or to C{pid} alone if it leads none."""

    def signal_group(self, pgid: int, number: int) -> None:
        """Send signal C{number} to the process group C{pgid}, if anything is left in it."""

    def group_exists(self, pgid: int) -> bool:
        """Whether any process is left in the process group C{pgid}."""


class SessionGroups:
    """
    L{ProcessGroups} for real: each task leads a new session (through
    L{SessionProcess} where this Twisted allows it, else through the
    C{setsid} program), and groups are signalled with C{killpg}.
    """

    def __init__(self) -> None:
        self._session_spawn = available()
        if self._session_spawn:
            close_on_exec_everywhere()
        self._setsid = None if self._session_spawn else shutil.which("setsid")

    def start(
        self,
        reactor: IReactorProcess,
        protocol: ProcessProtocol,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        child_fds: ChildFDs,
    ) -> IProcessTransport:
        """See L{ProcessGroups.start}."""
        if self._session_spawn:
            return spawn(reactor, protocol, program, argv, env, cwd, child_fds)
        if self._setsid is not None:
            argv = [self._setsid, program] + argv[1:]
            program = self._setsid
        return reactor.spawnProcess(protocol, program, argv, env=env, path=cwd, childFDs=child_fds)

    def signal(self, pid: int, number: int) -> None:
        """See L{ProcessGroups.signal}."""
        try:
            os.killpg(pid, number)
            return
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    def signal_group(self, pgid: int, number: int) -> None:
        """See L{ProcessGroups.signal_group}."""
        try:
            os.killpg(pgid, number)
        except (ProcessLookupError, PermissionError):
            pass

    def group_exists(self, pgid: int) -> bool:
        """See L{ProcessGroups.group_exists}."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
