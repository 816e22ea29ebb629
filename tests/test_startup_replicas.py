"""
The start-up job (C{--tasks}/C{--job}) with C{--replicas}: run at once, its
replica set chosen once enough peers are connected, or after the settle
time, or when it ends (L{p2pexec.startup}); nothing of it acknowledged
before its records are committed.
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.attempt_states import AttemptState
from p2pexec.startup import STARTUP_SETTLE

from .test_failover import finished_at, leaders
from .test_node import Cluster, text, w_tasks


def acknowledged_states(worker, runner, master="m1"):
    """The states, on C{worker}, of the attempts C{runner} ran that it still holds (the unacknowledged ones)."""
    states = [worker.worker.state_of(master, job, task, attempt) for job, task, attempt in runner.runs]
    return [state for state in states if state is not None]


class StartupReplicaSetTests(SynchronousTestCase):
    """A start-up job runs at once and is replicated on the peers that connect after the node began."""

    def test_a_lone_node_does_not_wait(self):
        """
        A lone node with C{--replicas 2} dispatches its start-up job at once
        and finishes it without waiting for the settle time, with a replica
        set of itself: no replicated log, nothing sent.
        """
        cluster = Cluster()
        with capturedLogs() as events:
            w1 = cluster.add_worker("w1", tasks=w_tasks(3), replicas=2)
            cluster.network.run(0.01)
            self.assertEqual(len(cluster.runners["w1"].runs), 2, "both slots started at once")
            cluster.network.run_until(lambda: w1.startup.initial_job.called, limit=STARTUP_SETTLE / 2)
        [job_id] = w1.master.jobs
        self.assertEqual(w1.master.jobs[job_id].succeeded, 3)
        self.assertEqual((w1.replication.logs, w1.replication.sent), ({}, 0))
        self.assertNotIn(job_id, w1.replication.unplaced)
        self.assertIn(
            f"Node w1 does not replicate job {job_id}: no other node is connected, so it has no failover",
            [text(e) for e in events],
        )

    def test_replicated_to_peers_that_join_within_the_settle_time(self):
        """
        The master starts before its workers: its start-up job is accepted
        at once, its replica set chosen once two peers are connected (both
        in it, before the settle time), and every record reaches them.
        """
        cluster = Cluster()
        with capturedLogs() as events:
            m1 = cluster.add_master(w_tasks(6), address="127.0.0.10", replicas=2)
            cluster.network.run(0.1)
            [job_id] = m1.master.jobs
            self.assertEqual(job_id, m1.startup.job_id)
            self.assertEqual(m1.replication.logs, {}, "no replica set chosen before a peer connected")
            cluster.add_worker("w1", address="127.0.0.1", replicas=2)
            cluster.add_worker("w2", address="127.0.0.2", replicas=2)
            cluster.network.run_until(lambda: job_id in m1.replication.logs, limit=STARTUP_SETTLE - 0.2)
        self.assertEqual(sorted(m1.replication.logs[job_id].members), ["m1", "w1", "w2"])
        waits = [text(e) for e in events if "runs its start-up job" in e["log_format"]]
        self.assertEqual(len(waits), 1, waits)
        cluster.network.run_until(lambda: m1.startup.initial_job.called, limit=30)
        self.assertEqual(m1.master.jobs[job_id].succeeded, 6)
        tail = m1.replication.logs[job_id].tail
        for name in ("w1", "w2"):
            self.assertEqual(cluster.nodes[name].replication.stores[job_id].held, tail)

    def test_confirmations_wait_for_the_replica_set_but_slots_do_not(self):
        """
        With one peer of the two asked for, the worker's results are applied
        at once and its slots keep running tasks, but none is acknowledged
        before the settle time; then the set (master and worker) is chosen,
        the records replicated and every result acknowledged.
        """
        cluster = Cluster()
        m1 = cluster.add_master(w_tasks(40), address="127.0.0.10", replicas=2)
        w1 = cluster.add_worker("w1", address="127.0.0.1", replicas=2)
        cluster.network.run(STARTUP_SETTLE - 0.3)
        [job] = m1.master.jobs.values()
        done = sum(1 for record in job.tasks.values() if record.result is not None)
        self.assertGreaterEqual(done, 10, "the worker's slots kept running tasks")
        self.assertEqual(m1.replication.logs, {})
        held = acknowledged_states(w1, cluster.runners["w1"])
        self.assertGreaterEqual(held.count(AttemptState.SENT), done, "a result was acknowledged before its commit")
        cluster.network.run_until(lambda: m1.startup.initial_job.called, limit=30)
        self.assertEqual(m1.replication.logs[job.id].members, ("m1", "w1"))
        self.assertEqual(job.succeeded, 40)
        cluster.network.run(1.0)
        self.assertEqual(acknowledged_states(w1, cluster.runners["w1"]), [], "every result acknowledged")
        self.assertEqual(w1.replication.stores[job.id].held, m1.replication.logs[job.id].tail)

    def test_takeover_of_a_start_up_job(self):
        """
        The master of a start-up job replicated to peers that joined after
        it started dies: a successor takes the job over and finishes it,
        with one result per task.
        """
        cluster = Cluster()
        workers = ("w1", "w2", "w3")
        m1 = cluster.add(
            "m1",
            address="127.0.0.10",
            capabilities=frozenset(),
            tasks=w_tasks(30),
            replicas=2,
            heartbeat_timeout=2.5,
        )
        for i, name in enumerate(workers):
            cluster.add(name, address=f"127.0.0.{i + 1}", capabilities=frozenset({"w"}), replicas=2, duration=0.5)
        job_id = m1.startup.job_id
        cluster.network.run_until(
            lambda: job_id in m1.replication.logs and m1.replication.logs[job_id].committed > 10, limit=20
        )
        with capturedLogs() as events:
            cluster.hosts["m1"].crash()
            cluster.network.run_until(lambda: finished_at(cluster, job_id, workers) is not None, limit=60)
        job = finished_at(cluster, job_id, workers)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        [leader] = leaders(cluster, job_id, workers)
        self.assertEqual(cluster.nodes[leader].master.epoch_of(job_id), 2)
        self.assertTrue([e for e in events if "took over job" in e["log_format"]])

    def test_unreplicated_jobs_do_not_wait(self):
        """With --replicas 0 the start-up job is accepted at once, and nothing of it waits to be placed."""
        cluster = Cluster()
        w1 = cluster.add_worker("w1", tasks=w_tasks(3), replicas=0)
        self.assertEqual(list(w1.master.jobs), [w1.startup.job_id])
        self.assertNotIn(w1.startup.job_id, w1.replication.unplaced)
