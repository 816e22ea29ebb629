"""
Timers, durations and failure detection when the wall clock is stepped.

A node runs on two clocks (see L{p2pexec.clock}): the reactor's, made
monotonic, and an injected wall clock.  These tests step the wall clock by
+60 s and -30 s while the monotonic one advances normally.
"""

from __future__ import annotations

from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import status
from p2pexec.clock import use_monotonic_time
from p2pexec.job import Job
from p2pexec.journal import Journal
from p2pexec.master import Master
from p2pexec.model import TaskSpec
from p2pexec.node import Node, NodeConfig, create_node
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

from .test_master import RecordingLink, result
from .test_model import node
from .test_node import text, w_tasks

EPOCH = 1_800_000_000.0
"""Where the tests' wall clocks start (a moment in 2027)."""


class _WallTimeReactor(ReactorBase):
    """
    A reactor that keeps time as Twisted's real ones do, by C{seconds()} read
    from the wall clock, here one the test steps (C{wall[0]}).  It does no
    I/O: the test calls L{runUntilCurrent} as the reactor's loop would.
    """

    wall = [EPOCH]
    seconds = staticmethod(lambda: _WallTimeReactor.wall[0])

    def installWaker(self) -> None:
        """No waker: nothing runs in other threads."""

    def wakeUp(self) -> None:
        """Nothing to wake."""


class SteppedTime:
    """A monotonic clock and a wall clock that the test moves by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        _WallTimeReactor.wall[0] = EPOCH

    def monotonic(self) -> float:
        """The monotonic clock's reading."""
        return self.mono

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass: both clocks move."""
        self.mono += seconds
        _WallTimeReactor.wall[0] += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP or C{date -s} does."""
        _WallTimeReactor.wall[0] += seconds


class MonotonicReactorTests(SynchronousTestCase):
    """L{use_monotonic_time}: the seam that takes the reactor's timers off the wall clock."""

    def setUp(self) -> None:
        self.time = SteppedTime()
        self.reactor = _WallTimeReactor()
        self.fired: list[str] = []

    def test_stock_reactor_timers_follow_the_wall_clock(self) -> None:
        """
        Why the seam exists (Twisted's behaviour, not ours): on a stock
        reactor a 2.5 s timer fires at once when the wall clock is stepped
        60 s ahead.
        """
        self.reactor.callLater(2.5, self.fired.append, "timeout")
        self.time.step_wall(60)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["timeout"])

    def test_step_forward_fires_nothing_early(self) -> None:
        """With monotonic time, a +60 s wall step fires no timer; 2.5 s of real time does."""
        use_monotonic_time(self.reactor, self.time.monotonic)
        self.reactor.callLater(2.5, self.fired.append, "timeout")
        self.time.advance(1.0)
        self.time.step_wall(60)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, [])
        self.assertAlmostEqual(self.reactor.timeout(), 1.5)
        self.time.advance(1.5)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["timeout"])

    def test_step_back_delays_nothing(self) -> None:
        """With monotonic time, a -30 s wall step holds no timer back."""
        use_monotonic_time(self.reactor, self.time.monotonic)
        self.reactor.callLater(2.5, self.fired.append, "timeout")
        self.time.step_wall(-30)
        self.assertAlmostEqual(self.reactor.timeout(), 2.5)
        self.time.advance(2.5)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["timeout"])

    def test_calls_scheduled_before_keep_their_delays_and_order(self) -> None:
        """
        Calls scheduled on the wall clock before the switch fire after the
        same delays on the monotonic clock, in order; C{reset} and C{delay}
        then work on the new scale.
        """
        self.reactor.callLater(3.0, self.fired.append, "second")
        self.reactor.callLater(1.0, self.fired.append, "first")
        later = self.reactor.callLater(5.0, self.fired.append, "reset")
        use_monotonic_time(self.reactor, self.time.monotonic)
        self.assertEqual(sorted(call.getTime() for call in self.reactor.getDelayedCalls()), [1001.0, 1003.0, 1005.0])
        later.reset(10.0)
        self.time.step_wall(60)
        self.time.advance(3.0)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["first", "second"])
        self.time.advance(6.9)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["first", "second"])
        self.time.advance(0.1)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["first", "second", "reset"])

    def test_again_changes_nothing(self) -> None:
        """Making a monotonic reactor monotonic again moves no call."""
        use_monotonic_time(self.reactor, self.time.monotonic)
        call = self.reactor.callLater(2.0, self.fired.append, "timeout")
        use_monotonic_time(self.reactor, self.time.monotonic)
        self.assertEqual(call.getTime(), 1002.0)


