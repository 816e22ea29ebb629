"""
Running a finished job's failed tasks again (L{p2pexec.reruns}, RERUN_TASKS),
on the in-memory network: the new attempts go on from the old ones, the
results show the new outcomes, and the reopening holds across a master
restart and a takeover.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import FAILED, SUCCEEDED, Assignment
from p2pexec.replication import log_ended, rebuild
from p2pexec.reruns import StillRunning

from .test_failover import failover_cluster, finished_at, leaders
from .test_node import Cluster, text


def fails_first(*ids: str) -> Any:
    """An outcome: the tasks C{ids} fail on their first attempt; everything else succeeds."""

    def outcome(assignment: Assignment) -> tuple[str, int]:
        if assignment.task.id in ids and assignment.attempt == 1:
            return FAILED, 1
        return SUCCEEDED, 0

    return outcome


def submit(cluster: Cluster, name: str, tasks: list[dict[str, Any]]) -> str:
    """Submit C{tasks} to C{name}; the job id once the submission is answered."""
    answered: list[Any] = []
    cluster.nodes[name].submit(tasks).addBoth(answered.append)
    cluster.network.run_until(lambda: answered, limit=10)
    [job_id] = answered
    assert isinstance(job_id, str), job_id
    return job_id


def w_tasks(count: int) -> list[dict[str, Any]]:
    """C{count} tasks t0, t1 ... of kind w."""
    return [{"id": f"t{i}", "kind": "w", "command": ["true"]} for i in range(count)]


def two_workers(outcome: Any = None, duration: float = 0.1, **master: Any) -> Cluster:
    """m1 (runs nothing) and workers w1, w2 of kind w, connected."""
    cluster = Cluster()
    cluster.add("m1", capabilities=frozenset(), port=10001, **master)
    for port, name in ((10002, "w1"), (10003, "w2")):
        cluster.add(name, port=port, capabilities=frozenset({"w"}), outcome=outcome, duration=duration)
    cluster.network.run_until(lambda: cluster.connected("m1", "w1") and cluster.connected("m1", "w2"), limit=30)
    return cluster


def ended(cluster: Cluster, name: str, job_id: str) -> bool:
    """Whether C{name}'s master has ended C{job_id} and announced it."""
    master = cluster.nodes[name].master
    job = master.jobs.get(job_id)
    return job is not None and job.finished is not None and job_id in master._endings.announced


