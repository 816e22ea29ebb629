"""
Recovery in awkward orders: a journal write that fails and recovers,
RESULT_QUERY answers that arrive after things moved on, a cancel racing
with the queue, and the result cache of a node that is its own master.

Each test states a promise of docs/reliability.rst or docs/protocol.rst and
drives the code into the state that a review found could break it.
"""

import sqlite3

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import worker as worker_module
from p2pexec.job import TaskState
from p2pexec.journal import Journal
from p2pexec.master import Master
from p2pexec.model import TaskResult, TaskSpec, parse_instructions
from p2pexec.waiting import WAITING_GRACE

from .test_master import RecordingLink, result
from .test_model import node
from .test_node import Cluster, text


class FailingWrites:
    """
    A journal's C{before_write} seam that makes chosen writes fail as a full
    disk would; the others go through.
    """

    def __init__(self):
        self._numbers = frozenset()
        self._writes = 0

    def fail(self, *numbers):
        """Make the journal's writes number C{numbers} (counted from 1, from now on) fail."""
        self._numbers = frozenset(numbers)
        self._writes = 0

    def before_write(self):
        """Called by the journal before each write: fail it if it is one of those chosen."""
        self._writes += 1
        if self._writes in self._numbers:
            raise sqlite3.OperationalError("database or disk is full")


def resumed_master(case, slots=2):
    """
    A master m1 that handed 6 tasks to w1 and w2 (slots 2 each: 4 each at
    most), was killed, and resumed from its journal with a new Master.

    @return: (the new master, its link, the job id, the ids w1 held, the clock).
    """
    state_dir = case.mktemp()
    clock = Clock()
    link = RecordingLink()
    first_journal = Journal(state_dir, clock)
    first = Master(node(name="m1", capabilities=()), link, link, clock, journal=first_journal)
    first.worker_joined(node(name="w1", capabilities=("w",), slots=slots))
    first.worker_joined(node(name="w2", capabilities=("w",), slots=slots))
    job = first.submit([TaskSpec(id=f"t{i}", kind="w") for i in range(6)], source="digest")
    clock.advance(0)
    first_journal.close()
    held = [t for w, _, batch in link.assignments if w == "w1" for t, _ in batch]
    link = RecordingLink()
    journal = Journal(state_dir, clock)
    case.addCleanup(journal.close)
    master = Master(node(name="m1", instance="efgh", capabilities=()), link, link, clock, journal=journal)
    master.resume(journal.unfinished_jobs())
    return master, link, job.id, held, clock


class LocalResultCacheTests(SynchronousTestCase):
    """The worker's result cache on a node that is its own master."""

    def test_local_results_are_not_kept_in_the_cache(self):
        """
        A node running its own job keeps no result in its cache once the
        master has it: nothing acknowledges a local result, so the cache
        fills up with every local result (up to 10,000 and 64 MiB of
        output) and then evicts with one warning per result.
        """
        self.patch(worker_module, "MAX_CACHED_RESULTS", 3)
        cluster = Cluster()
        with capturedLogs() as events:
            a1 = cluster.add("a1", tasks=tuple(parse_instructions([f"a{i}" for i in range(10)])))
            cluster.network.run_until(lambda: a1.initial_job.called, limit=10)
        self.assertEqual(a1.initial_job.result.succeeded, 10)
        warnings = [text(e) for e in events if "from its full cache" in e["log_format"]]
        self.assertEqual(warnings, [], "acknowledged results are not evicted with a warning")
        self.assertEqual(a1.worker.cache_evictions, 0)


