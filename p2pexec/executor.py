"""
Running a task's command as a child process.

L{ProcessExecutor.run} starts the command with Twisted's process API in a
session and process group of its own (see L{p2pexec.spawn}), keeps bounded tails of its
output, enforces its timeout by signalling the whole group (SIGTERM, then
SIGKILL after a grace period), and fires with a L{TaskResult}.  Timeouts,
grace periods and durations are kept on an injected clock, and the process
groups are started and signalled through an injected L{ProcessGroups}, so
that all of it can be tested on a L{twisted.internet.task.Clock} with the
fakes of L{p2pexec.testing.processes}.  It never
fails: every problem (no such program, no such folder, a timeout) becomes a
result that says what happened.

Before anything starts, the node's L{CommandPolicy} decides whether the
command may run here and which file it starts; a refused command never
starts, and its result (status C{error}) says which rule refused it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from p2pexec.clock import WallClock
from p2pexec.log import NodeLogger
from p2pexec.model import ERROR, FAILED, SUCCEEDED, TIMED_OUT, Assignment, TaskResult
from p2pexec.outputs import AttemptOutput, OutputStore
from p2pexec.policy import SHELL, CommandPolicy, Refusal, find_program
from p2pexec.spawn import ChildFDs, ProcessGroups, SessionGroups

log = NodeLogger()

_T = TypeVar("_T")

DEFAULT_TAIL_BYTES = 24 * 1024
"""How much of the end of stdout and of stderr each result keeps."""

DEFAULT_KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a task times out or is stopped."""

_GROUP_POLL = 0.05
"""Seconds between looks at a signalled process group that is not empty yet."""


class _Tail:
    """The last C{limit} bytes written to a stream."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self._data += data
        if len(self._data) > 2 * self._limit:
            del self._data[: len(self._data) - self._limit]

    def text(self) -> str:
        data = bytes(self._data[-self._limit :])
        return data.decode("utf-8", errors="replace")


class _TaskProcess(ProcessProtocol):
    """Collects one child's output and reports its end."""

    def __init__(self, limit: int, keeper: AttemptOutput | None = None) -> None:
        self.stdout = _Tail(limit)
        self.stderr = _Tail(limit)
        self.keeper = keeper
        self.ended: Deferred[BaseException] = Deferred()
        self.pid: int | None = None

    def makeConnection(self, transport: IProcessTransport) -> None:
        # The pid, and so the task's process group, is known here; a child
        # that exits at once may already be reaped (transport.pid None) by
        # the time spawning returns.
        self.pid = transport.pid
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        (self.stdout if childFD == 1 else self.stderr).write(data)
        if self.keeper is not None:
            self.keeper.write(0 if childFD == 1 else 1, data)

    def processEnded(self, reason: Failure) -> None:
        # Fire with the exception itself: a Failure would go down the errback chain.
        value = reason.value
        assert value is not None, "a process ended with an empty Failure"
        self.ended.callback(value)


class TaskGroupGuard(Protocol):
    """What the executor tells of its task process groups (L{p2pexec.guard.TaskGuard} does this)."""

    def watch(self, pgid: int) -> None:
        """The process group C{pgid} of a task has started."""

    def forget(self, pgid: int) -> None:
        """Nothing is left in the process group C{pgid}, or it was sent SIGKILL."""


