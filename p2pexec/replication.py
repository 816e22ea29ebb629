"""
The replicated log of a job, without I/O: what its master sends to its
replicas and when a record is committed (L{MasterLog}), what a replica holds
and promises (L{ReplicaStore}), and a successor's takeover (L{Takeover}):
promises collected, logs merged by seq, the job rebuilt (L{rebuild}).

The messages and the journal are L{p2pexec.failover}'s; the wire forms of
the records are in C{docs/protocol.rst} ("Replication and failover").

A job's records are numbered by C{seq} from 1, assigned by its current
master; a new master continues after the highest seq it collected.  A record
is committed once a majority of the job's replica set (the master's own
journal counting as one) holds it durably.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any

import attr

from p2pexec.model import TaskResult, TaskSpec, ValidationError
from p2pexec.replicas import Ballot, majority

JOB, RESULT, CANCEL, END = "job", "result", "cancel", "end"
RECORD_KINDS = frozenset((JOB, RESULT, CANCEL, END))
"""What a record says: the job as accepted (in parts), a task's result, that it was cancelled, that it ended."""

JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Compact JSON, as the wire's (one encoder for every record: C{json.dumps} would build one per call)."""

MAX_RECORDS = 1_000_000 * 2 + 1000
"""The most records one job's log may hold (a million tasks, each a part and a result, and some)."""


class StaleBallot(Exception):
    """A replica promised a higher ballot than the one asking: the asker is deposed."""

    def __init__(self, promised: Ballot) -> None:
        super().__init__(f"promised {promised.describe()}")
        self.promised = promised


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Record:
    """
    One entry of a job's log, with the ballot under which its holder accepted it.

    @ivar raw: C{data} as compact JSON text, once encoded (L{data_json}):
        a record is encoded once, whichever replicas and journal it goes to.
    """

    seq: int
    kind: str
    data: dict[str, Any]
    ballot: Ballot
    raw: str | None = attr.ib(default=None, eq=False, repr=False)

    def data_json(self) -> str:
        """C{data} as compact JSON text (encoded at most once per record)."""
        raw = self.raw
        if raw is None:
            raw = JSON_ENCODER.encode(self.data)
            object.__setattr__(self, "raw", raw)
        return raw

    def with_ballot(self, ballot: Ballot) -> Record:
        """The same record, accepted under C{ballot} (its encoding kept)."""
        return Record(self.seq, self.kind, self.data, ballot, self.raw)

    def to_wire(self) -> dict[str, Any]:
        """Its REPLICATE form: C{{"seq", "kind", "data"}} (the ballot is the command's)."""
        return {"seq": self.seq, "kind": self.kind, "data": self.data}

    def encode_wire(self) -> bytes:
        """L{to_wire} as compact UTF-8 JSON, from the cached encoding of C{data}."""
        return f'{{"seq":{self.seq},"kind":"{self.kind}","data":{self.data_json()}}}'.encode()

    def to_promise_wire(self) -> dict[str, Any]:
        """Its PROMISE-answer form: the REPLICATE form plus the C{epoch} and C{node} of its ballot."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "data": self.data,
            "epoch": self.ballot.epoch,
            "node": self.ballot.node,
        }

    @classmethod
    def from_wire(cls, entry: Any, ballot: Ballot | None = None) -> Record:
        """
        A record from the wire, accepted under C{ballot} (or, from a PROMISE
        answer, under the ballot it carries).

        @raise ValidationError: naming what is wrong.
        """
        if not isinstance(entry, dict):
            raise ValidationError(f"a record must be an object, not {type(entry).__name__}")
        seq, kind, data = entry.get("seq"), entry.get("kind"), entry.get("data")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_RECORDS:
            raise ValidationError(f"a record's 'seq' must be a whole number from 1 up, not {seq!r}")
        if kind not in RECORD_KINDS:
            raise ValidationError(f"record {seq}: 'kind' must be one of {', '.join(sorted(RECORD_KINDS))}")
        if not isinstance(data, dict):
            raise ValidationError(f"record {seq}: 'data' must be an object")
        if ballot is None:
            ballot = ballot_from_wire(entry.get("epoch"), entry.get("node"), f"record {seq}")
        return cls(seq, kind, data, ballot)


def ballot_from_wire(epoch: Any, node: Any, what: str = "the ballot") -> Ballot:
    """
    A ballot from its wire parts.

    @raise ValidationError: if the epoch is not a whole number from 1 up or the node not a non-empty string.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValidationError(f"{what}: the epoch must be a whole number from 1 up, not {epoch!r}")
    if not isinstance(node, str) or not node:
        raise ValidationError(f"{what}: the node must be a non-empty name")
    return Ballot(epoch, node)


def held_seq(seqs: Iterable[int]) -> int:
    """The highest seq up to which every record is held (0 for none)."""
    have = set(seqs)
    held = 0
    while held + 1 in have:
        held += 1
    return held


