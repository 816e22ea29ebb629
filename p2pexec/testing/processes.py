"""
Pretend child processes, for testing L{p2pexec.executor.ProcessExecutor}
(and anything else that starts processes) without starting any.

L{FakeProcessReactor} records each C{spawnProcess} as a L{FakeProcess},
which a test then drives: it writes the child's output and ends it, which
delivers C{processEnded} to its protocol.  L{FakeProcessGroups} is the
executor's L{p2pexec.spawn.ProcessGroups} seam over it: it records the
signals sent to each task's process group, and answers whether anything is
left in a group from the L{FakeProcess.group_alive} flag the test sets.
Time is a separate L{twisted.internet.task.Clock}::

    clock = Clock()
    processes = FakeProcessReactor()
    executor = ProcessExecutor(processes, "w1", clock=clock, groups=FakeProcessGroups(processes))
    d = executor.run("job-1", assignment)
    child = processes.processes[-1]
    child.output(b"hello\\n")
    child.exit(0)
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from typing import AnyStr

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pexec.spawn import ChildFDs

FIRST_PID = 1000
"""The pid of the first pretend process; each next one gets the next number."""


@implementer(IProcessTransport)
class FakeProcess:
    """
    One pretend child process: the transport its protocol sees, and the
    handles a test drives it with.

    @ivar executable: the program started.
    @ivar args: its argv.
    @ivar env: its environment.
    @ivar path: its working directory, or L{None}.
    @ivar child_fds: its descriptors, as given to C{spawnProcess}.
    @ivar signals: the signals sent to this process alone (L{signalProcess}).
    @ivar group_signals: the signals sent to the process group it leads
        (through L{FakeProcessGroups}), in order.
    @ivar group_alive: whether anything is left in its process group; true
        while it runs, then as L{exit} or L{kill} leave it.
    @ivar ended: whether C{processEnded} was delivered.
    """

    def __init__(
        self,
        pid: int,
        protocol: IProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        path: str | None,
        child_fds: ChildFDs | None,
    ) -> None:
        self.pid: int | None = pid
        self.protocol = protocol
        self.executable = executable
        self.args = list(args)
        self.env = dict(env or {})
        self.path = path
        self.child_fds = dict(child_fds or {})
        self.signals: list[int] = []
        self.group_signals: list[int] = []
        self.group_alive = True
        self.ended = False
        self.closed_fds: list[int] = []

    # What a test does with it.

    def output(self, data: bytes, fd: int = 1) -> None:
        """The child writes C{data} to its descriptor C{fd} (1, stdout, by default)."""
        self._check_running()
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int = 0, group_alive: bool = False) -> None:
        """
        The child exits with C{code}: its protocol gets C{processEnded}
        (L{ProcessDone} for 0, L{ProcessTerminated} otherwise).

        @param group_alive: whether it leaves processes running in its group.
        """
        reason: Exception = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code, status=code << 8)
        self._end(reason, group_alive)

    def kill(self, number: int = _signal.SIGKILL, group_alive: bool = False) -> None:
        """
        The child is ended by signal C{number}: its protocol gets
        C{processEnded} with a L{ProcessTerminated} that names the signal.

        @param group_alive: whether it leaves processes running in its group.
        """
        self._end(ProcessTerminated(signal=number, status=number), group_alive)

    def _check_running(self) -> None:
        if self.ended:
            raise RuntimeError(f"pretend process {self.pid} has already ended")

    def _end(self, reason: Exception, group_alive: bool) -> None:
        self._check_running()
        self.ended = True
        self.group_alive = group_alive
        for fd in sorted(self.child_fds):
            if self.child_fds[fd] in ("r", "w"):
                self.protocol.childConnectionLost(fd)
        self.protocol.processExited(Failure(reason))
        self.pid = None
        self.protocol.processEnded(Failure(reason))

    # IProcessTransport, for the protocol.

    def closeStdin(self) -> None:
        """Close the child's standard input."""
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        """Close the child's standard output."""
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        """Close the child's standard error."""
        self.closeChildFD(2)

    def closeChildFD(self, descriptor: int) -> None:
        """Record that descriptor C{descriptor} of the child was closed."""
        self.closed_fds.append(descriptor)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        """Nothing reads what is written to a pretend child."""

    def loseConnection(self) -> None:
        """Close the child's standard descriptors."""
        for fd in (0, 1, 2):
            self.closeChildFD(fd)

    def signalProcess(self, signalID: str | int) -> None:
        """Record a signal sent to this process alone (by name, as Twisted allows, or by number)."""
        if isinstance(signalID, str):
            signalID = int(getattr(_signal, "SIG" + signalID))
        self.signals.append(signalID)

    def write(self, data: bytes) -> None:
        """Nothing reads what is written to a pretend child."""

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Nothing reads what is written to a pretend child."""

    def getPeer(self) -> IPv4Address:
        """A placeholder address: a process has none."""
        return IPv4Address("TCP", "127.0.0.1", 0)

    def getHost(self) -> IPv4Address:
        """A placeholder address: a process has none."""
        return IPv4Address("TCP", "127.0.0.1", 0)


@implementer(IReactorProcess)
class FakeProcessReactor:
    """
    A reactor that starts pretend processes: each C{spawnProcess} is
    recorded as a L{FakeProcess} and connected to its protocol, as Twisted
    does, and nothing runs until the test says so.

    @ivar processes: every process started, in order.
    @ivar failure: if set, the next C{spawnProcess} raises it (once), as a
        reactor does for a program it cannot start.
    """

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.failure: Exception | None = None
        self._next_pid = FIRST_PID

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> FakeProcess:
        """Start a pretend process and return it (its transport)."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        process = FakeProcess(
            self._next_pid,
            processProtocol,
            _text(executable),
            [_text(arg) for arg in args],
            None if env is None else {_text(k): _text(v) for k, v in env.items()},
            None if path is None else _text(path),
            childFDs,
        )
        self._next_pid += 1
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    def by_pid(self, pid: int) -> FakeProcess | None:
        """The process started with C{pid}, ended or not."""
        index = pid - FIRST_PID
        return self.processes[index] if 0 <= index < len(self.processes) else None


