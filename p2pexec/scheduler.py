"""
Capability scheduling: which pending task goes to which worker.

Pure functions over plain data.  The master calls L{plan} whenever tasks or
capacity appear; nothing here knows about connections or time.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

import attr

from p2pexec.resource_use import Room
from p2pexec.resources import Request, pinned_shortfall, shortfall

T = TypeVar("T")


class TaskQueue(Protocol[T]):
    """What L{plan} needs of a kind's queue: a C{deque}, or a L{p2pexec.fairshare.JobQueue}."""

    def popleft(self) -> T:
        """Take the next task."""

    def extendleft(self, items: Iterable[T]) -> None:
        """Put back tasks taken by L{popleft} and not placed, each first in turn (so C{reversed} keeps their order)."""

    def __bool__(self) -> bool:
        """Whether a task is left."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WorkerCapacity:
    """
    A worker as the scheduler sees it.

    @ivar name: the worker's node name.
    @ivar capabilities: the task kinds it runs.
    @ivar free: how many more tasks it may be given now.
    @ivar room: what it has free for tasks that ask for resources (see
        L{p2pexec.resources}), taken from as they are placed; C{None}: it has
        only slots, and no such task goes to it.
    """

    name: str
    capabilities: frozenset[str]
    free: int
    room: Room | None = None

    def fits(self, request: Request) -> bool:
        """Whether a task asking for C{request} fits in what is free here now (slots aside)."""
        return self.room is not None and self.room.fits(request)


@attr.s(auto_attribs=True)
class Plan(Generic[T]):
    """
    The outcome of one scheduling round.

    @ivar assignments: worker name to the tasks it is given, in queue order.
    @ivar unschedulable: kinds with pending tasks that no known worker runs.
    @ivar absent: (kind, node) of the pinned queues whose node is not among
        the workers, or does not run the kind.
    @ivar unfit: the tasks looked at whose request no capable worker could
        hold even when idle, each with why (what is missing); they stay queued.
    """

    assignments: dict[str, list[T]] = attr.Factory(dict)
    unschedulable: list[str] = attr.Factory(list)
    absent: list[tuple[str, str]] = attr.Factory(list)
    unfit: list[tuple[T, str]] = attr.Factory(list)


def plan(
    pending: Mapping[str, deque[T]] | Mapping[str, TaskQueue[T]],
    workers: Iterable[WorkerCapacity],
    request_of: Callable[[T], Request | None] | None = None,
    pinned: Mapping[tuple[str, str], deque[T]] | None = None,
) -> Plan[T]:
    """
    Hand pending tasks to capable workers, filling the emptiest first.

    Tasks are taken from the left of each kind's queue (so first in, first
    out) and removed from it.  Each task goes to the capable worker with the
    most free capacity at that moment, so load is spread in proportion to
    free slots.  A kind that no worker in C{workers} can run at all is listed
    in L{Plan.unschedulable}; a kind whose workers are merely full is not.

    With C{request_of}, a task that asks for resources goes only to a
    worker with room for it (L{WorkerCapacity.fits}), the one with the most
    free slots among those; one that fits nowhere now stays queued, in
    order, while the tasks behind it are placed.

    @param pinned: the queues of tasks that run on one node only, by (kind,
        node); they are served first, each by its node alone (and, with
        C{request_of}, only while the task at the head of the queue fits in
        its room), and one whose node is not among C{workers} (or does not
        run the kind) is listed in L{Plan.absent}.
    """
    workers = [w for w in workers]
    free = {w.name: w.free for w in workers}
    result: Plan[T] = Plan()
    if pinned:
        _plan_pinned(pinned, workers, free, request_of, result)
    for kind, queue in pending.items():
        if not queue:
            continue
        capable = [w for w in workers if kind in w.capabilities]
        if not capable:
            result.unschedulable.append(kind)
            continue
        heap = [(-free[w.name], w.name) for w in capable if free[w.name] > 0]
        heapq.heapify(heap)
        if request_of is not None:
            _plan_requests(kind, queue, capable, heap, free, request_of, result)
            continue
        while queue and heap:
            negative_free, name = heapq.heappop(heap)
            result.assignments.setdefault(name, []).append(queue.popleft())
            free[name] = -negative_free - 1
            if free[name] > 0:
                heapq.heappush(heap, (-free[name], name))
    return result


def _plan_requests(
    kind: str,
    queue: deque[T] | TaskQueue[T],
    capable: list[WorkerCapacity],
    heap: list[tuple[int, str]],
    free: dict[str, int],
    request_of: Callable[[T], Request | None],
    result: Plan[T],
) -> None:
    """
    L{plan} for one kind's queue whose tasks may ask for resources.  The
    heap may hold stale entries (a worker given a resource task since, whose
    new count was pushed too): one that disagrees with C{free} is dropped.
    """
    skipped: list[T] = []
    no_room: set[Request] = set()
    never: dict[Request, str | None] = {}
    while queue and heap:
        entry = queue.popleft()
        request = request_of(entry)
        if request is None:
            while heap:
                negative_free, name = heapq.heappop(heap)
                if -negative_free == free[name]:
                    break
            else:
                skipped.append(entry)
                break
        else:
            best = None
            if request not in no_room:
                for worker in capable:
                    if free[worker.name] > 0 and worker.fits(request):
                        if best is None or free[worker.name] > free[best.name]:
                            best = worker
            if best is None:
                no_room.add(request)
                skipped.append(entry)
                if request not in never:
                    totals = [w.room.total if w.room is not None else None for w in capable]
                    holds = any(total is not None and total.holds(request) for total in totals)
                    never[request] = None if holds else shortfall(request, totals, kind)
                why = never[request]
                if why is not None:
                    result.unfit.append((entry, why))
                continue
            name = best.name
            assert best.room is not None
            best.room.take(request)
        result.assignments.setdefault(name, []).append(entry)
        free[name] -= 1
        if free[name] > 0:
            heapq.heappush(heap, (-free[name], name))
    queue.extendleft(reversed(skipped))


def _plan_pinned(
    pinned: Mapping[tuple[str, str], deque[T]],
    workers: list[WorkerCapacity],
    free: dict[str, int],
    request_of: Callable[[T], Request | None] | None,
    result: Plan[T],
) -> None:
    """
    L{plan} for the queues of tasks pinned to one node: each goes to its
    node, in order, while the node has a free slot (and, for a task asking
    for resources, room for it; a task the node could not hold even idle
    is listed in L{Plan.unfit} and waits, as do those behind it).
    """
    by_name = {w.name: w for w in workers}
    for (kind, node), queue in pinned.items():
        if not queue:
            continue
        worker = by_name.get(node)
        if worker is None or kind not in worker.capabilities:
            result.absent.append((kind, node))
            continue
        if request_of is None:
            take = min(free[node], len(queue))
            if take:
                result.assignments.setdefault(node, []).extend(queue.popleft() for _ in range(take))
                free[node] -= take
            continue
        while queue and free[node] > 0:
            request = request_of(queue[0])
            if request is not None:
                if not worker.fits(request):
                    total = worker.room.total if worker.room is not None else None
                    if total is None or not total.holds(request):
                        result.unfit.append((queue[0], pinned_shortfall(request, total, node)))
                    break
                assert worker.room is not None
                worker.room.take(request)
            result.assignments.setdefault(node, []).append(queue.popleft())
            free[node] -= 1
