"""
A journal that cannot be written (a full disk, a read-only file system, an
I/O error): the node says so plainly, reports it in /healthz and its status
views, refuses new jobs with the reason, and goes back to normal by itself
once the journal can be written again (issue 11, item 5).

The failures come through L{Journal}'s C{before_write} seam: each write
first calls it, and what it raises fails the write as the disk would.
"""

import errno
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from p2pexec import commands, web
from p2pexec.job import Job
from p2pexec.journal import RETRY_DELAY, Journal
from p2pexec.journal_health import JournalError, write_failure_reason
from p2pexec.model import TaskSpec
from p2pexec.node import NodeConfig, create_node
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

from .test_node import text

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


class Disk:
    """What a journal's writes run into: nothing, or the error in C{fault}."""

    def __init__(self):
        self.fault = None

    def before_write(self):
        """Raise the current fault, if any."""
        if self.fault is not None:
            raise self.fault


class JournalProblemTests(SynchronousTestCase):
    """L{Journal.problem}: why the journal cannot be written, and its clearing."""

    def setUp(self):
        self.clock = Clock()
        self.disk = Disk()
        self.journal = Journal(self.mktemp(), self.clock, before_write=self.disk.before_write)
        self.addCleanup(self.journal.close)
        self.addCleanup(setattr, self.disk, "fault", None)

    def fail_with(self, fault):
        """Fail the next write with C{fault}; return the journal's problem and the log lines."""
        self.disk.fault = fault
        self.journal.job_added(Job("j", [TaskSpec(id="t1", kind="w")], started=0.0))
        with capturedLogs() as events:
            self.assertRaises(JournalError, self.journal.commit)
        return self.journal.problem, [text(e) for e in events]

    def test_disk_full(self):
        """ENOSPC: the problem says 'disk full' and names the file; one line says what it stops."""
        problem, lines = self.fail_with(DISK_FULL)
        self.assertEqual(
            (problem.reason, problem.error, problem.path), ("disk full", "No space left on device", self.journal.path)
        )
        self.assertEqual(
            problem.describe(),
            f"its journal {self.journal.path} cannot be written: disk full (No space left on device)",
        )
        [line] = lines
        self.assertTrue(
            line.startswith(f"Could not write the journal {self.journal.path}: disk full (No space left on device)."),
            line,
        )
        self.assertIn("new jobs are refused", line)
        self.assertNotIn("move it away", line)

    def test_sqlite_disk_full(self):
        """SQLite's 'database or disk is full' is a full disk too."""
        problem, _ = self.fail_with(sqlite3.OperationalError("database or disk is full"))
        self.assertEqual(problem.reason, "disk full")

    def test_read_only_and_io_error(self):
        """EROFS and EIO are named as such."""
        self.assertEqual(
            self.fail_with(OSError(errno.EROFS, "Read-only file system"))[0].reason, "read-only file system"
        )
        self.journal.withdraw("j")
        self.assertEqual(self.fail_with(OSError(errno.EIO, "Input/output error"))[0].reason, "I/O error")

    def test_recovers_by_itself(self):
        """Once a retry writes, the problem is gone, the waiters fire, and one line says so."""
        self.fail_with(DISK_FULL)
        d = self.journal.durable()
        with capturedLogs() as events:
            self.clock.advance(RETRY_DELAY)
        self.assertIsNotNone(self.journal.problem, "still full")
        self.assertTrue(any("Could not write the journal" in text(e) and "again" in text(e) for e in events))
        self.disk.fault = None
        with capturedLogs() as events:
            self.clock.advance(RETRY_DELAY)
        self.assertIsNone(self.journal.problem)
        self.successResultOf(d)
        self.assertTrue(
            any(text(e).startswith(f"The journal {self.journal.path} can be written again") for e in events)
        )

    def test_recovers_after_what_failed_was_withdrawn(self):
        """
        When the write that failed was withdrawn (a refused submission),
        nothing is left to write, but the journal still tries a small write
        every RETRY_DELAY seconds, and clears its problem once it can.
        """
        self.fail_with(DISK_FULL)
        self.journal.withdraw("j")
        self.clock.advance(RETRY_DELAY)
        self.assertIsNotNone(self.journal.problem, "still full")
        self.disk.fault = None
        self.clock.advance(RETRY_DELAY)
        self.assertIsNone(self.journal.problem)
        self.assertEqual(self.journal.unfinished_jobs(), [], "the withdrawn job was never written")

    def test_damage_is_not_a_write_failure(self):
        """A damaged or foreign file is not blamed on the disk (its advice to move it away stands)."""
        self.assertIsNone(write_failure_reason(sqlite3.DatabaseError("file is not a database")))
        self.assertEqual(write_failure_reason(sqlite3.OperationalError("disk I/O error")), "I/O error")


