"""
Failure detection: which peers have gone silent.

A peer is watched while work flows between us: it holds tasks this node is
master of, or this node holds tasks of its.  Every watched connection gets a
HEARTBEAT whenever it has been quiet for one interval; any bytes received
count as a sign of life.  A peer silent for half the timeout becomes
I{suspect}; silent for the whole timeout, I{dead}, and its connection is
closed, which puts its unconfirmed tasks back in the queue.

L{FailureDetector} is the state machine alone: it is told how long each
peer has been silent and answers what to do.  It does no I/O and reads no
clock.
"""

from __future__ import annotations

import enum
from typing import Hashable, Optional

import attr


class Liveness(enum.Enum):
    """What a watched peer looks like from here."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Verdict:
    """
    What to do about one watched peer now.

    @ivar ping: send it a HEARTBEAT.
    @ivar became: its new liveness, if it changed.
    """

    ping: bool
    became: Optional[Liveness] = None


class FailureDetector:
    """
    Decides, from silence alone, which watched peers are alive, suspect or
    dead.

    @param interval: seconds of quiet after which a peer is pinged.
    @param timeout: seconds of silence after which a peer is dead.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        if not 0 < interval < timeout:
            raise ValueError("the heartbeat interval must be above 0 and below the timeout")
        self.interval = interval
        self.timeout = timeout
        self.suspect_after = max(timeout / 2, interval * 1.5)
        self._states: dict[Hashable, Liveness] = {}

    def state(self, key: Hashable) -> Liveness:
        """The liveness of C{key} (alive if never judged)."""
        return self._states.get(key, Liveness.ALIVE)

    def judge(self, key: Hashable, silent_for: float) -> Verdict:
        """C{key} has been silent for C{silent_for} seconds: what now?"""
        before = self.state(key)
        if before is Liveness.DEAD:
            return Verdict(ping=False)
        if silent_for >= self.timeout:
            now = Liveness.DEAD
        elif silent_for >= self.suspect_after:
            now = Liveness.SUSPECT
        else:
            now = Liveness.ALIVE
        self._states[key] = now
        return Verdict(ping=now is not Liveness.DEAD and silent_for >= self.interval, became=now if now is not before else None)

    def forget(self, key: Hashable) -> None:
        """Stop tracking C{key} (no work flows, or the connection closed)."""
        self._states.pop(key, None)

    def watched(self) -> list[Hashable]:
        """Everything being tracked."""
        return list(self._states)
