"""
How much work a master gives each worker: in proportion to the rate at which
the worker has been finishing it (issue 15, no slow-node tail).

A worker's L{Pace} is a moving average (EWMA) of its attempts' run times, over
all kinds and per kind.  Its budget (L{Pace.window}) is its slots plus the
tasks it would finish within L{QUEUE_HORIZON} at that rate: a fast worker of
instant tasks gets a deep queue (big batches), a worker whose tasks take much
longer than a round trip gets its slots and no more, so that it never holds
work that another worker could start sooner.  A worker whose pace is not yet
known is given twice its slots; its first result sets its pace.

The per-kind averages are what L{p2pexec.speculation} compares to decide
whether a backup copy on another worker would finish first.
"""

from __future__ import annotations

import math

QUEUE_HORIZON = 0.05
"""Seconds of work each worker is given beyond its slots, so that the next
batch is at hand when a slot frees."""

MAX_PREFETCH = 2000
"""The most tasks queued on a worker beyond its slots."""

SMOOTHING = 0.2
"""The weight of the newest run time in the moving averages."""


class Pace:
    """
    One worker's measured pace, as its master sees it.

    @ivar mean: the moving average of its attempts' run times (seconds), all
        kinds together, once one is known.
    @ivar by_kind: the same per task kind.
    """

    __slots__ = ("mean", "by_kind")

    def __init__(self) -> None:
        self.mean: float | None = None
        self.by_kind: dict[str, float] = {}

    def record(self, seconds: float, kind: str) -> None:
        """Fold one finished attempt's run time in (a time that is not finite, or negative, is ignored)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        mean = self.mean
        self.mean = seconds if mean is None else mean + SMOOTHING * (seconds - mean)
        known = self.by_kind.get(kind)
        self.by_kind[kind] = seconds if known is None else known + SMOOTHING * (seconds - known)

    def expected(self, kind: str) -> float | None:
        """How long an attempt of C{kind} takes on this worker, once one has finished."""
        return self.by_kind.get(kind)

    def window(self, slots: int) -> int:
        """
        How many unconfirmed tasks a worker with C{slots} may hold: its
        slots, plus what it finishes in L{QUEUE_HORIZON} at its measured rate
        (none when a task takes longer than that per slot); twice its slots
        until a rate is known (one batch in hand: its first result sets it).
        """
        mean = self.mean
        if mean is None:
            return 2 * slots
        rate = slots / max(mean, 1e-5)
        return slots + min(MAX_PREFETCH, int(rate * QUEUE_HORIZON))
