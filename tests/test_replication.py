"""
The replicated log without I/O (L{p2pexec.replication}): commit points,
a replica's promises, a takeover's merge, and a job rebuilt from its records.
"""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskResult, TaskSpec, ValidationError
from p2pexec.replica_log import Batch, ReplicaStore, decode, ends
from p2pexec.replicas import Ballot
from p2pexec.replication import (
    END,
    JOB,
    RESULT,
    MasterLog,
    Outcome,
    Record,
    StaleBallot,
    Takeover,
    job_records,
    rebuild,
    result_record,
)

B1 = Ballot(1, "m1")
B2 = Ballot(2, "n2")
B2b = Ballot(2, "n3")


def result(task, status="succeeded"):
    """A result of attempt 1 of C{task}, run on w1."""
    return TaskResult(task_id=task, attempt=1, status=status, node="w1", duration=0.1)


def job_log(ballot=B1, tasks=("t1", "t2")):
    """The C{job} record of a job of C{tasks} accepted by m1, replica set m1, n2, n3."""
    specs = [TaskSpec(id=t, kind="w") for t in tasks]
    [data] = job_records("j1", specs, ("m1", "n2", "n3"), "src", 100.0, [specs])
    return [Record(1, JOB, data, ballot)]


class MasterLogTests(SynchronousTestCase):
    """What a master sends, and when its records are committed."""

    def test_committed_needs_a_majority_counting_the_master(self):
        """A record is committed once the master's journal and one of two replicas hold it, not before."""
        log = MasterLog(("m1", "n2", "n3"), "m1", B1)
        log.append(RESULT, {"task": "t1"})
        self.assertEqual(log.committed, 0)
        log.durable(1)
        self.assertEqual(log.committed, 0, "the master alone is not a majority of 3")
        log.answered("n3", 1, 1)
        self.assertEqual(log.committed, 1)

    def test_replicas_alone_commit(self):
        """Two replicas of three holding a record commit it even before the master's own journal does."""
        log = MasterLog(("m1", "n2", "n3"), "m1", B1)
        log.append(RESULT, {"task": "t1"})
        log.answered("n2", 1, 1)
        log.answered("n3", 1, 1)
        self.assertEqual(log.committed, 1)

    def test_batches_send_only_what_is_new(self):
        """Each replica is sent each record once; a failed send sends everything unacknowledged again."""
        log = MasterLog(("m1", "n2"), "m1", B1)
        log.append(RESULT, {"a": 1})
        log.append(RESULT, {"a": 2})
        self.assertEqual([r.seq for r in log.to_send("n2")], [1, 2])
        self.assertEqual(log.to_send("n2"), [])
        log.append(RESULT, {"a": 3})
        self.assertEqual([r.seq for r in log.to_send("n2")], [3])
        log.answered("n2", 1, 2)
        log.failed("n2")
        self.assertEqual([r.seq for r in log.to_send("n2")], [2, 3])

    def test_a_replica_that_lacks_records_is_sent_them_again(self):
        """An answer holding less than was sent (an earlier batch was lost) makes the next batch start there."""
        log = MasterLog(("m1", "n2"), "m1", B1)
        for i in range(3):
            log.append(RESULT, {"a": i})
        log.to_send("n2")
        log.answered("n2", 1, 3)
        self.assertEqual([r.seq for r in log.to_send("n2")], [2, 3])

    def test_committed_records_are_trimmed(self):
        """Records committed and written to the master's own journal leave its memory; the others stay."""
        log = MasterLog(("m1", "n2", "n3"), "m1", B1, older=lambda first, last: [])
        for i in range(4):
            log.append(RESULT, {"a": i})
        self.assertEqual([r.seq for r in log.unwritten()], [1, 2, 3, 4])
        log.durable(3)
        log.answered("n2", 2, 4)
        log.trim()
        self.assertEqual(sorted(log.records), [3, 4])
        self.assertEqual(log.base, 2)

    def test_a_lagging_replica_is_caught_up_from_the_journal(self):
        """A replica that needs trimmed records again is sent them as read back from the master's journal."""
        journal = {}
        log = MasterLog(
            ("m1", "n2", "n3"), "m1", B1, older=lambda first, last: [journal[s] for s in range(first, last + 1)]
        )
        for i in range(3):
            journal[i + 1] = log.append(RESULT, {"a": i})
        log.unwritten()
        log.to_send("n2")
        log.to_send("n3")
        log.durable(3)
        log.answered("n2", 3, 3)
        log.trim()
        self.assertEqual(log.records, {})
        log.failed("n3")
        log.append(RESULT, {"a": 3})
        self.assertEqual([r.seq for r in log.to_send("n3")], [1, 2, 3, 4])

    def test_nothing_trimmed_without_a_journal_to_read(self):
        """A log that cannot read its records back keeps them all."""
        log = MasterLog(("m1", "n2"), "m1", B1)
        log.append(RESULT, {})
        log.unwritten()
        log.durable(1)
        log.answered("n2", 1, 1)
        log.trim()
        self.assertEqual(sorted(log.records), [1])

    def test_single_member_commits_on_its_journal(self):
        """A replica set of one (no other node was live): the master's journal is the majority."""
        log = MasterLog(("m1",), "m1", B1)
        log.append(RESULT, {})
        log.durable(1)
        self.assertEqual(log.committed, 1)


