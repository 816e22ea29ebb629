"""
Backup copies near the end of a job (issue 15, no slow-node tail).

When a kind has no pending task left and a capable worker has a slot that
holds nothing of this master, the task of that kind that is expected to
finish last is run a second time on that idle worker, if the copy running
now is expected to need well over (L{SLACK} times, and L{MIN_GAIN} more than)
what the idle worker takes for such a task.  Expected times are the workers'
paces (L{p2pexec.pacing}): the running copy needs its worker's usual time for
the kind less what it has run.  So only a copy on a worker known to be slow
for the kind is backed up; a worker that has not finished such a task yet,
or a copy running past its worker's usual time, is not judged (a dead worker
is found by failure detection, and its tasks run again).  The first result
wins; the other copy is cancelled (CANCEL_ATTEMPTS) and its late result, if
one still comes, is dropped as stale: each task keeps exactly one result.

Bounded: at most one backup per task in a job's life, only on idle slots,
never for a task with C{speculative = false}, never for a task pinned to one
node (C{node}, issue 14: a backup would run elsewhere), and never for an
instruction (a task without a command, which ends at once).

How the two copies are kept: the task's record follows the newest attempt
(the backup: its attempt number, its worker, the seat it holds, the journal),
and L{Speculation.copies} keeps the other one, whose seat it holds itself.
When the other copy's result comes first (L{Speculation.claim}), the two swap:
the record takes that worker, and the result the record's attempt number, so
that attempt numbers only grow and the task machine applies the result as
usual.  Whichever copy lost is then retired (L{Speculation.settle}): its seat
freed, its worker told to stop it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING

import attr

from p2pexec.job import Job, TaskRecord
from p2pexec.log import NodeLogger
from p2pexec.model import RETURNED, Assignment, TaskResult, TaskSpec
from p2pexec.resource_use import Room
from p2pexec.resources import Request
from p2pexec.seats import WorkerSeat
from p2pexec.task_states import TaskOutput, TaskState

if TYPE_CHECKING:
    from p2pexec.master import Master

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

SLACK = 1.5
"""A backup runs only if the copy running now is expected to need more than this many times what the backup takes."""

MIN_GAIN = 0.25
"""Nor unless it is expected to end at least this many seconds sooner: a backup costs a start and two messages."""

Key = tuple[str, str]
"""(job id, task id)."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Copy:
    """
    The other copy of a task that runs twice: the worker it runs on and its
    attempt number there; the task and its job's priority, to free the seat
    it holds (its slot, its resources, its level) even once the job is forgotten.
    """

    worker: str
    attempt: int
    spec: TaskSpec
    priority: int = 0