class ProcessExecutor:
    """
    Runs task commands as child processes.

    @ivar running: the process protocols of the tasks running now, by pid.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        node_name: str,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        kill_grace: float = DEFAULT_KILL_GRACE,
        base_environment: Mapping[str, str] | None = None,
        policy: CommandPolicy | None = None,
        guard: TaskGroupGuard | None = None,
        clock: IReactorTime | None = None,
        groups: ProcessGroups | None = None,
        wall_clock: WallClock = time.time,
        outputs: OutputStore | None = None,
    ) -> None:
        """
        @param reactor: starts the task processes.
        @param policy: what this node is willing to run; by default anything
            (and the node says so in its log, once).
        @param guard: told of each task's process group as it starts and
            once it is empty (L{p2pexec.guard.TaskGuard}), so that the
            groups do not outlive the node; none by default.
        @param clock: keeps timeouts, grace periods and durations (a
            monotonic one, see L{p2pexec.clock}); C{reactor} by default.
        @param groups: starts each task in a process group of its own and
            signals it; L{SessionGroups} (the operating system) by default.
        @param wall_clock: when each attempt started, for people and the
            joblog (L{TaskResult.started}).
        @param outputs: where each attempt's full output is kept as it
            arrives (L{p2pexec.outputs}); none by default (only the tails).
        """
        self._reactor = reactor
        if clock is None:
            if not IReactorTime.providedBy(reactor):
                raise TypeError("ProcessExecutor needs a clock: its reactor provides no IReactorTime")
            clock = IReactorTime(reactor)
        self._clock: IReactorTime = clock
        self._wall_clock = wall_clock
        self._node_name = node_name
        self._tail_bytes = tail_bytes
        self._kill_grace = kill_grace
        self._environment = dict(os.environ if base_environment is None else base_environment)
        self._policy = CommandPolicy() if policy is None else policy
        log.info("Node {name} {policy}", name=node_name, policy=self._policy.describe())
        # A session (and process group) per task: directly where Twisted
        # allows it, else through the setsid program (one more exec).
        self._groups: ProcessGroups = SessionGroups() if groups is None else groups
        # Tasks read nothing: their stdin is /dev/null, opened once, not a pipe per task.
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._found: dict[tuple[str, str, str | None], str] = {}
        self.running: dict[int, _TaskProcess] = {}
        self._pids: dict[tuple[str, str, int], int] = {}
        self._pending_kills: dict[int, IDelayedCall] = {}
        self._guard = guard
        self._outputs = outputs

    def run(self, job: str, assignment: Assignment) -> Deferred[TaskResult]:
        """Run one attempt of a task; fires with its result, never fails."""
        task = assignment.task
        started = self._clock.seconds()
        started_at = round(self._wall_clock(), 6)  # as the wire carries it
        keeper = None if self._outputs is None else self._outputs.start(job, task.id, assignment.attempt)

        def result(status: str, **fields: Any) -> TaskResult:
            if keeper is not None:
                keeper.end()
                fields["output_cut"] = keeper.streams[0].cut or keeper.streams[1].cut
            fields.setdefault("stdout_size", 0)
            fields.setdefault("stderr_size", 0)
            return TaskResult(
                task_id=task.id,
                attempt=assignment.attempt,
                status=status,
                node=self._node_name,
                duration=self._clock.seconds() - started,
                started=started_at,
                **fields,
            )

        environment = dict(self._environment)
        environment.update(task.env)
        environment.update(
            P2PEXEC_JOB_ID=job,
            P2PEXEC_TASK_ID=task.id,
            P2PEXEC_ATTEMPT=str(assignment.attempt),
            P2PEXEC_NODE=self._node_name,
        )
        if task.shell:
            argv = [SHELL, "-c", str(task.command)]
        else:
            argv = list(task.command or ())
        search_path = environment.get("PATH", os.defpath)
        decision = self._policy.check_environment([name for name, _ in task.env]) or self._policy.decide(
            argv, task.cwd, search_path, shell=task.shell
        )
        if isinstance(decision, Refusal):
            log.warn(
                "Node {name} refused task {task} of job {job} (attempt {attempt}): {reason}",
                name=self._node_name,
                task=task.id,
                job=job,
                attempt=assignment.attempt,
                reason=decision.reason,
            )
            return _succeed(result(ERROR, error=decision.reason))
        if task.cwd is not None and not os.path.isdir(task.cwd):
            return _succeed(result(ERROR, error=f"working directory {task.cwd!r} does not exist"))
        # What to start: argv[0] itself, or the file the policy checked.
        program = decision
        name = argv[0]
        if os.sep not in program:
            found = self._which(program, search_path, task.cwd)
            if found is None:
                return _succeed(result(ERROR, exit_code=127, error=f"command not found: {name!r}"))
            # Started by the path found on the task's PATH (argv[0] stays as
            # given): a spawn would otherwise search the node's own PATH.
            program = found
        elif not os.access(os.path.join(task.cwd or "", program), os.X_OK):
            return _succeed(result(ERROR, exit_code=126, error=f"{name!r} is not an executable file"))
        protocol = _TaskProcess(self._tail_bytes, keeper)
        try:
            child_fds: ChildFDs = {0: self._devnull, 1: "r", 2: "r"}
            transport = self._groups.start(self._reactor, protocol, program, argv, environment, task.cwd, child_fds)
        except (OSError, ValueError) as e:
            return _succeed(result(ERROR, error=f"could not start {name!r}: {e}"))
        pid = protocol.pid if protocol.pid is not None else transport.pid
        if pid is None:
            # Only a transport that never had a process gets here.
            return _succeed(result(ERROR, error=f"could not start {name!r}: it got no process id"))
        if self._guard is not None:
            self._guard.watch(pid)
        self.running[pid] = protocol
        attempt_key = (job, task.id, assignment.attempt)
        self._pids[attempt_key] = pid
        timer: IDelayedCall | None = None
        timed_out: list[bool] = []
        if task.timeout is not None:

            def on_timeout() -> None:
                timed_out.append(True)
                self._signal_group(pid, signal.SIGTERM, protocol)

            timer = self._clock.callLater(task.timeout, on_timeout)

        def ended(reason: BaseException) -> TaskResult:
            self.running.pop(pid, None)
            self._pids.pop(attempt_key, None)
            if timer is not None and timer.active():
                timer.cancel()
            self._stop_leftovers(pid, task.id, job)
            if self._guard is not None and pid not in self._pending_kills:
                self._guard.forget(pid)
            fields: dict[str, Any] = {
                "stdout": protocol.stdout.text(),
                "stderr": protocol.stderr.text(),
                "stdout_size": protocol.stdout.total,
                "stderr_size": protocol.stderr.total,
            }
            code = reason.exitCode if isinstance(reason, (ProcessDone, ProcessTerminated)) else None
            signal_number = getattr(reason, "signal", None)
            if signal_number is not None:
                fields["signal"] = signal_number
            if timed_out:
                return result(
                    TIMED_OUT,
                    exit_code=code,
                    error=f"timed out after {task.timeout:g}s; process group killed",
                    **fields,
                )
            if code == 0:
                return result(SUCCEEDED, exit_code=0, **fields)
            if signal_number is not None:
                return result(FAILED, exit_code=None, error=f"killed by signal {signal_number}", **fields)
            return result(FAILED, exit_code=code, **fields)

        return protocol.ended.addCallback(ended)

    def _which(self, program: str, search_path: str, cwd: str | None) -> str | None:
        """
        Where C{program} is on C{search_path} (relative entries taken from
        C{cwd}, as C{exec} in it would); hits are remembered (a program that
        disappears later fails to start, and says so).
        """
        key = (program, search_path, cwd)
        found = self._found.get(key)
        if found is None:
            found = find_program(program, cwd, search_path)
            if found is not None:
                if len(self._found) > 1024:
                    self._found.clear()
                self._found[key] = found
        return found

    def _signal_group(self, pid: int, number: int, protocol: _TaskProcess) -> None:
        """
        Signal a task's process group, and SIGKILL the group after the grace
        period.  The SIGKILL is called off only once the group is empty, not
        merely when the task ends: a child that ignores SIGTERM and let go
        of the task's output would otherwise outlive it.
        """
        self._groups.signal(pid, number)
        if number == signal.SIGKILL or pid in self._pending_kills:
            return
        self._arm_final_kill(pid)

        def watch_once_ended(result: _T) -> _T:
            self._watch_group(pid)
            return result

        protocol.ended.addBoth(watch_once_ended)

    def _arm_final_kill(self, pid: int) -> None:
        """SIGKILL the group after the grace period, unless L{_watch_group} finds it empty first."""
        self._pending_kills[pid] = self._clock.callLater(self._kill_grace, self._final_kill, pid)

    def _stop_leftovers(self, pid: int, task_id: str, job: str) -> None:
        """
        A task has ended: whatever it left running in its process group (a
        child sent to the background) is stopped too, SIGTERM now and
        SIGKILL after the grace period, so that nothing of a finished task
        runs on untracked.
        """
        if pid in self._pending_kills or not self._groups.group_exists(pid):
            return
        log.info(
            "Node {name}: task {task} of job {job} ended and left processes running; stopping them",
            name=self._node_name,
            task=task_id,
            job=job,
        )
        self._groups.signal_group(pid, signal.SIGTERM)
        self._arm_final_kill(pid)
        self._watch_group(pid)

    def _watch_group(self, pid: int) -> None:
        """Call off the group's SIGKILL once nothing is left in it; look again shortly otherwise."""
        call = self._pending_kills.get(pid)
        if call is None:
            return
        if self._groups.group_exists(pid):
            self._clock.callLater(_GROUP_POLL, self._watch_group, pid)
        else:
            del self._pending_kills[pid]
            call.cancel()
            if self._guard is not None:
                self._guard.forget(pid)

    def _final_kill(self, pid: int) -> None:
        self._pending_kills.pop(pid, None)
        self._groups.signal_group(pid, signal.SIGKILL)
        # A task still running gets forgotten as it ends (see run).
        if self._guard is not None and pid not in self.running:
            self._guard.forget(pid)

    def settled(self) -> Deferred[None]:
        """Fires once no signalled process group awaits its SIGKILL (for tests and shutdown)."""
        d: Deferred[None] = Deferred()

        def check() -> None:
            if self._pending_kills:
                self._clock.callLater(_GROUP_POLL, check)
            else:
                d.callback(None)

        check()
        return d

    def stop(self, job: str, assignment: Assignment) -> None:
        """Terminate one attempt's process group (SIGTERM, then SIGKILL); its result still arrives."""
        pid = self._pids.get((job, assignment.task.id, assignment.attempt))
        if pid is not None and pid in self.running:
            self._signal_group(pid, signal.SIGTERM, self.running[pid])

    def stop_all(self) -> None:
        """Terminate every running task's process group (SIGTERM, then SIGKILL)."""
        for pid, protocol in list(self.running.items()):
            self._signal_group(pid, signal.SIGTERM, protocol)


def _succeed(value: TaskResult) -> Deferred[TaskResult]:
    d: Deferred[TaskResult] = Deferred()
    d.callback(value)
    return d
