"""
Master failover bugs the deterministic simulation (L{p2pexec.testing.simulation})
found, each replayed here as a small scenario on the in-memory network.
Each test names the seed that found it.
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.replicas import Ballot

from .test_failover import WORKERS, failover_cluster, finished_at, leaders, submit
from .test_node import Cluster, text

ADDRESSES = {"z1": "127.0.0.10", "w1": "127.0.0.1", "w2": "127.0.0.2", "w3": "127.0.0.3"}


def cut_off(cluster, name, others):
    """Cut every link between C{name} and each of C{others}."""
    for other in others:
        cluster.network.cut(ADDRESSES[name], ADDRESSES[other])


def mend(cluster, name, others):
    """Mend every link between C{name} and each of C{others}."""
    for other in others:
        cluster.network.mend(ADDRESSES[name], ADDRESSES[other])


def promise_alone(cluster, name, job_id, ballot):
    """
    Make C{name} promise C{ballot} for C{job_id} (durably), as a successor
    does once a majority granted its pre-round, whatever comes of its
    PROMISEs to the others.
    """
    replication = cluster.nodes[name].replication
    store = replication.stores[job_id]
    store.promise(ballot)
    replication._journal.replica_changed(job_id, store.promised, store.accepted)


def add_with_journal(cluster, name, state_dir):
    """
    Node C{name} of C{cluster} with a journal in C{state_dir}, C{--replicas
    2} and tasks of 0.5 s: the master z1 runs nothing, the others kind w.
    """
    return cluster.add(
        name,
        address=ADDRESSES[name],
        capabilities=frozenset() if name == "z1" else frozenset({"w"}),
        replicas=2,
        duration=0.5,
        state_dir=state_dir,
    )


class DeposedMasterOwnTaskTests(SynchronousTestCase):
    """A master that ran tasks of its own job, deposed before they finish (seeds 7, 8, 9, 16, 27)."""

    def test_own_result_after_stepping_down(self):
        """
        The master runs a long task of its own job, is cut off, a successor
        takes the job over and finishes it; after the heal the old master
        steps down, then its own task finishes: the result is not applied
        to a job it no longer leads (the worker's flush used to raise
        KeyError out of a timer, dropping every result of that flush); it
        waits for the new leader, and the job keeps one result per task.
        """
        cluster = Cluster()
        cluster.add("z1", address=ADDRESSES["z1"], capabilities=frozenset({"w"}), slots=1, replicas=2, duration=30.0)
        for name in WORKERS:
            cluster.add(name, address=ADDRESSES[name], capabilities=frozenset({"w"}), replicas=2, duration=0.3)
        names = ["z1", *WORKERS]
        cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b), 30)
        job_id = submit(cluster, "z1", 12)
        cluster.network.run_until(lambda: cluster.runners["z1"].runs, limit=10)
        with capturedLogs() as events:
            cut_off(cluster, "z1", WORKERS)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
            mend(cluster, "z1", WORKERS)
            cluster.network.run_until(lambda: job_id not in cluster.nodes["z1"].master.jobs, limit=30)
            cluster.network.run(40.0)
        self.assertTrue(any("steps down as master" in e["log_format"] for e in events))
        waits = [text(e) for e in events if "its results wait" in e["log_format"]]
        self.assertEqual(waits, [f"Node z1 leads no job {job_id} any more; its results wait"])
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (12, 0))
        self.assertEqual(len(leaders(cluster, job_id)), 1)


class AbandonedTakeoverTests(SynchronousTestCase):
    """A successor's failed takeover attempt must not leave the job without a leader (seeds 9, 22)."""

    def test_failed_attempt_then_heal(self):
        """
        A successor is cut off from everyone: it declares the master lost
        and tries to take the job over, but only its own promise comes
        (it promised itself a higher ballot).  After the heal the master's
        next REPLICATE to it is refused, so the master steps down; the
        successor must then go on with its takeover although the master is
        connected again (it used to give up, and nobody led the job), and
        the job finishes.

        A node cut off alone no longer promises itself anything (its
        pre-round finds no majority, see L{PreRoundTests}): its promise is
        written here, as it is when a majority granted its pre-round and
        the cut came before its PROMISEs got through.
        """
        cluster = failover_cluster(duration=0.5)
        job_id = submit(cluster, "z1", 40)
        z1 = cluster.nodes["z1"]
        successor = z1.replication.logs[job_id].members[1]
        others = [n for n in ADDRESSES if n != successor]
        cluster.network.run(0.5)
        with capturedLogs() as events:
            cut_off(cluster, successor, others)
            cluster.network.run_until(lambda: any("cannot take job" in e["log_format"] for e in events), limit=60)
            promise_alone(cluster, successor, job_id, Ballot(2, successor))
            mend(cluster, successor, others)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        self.assertIsNotNone(finished_at(cluster, job_id), "the job finished")
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(steps), 1, steps)
        self.assertIn(f"{successor} took it over", steps[0])
        self.assertEqual(leaders(cluster, job_id), [successor])
        self.assertEqual(finished_at(cluster, job_id).succeeded, 40)


