"""
What one node holds of a job's replicated log, without I/O.

A replica stores each REPLICATE it takes as one L{Batch}: the records' JSON
as received, with the ballot and the seqs the envelope names, written to its
journal without being decoded.  In memory it keeps only the job's promised
and accepted ballots and how far it holds the log (L{ReplicaStore}); the
records are decoded from the batches (L{decode}) only when they are needed:
to answer a PROMISE, to take the job over, to show it to a client, or at a
restart.

Later batches replace earlier ones at the same seq, unless the earlier was
accepted under a higher ballot (which a replica never lets happen: it takes
no batch of a ballot lower than one it promised).  A malformed record found
when decoding ends the log before it: whatever the replica acknowledged from
there on it does not hold after all (see L{decode}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attr

from p2pexec.model import ValidationError, loads_strict
from p2pexec.replicas import Ballot
from p2pexec.replication import END, MAX_RECORDS, RERUN, Record, StaleBallot

END_HINT = b'"end"'
RERUN_HINT = b'"rerun"'
"""Bytes every batch holding an C{end} record contains: only such a batch is decoded as it arrives."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Batch:
    """
    Records of a job's log as one REPLICATE carried them: seqs C{first_seq}
    to C{last_seq}, accepted under C{ballot}, C{raw} being their JSON array
    (C{{"seq", "kind", "data"}} objects) as received.
    """

    ballot: Ballot
    first_seq: int
    last_seq: int
    raw: bytes = attr.ib(repr=False)

    @classmethod
    def of(cls, ballot: Ballot, records: Sequence[Record]) -> Batch:
        """A batch of C{records} (seqs without a gap), encoded as the wire's, accepted under C{ballot}."""
        raw = b"[" + b",".join(record.encode_wire() for record in records) + b"]"
        return cls(ballot, records[0].seq, records[-1].seq, raw)

    @classmethod
    def check(cls, ballot: Ballot, first_seq: int, last_seq: int, raw: bytes) -> Batch:
        """
        A batch from a REPLICATE's envelope (the records themselves unread).

        @raise ValidationError: if the seqs are out of range.
        """
        if first_seq < 1:
            raise ValidationError("'first_seq' must be 1 or more")
        if not first_seq - 1 <= last_seq <= MAX_RECORDS:
            raise ValidationError(f"'last_seq' must be from first_seq - 1 ({first_seq - 1}) to {MAX_RECORDS}")
        return cls(ballot, first_seq, last_seq, raw)


def runs(records: Iterable[Record]) -> list[list[Record]]:
    """C{records} (in seq order) cut where a seq is missing: each run can be one L{Batch}."""
    out: list[list[Record]] = []
    for record in records:
        if out and out[-1][-1].seq + 1 == record.seq:
            out[-1].append(record)
        else:
            out.append([record])
    return out


class ReplicaStore:
    """
    What one node knows of a job's log it is a member of, in memory: the
    highest ballot it promised, the one it last accepted records under, and
    how far it holds the log (the records are in its journal).

    @ivar version: how many batches it took (a decoded log is current while
        this stays the same).
    @ivar ended: whether an C{end} record is known to be held.
    @ivar members: the job's replica set, once a decoded log told it.
    """

    def __init__(
        self,
        job: str,
        promised: Ballot | None = None,
        accepted: Ballot | None = None,
        batches: Iterable[Batch] = (),
    ) -> None:
        self.job = job
        self.promised = promised
        self.accepted = accepted
        self.version = 0
        self.ended = False
        self.members: tuple[str, ...] | None = None
        self._held = 0
        self._ahead: list[tuple[int, int]] = []
        for batch in batches:
            self._cover(batch.first_seq, batch.last_seq)

    @property
    def held(self) -> int:
        """The highest seq up to which every record is held."""
        return self._held

    def _cover(self, first: int, last: int) -> None:
        self.version += 1
        if last < first:
            return
        self._ahead.append((first, last))
        moved = True
        while moved:
            moved = False
            for run in list(self._ahead):
                if run[0] <= self._held + 1:
                    self._held = max(self._held, run[1])
                    self._ahead.remove(run)
                    moved = True

    def replicate(self, ballot: Ballot, first_seq: int, last_seq: int) -> bool:
        """
        Take the records C{first_seq} to C{last_seq} sent under C{ballot},
        unless a higher ballot was promised.

        @return: whether the promised or accepted ballot changed (to be written to the journal).
        @raise StaleBallot: if a higher ballot was promised.
        """
        if self.promised is not None and ballot < self.promised:
            raise StaleBallot(self.promised)
        changed = self.promised != ballot or self.accepted != ballot
        self.promised = ballot
        self.accepted = ballot
        self._cover(first_seq, last_seq)
        return changed

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

    def truncate(self, seq: int) -> None:
        """The record at C{seq} turned out malformed: the log is held only up to the one before."""
        self._held = min(self._held, seq - 1)
        self._ahead = [(first, min(last, seq - 1)) for first, last in self._ahead if first < seq]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class DecodedLog:
    """
    A job's log decoded from its batches: the records in seq order, ending
    before the first malformed one (C{bad_seq}, with what is wrong in
    C{problem}) when there is one.
    """

    records: list[Record]
    bad_seq: int | None = None
    problem: str | None = None


