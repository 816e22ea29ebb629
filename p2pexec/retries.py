"""
The retry timers of a master's failed tasks: a task whose attempt failed
with retries left waits (RETRY_WAIT) for a backoff that doubles with each
failure, then goes back to the front of the queue.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec.job import Job, TaskRecord
from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

RETRY_INITIAL_DELAY = 1.0
"""Seconds before a failed task's first retry (doubling each time, plus up
to a second of jitter, at most a minute)."""


class RetryTimers:
    """
    The timer of each task waiting for its retry, by (job, task).

    @ivar timers: the active timers, by (job id, task id).
    @ivar scheduled: how many failed attempts were given a retry (a metric).
    """

    def __init__(
        self, clock: IReactorTime, jitter: Callable[[], float], due: Callable[[Job, TaskRecord], None]
    ) -> None:
        """
        @param clock: the monotonic clock the timers run on.
        @param jitter: a random fraction of a second added to each backoff.
        @param due: called with a task (and its job) whose backoff has passed.
        """
        self._clock = clock
        self._jitter = jitter
        self._due = due
        self._delay: Callable[[int], float] | None = None
        self.timers: dict[tuple[str, str], IDelayedCall] = {}
        self.scheduled = 0

    def start(self, job: Job, record: TaskRecord, result: TaskResult) -> None:
        """A failed attempt with retries left (RETRY_WAIT): call C{due} after a backoff."""
        if self._delay is None:
            from twisted.application.internet import backoffPolicy

            self._delay = backoffPolicy(
                initialDelay=RETRY_INITIAL_DELAY, maxDelay=60.0, factor=2.0, jitter=self._jitter
            )
        delay = self._delay(record.failures - 1)
        self.scheduled += 1
        log.warn(
            "Task {task} of job {job} {status} on {worker} (attempt {attempt}): {detail}; "
            "retry {retry} of {retries} in {delay:.1f}s",
            task=result.task_id,
            job=job.id,
            status=result.status,
            worker=record.worker,
            attempt=result.attempt,
            detail=result.error or f"exit code {result.exit_code}",
            retry=record.failures,
            retries=record.spec.retries,
            delay=delay,
        )
        key = (job.id, record.spec.id)
        self.cancel(key)
        self.timers[key] = self._clock.callLater(delay, self._fire, job, record)

    def cancel(self, key: tuple[str, str]) -> None:
        """Stop the timer of the task C{key} (job id, task id), if it has one."""
        timer = self.timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self, job: Job, record: TaskRecord) -> None:
        self.timers.pop((job.id, record.spec.id), None)
        self._due(job, record)

    def waiting(self) -> dict[tuple[str, str], float]:
        """The tasks waiting for their retry, by (job, task): when (monotonic clock) each runs again."""
        return {key: timer.getTime() for key, timer in self.timers.items() if timer.active()}
