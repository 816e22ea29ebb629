"""
One job's book-keeping on its master: every task's state, attempt and result.

Pure state, no I/O and no clock of its own: times are passed in.  A task's
state is one L{TaskState} on its record, stepped by the task machine
(L{p2pexec.task_states.TASK}) in L{Job.fire}, which performs the outputs
that change the job's own book-keeping (counting results, failures and
stale results) and hands the rest back to the caller (the master: seats,
journal, queue, timers).  Two kinds
of time: C{started}/C{finished} are readings of the node's monotonic clock
(the reactor's, see L{p2pexec.clock}), from which every duration is
computed; C{started_at}/C{finished_at} are wall-clock moments, shown to people
and kept in the journal, never subtracted from each other.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable
from typing import Any

import attr

from p2pexec.model import CANCELLED, FAILED, RETURNED, SKIPPED, Assignment, TaskResult, TaskSpec
from p2pexec.task_states import JOURNAL_NAMES, TASK, TaskEvent, TaskOutput, TaskState

__all__ = ["DEFAULT_MAX_LOSSES", "Job", "TaskRecord", "TaskState", "Verdict", "verdict_of"]

DEFAULT_MAX_LOSSES = 3
"""How many times a task may lose its worker before it is quarantined as failed."""


class Verdict(enum.Enum):
    """What the master made of one reported result."""

    APPLIED = "applied"
    STALE = "stale"
    """For an attempt that was superseded, or a task already done."""
    UNKNOWN = "unknown"
    """For a task id the job does not have."""
    RETURNED = "returned"
    """The worker handed the task back unrun; it is pending again."""
    RETRY = "retry"
    """The attempt failed and the task has retries left: it waits to run again."""


@attr.s(auto_attribs=True, slots=True)
class TaskRecord:
    """
    One task of a job.

    @ivar spec: the task.
    @ivar state: see L{TaskState} (stepped by L{Job.fire} only).
    @ivar attempt: the number of the latest attempt (0 before the first).
    @ivar worker: the node given the latest attempt (kept when the task is
        put back, so that its late result can still be recognised).
    @ivar result: the result that finished it (or, while it waits for a
        retry, the failed attempt's result).
    @ivar failures: failed attempts so far that were retried.
    @ivar losses: attempts lost with their worker so far.
    """

    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    worker: str | None = None
    result: TaskResult | None = None
    failures: int = 0
    losses: int = 0

    @property
    def state_name(self) -> str:
        """The state's name, as the journal stores it (see L{JOURNAL_NAMES})."""
        return JOURNAL_NAMES[self.state]


class Job:
    """
    A batch of tasks accepted by this node as master.

    @ivar id: the job id, unique on this master.
    @ivar started: when it was accepted, by the monotonic clock.
    @ivar finished: when its last task finished, by the monotonic clock, or
        C{None}.
    @ivar started_at: when it was accepted, by the wall clock (seconds since
        the epoch), for people and the journal.
    @ivar finished_at: when it ended, by the wall clock, or C{None} (see
        L{finished_at}).
    @ivar participants: every node that was given one of its tasks.
    @ivar source: what the job came from (a digest of its job file), so that
        a master restarted with the same job resumes it instead of starting
        it again; C{None} if unknown.
    @ivar cancelled: whether it was cancelled.
    @ivar max_losses: how many times a task may lose its worker before it
        is quarantined as failed.
    """

    def __init__(
        self,
        job_id: str,
        tasks: Iterable[TaskSpec],
        started: float,
        source: str | None = None,
        max_losses: int = DEFAULT_MAX_LOSSES,
        started_at: float | None = None,
    ) -> None:
        """
        @param started: the monotonic clock's reading when it was accepted.
        @param started_at: the wall clock's; by default C{started} (for
            tests whose one clock is a L{twisted.internet.task.Clock}).
        """
        self.id = job_id
        self.tasks: dict[str, TaskRecord] = {}
        for spec in tasks:
            if spec.id in self.tasks:
                raise ValueError(f"job {job_id}: task id {spec.id!r} appears twice")
            self.tasks[spec.id] = TaskRecord(spec=spec)
        self.started = started
        self.started_at = started if started_at is None else started_at
        self.source = source
        self.max_losses = max_losses
        self.finished: float | None = None
        self._finished_at: float | None = None
        self.cancelled = False
        self.participants: set[str] = set()
        self.succeeded = 0
        self.failed = 0
        self.stale = 0
        # -- order (issue 15) --
        self.skipped = 0
        """Tasks that never ran: a task they run after did not succeed (see L{p2pexec.dependencies})."""
        self.priority = 0
        """Higher runs first (see L{p2pexec.fairshare})."""

    @classmethod
    def restore(
        cls,
        job_id: str,
        records: Iterable[TaskRecord],
        started: float,
        source: str | None = None,
        max_losses: int = DEFAULT_MAX_LOSSES,
        started_at: float | None = None,
    ) -> Job:
        """
        A job rebuilt from its journal records (L{TaskRecord}s, in job order).

        @param started: a monotonic reading standing for its start in this
            process (see L{Master.resume<p2pexec.master.Master.resume>}).
        @param started_at: the wall-clock moment of its start, as journaled.
        """
        job = cls(job_id, (), started, source, max_losses, started_at)
        for record in records:
            job.tasks[record.spec.id] = record
            if record.worker is not None:
                job.participants.add(record.worker)
            if record.state is TaskState.DONE and record.result is not None:
                if record.result.succeeded:
                    job.succeeded += 1
                elif record.result.status == SKIPPED:
                    job.skipped += 1
                else:
                    job.failed += 1
        return job

    @property
    def finished_at(self) -> float | None:
        """
        When it ended, by the wall clock, or C{None} while it runs: the
        moment its master read on the wall clock as it ended, or, until
        then, its wall-clock start plus its monotonic duration.
        """
        if self.finished is None:
            return None
        if self._finished_at is not None:
            return self._finished_at
        return self.started_at + self.elapsed(self.finished)

    def stamp_end(self, moment: float) -> None:
        """Record C{moment}, read on the wall clock, as when it ended, if it has ended and has no such moment yet."""
        if self.finished is not None and self._finished_at is None:
            self._finished_at = moment

    @property
    def done(self) -> bool:
        """Whether every task has a result."""
        return self.succeeded + self.failed + self.skipped == len(self.tasks)

    # -- the task machine ----------------------------------------------------

    def fire(
        self, record: TaskRecord, event: TaskEvent, now: float, result: TaskResult | None = None
    ) -> tuple[TaskOutput, ...]:
        """
        Step C{record}'s task machine with C{event}, perform the outputs
        that change this job's book-keeping, and return every output: the
        caller performs the others (seats, journal, queue, timers, logs).

        @param result: the result the event brings (a worker's, a
            quarantine's, a cancellation's): it becomes the task's result on
            L{TaskOutput.COUNT_RESULT}, or the failed attempt's on
            L{TaskOutput.START_RETRY_TIMER}.
        """
        record.state, outputs = _step(record.state, event)
        for output in outputs:
            if output is _COUNT_RESULT:
                if result is not None:
                    record.result = result
                assert record.result is not None
                if record.result.succeeded:
                    self.succeeded += 1
                elif record.result.status == SKIPPED:
                    self.skipped += 1
                else:
                    self.failed += 1
                if self.done:
                    self.finished = now
            elif output is _COUNT_STALE:
                self.stale += 1
            elif output is _START_RETRY_TIMER:
                record.failures += 1
                record.result = result
        return outputs

    def result_event(self, record: TaskRecord, result: TaskResult, sender: str | None) -> TaskEvent:
        """
        What a result reported by C{sender} is to the task machine (the
        guards): stale if it is not for the latest attempt, not from the node
        that attempt was given to, or the failed attempt already waiting for
        its retry; a hand-back; a failure with retries left; or a result.  A
        result counts even if the task was put back in the queue meanwhile
        (its worker's connection dropped, but the result got through).
        """
        if result.attempt != record.attempt or (sender is not None and sender != record.worker):
            return TaskEvent.RESULT_STALE
        if result.status == RETURNED:
            return TaskEvent.RESULT_RETURNED
        if record.result is not None and record.result.attempt == result.attempt:
            # The failed attempt waiting for (or past) its retry, reported again.
            return TaskEvent.RESULT_STALE
        if not result.succeeded and record.failures < record.spec.retries:
            return TaskEvent.RESULT_RETRY
        return TaskEvent.RESULT

    def start_attempt(self, record: TaskRecord, worker: str) -> Assignment:
        """A new attempt of a task just dispatched (L{TaskEvent.DISPATCH}) to C{worker}."""
        record.attempt += 1
        record.worker = worker
        self.participants.add(worker)
        return Assignment(task=record.spec, attempt=record.attempt, priority=self.priority)

    # -- as events ------------------------------------------------------------

    def assign(self, task_id: str, worker: str) -> Assignment:
        """Start a new attempt of a pending task on C{worker} (the master's outputs are not performed)."""
        record = self.tasks[task_id]
        assert record.state is TaskState.PENDING, (task_id, record.state)
        self.fire(record, TaskEvent.DISPATCH, 0.0)
        return self.start_attempt(record, worker)

    def is_pending(self, task_id: str) -> bool:
        """Whether C{task_id} waits for a worker."""
        return self.tasks[task_id].state is TaskState.PENDING

    # -- resources (issue 15) --
    @functools.cached_property
    def asks_resources(self) -> bool:
        """
        Whether any of its tasks asks for CPUs, memory, GPUs or named
        resources (see L{p2pexec.resources}); while no job does, the master
        schedules by slots alone.  Worked out on first use, once every task
        is in (after L{restore} too): its tasks never change after that.
        """
        return any(record.spec.request is not None for record in self.tasks.values())

    def apply(self, result: TaskResult, now: float, sender: str | None = None) -> Verdict:
        """
        Record a result reported by C{sender} for one attempt (see
        L{result_event}); the master's outputs are not performed.
        """
        record = self.tasks.get(result.task_id)
        if record is None:
            return Verdict.UNKNOWN
        return verdict_of(self.fire(record, self.result_event(record, result, sender), now, result))

    def take_back(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        perform: Callable[[TaskRecord, tuple[TaskOutput, ...]], None] | None = None,
    ) -> bool:
        """
        Put one task back in the queue if its latest attempt is the one
        C{worker} was given (it refused it, or it did not go out).

        @param perform: called with the record and the outputs, if the
            event was fired.
        @return: whether the task is pending again.
        """
        record = self.tasks.get(task_id)
        if record is None or record.attempt != attempt or record.worker != worker:
            return False
        outputs = self.fire(record, TaskEvent.TAKEN_BACK, 0.0)
        if perform is not None and outputs:
            perform(record, outputs)
        return bool(outputs)

    def put_back(
        self,
        worker: str,
        now: float,
        attempts: Iterable[tuple[str, int]] | None = None,
        count_loss: bool = True,
        perform: Callable[[TaskRecord, tuple[TaskOutput, ...]], None] | None = None,
    ) -> tuple[list[str], list[str]]:
        """
        Take back every task assigned to C{worker} and not confirmed (or just
        the given (task id, attempt) pairs among them, each only while that
        is still its latest attempt): its worker was lost.  A task that has
        now lost its worker L{max_losses} times is quarantined: it is done,
        as failed, and is not run again (it may be what kills its workers).

        @param count_loss: whether this counts towards quarantine; not when
            the master itself restarted and the worker no longer had it.
        @param perform: called with each record taken back and its outputs.
        @return: (the ids to queue again, the ids quarantined), in job order.
        """
        requeue: list[str] = []
        quarantined: list[str] = []
        wanted = None if attempts is None else dict(attempts)
        for task_id, record in self.tasks.items():
            if record.state not in _OUT or record.worker != worker:
                continue
            if wanted is not None and wanted.get(task_id) != record.attempt:
                continue
            if count_loss:
                record.losses += 1
            if record.losses >= self.max_losses:
                quarantine = TaskResult(
                    task_id=task_id,
                    attempt=record.attempt,
                    status=FAILED,
                    node=worker,
                    error=(f"quarantined: lost its worker {record.losses} times (last: {worker}); not run again"),
                )
                outputs = self.fire(record, TaskEvent.LOST_FOR_GOOD, now, quarantine)
                quarantined.append(task_id)
            else:
                outputs = self.fire(record, TaskEvent.LOST, now)
                requeue.append(task_id)
            if perform is not None:
                perform(record, outputs)
        return requeue, quarantined

    def stale_reason(self, result: TaskResult, sender: str | None) -> str:
        """Why L{apply} found C{result} stale, in words, for the log."""
        record = self.tasks.get(result.task_id)
        if record is None:
            return "the job has no such task"
        if self.cancelled:
            return "the job was cancelled"
        if record.state is TaskState.DONE:
            return "the task already has its result"
        if result.attempt > record.attempt or result.attempt < 1:
            given = f"the latest is attempt {record.attempt}" if record.attempt else "the task was never given out"
            return f"attempt {result.attempt} of it was never given ({given})"
        if result.attempt != record.attempt:
            return f"attempt {result.attempt} was superseded by attempt {record.attempt}"
        if sender is not None and sender != record.worker:
            return f"that attempt was given to {record.worker}, not {sender}"
        return "that attempt's result was already received"

    def cancel(
        self,
        now: float,
        master: str,
        why: str,
        perform: Callable[[TaskRecord, tuple[TaskOutput, ...]], None] | None = None,
    ) -> list[TaskRecord]:
        """
        Cancel every task without a result: each is done, as C{cancelled},
        its node the worker of its latest attempt (or C{master} if it never
        went out), its error C{job cancelled (WHY)}.

        @param perform: called with each record cancelled and its outputs.
        @return: the records that were assigned to a worker (whose processes
            must be stopped).
        """
        running = []
        for task_id, record in self.tasks.items():
            if record.state is TaskState.DONE:
                continue
            if record.state in _OUT:
                running.append(record)
            cancelled = TaskResult(
                task_id=task_id,
                attempt=record.attempt,
                status=CANCELLED,
                node=record.worker or master,
                error=f"job cancelled ({why})",
            )
            outputs = self.fire(record, TaskEvent.CANCEL, now, cancelled)
            if perform is not None:
                perform(record, outputs)
        self.cancelled = True
        self.finished = now
        return running

    def rerun(
        self,
        task_ids: Iterable[str],
        perform: Callable[[TaskRecord, tuple[TaskOutput, ...]], None] | None = None,
    ) -> list[str]:
        """
        Run again the finished tasks among C{task_ids} (L{TaskEvent.RERUN}),
        as new attempts: their results no longer count, their retries and
        losses start again from none, and their attempt numbers go on.  The
        job is open again (not finished, not cancelled).  A late result of
        an earlier attempt is stale: the task's worker is forgotten.

        @param perform: called with each record and the outputs the master performs.
        @return: the ids that run again, in job order.
        """
        wanted = set(task_ids)
        again = []
        for task_id, record in self.tasks.items():
            if task_id not in wanted or record.state is not TaskState.DONE:
                continue
            record.state, outputs = _step(record.state, TaskEvent.RERUN)
            for output in outputs:
                if output is TaskOutput.UNCOUNT_RESULT and record.result is not None:
                    if record.result.succeeded:
                        self.succeeded -= 1
                    elif record.result.status == SKIPPED:
                        self.skipped -= 1
                    else:
                        self.failed -= 1
                    record.result = None
                    record.failures = record.losses = 0
                    record.worker = None
            again.append(task_id)
            if perform is not None:
                perform(record, outputs)
        if again:
            self.finished = None
            self._finished_at = None
            self.cancelled = False
        return again

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state, by the names the journal stores (pending, assigned, done)."""
        counts = {"pending": 0, "assigned": 0, "done": 0}
        for record in self.tasks.values():
            counts[JOURNAL_NAMES[record.state]] += 1
        return counts

    def elapsed(self, now: float) -> float:
        """
        Seconds since the job started, up to its end if it has ended, by the
        monotonic clock (C{now} is its reading); never negative.
        """
        return max(0.0, (self.finished if self.finished is not None else now) - self.started)

    def report(self, now: float) -> dict[str, Any]:
        """The job and every task's outcome, as written to C{--results}."""
        tasks = []
        for record in self.tasks.values():
            entry: dict[str, Any] = {
                "id": record.spec.id,
                "kind": record.spec.kind,
                "state": JOURNAL_NAMES[record.state],
                "attempts": record.attempt,
            }
            if record.failures:
                entry["retried"] = record.failures
            if record.losses:
                entry["lost_workers"] = record.losses
            if record.result is not None:
                result = record.result.to_wire()
                result.pop("id", None)
                result.pop("attempt", None)
                entry.update(result)
            tasks.append(entry)
        return {
            "job": self.id,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "total": len(self.tasks),
            "elapsed": round(self.elapsed(now), 6),
            "cancelled": self.cancelled,
            "stale_results_dropped": self.stale,
            "tasks": tasks,
        }


_step = TASK.step
_COUNT_RESULT = TaskOutput.COUNT_RESULT
_COUNT_STALE = TaskOutput.COUNT_STALE
_START_RETRY_TIMER = TaskOutput.START_RETRY_TIMER
_OUT = frozenset({TaskState.ASSIGNED, TaskState.IN_DOUBT})
"""The states of a task whose latest attempt is (or may be) out on its worker."""


def _verdicts() -> dict[tuple[TaskOutput, ...], Verdict]:
    """What the master made of a result, by the outputs of the row the result took (each is distinct)."""
    verdicts: dict[tuple[TaskOutput, ...], Verdict] = {}
    results = (TaskEvent.RESULT, TaskEvent.RESULT_RETRY, TaskEvent.RESULT_RETURNED, TaskEvent.RESULT_STALE)
    for state in TaskState:
        for event in results:
            if not TASK.allows(state, event):
                continue
            _, outputs = TASK.step(state, event)
            if TaskOutput.COUNT_RESULT in outputs:
                verdict = Verdict.APPLIED
            elif TaskOutput.START_RETRY_TIMER in outputs:
                verdict = Verdict.RETRY
            elif TaskOutput.ENQUEUE in outputs:
                verdict = Verdict.RETURNED
            else:
                verdict = Verdict.STALE
            assert verdicts.setdefault(outputs, verdict) is verdict, outputs
    return verdicts


_VERDICTS = _verdicts()


def verdict_of(outputs: tuple[TaskOutput, ...]) -> Verdict:
    """
    The verdict on a result, from the outputs of the task machine's row it
    took: applied (counted as the task's result), retry, returned (back in
    the queue), or stale (L{TaskOutput.COUNT_STALE} or L{TaskOutput.DROP_RESULT}).
    """
    return _VERDICTS[outputs]
