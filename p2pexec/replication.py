"""
The replicated log of a job, without I/O: what its master sends to its
replicas and when a record is committed (L{MasterLog}), and a successor's takeover (L{Takeover}):
promises collected, logs merged by seq, the job rebuilt (L{rebuild}).
What a replica holds is L{p2pexec.replica_log}'s.

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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attr

from p2pexec.chunking import MAX_VALUE_BYTES
from p2pexec.model import TaskResult, TaskSpec, ValidationError
from p2pexec.replicas import Ballot, majority

if TYPE_CHECKING:
    from p2pexec.membership import PeerTable

JOB, RESULT, CANCEL, END = "job", "result", "cancel", "end"
RERUN = "rerun"
"""Issue 14 (rerun): the job, ended, was opened again; C{data["tasks"]} maps each task that runs again to its last attempt."""
RECORD_KINDS = frozenset((JOB, RESULT, CANCEL, END, RERUN))
"""What a record says: the job as accepted (in parts), a task's result, that it was cancelled, that it ended, that some tasks run again."""

JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Compact JSON, as the wire's (one encoder for every record: C{json.dumps} would build one per call)."""

PART_BYTES = MAX_VALUE_BYTES - 4096
"""The most bytes of task specs one C{job} record carries (it must fit in one REPLICATE with its envelope)."""

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
    wire: bytes | None = attr.ib(default=None, eq=False, repr=False)

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
        """L{to_wire} as compact UTF-8 JSON, from the cached encoding of C{data} (made at most once)."""
        wire = self.wire
        if wire is None:
            wire = f'{{"seq":{self.seq},"kind":"{self.kind}","data":{self.data_json()}}}'.encode()
            object.__setattr__(self, "wire", wire)
        return wire

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


class MasterLog:
    """
    A job's log as its master keeps it: the records not yet written to its
    own journal or not yet committed, what each replica acknowledged, and
    the commit point.  Older records are trimmed (L{trim}); a replica that
    lags behind them is sent them from the master's journal (C{older}).

    @ivar members: the replica set, the master among them.
    @ivar ballot: the master's ballot for the job.
    @ivar acked: per member, the highest seq it holds durably (the master's
        own, once its journal wrote them).
    @ivar written: the highest seq handed to the master's own journal (see L{unwritten}).
    @ivar base: every record up to this seq was trimmed from memory.
    """

    def __init__(
        self,
        members: Iterable[str],
        me: str,
        ballot: Ballot,
        records: Iterable[Record] = (),
        older: Callable[[int, int], list[Record]] | None = None,
    ) -> None:
        self.members = tuple(members)
        self.me = me
        self.ballot = ballot
        self.records: dict[int, Record] = {record.seq: record for record in records}
        self.tail = max(self.records, default=0)
        self.acked: dict[str, int] = {member: 0 for member in self.members}
        self._sent: dict[str, int] = {member: 0 for member in self.members if member != me}
        self.majority = majority(len(self.members))
        self.written = 0
        self.base = 0
        self._older = older

    @property
    def replicas(self) -> tuple[str, ...]:
        """The members other than the master: whom the records go to."""
        return tuple(member for member in self.members if member != self.me)

    def append(self, kind: str, data: dict[str, Any], raw: str | None = None) -> Record:
        """A new record at the end of the log (C{raw}: C{data} as JSON text, if it was encoded already)."""
        self.tail += 1
        record = Record(self.tail, kind, data, self.ballot, raw)
        self.records[record.seq] = record
        return record

    def unwritten(self) -> list[Record]:
        """The records not handed to the master's own journal yet, in order; they count as written from now."""
        start, self.written = self.written, self.tail
        return [self.records[seq] for seq in range(start + 1, self.tail + 1) if seq in self.records]

    def to_send(self, member: str) -> list[Record]:
        """The records C{member} has not been sent yet, in order; they count as sent from now."""
        start = self._sent.get(member, self.tail)
        if start >= self.tail:
            return []
        self._sent[member] = self.tail
        older: list[Record] = []
        if start < self.base:
            if self._older is None:
                raise ValueError(f"records {start + 1}-{self.base} were trimmed and cannot be read back")
            older = self._older(start + 1, self.base)
        records = self.records
        return older + [records[seq] for seq in range(max(start, self.base) + 1, self.tail + 1) if seq in records]

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

    def trim(self) -> None:
        """
        Forget the records that are committed and written to the master's
        journal (which has them for a replica that needs them again), when
        they can be read back from it.
        """
        if self._older is None:
            return
        upto = min(self.committed, self.written, self.acked[self.me])
        records = self.records
        for seq in range(self.base + 1, upto + 1):
            records.pop(seq, None)
        self.base = max(self.base, upto)