class JournalFailureTests(SynchronousTestCase):
    """A journal write that fails once (a disk full for a moment)."""

    def setUp(self):
        self.clock = Clock()
        self.link = RecordingLink()
        self.writes = FailingWrites()
        self.journal = Journal(self.mktemp(), self.clock, before_write=self.writes.before_write)
        self.addCleanup(self.journal.close)
        self.master = Master(node(name="m1", capabilities=()), self.link, self.link, self.clock, journal=self.journal)
        self.master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        self.job = self.master.submit([TaskSpec(id="t1", kind="w"), TaskSpec(id="t2", kind="w")])
        self.clock.advance(0)
        self.assertEqual(len(self.link.assignments), 1)

    def test_job_end_announced_once_the_journal_recovers(self):
        """
        If the commit that holds a job's end fails once, the job is still
        announced (TASK_COMPLETE, results file, summary line) once a later
        commit writes it.
        """
        self.writes.fail(2)  # 1: the results; 2: the job's end
        with capturedLogs() as events:
            self.master.confirm(self.job.id, [result("t1", worker="w1"), result("t2", worker="w1")], "w1")
            self.clock.advance(0)
            self.clock.advance(0)
        self.assertTrue(any("Could not write the journal" in text(e) for e in events))
        # The disk has room again: other work is journaled fine.
        self.master.submit([TaskSpec(id="x", kind="w")])
        self.clock.advance(0)
        self.clock.advance(60)
        self.assertNotIn(self.job.id, [j.id for j in self.journal.unfinished_jobs()], "its end is written now")
        self.assertIn(self.job.id, self.link.finished, "the job is announced after all")

    def test_cancel_reaches_workers_once_the_journal_recovers(self):
        """
        If the commit that holds a cancellation fails once, CANCEL_JOB still
        goes to the workers holding tasks once the journal is written.
        """
        self.writes.fail(1)
        self.master.cancel(self.job.id, by="a test")
        with capturedLogs():
            self.clock.advance(0)
        self.assertIsNotNone(self.journal.problem, "the cancellation's write did not fail")
        self.assertEqual(self.link.cancels, [], "CANCEL_JOB went out before the cancellation was written")
        self.master.submit([TaskSpec(id="x", kind="w")])
        self.clock.advance(0)
        self.clock.advance(60)
        self.assertEqual(self.link.cancels, [("w1", self.job.id)])


class ReconcileTests(SynchronousTestCase):
    """RESULT_QUERY answers that arrive after things moved on."""

    def test_cancel_during_query_does_not_free_the_seat_twice(self):
        """
        A job cancelled while its RESULT_QUERY is out frees the worker's seat
        for the queried tasks; the answer must not free it again.
        """
        master, link, job_id, held, clock = resumed_master(self)
        self.assertTrue(held)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        [(_, _, attempts, answered)] = link.queries
        master.cancel(job_id, by="a test")
        clock.advance(0)
        job2 = master.submit([TaskSpec(id=f"n{i}", kind="w") for i in range(10)])
        clock.advance(0)
        self.assertEqual(len([1 for w, j, _ in link.assignments if w == "w1" and j == job2.id]), 1)
        answered.callback({"done": [], "running": [], "unknown": [t for t, _ in attempts]})
        clock.advance(0)
        # w1 finishes one task of job2: it may be given one more, no more.
        first = link.assignments[-1][2][0][0]
        master.confirm(
            job2.id, [TaskResult(task_id=first, attempt=1, status="succeeded", node="w1", duration=1.0)], "w1"
        )
        clock.advance(0)
        given = [t for w, j, batch in link.assignments if w == "w1" and j == job2.id for t, _ in batch]
        unconfirmed = [t for t in given if job2.tasks[t].state is TaskState.ASSIGNED]
        self.assertLessEqual(len(unconfirmed), 2, "slots 1: a window of 2 unconfirmed tasks")

    def test_stale_query_failure_does_not_take_back_new_attempts(self):
        """
        A worker's connection drops while a RESULT_QUERY is out; the worker
        connects again and is given the tasks again (attempt 2).  The old
        query's failure must not put back those new attempts.
        """
        master, link, job_id, held, clock = resumed_master(self)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=4))
        [(_, _, attempts, answered)] = link.queries
        master.worker_lost("w1", "lost its connection")
        master.worker_joined(node(name="w1", capabilities=("w",), slots=4))
        clock.advance(0)
        job = master.jobs[job_id]
        for task_id in held:
            self.assertEqual((job.tasks[task_id].state, job.tasks[task_id].attempt), (TaskState.ASSIGNED, 2))
        answered.errback(Failure(ConnectionDone("connection was closed cleanly")))
        clock.advance(0)
        for task_id in held:
            record = job.tasks[task_id]
            self.assertEqual((record.state, record.attempt, record.losses), (TaskState.ASSIGNED, 2, 1), task_id)


