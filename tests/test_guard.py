"""
Tests for L{p2pexec.guardian} (the task guard's pure parts) and
L{p2pexec.guard} (the node's side), with fake system calls and clocks.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2pexec import guardian
from p2pexec.guard import GUARDIAN_SCRIPT, TaskGuard


class FakeSystem:
    """
    Processes as process groups that die on the signals they do not ignore,
    a clock that moves only when slept on, and a record of the signals sent.
    """

    def __init__(self, groups: dict[int, tuple[int, int]], stubborn: frozenset[int] = frozenset()) -> None:
        """
        @param groups: pgid -> (leader's process group, leader's start time), all alive.
        @param stubborn: groups that ignore SIGTERM.
        """
        self.leaders = dict(groups)
        self.alive_groups = set(groups)
        self.stubborn = stubborn
        self.signals: list[tuple[int, int, float]] = []
        self.time = 100.0

    def kill(self, pgid: int, number: int) -> None:
        self.signals.append((pgid, number, self.time))
        if pgid in self.alive_groups and (number == signal.SIGKILL or pgid not in self.stubborn):
            self.alive_groups.discard(pgid)

    def stat(self, pid: int) -> tuple[str, int, int] | None:
        if pid not in self.leaders:
            return None
        group, started = self.leaders[pid]
        return ("S", group, started)

    def alive(self) -> set[int]:
        return set(self.alive_groups)

    def sleep(self, seconds: float) -> None:
        self.time += seconds

    def now(self) -> float:
        return self.time


class RegistryTests(TestCase):
    """L{guardian.Registry}: the groups a node told its guard of."""

    def test_lines_split_anywhere(self) -> None:
        """Lines are applied once complete, however the pipe split them."""
        registry = guardian.Registry({12: 500, 13: None}.get)
        self.assertFalse(registry.feed(b"+1"))
        self.assertTrue(registry.feed(b"2\n+13\n-"))
        self.assertEqual(set(registry.groups), {12, 13})
        self.assertTrue(registry.feed(b"12\n"))
        self.assertEqual(set(registry.groups), {13})

    def test_start_times_looked_up_when_settled(self) -> None:
        """
        Start times are looked up on L{guardian.Registry.settle} only, once
        per group: a group added and removed in between is never looked up.
        """
        looked_up = []

        def start_time(pid: int) -> int | None:
            looked_up.append(pid)
            return {12: 500}.get(pid)

        registry = guardian.Registry(start_time)
        registry.feed(b"+12\n+13\n+14\n-14\n")
        self.assertEqual(looked_up, [])
        registry.settle()
        self.assertEqual(registry.groups, {12: 500, 13: None})
        registry.feed(b"+15\n")
        registry.settle()
        self.assertEqual(sorted(looked_up), [12, 13, 15])

    def test_nonsense_ignored(self) -> None:
        """A line that is not C{+PGID} or C{-PGID}, or forgets an unknown group, changes nothing."""
        registry = guardian.Registry(lambda pid: 1)
        self.assertFalse(registry.feed(b"hello\n+\n*5\n-7\n+-3\n\n"))
        self.assertEqual(registry.groups, {})


class IdentityTests(TestCase):
    """L{guardian.still_ours}: a recorded group is never a reused pid's."""

    def test_same_leader(self) -> None:
        """The leader that started at the recorded time, still leading its group: ours."""
        self.assertTrue(guardian.still_ours(10, 500, lambda pid: ("S", 10, 500)))

    def test_leader_gone(self) -> None:
        """No leader: whatever is left in the group is the task's."""
        self.assertTrue(guardian.still_ours(10, 500, lambda pid: None))
        self.assertTrue(guardian.still_ours(10, None, lambda pid: None))

    def test_reused_pid(self) -> None:
        """A process with the group's number that started at another time, or leads no group, is not ours."""
        self.assertFalse(guardian.still_ours(10, 500, lambda pid: ("S", 10, 900)))
        self.assertFalse(guardian.still_ours(10, 500, lambda pid: ("S", 3, 500)))
        self.assertFalse(guardian.still_ours(10, None, lambda pid: ("S", 10, 900)))


class StopGroupsTests(TestCase):
    """L{guardian.stop_groups}: what the guard does when its node dies."""

    def test_sigterm_then_sigkill_after_grace(self) -> None:
        """Every group gets SIGTERM at once; only one that is still there after the grace gets SIGKILL, then."""
        system = FakeSystem({10: (10, 1), 20: (20, 2)}, stubborn=frozenset({20}))
        killed = guardian.stop_groups([10, 20], 5.0, system.kill, system.alive, system.sleep, system.now)
        self.assertEqual(killed, [20])
        self.assertEqual(
            [(pgid, number) for pgid, number, _ in system.signals],
            [(10, signal.SIGTERM), (20, signal.SIGTERM), (20, signal.SIGKILL)],
        )
        self.assertEqual(system.signals[0][2], 100.0)
        self.assertGreaterEqual(system.signals[-1][2], 105.0)
        self.assertLess(system.signals[-1][2], 105.0 + 2 * guardian.POLL)
        self.assertEqual(system.alive_groups, set())

    def test_no_wait_when_all_go(self) -> None:
        """Groups that end on SIGTERM cost no wait and no SIGKILL."""
        system = FakeSystem({10: (10, 1)})
        self.assertEqual(guardian.stop_groups([10], 5.0, system.kill, system.alive, system.sleep, system.now), [])
        self.assertEqual(system.time, 100.0)


