"""
The start-up job (C{--tasks}/C{--job}) with C{--replicas}: accepted once
its replica set can be chosen among connected peers (L{p2pexec.startup}).
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.startup import STARTUP_SETTLE

from .test_node import Cluster, text, w_tasks


class StartupReplicaSetTests(SynchronousTestCase):
    """A start-up job is replicated on the peers that connect after the node began."""

    def test_waits_for_its_replicas(self):
        """
        The master starts before its workers: its start-up job is accepted
        only once two peers are connected, with both in its replica set, and
        finishes.
        """
        cluster = Cluster()
        with capturedLogs() as events:
            m1 = cluster.add_master(w_tasks(6), address="127.0.0.10", replicas=2)
            cluster.network.run(0.1)
            self.assertEqual(m1.master.jobs, {}, "accepted before any peer connected")
            cluster.add_worker("w1", address="127.0.0.1", replicas=2)
            cluster.add_worker("w2", address="127.0.0.2", replicas=2)
            cluster.network.run_until(lambda: m1.master.jobs, limit=STARTUP_SETTLE - 0.2)
        [job_id] = m1.master.jobs
        self.assertEqual(job_id, m1.startup.job_id)
        self.assertEqual(sorted(m1.replication.logs[job_id].members), ["m1", "w1", "w2"])
        waits = [text(e) for e in events if "accepts its start-up job" in e["log_format"]]
        self.assertEqual(len(waits), 1, waits)
        cluster.network.run_until(lambda: m1.startup.initial_job.called, limit=30)
        self.assertEqual(m1.master.jobs[job_id].succeeded, 6)

    def test_accepted_anyway_after_the_settle_time(self):
        """A lone node accepts its start-up job after the settle time, with a replica set of itself, and runs it."""
        cluster = Cluster()
        w1 = cluster.add_worker("w1", tasks=w_tasks(3), replicas=2)
        cluster.network.run(STARTUP_SETTLE - 0.1)
        self.assertEqual(w1.master.jobs, {})
        cluster.network.run_until(lambda: w1.startup.initial_job.called, limit=10)
        [job_id] = w1.master.jobs
        self.assertEqual(w1.master.jobs[job_id].succeeded, 3)

    def test_unreplicated_jobs_do_not_wait(self):
        """With --replicas 0 the start-up job is accepted at once, as before."""
        cluster = Cluster()
        w1 = cluster.add_worker("w1", tasks=w_tasks(3), replicas=0)
        self.assertEqual(list(w1.master.jobs), [w1.startup.job_id])