class Walls:
    """One steppable wall clock per node, all EPOCH plus the network's time until stepped."""

    def __init__(self, network: FakeNetwork) -> None:
        self._network = network
        self.offsets: dict[str, float] = {}

    def of(self, name: str):
        """Node C{name}'s wall clock."""
        self.offsets.setdefault(name, 0.0)
        return lambda: EPOCH + self._network.seconds() + self.offsets[name]

    def step(self, name: str, seconds: float) -> None:
        """Step node C{name}'s wall clock by C{seconds}."""
        self.offsets[name] += seconds


class SteppedWallClusterTests(SynchronousTestCase):
    """Whole nodes on the simulated network, whose wall clocks are stepped mid-job."""

    def setUp(self) -> None:
        self.network = FakeNetwork()
        self.walls = Walls(self.network)
        self.nodes: dict[str, Node] = {}
        self.runners: dict[str, FakeRunner] = {}

    def add(self, name: str, address: str, port: int, **config) -> Node:
        """Start node C{name} on its own host, with its own wall clock."""
        host = self.network.host(address)
        runner = FakeRunner(host, name, duration=0.3)
        made = create_node(
            NodeConfig(name=name, interface=address, port=port, slots=2, **config),
            host,
            runner,
            wall=self.walls.of(name),
        )
        made.start()
        self.nodes[name], self.runners[name] = made, runner
        return made

    def job_cluster(self) -> Node:
        """A master m1 of 30 tasks (submitted at 0 s) and workers w1, w2; returns m1 once w1 runs some."""
        master = self.add("m1", "127.0.0.1", 4001, capabilities=frozenset(), tasks=w_tasks(30))
        self.add("w1", "127.0.0.2", 4002, capabilities=frozenset({"w"}))
        self.add("w2", "127.0.0.3", 4003, capabilities=frozenset({"w"}))
        self.network.run_until(lambda: len(self.runners["w1"].runs) >= 4, limit=10)
        return master

    def test_steps_cause_no_death_no_rerun_and_no_bad_duration(self) -> None:
        """
        w1's wall clock steps 60 s ahead and the master's 30 s back mid-job:
        nobody is suspected or declared dead, no task runs twice, and the
        job's elapsed time is the monotonic one, while its start and end as
        shown are what the master's wall clock read.
        """
        master = self.job_cluster()
        with capturedLogs() as events:
            self.walls.step("w1", 60)
            self.network.run(1.0)
            self.walls.step("m1", -30)
            self.network.run_until(lambda: master.initial_job.called, limit=30)
        ended = self.network.seconds()
        messages = [text(event) for event in events]
        self.assertEqual([m for m in messages if "suspects" in m or "dead" in m], [])
        runs = [task for runner in self.runners.values() for _, task, _ in runner.runs]
        self.assertEqual(sorted(runs), sorted(f"w{i}" for i in range(30)))
        job = master.initial_job.result
        self.assertEqual(job.succeeded, 30)
        summary = status.job_summary(job, ended, frozenset())
        self.assertAlmostEqual(summary["elapsed"], ended, places=3)
        self.assertGreater(summary["elapsed"], 0)
        self.assertAlmostEqual(summary["started"], EPOCH, places=3)
        self.assertAlmostEqual(summary["finished"], EPOCH + ended - 30, places=3)
        self.assertAlmostEqual(job.report(ended)["elapsed"], ended, places=3)

    def test_master_stepped_back_detects_a_silent_worker_on_time(self) -> None:
        """
        The master's wall clock steps 30 s back, then w1's link is cut: w1
        is declared dead within 2.75 s of the cut, and its tasks finish on
        w2.
        """
        master = self.job_cluster()
        self.walls.step("m1", -30)
        self.network.run(0.5)
        with capturedLogs() as events:
            self.network.partition("127.0.0.2", 4002)
            took = self.network.run_until(lambda: any("declared peer w1 dead" in text(e) for e in events), limit=10)
        self.assertLessEqual(took, 2.75 + 0.05)
        self.network.run_until(lambda: master.initial_job.called, limit=30)
        self.assertEqual(master.initial_job.result.succeeded, 30)