def batch(ballot, *records):
    """A batch of C{records} (consecutive seqs), taken under C{ballot}."""
    return Batch.of(ballot, list(records))


class ReplicaStoreTests(SynchronousTestCase):
    """What a replica takes, promises and refuses (only the ballots and the seqs: the records stay in its journal)."""

    def test_refuses_records_of_a_lower_ballot_once_promised(self):
        """After promising epoch 2, records of epoch 1 are refused with the promised ballot."""
        store = ReplicaStore("j1")
        store.replicate(B1, 1, 1)
        self.assertTrue(store.promise(B2))
        with self.assertRaises(StaleBallot) as caught:
            store.replicate(B1, 2, 2)
        self.assertEqual(caught.exception.promised, B2)
        self.assertEqual(store.held, 1)

    def test_refuses_a_lower_promise(self):
        """A promise of a ballot lower than one promised is refused; the same one again is allowed."""
        store = ReplicaStore("j1")
        store.promise(B2b)
        self.assertRaises(StaleBallot, store.promise, B2)
        self.assertFalse(store.promise(B2b))

    def test_held_is_contiguous(self):
        """C{held} counts only records without a gap before them."""
        store = ReplicaStore("j1")
        store.replicate(B1, 1, 1)
        store.replicate(B1, 3, 3)
        self.assertEqual(store.held, 1)
        store.replicate(B1, 2, 2)
        self.assertEqual(store.held, 3)

    def test_held_advances_past_a_filled_gap_later(self):
        """A gap filled later moves C{held} on to the end of every run after it."""
        store = ReplicaStore("j1", batches=[Batch(B1, 1, 2, b""), Batch(B1, 4, 5, b"")])
        self.assertEqual(store.held, 2)
        store.replicate(B1, 7, 9)
        self.assertEqual(store.held, 2)
        store.replicate(B1, 3, 3)
        self.assertEqual(store.held, 5)
        store.replicate(B1, 6, 6)
        self.assertEqual(store.held, 9)

    def test_says_when_its_ballots_change(self):
        """Taking records says whether the ballots changed (to be journaled): only the first batch of a ballot."""
        store = ReplicaStore("j1")
        self.assertTrue(store.replicate(B1, 1, 1))
        self.assertFalse(store.replicate(B1, 2, 2))
        self.assertTrue(store.replicate(B2, 3, 3))
        self.assertEqual((store.promised, store.accepted), (B2, B2))

    def test_truncated_at_a_malformed_record(self):
        """A record found malformed ends what is held before it."""
        store = ReplicaStore("j1")
        store.replicate(B1, 1, 5)
        store.replicate(B1, 8, 9)
        store.truncate(4)
        self.assertEqual(store.held, 3)
        store.replicate(B1, 4, 7)
        self.assertEqual(store.held, 7, "the runs beyond the malformed record are forgotten")


