"""Tests for L{p2pexec.dependencies} and L{p2pexec.fairshare}: task order, skipped tasks, priorities, fair share."""

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.fairshare import PendingQueues, WorkerQueue
from p2pexec.jobfile import JobFileError, job_priority, parse_job
from p2pexec.journal import Journal
from p2pexec.master import Master
from p2pexec.model import Assignment, TaskResult, TaskSpec, ValidationError
from p2pexec.replica_views import image_job
from p2pexec.replicas import Ballot
from p2pexec.replication import Record, job_records, rebuild
from p2pexec.testing.runner import FakeRunner
from p2pexec.worker import Worker

from .test_master import RecordingLink
from .test_model import node
from .test_worker import RecordingSink


def task(task_id, *after, retries=0):
    """A task of kind w that runs after C{after}."""
    return TaskSpec(id=task_id, kind="w", after=tuple(after), retries=retries)


def sent_ids(link):
    """The ids of every task sent, in order."""
    return [task_id for _, _, attempts in link.assignments for task_id, _ in attempts]


class LoadTests(SynchronousTestCase):
    """Dependencies and priorities are checked when a job is loaded."""

    def load(self, tasks, job=None):
        """Parse a job document of C{tasks} (dicts)."""
        document = {"task": tasks}
        if job is not None:
            document["job"] = job
        return parse_job(document, label="job")

    def test_after_is_kept(self):
        """C{after} reaches the task spec, and its wire form round-trips."""
        specs = self.load([{"id": "a"}, {"id": "b", "after": ["a"]}])
        self.assertEqual(specs[1].after, ("a",))
        self.assertEqual(TaskSpec.from_wire(specs[1].to_wire()), specs[1])

    def test_unknown_ids_named(self):
        """An id that names no task of the job is refused, naming the task and the id."""
        with self.assertRaises(JobFileError) as caught:
            self.load([{"id": "a"}, {"id": "b", "after": ["a", "zz"]}])
        self.assertIn("task 'b'", str(caught.exception))
        self.assertIn("'zz'", str(caught.exception))

    def test_cycle_named(self):
        """A cycle is refused, naming the tasks in it (and not the others)."""
        with self.assertRaises(JobFileError) as caught:
            self.load(
                [
                    {"id": "x"},
                    {"id": "a", "after": ["c", "x"]},
                    {"id": "b", "after": ["a"]},
                    {"id": "c", "after": ["b"]},
                ]
            )
        message = str(caught.exception)
        for name in ("'a'", "'b'", "'c'"):
            self.assertIn(name, message)
        self.assertNotIn("'x'", message)
        self.assertIn("cycle", message)

    def test_self_refused(self):
        """C{after} naming the task itself is refused, naming it."""
        with self.assertRaises(JobFileError) as caught:
            self.load([{"id": "a", "after": ["a"]}])
        self.assertIn("task #1 ('a'): 'after' names the task itself", str(caught.exception))

    def test_after_must_be_a_list_of_ids(self):
        """C{after} is a list of strings."""
        self.assertRaises(ValidationError, TaskSpec.from_wire, {"id": "a", "after": "b"})

    def test_long_chain_checked(self):
        """A chain of 20,000 tasks is checked without recursion."""
        tasks = [{"id": "t0"}] + [{"id": f"t{i}", "after": [f"t{i - 1}"]} for i in range(1, 20_000)]
        self.assertEqual(len(self.load(tasks)), 20_000)

    def test_priority(self):
        """[job] priority is read; a bad one is refused, naming the field."""
        self.assertEqual(job_priority({"job": {"priority": 10}}), 10)
        self.assertEqual(job_priority({}), 0)
        with self.assertRaises(JobFileError) as caught:
            self.load([{"id": "a"}], job={"priority": "high"})
        self.assertIn("'priority' must be a whole number", str(caught.exception))


