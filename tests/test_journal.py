"""Tests for L{p2pexec.journal}: the master's SQLite journal."""

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.job import Job
from p2pexec.journal import RETRY_DELAY, Journal, NullJournal, default_state_dir, open_journal
from p2pexec.journal_health import JournalError
from p2pexec.journal_schema import CACHE_KIB, JOURNAL_FILE, SCHEMA_VERSION, StoredJob, StoredTask
from p2pexec.model import TaskResult, TaskSpec


def read_bytes(path):
    """The whole content of the file at C{path}."""
    with open(path, "rb") as f:
        return f.read()


def query(path, sql, *args):
    """Run one read-only query on the database at C{path} over a connection of its own."""
    db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


class JournalTestMixin:
    """Open journals on a L{Clock} and close whatever a test left open."""

    def setUp(self):
        self.clock = Clock()
        self._open = []
        self.addCleanup(self._close_all)

    def _close_all(self):
        while self._open:
            self._open.pop().close()

    def open(self, state_dir, **options):
        """A L{Journal} in C{state_dir} (with C{options}), closed at the end of the test unless L{close}d before."""
        journal = Journal(state_dir, self.clock, **options)
        self._open.append(journal)
        return journal

    def close(self, journal):
        """Close C{journal} now."""
        self._open.remove(journal)
        journal.close()

    def reopen(self, journal, state_dir):
        """Close C{journal} and open a new one on the same folder."""
        self.close(journal)
        return self.open(state_dir)