class DecodeTests(SynchronousTestCase):
    """A job's log decoded from the batches its holder took."""

    def test_round_trip(self):
        """The records of a batch come back equal, each under the batch's ballot."""
        records = [Record(1, JOB, {"part": 0}, B1), Record(2, RESULT, result_record("t\u00e9", result("t\u00e9")), B1)]
        self.assertEqual(decode([Batch.of(B1, records)]).records, records)

    def test_a_newer_leader_overwrites(self):
        """A later batch of a higher ballot replaces the records at the same seqs."""
        log = decode(
            [
                batch(B1, Record(1, JOB, {}, B1), Record(2, RESULT, {"old": 1}, B1)),
                batch(B2, Record(2, RESULT, {"new": 1}, B2)),
            ]
        )
        self.assertEqual([(r.seq, r.data, r.ballot) for r in log.records], [(1, {}, B1), (2, {"new": 1}, B2)])

    def test_a_lower_ballot_does_not_overwrite(self):
        """A batch of a lower ballot written after a higher one does not replace its records."""
        log = decode([batch(B2, Record(1, RESULT, {"new": 1}, B2)), batch(B1, Record(1, RESULT, {"old": 1}, B1))])
        self.assertEqual([r.data for r in log.records], [{"new": 1}])

    def test_a_malformed_record_ends_the_log(self):
        """A record that is not a record ends the log before it, saying which and why."""
        good = batch(B1, Record(1, JOB, {}, B1), Record(2, RESULT, {}, B1))
        bad = Batch(B1, 3, 5, b'[{"seq":3,"kind":"result","data":{}},{"seq":4,"kind":"nope","data":{}},{}]')
        later = batch(B1, Record(6, RESULT, {}, B1))
        log = decode([good, bad, later])
        self.assertEqual([r.seq for r in log.records], [1, 2, 3])
        self.assertEqual(log.bad_seq, 4)
        self.assertIn("record 4 is malformed", log.problem)

    def test_a_batch_that_is_not_json(self):
        """A batch that is not JSON, or holds fewer records than its envelope says, is malformed from its first seq."""
        log = decode([batch(B1, Record(1, JOB, {}, B1)), Batch(B1, 2, 3, b"[{")])
        self.assertEqual(([r.seq for r in log.records], log.bad_seq), ([1], 2))
        self.assertIn("not JSON", log.problem)
        short = decode([Batch(B1, 1, 2, b'[{"seq":1,"kind":"job","data":{}}]')])
        self.assertEqual((short.records, short.bad_seq), ([], 1))

    def test_a_seq_out_of_place(self):
        """A record whose seq is not where the envelope puts it is malformed."""
        log = decode([Batch(B1, 1, 1, b'[{"seq":2,"kind":"job","data":{}}]')])
        self.assertEqual((log.records, log.bad_seq), ([], 1))

    def test_a_later_batch_mends_a_malformed_record(self):
        """A well-formed record sent again at the malformed one's seq mends the log."""
        log = decode([Batch(B1, 1, 1, b"[1]"), batch(B1, Record(1, JOB, {}, B1))])
        self.assertEqual(([r.seq for r in log.records], log.bad_seq), ([1], None))

    def test_ends(self):
        """Only a batch holding a well-formed C{end} record ends the job."""
        self.assertTrue(ends(batch(B1, Record(7, END, {"succeeded": 1}, B1))))
        self.assertFalse(ends(batch(B1, Record(7, RESULT, {"stdout": "end"}, B1))))
        self.assertFalse(ends(batch(B1, Record(7, RESULT, {"task": "end"}, B1))))


