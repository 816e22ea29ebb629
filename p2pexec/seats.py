"""
A worker as a master sees it (its seat): how many unconfirmed tasks of this
master it holds, whether it takes more, and how many more to give it now,
from the rate at which it has been finishing them.
"""

from __future__ import annotations

import math

import attr

from p2pexec.model import NodeInfo
from p2pexec.resource_use import Usage

QUEUE_HORIZON = 0.05
"""Seconds of work each worker is given beyond its slots, so that the next
batch is at hand when a slot frees (see L{WorkerSeat.window})."""

MAX_PREFETCH = 2000
"""The most tasks queued on a worker beyond its slots."""


@attr.s(auto_attribs=True)
class WorkerSeat:
    """
    A worker as the master sees it.

    @ivar mean_duration: a moving average of its tasks' run times, once known.
    @ivar used: what its unconfirmed tasks of this master ask for (see L{p2pexec.resources}).
    """

    info: NodeInfo
    outstanding: int = 0
    accepting: bool = True
    mean_duration: float | None = None
    used: Usage = attr.Factory(Usage)

    @property
    def window(self) -> int:
        """
        How many unconfirmed tasks it may hold: its slots, plus enough queued
        work for L{QUEUE_HORIZON} seconds at the rate it has been finishing
        tasks (its slots again, until that rate is known).  Instant tasks get
        a deep queue and travel in big batches; long tasks get a shallow one,
        so that no worker hoards work another could start.
        """
        slots = self.info.slots
        if self.mean_duration is None:
            return 2 * slots
        rate = slots / max(self.mean_duration, 1e-5)
        return slots + max(1, min(MAX_PREFETCH, int(rate * QUEUE_HORIZON)))

    @property
    def free(self) -> int:
        """
        How many more tasks to give it now: none until half of its queue
        beyond its slots has drained, then enough to fill L{window} again.
        Topping up after every confirmation would send one tiny
        INSTRUCTION_ASSIGNMENT per finished task.
        """
        window = self.window
        free = window - self.outstanding
        if free < max(1, (window - self.info.slots) // 2):
            return 0
        return free

    def record_duration(self, seconds: float) -> None:
        """Fold one finished task's run time into L{mean_duration} (a time that is not finite is ignored)."""
        if not math.isfinite(seconds):
            return
        if self.mean_duration is None:
            self.mean_duration = seconds
        else:
            self.mean_duration += 0.2 * (seconds - self.mean_duration)
