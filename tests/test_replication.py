"""
The replicated log without I/O (L{p2pexec.replication}): commit points,
a replica's promises, a takeover's merge, and a job rebuilt from its records.
"""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskResult, TaskSpec, ValidationError
from p2pexec.replicas import Ballot
from p2pexec.replication import (
    JOB,
    RESULT,
    MasterLog,
    Outcome,
    Record,
    ReplicaStore,
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

    def test_single_member_commits_on_its_journal(self):
        """A replica set of one (no other node was live): the master's journal is the majority."""
        log = MasterLog(("m1",), "m1", B1)
        log.append(RESULT, {})
        log.durable(1)
        self.assertEqual(log.committed, 1)


class ReplicaStoreTests(SynchronousTestCase):
    """What a replica takes, promises and refuses."""

    def test_refuses_records_of_a_lower_ballot_once_promised(self):
        """After promising epoch 2, records of epoch 1 are refused with the promised ballot."""
        store = ReplicaStore("j1")
        store.replicate(B1, job_log())
        self.assertTrue(store.promise(B2))
        with self.assertRaises(StaleBallot) as caught:
            store.replicate(B1, [Record(2, RESULT, {}, B1)])
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
        store.replicate(B1, [Record(1, JOB, {}, B1), Record(3, RESULT, {}, B1)])
        self.assertEqual(store.held, 1)
        store.replicate(B1, [Record(2, RESULT, {}, B1)])
        self.assertEqual(store.held, 3)

    def test_a_newer_leader_overwrites(self):
        """Records of a higher ballot replace those at the same seq."""
        store = ReplicaStore("j1")
        store.replicate(B1, [Record(2, RESULT, {"old": 1}, B1)])
        store.replicate(B2, [Record(2, RESULT, {"new": 1}, B2)])
        self.assertEqual(store.records[2].data, {"new": 1})
        self.assertEqual(store.accepted, B2)


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

    def test_a_replica_keeps_the_record_it_was_sent(self):
        """A record taken under its own ballot is stored as it is, so that its encoding is not made again."""
        store = ReplicaStore("j1")
        record = Record(1, RESULT, {"task": "t1"}, B1)
        record.data_json()
        [taken] = store.replicate(B1, [record])
        self.assertIs(taken, record)

    def test_held_advances_past_a_filled_gap_later(self):
        """C{held} is kept as records come: a gap filled later moves it on to the end of the run."""
        store = ReplicaStore("j1", records=[Record(1, JOB, {}, B1), Record(3, RESULT, {}, B1)])
        self.assertEqual(store.held, 1)
        store.replicate(B1, [Record(4, RESULT, {}, B1)])
        self.assertEqual(store.held, 1)
        store.replicate(B1, [Record(2, RESULT, {}, B1)])
        self.assertEqual(store.held, 4)


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