class FakeProcessGroups:
    """
    L{p2pexec.spawn.ProcessGroups} over a L{FakeProcessReactor}: starts
    each task with its C{spawnProcess} and records the signals sent to each
    group on the L{FakeProcess} that leads it.

    @ivar signals: every signal sent, as (pgid, signal number), in order.
    """

    def __init__(self, reactor: FakeProcessReactor) -> None:
        self._reactor = reactor
        self.signals: list[tuple[int, int]] = []

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
        """Start C{program} on C{reactor} (which must be this groups' reactor)."""
        if reactor is not self._reactor:
            raise ValueError("FakeProcessGroups starts processes only on its own FakeProcessReactor")
        return self._reactor.spawnProcess(protocol, program, argv, env=env, path=cwd, childFDs=child_fds)

    def signal(self, pid: int, number: int) -> None:
        """Record C{number} sent to the group C{pid} leads (or to C{pid} alone once the group is empty)."""
        process = self._reactor.by_pid(pid)
        if process is None:
            return
        if process.group_alive:
            self.signals.append((pid, number))
            process.group_signals.append(number)
        elif not process.ended:
            process.signals.append(number)

    def signal_group(self, pgid: int, number: int) -> None:
        """Record C{number} sent to the group C{pgid}, if anything is left in it."""
        process = self._reactor.by_pid(pgid)
        if process is not None and process.group_alive:
            self.signals.append((pgid, number))
            process.group_signals.append(number)

    def group_exists(self, pgid: int) -> bool:
        """Whether the group C{pgid} is alive (L{FakeProcess.group_alive})."""
        process = self._reactor.by_pid(pgid)
        return process is not None and process.group_alive


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = ["FakeProcess", "FakeProcessGroups", "FakeProcessReactor", "FIRST_PID"]
