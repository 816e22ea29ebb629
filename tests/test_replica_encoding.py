"""
The master's records encoded once (L{p2pexec.replication}): a job's parts
from its tasks' wire forms, and each group-commit window's records as the
bytes that go to the master's journal and to every replica.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.chunking import encode_json
from p2pexec.model import TaskResult, TaskSpec
from p2pexec.replica_log import decode
from p2pexec.replicas import Ballot
from p2pexec.replication import JOB, RESULT, Record, cut, encode_window, job_records, rebuild, result_record

from .test_failover import failover_cluster, finished_at, submit

B1 = Ballot(1, "m1")


def result(task):
    """A successful result of attempt 1 of C{task}, run on w1."""
    return TaskResult(task_id=task, attempt=1, status="succeeded", node="w1", duration=0.1)


class CutTests(SynchronousTestCase):
    """L{cut}: a list encoded in runs that fit a limit, a run per call."""

    def test_runs_fit_and_keep_every_item_in_order(self):
        """Every run is within the limit and decodes to its items; together they are the list."""
        items = [{"id": f"t{i}", "note": "\u00e9" * (i % 50)} for i in range(3000)]
        runs = cut(items, 4000)
        self.assertGreater(len(runs), 10)
        start = 0
        for count, text in runs:
            self.assertLessEqual(len(text.encode()), 4000)
            self.assertEqual(json.loads(text), items[start : start + count])
            start += count
        self.assertEqual(start, len(items))

    def test_runs_are_nearly_full(self):
        """The runs are not cut much shorter than the limit: about as few as per-item chunking makes."""
        items = [{"id": f"t{i}", "kind": "w"} for i in range(10_000)]
        runs = cut(items, 60_000)
        chunked = list(commands.chunk(items, lambda item: item, limit=60_000))
        self.assertLessEqual(len(runs), len(chunked) + 1)

    def test_an_empty_list(self):
        """An empty list is one empty array."""
        self.assertEqual(cut([], 100), [(0, "[]")])

    def test_an_item_over_the_limit(self):
        """One item alone over the limit is refused."""
        with self.assertRaises(ValueError):
            cut([{"x": "y" * 200}], 100)


class JobRecordsTests(SynchronousTestCase):
    """A job's parts: each task's wire form encoded once, the parts' JSON as the data's."""

    def test_parts_text_is_their_data(self):
        """Each part's text is its data as JSON, within the limit, and the parts rebuild the job."""
        specs = [TaskSpec(id=f"t{i}", kind="w", command=("echo", f"{i}")) for i in range(2000)]
        parts = job_records("j1", specs, ("m1", "n2", "n3"), "src", 100.0, limit=20_000)
        self.assertGreater(len(parts), 3)
        records = []
        for seq, (data, raw) in enumerate(parts, 1):
            self.assertEqual(json.loads(raw), data)
            self.assertLessEqual(len(encode_json(data["tasks"])), 20_000)
            records.append(Record(seq, JOB, data, B1, raw))
        image = rebuild(records)
        self.assertEqual(image.specs, specs)
        self.assertEqual(image.members, ("m1", "n2", "n3"))

    def test_a_job_without_tasks(self):
        """A job of no task has one part, naming the job."""
        [(data, raw)] = job_records("j1", [], ("m1",), None, 1.0)
        self.assertEqual(json.loads(raw), data)
        self.assertEqual((data["parts"], data["tasks"], data["total"]), (1, [], 0))

    def test_each_task_encoded_once(self):
        """The tasks' wire forms are made once each (not again for the record's text)."""
        made = []
        real = TaskSpec.to_wire
        self.patch(TaskSpec, "to_wire", lambda spec: made.append(spec.id) or real(spec))
        specs = [TaskSpec(id=f"t{i}", kind="w") for i in range(500)]
        job_records("j1", specs, ("m1",), None, 1.0, limit=2000)
        self.assertEqual(sorted(made), sorted(spec.id for spec in specs))


class EncodeWindowTests(SynchronousTestCase):
    """L{encode_window}: a window's records as REPLICATE-sized JSON arrays."""

    def test_round_trip(self):
        """The arrays decode to the records, in order, each within the limit, a job part alone as encoded."""
        [(data, raw)] = job_records("j1", [TaskSpec(id="t0", kind="w")], ("m1", "n2"), None, 1.0)
        records = [Record(1, JOB, data, B1, raw)]
        records += [Record(seq, RESULT, result_record(f"t{seq}", result(f"t{seq}")), B1) for seq in range(2, 600)]
        window = encode_window(records, limit=5000)
        self.assertEqual(window[0][0], records[:1])
        self.assertGreater(len(window), 3)
        self.assertEqual([record for part, _ in window for record in part], records)
        for part, encoded in window:
            self.assertLessEqual(len(encoded), 5000)
            self.assertEqual(json.loads(encoded), [record.to_wire() for record in part])
        from p2pexec.replica_log import Batch

        batches = [Batch(B1, part[0].seq, part[-1].seq, encoded) for part, encoded in window]
        self.assertEqual(decode(batches).records, records)


class WindowReuseTests(SynchronousTestCase):
    """On whole nodes: the bytes written to the master's journal are the ones sent to every replica."""

    def test_journal_and_replicas_get_the_same_bytes(self):
        """
        Every REPLICATE of a job without a fault carries bytes the master
        also wrote to its own journal (the same object: encoded once).
        """
        cluster = failover_cluster(duration=0.05)
        z1 = cluster.nodes["z1"]
        written = []
        original = z1.journal.replica_batch
        z1.journal.replica_batch = lambda job, batch: (written.append(batch.raw), original(job, batch))
        sent = []
        for record in z1.peers.connected_peers():
            real = record.connection.callRemote

            def spy(command, *a, _real=real, **kw):
                if command is commands.Replicate:
                    sent.append(kw["records"])
                return _real(command, *a, **kw)

            record.connection.callRemote = spy
        job_id = submit(cluster, "z1", 40)
        cluster.network.run_until(lambda: finished_at(cluster, job_id, names=["z1"]) is not None, limit=60)
        self.assertTrue(sent)
        ids = {id(raw) for raw in written}
        self.assertEqual([value for value in sent if id(value) not in ids], [])