class MasterLog:
    """
    A job's log as its master keeps it: the records, what each replica
    acknowledged, and the commit point.

    @ivar members: the replica set, the master among them.
    @ivar ballot: the master's ballot for the job.
    @ivar acked: per member, the highest seq it holds durably (the master's
        own, once its journal wrote them).
    """

    def __init__(self, members: Iterable[str], me: str, ballot: Ballot, records: Iterable[Record] = ()) -> None:
        self.members = tuple(members)
        self.me = me
        self.ballot = ballot
        self.records: dict[int, Record] = {record.seq: record for record in records}
        self.tail = max(self.records, default=0)
        self.acked: dict[str, int] = {member: 0 for member in self.members}
        self._sent: dict[str, int] = {member: 0 for member in self.members if member != me}
        self.majority = majority(len(self.members))

    @property
    def replicas(self) -> tuple[str, ...]:
        """The members other than the master: whom the records go to."""
        return tuple(member for member in self.members if member != self.me)

    def append(self, kind: str, data: dict[str, Any]) -> Record:
        """A new record at the end of the log."""
        self.tail += 1
        record = Record(self.tail, kind, data, self.ballot)
        self.records[record.seq] = record
        return record

    def to_send(self, member: str) -> list[Record]:
        """The records C{member} has not been sent yet, in order; they count as sent from now."""
        start = self._sent.get(member, self.tail)
        if start >= self.tail:
            return []
        self._sent[member] = self.tail
        return [self.records[seq] for seq in range(start + 1, self.tail + 1)]

    def answered(self, member: str, held: int, last_sent: int) -> None:
        """C{member} answered a REPLICATE whose last record was C{last_sent}: it holds up to C{held}."""
        if member not in self.acked:
            return
        self.acked[member] = max(self.acked[member], min(held, self.tail))
        if held < last_sent:
            # It lacks some of what was sent (an earlier batch was lost): send from there again.
            self._sent[member] = min(self._sent.get(member, 0), held)

    def failed(self, member: str) -> None:
        """A REPLICATE to C{member} failed (its connection went): send it everything it has not acknowledged."""
        if member in self._sent:
            self._sent[member] = self.acked[member]

    def durable(self, seq: int) -> None:
        """The master's own journal holds the records up to C{seq}."""
        self.acked[self.me] = max(self.acked[self.me], min(seq, self.tail))

    @property
    def committed(self) -> int:
        """The highest seq a majority holds (every record up to it is committed)."""
        held = sorted(self.acked.values(), reverse=True)
        return held[self.majority - 1]


class ReplicaStore:
    """
    What one node holds of a job's log, as a member of its replica set: the
    records, the highest ballot it promised and the one it last accepted.
    """

    def __init__(
        self,
        job: str,
        promised: Ballot | None = None,
        accepted: Ballot | None = None,
        records: Iterable[Record] = (),
    ) -> None:
        self.job = job
        self.promised = promised
        self.accepted = accepted
        self.records: dict[int, Record] = {record.seq: record for record in records}
        self._held = held_seq(self.records)

    @property
    def held(self) -> int:
        """The highest seq up to which every record is held."""
        held, records = self._held, self.records
        while held + 1 in records:
            held += 1
        self._held = held
        return held

    def replicate(self, ballot: Ballot, records: Iterable[Record]) -> list[Record]:
        """
        Take records sent under C{ballot}, unless a higher ballot was promised.

        @return: the records to write to the journal.
        @raise StaleBallot: if a higher ballot was promised.
        """
        if self.promised is not None and ballot < self.promised:
            raise StaleBallot(self.promised)
        self.promised = ballot
        self.accepted = ballot
        taken = []
        for record in records:
            stored = record if record.ballot == ballot else record.with_ballot(ballot)
            if self.records.get(record.seq) != stored:
                self.records[record.seq] = stored
                taken.append(stored)
        return taken

    def promise(self, ballot: Ballot) -> bool:
        """
        Promise C{ballot}: no record or acknowledgement of a lower one is
        taken from now.  Promising the same ballot again is allowed (a
        proposer pages through the records).

        @return: whether the promise is new (to be written to the journal).
        @raise StaleBallot: if a higher ballot was promised.
        """
        if self.promised is not None and ballot < self.promised:
            raise StaleBallot(self.promised)
        new = self.promised != ballot
        self.promised = ballot
        return new

    def after(self, seq: int) -> list[Record]:
        """The records held beyond C{seq}, in order."""
        return [self.records[s] for s in sorted(self.records) if s > seq]


class Outcome(enum.Enum):
    """Where a takeover stands."""

    WAITING = "waiting"
    WON = "won"
    """A majority promised: the proposer leads the job."""
    LOST = "lost"
    """A member had promised a higher ballot: the proposer backs off."""
    FAILED = "failed"
    """Every member answered or failed, short of a majority."""