class AnnouncedBelowPromiseTests(SynchronousTestCase):
    """A JOB_LEADER below what a successor promised itself must not stop its takeover (seed 3)."""

    def test_deposed_leader_announces_after_heal(self):
        """
        The master dies and a successor leads the job at epoch 2; that
        leader is then cut off, and the other successor tries to take over,
        getting only its own promise (epoch 3).  After the heal the cut-off
        leader announces JOB_LEADER at epoch 2 on reconnecting: that must
        not cancel the other's takeover (it used to, while the epoch-2
        leader stepped down at its next REPLICATE, refused: nobody led the
        job).  The other successor leads, once, and the job finishes.

        The other successor's promise to itself is written here, as in
        L{AbandonedTakeoverTests}: alone, its pre-round finds no majority.
        """
        cluster = failover_cluster(duration=0.5)
        job_id = submit(cluster, "z1", 40)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        cluster.network.run(0.5)
        cluster.hosts["z1"].crash()
        cluster.network.run_until(lambda: leaders(cluster, job_id), limit=10)
        [first] = leaders(cluster, job_id)
        [second] = [m for m in members[1:] if m != first]
        others = [n for n in ADDRESSES if n != first]
        with capturedLogs() as events:
            cut_off(cluster, first, others)
            cluster.network.run_until(lambda: any("cannot take job" in e["log_format"] for e in events), limit=60)
            promise_alone(cluster, second, job_id, Ballot(3, second))
            # What the reconnecting leader says first (the heal's own timing
            # decides whether it comes before the successor's next try).
            cluster.nodes[second].replication.leader_announced(job_id, Ballot(2, first))
            mend(cluster, first, others)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        self.assertEqual(leaders(cluster, job_id), [second])
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(steps), 1, steps)
        self.assertIn(f"Node {first} steps down as master of job {job_id}: {second} took it over", steps[0])
        self.assertEqual(finished_at(cluster, job_id).succeeded, 40)


class SilentPromiseTests(SynchronousTestCase):
    """A master deposed by a promise whose node never leads takes the job over again (seed 9)."""

    def test_deposed_by_a_ballot_that_never_leads(self):
        """
        A replica promised a higher ballot of a node that then never takes
        the job over (it crashed before it won, its promise to itself not
        yet written): the master's next REPLICATE is refused and it steps
        down.  Nobody announces that it leads, so after a while the master
        takes the job over again above that ballot (it used to wait for
        ever), saying why, and the job finishes.
        """
        cluster = failover_cluster(duration=0.5)
        job_id = submit(cluster, "z1", 20)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        cluster.network.run(0.5)
        cluster.nodes[members[2]].replication.stores[job_id].promise(Ballot(2, "w9"))
        with capturedLogs() as events:
            cluster.network.run_until(lambda: finished_at(cluster, job_id, names=["z1", *WORKERS]), limit=60)
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(
            steps,
            [f"Node z1 steps down as master of job {job_id}: w9 took it over at epoch 2 ({members[2]} promised it)"],
        )
        took = [text(e) for e in events if "took over job" in e["log_format"]]
        self.assertEqual(len(took), 1, took)
        self.assertIn(
            f"Node z1 took over job {job_id} as master at epoch 3: w9 promised epoch 2 but did not say it leads",
            took[0],
        )
        self.assertEqual(leaders(cluster, job_id, names=["z1", *WORKERS]), ["z1"])
        self.assertEqual(finished_at(cluster, job_id, names=["z1", *WORKERS]).succeeded, 20)


