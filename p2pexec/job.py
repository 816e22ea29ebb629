"""
One job's book-keeping on its master: every task's state, attempt and result.

Pure state, no I/O and no clock of its own: times are passed in.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, Optional

import attr

from p2pexec.model import RETURNED, Assignment, TaskResult, TaskSpec


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


@attr.s(auto_attribs=True, slots=True)
class TaskRecord:
    """
    One task of a job.

    @ivar spec: the task.
    @ivar state: see L{TaskState}.
    @ivar attempt: the number of the latest attempt (0 before the first).
    @ivar worker: the node given the latest attempt (kept when the task is
        put back, so that its late result can still be recognised).
    @ivar result: the result that finished it.
    """

    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    worker: Optional[str] = None
    result: Optional[TaskResult] = None


class Job:
    """
    A batch of tasks accepted by this node as master.

    @ivar id: the job id, unique on this master.
    @ivar started: when it was accepted.
    @ivar finished: when its last task finished, or C{None}.
    @ivar participants: every node that was given one of its tasks.
    """

    def __init__(self, job_id: str, tasks: Iterable[TaskSpec], started: float) -> None:
        self.id = job_id
        self.tasks: dict[str, TaskRecord] = {}
        for spec in tasks:
            if spec.id in self.tasks:
                raise ValueError(f"job {job_id}: task id {spec.id!r} appears twice")
            self.tasks[spec.id] = TaskRecord(spec=spec)
        self.started = started
        self.finished: Optional[float] = None
        self.participants: set[str] = set()
        self.succeeded = 0
        self.failed = 0
        self.stale = 0

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

    def apply(self, result: TaskResult, now: float, sender: Optional[str] = None) -> Verdict:
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

    def put_back(self, worker: str) -> list[str]:
        """
        Return every task assigned to C{worker} and not confirmed to the
        queue.

        @return: their ids, in job order.
        """
        returned = []
        for task_id, record in self.tasks.items():
            if record.state is TaskState.ASSIGNED and record.worker == worker:
                record.state = TaskState.PENDING
                returned.append(task_id)
        return returned

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        counts = {state.value: 0 for state in TaskState}
        for record in self.tasks.values():
            counts[record.state.value] += 1
        return counts

    def elapsed(self, now: float) -> float:
        """Seconds since the job started, up to its end if it has ended."""
        return (self.finished if self.finished is not None else now) - self.started

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
            "stale_results_dropped": self.stale,
            "tasks": tasks,
        }