class DependencyTests(SynchronousTestCase):
    """The master starts a task only after the tasks it runs after succeeded."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock)
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=4))

    def finish(self, job, task_id, status="succeeded"):
        """Report C{task_id}'s latest attempt as ended with C{status}."""
        attempt = job.tasks[task_id].attempt
        self.master.confirm(job.id, [TaskResult(task_id=task_id, attempt=attempt, status=status, node="w1")], "w1")
        self.clock.advance(0)

    def test_order(self):
        """b and c wait for a; d for b and c; each goes once what it waits for succeeded."""
        job = self.master.submit([task("d", "b", "c"), task("b", "a"), task("c", "a"), task("a")])
        self.clock.advance(0)
        self.assertEqual(sent_ids(self.link), ["a"])
        self.finish(job, "a")
        self.assertEqual(sent_ids(self.link), ["a", "b", "c"])
        self.finish(job, "b")
        self.assertEqual(sent_ids(self.link), ["a", "b", "c"])
        self.finish(job, "c")
        self.assertEqual(sent_ids(self.link), ["a", "b", "c", "d"])
        self.finish(job, "d")
        self.assertTrue(job.done)
        self.assertEqual((job.succeeded, job.failed, job.skipped), (4, 0, 0))

    def test_skipped_transitively(self):
        """A failed task's dependents and theirs end skipped, each naming why; the others run."""
        job = self.master.submit([task("a"), task("b", "a"), task("c", "b"), task("e"), task("f", "e")])
        self.clock.advance(0)
        self.finish(job, "a", "failed")
        self.finish(job, "e")
        self.assertEqual(sent_ids(self.link), ["a", "e", "f"])
        b, c = job.tasks["b"].result, job.tasks["c"].result
        self.assertEqual((b.status, c.status), ("skipped", "skipped"))
        self.assertEqual(b.error, "skipped: it runs after task 'a', which failed")
        self.assertEqual(c.error, "skipped: it runs after task 'b', which was skipped")
        self.finish(job, "f")
        self.assertTrue(job.done)
        self.assertEqual(self.link.finished, [job.id])
        self.assertEqual((job.succeeded, job.failed, job.skipped), (2, 1, 2))
        self.assertEqual(job.report(0.0)["skipped"], 2)

    def test_retries_first(self):
        """A task with retries left is not a failure yet: its dependents wait, and run once it succeeds."""
        job = self.master.submit([task("a", retries=1), task("b", "a")])
        self.clock.advance(0)
        self.finish(job, "a", "failed")
        self.assertIsNone(job.tasks["b"].result)
        self.clock.advance(60)
        self.finish(job, "a")
        self.assertEqual(sent_ids(self.link), ["a", "a", "b"])

    def test_cancelled_not_skipped(self):
        """A cancelled job's waiting tasks end cancelled, not skipped."""
        job = self.master.submit([task("a"), task("b", "a")])
        self.clock.advance(0)
        self.master.cancel(job.id, "test")
        self.assertEqual(job.tasks["b"].result.status, "cancelled")
        self.assertEqual(job.skipped, 0)

    def restart(self, path, job_id):
        """A master restarted from the journal at C{path}, with its job and its link."""
        link = RecordingLink()
        journal = Journal(path, self.clock)
        self.addCleanup(journal.close)
        restarted = Master(node(name="m1", capabilities=()), link, link, self.clock, journal=journal)
        (resumed,) = restarted.resume(journal.unfinished_jobs())
        self.assertEqual(resumed.id, job_id)
        restarted.worker_joined(node(name="w1", capabilities=("w",), slots=4))
        self.clock.advance(0)
        return restarted, resumed, link

    def journaled_master(self, path):
        """A master with a journal at C{path}."""
        journal = Journal(path, self.clock)
        master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, journal=journal)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=4))
        return master, journal

    def test_restart_keeps_order(self):
        """A master restarted from its journal holds b back until a succeeded, and skips them after a failure."""
        path = self.mktemp()
        master, journal = self.journaled_master(path)
        job = master.submit([task("a"), task("b", "a"), task("c", "b")])
        journal.commit()
        journal.close()
        restarted, resumed, link = self.restart(path, job.id)
        self.assertEqual(sent_ids(link), ["a"])
        restarted.confirm(resumed.id, [TaskResult(task_id="a", attempt=1, status="failed", node="w1")], "w1")
        self.clock.advance(0)
        self.assertEqual(sent_ids(link), ["a"])
        self.assertEqual(resumed.tasks["c"].result.status, "skipped")
        self.assertTrue(resumed.done)

    def test_restart_after_success(self):
        """A task whose dependency succeeded before the restart is queued after it; its own dependent waits."""
        path = self.mktemp()
        master, journal = self.journaled_master(path)
        job = master.submit([task("a"), task("b", "a"), task("c", "b")])
        self.clock.advance(0)
        master.confirm(job.id, [TaskResult(task_id="a", attempt=1, status="succeeded", node="w1")], "w1")
        self.clock.advance(0)
        journal.commit()
        journal.close()  # b was out on w1 when the master stopped
        restarted, resumed, link = self.restart(path, job.id)
        ((_, _, attempts, answered),) = link.queries
        answered.callback({"done": [], "running": [], "unknown": [task_id for task_id, _ in attempts]})
        self.clock.advance(0)
        self.assertEqual(sent_ids(link), ["b"])

    def test_restart_keeps_priority(self):
        """
        A master restarted from its journal resumes a job at the priority it
        was submitted with, and sends its tasks before an equal job of lower
        priority submitted after the restart.
        """
        path = self.mktemp()
        master, journal = self.journaled_master(path)
        job = master.submit([TaskSpec(id=f"h{i}", kind="w") for i in range(8)], priority=9)
        journal.commit()
        journal.close()
        restarted, resumed, link = self.restart(path, job.id)
        self.assertEqual(resumed.priority, 9)
        low = restarted.submit([TaskSpec(id=f"l{i}", kind="w") for i in range(8)])
        self.assertEqual(restarted.jobs[low.id].priority, 0)
        self.assertEqual({job_id for _, job_id, _ in link.assignments}, {job.id})

    def test_journal_without_priority_column(self):
        """A journal written before priorities were kept gains the column (0 for its jobs) and is read back."""
        import sqlite3

        from p2pexec.journal_schema import JOURNAL_FILE, open_database

        path = self.mktemp()
        master, journal = self.journaled_master(path)
        job = master.submit([task("a")], priority=5)
        journal.commit()
        journal.close()
        file = os.path.join(path, JOURNAL_FILE)
        db = sqlite3.connect(file)
        db.execute("ALTER TABLE jobs DROP COLUMN priority")
        db.commit()
        db.close()
        open_database(file).close()
        again = Journal(path, self.clock)
        self.addCleanup(again.close)
        ((stored,),) = [again.unfinished_jobs()]
        self.assertEqual((stored.id, stored.priority), (job.id, 0))

    def test_takeover_keeps_after_and_priority(self):
        """A successor's rebuild from the replicated records keeps each task's after and the job's priority."""
        specs = [task("a"), task("b", "a")]
        [(data, raw)] = job_records("j1", specs, ["m1", "m2", "m3"], None, 0.0, priority=7)
        self.assertEqual(json.loads(raw), data)  # the text sent to replicas says it too
        records = [Record(seq=1, kind="job", data=data, ballot=Ballot(1, "m1"))]
        image = rebuild(records)
        self.assertEqual(image.specs[1].after, ("a",))
        job = image_job(image, 0.0, 0.0, 3)
        self.assertEqual(job.priority, 7)
        self.master.jobs[job.id] = job
        self.master.queue_tasks(job, ["a", "b"])
        self.clock.advance(0)
        self.assertEqual(sent_ids(self.link), ["a"])


