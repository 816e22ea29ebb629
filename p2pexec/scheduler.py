"""
Capability scheduling: which pending task goes to which worker.

Pure functions over plain data.  The master calls L{plan} whenever tasks or
capacity appear; nothing here knows about connections or time.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

import attr

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class TaskQueue(Protocol[T_co]):
    """What L{plan} needs of a kind's queue: a C{deque}, or a L{p2pexec.fairshare.JobQueue}."""

    def popleft(self) -> T_co:
        """Take the next task."""

    def __bool__(self) -> bool:
        """Whether a task is left."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WorkerCapacity:
    """
    A worker as the scheduler sees it.

    @ivar name: the worker's node name.
    @ivar capabilities: the task kinds it runs.
    @ivar free: how many more tasks it may be given now.
    """

    name: str
    capabilities: frozenset[str]
    free: int


@attr.s(auto_attribs=True)
class Plan(Generic[T]):
    """
    The outcome of one scheduling round.

    @ivar assignments: worker name to the tasks it is given, in queue order.
    @ivar unschedulable: kinds with pending tasks that no known worker runs.
    """

    assignments: dict[str, list[T]] = attr.Factory(dict)
    unschedulable: list[str] = attr.Factory(list)


def plan(pending: Mapping[str, deque[T]] | Mapping[str, TaskQueue[T]], workers: Iterable[WorkerCapacity]) -> Plan[T]:
    """
    Hand pending tasks to capable workers, filling the emptiest first.

    Tasks are taken from the left of each kind's queue (so first in, first
    out) and removed from it.  Each task goes to the capable worker with the
    most free capacity at that moment, so load is spread in proportion to
    free slots.  A kind that no worker in C{workers} can run at all is listed
    in L{Plan.unschedulable}; a kind whose workers are merely full is not.
    """
    workers = [w for w in workers]
    free = {w.name: w.free for w in workers}
    result: Plan[T] = Plan()
    for kind, queue in pending.items():
        if not queue:
            continue
        capable = [w for w in workers if kind in w.capabilities]
        if not capable:
            result.unschedulable.append(kind)
            continue
        heap = [(-free[w.name], w.name) for w in capable if free[w.name] > 0]
        heapq.heapify(heap)
        while queue and heap:
            negative_free, name = heapq.heappop(heap)
            result.assignments.setdefault(name, []).append(queue.popleft())
            free[name] = -negative_free - 1
            if free[name] > 0:
                heapq.heappush(heap, (-free[name], name))
    return result
