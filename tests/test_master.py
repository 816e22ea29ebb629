"""Tests for L{p2pexec.job} and L{p2pexec.master}: tracking and dispatch."""

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import endings as endings_module
from p2pexec.job import Job, TaskState, Verdict
from p2pexec.journal import Journal, NullJournal
from p2pexec.master import Master
from p2pexec.model import TaskResult, TaskSpec, parse_instructions
from p2pexec.recovery import RECONCILE_GRACE

from .test_model import node


def result(task_id, attempt=1, status="succeeded", worker="b1"):
    """A result of C{task_id}."""
    return TaskResult(task_id=task_id, attempt=attempt, status=status, node=worker)


class JobTests(SynchronousTestCase):
    """L{Job}: one job's book-keeping."""

    def setUp(self):
        self.job = Job("j", parse_instructions(["a1", "b1"]), started=10.0)

    def test_duplicate_ids_refused(self):
        """A job cannot hold two tasks with one id."""
        self.assertRaises(ValueError, Job, "j", parse_instructions(["a1"]) * 2, 0.0)

    def test_attempts_count_up(self):
        """Each assignment of a task is a new attempt."""
        self.assertEqual(self.job.assign("a1", "w1").attempt, 1)
        self.job.put_back("w1", 0.0)
        self.assertEqual(self.job.assign("a1", "w2").attempt, 2)
        self.assertEqual(self.job.participants, {"w1", "w2"})

    def test_apply_latest_attempt(self):
        """A result for the latest attempt finishes the task."""
        self.job.assign("a1", "w1")
        self.assertEqual(self.job.apply(result("a1"), 11.0), Verdict.APPLIED)
        self.assertEqual(self.job.tasks["a1"].state, TaskState.DONE)
        self.assertFalse(self.job.done)

    def test_superseded_attempt_is_stale(self):
        """A result for an older attempt is stale and changes nothing."""
        self.job.assign("a1", "w1")
        self.job.put_back("w1", 0.0)
        self.job.assign("a1", "w2")
        self.assertEqual(self.job.apply(result("a1", attempt=1), 11.0), Verdict.STALE)
        self.assertEqual(self.job.tasks["a1"].state, TaskState.ASSIGNED)
        self.assertEqual(self.job.stale, 1)

    def test_second_result_is_stale(self):
        """Once done, a task ignores further results."""
        self.job.assign("a1", "w1")
        self.job.apply(result("a1"), 11.0)
        self.assertEqual(self.job.apply(result("a1"), 12.0), Verdict.STALE)
        self.assertEqual(self.job.succeeded, 1)

    def test_late_result_after_put_back_counts(self):
        """A result that arrives after its task was put back, but before reassignment, counts."""
        self.job.assign("a1", "w1")
        self.job.put_back("w1", 0.0)
        self.assertEqual(self.job.apply(result("a1"), 11.0), Verdict.APPLIED)
        self.assertFalse(self.job.is_pending("a1"))

    def test_unknown_task(self):
        """A result for a task the job does not have is unknown."""
        self.assertEqual(self.job.apply(result("zz"), 11.0), Verdict.UNKNOWN)

    def test_done_and_report(self):
        """The job is done when every task has a result; the report says how each ended."""
        for task_id in ("a1", "b1"):
            self.job.assign(task_id, "w1")
        self.job.apply(result("a1"), 11.0)
        self.job.apply(result("b1", status="failed"), 12.5)
        self.assertTrue(self.job.done)
        report = self.job.report(99.0)
        self.assertEqual((report["succeeded"], report["failed"], report["elapsed"]), (1, 1, 2.5))
        self.assertEqual([t["status"] for t in report["tasks"]], ["succeeded", "failed"])