class RestartedSuccessorsTests(SynchronousTestCase):
    """Successors restarted after their job's master died take the job over (seeds 481, 833)."""

    def test_master_gone_before_successors_restart(self):
        """
        Both successors crash, then the master crashes for good, then both
        successors restart with their journals: they never had a connection
        to the dead master to lose, so they check, a while after their
        start, that the job's leader is there (they used to wait for ever),
        and one of them takes the job over and finishes it.
        """
        cluster = Cluster()
        dirs = {name: self.mktemp() for name in ["z1", *WORKERS]}

        def start(name):
            return add_with_journal(cluster, name, dirs[name])

        def close_live():
            crashed = {name for name, host in cluster.hosts.items() if host.crashed}
            for name, node in cluster.nodes.items():
                if name not in crashed:
                    node.journal.close()

        self.addCleanup(close_live)

        for name in ["z1", *WORKERS]:
            start(name)
        names = ["z1", *WORKERS]
        cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b), 30)
        job_id = submit(cluster, "z1", 20)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        cluster.network.run(0.3)
        for name in [*members[1:], "z1"]:
            cluster.hosts[name].crash()
            cluster.nodes[name].journal.abandon()
        cluster.network.run(1.0)
        with capturedLogs() as events:
            for name in members[1:]:
                start(name)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        took = [text(e) for e in events if "took over job" in e["log_format"]]
        self.assertEqual(len(took), 1, took)
        self.assertIn("z1 was not connected when this node restarted", took[0])
        self.assertEqual(finished_at(cluster, job_id).succeeded, 20)


class OwnWorkerFencedTests(SynchronousTestCase):
    """A master whose own worker has seen a newer leader of the job (seed 4450 of the 5,000-seed run)."""

    def test_own_worker_refuses_its_master(self):
        """
        The master also runs tasks; its own worker learns of a newer leader
        of the job (there: JOB_LEADER, heard by a restarted master that
        resumed the job from its journal) before the master does.  When the
        master next hands itself a task, its worker refuses it: that must be
        handled as another worker's refusal is (the master steps down, the
        task goes back, unrun), not raise StaleBallot out of the dispatch
        timer (it did, and the simulation stopped).
        """
        cluster = Cluster()
        cluster.add("z1", address=ADDRESSES["z1"], capabilities=frozenset({"w"}), slots=1, replicas=2, duration=1.0)
        for name in WORKERS:
            cluster.add(name, address=ADDRESSES[name], capabilities=frozenset(), replicas=2)
        names = ["z1", *WORKERS]
        cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b), 30)
        job_id = submit(cluster, "z1", 3)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: cluster.runners["z1"].runs, limit=10)
        z1.worker.fence.check(job_id, Ballot(5, "w1"), "a JOB_LEADER announcement")
        with capturedLogs() as events:
            cluster.network.run(3.0)
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(steps), 1, steps)
        self.assertIn("Node z1 steps down as master of job", steps[0])
        self.assertNotIn(job_id, z1.master.jobs)
        refused = [text(e) for e in events if "refused an assignment" in text(e)]
        self.assertEqual(len(refused), 1, refused)
        # t1 was queued at z1 before its fence learned of epoch 5; t2 came after, refused.
        self.assertNotIn("t2", [task for _, task, _ in cluster.runners["z1"].runs])