class RoundTripTests(JournalTestMixin, SynchronousTestCase):
    """What is written is what a new L{Journal} on the same folder reads back."""

    def test_unfinished_job_read_back_exactly(self):
        """
        A job added, then its tasks assigned, finished, retried and lost in
        later turns, is read back by a new journal with every spec field,
        state, attempt, worker, failure and loss count and result, in job
        order.
        """
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        specs = [
            TaskSpec(
                id="zeta9",
                kind="render",
                command=("convert", "in.png", "out.jpg"),
                cwd="/srv/work",
                env=(("LANG", "C"), ("THREADS", "4")),
                timeout=30.0,
            ),
            TaskSpec(id="alpha1", kind="sh", command="exit 3", shell=True, retries=2),
            TaskSpec(id="mid5", kind="sh", command=("true",)),
            TaskSpec.instruction("b2"),
        ]
        job = Job("job-1", specs, started=10.0, source="sha256:abc")
        journal.job_added(job)
        self.clock.advance(0)

        # zeta9 ran on w1 and succeeded.
        job.assign("zeta9", "w1")
        journal.task_changed(job.id, job.tasks["zeta9"])
        # alpha1 failed on w2 and waits for its retry.
        job.assign("alpha1", "w2")
        journal.task_changed(job.id, job.tasks["alpha1"])
        # mid5 lost its first worker and runs again on w1.
        job.assign("mid5", "w3")
        journal.task_changed(job.id, job.tasks["mid5"])
        self.clock.advance(0)
        succeeded = TaskResult(
            task_id="zeta9",
            attempt=1,
            status="succeeded",
            node="w1",
            exit_code=0,
            duration=1.25,
            stdout="converted\n",
            stderr="warning: ünïcode\n",
        )
        failed = TaskResult(
            task_id="alpha1",
            attempt=1,
            status="failed",
            node="w2",
            exit_code=3,
            duration=0.5,
            stderr="boom\n",
            error="exit status 3",
        )
        job.apply(succeeded, 12.0, "w1")
        job.apply(failed, 12.0, "w2")
        job.put_back("w3", 12.0)
        job.assign("mid5", "w1")
        for task_id in ("zeta9", "alpha1", "mid5"):
            journal.task_changed(job.id, job.tasks[task_id])
        self.clock.advance(0)

        journal = self.reopen(journal, state_dir)
        self.assertEqual(
            journal.unfinished_jobs(),
            [
                StoredJob(
                    id="job-1",
                    source="sha256:abc",
                    started=10.0,
                    cancelled=False,
                    tasks=[
                        StoredTask(
                            spec=specs[0], state="done", attempt=1, worker="w1", failures=0, losses=0, result=succeeded
                        ),
                        StoredTask(
                            spec=specs[1], state="pending", attempt=1, worker="w2", failures=1, losses=0, result=failed
                        ),
                        StoredTask(
                            spec=specs[2], state="assigned", attempt=2, worker="w1", failures=0, losses=1, result=None
                        ),
                        StoredTask(
                            spec=specs[3], state="pending", attempt=0, worker=None, failures=0, losses=0, result=None
                        ),
                    ],
                )
            ],
        )
        stored = journal.unfinished_jobs()[0].tasks
        # Field by field, for the fields equality alone would not show clearly.
        self.assertEqual(stored[0].spec.command, ("convert", "in.png", "out.jpg"))
        self.assertEqual(stored[0].spec.env, (("LANG", "C"), ("THREADS", "4")))
        self.assertEqual((stored[0].spec.cwd, stored[0].spec.timeout), ("/srv/work", 30.0))
        self.assertEqual((stored[1].spec.command, stored[1].spec.shell, stored[1].spec.retries), ("exit 3", True, 2))
        self.assertEqual(
            (stored[1].result.exit_code, stored[1].result.stderr, stored[1].result.error),
            (3, "boom\n", "exit status 3"),
        )
        self.assertEqual((stored[0].result.stdout, stored[0].result.duration), ("converted\n", 1.25))

    def test_issue_14_result_fields_survive_a_restart(self):
        """
        A result's start time, signal, output sizes and cut flag are read back
        by a new journal (a restarted master), and left unknown when unknown.
        """
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = Job(
            "j",
            [
                TaskSpec(id="a", kind="sh", command=("yes",)),
                TaskSpec(id="b", kind="sh", command=("true",)),
                TaskSpec.instruction("c"),
            ],
            started=1.0,
        )
        journal.job_added(job)
        full = TaskResult(
            task_id="a",
            attempt=1,
            status="timed-out",
            node="w1",
            duration=2.0,
            stdout="y\n",
            started=1_700_000_000.123456,
            signal=9,
            stdout_size=104_857_700,
            stderr_size=0,
            output_cut=True,
        )
        bare = TaskResult(task_id="b", attempt=1, status="succeeded", node="w1", exit_code=0)
        for result in (full, bare):
            job.assign(result.task_id, "w1")
            job.apply(result, 3.0, "w1")
            journal.task_changed(job.id, job.tasks[result.task_id])
        self.clock.advance(0)
        journal = self.reopen(journal, state_dir)
        [stored] = journal.unfinished_jobs()
        self.assertEqual([task.result for task in stored.tasks], [full, bare, None])
        self.assertEqual(
            (stored.tasks[0].result.started, stored.tasks[0].result.signal, stored.tasks[0].result.output_cut),
            (1_700_000_000.123456, 9, True),
        )
        self.assertEqual((stored.tasks[1].result.stdout_size, stored.tasks[1].result.output_cut), (None, None))

    def test_journal_of_an_earlier_p2pexec_gains_the_columns(self):
        """
        A journal written before issue 14 (no result_started ... output_cut
        columns) is opened, not refused: its results read back with those
        unknown, and new results keep them.
        """
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = Job("j", [TaskSpec.instruction("a1"), TaskSpec.instruction("b1")], started=5.0)
        journal.job_added(job)
        job.assign("a1", "w1")
        job.apply(TaskResult(task_id="a1", attempt=1, status="succeeded", node="w1"), 6.0, "w1")
        journal.task_changed(job.id, job.tasks["a1"])
        self.clock.advance(0)
        self.close(journal)
        path = os.path.join(state_dir, JOURNAL_FILE)
        db = sqlite3.connect(path)
        for column in ("result_started", "result_signal", "stdout_size", "stderr_size", "output_cut"):
            db.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
        db.commit()
        db.close()
        journal = self.open(state_dir)
        [stored] = journal.unfinished_jobs()
        self.assertEqual(stored.tasks[0].result, TaskResult(task_id="a1", attempt=1, status="succeeded", node="w1"))
        job.assign("b1", "w1")
        later = TaskResult(task_id="b1", attempt=1, status="succeeded", node="w1", started=7.5, stdout_size=3)
        job.apply(later, 8.0, "w1")
        journal.task_changed(job.id, job.tasks["b1"])
        self.clock.advance(0)
        journal = self.reopen(journal, state_dir)
        self.assertEqual(journal.unfinished_jobs()[0].tasks[1].result, later)

    def test_changes_in_the_turn_of_the_job(self):
        """Tasks changed in the same turn as their job was added are written as they stand at the commit."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = Job("j", [TaskSpec.instruction("a1"), TaskSpec.instruction("b1")], started=5.0)
        journal.job_added(job)
        job.assign("b1", "w9")
        journal.task_changed(job.id, job.tasks["b1"])
        self.clock.advance(0)
        journal = self.reopen(journal, state_dir)
        [stored] = journal.unfinished_jobs()
        self.assertEqual(
            [(t.spec.id, t.state, t.attempt, t.worker) for t in stored.tasks],
            [("a1", "pending", 0, None), ("b1", "assigned", 1, "w9")],
        )

    def test_unfinished_jobs_oldest_first(self):
        """Unfinished jobs come back in the order they were started, not the order they were added."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        journal.job_added(Job("a-late", [TaskSpec.instruction("a1")], started=20.0))
        journal.job_added(Job("z-early", [TaskSpec.instruction("a1")], started=10.0))
        journal = self.reopen(journal, state_dir)
        self.assertEqual([job.id for job in journal.unfinished_jobs()], ["z-early", "a-late"])

    def test_close_writes_what_is_marked(self):
        """A job marked but not yet committed when the journal is closed is written by close()."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        journal.job_added(Job("j", [TaskSpec.instruction("a1")], started=1.0))
        journal = self.reopen(journal, state_dir)
        self.assertEqual([job.id for job in journal.unfinished_jobs()], ["j"])

    def test_unreadable_task_row(self):
        """A stored task that no longer validates gives a JournalError naming the journal and the job."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        journal.job_added(Job("j", [TaskSpec.instruction("a1")], started=1.0))
        journal.commit()
        self.close(journal)
        db = sqlite3.connect(os.path.join(state_dir, JOURNAL_FILE))
        db.execute("UPDATE tasks SET kind = ?", ("no spaces allowed",))
        db.commit()
        db.close()
        journal = self.open(state_dir)
        error = self.assertRaises(JournalError, journal.unfinished_jobs)
        self.assertIn(journal.path, str(error))
        self.assertIn("job j", str(error))