class RecordingLink:
    """An L{IWorkerLink} and L{IJobObserver} that records every call."""

    def __init__(self, events=None):
        self.assignments = []
        self.completes = []
        self.finished = []
        self.queries = []
        self.cancels = []
        self.cancelled_attempts = []
        self.events = events if events is not None else []

    def send_assignments(self, worker, job, assignments):
        """Record the task IDs and attempts sent to C{worker}, and a C{send} event."""
        self.events.append("send")
        self.assignments.append((worker, job, [(a.task.id, a.attempt) for a in assignments]))

    def query_tasks(self, worker, job, attempts):
        """Record the query; return a L{Deferred} the test fires."""
        d = Deferred()
        self.queries.append((worker, job, attempts, d))
        return d

    def send_cancel_attempts(self, worker, job, attempts):
        """Note the attempts to stop."""
        self.cancelled_attempts.append((worker, job, list(attempts)))

    def send_cancel(self, worker, job):
        """Record the cancel sent to C{worker}."""
        self.cancels.append((worker, job))

    def send_complete(self, worker, job):
        """Record the completion sent to C{worker}."""
        self.completes.append((worker, job.id))

    def job_finished(self, job):
        """Record the ID of the finished job."""
        self.finished.append(job.id)


class MasterTests(SynchronousTestCase):
    """L{Master}: dispatch, confirmation and recovery."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="a1", capabilities=("a",)), self.link, self.link, self.clock)

    def test_original_example(self):
        """The original example: a-tasks stay home, b1 and c1 go to their workers."""
        self.master.worker_joined(node(name="a1", capabilities=("a",), slots=2))
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
        self.master.worker_joined(node(name="c1", capabilities=("c",), slots=2))
        job = self.master.submit(parse_instructions("a1,a2,b1,c1,a3".split(",")))
        self.assertEqual(self.link.assignments, [], "dispatch waits for the end of the reactor turn")
        self.clock.advance(0)
        self.assertEqual(
            sorted(self.link.assignments),
            [
                ("a1", job.id, [("a1", 1), ("a2", 1), ("a3", 1)]),
                ("b1", job.id, [("b1", 1)]),
                ("c1", job.id, [("c1", 1)]),
            ],
        )
        with capturedLogs() as events:
            self.master.confirm(job.id, [result("b1", worker="b1")], "b1")
            self.master.confirm(job.id, [result("c1", worker="c1")], "c1")
            self.master.confirm(job.id, [result(t, worker="a1") for t in ("a1", "a2", "a3")], "a1")
        self.assertEqual(self.link.finished, [], "finishing waits for the end of the turn")
        self.clock.advance(0)
        lines = [e["log_format"].format(**e) for e in events if "Master received" in e["log_format"]]
        self.assertIn("Master received confirmation for b1 from b1", lines)
        self.assertIn("Master received confirmation for a2 from a1", lines)
        self.assertEqual(self.link.finished, [job.id])
        self.assertEqual(sorted(self.link.completes), [("b1", job.id), ("c1", job.id)])

    def test_window_limits_outstanding(self):
        """Before any task finished, a worker holds at most twice its slots."""
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
        self.master.submit([TaskSpec.instruction(f"b{i}") for i in range(10)])
        self.clock.advance(0)
        self.assertEqual(sum(len(a[2]) for a in self.link.assignments), 4)
        self.assertEqual(self.master.pending_count(), 6)

    def test_window_follows_task_duration(self):
        """Instant tasks open a deep queue; tasks longer than the queue's horizon get the slots and no more."""
        for duration, expected_window in ((0.0, 2 + 2000), (0.01, 2 + 10), (0.04, 2 + 2), (1.0, 2)):
            link = RecordingLink()
            master = Master(node(name="a1", capabilities=()), link, link, self.clock)
            master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
            job = master.submit([TaskSpec.instruction(f"b{i}") for i in range(5000)])
            self.clock.advance(0)
            first = [task_id for _, _, batch in link.assignments for task_id, _ in batch]
            master.confirm(
                job.id,
                [TaskResult(task_id=t, attempt=1, status="succeeded", node="b1", duration=duration) for t in first],
                "b1",
            )
            self.clock.advance(0)
            outstanding = sum(len(batch) for _, _, batch in link.assignments) - len(first)
            self.assertEqual(outstanding, expected_window, duration)

    def test_a_duration_that_is_not_finite_leaves_the_window_alone(self):
        """
        A worker's task time that is not finite (which the wire refuses, but
        nothing else may turn the mean into NaN either) is not folded into its
        mean, and the master keeps handing out tasks.
        """
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=1))
        job = self.master.submit([TaskSpec.instruction(f"b{i}") for i in range(3)])
        self.clock.advance(0)
        first = [task_id for _, _, batch in self.link.assignments for task_id, _ in batch]
        self.master.confirm(
            job.id,
            [TaskResult(task_id=first[0], attempt=1, status="succeeded", node="b1", duration=float("nan"))],
            "b1",
        )
        self.clock.advance(0)
        sent = sorted(task_id for _, _, batch in self.link.assignments for task_id, _ in batch)
        self.assertEqual(sent, ["b0", "b1", "b2"])

    def test_tops_up_once_half_the_queue_drained(self):
        """
        A worker with a deep queue is not sent a task per confirmation: it is
        topped up, in one batch, once half its queue beyond the slots has
        drained.
        """
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
        job = self.master.submit([TaskSpec.instruction(f"b{i}") for i in range(100)])
        self.clock.advance(0)
        sent = [task_id for _, _, batch in self.link.assignments for task_id, _ in batch]
        # Tasks of 10 ms: a window of 2 slots + 10 queued.
        self.master.confirm(
            job.id,
            [TaskResult(task_id=t, attempt=1, status="succeeded", node="b1", duration=0.01) for t in sent],
            "b1",
        )
        self.clock.advance(0)
        batches_before = len(self.link.assignments)
        in_hand = [task_id for _, _, batch in self.link.assignments[-1:] for task_id, _ in batch]
        self.assertEqual(len(in_hand), 12)
        for count, task_id in enumerate(in_hand[:5], start=1):
            self.master.confirm(
                job.id, [TaskResult(task_id=task_id, attempt=1, status="succeeded", node="b1", duration=0.01)], "b1"
            )
            self.clock.advance(0)
            self.assertEqual(len(self.link.assignments), batches_before if count < 5 else batches_before + 1, count)
        self.assertEqual(len(self.link.assignments[-1][2]), 5)

    def test_waits_for_capability_and_says_so(self):
        """Tasks nobody can run wait, the log names the capability once, and they go out when a capable node joins."""
        with capturedLogs() as events:
            job = self.master.submit([TaskSpec.instruction("z1")])
            self.clock.advance(0)
            self.assertEqual(events, [e for e in events if "waiting" not in e["log_format"]], "not at once")
            for _ in range(10):
                self.clock.advance(1)
                self.master.schedule_dispatch()
                self.clock.advance(0)
        waiting = [e for e in events if e.get("kind") == "z" and "waiting" in e["log_format"]]
        self.assertEqual(len(waiting), 1)
        self.assertIn("capability", waiting[0]["log_format"])
        self.assertEqual(self.link.assignments, [])
        self.master.worker_joined(node(name="z9", capabilities=("z",)))
        self.clock.advance(0)
        self.assertEqual(self.link.assignments, [("z9", job.id, [("z1", 1)])])

    def test_lost_worker_tasks_run_elsewhere(self):
        """A lost worker's unconfirmed tasks go to another worker as new attempts."""
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=1))
        job = self.master.submit([TaskSpec.instruction("b1"), TaskSpec.instruction("b2")])
        self.clock.advance(0)
        self.master.confirm(job.id, [result("b1")], "b1")
        self.clock.advance(0)
        self.master.worker_lost("b1", "lost its connection")
        self.master.worker_joined(node(name="b2", capabilities=("b",), slots=1))
        self.clock.advance(0)
        self.assertEqual(self.link.assignments[-1], ("b2", job.id, [("b2", 2)]))
        applied, stale = self.master.confirm(job.id, [result("b2", attempt=1)], "b1")
        self.assertEqual((applied, stale), (0, 1))
        self.master.confirm(job.id, [result("b2", attempt=2, worker="b2")], "b2")
        self.clock.advance(0)
        self.assertEqual(self.link.finished, [job.id])

    def test_empty_job_finishes_at_once(self):
        """A job without tasks is finished as soon as it is accepted."""
        job = self.master.submit([])
        self.assertEqual(self.link.finished, [job.id])

    def test_only_the_newest_finished_jobs_are_kept(self):
        """
        A master keeps at most MAX_FINISHED_JOBS finished jobs in memory,
        forgetting the oldest first; unfinished ones are never forgotten.
        """
        self.patch(endings_module, "MAX_FINISHED_JOBS", 2)
        waiting = self.master.submit([TaskSpec.instruction("z1")])
        finished = []
        for _ in range(4):
            finished.append(self.master.submit([]).id)
            self.clock.advance(1)
        self.assertEqual(sorted(self.master.jobs), sorted([waiting.id, *finished[-2:]]))
        self.assertEqual(self.link.finished, finished)

    def test_a_forgotten_jobs_queue_entry_is_skipped(self):
        """
        A task put back in the queue and then finished by a late result
        leaves its queue entry behind; once its job is forgotten, dispatch
        skips the entry and still hands out the other jobs' tasks.
        """
        self.patch(endings_module, "MAX_FINISHED_JOBS", 1)
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
        first = self.master.submit([TaskSpec.instruction("b1")])
        self.clock.advance(0)
        self.master.worker_lost("b1", "moved to a new connection", count_loss=False)
        self.master.confirm(first.id, [TaskResult(task_id="b1", attempt=1, status="succeeded", node="b1")], "b1")
        self.clock.advance(1)
        self.master.submit([])
        self.clock.advance(1)
        self.assertNotIn(first.id, self.master.jobs)
        later = self.master.submit([TaskSpec.instruction("b2")])
        self.master.worker_joined(node(name="b1", capabilities=("b",), slots=2))
        self.clock.advance(0)
        self.assertIn((later.id, [("b2", 1)]), [(job, batch) for _, job, batch in self.link.assignments])

    def test_unknown_job(self):
        """Confirming a job this master does not have raises KeyError."""
        self.assertRaises(KeyError, self.master.confirm, "nope", [], "b1")

    def test_stop_dispatching(self):
        """A leaving master hands out nothing more."""
        self.master.worker_joined(node(name="b1", capabilities=("b",)))
        self.master.submit([TaskSpec.instruction("b1")])
        self.master.stop_dispatching()
        self.clock.advance(0)
        self.assertEqual(self.link.assignments, [])

    def test_failed_task_logged(self):
        """A failed task is logged as a warning with its reason."""
        self.master.worker_joined(node(name="b1", capabilities=("b",)))
        job = self.master.submit([TaskSpec.instruction("b1")])
        self.clock.advance(0)
        with capturedLogs() as events:
            self.master.confirm(
                job.id, [TaskResult(task_id="b1", attempt=1, status="failed", node="b1", exit_code=3)], "b1"
            )
        warnings = [e for e in events if e.get("status") == "failed" and "detail" in e]
        self.assertEqual(warnings[0]["detail"], "exit code 3")


