"""
Capability scheduling: which pending task goes to which worker.

Pure functions over plain data.  The master calls L{plan} whenever tasks or
capacity appear; nothing here knows about connections or time.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

import attr

T = TypeVar("T")


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
    @ivar absent: (kind, node) of the pinned queues whose node is not among
        the workers, or does not run the kind.
    """

    assignments: dict[str, list[T]] = attr.Factory(dict)
    unschedulable: list[str] = attr.Factory(list)
    absent: list[tuple[str, str]] = attr.Factory(list)


def plan(
    pending: Mapping[str, deque[T]],
    workers: Iterable[WorkerCapacity],
    pinned: Mapping[tuple[str, str], deque[T]] | None = None,
) -> Plan[T]:
    """
    Hand pending tasks to capable workers, filling the emptiest first.

    Tasks are taken from the left of each kind's queue (so first in, first
    out) and removed from it.  Each task goes to the capable worker with the
    most free capacity at that moment, so load is spread in proportion to
    free slots.  A kind that no worker in C{workers} can run at all is listed
    in L{Plan.unschedulable}; a kind whose workers are merely full is not.

    @param pinned: the queues of tasks that run on one node only, by (kind,
        node); they are served first, each by its node alone, and one whose
        node is not among C{workers} (or does not run the kind) is listed
        in L{Plan.absent}.
    """
    workers = [w for w in workers]
    free = {w.name: w.free for w in workers}
    result: Plan[T] = Plan()
    if pinned:
        by_name = {w.name: w for w in workers}
        for (kind, node), queue in pinned.items():
            if not queue:
                continue
            worker = by_name.get(node)
            if worker is None or kind not in worker.capabilities:
                result.absent.append((kind, node))
                continue
            take = min(free[node], len(queue))
            if take:
                result.assignments.setdefault(node, []).extend(queue.popleft() for _ in range(take))
                free[node] -= take
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
