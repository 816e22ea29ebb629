"""
Tests for master failover on the worker side (L{p2pexec.fence}, the
fencing, lease and HELD_TASKS of L{p2pexec.worker}) and the new leader's
adoption (L{p2pexec.recovery.Recovery.adopt}).
"""

import json

import attr
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec import fence as fence_module
from p2pexec.attempt_states import AttemptState
from p2pexec.fence import Fence, held_to_wire, parse_stale_ballot
from p2pexec.job import Job, TaskRecord
from p2pexec.model import TaskResult
from p2pexec.recovery import check_held_answer
from p2pexec.replicas import Ballot
from p2pexec.task_states import TaskState
from p2pexec.testing.runner import FakeRunner
from p2pexec.worker import Worker
from tests.test_node import Cluster, text, w_tasks
from tests.test_worker import RecordingSink, command_task

OLD = Ballot(1, "m1")
NEW = Ballot(2, "n2")


class WorkerFencingTests(SynchronousTestCase):
    """A worker refuses, and logs, what a deposed master sends about a job."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w"}), 2, self.runner, self.clock, lease=60.0)
        self.sink = RecordingSink(key=("m1", "i-1"))

    def test_assignment_of_an_older_epoch_is_refused(self):
        """After epoch 2 of a job, an assignment of epoch 1 is refused with STALE_BALLOT naming epoch 2 and n2."""
        self.worker.accept(self.sink, "j", [command_task("t1")], OLD)
        self.worker.held("j", NEW)
        with capturedLogs() as events:
            error = self.assertRaises(
                commands.StaleBallot, self.worker.accept, self.sink, "j", [command_task("t2")], OLD
            )
        self.assertEqual(parse_stale_ballot(str(error)), NEW)
        self.assertEqual(json.loads(str(error))["job"], "j")
        self.assertEqual([key[1] for key in self.runner.runs], ["t1"], "t2 was not queued")
        lines = [text(e) for e in events]
        self.assertEqual(lines, ["Node w1 refused an assignment of job j from m1 at epoch 1: n2 leads it at epoch 2"])
        self.assertEqual(self.worker.fence.refused, 1)

    def test_assignment_of_the_same_or_newer_epoch_is_taken(self):
        """Assignments of the highest ballot seen, or a newer one, are queued as before."""
        self.worker.accept(self.sink, "j", [command_task("t1")], OLD)
        self.worker.accept(self.sink, "j", [command_task("t2")], OLD)
        self.worker.accept(RecordingSink(key=("n2", "i-2")), "j", [command_task("t3")], NEW)
        self.assertEqual(self.worker.fence.highest("j"), NEW)
        self.assertEqual(self.worker.running + self.worker.queued, 3)

    def test_cancel_of_an_older_epoch_is_refused(self):
        """A cancel of epoch 1, after epoch 2 was seen, stops nothing: the task runs on and its result comes."""
        self.worker.accept(self.sink, "j", [command_task("t1")], OLD)
        self.worker.held("j", NEW)
        self.assertRaises(commands.StaleBallot, self.worker.cancel, "m1", "j", OLD)
        self.assertEqual(self.runner.stopped, [])
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertEqual(self.worker.state_of("m1", "j", "t1", 1), AttemptState.SENT)

    def test_cancel_of_the_new_leader_stops_the_old_masters_tasks(self):
        """The new leader's cancel (epoch 2) stops the tasks its predecessor assigned."""
        self.worker.accept(self.sink, "j", [command_task("t1"), command_task("t2"), command_task("t3")], OLD)
        self.worker.held("j", NEW)
        self.assertEqual(self.worker.cancel("n2", "j", NEW), (1, 2))

    def test_acknowledgement_of_an_older_epoch_is_ignored(self):
        """An acknowledgement of epoch 1 after epoch 2 leaves the result kept; the new leader's frees it."""
        self.worker.accept(self.sink, "j", [command_task("t1")], OLD)
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.worker.held("j", NEW)
        result = TaskResult(task_id="t1", attempt=1, status="succeeded", node="w1")
        with capturedLogs() as events:
            self.worker.acknowledged("m1", "j", [result], OLD)
        self.assertIn(self.worker.state_of("m1", "j", "t1", 1), (AttemptState.FINISHED, AttemptState.SENT))
        self.assertIn("refused an acknowledgement of job j from m1 at epoch 1", text(events[0]))
        self.worker.acknowledged("m1", "j", [result], NEW)
        self.assertIsNone(self.worker.state_of("m1", "j", "t1", 1))

    def test_held_tasks_names_running_and_finished(self):
        """HELD_TASKS names the queued and running attempts, and the finished unacknowledged results, which go out again."""
        self.worker.accept(self.sink, "j", [command_task("t1"), command_task("t2")], OLD)
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.sink.batches.clear()
        self.worker.accept(self.sink, "j", [command_task("t3"), command_task("t4"), command_task("t5")], OLD)
        held = self.worker.held("j", NEW)
        self.assertEqual(sorted(held["running"]), [("t3", 1), ("t4", 1), ("t5", 1)])
        self.assertEqual(sorted(r.task_id for r in held["finished"]), ["t1", "t2"])
        self.clock.advance(0)
        self.assertEqual(self.sink.batches, [("j", [("t1", 1, "succeeded"), ("t2", 1, "succeeded")])])
        running, finished = check_held_answer(json.loads(json.dumps(held_to_wire(held))))
        self.assertEqual(sorted(running), [("t3", 1), ("t4", 1), ("t5", 1)])
        self.assertEqual(sorted(r.task_id for r in finished), ["t1", "t2"])

    def test_held_tasks_of_an_older_epoch_is_refused(self):
        """A HELD_TASKS of a ballot older than one seen is refused, and adopts nothing."""
        self.worker.accept(self.sink, "j", [command_task("t1")], Ballot(3, "n3"))
        self.assertRaises(commands.StaleBallot, self.worker.held, "j", NEW)
        self.assertIsNone(self.worker.fence.adopter("j"))