class RefusalTests(SynchronousTestCase):
    """Refused and returned assignments."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock)
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        self.job = self.master.submit([TaskSpec(id=f"w{i}", kind="w") for i in range(6)])
        self.clock.advance(0)

    def test_refused_batch_goes_back_worker_keeps_running_tasks(self):
        """A refused batch is put back; the worker keeps the tasks it runs and gets nothing new."""
        self.master.refused("w1", self.job.id, [("w2", 1), ("w3", 1)], "shutting down", usable=False)
        self.assertEqual(self.master.pending_count(), 4)
        self.assertEqual(self.job.counts()["assigned"], 2)
        self.clock.advance(0)
        self.assertEqual(len(self.link.assignments), 1, "nothing more for a leaving worker")
        self.master.confirm(self.job.id, [result("w0", worker="w1"), result("w1", worker="w1")], "w1")
        self.assertEqual(self.job.succeeded, 2)

    def test_returned_tasks_run_elsewhere(self):
        """A task returned unrun goes back to the front of the queue, for another worker."""
        self.master.confirm(self.job.id, [result("w3", status="returned", worker="w1")], "w1")
        self.assertEqual(self.job.counts()["pending"], 3)
        self.master.worker_joined(node(name="w2", capabilities=("w",), slots=1))
        self.clock.advance(0)
        self.assertEqual(self.link.assignments[-1], ("w2", self.job.id, [("w3", 2), ("w4", 1)]))

    def test_result_from_wrong_sender_is_stale(self):
        """A result for a task given to w1 but sent by another node is not applied."""
        applied, stale = self.master.confirm(self.job.id, [result("w0", worker="x9")], "x9")
        self.assertEqual((applied, stale), (0, 1))
        self.assertEqual(self.job.succeeded, 0)


class RecordingJournal(NullJournal):
    """A L{NullJournal} that notes each commit in a shared list of events."""

    def __init__(self, events):
        self.events = events

    def commit(self):
        """Note the commit."""
        self.events.append("commit")


class JournalOrderTests(SynchronousTestCase):
    """What the master decides is journaled before it acts on it."""

    def test_assignments_go_out_after_the_commit(self):
        """Each dispatch commits the journal, then sends: never the other way round."""
        events = []
        clock = Clock()
        link = RecordingLink(events)
        master = Master(node(name="m1", capabilities=()), link, link, clock, journal=RecordingJournal(events))
        master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        master.submit([TaskSpec(id=f"w{i}", kind="w") for i in range(3)])
        clock.advance(0)
        self.assertEqual(events, ["commit", "send"])

    def test_own_tasks_do_not_wait_for_the_journal(self):
        """Tasks the master runs itself are handed over without forcing a commit (they die with it)."""
        events = []
        clock = Clock()
        link = RecordingLink(events)
        me = node(name="m1", capabilities=("w",), slots=2)
        master = Master(me, link, link, clock, journal=RecordingJournal(events))
        master.worker_joined(me)
        master.submit([TaskSpec(id=f"w{i}", kind="w") for i in range(3)])
        clock.advance(0)
        self.assertEqual(events, ["send"])


class RetryTests(SynchronousTestCase):
    """Per-task retries with exponential backoff."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, jitter=lambda: 0.0)
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        self.job = self.master.submit([TaskSpec(id="t1", kind="w", command=("false",), retries=2)])
        self.clock.advance(0)

    def fail_latest(self):
        """Report the latest attempt of t1 as failed."""
        attempt = self.link.assignments[-1][2][0][1]
        return self.master.confirm(self.job.id, [result("t1", attempt=attempt, status="failed", worker="w1")], "w1")

    def test_failed_attempts_retried_after_growing_delays(self):
        """A failing task runs again after 1 s, then 2 s; its third failure is final."""
        with capturedLogs() as events:
            self.fail_latest()
        self.assertIsNone(self.job.finished)
        self.assertTrue(any("retry 1 of 2 in 1.0s" in e["log_format"].format(**e) for e in events))
        self.clock.advance(0.99)
        self.assertEqual(len(self.link.assignments), 1, "not before the backoff")
        self.clock.advance(0.01)
        self.clock.advance(0)
        self.assertEqual(self.link.assignments[-1][2], [("t1", 2)])
        self.fail_latest()
        self.clock.advance(1.99)
        self.assertEqual(len(self.link.assignments), 2)
        self.clock.advance(0.01)
        self.clock.advance(0)
        self.assertEqual(self.link.assignments[-1][2], [("t1", 3)])
        self.fail_latest()
        self.clock.advance(0)
        self.assertEqual((self.job.succeeded, self.job.failed), (0, 1))
        self.assertEqual(self.job.tasks["t1"].failures, 2)
        self.assertEqual(self.job.report(self.clock.seconds())["tasks"][0]["retried"], 2)
        self.assertEqual(self.master.retries_scheduled, 2)

    def test_a_retried_failure_reported_twice_is_stale(self):
        """The failed attempt that waits for its retry, reported again, is dropped as stale."""
        self.fail_latest()
        self.assertEqual(self.fail_latest(), (0, 1))
        self.assertEqual(self.master.stale_results, 1, "and counted")