class MalformedQueryAnswerTests(SynchronousTestCase):
    """
    A RESULT_QUERY answer that is malformed, or that leaves tasks out, must
    not leave those tasks assigned to the worker for ever (issue 11, item 6).
    """

    def answer_with(self, answer):
        """
        Resume a master, let w1 come back, answer its RESULT_QUERY with
        C{answer} (a function of the queried ids); return (master, job id,
        the ids w1 held, the log lines).
        """
        master, link, job_id, held, clock = resumed_master(self)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        [(_, _, attempts, answered)] = link.queries
        with capturedLogs() as events:
            answered.callback(answer([t for t, _ in attempts]))
            clock.advance(0)
        return master, job_id, held, [text(e) for e in events]

    def assertRunAgain(self, master, job_id, held):
        """Every task w1 held is out again as attempt 2, none lost a worker."""
        job = master.jobs[job_id]
        self.assertTrue(held)
        for task_id in held:
            record = job.tasks[task_id]
            self.assertEqual((record.state, record.attempt, record.losses), (TaskState.ASSIGNED, 2, 0), task_id)

    def test_objects_instead_of_ids(self):
        """An answer listing {"id", "attempt"} objects is malformed: the tasks run again, one line says why."""
        master, job_id, held, lines = self.answer_with(
            lambda ids: {"done": [{"id": t, "attempt": 1} for t in ids], "running": [], "unknown": []}
        )
        self.assertRunAgain(master, job_id, held)
        [line] = [line for line in lines if "malformed" in line]
        self.assertIn(
            f"Node m1 put {len(held)} unconfirmed task(s) of job {job_id} back in the queue: worker w1 "
            "answered RESULT_QUERY about them with a malformed answer",
            line,
        )
        self.assertIn("'done' holds", line)
        self.assertIn("not task id strings", line)
        self.assertIn('such as an object {"id": "t', line)
        self.assertEqual([line for line in lines if "done or still running there" in line], [])

    def test_empty_lists(self):
        """An answer with three empty lists names no task: the tasks run again, one line names them."""
        master, job_id, held, lines = self.answer_with(lambda ids: {"done": [], "running": [], "unknown": []})
        self.assertRunAgain(master, job_id, held)
        self.assertTrue(any("worker w1 named them in none of the lists" in line for line in lines), lines)
        self.assertIn(
            f"Node m1 asked worker w1 about the {len(held)} task(s) of job {job_id} it held before this node "
            f"restarted: 0 done or still running there, 0 unknown there (they run again)",
            lines,
        )

    def test_not_lists(self):
        """An answer whose lists are not lists (a string, a number, an object) is malformed."""
        for bad in ("t1", 5, {"t1": 1}, None):
            master, job_id, held, lines = self.answer_with(lambda ids: {"done": bad, "running": [], "unknown": []})
            self.assertRunAgain(master, job_id, held)
            self.assertTrue(any("malformed" in line and "'done' is" in line for line in lines), (bad, lines))

    def test_not_an_object(self):
        """An answer that is not an object at all is malformed."""
        master, job_id, held, lines = self.answer_with(lambda ids: ["t1"])
        self.assertRunAgain(master, job_id, held)
        self.assertTrue(any("malformed" in line for line in lines), lines)

    def test_some_named_some_not(self):
        """The tasks a well-formed answer names keep their attempt; only the unnamed ones run again."""
        master, job_id, held, lines = self.answer_with(lambda ids: {"done": [], "running": ids[:1], "unknown": []})
        job = master.jobs[job_id]
        self.assertEqual(job.tasks[held[0]].attempt, 1, "the running one stays with w1")
        for task_id in held[1:]:
            self.assertEqual(job.tasks[task_id].attempt, 2, task_id)

    def test_malformed_answer_on_the_network_does_not_hang_the_job(self):
        """
        Whole nodes: a master killed mid-job restarts with its journal; its
        worker answers RESULT_QUERY with {"id", "attempt"} objects.  The job
        finishes all the same, and the master's log names the worker and
        what was wrong.
        """
        state_dir = self.mktemp()
        cluster = Cluster()
        tasks = tuple(TaskSpec(id=f"w{i}", kind="w", command=("true",)) for i in range(12))
        config = dict(
            address="127.0.0.1",
            port=4001,
            capabilities=frozenset(),
            tasks=tasks,
            state_dir=state_dir,
            job_source="digest",
        )
        first = cluster.add("m1", **config)
        cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=0.3, slots=4)
        cluster.network.run_until(lambda: any(j.succeeded >= 4 for j in first.master.jobs.values()), limit=10)
        cluster.hosts["m1"].crash()
        first.journal.abandon()
        worker = cluster.nodes["w1"].worker

        def rogue_query(sink, job, attempts):
            return {"done": [{"id": t, "attempt": a} for t, a in attempts], "running": [], "unknown": []}

        self.patch(worker, "query", rogue_query)
        with capturedLogs() as events:
            restarted = cluster.add("m1", **config)
            cluster.network.run_until(lambda: restarted.initial_job.called, limit=60)
        job = restarted.initial_job.result
        self.assertEqual((job.succeeded, job.failed), (12, 0))
        lines = [text(e) for e in events]
        self.assertTrue(
            any("worker w1 answered RESULT_QUERY about them with a malformed answer" in line for line in lines), lines
        )