class NodeWithFullDiskTests(SynchronousTestCase):
    """A whole node (on the in-memory network) whose journal cannot be written."""

    def setUp(self):
        self.network = FakeNetwork()
        host = self.network.host("127.0.0.1")
        self.disk = Disk()
        journal = Journal(self.mktemp(), host, before_write=self.disk.before_write)
        self.node = create_node(
            NodeConfig(name="m1", port=4001, capabilities=frozenset(), slots=2),
            host,
            FakeRunner(host, "m1"),
            journal=journal,
        )
        self.node.start()
        self.addCleanup(journal.close)
        self.addCleanup(setattr, self.disk, "fault", None)
        worker_host = self.network.host("127.0.0.2")
        self.worker = create_node(
            NodeConfig(name="w1", interface="127.0.0.2", port=4002, capabilities=frozenset({"w"}), slots=1),
            worker_host,
            FakeRunner(worker_host, "w1", duration=0.5),
        )
        self.worker.start()
        self.network.run_until(lambda: self.node.peers.is_connected("w1"), limit=10)

    def health(self):
        """GET /healthz: (status code, body)."""
        import json

        request = DummyRequest([b""])
        body = web.HealthResource(self.node).render(request)
        return request.responseCode or 200, json.loads(body)

    def test_submission_refused_when_the_write_fails(self):
        """
        A job whose own write fails is refused (JOURNAL_UNWRITABLE, with
        the reason), not accepted and left unanswered: nothing of it runs,
        and the node forgets it.
        """
        self.disk.fault = DISK_FULL
        with capturedLogs() as events:
            error = self.assertRaises(
                commands.JournalUnwritable, self.node.submit, [{"id": "t1", "kind": "w", "command": ["true"]}]
            )
        self.assertIn("takes no new job: its journal", str(error))
        self.assertIn("disk full (No space left on device)", str(error))
        self.assertEqual(self.node.master.jobs, {})
        self.network.run(2.0)
        self.assertEqual(self.node.worker.running, 0)
        self.assertTrue(any("Node m1 refused a job: its journal" in text(e) for e in events))

    def test_health_status_and_refusal_while_full_then_recovery(self):
        """
        While the journal cannot be written: /healthz is 503 with the
        reason, the node view has it, a running job shows 'stalled' and no
        ETA, and a new job is refused at once.  Once it can be written
        again, all of that clears by itself and jobs are accepted.
        """
        self.assertEqual(
            self.health(),
            (
                200,
                {
                    "status": "ok",
                    "node": "m1",
                    "peers_connected": 1,
                    "jobs_running": 0,
                    "problem": None,
                },
            ),
        )
        d = self.node.submit([{"id": f"t{i}", "kind": "w", "command": ["true"]} for i in range(8)])
        job_id = self.successResultOf(d)
        self.network.run_until(lambda: self.node.master.jobs[job_id].succeeded >= 2, limit=10)
        self.assertIsNotNone(self.node.jobs_status()[0]["eta"], "an ETA while the job moves")
        self.disk.fault = DISK_FULL
        self.network.run(3.0)
        code, body = self.health()
        self.assertEqual((code, body["status"]), (503, "unhealthy"))
        self.assertIn("cannot be written: disk full", body["problem"])
        self.assertIn("cannot be written: disk full", self.node.peers_status()[0]["problem"])
        [summary] = self.node.jobs_status()
        self.assertEqual((summary["id"], summary["state"], summary["eta"]), (job_id, "running", None))
        self.assertIn("disk full", summary["stalled"])
        self.assertRaises(commands.JournalUnwritable, self.node.submit, [{"id": "x", "kind": "w"}])
        self.disk.fault = None
        self.network.run_until(lambda: self.node.master.jobs[job_id].finished is not None, limit=30)
        self.assertEqual(self.health()[0], 200)
        self.assertIsNone(self.node.peers_status()[0]["problem"])
        self.assertEqual(self.node.jobs_status()[0]["state"], "finished")
        self.assertIsNone(self.node.jobs_status()[0]["stalled"])
        self.assertEqual(self.node.master.jobs[job_id].succeeded, 8)
        self.successResultOf(self.node.submit([{"id": "x", "kind": "w", "command": ["true"]}]))