class PreRoundTests(SynchronousTestCase):
    """
    A replica cut off alone does not depose a master that a majority kept
    (Raft's "disruptive server"; found by CI in
    C{tests.integration.test_multihost.PartitionTests}).
    """

    def test_replica_cut_off_alone_rejoins(self):
        """
        A successor is cut off from everyone while it runs tasks: it
        declares the master lost and tries to take the job over, but its
        pre-round finds no majority, so it promises nothing.  The master
        and the other successor finish the job.  After the heal the master
        stays master at epoch 1 (it used to be refused by the successor,
        which had promised itself epoch 2, step down, and lose the job to
        it), nobody steps down or takes over, and the master drops the
        successor's late results as stale.
        """
        cluster = failover_cluster(duration=0.5)
        job_id = submit(cluster, "z1", 40)
        members = cluster.nodes["z1"].replication.logs[job_id].members
        successor = members[2]
        others = [n for n in ADDRESSES if n != successor]
        # Its next tasks run until after the heal, as if they hung meanwhile.
        cluster.runners[successor]._duration = 35.0
        cluster.network.run(1.0)
        self.assertTrue(cluster.runners[successor].running)
        names = ["z1", *WORKERS]
        with capturedLogs() as events:
            cut_off(cluster, successor, others)
            cluster.network.run_until(
                lambda: any("cannot take job" in e["log_format"] and e.get("name") == successor for e in events),
                limit=60,
            )
            self.assertIsNotNone(finished_at(cluster, job_id, names=["z1"]), "the majority side finished the job")
            mend(cluster, successor, others)
            cluster.network.run_until(lambda: cluster.connected("z1", successor), limit=30)
            cluster.network.run(15.0)
        self.assertEqual([text(e) for e in events if "steps down" in e["log_format"]], [])
        self.assertEqual([text(e) for e in events if "took over job" in e["log_format"]], [])
        self.assertEqual(leaders(cluster, job_id, names=names), ["z1"])
        self.assertEqual(cluster.nodes["z1"].replication.epoch_of(job_id), 1)
        for name in members:
            self.assertEqual(cluster.nodes[name].replication.stores[job_id].promised, Ballot(1, "z1"), name)
        job = finished_at(cluster, job_id, names=["z1"])
        self.assertEqual((job.succeeded, job.failed), (40, 0))
        stale = [text(e) for e in events if "dropped a stale result" in e["log_format"]]
        self.assertTrue(stale, "the successor's late results reach the master")
        self.assertTrue(all(f"from {successor}:" in line for line in stale), stale)


class SteppedDownRestartTests(SynchronousTestCase):
    """A node that took a job over, then stepped down, restarted with its journal (seed 4450 of the 5,000-seed run)."""

    def test_stepped_down_master_does_not_resume(self):
        """
        The master dies and a successor takes its job over at epoch 2 (and
        writes it to its journal as its master); it dies too, the master
        comes back and the job is taken over at epoch 3; the successor comes
        back, learns that, steps down and takes the new leader's records.
        Restarted once more with its journal, it does not resume the job
        from there: it used to, leading it at epoch 1 beside the real
        leader (acknowledging records at epoch 1 as the first master had,
        its assignments refused by every worker's fence).
        """
        cluster = Cluster()
        names = ["z1", *WORKERS]
        dirs = {name: self.mktemp() for name in names}

        def start(name):
            return add_with_journal(cluster, name, dirs[name])

        def crash(name):
            cluster.hosts[name].crash()
            cluster.nodes[name].journal.abandon()

        def close_live():
            for name, node in cluster.nodes.items():
                if not cluster.hosts[name].crashed:
                    node.journal.close()

        self.addCleanup(close_live)
        for name in names:
            start(name)
        cluster.network.run_until(lambda: all(cluster.connected(a, b) for a in names for b in names if a != b), 30)
        job_id = submit(cluster, "z1", 40)
        cluster.network.run(0.3)
        crash("z1")
        cluster.network.run_until(lambda: leaders(cluster, job_id), limit=30)
        [successor] = leaders(cluster, job_id)
        self.assertEqual(cluster.nodes[successor].master.epoch_of(job_id), 2)
        cluster.network.run(0.3)
        crash(successor)
        start("z1")
        others = [name for name in names if name != successor]
        cluster.network.run_until(
            lambda: any(cluster.nodes[n].replication.epoch_of(job_id) == 3 for n in leaders(cluster, job_id, others)),
            limit=60,
        )
        [leader] = leaders(cluster, job_id, others)
        node = start(successor)
        cluster.network.run_until(
            lambda: node.replication.stores[job_id].accepted == Ballot(3, leader) and job_id not in node.master.jobs,
            limit=30,
        )
        cluster.network.run(1.0)  # its journal has written that ballot
        crash(successor)
        with capturedLogs() as events:
            again = start(successor)
            self.assertNotIn(job_id, again.master.jobs, "the node that stepped down resumed the job from its journal")
            cluster.network.run_until(lambda: finished_at(cluster, job_id, names=[leader]) is not None, limit=120)
        self.assertEqual(leaders(cluster, job_id, names), [leader])
        self.assertEqual(
            [text(e) for e in events if "does not resume" in e["log_format"]],
            [
                f"Node {successor} does not resume job {job_id} from its journal: it stepped down as its master "
                f"before it stopped, and {leader} leads it at epoch 3"
            ],
        )
        self.assertEqual([text(e) for e in events if f"from {successor} at epoch 1" in text(e)], [])
        self.assertEqual(finished_at(cluster, job_id, names=[leader]).succeeded, 40)