class CancelQueueTests(SynchronousTestCase):
    """What a cancelled job leaves in the master's queues."""

    def test_cancelled_tasks_leave_the_queue(self):
        """
        Once a job is cancelled, none of its tasks waits for a worker:
        pending_count() is 0 and there is no 'task(s) of kind ... waiting'
        warning about them.
        """
        clock = Clock()
        link = RecordingLink()
        master = Master(node(name="m1", capabilities=()), link, link, clock)
        job = master.submit([TaskSpec(id=f"z{i}", kind="z") for i in range(3)])
        clock.advance(0)
        master.cancel(job.id, by="a test")
        with capturedLogs() as events:
            clock.advance(0)
            clock.advance(WAITING_GRACE)
            clock.advance(0)
        self.assertEqual(link.finished, [job.id])
        self.assertEqual([text(e) for e in events if "waiting" in e["log_format"]], [])
        self.assertEqual(master.pending_count(), 0)

    def test_cancel_reaches_a_worker_whose_tasks_were_put_back(self):
        """
        A worker whose connection dropped had its tasks put back, but its
        process may still run them: cancelling the job tells it too.
        """
        clock = Clock()
        link = RecordingLink()
        master = Master(node(name="m1", capabilities=()), link, link, clock)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        job = master.submit([TaskSpec(id="t1", kind="w", command=("sleep", "3600"))])
        clock.advance(0)
        master.worker_lost("w1", "lost its connection")
        clock.advance(0)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        master.cancel(job.id, by="a test")
        clock.advance(0)
        self.assertEqual(link.cancels, [("w1", job.id)])


class JournalDurableTests(SynchronousTestCase):
    """L{Journal.durable} after a failed commit."""

    def test_durable_fires_after_a_failed_commit_without_new_marks(self):
        """
        After a commit failed (its batch stays marked), a later durable()
        must still fire once the batch is written.
        """
        from p2pexec.job import Job

        clock = Clock()
        writes = FailingWrites()
        journal = Journal(self.mktemp(), clock, before_write=writes.before_write)
        self.addCleanup(journal.close)
        writes.fail(1)
        journal.job_added(Job("j", [TaskSpec(id="t1", kind="w")], started=0.0))
        with capturedLogs():
            clock.advance(0)
        self.assertIsNotNone(journal.problem, "the first commit did not fail")
        d = journal.durable()
        clock.advance(60)
        self.successResultOf(d)


