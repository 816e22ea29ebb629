"""
A scripted stand-in for L{p2pexec.executor.ProcessExecutor}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from p2pexec.model import FAILED, SUCCEEDED, Assignment, TaskResult


class FakeRunner:
    """
    Pretends to run commands: each attempt takes C{duration} seconds on the
    given clock and ends with the status that C{outcome} picks.

    @ivar runs: every attempt started, as (job, task id, attempt).
    @ivar running: the attempts in progress, by (job, task id, attempt).
    @ivar stopped: the attempts ended by L{stop} or L{stop_all}.
    """

    def __init__(
        self,
        clock: Any,
        node: str,
        duration: float = 0.1,
        outcome: Callable[[Assignment], tuple[str, int]] | None = None,
    ) -> None:
        self._clock = clock
        self._node = node
        self._duration = duration
        self._outcome = outcome or (lambda assignment: (SUCCEEDED, 0))
        self.runs: list[tuple[str, str, int]] = []
        self.running: dict[tuple[str, str, int], tuple[Deferred[TaskResult], Any]] = {}
        self.stopped: list[tuple[str, str, int]] = []

    def run(self, job: str, assignment: Assignment) -> Deferred[TaskResult]:
        """Start a pretend attempt."""
        key = (job, assignment.task.id, assignment.attempt)
        self.runs.append(key)
        d: Deferred[TaskResult] = Deferred()

        def finish() -> None:
            self.running.pop(key, None)
            status, code = self._outcome(assignment)
            d.callback(
                TaskResult(
                    task_id=assignment.task.id,
                    attempt=assignment.attempt,
                    status=status,
                    node=self._node,
                    exit_code=code,
                    duration=self._duration,
                )
            )

        call = self._clock.callLater(self._duration, finish)
        self.running[key] = (d, call)
        return d

    def stop_all(self) -> None:
        """End every attempt at once, as failed (killed)."""
        for key in list(self.running):
            self._stop(key)

    def stop(self, job: str, assignment: Assignment) -> None:
        """End one attempt at once, as failed (killed)."""
        self._stop((job, assignment.task.id, assignment.attempt))

    def settled(self) -> Deferred[None]:
        """Fires at once: a pretend attempt leaves no process behind."""
        return succeed(None)

    def _stop(self, key: tuple[str, str, int]) -> None:
        entry = self.running.pop(key, None)
        if entry is None:
            return
        d, call = entry
        if call.active():
            call.cancel()
        self.stopped.append(key)
        d.callback(TaskResult(task_id=key[1], attempt=key[2], status=FAILED, node=self._node, error="stopped"))
