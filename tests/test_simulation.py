"""
The deterministic simulation (L{p2pexec.testing.simulation}): many seeded
runs of a job over five nodes with crashes, restarts, freezes, partitions,
delays and clock jumps, each checked against the invariants of
docs/reliability.rst; plus tests of the harness itself (its faults, its
checkers, and that a seed replays exactly).

P2PEXEC_SIM_SEEDS=N runs N seeds instead of L{DEFAULT_SEEDS};
P2PEXEC_SIM_SEED=S runs seed S alone and prints its schedule.
"""

from __future__ import annotations

import gc
import os
import time
import weakref

from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.job import Job
from p2pexec.model import TaskResult, TaskSpec
from p2pexec.testing.invariants import (
    Observation,
    Recorded,
    check_fencing,
    check_finished,
    check_no_double_records,
    check_no_unhandled_errors,
    check_one_leader_per_epoch,
    check_results,
)
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.schedule import Fault, SimulationConfig, make_schedule
from p2pexec.testing.simulation import Simulation, replay_command, run_seeds

DEFAULT_SEEDS = 1000
"""Seeds run by default: about a minute on this 2-CPU machine (19.5 seeds per CPU second measured)."""


def seeds_to_run() -> list[int]:
    """The seeds this run checks: P2PEXEC_SIM_SEED alone, or the first P2PEXEC_SIM_SEEDS (default L{DEFAULT_SEEDS})."""
    one = os.environ.get("P2PEXEC_SIM_SEED")
    if one:
        return [int(one)]
    return list(range(1, int(os.environ.get("P2PEXEC_SIM_SEEDS", DEFAULT_SEEDS)) + 1))


class SimulationTests(SynchronousTestCase):
    """Today's code survives every seed of today's fault mix."""

    def test_seeds(self):
        """
        Every seed keeps every invariant: one recorded result per accepted
        task at the final master, none recorded twice, the job finished once
        the faults stopped, no stale epoch accepted, one leader per epoch,
        nothing logged as critical.  A failure names the seed, its schedule
        and the command that replays it.
        """
        seeds = seeds_to_run()
        alone = len(seeds) == 1
        failures = []
        started = time.monotonic()
        for outcome in run_seeds(seeds):
            if alone:
                print("\n" + outcome.report())
            if outcome.violations:
                failures.append(outcome)
        took = time.monotonic() - started
        print(f"\n{len(seeds)} simulation seed(s) in {took:.1f} s ({len(seeds) / took:.1f} a second)")
        if failures:
            first = failures[0]
            self.fail(
                f"{len(failures)} of {len(seeds)} seed(s) broke an invariant: "
                f"{[o.seed for o in failures]}\n\n{first.report()}\n\n"
                f"Replay it alone with: {replay_command(first.seed)}"
            )

    def test_same_seed_same_trace(self):
        """
        A seed replays exactly: run twice, it gives the same trace (every
        fault, attempt, recorded result and log line of the nodes, with its
        simulated time), and another seed gives another.
        """
        first = Simulation(7, log_lines=True).run()
        again = Simulation(7, log_lines=True).run()
        other = Simulation(8, log_lines=True).run()
        self.assertGreater(len(first.trace), 100)
        self.assertEqual(first.trace, again.trace)
        self.assertNotEqual(first.trace, other.trace)

    def test_schedule_is_seeded(self):
        """The schedule is a function of the seed; the master always comes back without failover."""
        config = SimulationConfig(failover=False)
        self.assertEqual(make_schedule(3, config), make_schedule(3, config))
        for seed in range(1, 60):
            schedule = make_schedule(seed, config)
            self.assertEqual(schedule, sorted(schedule, key=lambda f: f.at))
            crashes = [f.at for f in schedule if f.kind == "crash" and f.nodes == ("n1",)]
            restarts = [f.at for f in schedule if f.kind == "restart" and f.nodes == ("n1",)]
            self.assertEqual(len(crashes), len(restarts), seed)
            self.assertTrue(all(f.at <= config.fault_window for f in schedule))

    def test_failover_schedule_loses_the_master(self):
        """With failover (the default), some seeds crash the master and never restart it."""
        lost = 0
        for seed in range(1, 60):
            schedule = make_schedule(seed, SimulationConfig())
            crashes = [f for f in schedule if f.kind == "crash" and f.nodes == ("n1",)]
            restarts = [f for f in schedule if f.kind == "restart" and f.nodes == ("n1",)]
            lost += len(crashes) > len(restarts)
        self.assertGreater(lost, 3)

    def test_probe_sees_the_failover(self):
        """
        The failover probe feeds the checkers: over a few seeds it sees
        assignments accepted with their epochs, acknowledgements, and a
        takeover at a higher epoch; the job is replicated to three nodes.
        """
        kinds, epochs = set(), set()
        for seed in range(1, 8):
            simulation = Simulation(seed)
            simulation.run()
            self.assertEqual(len(simulation.probe.replica_set(simulation.job_id, "n1")), 3)
            kinds.update(o.kind for o in simulation.observations)
            epochs.update(o.epoch for o in simulation.observations if o.kind == "acknowledged")
        self.assertEqual(kinds, {"assignment", "acknowledged", "took over"})
        self.assertGreater(max(epochs), 1)

    def test_without_failover(self):
        """The run without replication (C{--replicas 0}: the master restarts with its journal) keeps every invariant."""
        config = SimulationConfig(failover=False)
        bad = [o.report() for o in run_seeds(range(1, 21), config) if o.violations]
        self.assertEqual(bad, [])

    def test_report_names_the_replay(self):
        """A run's report holds its seed, its schedule and the command that replays it."""
        outcome = Simulation(5).run()
        report = outcome.report()
        self.assertIn("Seed 5:", report)
        self.assertIn(replay_command(5), report)
        self.assertIn("P2PEXEC_SIM_SEED=5 ", report)
        for fault in outcome.schedule:
            self.assertIn(fault.describe(), report)