class Takeover:
    """
    A successor's attempt to lead a job at C{ballot}: the promises of the
    replica set's members, and their records merged.
    """

    def __init__(self, job: str, members: Iterable[str], ballot: Ballot) -> None:
        self.job = job
        self.members = tuple(members)
        self.ballot = ballot
        self.promised: dict[str, list[Record]] = {}
        self.refused: dict[str, Ballot] = {}
        self.unreachable: set[str] = set()

    def promise(self, member: str, records: Iterable[Record]) -> None:
        """C{member} promised, and holds C{records}."""
        if member in self.members:
            self.promised[member] = list(records)

    def refuse(self, member: str, promised: Ballot) -> None:
        """C{member} had promised C{promised}, higher than ours."""
        if member in self.members:
            self.refused[member] = promised

    def fail(self, member: str) -> None:
        """C{member} could not be asked."""
        if member in self.members:
            self.unreachable.add(member)

    @property
    def outcome(self) -> Outcome:
        """Won, lost, failed, or still waiting for answers."""
        if self.refused:
            return Outcome.LOST
        if len(self.promised) >= majority(len(self.members)):
            return Outcome.WON
        if len(self.promised) + len(self.unreachable) >= len(self.members):
            return Outcome.FAILED
        return Outcome.WAITING

    @property
    def highest_refusal(self) -> Ballot | None:
        """The highest ballot a refusing member named."""
        return max(self.refused.values(), default=None)

    def merged(self) -> list[Record]:
        """Every promiser's records, one per seq (the one accepted under the highest ballot), in seq order."""
        best: dict[int, Record] = {}
        for records in self.promised.values():
            for record in records:
                known = best.get(record.seq)
                if known is None or record.ballot > known.ballot:
                    best[record.seq] = record
        return [best[seq] for seq in sorted(best)]


# -- the records' contents ----------------------------------------------------------------


def job_records(
    job_id: str,
    specs: list[TaskSpec],
    members: Iterable[str],
    source: str | None,
    started_at: float,
    parts: Iterable[list[TaskSpec]],
    priority: int = 0,
) -> list[dict[str, Any]]:
    """
    The data of a job's C{job} records: one per part of its tasks (C{parts},
    cut to fit an AMP value; each task's wire form, C{after} included), the
    first also naming its replica set, source, start and (unless 0) priority.
    """
    chunks = list(parts) or [[]]
    out = []
    for index, part in enumerate(chunks):
        data: dict[str, Any] = {"part": index, "parts": len(chunks), "tasks": [spec.to_wire() for spec in part]}
        if index == 0:
            data.update(id=job_id, members=list(members), source=source, started_at=started_at, total=len(specs))
            if priority:
                data["priority"] = priority
        out.append(data)
    return out


def result_record(task_id: str, result: TaskResult) -> dict[str, Any]:
    """The data of a C{result} record: the task's recorded outcome."""
    return {"task": task_id, "result": result.to_wire()}


@attr.s(auto_attribs=True)
class JobImage:
    """
    A job as its records describe it (see L{rebuild}).

    @ivar results: each task's recorded result: the first C{result} record
        for it (a later one for the same task is a duplicate, dropped).
    """

    id: str
    members: tuple[str, ...]
    source: str | None
    started_at: float
    specs: list[TaskSpec]
    results: dict[str, TaskResult]
    cancelled: bool
    ended: bool
    priority: int = 0


def rebuild(records: Iterable[Record]) -> JobImage:
    """
    The job a log describes.

    @raise ValidationError: if the log lacks the job's parts or holds a
        malformed record.
    """
    ordered = sorted(records, key=lambda record: record.seq)
    head: dict[str, Any] | None = None
    parts: dict[int, list[Any]] = {}
    results: dict[str, TaskResult] = {}
    cancelled = ended = False
    for record in ordered:
        data = record.data
        if record.kind == JOB:
            index = data.get("part")
            if not isinstance(index, int) or not isinstance(data.get("tasks"), list):
                raise ValidationError(f"record {record.seq}: a job part needs 'part' and 'tasks'")
            parts[index] = data["tasks"]
            if index == 0:
                head = data
        elif record.kind == RESULT:
            task, wire = data.get("task"), data.get("result")
            if not isinstance(task, str):
                raise ValidationError(f"record {record.seq}: a result needs its 'task'")
            if task not in results:
                results[task] = TaskResult.from_wire(wire)
        elif record.kind == CANCEL:
            cancelled = True
        elif record.kind == END:
            ended = True
    if head is None:
        raise ValidationError("the log does not hold the job's first part")
    count = head.get("parts")
    if not isinstance(count, int) or any(index not in parts for index in range(count)):
        raise ValidationError("the log lacks some of the job's parts")
    specs = [TaskSpec.from_wire(task) for index in range(count) for task in parts[index]]
    ids = {spec.id for spec in specs}
    members = head.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or not members:
        raise ValidationError("the job's first part names no replica set")
    started = head.get("started_at")
    return JobImage(
        id=str(head.get("id")),
        members=tuple(members),
        source=head.get("source") if isinstance(head.get("source"), str) else None,
        started_at=float(started) if isinstance(started, (int, float)) else 0.0,
        specs=specs,
        results={task: result for task, result in results.items() if task in ids},
        cancelled=cancelled,
        ended=ended,
        priority=head["priority"] if type(head.get("priority")) is int else 0,
    )