class WallAndMonotonicJobTests(SynchronousTestCase):
    """A job's moments come from the wall clock, its durations from the monotonic one."""

    def test_elapsed_never_negative(self) -> None:
        """A job whose monotonic readings run backwards (it cannot happen, but) has elapsed 0."""
        job = Job("j", [TaskSpec(id="t", kind="w")], started=10.0, started_at=EPOCH)
        self.assertEqual(job.elapsed(5.0), 0.0)

    def test_finished_at_stamped_once_and_derived_before(self) -> None:
        """Until its master stamps it, a job's wall-clock end is its start plus its duration; the stamp wins, once."""
        job = Job("j", [TaskSpec(id="t", kind="w")], started=10.0, started_at=EPOCH)
        job.stamp_end(EPOCH + 99)
        self.assertIsNone(job.finished_at, "a running job has no end")
        job.assign("t", "w1")
        job.apply(result("t", worker="w1"), 17.5, "w1")
        self.assertEqual(job.finished_at, EPOCH + 7.5)
        job.stamp_end(EPOCH - 22.5)
        job.stamp_end(EPOCH + 1000)
        self.assertEqual(job.finished_at, EPOCH - 22.5)
        self.assertEqual(job.elapsed(100.0), 7.5)

    def master(self, clock: Clock, wall, state_dir: str) -> tuple[Master, Journal]:
        """A master m1 on C{clock} and C{wall}, journaling in C{state_dir}."""
        journal = Journal(state_dir, clock)
        self.addCleanup(journal.close)
        link = RecordingLink()
        return Master(node(name="m1", capabilities=()), link, link, clock, journal=journal, wall=wall), journal

    def test_master_journals_wall_clock_moments(self) -> None:
        """The journal keeps when a job started and ended by the wall clock, stepped as it was."""
        clock, offset, state_dir = Clock(), [0.0], self.mktemp()
        master, journal = self.master(clock, lambda: EPOCH + clock.seconds() + offset[0], state_dir)
        master.worker_joined(node(name="w1", capabilities=("w",)))
        job = master.submit([TaskSpec(id="t", kind="w")])
        clock.advance(4.0)
        offset[0] = -30.0
        master.confirm(job.id, [result("t", worker="w1")], sender="w1")
        clock.advance(0)
        journal.commit()
        row = journal._db.execute("SELECT started, finished FROM jobs WHERE id = ?", (job.id,)).fetchone()
        self.assertEqual(row, (EPOCH, EPOCH + 4.0 - 30.0))
        self.assertEqual(job.elapsed(clock.seconds()), 4.0)

    def resumed_elapsed(self, wall_step: float) -> float:
        """A job journaled 5 s into its run, resumed by a master whose wall clock then reads C{wall_step} s off; its elapsed."""
        state_dir = self.mktemp()
        clock = Clock()
        clock.advance(500.0)
        first, journal = self.master(clock, lambda: EPOCH + 5.0, state_dir)
        first.submit([TaskSpec(id="t", kind="w")])
        journal.commit()
        journal.close()
        restarted = Clock()
        master, journal = self.master(restarted, lambda: EPOCH + 5.0 + 2.0 + wall_step, state_dir)
        [job] = master.resume(journal.unfinished_jobs())
        self.assertEqual(job.started_at, EPOCH + 5.0)
        restarted.advance(3.0)
        return job.elapsed(restarted.seconds())

    def test_resumed_job_counts_the_restart_by_the_wall_clock(self) -> None:
        """Across a master's restart, a job's elapsed time goes on from the wall-clock time since its start."""
        self.assertEqual(self.resumed_elapsed(0.0), 2.0 + 3.0)

    def test_resumed_job_after_a_step_back_never_goes_negative(self) -> None:
        """A wall clock stepped back across the restart counts the restart as 0 s, never as negative."""
        self.assertEqual(self.resumed_elapsed(-60.0), 3.0)

    def test_journal_pruned_by_the_wall_clock(self) -> None:
        """A node prunes journal entries older than the retention by its wall clock (its reactor's time means nothing across restarts)."""
        state_dir = self.mktemp()
        clock = Clock()
        first, journal = self.master(clock, lambda: EPOCH, state_dir)
        first.worker_joined(node(name="w1", capabilities=("w",)))
        job = first.submit([TaskSpec(id="t", kind="w")])
        clock.advance(0)
        first.confirm(job.id, [result("t", worker="w1")], sender="w1")
        clock.advance(0)
        journal.commit()
        journal.close()
        network = FakeNetwork()
        later = create_node(
            NodeConfig(name="m1", state_dir=state_dir, journal_retention=3600.0),
            network.host(),
            FakeRunner(network, "m1"),
            wall=lambda: EPOCH + 3601.0,
        )
        self.addCleanup(later.journal.close)
        with capturedLogs() as events:
            later.start()
        self.assertIn("Node m1 pruned 1 finished job(s) from its journal", [text(e) for e in events])