class CheckerTests(SynchronousTestCase):
    """Each invariant checker finds what it is meant to find, in a readable sentence."""

    def job(self, ids=("t0", "t1")):
        """A job of tasks C{ids}, none done."""
        return Job("j1", [TaskSpec(id=i, kind="w", command=("true",)) for i in ids], started=0.0)

    def finish(self, job, ids):
        """Give each task in C{ids} a successful result."""
        for task_id in ids:
            record = job.tasks[task_id]
            record.attempt, record.worker = 1, "n2"
            job.apply(TaskResult(task_id=task_id, attempt=1, status="succeeded", node="n2"), 1.0)

    def test_results_complete(self):
        """A finished job with a result for each accepted task passes."""
        job = self.job()
        self.finish(job, ["t0", "t1"])
        self.assertEqual(check_results("j1", ["t0", "t1"], job), [])

    def test_results_missing_task(self):
        """An accepted task the final master does not hold is named."""
        job = self.job(["t0"])
        [problem] = check_results("j1", ["t0", "t1"], job)
        self.assertIn("lacks accepted task(s) ['t1']", problem)

    def test_results_no_master(self):
        """No final master is a violation."""
        self.assertEqual(check_results("j1", ["t0"], None), ["No live node is master of job j1 at the end."])

    def test_double_record_in_one_incarnation(self):
        """A task recorded twice by one master is named with both attempts."""
        records = [
            Recorded(1.0, "n1", 1, "t0", 1, "succeeded", "n2"),
            Recorded(2.0, "n1", 1, "t0", 2, "succeeded", "n3"),
        ]
        [problem] = check_no_double_records(records, {})
        self.assertIn("Task t0 was recorded twice by master n1 #1: attempt 1 on n2", problem)

    def test_double_record_after_takeover(self):
        """
        A task recorded by a new leader that took the job over with its
        result already is named; the same life's records at an earlier
        epoch (before it was deposed) are another term and do not count.
        """
        records = [
            Recorded(1.0, "n2", 1, "t0", 1, "succeeded", "n3", epoch=2),
            Recorded(5.0, "n2", 1, "t0", 2, "succeeded", "n4", epoch=4),
            Recorded(6.0, "n2", 1, "t1", 1, "succeeded", "n4", epoch=4),
        ]
        [problem] = check_no_double_records(records, {("n2", 1, 4): {"t1"}})
        self.assertIn("Task t1 was recorded again at t=6.000", problem)

    def test_double_record_in_one_term(self):
        """Two successful records of one task by one leader at one epoch are named, even at a later epoch than 1."""
        records = [
            Recorded(1.0, "n3", 2, "t0", 1, "succeeded", "n2", epoch=3),
            Recorded(2.0, "n3", 2, "t0", 2, "succeeded", "n4", epoch=3),
        ]
        [problem] = check_no_double_records(records, {})
        self.assertIn("Task t0 was recorded twice by master n3 #2", problem)

    def test_fencing_equal_epoch_passes(self):
        """An assignment at the epoch seen is current: only an older epoch is a violation."""
        self.assertEqual(check_fencing([Observation("assignment", "n3", "j1", epoch=3, seen=3)]), [])
        [problem] = check_fencing([Observation("assignment", "n3", "j1", epoch=2, seen=3, detail="t4#1")])
        self.assertIn("Worker n3 accepted an assignment of job j1 (t4#1) at epoch 2 after seeing epoch 3", problem)

    def test_one_leader_per_epoch_across_jobs(self):
        """The same epoch in two jobs, led by two nodes, is no violation; the same node twice in one epoch is none."""
        observations = [
            Observation("acknowledged", "n1", "j1", epoch=2),
            Observation("acknowledged", "n2", "j2", epoch=2),
            Observation("acknowledged", "n1", "j1", epoch=2),
        ]
        self.assertEqual(check_one_leader_per_epoch(observations), [])

    def test_results_no_master_with_failover_majority(self):
        """An accepted job nobody leads at the end, with a majority of its replicas alive, fails both checks."""
        self.assertEqual(len(check_results("j1", ["t0"], None)), 1)
        [problem] = check_finished("j1", None, ["n2", "n3"], ["n1", "n2", "n3"], 30.0)
        self.assertIn("no live node is its master", problem)

    def test_double_record_after_resume(self):
        """A task recorded again by a master that resumed it with a result is named."""
        records = [Recorded(5.0, "n1", 2, "t0", 2, "succeeded", "n3")]
        [problem] = check_no_double_records(records, {("n1", 2, 1): {"t0"}})
        self.assertIn("which had resumed it with a result already", problem)

    def test_failed_then_succeeded_is_one_record(self):
        """A failed attempt then a successful one is not a double record."""
        records = [
            Recorded(1.0, "n1", 1, "t0", 1, "failed", "n2"),
            Recorded(2.0, "n1", 1, "t0", 2, "succeeded", "n3"),
        ]
        self.assertEqual(check_no_double_records(records, {}), [])

    def test_unfinished_with_majority(self):
        """An unfinished job with a majority of its replicas alive is a violation that counts its tasks."""
        job = self.job()
        [problem] = check_finished("j1", job, ["n1", "n2"], ["n1", "n2", "n3"], 100.0)
        self.assertIn("did not finish within 100 s", problem)
        self.assertIn("2 of its 3 replica(s) alive", problem)
        self.assertIn("tasks 2 pending", problem)

    def test_unfinished_without_majority(self):
        """Without a majority of its replicas alive, a job need not finish."""
        self.assertEqual(check_finished("j1", self.job(), ["n2"], ["n1", "n2", "n3"], 100.0), [])

    def test_fencing(self):
        """An assignment accepted at an epoch older than one seen is named; a current one passes."""
        observations = [
            Observation("assignment", "n3", "j1", epoch=2, seen=2, detail="t0#1"),
            Observation("assignment", "n4", "j1", epoch=1, seen=2, detail="t1#2"),
        ]
        self.assertEqual(
            check_fencing(observations),
            ["Worker n4 accepted an assignment of job j1 (t1#2) at epoch 1 after seeing epoch 2."],
        )

    def test_one_leader_per_epoch(self):
        """Two nodes acknowledging records of one job in one epoch are named; one per epoch passes."""
        observations = [
            Observation("acknowledged", "n1", "j1", epoch=1),
            Observation("acknowledged", "n2", "j1", epoch=2),
            Observation("acknowledged", "n3", "j1", epoch=2),
        ]
        self.assertEqual(
            check_one_leader_per_epoch(observations), ["Nodes n2, n3 all acknowledged records of job j1 in epoch 2."]
        )

    def test_critical_events(self):
        """A critical event is a violation; an error is not."""
        events = [
            {"log_level": LogLevel.error, "log_format": "bad input"},
            {"log_level": LogLevel.critical, "log_format": "Unhandled error in Deferred:"},
        ]
        self.assertEqual(check_no_unhandled_errors(events), ["Logged as critical: Unhandled error in Deferred:"])


