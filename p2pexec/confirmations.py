"""
What a master does with the results its workers confirm, beyond stepping
the task machine: the tallies of one call (L{Batch}), handing an applied
result to the listeners, and the log lines about results applied and
results dropped as stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from p2pexec.job import Job, TaskRecord
from p2pexec.log import MAX_IDS_IN_LOG, NodeLogger, format_ids
from p2pexec.model import FAILED, SUCCEEDED, TaskResult
from p2pexec.seats import WorkerSeat
from p2pexec.task_states import TaskOutput

if TYPE_CHECKING:
    from p2pexec.master import Master

_PACED = frozenset({SUCCEEDED, FAILED})
"""The results whose run time is folded into their worker's pace (see L{p2pexec.pacing})."""

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""


class Batch:
    """
    What one call (a confirmation batch, a refusal, a loss, a cancel) tallies
    while the task machine's outputs are performed: one per call, not per task.

    @ivar requeue: the tasks to queue again, in order (queued at the end, in one go).
    @ivar confirmed: the tasks whose result was applied (for the log).
    """

    __slots__ = ("sender", "seat", "requeue", "confirmed", "applied", "stale")

    def __init__(self, sender: str | None = None, seat: WorkerSeat | None = None) -> None:
        self.sender = sender
        self.seat = seat
        self.requeue: list[str] = []
        self.confirmed: list[str] = []
        self.applied = 0
        self.stale = 0

    def performer(self, master: Master, job: Job) -> Callable[[TaskRecord, tuple[TaskOutput, ...]], None]:
        """A callback for L{Job}'s event methods: performs each task's outputs for C{master} into this batch."""

        def perform(record: TaskRecord, outputs: tuple[TaskOutput, ...]) -> None:
            master._perform(job, record, outputs, self)

        return perform


def report_result(
    job: Job,
    result: TaskResult,
    batch: Batch,
    listeners: list[Callable[[TaskResult], None]],
    job_listeners: Sequence[Callable[[str, TaskResult], None]] = (),
) -> None:
    """A worker's result became its task's: tell the listeners, fold its run time into the worker's pace, log a failure."""
    batch.applied += 1
    batch.confirmed.append(result.task_id)
    for listener in listeners:
        listener(result)
    for job_listener in job_listeners:
        job_listener(job.id, result)
    if batch.seat is not None and result.status in _PACED:
        # A timed-out run says how long the timeout is, not how fast the worker is.
        batch.seat.pace.record(result.duration, job.tasks[result.task_id].spec.kind)
    if not result.succeeded:
        log.warn(
            "Task {task} of job {job} {status} on {worker}: {detail}",
            task=result.task_id,
            job=job.id,
            status=result.status,
            worker=batch.sender,
            detail=result.error or f"exit code {result.exit_code}",
        )


def log_stale(master_name: str, job: Job, result: TaskResult, sender: str | None) -> None:
    """A result was dropped as stale: say which and why."""
    log.info(
        "Node {name} dropped a stale result for {task} of job {job} (attempt {attempt}) from {worker}: {why}",
        name=master_name,
        task=result.task_id,
        attempt=result.attempt,
        worker=sender,
        job=job.id,
        why=job.stale_reason(result, sender),
    )


def log_confirmed(job_id: str, confirmed: list[str], sender: str) -> None:
    """One line per task, as the original; one line per batch past L{MAX_IDS_IN_LOG}."""
    if len(confirmed) <= MAX_IDS_IN_LOG:
        for task_id in confirmed:
            log.info(
                "Master received confirmation for {task} from {worker}",
                task=task_id,
                worker=sender,
                job=job_id,
            )
    else:
        log.info(
            "Master received confirmations for {count} tasks from {worker}: {ids}",
            count=len(confirmed),
            worker=sender,
            ids=format_ids(confirmed),
            job=job_id,
        )
