"""
A replica's log kept as batches (L{p2pexec.replica_log}): each REPLICATE
stored as received, one journal row, decoded only when needed; the
master's log trimmed once committed; a malformed record found when decoding.
"""

import sqlite3

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import failover
from p2pexec.journal import Journal
from p2pexec.replica_log import Batch, decode
from p2pexec.replicas import Ballot
from p2pexec.replication import JOB, RESULT, Record

from .test_failover import failover_cluster, finished_at, leaders, submit
from .test_node import text

B1 = Ballot(1, "m1")
B2 = Ballot(2, "n2")


class ReplicaCostTests(SynchronousTestCase):
    """A replica's work per REPLICATE: store the bytes, check the envelope, nothing more."""

    def test_a_replica_decodes_nothing_it_is_sent(self):
        """
        A whole replicated job without a fault: no node decodes a job log,
        each replica holds every record, in far fewer journal rows than
        records, and the master keeps none of its committed records in memory.
        """
        decoded = []
        real_decode = failover.decode
        self.patch(failover, "decode", lambda batches: decoded.append(1) or real_decode(batches))
        cluster = failover_cluster(duration=0.05)
        job_id = submit(cluster, "z1", 40)
        cluster.network.run_until(lambda: finished_at(cluster, job_id, names=["z1"]) is not None, limit=60)
        cluster.network.run(0.5)
        log = cluster.nodes["z1"].replication.logs[job_id]
        self.assertEqual(decoded, [], "a job log was decoded")
        for member in log.replicas:
            store = cluster.nodes[member].replication.stores[job_id]
            self.assertEqual(store.held, log.tail)
            batches = cluster.nodes[member].journal.replica_batches(job_id)
            self.assertLess(len(batches), log.tail)
            self.assertEqual([r.seq for r in real_decode(batches).records], list(range(1, log.tail + 1)))
            self.assertTrue(store.ended, "the end record was noticed")
        self.assertEqual(log.records, {}, "the master keeps no committed record in memory")

    def test_a_malformed_record_found_at_takeover(self):
        """
        One successor's journal holds a malformed record: when it takes the
        job over it says so in one line and holds its log only up to before
        it; the other member's records fill the rest, and the job finishes
        with one result per task.
        """
        cluster = failover_cluster(duration=0.3)
        job_id = submit(cluster, "z1", 20)
        z1 = cluster.nodes["z1"]
        cluster.network.run_until(lambda: z1.replication.logs[job_id].committed > 8, limit=30)
        first = z1.replication.logs[job_id].members[1]
        journal = cluster.nodes[first].journal
        batches = journal._batches[job_id]
        index = next(i for i, b in enumerate(batches) if b.first_seq > 1)
        spoiled = batches[index]
        batches[index] = Batch(spoiled.ballot, spoiled.first_seq, spoiled.last_seq, b"[not json")
        with capturedLogs() as events:
            cluster.hosts["z1"].crash()
            cluster.network.run_until(lambda: finished_at(cluster, job_id) is not None, limit=60)
        job = finished_at(cluster, job_id)
        self.assertEqual((job.succeeded, job.failed), (20, 0))
        self.assertEqual(len(leaders(cluster, job_id)), 1)
        lines = [text(e) for e in events if "malformed record" in e["log_format"]]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"Node {first} holds a malformed record of job {job_id}:", lines[0])
        self.assertIn(f"ends before record {spoiled.first_seq}", lines[0])


class JournalBatchTests(SynchronousTestCase):
    """The journal keeps a job log as one row per batch taken."""

    def test_batches_read_back_in_order(self):
        """Batches written and waiting are read back in the order taken, and after a restart."""
        state_dir = self.mktemp()
        journal = Journal(state_dir, Clock())
        first = Batch.of(B1, [Record(1, JOB, {"part": 0}, B1)])
        second = Batch.of(B2, [Record(1, JOB, {"part": 0, "v": 2}, B2), Record(2, RESULT, {}, B2)])
        journal.replica_changed("j1", B2, B2)
        journal.replica_batch("j1", first)
        journal.commit()
        journal.replica_batch("j1", second)
        self.assertEqual(journal.replica_batches("j1"), [first, second])
        journal.close()
        again = Journal(state_dir, Clock())
        self.addCleanup(again.close)
        [(job, promised, accepted, batches)] = again.replica_logs()
        self.assertEqual((job, promised, accepted, batches), ("j1", B2, B2, [first, second]))
        self.assertEqual(decode(batches).records[0].data, {"part": 0, "v": 2})

    def test_records_of_an_older_journal_are_moved(self):
        """A journal whose records are one row each (as an earlier p2pexec wrote them) is read as batches of one."""
        state_dir = self.mktemp()
        older = Journal(state_dir, Clock())
        older.replica_changed("j1", B2, B2)
        older.close()
        path = f"{state_dir}/journal.sqlite3"
        db = sqlite3.connect(path)
        db.execute("DROP TABLE replica_batches")
        db.executemany(
            "INSERT INTO replica_records (job, seq, kind, data, epoch, node) VALUES (?, ?, ?, ?, ?, ?)",
            [("j1", 1, "job", '{"part":0}', 1, "m1"), ("j1", 2, "result", '{"task":"t\u00e9"}', 2, "n2")],
        )
        db.commit()
        db.close()
        journal = Journal(state_dir, Clock())
        self.addCleanup(journal.close)
        [(_, _, _, batches)] = journal.replica_logs()
        self.assertEqual(
            decode(batches).records, [Record(1, JOB, {"part": 0}, B1), Record(2, RESULT, {"task": "t\u00e9"}, B2)]
        )
        with sqlite3.connect(path) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM replica_records").fetchone(), (0,))