class QuarantineTests(SynchronousTestCase):
    """A task that keeps losing its worker."""

    def test_quarantined_after_max_losses(self):
        """After losing its worker 3 times a task is failed, not run again, and the job ends."""
        clock = Clock()
        link = RecordingLink()
        master = Master(node(name="m1", capabilities=()), link, link, clock, max_losses=3)
        job = master.submit([TaskSpec(id="t1", kind="w", command=("crash-the-node",))])
        with capturedLogs() as events:
            for round_number in range(3):
                master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
                clock.advance(0)
                self.assertEqual(len(link.assignments), round_number + 1)
                master.worker_lost("w1", "lost its connection")
                clock.advance(0)
        self.assertEqual(job.tasks["t1"].state, TaskState.DONE)
        self.assertEqual((job.succeeded, job.failed), (0, 1))
        self.assertIn("quarantined: lost its worker 3 times", job.tasks["t1"].result.error)
        self.assertEqual(link.finished, [job.id])
        self.assertEqual(master.quarantined, 1)
        self.assertTrue(any("is quarantined" in e["log_format"] for e in events))
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        clock.advance(0)
        self.assertEqual(len(link.assignments), 3, "never assigned again")


class CancelTests(SynchronousTestCase):
    """Cancelling a job on its master."""

    def test_cancel_stops_workers_and_ends_the_job(self):
        """Pending tasks never go out, workers holding tasks are told, and the job ends as cancelled."""
        clock = Clock()
        link = RecordingLink()
        master = Master(node(name="m1", capabilities=()), link, link, clock)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        master.worker_joined(node(name="w2", capabilities=("w",), slots=1))
        job = master.submit([TaskSpec(id=f"t{i}", kind="w") for i in range(10)])
        clock.advance(0)
        sent = sum(len(batch) for _, _, batch in link.assignments)
        master.confirm(
            job.id, [result(link.assignments[0][2][0][0], worker=link.assignments[0][0])], link.assignments[0][0]
        )
        self.assertEqual(master.cancel(job.id, by="a test"), 9)
        clock.advance(0)
        self.assertEqual(sorted(link.cancels), [("w1", job.id), ("w2", job.id)])
        self.assertEqual(link.finished, [job.id])
        self.assertTrue(job.cancelled)
        statuses = [task["status"] for task in job.report(clock.seconds())["tasks"]]
        self.assertEqual(statuses.count("succeeded"), 1)
        self.assertEqual(statuses.count("cancelled"), 9)
        assignments_before = len(link.assignments)
        master.worker_joined(node(name="w3", capabilities=("w",), slots=4))
        clock.advance(0)
        self.assertEqual(len(link.assignments), assignments_before, "nothing of the job goes out any more")
        self.assertEqual(master.cancel(job.id, by="again"), 0)
        self.assertGreater(sent, 1)