class LeaseTests(SynchronousTestCase):
    """A worker keeps a lost master's tasks for the lease, for a new leader to adopt."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w"}), 1, self.runner, self.clock, lease=60.0)
        self.sink = RecordingSink(key=("m1", "i-1"))
        self.worker.accept(self.sink, "j", [command_task(f"t{i}") for i in range(3)], OLD)
        self.worker.accept(self.sink, "k", [command_task("u1")], OLD)

    def test_queued_tasks_run_on_within_the_lease(self):
        """Within the lease, the lost master's queued tasks are not dropped: they start as slots free."""
        self.assertEqual(self.worker.drop_from(("m1", "i-1")), 0)
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual([key[1] for key in self.runner.runs], ["t0", "t1"])

    def test_unadopted_queued_tasks_are_dropped_when_the_lease_ends(self):
        """When the lease ends, the queued tasks no new leader claimed are dropped; the claimed ones stay."""
        self.worker.drop_from(("m1", "i-1"))
        self.worker.held("j", NEW)
        with capturedLogs() as events:
            self.clock.advance(60.0)
        self.assertEqual(self.worker.state_of("m1", "k", "u1", 1), None, "k's queued task was dropped")
        kept = [self.worker.state_of("m1", "j", f"t{i}", 1) for i in (1, 2)]
        self.assertNotIn(None, kept, "j's queued tasks, adopted by n2, stay")
        self.assertIn("dropped 1 queued task(s) of master m1", "".join(text(e) for e in events))

    def test_without_a_lease_queued_tasks_are_dropped_at_once(self):
        """With a lease of 0, a lost master's queued tasks are dropped at once, as before failover."""
        self.worker.lease = 0.0
        self.assertEqual(self.worker.drop_from(("m1", "i-1")), 3)


class FenceMemoryTests(SynchronousTestCase):
    """The fence's memory is bounded."""

    def test_idle_jobs_are_forgotten(self):
        """A job with nothing on the worker is forgotten after FENCE_MEMORY; one it holds is kept."""
        clock = Clock()
        holding = {"kept"}
        fence = Fence("w1", clock, holds=lambda job: job in holding)
        fence.admits("gone", OLD)
        fence.admits("kept", OLD)
        clock.advance(fence_module.FENCE_MEMORY)
        fence.admits("new", OLD)
        self.assertEqual((fence.highest("gone"), fence.highest("kept")), (None, OLD))
        self.assertEqual(len(fence), 2)

    def test_at_most_max_jobs(self):
        """Past MAX_FENCED_JOBS, the least recently seen job is forgotten."""
        self.patch(fence_module, "MAX_FENCED_JOBS", 3)
        fence = Fence("w1", Clock(), holds=lambda job: True)
        for job in "abcd":
            fence.admits(job, OLD)
        self.assertEqual(len(fence), 3)
        self.assertIsNone(fence.highest("a"))