class FinishedJobTests(JournalTestMixin, SynchronousTestCase):
    """Finished jobs: left out when resuming, pruned once old."""

    def finished_job(self, journal, job_id, started, finished):
        """Add a one-task job, commit, then finish it at C{finished} and commit again."""
        job = Job(job_id, [TaskSpec.instruction("a1")], started=started)
        journal.job_added(job)
        journal.commit()
        job.assign("a1", "w1")
        journal.task_changed(job.id, job.tasks["a1"])
        job.apply(TaskResult(task_id="a1", attempt=1, status="succeeded", node="w1"), finished, "w1")
        self.assertEqual(job.finished, finished)
        journal.task_changed(job.id, job.tasks["a1"])
        journal.job_changed(job)
        journal.commit()
        return job

    def test_finished_jobs_left_out(self):
        """A job whose end was written is not among the unfinished jobs, even after a restart."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        self.finished_job(journal, "done", 1.0, 2.0)
        journal.job_added(Job("open", [TaskSpec.instruction("a1")], started=3.0))
        journal.commit()
        self.assertEqual([job.id for job in journal.unfinished_jobs()], ["open"])
        journal = self.reopen(journal, state_dir)
        self.assertEqual([job.id for job in journal.unfinished_jobs()], ["open"])

    def test_cancelled_job_left_out(self):
        """A cancelled job is finished: it is not resumed."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        job = Job("j", [TaskSpec.instruction("a1")], started=1.0)
        journal.job_added(job)
        journal.commit()
        job.cancel(2.0, "m1", "a test")
        journal.job_changed(job)
        journal = self.reopen(journal, state_dir)
        self.assertEqual(journal.unfinished_jobs(), [])

    def test_prune(self):
        """prune(before) deletes the jobs finished before C{before}, with their tasks, and says how many."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        self.finished_job(journal, "old", 1.0, 100.0)
        self.finished_job(journal, "older", 0.5, 50.0)
        self.finished_job(journal, "new", 200.0, 300.0)
        journal.job_added(Job("open", [TaskSpec.instruction("a1"), TaskSpec.instruction("a2")], started=0.0))
        journal.commit()
        self.assertEqual(journal.prune(200.0), 2)
        self.close(journal)
        path = os.path.join(state_dir, JOURNAL_FILE)
        self.assertEqual(query(path, "SELECT id, finished FROM jobs ORDER BY id"), [("new", 300.0), ("open", None)])
        self.assertEqual(
            query(path, "SELECT job, COUNT(*) FROM tasks GROUP BY job ORDER BY job"), [("new", 1), ("open", 2)]
        )
        journal = self.open(state_dir)
        self.assertEqual(
            [(job.id, [t.spec.id for t in job.tasks]) for job in journal.unfinished_jobs()], [("open", ["a1", "a2"])]
        )

    def test_finished_job_by_source(self):
        """
        finished_job(source) is the job from that source that finished last,
        with its results; none for a source without a finished job, or once
        pruned.
        """
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        for job_id, finished in (("first", 100.0), ("second", 300.0)):
            self.finished_job(journal, job_id, finished - 10, finished)
        journal.job_added(Job("open", [TaskSpec.instruction("a1")], started=400.0, source="src"))
        journal.commit()
        # finished_job() above has no source: give both the same one.
        journal.close()
        db = sqlite3.connect(os.path.join(state_dir, JOURNAL_FILE))
        with db:
            db.execute("UPDATE jobs SET source = 'src'")
        db.close()
        journal = self.open(state_dir)
        found = journal.finished_job("src")
        self.assertEqual((found.id, found.finished, found.cancelled), ("second", 300.0, False))
        self.assertEqual([(t.spec.id, t.result.status) for t in found.tasks], [("a1", "succeeded")])
        self.assertIsNone(journal.finished_job("other"))
        journal.prune(1000.0)
        self.assertIsNone(journal.finished_job("src"))
        self.assertIsNone(NullJournal().finished_job("src"))

    def test_prune_nothing_old(self):
        """prune() with no job finished before the limit deletes nothing and returns 0."""
        journal = self.open(self.mktemp())
        self.finished_job(journal, "new", 200.0, 300.0)
        self.assertEqual(journal.prune(300.0), 0)
        self.assertEqual(journal.prune(300.5), 1)


class BatchingTests(JournalTestMixin, SynchronousTestCase):
    """Writes are batched: one transaction per reactor turn."""

    def setUp(self):
        super().setUp()
        self.journal = self.open(self.mktemp())
        self.job = Job("j", [TaskSpec.instruction(f"a{i}") for i in range(50)], started=1.0)

    def stored_jobs(self):
        """How many jobs another connection sees in the journal file (none if there is no file yet)."""
        if not os.path.exists(self.journal.path):
            return 0
        return query(self.journal.path, "SELECT COUNT(*) FROM jobs")[0][0]

    def test_one_commit_per_turn(self):
        """Many marks in one turn are written in exactly one transaction when the turn ends."""
        self.journal.job_added(self.job)
        self.clock.advance(0)
        self.assertEqual(self.journal.commits, 1)
        for task_id in self.job.tasks:
            self.job.assign(task_id, "w1")
            self.journal.task_changed(self.job.id, self.job.tasks[task_id])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.journal.commits, 1)
        self.clock.advance(0)
        self.assertEqual(self.journal.commits, 2)
        self.assertEqual(
            query(self.journal.path, "SELECT COUNT(*) FROM tasks WHERE state = 'assigned' AND worker = 'w1'"), [(50,)]
        )

    def test_nothing_written_before_the_turn_ends(self):
        """A mark alone writes nothing: the file gets the job when the scheduled commit runs."""
        self.journal.job_added(self.job)
        self.assertEqual(self.stored_jobs(), 0)
        self.assertEqual(self.journal.commits, 0)
        self.clock.advance(0)
        self.assertEqual(self.stored_jobs(), 1)

    def test_durable_waits_for_the_commit(self):
        """durable() fires only once what was marked before it is committed."""
        self.journal.job_added(self.job)
        d = self.journal.durable()
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.journal.commits, 1)

    def test_durable_with_nothing_marked(self):
        """durable() with nothing marked fires at once and writes nothing."""
        self.assertIsNone(self.successResultOf(self.journal.durable()))
        self.journal.job_added(self.job)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(self.journal.durable()))
        self.assertEqual(self.journal.commits, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_commit_now(self):
        """commit() writes at once, fires durable() and cancels the scheduled commit; a later mark schedules another."""
        self.journal.job_added(self.job)
        d = self.journal.durable()
        [scheduled] = self.clock.getDelayedCalls()
        self.journal.commit()
        self.assertEqual(self.stored_jobs(), 1)
        self.assertEqual(self.journal.commits, 1)
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(scheduled.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.job.assign("a0", "w1")
        self.journal.task_changed(self.job.id, self.job.tasks["a0"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.journal.commits, 2)


class CacheTests(JournalTestMixin, SynchronousTestCase):
    """The journal's page cache stays small: it is resident memory on every node that journals."""

    def test_page_cache_size(self):
        """The journal's connection uses a page cache of CACHE_KIB KiB, well below SQLite's default of 2,000."""
        journal = self.open(self.mktemp())
        journal.job_added(Job("j", [TaskSpec.instruction("a1")], started=1.0))
        self.clock.advance(0)
        self.assertEqual(journal._db.execute("PRAGMA cache_size").fetchone()[0], -CACHE_KIB)
        self.assertLessEqual(CACHE_KIB, 512)


