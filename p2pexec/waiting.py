"""
The kinds of task a master cannot hand out because no connected node has
the capability, each stepped through the kind machine
(L{p2pexec.task_states.KIND}): one warning per kind, once it has waited
L{WAITING_GRACE} seconds (at start-up workers are still connecting).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized

from twisted.internet.interfaces import IReactorTime

from p2pexec.log import NodeLogger
from p2pexec.task_states import KIND, KindEvent, KindOutput, KindState

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

WAITING_GRACE = 3.0
"""Seconds a kind may lack a capable node before the master warns about it."""


class WaitingKinds:
    """The L{KIND} state of each kind a master has pending tasks of but no capable node for."""

    def __init__(self, name: str, clock: IReactorTime, recheck: Callable[[], None]) -> None:
        """
        @param name: the master's node name, for the warning.
        @param clock: the monotonic clock.
        @param recheck: called once a kind's grace is over, to plan again.
        """
        self._name = name
        self._clock = clock
        self._recheck = recheck
        self._kinds: dict[str, KindState] = {}
        """The L{KIND} state of each kind that is not served (deleted once served again)."""
        self._waiting_since: dict[str, float] = {}

    def note(self, unschedulable: list[str], pending: Mapping[str, Sized]) -> None:
        """
        After a dispatch: C{unschedulable} are the kinds it could hand to no
        node; C{pending} the queues by kind (for the count in the warning).
        """
        kinds = self._kinds
        if not kinds and not unschedulable:
            return
        now = self._clock.seconds()
        for kind in [kind for kind in kinds if kind not in unschedulable]:
            self._step(kind, KindEvent.SCHEDULABLE, now, pending)
        for kind in unschedulable:
            since = self._waiting_since.get(kind, now)
            self._step(
                kind, KindEvent.GRACE_OVER if now - since >= WAITING_GRACE else KindEvent.UNSCHEDULABLE, now, pending
            )

    def _step(self, kind: str, event: KindEvent, now: float, pending: Mapping[str, Sized]) -> None:
        """Step C{kind}'s L{KIND} machine and do what it answers."""
        state, outputs = KIND.step(self._kinds.get(kind, KindState.SERVED), event)
        if state is KindState.SERVED:
            self._kinds.pop(kind, None)
        else:
            self._kinds[kind] = state
        for output in outputs:
            if output is KindOutput.NOTE_SINCE:
                self._waiting_since[kind] = now
            elif output is KindOutput.START_GRACE_TIMER:
                self._clock.callLater(WAITING_GRACE, self._recheck)
            elif output is KindOutput.WARN:
                log.warn(
                    "Node {name} has {count} task(s) of kind {kind!r} waiting: no connected node "
                    "has capability {kind!r}; they will be assigned when one joins",
                    name=self._name,
                    count=len(pending[kind]),
                    kind=kind,
                )
            elif output is KindOutput.FORGET_SINCE:
                self._waiting_since.pop(kind, None)
