"""
The failover parts joined (issue 13): the core's takeover, the fence's
adoption and the client part's directory and replica answers, on whole
nodes of the in-memory network.
"""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.replicas import Ballot, parse_stale, stale_description

from .test_failover import WORKERS, failover_cluster, finished_at, leaders, submit


def crash_at_a_third(cluster, count):
    """Submit C{count} tasks to z1, crash z1 once a third are committed; return the job id."""
    job_id = submit(cluster, "z1", count)
    z1 = cluster.nodes["z1"]
    cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > count // 3, limit=30)
    cluster.hosts["z1"].crash()
    return job_id


class AdoptionAfterTakeoverTests(SynchronousTestCase):
    """After a takeover the new leader adopts the job before it dispatches."""

    def test_no_task_runs_twice_when_the_master_ran_nothing(self):
        """
        z1 runs nothing and dies with the job a third done: the new leader
        asks the workers what they hold (HELD_TASKS), so that no task that
        was running on a live worker runs again, and every task has one
        result.
        """
        cluster = failover_cluster(duration=0.5)
        job_id = crash_at_a_third(cluster, 30)
        cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        runs = [task for name in WORKERS for (j, task, _) in cluster.runners[name].runs if j == job_id]
        twice = sorted({task for task in runs if runs.count(task) > 1})
        self.assertEqual(twice, [], "a task held by a live worker ran again after the failover")

    def test_job_leader_raises_every_fence_and_teaches_every_directory(self):
        """
        The new leader's JOB_LEADER reaches every live node: each worker's
        fence holds the new ballot for the job, and each node's directory
        names the new leader (which a client's forwarded question follows).
        """
        cluster = failover_cluster()
        job_id = submit(cluster, "z1", 30)
        # x1 joins after the job was accepted (so it is not a replica) and runs
        # another kind (so no HELD_TASKS reaches it): only JOB_LEADER tells it.
        cluster.add("x1", address="127.0.0.20", capabilities=frozenset({"x"}), replicas=2)
        names = ["z1", *WORKERS, "x1"]
        cluster.network.run_until(lambda: all(cluster.connected("x1", b) for b in names if b != "x1"), limit=30)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > 10, limit=30)
        cluster.hosts["z1"].crash()
        cluster.network.run_until(lambda: leaders(cluster, job_id), limit=30)
        [leader] = leaders(cluster, job_id)
        ballot = Ballot(2, leader)
        everyone = [*WORKERS, "x1"]
        cluster.network.run_until(
            lambda: all(cluster.nodes[name].worker.fence.highest(job_id) == ballot for name in everyone), limit=10
        )
        for name in everyone:
            found = cluster.nodes[name].directory.lookup(job_id)
            self.assertIsNotNone(found, name)
            self.assertEqual((found.master, found.ballot), (leader, ballot), name)


class DirectoryTests(SynchronousTestCase):
    """A node learns who leads a job from the assignments it takes."""

    def test_an_assignment_teaches_the_directory(self):
        """A worker that took an assignment of z1's job knows z1 leads it at epoch 1."""
        cluster = failover_cluster(replicas=0)
        job_id = submit(cluster, "z1", 6)
        cluster.network.run_until(lambda: finished_at(cluster, job_id, names=("z1",)) is not None, limit=30)
        taken = [name for name in WORKERS if any(j == job_id for j, _, _ in cluster.runners[name].runs)]
        self.assertTrue(taken)
        for name in taken:
            found = cluster.nodes[name].directory.lookup(job_id)
            self.assertIsNotNone(found, name)
            self.assertEqual(found.ballot, Ballot(1, "z1"))


class ReplicaViewsTests(SynchronousTestCase):
    """A replica answers a client from the records it holds."""

    def test_a_replica_summarises_the_job_it_holds(self):
        """
        A member of the replica set that does not lead the job rebuilds its
        summary and task pages from its records, naming its master and epoch.
        """
        cluster = failover_cluster()
        job_id = submit(cluster, "z1", 12)
        cluster.network.run_until(lambda: finished_at(cluster, job_id, names=("z1",)) is not None, limit=30)
        members = cluster.nodes["z1"].replication.logs[job_id].replicas
        cluster.network.run_until(
            lambda: all(cluster.nodes[m].replication.stores[job_id].held >= 14 for m in members), limit=10
        )
        replica = cluster.nodes[members[0]]
        summary = replica.following.replicas.replica_status(job_id)
        self.assertIsNotNone(summary)
        self.assertEqual((summary["id"], summary["total"], summary["done"]), (job_id, 12, 12))
        self.assertEqual((summary["master"], summary["epoch"]), ("z1", 1))
        page = replica.following.replicas.replica_tasks(job_id, 10, 5)
        self.assertEqual(([task["id"] for task in page[0]], page[1]), (["t10", "t11"], 12))
        self.assertIsNone(replica.following.replicas.replica_status("no-such-job"))


class StaleBallotFormatTests(SynchronousTestCase):
    """STALE_BALLOT has one description format, wherever it is raised."""

    def test_round_trip(self):
        """The JSON description names the newer ballot, which parse_stale reads back."""
        text = stale_description("j", Ballot(3, "n2"), "deposed")
        self.assertEqual(parse_stale(text), Ballot(3, "n2"))
        self.assertIsNone(parse_stale("3 n2 job j: the core's old format"))