class LockTests(JournalTestMixin, SynchronousTestCase):
    """Only one journal at a time on one state directory."""

    def test_second_journal_refused(self):
        """A second journal on a folder in use says so, naming the folder and the holder's pid."""
        state_dir = self.mktemp()
        self.open(state_dir)
        error = self.assertRaises(JournalError, Journal, state_dir, self.clock)
        self.assertIn(f"{state_dir} is in use by another p2pexec node (pid {os.getpid()})", str(error))

    def test_reopen_after_close(self):
        """Once the first journal is closed, the folder can be opened again."""
        state_dir = self.mktemp()
        journal = self.open(state_dir)
        self.close(journal)
        journal = self.open(state_dir)
        self.assertEqual(journal.unfinished_jobs(), [])

    def test_state_dir_cannot_be_made(self):
        """A state directory under a regular file gives a JournalError naming it."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a folder\n")
        state_dir = os.path.join(blocker, "state")
        error = self.assertRaises(JournalError, Journal, state_dir, self.clock)
        self.assertIn(f"cannot create the state directory {state_dir}", str(error))


class DamagedFileTests(JournalTestMixin, SynchronousTestCase):
    """A journal file that cannot be used is refused and left exactly as it was."""

    def setUp(self):
        super().setUp()
        self.state_dir = self.mktemp()
        self.path = os.path.join(self.state_dir, JOURNAL_FILE)

    def assertRefused(self, *phrases):
        """
        Opening the journal raises a JournalError naming the file, saying it
        was left untouched and containing C{phrases}; the file's bytes are
        unchanged and the folder is not left locked.
        """
        before = read_bytes(self.path)
        error = self.assertRaises(JournalError, Journal, self.state_dir, self.clock)
        message = str(error)
        self.assertIn(self.path, message)
        self.assertIn("left untouched", message)
        for phrase in phrases:
            self.assertIn(phrase, message)
        self.assertUnchanged(before, read_bytes(self.path))
        os.rename(self.path, self.path + ".bad")
        self.open(self.state_dir)
        return message

    def assertUnchanged(self, before, after):
        """C{after} is C{before}; if not, say where the file was changed."""
        if after != before:
            changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
            self.fail(
                f"the refused file {self.path} was modified: {len(before)} bytes before, {len(after)} after, "
                f"{len(changed)} byte(s) changed at offsets {changed[:10]}"
            )

    def build_journal(self, tasks=1):
        """Write a real journal with one job of C{tasks} tasks and close it."""
        journal = self.open(self.state_dir)
        specs = [TaskSpec(id=f"t{i}", kind="t", command=("echo", f"{i:04d}" * 50)) for i in range(tasks)]
        journal.job_added(Job("j", specs, started=1.0))
        self.close(journal)

    def test_garbage(self):
        """A file of garbage bytes is refused."""
        os.makedirs(self.state_dir)
        with open(self.path, "wb") as f:
            f.write(bytes(range(256)) * 40)
        self.assertRefused("cannot be read")

    def test_truncated(self):
        """A real journal of several pages cut to half its size is refused."""
        self.build_journal(tasks=400)
        size = os.path.getsize(self.path)
        self.assertGreater(size, 16 * 4096)
        with open(self.path, "r+b") as f:
            f.truncate(size // 2)
        self.assertRefused()

    def test_corrupt_page(self):
        """A real journal with one page in the middle overwritten is refused, though its tables still read."""
        self.build_journal(tasks=400)
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as f:
            f.seek(size // 2 // 4096 * 4096)
            f.write(b"\x55" * 4096)
        self.assertRefused()

    def test_other_database(self):
        """An SQLite database that is not a journal (other tables, default rollback journal mode) is refused."""
        os.makedirs(self.state_dir)
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE accounts (name TEXT, balance INTEGER)")
        db.execute("INSERT INTO accounts VALUES ('alice', 10)")
        db.commit()
        db.close()
        self.assertRefused("not a p2pexec journal")

    def test_other_schema(self):
        """A journal of another schema version is refused, naming both versions."""
        self.build_journal()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
        db.commit()
        db.close()
        self.assertRefused(f"schema {SCHEMA_VERSION + 1}", f"schema {SCHEMA_VERSION}")


class FaultyConnection(sqlite3.Connection):
    """
    A real SQLite connection whose statements can be made to fail halfway
    through a transaction (for the journal's C{connection_factory} seam).

    @ivar full: every executemany() fails as on a full disk (execute() still works).
    @ivar busy_commits: how many COMMITs are still to fail as on a busy file,
        leaving the transaction open, as SQLite does.
    """

    full = False
    busy_commits = 0

    def execute(self, sql, *args):
        """As usual, unless this is a COMMIT that is to fail."""
        if sql == "COMMIT" and self.busy_commits:
            self.busy_commits -= 1
            raise sqlite3.OperationalError("database is locked")
        return super().execute(sql, *args)

    def executemany(self, *args):
        """As usual, unless the disk is full."""
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().executemany(*args)


class FailedWriteTests(JournalTestMixin, SynchronousTestCase):
    """A write that fails is reported, not taken for done."""

    def setUp(self):
        super().setUp()
        self.state_dir = self.mktemp()
        connections = []

        class Connection(FaultyConnection):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                connections.append(self)

        self.journal = self.open(self.state_dir, connection_factory=Connection)
        # A journal in use: one job already written, so that its database is open.
        self.journal.job_added(Job("first", [TaskSpec.instruction("b1")], started=0.0))
        self.journal.commit()
        self.assertEqual(len(connections), 1)
        self.db = connections[0]
        self.job = Job("j", [TaskSpec.instruction("a1"), TaskSpec.instruction("a2")], started=1.0)

    def break_disk(self):
        """Make every executemany() of the journal fail as on a full disk (execute() still works)."""
        self.db.full = True

    def mend_disk(self):
        """Let the journal's writes succeed again."""
        self.db.full = False

    def test_commit_raises_logs_and_retries(self):
        """
        A failed commit raises JournalError, logs an error naming the file,
        rolls the transaction back, and leaves the waiting durable()
        Deferreds waiting; a retry is scheduled, and once the disk is
        mended the retry writes everything and fires them.
        """
        self.journal.job_added(self.job)
        first, second = self.journal.durable(), self.journal.durable()
        self.break_disk()
        with capturedLogs() as events:
            error = self.assertRaises(JournalError, self.journal.commit)
        self.assertIn(self.journal.path, str(error))
        self.assertIn("database or disk is full", str(error))
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], self.journal.path)
        for d in (first, second):
            self.assertNoResult(d)
        self.assertEqual(self.journal.commits, 1)
        self.assertFalse(self.db.in_transaction, "the failed transaction was not rolled back")
        self.assertEqual(query(self.journal.path, "SELECT id FROM jobs"), [("first",)])
        with capturedLogs() as again:
            self.clock.advance(RETRY_DELAY)
        self.assertEqual(
            len([e for e in again if e["log_level"] == LogLevel.error]), 1, "still full: logged, not raised"
        )
        self.assertNoResult(first)
        self.mend_disk()
        self.clock.advance(RETRY_DELAY)
        for d in (first, second):
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(query(self.journal.path, "SELECT id FROM jobs ORDER BY id"), [("first",), ("j",)])

    def test_a_failed_commit_is_rolled_back_and_retried(self):
        """
        A COMMIT that fails (SQLite's "database is locked", which leaves the
        transaction open) is rolled back, so the retry can begin a new
        transaction and write everything; the durable() Deferred then fires.
        """
        self.db.busy_commits = 1
        self.journal.job_added(self.job)
        d = self.journal.durable()
        with capturedLogs():
            self.assertRaises(JournalError, self.journal.commit)
        self.assertEqual(self.db.busy_commits, 0, "no COMMIT failed")
        self.assertFalse(self.db.in_transaction, "the transaction of the failed COMMIT is still open")
        self.assertNoResult(d)
        with capturedLogs() as retry:
            self.clock.advance(RETRY_DELAY)
        self.assertEqual([e for e in retry if e["log_level"] == LogLevel.error], [])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(query(self.journal.path, "SELECT id FROM jobs ORDER BY id"), [("first",), ("j",)])

    def test_close_after_a_failed_write_leaves_no_retry(self):
        """
        close() whose last write fails raises it, and leaves no retry
        scheduled on the closed database.
        """
        self.journal.job_added(self.job)
        self.break_disk()
        with capturedLogs():
            self.assertRaises(JournalError, self.journal.close)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_marks_survive_a_failed_write(self):
        """
        What was marked before a failed write is not forgotten: the next
        successful commit writes it.
        """
        self.journal.job_added(self.job)
        self.break_disk()
        self.assertRaises(JournalError, self.journal.commit)
        self.mend_disk()
        self.job.assign("a2", "w1")
        self.journal.task_changed(self.job.id, self.job.tasks["a2"])
        self.journal.commit()
        journal = self.reopen(self.journal, self.state_dir)
        self.assertEqual(
            [(job.id, [(t.spec.id, t.state, t.worker) for t in job.tasks]) for job in journal.unfinished_jobs()],
            [("first", [("b1", "pending", None)]), ("j", [("a1", "pending", None), ("a2", "assigned", "w1")])],
        )

    def test_durable_waits_after_a_failed_write(self):
        """After a failed write, durable() does not fire before what was marked is written."""
        self.journal.job_added(self.job)
        self.break_disk()
        self.assertRaises(JournalError, self.journal.commit)
        self.mend_disk()
        d = self.journal.durable()
        self.assertNoResult(d)
        self.journal.commit()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(query(self.journal.path, "SELECT id FROM jobs ORDER BY id"), [("first",), ("j",)])


