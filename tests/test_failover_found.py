"""
Master failover bugs the deterministic simulation (L{p2pexec.testing.simulation})
found, each replayed here as a small scenario on the in-memory network.
Each test names the seed that found it.
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

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
        """
        cluster = failover_cluster(duration=0.5)
        job_id = submit(cluster, "z1", 40)
        z1 = cluster.nodes["z1"]
        successor = z1.replication.logs[job_id].members[1]
        others = [n for n in ADDRESSES if n != successor]
        cluster.network.run(0.5)
        with capturedLogs() as events:
            cut_off(cluster, successor, others)
            cluster.network.run_until(lambda: any("cannot take job" in e["log_format"] for e in events), limit=30)
            mend(cluster, successor, others)
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        self.assertIsNotNone(finished_at(cluster, job_id), "the job finished")
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(steps), 1, steps)
        self.assertIn(f"{successor} took it over", steps[0])
        self.assertEqual(leaders(cluster, job_id), [successor])
        self.assertEqual(finished_at(cluster, job_id).succeeded, 40)
