"""
Which clock measures what.

Twisted's reactor keeps time with the wall clock: C{reactor.seconds()} is
C{time.time()} (L{twisted.python.runtime.seconds}), and C{callLater},
C{LoopingCall} and C{Deferred.addTimeout} schedule against it.  A step of
the wall clock (an NTP correction, a suspended virtual machine, an operator
with C{date -s}) then moves every timer: +60 s fires them all at once, so
that a node declares every peer dead; -30 s holds them all back by 30 s, so
that a frozen peer is declared dead half a minute late.

A node therefore runs on two clocks:

  - the reactor's, made monotonic by L{use_monotonic_time} before anything
    is scheduled on it: every interval, timeout, heartbeat, backoff and
    duration comes from it;
  - a wall clock, a plain C{Callable[[], float]} (C{time.time} by default)
    injected where a moment is shown to people or compared with another
    machine's clock: when a job was submitted and finished, the journal's
    timestamps (which outlive the process), sealed datagrams' timestamps.

Tests keep driving the reactor with L{twisted.internet.task.Clock}, which
never steps, and step the wall clock they inject.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WallClock = Callable[[], float]
"""Seconds since the epoch, for moments shown to people or to other nodes (C{time.time})."""


def use_monotonic_time(reactor: Any, monotonic: Callable[[], float] = time.monotonic) -> None:
    """
    Make C{reactor.seconds()} monotonic, so that its timers follow elapsed
    time and not the wall clock.

    Twisted's reactors read the time only through C{self.seconds()}: when a
    call is scheduled (C{callLater} stores C{seconds() + delay}), when the
    reactor works out how long it may sleep, and when it runs the calls that
    are due; each L{twisted.internet.base.DelayedCall} keeps the C{seconds}
    of its reactor for C{reset}.  Replacing the reactor instance's
    C{seconds} therefore changes every one of them.  Calls scheduled before
    the switch (there are normally none: this runs first) are moved onto the
    new time scale, all by the same amount, so that they keep their order
    and their delays.

    Do it before the reactor runs; doing it again changes nothing.  The only stock
    Twisted reader of C{reactor.seconds()} as wall time that a node uses is
    C{twisted.web.http.HTTPFactory}'s access-log date, which the node's
    site does not print (L{p2pexec.web}); HTTP C{Date} headers and log
    event times read C{time.time()} themselves.

    @param monotonic: the new time source (for tests).
    """
    before = reactor.seconds()
    now = monotonic()
    shift = now - before
    reactor.seconds = monotonic
    for call in reactor.getDelayedCalls():
        call.time += shift
        call.seconds = monotonic
