"""
The node's side of the task guard (see L{p2pexec.guardian}): when the node
starts, it kills what an earlier run of the node left running; it starts
the guard process with the node's first task, and tells it of each task
process group.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from p2pexec import guardian
from p2pexec.log import NodeLogger

log = NodeLogger()

GUARDIAN_SCRIPT = os.path.abspath(guardian.__file__)
"""The guard process's script, run with C{python -I -S}."""

_QUICK_DEATH = 1.0
_MAX_QUICK_DEATHS = 3
"""A guard that ends within L{_QUICK_DEATH} seconds of its start this many times in a row is not started again."""

_RETRY = 0.01
"""Seconds before lines the guard's pipe could not take are written again."""


class _GuardProcess(ProcessProtocol):
    """The guard process, as the node sees it: a pipe to write to, and its end."""

    def __init__(self, on_end: Callable[[_GuardProcess, Failure], None]) -> None:
        self._on_end = on_end

    def processEnded(self, reason: Failure) -> None:
        self._on_end(self, reason)


class TaskGuard:
    """
    Makes sure that a node's task processes do not outlive it.

    L{start} kills what an earlier run of the node left (the groups in its
    state directory's record that still run).  The guard process is started
    with the first task process group (L{watch}), not with the node: a node
    that runs no task (a master of other nodes' work) never needs one, and
    three nodes starting together on two CPUs do not also start three
    guards.  L{watch} and L{forget} tell the guard of each task process
    group as it starts and once it is empty.  If the guard process ends
    while the node runs, the node says so and starts another, told of every
    group that runs.
    """

    def __init__(
        self,
        reactor: Any,
        node_name: str,
        state_dir: str,
        grace: float,
        executable: str = sys.executable,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param grace: seconds between SIGTERM and SIGKILL when the guard
            stops the groups of a node that died.
        @param now: a monotonic clock, to tell a guard that cannot run at
            all (it ends at once, again and again) from one that was killed.
        """
        self._reactor = reactor
        self._node_name = node_name
        self.record = os.path.join(state_dir, guardian.RECORD_NAME)
        self._grace = grace
        self._executable = executable
        self._process: Any = None
        self._pipe = -1
        self._unsent = b""
        self._watched: set[int] = set()
        self._now = now
        self._started_at = float("-inf")
        self._quick_deaths = 0
        self._wanted = False

    def start(self) -> None:
        """
        Kill what an earlier run of this node left running, and empty the
        record (as a starting guard does); the guard process itself starts
        with the first task (L{watch}).
        """
        self.reap_leftovers()
        if guardian.read_record(self.record):
            try:
                with open(self.record, "w", encoding="ascii"):
                    pass
            except OSError as e:
                log.error(
                    "Node {name} cannot empty its record of running task groups {path}: {error}",
                    name=self._node_name,
                    path=self.record,
                    error=e.strerror,
                )
        self._wanted = True

    def reap_leftovers(
        self,
        kill: Callable[[int, int], None] = guardian.kill_group,
        stat: Callable[[int], tuple[str, int, int] | None] = guardian.read_stat,
        alive: Callable[[], set[int]] = guardian.live_groups,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.monotonic,
        command_of: Callable[[int], str] | None = None,
    ) -> list[int]:
        """
        SIGKILL every process group of the record that still runs and is
        still the task's, logging one line for each, and wait (at most 5 s)
        until they are gone.  This blocks: it runs once, before the node
        takes up any work.

        @return: the groups killed.
        """
        recorded = guardian.read_record(self.record)
        if not recorded:
            return []
        describe = command_of or _command_of
        commands = {pgid: describe(pgid) for pgid in recorded}
        killed, left = guardian.reap_leftovers(recorded, kill, stat, alive, sleep, now)
        for pgid in killed:
            log.warn(
                "Node {name}: task process group {pgid} ({command}) of an earlier run of this node was "
                "still running; killed it (SIGKILL) before taking up any work",
                name=self._node_name,
                pgid=pgid,
                command=commands[pgid],
            )
        for pgid in left:
            log.error(
                "Node {name}: task process group {pgid} of an earlier run of this node is still there 5s after SIGKILL",
                name=self._node_name,
                pgid=pgid,
            )
        return killed

    def _spawn(self) -> None:
        """
        Start a guard process, its standard input a pipe of which the node
        holds the only write end, and tell it of every group that runs now.
        """
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self._process = self._reactor.spawnProcess(
                _GuardProcess(self._ended),
                self._executable,
                [self._executable, "-I", "-S", GUARDIAN_SCRIPT, self._node_name, repr(self._grace), self.record],
                env={},
                childFDs={0: read_end, 1: 1, 2: 2},
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        # Written to directly, not through a Twisted transport: a transport
        # would add and remove the pipe from the reactor for every line,
        # which cost the node about 50 microseconds a task.
        os.set_blocking(write_end, False)
        self._started_at = self._now()
        self._close_pipe()
        self._pipe = write_end
        if self._watched:
            self._send(b"".join(b"+%d\n" % pgid for pgid in self._watched))

    def _send(self, data: bytes) -> None:
        """Write C{data} to the guard; what the pipe cannot take now is kept and tried again shortly."""
        if self._pipe < 0:
            return
        if self._unsent:
            self._unsent += data
            return
        try:
            written = os.write(self._pipe, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # The guard is gone; its replacement is told of every group.
        if written < len(data):
            self._unsent = data[written:]
            self._reactor.callLater(_RETRY, self._flush)

    def _flush(self) -> None:
        """Write what the pipe could not take before."""
        data, self._unsent = self._unsent, b""
        if data:
            self._send(data)

    def _close_pipe(self) -> None:
        """Let go of the current guard's pipe, and of what was not written to it."""
        if self._pipe >= 0:
            os.close(self._pipe)
        self._pipe = -1
        self._unsent = b""

    def _ended(self, protocol: Any, reason: Failure) -> None:
        """The guard process ended while the node runs: say so, and start another."""
        if self._process is None or self._process.proto is not protocol:
            return
        self._process = None
        self._close_pipe()
        if self._now() - self._started_at < _QUICK_DEATH:
            self._quick_deaths += 1
        else:
            self._quick_deaths = 0
        if self._quick_deaths >= _MAX_QUICK_DEATHS:
            log.error(
                "Node {name}: its task guard ended ({reason}) {count} times in a row within {seconds:g}s of its "
                "start; not starting another: its tasks would outlive it if it died",
                name=self._node_name,
                reason=reason.getErrorMessage(),
                count=self._quick_deaths,
                seconds=_QUICK_DEATH,
            )
            return
        log.warn(
            "Node {name}: its task guard ended ({reason}); starting another, told of {count} running task "
            "process group(s)",
            name=self._node_name,
            reason=reason.getErrorMessage(),
            count=len(self._watched),
        )
        try:
            self._spawn()
        except OSError as e:
            log.error(
                "Node {name} cannot start another task guard ({error}): its tasks would outlive it if it died",
                name=self._node_name,
                error=e,
            )

    def watch(self, pgid: int) -> None:
        """A task's process group started: tell the guard, starting it if it does not run yet."""
        self._watched.add(pgid)
        if self._process is None and self._wanted:
            self._wanted = False  # Once: a guard that ends is replaced by _ended.
            try:
                self._spawn()  # Tells it of every watched group, this one included.
            except OSError as e:
                log.error(
                    "Node {name} cannot start its task guard ({error}): its tasks would outlive it if it died",
                    name=self._node_name,
                    error=e,
                )
            return
        self._send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """A task's process group is empty (or was SIGKILLed)."""
        if pgid in self._watched:
            self._watched.discard(pgid)
            self._send(b"-%d\n" % pgid)


def _command_of(pgid: int) -> str:
    """
    What process group C{pgid} runs, shortened, for a log line: its
    leader's command line, or, if its leader is gone, that of a member left.
    """
    command = _cmdline(pgid)
    if command:
        return command
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = guardian.read_stat(int(entry))
            if stat is not None and stat[0] != "Z" and stat[1] == pgid:
                command = _cmdline(int(entry))
                if command:
                    return f"its leader is gone; {command} is left"
    return "its leader is gone"


def _cmdline(pid: int) -> str:
    """The command line of C{pid}, at most 80 characters; empty if it has none (or is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    text = " ".join(part.decode("utf-8", "replace") for part in argv).strip()
    return text if len(text) <= 80 else text[:77] + "..."