class ReapLeftoversTests(TestCase):
    """L{guardian.reap_leftovers}: what a starting node does with an earlier run's record."""

    def test_kills_only_live_groups_that_are_still_the_tasks(self) -> None:
        """
        Of the recorded groups, one still runs (killed), one is gone (left
        alone), one's number now belongs to another process (left alone).
        """
        system = FakeSystem({10: (10, 500), 30: (30, 999)})
        killed, left = guardian.reap_leftovers(
            {10: 500, 20: 600, 30: 700}, system.kill, system.stat, system.alive, system.sleep, system.now
        )
        self.assertEqual((killed, left), ([10], []))
        self.assertEqual(system.signals, [(10, signal.SIGKILL, 100.0)])
        self.assertEqual(system.alive_groups, {30})

    def test_waits_until_gone_within_bound(self) -> None:
        """A group still there after SIGKILL (a process in the kernel's hands) is waited for, then reported."""
        system = FakeSystem({10: (10, 500)})
        system.kill = lambda pgid, number: system.signals.append((pgid, number, system.time))  # type: ignore
        killed, left = guardian.reap_leftovers(
            {10: 500}, system.kill, system.stat, system.alive, system.sleep, system.now, timeout=2.0
        )
        self.assertEqual((killed, left), ([10], [10]))
        self.assertGreaterEqual(system.time, 102.0)


class RecordTests(TestCase):
    """The record file."""

    def test_round_trip(self) -> None:
        """What is written is read back, unknown start times included."""
        groups = {4242: 123456, 77: None}
        self.assertEqual(guardian.parse_record(guardian.format_record(groups)), groups)
        path = self.mktemp()
        guardian.write_record(path, groups)
        self.assertEqual(guardian.read_record(path), groups)
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(path))), [os.path.basename(path)])

    def test_bad_lines_skipped(self) -> None:
        """Garbage, groups 0 and 1 (never a task's), and a missing file give nothing to kill."""
        self.assertEqual(guardian.parse_record("x y\n0 5\n1 5\n12\n13 -\n14 abc\n15 9 9\n\x00\n"), {13: None})
        self.assertEqual(guardian.read_record(self.mktemp()), {})


class FakeTransport:
    """What a fake spawnProcess returns: the protocol, and (as the child would) the pipe's read end."""

    def __init__(self, proto: Any, pipe: int) -> None:
        self.proto = proto
        self.pipe = pipe

    def read(self) -> bytes:
        """What the node wrote to the guard so far, not read before."""
        try:
            return os.read(self.pipe, 1 << 20)
        except BlockingIOError:
            return b""


class FakeProcessReactor(Clock):
    """A clock that records spawnProcess calls, keeping each child's standard input open as the child would."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[FakeTransport, list[str], dict[int, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any, childFDs: Any) -> FakeTransport:
        pipe = os.dup(childFDs[0])
        os.set_blocking(pipe, False)
        transport = FakeTransport(protocol, pipe)
        self.spawned.append((transport, args, childFDs))
        return transport

    def close(self) -> None:
        """Close the children's pipes."""
        for transport, _, _ in self.spawned:
            os.close(transport.pipe)