class Outcome(enum.Enum):
    """Where a takeover stands."""

    WAITING = "waiting"
    WON = "won"
    """A majority promised: the proposer leads the job."""
    LOST = "lost"
    """A member had promised a higher ballot: the proposer backs off."""
    FAILED = "failed"
    """Every member answered or failed, short of a majority."""


class Round:
    """
    A successor's round of questions to a job's replica set at C{ballot}:
    who promised higher (C{refused}) and who could not be asked
    (C{unreachable}).  L{Takeover} and L{p2pexec.prevote.PreRound} say
    which answers count as a yes (L{_yes}) and which as a plain no
    (L{_no}); the outcome is judged the same way for both.
    """

    def __init__(self, job: str, members: Iterable[str], ballot: Ballot) -> None:
        self.job = job
        self.members = tuple(members)
        self.ballot = ballot
        self.refused: dict[str, Ballot] = {}
        self.unreachable: set[str] = set()

    def refuse(self, member: str, promised: Ballot) -> None:
        """C{member} had promised C{promised}, higher than the ballot asked about."""
        if member in self.members:
            self.refused[member] = promised

    def fail(self, member: str) -> None:
        """C{member} could not be asked."""
        if member in self.members:
            self.unreachable.add(member)

    def ask_others(self, me: str, peers: PeerTable, ask: Callable[[Any, str], None]) -> None:
        """
        Call C{ask(connection, member)} for every member other than C{me}
        that C{peers} has a connection to; the others could not be asked.
        """
        for member in self.members:
            if member == me:
                continue
            record = peers.get(member)
            if record is None or record.connection is None:
                self.fail(member)
                continue
            ask(record.connection, member)

    def _yes(self) -> int:
        """How many members said yes."""
        raise NotImplementedError

    def _no(self) -> int:
        """How many members said no without naming a higher ballot."""
        return 0

    @property
    def outcome(self) -> Outcome:
        """Won (a majority said yes), lost (one promised higher), failed (all answered, short of a majority), or waiting."""
        if self.refused:
            return Outcome.LOST
        yes = self._yes()
        if yes >= majority(len(self.members)):
            return Outcome.WON
        if yes + self._no() + len(self.unreachable) >= len(self.members):
            return Outcome.FAILED
        return Outcome.WAITING


class Takeover(Round):
    """
    A successor's attempt to lead a job at C{ballot}: the promises of the
    replica set's members, and their records merged.
    """

    def __init__(self, job: str, members: Iterable[str], ballot: Ballot) -> None:
        super().__init__(job, members, ballot)
        self.promised: dict[str, list[Record]] = {}

    def promise(self, member: str, records: Iterable[Record]) -> None:
        """C{member} promised, and holds C{records}."""
        if member in self.members:
            self.promised[member] = list(records)

    def _yes(self) -> int:
        """The members that promised."""
        return len(self.promised)

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


FIRST_RUN = 256
"""How many items L{cut} tries in its first run (the next are sized from the bytes per item it found)."""