class RecordEncodingTests(SynchronousTestCase):
    """A record is encoded once, and its encoding is the wire's."""

    def test_encode_wire_is_the_wire_form(self):
        """C{encode_wire} gives the compact JSON of C{to_wire}, non-ASCII text included."""
        from p2pexec.chunking import encode_json

        record = Record(7, RESULT, result_record("t\u00e9", result("t\u00e9")), B1)
        self.assertEqual(record.encode_wire(), encode_json(record.to_wire()))

    def test_encoded_once(self):
        """The data's encoding is kept: a second use does not encode it again, and a new ballot keeps it."""
        record = Record(1, RESULT, {"task": "t1"}, B1)
        first = record.data_json()
        self.assertIs(record.data_json(), first)
        self.assertIs(record.with_ballot(B2).data_json(), first)
        self.assertEqual(record.with_ballot(B2), Record(1, RESULT, {"task": "t1"}, B2))
        wire = record.encode_wire()
        self.assertIs(record.encode_wire(), wire)


class TakeoverTests(SynchronousTestCase):
    """Promises collected and records merged."""

    def test_wins_with_a_majority(self):
        """Two promises of three members win; one refusal loses."""
        attempt = Takeover("j1", ("m1", "n2", "n3"), B2)
        attempt.promise("n2", [])
        self.assertIs(attempt.outcome, Outcome.WAITING)
        attempt.promise("n3", [])
        self.assertIs(attempt.outcome, Outcome.WON)
        other = Takeover("j1", ("m1", "n2", "n3"), B2)
        other.promise("n2", [])
        other.refuse("n3", B2b)
        self.assertIs(other.outcome, Outcome.LOST)
        self.assertEqual(other.highest_refusal, B2b)

    def test_fails_without_a_majority(self):
        """One promise and two members unreachable: no majority."""
        attempt = Takeover("j1", ("m1", "n2", "n3"), B2)
        attempt.promise("n2", [])
        attempt.fail("m1")
        attempt.fail("n3")
        self.assertIs(attempt.outcome, Outcome.FAILED)

    def test_merge_keeps_the_highest_ballot_per_seq(self):
        """Records are united by seq; at one seq, the one accepted under the highest ballot wins."""
        attempt = Takeover("j1", ("m1", "n2", "n3"), Ballot(3, "n2"))
        attempt.promise("n2", [Record(1, JOB, {"v": 1}, B1), Record(2, RESULT, {"v": "old"}, B1)])
        attempt.promise("n3", [Record(2, RESULT, {"v": "new"}, B2), Record(3, RESULT, {"v": 3}, B2)])
        merged = attempt.merged()
        self.assertEqual([(r.seq, r.data["v"]) for r in merged], [(1, 1), (2, "new"), (3, 3)])


class RebuildTests(SynchronousTestCase):
    """A job from its records."""

    def test_one_result_per_task(self):
        """The first result of a task is its result; a second one for the same task is dropped."""
        records = job_log() + [
            Record(2, RESULT, result_record("t1", result("t1")), B1),
            Record(3, RESULT, result_record("t1", result("t1", "failed")), B2),
        ]
        image = rebuild(records)
        self.assertEqual([s.id for s in image.specs], ["t1", "t2"])
        self.assertEqual(list(image.results), ["t1"])
        self.assertEqual(image.results["t1"].status, "succeeded")
        self.assertEqual(image.members, ("m1", "n2", "n3"))
        self.assertFalse(image.ended)

    def test_missing_part_is_refused(self):
        """A log without the job's first part describes no job."""
        self.assertRaises(ValidationError, rebuild, [Record(2, RESULT, result_record("t1", result("t1")), B1)])

    def test_wire_round_trip(self):
        """A record read back from its PROMISE form keeps its ballot."""
        record = Record(4, RESULT, {"task": "t1"}, B2)
        self.assertEqual(Record.from_wire(record.to_promise_wire()), record)
        self.assertEqual(Record.from_wire(record.to_wire(), B1).ballot, B1)
        self.assertRaises(ValidationError, Record.from_wire, {"seq": 0, "kind": "job", "data": {}}, B1)
        self.assertRaises(ValidationError, Record.from_wire, {"seq": 1, "kind": "nope", "data": {}}, B1)
