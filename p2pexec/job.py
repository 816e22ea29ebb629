"""
One job's book-keeping on its master: every task's state, attempt and result.

Pure state, no I/O and no clock of its own: times are passed in.  Two kinds
of time: C{started}/C{finished} are readings of the node's monotonic clock
(the reactor's, see L{p2pexec.clock}), from which every duration is
computed; C{started_at}/C{finished_at} are wall-clock moments, shown to people
and kept in the journal, never subtracted from each other.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attr

from p2pexec.model import CANCELLED, FAILED, RETURNED, Assignment, TaskResult, TaskSpec

DEFAULT_MAX_LOSSES = 3
"""How many times a task may lose its worker before it is quarantined as failed."""


class TaskState(enum.Enum):
    """Where a task stands on its master."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    DONE = "done"


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
    @ivar state: see L{TaskState}.
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
        """The state's name, as the journal stores it."""
        return self.state.value


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
        return self.succeeded + self.failed == len(self.tasks)

    def assign(self, task_id: str, worker: str) -> Assignment:
        """Start a new attempt of a pending task on C{worker}."""
        record = self.tasks[task_id]
        assert record.state is TaskState.PENDING, (task_id, record.state)
        record.state = TaskState.ASSIGNED
        record.attempt += 1
        record.worker = worker
        self.participants.add(worker)
        return Assignment(task=record.spec, attempt=record.attempt)

    def is_pending(self, task_id: str) -> bool:
        """Whether C{task_id} waits for a worker."""
        return self.tasks[task_id].state is TaskState.PENDING

    def apply(self, result: TaskResult, now: float, sender: str | None = None) -> Verdict:
        """
        Record a result reported by C{sender} for one attempt.

        A result counts if it is for the latest attempt of a task not yet
        done, from the node that attempt was given to, even if the task was
        put back in the queue meanwhile (its worker's connection dropped, but
        the result got through after all).  A C{returned} result puts the
        task back in the queue.
        """
        record = self.tasks.get(result.task_id)
        if record is None:
            return Verdict.UNKNOWN
        if (
            record.state is TaskState.DONE
            or result.attempt != record.attempt
            or (sender is not None and sender != record.worker)
        ):
            self.stale += 1
            return Verdict.STALE
        if result.status == RETURNED:
            if record.state is TaskState.ASSIGNED:
                record.state = TaskState.PENDING
                return Verdict.RETURNED
            return Verdict.STALE
        if record.state is TaskState.PENDING and record.result is not None and record.result.attempt == result.attempt:
            # The failed attempt waiting for its retry, reported again.
            self.stale += 1
            return Verdict.STALE
        if not result.succeeded and record.failures < record.spec.retries:
            record.failures += 1
            record.state = TaskState.PENDING
            record.result = result
            return Verdict.RETRY
        record.state = TaskState.DONE
        record.result = result
        if result.succeeded:
            self.succeeded += 1
        else:
            self.failed += 1
        if self.done:
            self.finished = now
        return Verdict.APPLIED

    def take_back(self, task_id: str, attempt: int, worker: str) -> bool:
        """
        Put one task back in the queue if its latest attempt is the one
        C{worker} was given (it refused or returned it).

        @return: whether the task is pending again.
        """
        record = self.tasks.get(task_id)
        if (
            record is None
            or record.state is not TaskState.ASSIGNED
            or record.attempt != attempt
            or record.worker != worker
        ):
            return False
        record.state = TaskState.PENDING
        return True

    def put_back(
        self,
        worker: str,
        now: float,
        attempts: Iterable[tuple[str, int]] | None = None,
        count_loss: bool = True,
    ) -> tuple[list[str], list[str]]:
        """
        Take back every task assigned to C{worker} and not confirmed (or just
        the given (task id, attempt) pairs among them, each only while that
        is still its latest attempt): its worker was lost.  A task that has
        now lost its worker L{max_losses} times is quarantined: it is done,
        as failed, and is not run again (it may be what kills its workers).

        @param count_loss: whether this counts towards quarantine; not when
            the master itself restarted and the worker no longer had it.
        @return: (the ids to queue again, the ids quarantined), in job order.
        """
        requeue: list[str] = []
        quarantined: list[str] = []
        wanted = None if attempts is None else dict(attempts)
        for task_id, record in self.tasks.items():
            if record.state is not TaskState.ASSIGNED or record.worker != worker:
                continue
            if wanted is not None and wanted.get(task_id) != record.attempt:
                continue
            if count_loss:
                record.losses += 1
            if record.losses >= self.max_losses:
                record.state = TaskState.DONE
                record.result = TaskResult(
                    task_id=task_id,
                    attempt=record.attempt,
                    status=FAILED,
                    node=worker,
                    error=(f"quarantined: lost its worker {record.losses} times (last: {worker}); not run again"),
                )
                self.failed += 1
                quarantined.append(task_id)
            else:
                record.state = TaskState.PENDING
                requeue.append(task_id)
        if quarantined and self.done:
            self.finished = now
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

    def cancel(self, now: float, master: str, why: str) -> list[TaskRecord]:
        """
        Cancel every task without a result: each is done, as C{cancelled},
        its node the worker of its latest attempt (or C{master} if it never
        went out), its error C{job cancelled (WHY)}.

        @return: the records that were assigned to a worker (whose processes
            must be stopped).
        """
        running = []
        for task_id, record in self.tasks.items():
            if record.state is TaskState.DONE:
                continue
            if record.state is TaskState.ASSIGNED:
                running.append(record)
            record.state = TaskState.DONE
            record.result = TaskResult(
                task_id=task_id,
                attempt=record.attempt,
                status=CANCELLED,
                node=record.worker or master,
                error=f"job cancelled ({why})",
            )
            self.failed += 1
        self.cancelled = True
        self.finished = now
        return running

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        counts = {state.value: 0 for state in TaskState}
        for record in self.tasks.values():
            counts[record.state.value] += 1
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
                "state": record.state.value,
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
            "total": len(self.tasks),
            "elapsed": round(self.elapsed(now), 6),
            "cancelled": self.cancelled,
            "stale_results_dropped": self.stale,
            "tasks": tasks,
        }