class NullJournalTests(SynchronousTestCase):
    """L{NullJournal}: for nodes without a state directory."""

    def test_keeps_nothing(self):
        """Marks do nothing: durable() fires at once, nothing is scheduled and nothing is read back."""
        clock = Clock()
        journal = open_journal(None, clock)
        self.assertIsInstance(journal, NullJournal)
        self.assertIsNone(journal.path)
        job = Job("j", [TaskSpec.instruction("a1")], started=1.0)
        journal.job_added(job)
        job.assign("a1", "w1")
        journal.task_changed(job.id, job.tasks["a1"])
        journal.job_changed(job)
        self.assertIsNone(self.successResultOf(journal.durable()))
        self.assertEqual(clock.getDelayedCalls(), [])
        journal.commit()
        self.assertEqual(journal.unfinished_jobs(), [])
        journal.close()

    def test_open_journal_with_folder(self):
        """open_journal() with a folder gives a real L{Journal} there."""
        state_dir = self.mktemp()
        journal = open_journal(state_dir, Clock())
        self.addCleanup(journal.close)
        self.assertIsInstance(journal, Journal)
        self.assertEqual(journal.path, os.path.join(state_dir, JOURNAL_FILE))
        journal.job_added(Job("j", [TaskSpec.instruction("a1")], started=1.0))
        journal.commit()
        self.assertEqual(query(journal.path, "SELECT id FROM jobs"), [("j",)])


class DefaultStateDirTests(SynchronousTestCase):
    """L{default_state_dir}: where a node keeps its journal by default."""

    def test_xdg_state_home(self):
        """$XDG_STATE_HOME is used when set."""
        self.assertEqual(
            default_state_dir("a1", {"XDG_STATE_HOME": "/var/lib/me"}), os.path.join("/var/lib/me", "p2pexec", "a1")
        )

    def test_default(self):
        """Without $XDG_STATE_HOME (or with it empty) it is ~/.local/state."""
        expected = os.path.join(os.path.expanduser("~"), ".local", "state", "p2pexec", "b7")
        self.assertEqual(default_state_dir("b7", {}), expected)
        self.assertEqual(default_state_dir("b7", {"XDG_STATE_HOME": ""}), expected)