class ResumeTests(SynchronousTestCase):
    """A master restarted with its journal takes up its unfinished jobs."""

    def setUp(self):
        self.state_dir = self.mktemp()
        self.clock = Clock()
        self.link = RecordingLink()
        journal = Journal(self.state_dir, self.clock)
        self.first = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, journal=journal)
        self.first.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        self.first.worker_joined(node(name="w2", capabilities=("w",), slots=2))
        self.job = self.first.submit([TaskSpec(id=f"t{i}", kind="w") for i in range(10)], source="digest-1")
        self.clock.advance(0)
        w1_tasks = [t for worker, _, batch in self.link.assignments if worker == "w1" for t, _ in batch]
        self.done = w1_tasks[0]
        self.first.confirm(self.job.id, [result(self.done, worker="w1")], "w1")
        self.clock.advance(0)
        journal.close()
        self.held = {
            worker: [t for w, _, batch in self.link.assignments if w == worker for t, _ in batch]
            for worker in ("w1", "w2")
        }
        self.held["w1"].remove(self.done)
        self.link = RecordingLink()
        self.journal = Journal(self.state_dir, self.clock)
        self.addCleanup(self.journal.close)
        self.second = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, journal=self.journal)
        self.second.resume(self.journal.unfinished_jobs())

    def test_resumed_job_keeps_results_and_asks_workers(self):
        """Done tasks keep their results; a returning worker is asked about what it held; unknown ones run again."""
        job = self.second.jobs[self.job.id]
        self.assertEqual(job.tasks[self.done].result.node, "w1")
        self.assertEqual(job.succeeded, 1)
        self.assertIs(self.second.find_unfinished("digest-1"), job)
        self.second.worker_joined(node(name="w1", capabilities=("w",), slots=10))
        self.assertEqual(len(self.link.queries), 1)
        worker, job_id, attempts, answered = self.link.queries[0]
        self.assertEqual((worker, job_id), ("w1", self.job.id))
        self.assertEqual(sorted(t for t, _ in attempts), sorted(self.held["w1"]))
        running, lost = self.held["w1"][0], self.held["w1"][1:]
        answered.callback({"done": [], "running": [running], "unknown": lost})
        self.clock.advance(0)
        again = {t: a for worker, _, batch in self.link.assignments for t, a in batch}
        for task_id in lost:
            self.assertEqual(again.get(task_id), 2, "lost ones run again, as attempt 2")
        self.assertNotIn(running, again, "the running one is not")
        self.assertNotIn(self.done, again, "nor the done one")

    def test_workers_that_do_not_return_lose_their_tasks(self):
        """After the reconcile grace, the tasks of a worker that did not come back run elsewhere."""
        self.second.worker_joined(node(name="w3", capabilities=("w",), slots=20))
        self.clock.advance(0)
        first_round = {t for _, _, batch in self.link.assignments for t, _ in batch}
        self.assertFalse(first_round & set(self.held["w1"] + self.held["w2"]), "not before the grace")
        self.clock.advance(RECONCILE_GRACE)
        self.clock.advance(0)
        assigned = {t for _, _, batch in self.link.assignments for t, _ in batch}
        self.assertEqual(assigned, {f"t{i}" for i in range(10)} - {self.done})

    def test_journal_file_is_in_the_state_dir(self):
        """The journal lives in the state directory given."""
        self.assertTrue(os.path.exists(os.path.join(self.state_dir, "journal.sqlite3")))


