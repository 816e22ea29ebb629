"""
A master cut off from its job's majority, healed: the first worker that
fences it off (STALE_BALLOT on an assignment) deposes it at once, and it
keeps using that worker for its other jobs (docs/reliability.rst, "Master
failover").
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from .test_failover import failover_cluster, finished_at, leaders, submit
from .test_node import text


class FencedMasterTests(SynchronousTestCase):
    """A worker's STALE_BALLOT refusal tells a healed master that it is deposed."""

    def test_a_refused_assignment_deposes_the_healed_master(self):
        """
        z1's cable is cut while it leads a job; a successor finishes it.
        After the heal (z1 still cut off from the new leader, so that no
        JOB_LEADER reaches it first), z1 hands out what it still queued and
        a worker refuses it with STALE_BALLOT: z1 steps down saying so, hands out
        nothing more of the job, and a new job submitted to z1 runs on every
        worker (none was set aside for having fenced the old job).
        """
        cluster = failover_cluster(duration=0.3)
        job_id = submit(cluster, "z1", 30)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > 5, limit=20)
        cluster.network.partition("127.0.0.10", z1.info.port)
        cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=120)
        [leader] = leaders(cluster, job_id)
        # The new leader's own JOB_LEADER would depose z1 as well; keep it
        # cut off from z1 so that the refusal is what z1 hears first.
        cluster.network.cut("127.0.0.10", cluster.hosts[leader].address)
        with capturedLogs() as events:
            cluster.network.heal("127.0.0.10", z1.info.port)
            cluster.network.run_until(lambda: job_id not in z1.master.jobs, limit=120)
            cluster.network.run(5.0)
        cluster.network.mend("127.0.0.10", cluster.hosts[leader].address)
        cluster.network.run_until(lambda: cluster.connected("z1", leader) and cluster.connected(leader, "z1"), limit=60)
        steps = [text(e) for e in events if "steps down as master" in e["log_format"]]
        self.assertEqual(len(steps), 1, steps)
        self.assertRegex(
            steps[0],
            rf"^Node z1 steps down as master of job {job_id}: {leader} took it over at epoch 2 "
            r"\(w\d refused its assignments: it has seen that epoch\)$",
        )

        runs = {name: len(cluster.runners[name].runs) for name in ("w1", "w2", "w3")}
        second = submit(cluster, "z1", 30)
        cluster.network.run_until(lambda: z1.master.jobs[second].finished is not None, limit=60)
        self.assertEqual(z1.master.jobs[second].succeeded, 30)
        for name in ("w1", "w2", "w3"):
            self.assertGreater(len(cluster.runners[name].runs), runs[name], f"{name} ran nothing of the new job")