class RerunTests(SynchronousTestCase):
    """p2pexec rerun --failed on the master."""

    def test_failed_tasks_run_again(self) -> None:
        """
        Two of six tasks fail: the rerun runs exactly those two again, as
        attempt 2, and the job ends again with every task succeeded; the
        others keep their first attempt.  One log line names the tasks.
        """
        cluster = two_workers(outcome=fails_first("t1", "t4"))
        job_id = submit(cluster, "m1", w_tasks(6))
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        master = cluster.nodes["m1"].master
        job = master.jobs[job_id]
        self.assertEqual((job.succeeded, job.failed), (4, 2))
        with capturedLogs() as events:
            again = master.rerun(job_id, "failed", by="a test")
            self.assertEqual(again, ["t1", "t4"])
            self.assertIsNone(job.finished)
            cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        self.assertEqual((job.succeeded, job.failed), (6, 0))
        attempts = {task_id: record.attempt for task_id, record in job.tasks.items()}
        self.assertEqual(attempts, {"t0": 1, "t1": 2, "t2": 1, "t3": 1, "t4": 2, "t5": 1})
        self.assertEqual(job.tasks["t1"].result.attempt, 2)
        self.assertEqual(job.tasks["t1"].result.status, SUCCEEDED)
        lines = [text(e) for e in events if "again" in e["log_format"]]
        self.assertEqual(lines, [f"Node m1 runs 2 task(s) of job {job_id} again (a test): ['t1', 't4']"])
        self.assertTrue(any("finished: 6 succeeded, 0 failed" in text(e) for e in events))

    def test_cancelled_tasks_run_again(self) -> None:
        """A cancelled job's tasks without a result run again; the job is no longer cancelled."""
        cluster = two_workers(duration=1.0)
        job_id = submit(cluster, "m1", w_tasks(8))
        master = cluster.nodes["m1"].master
        cluster.network.run(1.5)
        cancelled = master.cancel(job_id, by="a test")
        self.assertGreater(cancelled, 0)
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        job = master.jobs[job_id]
        self.assertTrue(job.cancelled)
        again = master.rerun(job_id, "failed", by="a test")
        self.assertEqual(len(again), cancelled)
        self.assertFalse(job.cancelled)
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        self.assertEqual((job.succeeded, job.failed), (8, 0))
        self.assertFalse(job.cancelled)

    def test_nothing_to_rerun(self) -> None:
        """A job whose every task succeeded is left as it was: nothing runs."""
        cluster = two_workers()
        job_id = submit(cluster, "m1", w_tasks(3))
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        master = cluster.nodes["m1"].master
        finished = master.jobs[job_id].finished
        self.assertEqual(master.rerun(job_id, "failed", by="a test"), [])
        self.assertEqual(master.jobs[job_id].finished, finished)
        self.assertEqual(master.pending_count(), 0)

    def test_running_job_refused(self) -> None:
        """A job still running cannot be rerun: StillRunning says how far it is."""
        cluster = two_workers(duration=5.0)
        job_id = submit(cluster, "m1", w_tasks(3))
        error = self.assertRaises(StillRunning, cluster.nodes["m1"].master.rerun, job_id, "failed", "a test")
        self.assertIn(f"job {job_id} is still running (0 of 3 task(s) done)", str(error))

    def test_unknown_job(self) -> None:
        """An unknown job is a KeyError (RERUN_TASKS answers UNKNOWN_JOB)."""
        cluster = two_workers()
        self.assertRaises(KeyError, cluster.nodes["m1"].master.rerun, "nope", "failed", "a test")

    def test_across_a_master_restart(self) -> None:
        """
        The master is killed while the rerun runs: restarted with its
        journal, it resumes the reopened job (not the finished one) and
        finishes it, the failed task now succeeded at attempt 2 or later.
        """
        state_dir = self.mktemp()
        cluster = two_workers(outcome=fails_first("t2"), duration=2.0, state_dir=state_dir)
        job_id = submit(cluster, "m1", w_tasks(4))
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=30)
        cluster.network.run(1.0)  # its end is in the journal
        m1 = cluster.nodes["m1"]
        self.assertEqual(m1.master.rerun(job_id, "failed", by="a test"), ["t2"])
        m1.journal.commit()
        cluster.network.run(0.5)
        cluster.hosts["m1"].crash()
        m1.journal.abandon()
        again = cluster.add("m1", capabilities=frozenset(), port=10001, state_dir=state_dir)
        self.addCleanup(again.journal.close)
        self.assertIn(job_id, again.master.jobs)
        self.assertIsNone(again.master.jobs[job_id].finished, "the reopened job is resumed, not recalled finished")
        cluster.network.run_until(lambda: ended(cluster, "m1", job_id), limit=60)
        job = again.master.jobs[job_id]
        self.assertEqual((job.succeeded, job.failed), (4, 0))
        self.assertGreaterEqual(job.tasks["t2"].result.attempt, 2)
        self.assertEqual(job.tasks["t0"].result.attempt, 1)


class ReplicatedRerunTests(SynchronousTestCase):
    """A replicated job's rerun is a record of its log: a successor knows."""

    def test_rerun_record_and_takeover(self) -> None:
        """
        The rerun is replicated (the log no longer reads as ended, the task's
        old result is gone); the master dies while the rerun runs, and a
        successor finishes it, the task at attempt 2 or later.
        """
        cluster = failover_cluster(duration=2.0)
        for name in ("w1", "w2", "w3"):
            cluster.runners[name]._outcome = fails_first("t1")
        answered: list[Any] = []
        cluster.nodes["z1"].submit(w_tasks(3)).addBoth(answered.append)
        cluster.network.run_until(lambda: answered, limit=10)
        [job_id] = answered
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: ended(cluster, "z1", job_id), limit=30)
        self.assertEqual(z1.master.jobs[job_id].failed, 1)
        log = z1.replication.logs[job_id]
        cluster.network.run_until(lambda: log.committed >= log.tail, limit=10)
        self.assertTrue(log_ended(z1.replication.records_of(job_id)))
        self.assertEqual(z1.master.rerun(job_id, "failed", by="a test"), ["t1"])
        cluster.network.run_until(lambda: log.committed >= log.tail, limit=10)
        image = rebuild(z1.replication.records_of(job_id))
        self.assertFalse(image.ended)
        self.assertNotIn("t1", image.results)
        self.assertEqual(image.attempts, {"t1": 1})
        self.assertFalse(log_ended(z1.replication.records_of(job_id)))
        cluster.hosts["z1"].crash()
        cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (3, 0))
        self.assertGreaterEqual(job.tasks["t1"].result.attempt, 2)
        self.assertEqual(len(leaders(cluster, job_id)), 1)