class ResultsFileExampleTests(SynchronousTestCase):
    """docs/jobs.rst shows a results file with the layout L{Job.report} writes (issue 11, item 9)."""

    def test_example_has_the_report_layout(self):
        """The example's top-level keys are the report's, in its order; each task's keys are report keys in order."""
        import json
        import re

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "jobs.rst")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        start = text.index("Here is the file written by running")
        block = text[text.index("    {", start) : text.index("\n    }\n", start) + 6]
        example = json.loads(re.sub(r"\n\s*\.\.\.,?\n", "\n", block))
        job = Job("j", [TaskSpec(id="t", kind="sh")], started=0.0)
        job.assign("t", "a1")
        job.apply(
            TaskResult(
                task_id="t", attempt=1, status="failed", node="a1", exit_code=3, stdout="o", stderr="e", error="x"
            ),
            1.0,
        )
        report = job.report(1.0)
        self.assertEqual(list(example), list(report))
        keys = list(report["tasks"][0])
        order = keys[:4] + ["retried", "lost_workers"] + keys[4:]
        for task in example["tasks"]:
            self.assertEqual(list(task), [key for key in order if key in task], task["id"])


class TaskMachineWiringTests(SynchronousTestCase):
    """The master runs the task machine: seats follow HOLD_SEAT/RELEASE_SEAT, and a retry wait is a tracked state."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, jitter=lambda: 0.0)

    def assigned_to(self, worker):
        """How many tasks of every job are ASSIGNED to C{worker}."""
        return sum(
            1
            for job in self.master.jobs.values()
            for record in job.tasks.values()
            if record.state is TaskState.ASSIGNED and record.worker == worker
        )

    def test_late_result_of_a_put_back_task_keeps_the_new_seat_right(self):
        """
        A task put back when its worker's connection dropped, whose result
        arrives after the worker joined again with other tasks, releases no
        seat: the worker's counter still equals the tasks it holds (it used
        to drift one low, letting the worker be given more than its window).
        """
        self.master.worker_joined(node(name="w1", capabilities=("x", "y"), slots=1))
        old = self.master.submit([TaskSpec(id="x1", kind="x")])
        self.clock.advance(0)
        self.master.worker_lost("w1", "lost its connection")
        # Back, but no longer running kind x: only the y tasks go to it.
        self.master.worker_joined(node(name="w1", capabilities=("y",), slots=1))
        self.master.submit([TaskSpec(id=f"y{i}", kind="y") for i in range(5)])
        self.clock.advance(0)
        self.assertEqual(self.master.outstanding()["w1"], 2)
        applied, _ = self.master.confirm(old.id, [result("x1", worker="w1")], "w1")
        self.assertEqual(applied, 1, "the late result still counts")
        self.assertEqual(self.master.outstanding()["w1"], self.assigned_to("w1"))
        self.assertEqual(self.master.outstanding()["w1"], 2)

    def test_retry_wait_is_tracked_and_cancelled_with_its_job(self):
        """A failed task waits in RETRY_WAIT with a timer the master holds; cancelling the job cancels the timer."""
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        job = self.master.submit([TaskSpec(id="t1", kind="w", retries=1)])
        self.clock.advance(0)
        self.master.confirm(job.id, [result("t1", status="failed", worker="w1")], "w1")
        self.assertIs(job.tasks["t1"].state, TaskState.RETRY_WAIT)
        self.assertEqual(self.master.retrying(), {(job.id, "t1"): 1.0})
        self.assertEqual(self.master.outstanding()["w1"], 0)
        self.master.cancel(job.id, by="a test")
        self.assertEqual(self.master.retrying(), {})
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active() and call.getTime() > 0], [])

    def test_retry_due_puts_the_task_back_in_the_queue(self):
        """Once the backoff passed, the task is PENDING again and goes out as a new attempt."""
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        job = self.master.submit([TaskSpec(id="t1", kind="w", retries=1)])
        self.clock.advance(0)
        self.master.confirm(job.id, [result("t1", status="failed", worker="w1")], "w1")
        self.clock.advance(0.99)
        self.assertIs(job.tasks["t1"].state, TaskState.RETRY_WAIT)
        self.clock.advance(0.01)
        self.assertEqual(self.master.retrying(), {})
        self.assertEqual(self.link.assignments[-1][2], [("t1", 2)])
        self.assertEqual(self.master.outstanding()["w1"], 1)
