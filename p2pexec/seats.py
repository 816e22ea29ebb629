"""
A worker as a master sees it (its seat): how many unconfirmed tasks of this
master it holds, whether it takes more, and how many more to give it now,
from the rate at which it has been finishing them (see L{p2pexec.pacing}).
"""

from __future__ import annotations

import attr

from p2pexec.model import NodeInfo
from p2pexec.pacing import Pace
from p2pexec.resource_use import Usage
from p2pexec.resources import Request


@attr.s(auto_attribs=True)
class WorkerSeat:
    """
    A worker as the master sees it.

    @ivar outstanding: how many unconfirmed attempts of this master it holds
        (backup copies too, see L{p2pexec.speculation}).
    @ivar pace: its measured pace, all kinds and per kind.
    @ivar used: what its unconfirmed tasks of this master ask for (see L{p2pexec.resources}).
    """

    info: NodeInfo
    outstanding: int = 0
    accepting: bool = True
    pace: Pace = attr.Factory(Pace)
    used: Usage = attr.Factory(Usage)

    def hold(self, request: Request | None, delta: int) -> None:
        """One more (C{delta} 1) or one fewer (-1) unconfirmed attempt here, asking for C{request}."""
        self.outstanding += delta
        if request is not None:
            self.used.add(request, delta)

    @property
    def window(self) -> int:
        """How many unconfirmed tasks it may hold (see L{Pace.window})."""
        return self.pace.window(self.info.slots)

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

    @property
    def idle(self) -> int:
        """How many of its slots hold no task of this master (not even a queued one)."""
        return max(0, self.info.slots - self.outstanding)