class RestartLossTests(SynchronousTestCase):
    """What a master's own restart counts against its tasks."""

    def test_master_restart_is_not_a_worker_loss(self):
        """
        (Design question.)  Tasks that a worker dropped unstarted because
        their *master* went away (the RESULT_QUERY answer 'unknown') did not
        lose their worker; today each such answer counts one loss, so a
        master restarted three times (systemd, deploys, its own OOM)
        quarantines tasks that never ran, with 'lost its worker 3 times
        (last: w1, which no longer had them)'.  The same holds for the 10 s
        reconcile grace and for the master's own tasks at resume.
        """
        master, link, job_id, held, clock = resumed_master(self)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=2))
        [(_, _, attempts, answered)] = link.queries
        answered.callback({"done": [], "running": [], "unknown": [t for t, _ in attempts]})
        job = master.jobs[job_id]
        self.assertEqual([job.tasks[t].losses for t in held], [0] * len(held))


class FinishedStartUpJobTests(SynchronousTestCase):
    """
    A node started again with a start-up job that already finished does not
    run it again, unless told to (issue 11, item 4).
    """

    def run_twice(self, **second):
        """
        Run m1 with a 3-task job on worker w1 to its end, stop m1, start it
        again on the same state directory with the same job (and C{second}
        options); return (the first job, the restarted node, its log lines,
        the cluster).
        """
        state_dir = self.mktemp()
        cluster = Cluster()
        tasks = tuple(TaskSpec(id=f"w{i}", kind="w", command=("true",)) for i in range(3))
        config = dict(
            address="127.0.0.1",
            port=4001,
            capabilities=frozenset(),
            tasks=tasks,
            state_dir=state_dir,
            job_source="digest",
            job_label="job file job.toml",
        )
        first = cluster.add("m1", **config)
        cluster.add_worker("w1", address="127.0.0.2", port=4002)
        cluster.network.run_until(lambda: first.initial_job.called, limit=10)
        job = first.initial_job.result
        leaving = cluster.stop("m1")
        cluster.network.run_until(lambda: leaving.called, limit=10)
        with capturedLogs() as events:
            restarted = cluster.add("m1", **config, **second)
            cluster.network.run_until(lambda: restarted.initial_job.called, limit=10)
            cluster.network.run(1.0)
        return job, restarted, [text(e) for e in events], cluster

    def test_finished_job_is_not_run_again(self):
        """
        The same job after it finished: one line says when it finished and
        how, nothing runs, and initial_job fires with the finished job (so
        that --exit-when-done stops the node).
        """
        job, restarted, lines, cluster = self.run_twice()
        self.assertEqual(len(cluster.runners["w1"].runs), 3, "every task ran once, in the first run only")
        self.assertIs(restarted.initial_job.result, restarted.master.jobs[job.id])
        self.assertEqual(restarted.initial_job.result.succeeded, 3)
        self.assertEqual(list(restarted.master.jobs), [job.id], "no new job")
        [line] = [line for line in lines if "already finished" in line]
        self.assertRegex(
            line,
            rf"^Node m1: job file job.toml already finished at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d "
            rf"\(job {job.id}: 3 succeeded, 0 failed\); not running it again; pass --rerun-job to run it again$",
        )
        self.assertEqual([line for line in lines if "is master of job" in line], [])
        summary = restarted.jobs_status()
        self.assertEqual([(j["id"], j["state"], j["counts"]["succeeded"]) for j in summary], [(job.id, "finished", 3)])

    def test_rerun_job_runs_it_again(self):
        """With --rerun-job the finished job runs again, as a new job, and the log says why."""
        job, restarted, lines, cluster = self.run_twice(rerun_job=True)
        self.assertEqual(len(cluster.runners["w1"].runs), 6, "every task ran twice")
        again = restarted.initial_job.result
        self.assertNotEqual(again.id, job.id)
        self.assertEqual(again.succeeded, 3)
        self.assertTrue(any("--rerun-job: running it again as a new job" in line for line in lines), lines)


