"""
Failure detection: which peers have gone silent.

A connection where work flows (the peer holds tasks this node is master of,
or this node holds tasks of its) is watched closely: it gets a HEARTBEAT
whenever it has been quiet for one interval, and any bytes received count as
a sign of life.  A peer silent for half the timeout becomes I{suspect};
silent for the whole timeout, I{dead}, and its connection is closed, which
puts its unconfirmed tasks back in the queue.  Idle connections are watched
the same way, slowly, so that a half-open connection to a vanished peer is
closed within tens of seconds.

L{FailureDetector} is the state machine alone: it is told how long each
peer has been silent and answers what to do.  It does no I/O and reads no
clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable
from typing import Any

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
    became: Liveness | None = None


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
        return Verdict(
            ping=now is not Liveness.DEAD and silent_for >= self.interval, became=now if now is not before else None
        )

    def forget(self, key: Hashable) -> None:
        """Stop tracking C{key} (no work flows, or the connection closed)."""
        self._states.pop(key, None)

    def watched(self) -> list[Hashable]:
        """Everything being tracked."""
        return list(self._states)


class Watchman:
    """
    Watches every connection with one of two detectors: a quick one where
    work flows (seconds), a slow one on idle connections (tens of seconds,
    so that a half-open connection to a vanished peer does not linger).

    A connection's silence is counted from the later of the last bytes it
    received and the moment it entered its current mode, so a connection
    idle for a long while is not judged dead the moment work starts on it.

    @param ping: sends a HEARTBEAT on a connection.
    @param on_dead: called with (name, connection, silence, timeout) for a
        connection judged dead; it closes it.
    @param on_change: called with (name, liveness, silence) when a busy
        connection becomes suspect or alive again, for the log.
    @param pings_when_idle: whether this side pings an idle connection (one
        side is enough: the other hears the pings and answers them).
    """

    def __init__(
        self,
        busy: FailureDetector,
        idle: FailureDetector,
        ping: Callable[[Any], None],
        on_dead: Callable[[str, Any, float, float], None],
        on_change: Callable[[str, Liveness, float], None],
        pings_when_idle: Callable[[Any], bool] = lambda connection: True,
    ) -> None:
        self._pings_when_idle = pings_when_idle
        self.busy = busy
        self.idle = idle
        self._ping = ping
        self._on_dead = on_dead
        self._on_change = on_change
        self._since: dict[Any, tuple[FailureDetector, float]] = {}

    def liveness(self, connection: Any) -> Liveness:
        """How the detector watching C{connection} judges it (alive until judged)."""
        mode = self._since.get(connection)
        if mode is None:
            return Liveness.ALIVE
        return mode[0].state(connection)

    def check(self, now: float, connections: Iterable[tuple[str, Any]], busy_names: set[str]) -> None:
        """Judge every live connection once; C{connections} are (name, connection) pairs."""
        seen = set()
        for name, connection in connections:
            seen.add(connection)
            detector = self.busy if name in busy_names else self.idle
            other = self.idle if detector is self.busy else self.busy
            mode = self._since.get(connection)
            if mode is None or mode[0] is not detector:
                other.forget(connection)
                mode = (detector, now)
                self._since[connection] = mode
            silent = now - max(connection.last_received, mode[1])
            verdict = detector.judge(connection, silent)
            if verdict.became is Liveness.DEAD:
                self._on_dead(name, connection, silent, detector.timeout)
                continue
            if verdict.became is not None and detector is self.busy:
                self._on_change(name, verdict.became, silent)
            if verdict.ping and (detector is self.busy or self._pings_when_idle(connection)):
                self._ping(connection)
        for connection in [c for c in self._since if c not in seen]:
            self._since.pop(connection)
            self.busy.forget(connection)
            self.idle.forget(connection)