def take_over(cluster, old, new, job_id):
    """
    Stand in for the core's takeover: give node C{new} the job as its
    replicas hold it (the results C{old} recorded, the rest pending), and
    adopt it at epoch 2.
    """
    recorded = cluster.nodes[old].master.jobs[job_id]
    records = [
        TaskRecord(spec=r.spec, state=TaskState.DONE, result=r.result)
        if r.state is TaskState.DONE
        else TaskRecord(spec=r.spec)
        for r in recorded.tasks.values()
    ]
    node = cluster.nodes[new]
    job = Job.restore(job_id, records, cluster.network.seconds())
    node.master.jobs[job_id] = job
    return job, node.master.adopt(job_id, 2)


class AdoptionTests(SynchronousTestCase):
    """A new leader adopts a job: only the tasks nobody holds run again."""

    def cluster(self, master_runs=False, w2_duration=1.0, tasks=None):
        """m1 master of 30 tasks (running some itself if C{master_runs}), workers w1 and w2, and n2."""
        cluster = Cluster()
        caps = frozenset({"w"}) if master_runs else frozenset()
        tasks = w_tasks(30) if tasks is None else tasks
        cluster.add("m1", address="127.0.0.1", port=4001, capabilities=caps, tasks=tasks, duration=1.0)
        cluster.add("n2", address="127.0.0.4", port=4004, capabilities=frozenset())
        cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=1.0)
        cluster.add_worker("w2", address="127.0.0.3", port=4003, duration=w2_duration)
        return cluster

    def runs(self, cluster, *names):
        """How many times each task ran on the named nodes."""
        counts = {}
        for name in names:
            for _, task, _ in cluster.runners[name].runs:
                counts[task] = counts.get(task, 0) + 1
        return counts

    def test_a_task_running_on_a_live_worker_is_not_run_again(self):
        """
        After m1 dies, n2 adopts the job: what w1 and w2 run or finished
        meanwhile is kept (each result recorded once), the rest runs, and no
        task runs twice.  A worker holds only the tasks it runs (its pace
        keeps it from queueing 1 s tasks), so w2's take 3 s: still running
        when n2 adopts the job while w1's have finished; and no backup copy
        (speculative = false), which would be a second run by request.
        """
        tasks = tuple(attr.evolve(task, speculative=False) for task in w_tasks(30))
        cluster = self.cluster(w2_duration=3.0, tasks=tasks)
        m1 = cluster.nodes["m1"]
        cluster.network.run_until(lambda: any(j.succeeded >= 6 for j in m1.master.jobs.values()), limit=20)
        job_id = next(iter(m1.master.jobs))
        cluster.hosts["m1"].crash()
        cluster.network.run(1.5)  # the workers go on with what they held, and finish some
        held = [len(cluster.nodes[w].worker.fence) for w in ("w1", "w2")]
        with capturedLogs() as events:
            job, adopted = take_over(cluster, "m1", "n2", job_id)
            cluster.network.run_until(lambda: adopted.called, limit=20)
            lines = [text(e) for e in events]
            adoption = [line for line in lines if "adopted job" in line]
            self.assertEqual(len(adoption), 1, lines)
            self.assertRegex(adoption[0], r"[1-9]\d* task\(s\) still held by them, [1-9]\d* finished result")
            cluster.network.run_until(lambda: job.done, limit=60)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        self.assertEqual(held, [1, 1])
        counts = self.runs(cluster, "w1", "w2")
        self.assertEqual(sorted(counts), sorted(f"w{i}" for i in range(30)))
        self.assertEqual({task: n for task, n in counts.items() if n > 1}, {}, "no task ran twice")
        self.assertEqual(job.stale, sum(1 for line in lines if "already has its result" in line))

    def test_the_original_masters_own_tasks_are_the_only_rerun(self):
        """When m1 ran tasks itself, those it was running when it died run again elsewhere, and nothing else."""
        cluster = self.cluster(master_runs=True)
        m1 = cluster.nodes["m1"]
        cluster.network.run_until(lambda: any(j.succeeded >= 6 for j in m1.master.jobs.values()), limit=20)
        job_id = next(iter(m1.master.jobs))
        in_flight = {task for _, task, _ in cluster.runners["m1"].running}
        self.assertTrue(in_flight, "m1 was running tasks of its own")
        cluster.hosts["m1"].crash()
        cluster.network.run(1.5)
        job, adopted = take_over(cluster, "m1", "n2", job_id)
        cluster.network.run_until(lambda: job.done, limit=60)
        self.assertEqual((job.succeeded, job.failed), (30, 0))
        counts = self.runs(cluster, "m1", "w1", "w2")
        self.assertEqual(sorted(counts), sorted(f"w{i}" for i in range(30)))
        self.assertEqual({task for task, n in counts.items() if n > 1}, in_flight)