class Speculation:
    """
    One master's backup copies.

    @ivar copies: the other running copy of each task that runs twice.
    @ivar launched: how many backups were started in all.
    @ivar won: how many backups finished first.
    """

    def __init__(self, master: Master) -> None:
        self._master = master
        self.copies: dict[Key, Copy] = {}
        self._sent: dict[str, dict[str, float]] = {}
        """Per job, when each task that may get a backup last went out (the monotonic clock)."""
        self._backed_up: set[Key] = set()
        self.last_result: dict[str, float] = {}
        """When each worker last reported results: a task queued there started no earlier."""
        self.launched = 0
        self.won = 0

    def dispatched(
        self,
        sends: list[tuple[str, str, list[Assignment]]],
        pending: Mapping[str, Sized],
        seats: Mapping[str, WorkerSeat],
        now: float,
    ) -> list[tuple[str, str, list[Assignment]]]:
        """After a dispatch round made C{sends}: note them (L{note_sent}), and start the backups due (L{backups})."""
        for _, job_id, assignments in sends:
            self.note_sent(job_id, assignments, now)
        return self.backups(pending, seats, now)

    def note_sent(self, job_id: str, assignments: list[Assignment], now: float) -> None:
        """These attempts of C{job_id} go out now: remember when, for those that may get a backup."""
        sent = None
        for assignment in assignments:
            task = assignment.task
            if task.command is not None and task.speculative and task.node is None:
                if sent is None:
                    sent = self._sent.setdefault(job_id, {})
                sent[task.id] = now

    # -- starting backups ----------------------------------------------------------

    def backups(
        self, pending: Mapping[str, Sized], seats: Mapping[str, WorkerSeat], now: float
    ) -> list[tuple[str, str, list[Assignment]]]:
        """
        Start backup copies on idle slots (see the module's docstring), of
        tasks that fit in what the idle worker has free (L{Room.fits}).

        @param pending: the tasks queued of each kind (a backup is for a kind with none).

        @return: the sends, as the dispatcher makes them: (worker, job, assignments).
        """
        if self.copies:
            self._sweep()
        if not self._sent:
            return []
        idle = [
            seat
            for seat in seats.values()
            if seat.accepting and seat.idle > 0 and any(not pending.get(kind) for kind in seat.pace.by_kind)
        ]
        if not idle:
            return []
        candidates = self._candidates(seats, now)
        sends: list[tuple[str, str, list[Assignment]]] = []
        for seat in sorted(idle, key=lambda s: s.pace.mean or 0.0):
            free = seat.idle
            for started, usual, job, record in candidates:
                if not free:
                    break
                kind = record.spec.kind
                expected = seat.pace.expected(kind)
                if (
                    expected is None
                    or usual is None
                    or pending.get(kind)
                    or kind not in seat.info.capabilities
                    or record.worker == seat.info.name
                    or (job.id, record.spec.id) in self._backed_up
                    or not _fits(seat, record.spec.request)
                ):
                    continue
                remaining = usual - (now - started)
                if remaining <= max(SLACK * expected, expected + MIN_GAIN):
                    continue
                sends.append((seat.info.name, job.id, [self._launch(job, record, seat, now, remaining)]))
                free -= 1
        return sends

    def _candidates(
        self, seats: Mapping[str, WorkerSeat], now: float
    ) -> list[tuple[float, float | None, Job, TaskRecord]]:
        """
        The running tasks that may get a backup, as (when it went out, its
        worker's usual time for its kind if known, job, record), the one
        expected to end last first.  Forgets the tasks that ended.
        """
        jobs = self._master.jobs
        found: list[tuple[float, float | None, Job, TaskRecord]] = []
        for job_id in list(self._sent):
            job = jobs.get(job_id)
            sent = self._sent[job_id]
            if job is None or job.finished is not None or job.cancelled:
                del self._sent[job_id]
                continue
            for task_id in list(sent):
                record = job.tasks[task_id]
                if record.state is TaskState.DONE or (job_id, task_id) in self._backed_up:
                    del sent[task_id]
                elif record.state is TaskState.ASSIGNED:
                    worker = record.worker or ""
                    seat = seats.get(worker)
                    usual = None if seat is None else seat.pace.expected(record.spec.kind)
                    # It may have waited in the worker's queue: it started once a result freed a slot, at the latest.
                    started = max(sent[task_id], self.last_result.get(worker, 0.0))
                    found.append((started, usual, job, record))
            if not sent:
                del self._sent[job_id]
        # The one expected to end last first (those of a worker with no usual time are never backed up).
        found.sort(key=lambda entry: entry[0] - (entry[1] or 0.0))
        return found

    def _launch(self, job: Job, record: TaskRecord, seat: WorkerSeat, now: float, remaining: float) -> Assignment:
        """Start a backup of C{record}'s task on C{seat}'s worker: the record takes the new attempt, L{copies} the old."""
        key = (job.id, record.spec.id)
        assert record.worker is not None
        old = Copy(record.worker, record.attempt, record.spec, job.priority)
        assignment = job.start_attempt(record, seat.info.name)
        # The record's seat is now the backup's worker's; the old copy keeps its own (released in settle).
        self._master._perform(job, record, (TaskOutput.HOLD_SEAT, TaskOutput.JOURNAL))
        self.copies[key] = old
        self._backed_up.add(key)
        self.launched += 1
        log.info(
            "Node {name} runs a backup copy of task {task} of job {job} on {backup} (attempt {attempt}): "
            "its copy on {worker} is expected to need {remaining:.2f}s more, {backup} takes {expected:.2f}s",
            name=self._master.me.name,
            task=record.spec.id,
            job=job.id,
            backup=seat.info.name,
            attempt=record.attempt,
            worker=old.worker,
            remaining=remaining,
            expected=seat.pace.expected(record.spec.kind) or 0.0,
        )
        return assignment

    # -- results ---------------------------------------------------------------------

    def claim(self, job: Job, record: TaskRecord, result: TaskResult, sender: str) -> TaskResult:
        """
        A result of a task that runs twice: if it is the other copy's (the
        one in L{copies}), and the task is still waiting for a result, that
        copy becomes the record's (the two swap) and the result is returned
        under the record's attempt number, to be applied as usual.  Any other
        result is returned as it is.
        """
        key = (job.id, record.spec.id)
        copy = self.copies[key]
        if sender != copy.worker or result.attempt != copy.attempt or result.status == RETURNED:
            return result
        if record.state is TaskState.ASSIGNED:
            assert record.worker is not None
            self.copies[key] = attr.evolve(copy, worker=record.worker, attempt=record.attempt)
        elif record.state in (TaskState.PENDING, TaskState.IN_DOUBT):
            # The record's own attempt was lost meanwhile: this copy is the only one, and its seat is freed here.
            del self.copies[key]
            self._release(copy)
        else:
            return result
        record.worker = copy.worker
        self.won += 1
        return attr.evolve(result, attempt=record.attempt)

    def settle(self, job: Job, record: TaskRecord) -> None:
        """After a result of a task that runs twice: once the task has its result (or waits for a retry), stop the other copy."""
        if record.state is TaskState.DONE or record.state is TaskState.RETRY_WAIT:
            self._retire(job, (job.id, record.spec.id), record.worker)

    def _retire(self, job: Job | None, key: Key, winner: str | None) -> None:
        copy = self.copies.pop(key)
        self._release(copy)
        if job is None or job.cancelled:
            return  # the job's cancel stops every copy
        self._master._link.send_cancel_attempts(copy.worker, job.id, [(key[1], copy.attempt)])
        log.info(
            "Node {name} stops the other copy of task {task} of job {job} on {worker} (attempt {attempt}): "
            "the copy on {winner} ended first",
            name=self._master.me.name,
            task=key[1],
            job=job.id,
            worker=copy.worker,
            attempt=copy.attempt,
            winner=winner,
        )

    def _release(self, copy: Copy) -> None:
        self._master.seat_change(copy.worker, copy.priority, copy.spec, -1)

    def _sweep(self) -> None:
        """Retire the copies of tasks that ended some other way (cancelled, quarantined, a job forgotten)."""
        jobs = self._master.jobs
        for key in list(self.copies):
            job = jobs.get(key[0])
            if job is None or job.tasks[key[1]].state is TaskState.DONE:
                self._retire(job, key, None if job is None else job.tasks[key[1]].worker)

    def worker_lost(self, name: str) -> None:
        """C{name} is gone, and its seat with it: forget the copies it ran."""
        self.last_result.pop(name, None)
        for key, copy in list(self.copies.items()):
            if copy.worker == name:
                del self.copies[key]


def _fits(seat: WorkerSeat, request: Request | None) -> bool:
    """Whether a task asking for C{request} fits on C{seat}'s worker now, besides the slot (see L{p2pexec.resources})."""
    if request is None:
        return True
    room = Room.of(seat.info.resources, seat.used)
    return room is not None and room.fits(request)