class MasterPriorityTests(SynchronousTestCase):
    """The master offers higher priorities first, and jobs of equal priority in turn."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock)

    def test_equal_priorities_take_turns(self):
        """Two jobs of equal priority are dispatched alternately."""
        queues = PendingQueues()
        for i in range(3):
            queues.add(0, "w", "j1", f"a{i}")
        for i in range(3):
            queues.add(0, "w", "j2", f"b{i}")
        ((_, kinds),) = queues.high_first()
        order = [kinds["w"].popleft()[1] for _ in range(6)]
        self.assertEqual(order, ["a0", "b0", "a1", "b1", "a2", "b2"])

    def test_higher_priority_sent_at_once_to_a_full_worker(self):
        """
        A worker whose window is full of a low-priority job is still sent
        the first tasks of a higher-priority job at once (nothing is killed).
        """
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        low = self.master.submit([TaskSpec(id=f"l{i}", kind="w") for i in range(20)])
        self.clock.advance(0)
        held = len(sent_ids(self.link))
        self.assertEqual(held, 4)
        high = self.master.submit([TaskSpec(id=f"h{i}", kind="w") for i in range(20)], priority=10)
        self.clock.advance(0)
        ((_, job, attempts),) = self.link.assignments[1:]
        self.assertEqual(job, high.id)
        self.assertTrue(attempts)
        self.assertEqual(low.counts()["assigned"], 4, "nothing of the low job was taken back")


class WorkerShareTests(SynchronousTestCase):
    """A worker serving several masters shares its slots, and starts higher priorities first."""

    def setUp(self):
        self.clock = Clock()
        self.runner = FakeRunner(self.clock, "w1", duration=1.0)
        self.worker = Worker("w1", frozenset({"w"}), 2, self.runner, self.clock)

    def assignments(self, prefix, count, priority=0):
        """C{count} assignments of kind w at C{priority}."""
        return [
            Assignment(task=TaskSpec(id=f"{prefix}{i}", kind="w", command=("true",)), attempt=1, priority=priority)
            for i in range(count)
        ]

    def running_by_master(self):
        """How many tasks each master has running, by the task ids' first letter."""
        counts = {}
        for _, task_id, _ in self.runner.running:
            counts[task_id[0]] = counts.get(task_id[0], 0) + 1
        return counts

    def test_two_masters_share_fairly(self):
        """A master that asked first fills the slots, yet the second gets half of them within one task's duration."""
        first, second = RecordingSink(("a", "i-1")), RecordingSink(("b", "i-2"))
        self.worker.accept(first, "ja", self.assignments("a", 50))
        self.clock.advance(0.5)
        self.worker.accept(second, "jb", self.assignments("b", 50))
        self.clock.advance(0.5)
        shares = []
        for _ in range(20):
            shares.append(self.running_by_master())
            self.clock.advance(1.0)
        self.assertEqual(shares, [{"a": 1, "b": 1}] * 20)

    def test_higher_priority_starts_at_the_next_free_slot(self):
        """A higher-priority task queued behind many others starts when the next slot frees."""
        sink = RecordingSink(("a", "i-1"))
        self.worker.accept(sink, "jl", self.assignments("l", 10))
        self.clock.advance(0.5)
        self.worker.accept(RecordingSink(("b", "i-2")), "jh", self.assignments("h", 1, priority=5))
        self.assertNotIn("h0", [task_id for _, task_id, _ in self.runner.runs])
        self.clock.advance(0.5)
        self.assertEqual([task_id for _, task_id, _ in self.runner.runs[2:4]], ["h0", "l2"])

    def test_queue_keep(self):
        """L{WorkerQueue.keep} drops what is not wanted and keeps the count."""
        queue = WorkerQueue(lambda e: e[0], lambda e: 0, lambda g: 0)
        for entry in [("a", 1), ("b", 2), ("a", 3)]:
            queue.append(entry)
        queue.keep(lambda e: e[1] != 2)
        self.assertEqual((len(queue), sorted(queue)), (2, [("a", 1), ("a", 3)]))