class SmallerMasterFixesTests(SynchronousTestCase):
    """Issue 11, item 9: what the master says and counts in a few corners."""

    def test_attempt_never_given_is_named_as_such(self):
        """A result for an attempt never given is logged as that, not as superseded by an older one."""
        clock = Clock()
        link = RecordingLink()
        master = Master(node(name="m1", capabilities=()), link, link, clock)
        master.worker_joined(node(name="w1", capabilities=("w",), slots=1))
        job = master.submit([TaskSpec(id="t1", kind="w")])
        clock.advance(0)
        with capturedLogs() as events:
            master.confirm(job.id, [TaskResult(task_id="t1", attempt=99, status="succeeded", node="w1")], "w1")
        lines = [text(e) for e in events if "stale result" in e["log_format"]]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("attempt 99 of it was never given (the latest is attempt 1)", lines[0])
        self.assertNotIn("superseded", lines[0])
        fresh = master.submit([TaskSpec(id="t2", kind="none")])
        self.assertEqual(
            fresh.stale_reason(TaskResult(task_id="t2", attempt=1, status="succeeded", node="w1"), "w1"),
            "attempt 1 of it was never given (the task was never given out)",
        )

    def test_graceful_leave_does_not_count_towards_quarantine(self):
        """
        A worker that says DISCONNECT_REQUEST while it still holds tasks has
        them put back, but that is not a lost worker: with
        --max-worker-losses 1 they run again instead of being quarantined.
        """
        from p2pexec import commands

        cluster = Cluster()
        tasks = tuple(TaskSpec(id=f"w{i}", kind="w", command=("true",)) for i in range(2))
        master = cluster.add("m1", capabilities=frozenset(), tasks=tasks, max_losses=1, port=4001)
        cluster.add_worker("w1", address="127.0.0.2", port=4002, duration=30.0)
        cluster.network.run_until(lambda: cluster.runners["w1"].running, limit=10)
        worker = cluster.nodes["w1"]
        # w1 announces that it leaves without handing anything back first.
        worker.peers.get("m1").connection.callRemote(commands.DisconnectRequest, reason="shutdown")
        cluster.network.run(1.0)
        job = master.master.jobs[master.startup.job_id]
        self.assertEqual(job.failed, 0, "nothing quarantined")
        self.assertEqual([record.losses for record in job.tasks.values()], [0, 0])
        cluster.add_worker("w2", address="127.0.0.3", port=4003, duration=0.1)
        cluster.network.run_until(lambda: master.initial_job.called, limit=30)
        self.assertEqual((job.succeeded, job.failed), (2, 0))


class UploadDefaultsTests(SynchronousTestCase):
    """SUBMIT_JOB in parts: every part carries the first part's defaults (issue 11, item 9)."""

    def setUp(self):
        self.cluster = Cluster()
        self.node = self.cluster.add("m1", capabilities=frozenset({"w"}))
        self.connection = object()

    def test_differing_defaults_refused(self):
        """A later part whose defaults differ from the first part's is refused, naming the upload; it is dropped."""
        from p2pexec import commands

        first = self.node.submit_part(self.connection, [{"id": "a"}], {"kind": "w"}, "", False)
        error = self.assertRaises(
            commands.BadJob, self.node.submit_part, self.connection, [{"id": "b"}], {"kind": "x"}, first["upload"], True
        )
        self.assertIn(f"upload {first['upload']!r}: this part's defaults differ from its first part's", str(error))
        self.assertRaises(
            commands.UnknownUpload,
            self.node.submit_part,
            self.connection,
            [{"id": "b"}],
            {"kind": "w"},
            first["upload"],
            True,
        )

    def test_same_defaults_accepted(self):
        """Parts with the same defaults make one job ({} and null are the same)."""
        first = self.node.submit_part(self.connection, [{"id": "a", "kind": "w", "command": ["true"]}], None, "", False)
        last = self.node.submit_part(
            self.connection, [{"id": "b", "kind": "w", "command": ["true"]}], {}, first["upload"], True
        )
        job_id = self.successResultOf(last)["job"]
        self.assertEqual(list(self.node.master.jobs[job_id].tasks), ["a", "b"])