def cut(wires: Sequence[Any], limit: int) -> list[tuple[int, str]]:
    """
    C{wires} (JSON-able values) cut into runs whose JSON array stays within
    C{limit} bytes of UTF-8, each run encoded in one call (not one call per
    item): (how many items, their JSON array as text), in order.

    @raise ValueError: if one item alone is over the limit.
    """
    if not wires:
        return [(0, "[]")]
    out: list[tuple[int, str]] = []
    start, guess = 0, FIRST_RUN
    while start < len(wires):
        n = min(guess, len(wires) - start)
        while True:
            text = JSON_ENCODER.encode(wires[start : start + n])
            size = len(text) if text.isascii() else len(text.encode())
            if size <= limit:
                break
            if n == 1:
                raise ValueError(f"one item is {size} bytes, over the {limit}-byte limit")
            n = max(1, min(n - 1, n * limit * 97 // (size * 100)))
        out.append((n, text))
        start += n
        guess = max(1, n * limit * 97 // (max(size, 1) * 100))
    return out


def job_records(
    job_id: str,
    specs: list[TaskSpec],
    members: Iterable[str],
    source: str | None,
    started_at: float,
    limit: int = PART_BYTES,
    priority: int = 0,
) -> list[tuple[dict[str, Any], str]]:
    """
    The data of a job's C{job} records, with its JSON text (each task's wire
    form made and encoded once): one record per part of its tasks (their
    JSON array within C{limit} bytes, to fit an AMP value with the record's
    envelope; C{after} included), the first also naming its replica set,
    source, start and (unless 0) priority.

    @raise ValueError: if one task alone is over the limit.
    """
    wires = [spec.to_wire() for spec in specs]
    parts = cut(wires, limit)
    out = []
    start = 0
    for index, (count, text) in enumerate(parts):
        head: dict[str, Any] = {"part": index, "parts": len(parts)}
        if index == 0:
            head.update(id=job_id, members=list(members), source=source, started_at=started_at, total=len(specs))
            if priority:
                head["priority"] = priority
        data = dict(head, tasks=wires[start : start + count])
        out.append((data, JSON_ENCODER.encode(head)[:-1] + ',"tasks":' + text + "}"))
        start += count
    return out


def encode_window(records: Sequence[Record], limit: int = MAX_VALUE_BYTES) -> list[tuple[list[Record], bytes]]:
    """
    C{records} (seqs without a gap) as JSON arrays of their REPLICATE forms,
    each within C{limit} bytes (one REPLICATE's records), with the records
    each holds: a record encoded already (a job part) alone, as it was
    encoded, the others together, a run in one call.  The same bytes go to
    the master's journal and to every replica.
    """
    out: list[tuple[list[Record], bytes]] = []
    index = 0
    while index < len(records):
        record = records[index]
        if record.raw is not None:
            out.append(([record], f'[{{"seq":{record.seq},"kind":"{record.kind}","data":{record.raw}}}]'.encode()))
            index += 1
            continue
        end = index
        while end < len(records) and records[end].raw is None:
            end += 1
        run = records[index:end]
        start = 0
        for count, text in cut([record.to_wire() for record in run], limit):
            out.append((list(run[start : start + count]), text.encode()))
            start += count
        index = end
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
    attempts: dict[str, int] = attr.Factory(dict)
    """The last attempt of each task that runs again after a C{rerun} record (its next attempt goes on from there)."""
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
    attempts: dict[str, int] = {}
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
        elif record.kind == RERUN:
            again = data.get("tasks")
            if not isinstance(again, dict) or not all(type(n) is int for n in again.values()):
                raise ValidationError(f"record {record.seq}: a rerun needs its 'tasks' and their attempts")
            for task, attempt in again.items():
                results.pop(task, None)
                attempts[task] = attempt
            cancelled = ended = False
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
        attempts={task: attempt for task, attempt in attempts.items() if task in ids and task not in results},
        priority=head["priority"] if type(head.get("priority")) is int else 0,
    )


def log_ended(records: Iterable[Record]) -> bool:
    """Whether a job's log says it ended: an C{end} record not followed by a C{rerun} one."""
    last = max((r.seq for r in records if r.kind == END or r.kind == RERUN), default=None)
    return last is not None and any(r.seq == last and r.kind == END for r in records)