class Echo(Protocol):
    """Records what it receives and when it lost its connection."""

    def __init__(self):
        self.received = b""
        self.losses = 0

    def dataReceived(self, data):
        """Keep C{data}."""
        self.received += data

    def connectionLost(self, reason):
        """Count the loss."""
        self.losses += 1


class Factory:
    """Builds one L{Echo} per connection and keeps them."""

    noisy = False

    def __init__(self):
        self.built = []

    def doStart(self):
        """Nothing to start."""

    def doStop(self):
        """Nothing to stop."""

    def startedConnecting(self, connector):
        """Nothing to note."""

    def clientConnectionFailed(self, connector, reason):
        """Note the failure."""
        self.failed = reason

    def buildProtocol(self, address):
        """A new L{Echo}."""
        protocol = Echo()
        self.built.append(protocol)
        return protocol


class FaultTests(SynchronousTestCase):
    """The faults the simulation adds to L{FakeNetwork}."""

    def connect(self):
        """Two hosts, a and b, with a connection from a to b; return (network, hosts, client, server)."""
        network = FakeNetwork()
        a, b = network.host("127.0.0.2"), network.host("127.0.0.3")
        servers, clients = Factory(), Factory()
        b.listenTCP(7000, servers)
        a.connectTCP("127.0.0.3", 7000, clients)
        network.flush()
        return network, (a, b), clients.built[0], servers.built[0]

    def test_cut_and_mend(self):
        """Nothing crosses a cut link, either way; once mended, what was written arrives."""
        network, _, client, server = self.connect()
        network.cut("127.0.0.3", "127.0.0.2")
        client.transport.write(b"ping")
        server.transport.write(b"pong")
        network.run(1.0)
        self.assertEqual((server.received, client.received), (b"", b""))
        network.mend("127.0.0.2", "127.0.0.3")
        network.flush()
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))

    def test_connection_over_a_cut_times_out(self):
        """A connection attempt over a cut link fails once its timeout passes, not at once."""
        network = FakeNetwork()
        a, b = network.host("127.0.0.2"), network.host("127.0.0.3")
        b.listenTCP(7000, Factory())
        network.cut("127.0.0.2", "127.0.0.3")
        clients = Factory()
        a.connectTCP("127.0.0.3", 7000, clients, timeout=3)
        network.run(2.0)
        self.assertFalse(hasattr(clients, "failed"))
        network.run(2.0)
        self.assertEqual(type(clients.failed.value).__name__, "TCPTimedOutError")

    def test_delay(self):
        """Bytes over a slow link arrive its delay later, in order."""
        network, _, client, server = self.connect()
        network.set_delay("127.0.0.2", "127.0.0.3", 0.5)
        client.transport.write(b"a")
        network.run_events(0.3)
        client.transport.write(b"b")
        network.run_events(0.3)
        self.assertEqual(server.received, b"a")
        network.run_events(0.3)
        self.assertEqual(server.received, b"ab")

    def test_freeze_and_thaw(self):
        """A frozen host runs nothing and reads nothing; thawed, its calls due run first, then bytes flow."""
        network, (a, b), client, server = self.connect()
        ran = []
        b.callLater(1.0, ran.append, "timer")
        cancelled = b.callLater(1.5, ran.append, "cancelled")
        b.freeze()
        client.transport.write(b"hello")
        network.run(3.0)
        self.assertEqual((ran, server.received), ([], b""))
        self.assertTrue(cancelled.active())
        cancelled.cancel()
        b.thaw()
        self.assertEqual(ran, ["timer"])
        network.flush()
        self.assertEqual(server.received, b"hello")

    def test_thawed_call_cancels_another(self):
        """
        A call run at thaw may cancel another call that came due while the
        host was frozen, as a reactor waking from SIGSTOP would let it.
        """
        network = FakeNetwork()
        host = network.host("127.0.0.2")
        ran = []
        later = host.callLater(2.0, ran.append, "later")
        host.callLater(1.0, lambda: later.cancel())
        host.freeze()
        network.run(3.0)
        host.thaw()
        self.assertEqual(ran, [])
        self.assertFalse(later.active())

    def test_cancel_after_crash_while_frozen(self):
        """A call held by a frozen host that crashes can still be cancelled (its journal is abandoned)."""
        network = FakeNetwork()
        host = network.host("127.0.0.2")
        held = host.callLater(1.0, lambda: None)
        host.freeze()
        network.run(2.0)
        host.crash()
        held.cancel()
        self.assertFalse(held.active())

    def test_both_close_across_a_cut(self):
        """
        One side closes behind a cut link (it learns of its own close); the
        link is mended and the other side closes too before the next pump:
        each side hears of the loss once (the first used to hear it twice,
        which AMP does not survive: seeds 2122, 3714, 4818).
        """
        network, _, client, server = self.connect()
        network.cut("127.0.0.2", "127.0.0.3")
        client.transport.loseConnection()
        network.flush()
        self.assertEqual((client.losses, server.losses), (1, 0))
        network.mend("127.0.0.2", "127.0.0.3")
        server.transport.loseConnection()
        network.flush()
        self.assertEqual((client.losses, server.losses), (1, 1))
        self.assertEqual(network.pumps, [])

    def test_crash_while_connecting_over_a_cut(self):
        """
        A host that crashes while its connection attempt waits behind a cut
        link makes no connection once the link is mended: a crashed host
        delivers nothing more, and its peer hears nothing from it.
        """
        network = FakeNetwork()
        a, b = network.host("127.0.0.2"), network.host("127.0.0.3")
        servers, clients = Factory(), Factory()
        b.listenTCP(7000, servers)
        network.cut("127.0.0.2", "127.0.0.3")
        a.connectTCP("127.0.0.3", 7000, clients, timeout=30)
        network.run(1.0)
        a.crash()
        network.mend("127.0.0.2", "127.0.0.3")
        network.run(2.0)
        self.assertEqual((servers.built, clients.built, network.pumps), ([], [], []))

    def test_crash_after_the_link_dropped(self):
        """A host that crashes after its peer already lost the connection does not tell that peer twice."""
        network, (a, b), client, server = self.connect()
        network.cut("127.0.0.2", "127.0.0.3")
        client.transport.loseConnection()
        network.flush()
        self.assertEqual(client.losses, 1)
        b.crash()
        self.assertEqual(client.losses, 1, "told of the same loss twice")