class TaskGuardTests(TestCase):
    """L{TaskGuard}: the node's side."""

    def setUp(self) -> None:
        self.state_dir = self.mktemp()
        os.makedirs(self.state_dir)
        self.reactor = FakeProcessReactor()
        self.addCleanup(self.reactor.close)
        self.guard = TaskGuard(self.reactor, "w1", self.state_dir, 5.0, executable="/py", now=self.reactor.seconds)
        self.addCleanup(self.guard._close_pipe)

    def test_first_task_spawns_guardian_with_a_pipe(self) -> None:
        """
        The guard process starts with the first task, not with the node: it
        runs the guardian script, isolated, its standard input a pipe of
        which the node keeps only the write end, and is told of that task.
        """
        self.guard.start()
        self.assertEqual(self.reactor.spawned, [])
        self.guard.watch(101)
        [(transport, args, fds)] = self.reactor.spawned
        self.assertEqual(args, ["/py", "-I", "-S", GUARDIAN_SCRIPT, "w1", "5.0", self.guard.record])
        self.assertEqual((fds[1], fds[2]), (1, 2))
        with self.assertRaises(OSError):
            os.fstat(fds[0])  # The read end is the child's only.
        self.assertEqual(transport.read(), b"+101\n")
        self.guard.watch(102)
        self.assertEqual((len(self.reactor.spawned), transport.read()), (1, b"+102\n"))

    def test_no_guard_before_start(self) -> None:
        """A guard that was not started (the node does not want one yet) spawns nothing, and raises nothing."""
        self.guard.watch(101)
        self.guard.forget(101)
        self.assertEqual(self.reactor.spawned, [])

    def test_guard_that_cannot_be_spawned(self) -> None:
        """If the guard process cannot be started, the node says so once, and its tasks run on."""

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        self.reactor.spawnProcess = refuse  # type: ignore[method-assign]
        self.guard.start()
        with capturedLogs() as events:
            self.guard.watch(101)
            self.guard.watch(102)
        [error] = [e for e in events if "cannot start its task guard" in e["log_format"]]
        self.assertIn("Resource temporarily unavailable", str(error["error"]))

    def test_start_empties_the_record(self) -> None:
        """A starting node empties its record once it has reaped it, as a starting guard process did."""
        guardian.write_record(self.guard.record, {10: 500})
        self.guard.start()  # Group 10 is not running here (or is not the task's): nothing to kill.
        self.assertEqual(guardian.read_record(self.guard.record), {})
        self.assertEqual(self.reactor.spawned, [])

    def test_watch_and_forget(self) -> None:
        """Each group is written as it starts and as it empties; an unknown one is not forgotten."""
        self.guard.start()
        self.guard.watch(101)
        transport = self.reactor.spawned[0][0]
        self.guard.watch(102)
        self.guard.forget(101)
        self.guard.forget(999)
        self.assertEqual(transport.read(), b"+101\n+102\n-101\n")

    def test_full_pipe_written_later(self) -> None:
        """Lines that a full pipe cannot take are kept, in order, and written once the guard has read."""
        self.guard.start()
        self.guard.watch(1)
        transport = self.reactor.spawned[0][0]
        count = 1
        while not self.guard._unsent:
            count += 1
            self.guard.watch(count)
        self.guard.forget(1)
        written = transport.read()
        while True:
            more = transport.read()
            if not more:
                break
            written += more
        self.reactor.advance(0.01)
        written += transport.read()
        expected = b"".join(b"+%d\n" % n for n in range(1, count + 1)) + b"-1\n"
        self.assertEqual(written, expected)
        self.assertEqual(self.guard._unsent, b"")

    def test_guard_that_ends_is_replaced(self) -> None:
        """If the guard process ends while the node runs, the node says so and starts another, told of every group."""
        self.guard.start()
        self.guard.watch(101)
        first = self.reactor.spawned[0][0]
        self.guard.watch(102)
        self.guard.forget(101)
        self.assertEqual(first.read(), b"+101\n+102\n-101\n")
        with capturedLogs() as events:
            first.proto.processEnded(Failure(RuntimeError("killed")))
        self.assertEqual(len(self.reactor.spawned), 2)
        second = self.reactor.spawned[1][0]
        self.assertEqual(second.read(), b"+102\n")
        [event] = [e for e in events if "task guard ended" in e["log_format"]]
        self.assertEqual(event["count"], 1)
        self.guard.watch(103)
        self.assertEqual((second.read(), first.read()), (b"+103\n", b""))

    def test_guard_that_cannot_run_is_given_up(self) -> None:
        """
        A guard that ends within a second of its start three times in a row
        is not started again (one error line); one that ran for a while is
        replaced however often it is killed.
        """
        self.guard.start()
        self.guard.watch(1)
        self.guard.forget(1)
        with capturedLogs() as events:
            for _ in range(3):
                self.reactor.advance(5)
                self.reactor.spawned[-1][0].proto.processEnded(Failure(RuntimeError("killed")))
            self.assertEqual(len(self.reactor.spawned), 4)
            for _ in range(3):
                self.reactor.spawned[-1][0].proto.processEnded(Failure(RuntimeError("exit 1")))
        self.assertEqual(len(self.reactor.spawned), 6)
        errors = [e for e in events if "not starting another" in e["log_format"]]
        self.assertEqual([e["count"] for e in errors], [3])
        self.guard.watch(5)  # Nothing to write to, nothing started, and nothing raised.
        self.assertEqual(len(self.reactor.spawned), 6)

    def test_reap_logs_one_line_per_group(self) -> None:
        """A starting node kills its earlier run's live groups, one warning line for each, naming its command."""
        guardian.write_record(self.guard.record, {10: 500, 20: 600})
        system = FakeSystem({10: (10, 500), 20: (20, 600)})
        with capturedLogs() as events:
            killed = self.guard.reap_leftovers(
                system.kill, system.stat, system.alive, system.sleep, system.now, command_of=lambda pid: f"sleep {pid}"
            )
        self.assertEqual(killed, [10, 20])
        lines = [e for e in events if "earlier run of this node" in e["log_format"]]
        self.assertEqual([(e["pgid"], e["command"]) for e in lines], [(10, "sleep 10"), (20, "sleep 20")])

    def test_nothing_recorded(self) -> None:
        """Without a record there is nothing to kill and nothing to say."""
        system = FakeSystem({10: (10, 500)})
        with capturedLogs() as events:
            self.assertEqual(
                self.guard.reap_leftovers(system.kill, system.stat, system.alive, system.sleep, system.now), []
            )
        self.assertEqual((system.signals, events), ([], []))