def decode(batches: Iterable[Batch]) -> DecodedLog:
    """
    The records C{batches} hold, in the order they were taken: a later
    batch's record replaces an earlier one at the same seq unless that was
    accepted under a higher ballot.  A batch that is not a JSON array of as
    many well-formed records as its envelope names makes its seqs from the
    first bad one on malformed, until a later batch holds them well formed;
    the log ends before the first seq still malformed.
    """
    held: dict[int, Record] = {}
    bad: dict[int, str] = {}

    def spoil(first: int, last: int, problem: str) -> None:
        for seq in range(first, last + 1):
            held.pop(seq, None)
            bad[seq] = problem

    for batch in batches:
        first, last = batch.first_seq, batch.last_seq
        try:
            wire = loads_strict(batch.raw)
        except ValueError as e:
            spoil(first, last, f"the batch of records {first}-{last} is not JSON ({e})")
            continue
        if not isinstance(wire, list) or len(wire) != last - first + 1:
            spoil(first, last, f"the batch of records {first}-{last} is not an array of {last - first + 1} records")
            continue
        for index, entry in enumerate(wire):
            seq = first + index
            try:
                record = Record.from_wire(entry, batch.ballot)
                if record.seq != seq:
                    raise ValidationError(f"record {record.seq} is where record {seq} should be")
            except ValidationError as e:
                spoil(seq, last, f"record {seq} is malformed ({e})")
                break
            known = held.get(seq)
            if known is None or known.ballot <= record.ballot:
                held[seq] = record
                bad.pop(seq, None)
    if not bad:
        return DecodedLog([held[seq] for seq in sorted(held)])
    end = min(bad)
    return DecodedLog([held[seq] for seq in sorted(held) if seq < end], end, bad[end])


def ends(batch: Batch) -> bool:
    """Whether C{batch} holds a well-formed C{end} record (decoded only if its bytes could hold one)."""
    if END_HINT not in batch.raw:
        return False
    log = decode([batch])
    return any(record.kind == END for record in log.records)


def count_records(raw: bytes, first_seq: int, ballot: Ballot) -> int:
    """
    How many records a REPLICATE without C{last_seq} carries (decoding them).

    @raise ValidationError: if they are not well-formed records with seqs from C{first_seq} without a gap.
    """
    try:
        wire = loads_strict(raw)
    except ValueError as e:
        raise ValidationError(f"'records' is not JSON ({e})") from None
    if not isinstance(wire, list):
        raise ValidationError("'records' must be a list")
    for index, entry in enumerate(wire):
        if Record.from_wire(entry, ballot).seq != first_seq + index:
            raise ValidationError("the records' seqs must run on from 'first_seq' without a gap")
    return len(wire)


def ended_after(ended: bool, batch: Batch) -> bool:
    """
    Whether a job's log says it ended once C{batch} is added to a log that
    said C{ended}: an C{end} record ends it, a later C{rerun} record reopens
    it (the batch is decoded only if its bytes could hold either).
    """
    if END_HINT not in batch.raw and RERUN_HINT not in batch.raw:
        return ended
    marks = [record.kind for record in decode([batch]).records if record.kind in (END, RERUN)]
    return ended if not marks else marks[-1] == END