class Raiser(Echo):
    """An L{Echo} that raises the reason its connection was lost, as AMP does to fail its outstanding calls."""

    def connectionLost(self, reason):
        """Count the loss, then raise and catch C{reason}."""
        super().connectionLost(reason)
        try:
            reason.raiseException()
        except Exception:
            pass


class RaiserFactory(Factory):
    """Builds one L{Raiser} per connection and keeps them."""

    def buildProtocol(self, address):
        """A new L{Raiser}."""
        protocol = Raiser()
        self.built.append(protocol)
        return protocol


class LeakTests(SynchronousTestCase):
    """A simulated connection leaves nothing alive behind it once it is closed and dropped."""

    def test_closed_connection_is_collected(self):
        """
        A protocol whose connection closed, and which raised the reason, is
        collected once nothing refers to it: the reason is not an exception
        shared by every connection (iosim's class attribute), whose
        traceback would grow with each raise and hold every frame it went
        through, and so every simulated cluster ever run.
        """
        network = FakeNetwork()
        a, b = network.host("127.0.0.2"), network.host("127.0.0.3")
        servers, clients = RaiserFactory(), Factory()
        b.listenTCP(7000, servers)
        a.connectTCP("127.0.0.3", 7000, clients)
        network.flush()
        clients.built[0].transport.loseConnection()
        network.flush()
        server = servers.built[0]
        self.assertEqual(server.losses, 1)
        gone = weakref.ref(server)
        del server, servers, clients, network, a, b
        gc.collect()
        self.assertIsNone(gone())


class FaultSanityTests(SynchronousTestCase):
    """The schedule's faults do happen in a run."""

    def test_every_kind_happens(self):
        """Over a few seeds, every kind of fault is applied at least once."""
        kinds = set()
        for seed in range(1, 12):
            kinds.update(f.kind for f in make_schedule(seed, SimulationConfig()))
        self.assertEqual(kinds, {"crash", "restart", "freeze", "thaw", "cut", "mend", "delay", "jump", "wall"})
        self.assertIsInstance(Fault(1.0, "jump", seconds=2.0).describe(), str)
