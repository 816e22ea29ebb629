"""
Priorities and fair share: which job's task goes next, on a master and on a
worker.

Every job has a C{priority} (a whole number, 0 by default; higher runs
first).  Two places decide:

  - The master (L{PendingQueues}): its pending tasks are queued by priority
    level, then by kind, then by job.  Dispatch offers the highest level
    first; within a level the jobs take turns (round-robin), so jobs of equal
    priority on one master are given tasks at the same rate.  A level may
    fill each worker's window (L{level_free}) counting only the tasks the
    worker holds at that level or above: a job submitted with a higher
    priority while every worker is full is sent at once, on top of what the
    workers hold, and nothing is killed.
  - The worker (L{WorkerQueue}): each assignment carries its job's
    priority.  When a slot frees, the worker starts a queued task of the
    highest priority it holds; among masters with tasks of that priority,
    the one with the fewest tasks running on this worker (ties: the one
    served least recently).  A worker serving several masters thus shares
    its slots equally between those that keep work queued on it, whichever
    asked first; and a higher-priority task starts at the next slot that
    frees, within one running task's duration.

Pure data structures, no I/O and no clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from p2pexec.model import MAX_PRIORITY, ValidationError
from p2pexec.resource_use import Room
from p2pexec.resources import Request
from p2pexec.scheduler import WorkerCapacity, plan

if TYPE_CHECKING:
    from p2pexec.seats import WorkerSeat

T = TypeVar("T")
E = TypeVar("E")


def parse_priority(value: Any, what: str) -> int:
    """
    A job's priority from outside (a job file's C{[job]}, SUBMIT_JOB, the API, the CLI).

    @raise ValidationError: naming C{what} when it is not a whole number
        within +-L{MAX_PRIORITY}.
    """
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_PRIORITY:
        raise ValidationError(
            f"{what}: 'priority' must be a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {value!r}"
        )
    return value


def level_free(seat: WorkerSeat, held: int) -> int:
    """
    How many tasks of one priority level a worker may be given now, when it
    holds C{held} unconfirmed tasks of this master at that level or above.

    This is the one queue-depth choice of priorities: each level may fill the
    worker's window (L{WorkerSeat.window<p2pexec.seats.WorkerSeat.window>},
    whatever pacing makes it) by itself, with the same refill threshold as
    L{WorkerSeat.free<p2pexec.seats.WorkerSeat.free>}; so a higher level
    adds at most one window on top of what the lower levels hold.
    """
    window = seat.window
    free = window - held
    if free < max(1, (window - seat.info.slots) // 2):
        return 0
    return free


class JobQueue(Generic[T]):
    """
    The pending tasks of one kind and one priority level, by job: each
    L{popleft} takes the next task of the next job in turn (round-robin),
    first in, first out within a job.  What L{p2pexec.scheduler.plan} needs
    of a queue (C{popleft}, truth, length).
    """

    __slots__ = ("_job_of", "_jobs", "_order", "_size")

    def __init__(self, job_of: Callable[[T], str]) -> None:
        self._job_of = job_of
        self._jobs: dict[str, deque[T]] = {}
        self._order: deque[str] = deque()
        self._size = 0

    def _queue(self, job_id: str) -> deque[T]:
        queue = self._jobs.get(job_id)
        if queue is None:
            queue = self._jobs[job_id] = deque()
            self._order.append(job_id)
        return queue

    def append(self, job_id: str, item: T) -> None:
        """Queue C{item} of C{job_id} last in its job."""
        self._queue(job_id).append(item)
        self._size += 1

    def appendleft(self, job_id: str, item: T) -> None:
        """Queue C{item} of C{job_id} first in its job."""
        self._queue(job_id).appendleft(item)
        self._size += 1

    def extendleft(self, items: Iterable[T]) -> None:
        """Put back tasks taken by L{popleft} (as C{deque.extendleft}: each first in its job in turn)."""
        for item in items:
            self.appendleft(self._job_of(item), item)

    def popleft(self) -> T:
        """The next task of the job whose turn it is (that job then goes last)."""
        order = self._order
        job_id = order[0]
        queue = self._jobs[job_id]
        item = queue.popleft()
        self._size -= 1
        if not queue:
            order.popleft()
            del self._jobs[job_id]
        elif len(order) > 1:
            order.rotate(-1)
        return item

    def drop(self, job_id: str) -> None:
        """Forget C{job_id}'s tasks."""
        queue = self._jobs.pop(job_id, None)
        if queue is not None:
            self._size -= len(queue)
            self._order.remove(job_id)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0


def _job_of_entry(entry: tuple[str, str]) -> str:
    """A master's queue entry's job id."""
    return entry[0]


class PendingQueues:
    """
    A master's pending tasks: priority level -> kind -> L{JobQueue} of
    (job id, task id).
    """

    def __init__(self) -> None:
        self.levels: dict[int, dict[str, JobQueue[tuple[str, str]]]] = {}

    def add(self, priority: int, kind: str, job_id: str, task_id: str, front: bool = False) -> None:
        """Queue a task, last (or C{front}: first) in its job."""
        kinds = self.levels.get(priority)
        if kinds is None:
            kinds = self.levels[priority] = {}
        queue = kinds.get(kind)
        if queue is None:
            queue = kinds[kind] = JobQueue(_job_of_entry)
        if front:
            queue.appendleft(job_id, (job_id, task_id))
        else:
            queue.append(job_id, (job_id, task_id))

    def drop(self, job_id: str) -> None:
        """Take C{job_id}'s tasks out of the queues."""
        for kinds in self.levels.values():
            for queue in kinds.values():
                queue.drop(job_id)
        self.prune()

    def prune(self) -> None:
        """Forget the empty queues and levels."""
        for priority in list(self.levels):
            kinds = self.levels[priority]
            for kind in [k for k, q in kinds.items() if not q]:
                del kinds[kind]
            if not kinds:
                del self.levels[priority]

    def high_first(self) -> list[tuple[int, dict[str, JobQueue[tuple[str, str]]]]]:
        """The levels, highest priority first."""
        if len(self.levels) == 1:
            return list(self.levels.items())
        return sorted(self.levels.items(), key=lambda level: -level[0])

    def by_kind(self) -> dict[str, int]:
        """How many tasks are queued of each kind (all levels)."""
        counts: dict[str, int] = {}
        for kinds in self.levels.values():
            for kind, queue in kinds.items():
                counts[kind] = counts.get(kind, 0) + len(queue)
        return {kind: n for kind, n in counts.items() if n}

    def waiting_kinds(self, seats: dict[str, WorkerSeat]) -> frozenset[str]:
        """The kinds with queued tasks that none of the accepting C{seats} can run."""
        capable: set[str] = set()
        for seat in seats.values():
            if seat.accepting:
                capable.update(seat.info.capabilities)
        return frozenset(kind for kind in self.by_kind() if kind not in capable)

    def kind_view(self) -> Mapping[str, Sized]:
        """The tasks queued of each kind (all levels), as sized things, computed when asked (for L{p2pexec.waiting})."""
        return _KindView(self)

    def count(self) -> int:
        """How many tasks are queued."""
        return sum(len(q) for kinds in self.levels.values() for q in kinds.values())


class _KindView(Mapping[str, Sized]):
    """L{PendingQueues.kind_view}: each kind's count as a C{range} of that length."""

    def __init__(self, queues: PendingQueues) -> None:
        self._queues = queues

    def __getitem__(self, kind: str) -> Sized:
        return range(sum(len(kinds[kind]) for kinds in self._queues.levels.values() if kind in kinds))

    def __iter__(self) -> Iterator[str]:
        return iter(self._queues.by_kind())

    def __len__(self) -> int:
        return len(self._queues.by_kind())


class Held:
    """How many unconfirmed tasks each worker holds of a master, by priority level."""

    def __init__(self) -> None:
        self._by_worker: dict[str, dict[int, int]] = {}

    def change(self, worker: str, priority: int, delta: int) -> None:
        """C{worker} holds C{delta} more tasks at C{priority}."""
        levels = self._by_worker.get(worker)
        if levels is None:
            levels = self._by_worker[worker] = {}
        levels[priority] = levels.get(priority, 0) + delta

    def at_or_above(self, worker: str, priority: int) -> int:
        """How many tasks C{worker} holds at C{priority} or higher."""
        levels = self._by_worker.get(worker, {})
        return sum(n for level, n in levels.items() if level >= priority)

    def forget(self, worker: str) -> None:
        """C{worker} is gone."""
        self._by_worker.pop(worker, None)


def capacity(
    seats: dict[str, WorkerSeat], held: Held, priority: int | None, asking: bool = False
) -> list[WorkerCapacity]:
    """
    The accepting workers as the scheduler sees them, for one priority level
    (C{None}: the only level: their plain L{WorkerSeat.free<p2pexec.seats.WorkerSeat.free>});
    C{asking}: some job asks for resources, so each also says what it has
    free (L{Room}, from what it advertises less what this master's tasks there use).
    """
    return [
        WorkerCapacity(
            name=name,
            capabilities=frozenset(seat.info.capabilities),
            free=seat.free if priority is None else level_free(seat, held.at_or_above(name, priority)),
            room=Room.of(seat.info.resources, seat.used) if asking else None,
        )
        for name, seat in seats.items()
        if seat.accepting
    ]


Entry = tuple[str, str]
"""A master's queue entry: (job id, task id)."""


def plan_levels(
    queues: PendingQueues,
    seats: dict[str, WorkerSeat],
    held: Held,
    request_of: Callable[[Entry], Request | None] | None,
    hand_out: Callable[[dict[str, list[Entry]]], None],
    pinned: Mapping[int, Mapping[tuple[str, str], deque[Entry]]] | None = None,
) -> tuple[list[str], list[tuple[Entry, str]], list[tuple[str, str]]]:
    """
    One dispatch round of a master: plan each priority level, highest
    first, and C{hand_out} its tasks before the next level is planned, so
    that the next one sees the slots and resources (C{seat.used}) they took.
    Each level may fill a window of its own (L{level_free}).  C{request_of}
    (when some job asks for resources) makes the plan check what fits
    (L{WorkerCapacity.fits}).  C{pinned}: the queues of tasks that run on
    one node only (L{p2pexec.placement.PinnedQueues.levels}), by level then
    (kind, node); each level's are served first at that level.

    @return: the kinds no accepting worker runs, the tasks no live node
        could hold even idle, each with what is missing
        (L{Plan.unschedulable<p2pexec.scheduler.Plan>}, C{unfit}), and the
        (kind, node) pinned queues whose node is absent or lacks the kind.
    """
    if pinned:
        priorities = sorted(set(queues.levels) | set(pinned), reverse=True)
        levels = [(priority, queues.levels.get(priority, {})) for priority in priorities]
    else:
        levels = queues.high_first()
    unschedulable: list[str] = []
    unfit: list[tuple[Entry, str]] = []
    absent: list[tuple[str, str]] = []
    for priority, kinds in levels:
        level = None if len(levels) == 1 else priority
        pins = pinned.get(priority) if pinned else None
        planned = plan(kinds, capacity(seats, held, level, request_of is not None), request_of, pins)
        unschedulable.extend(kind for kind in planned.unschedulable if kind not in unschedulable)
        unfit.extend(planned.unfit)
        absent.extend(key for key in planned.absent if key not in absent)
        hand_out(planned.assignments)
    queues.prune()
    return unschedulable, unfit, absent


class WorkerQueue(Generic[E]):
    """
    A worker's queued attempts, started highest priority first, then by the
    master with the fewest running here (ties: the one served least
    recently), first in, first out within one master and priority.

    @param group: an attempt's master (its key).
    @param priority: an attempt's priority.
    @param running: how many attempts of a master run here now.
    """

    def __init__(
        self, group: Callable[[E], Hashable], priority: Callable[[E], int], running: Callable[[Any], int]
    ) -> None:
        self._group = group
        self._priority = priority
        self._running = running
        self._queues: dict[tuple[int, Hashable], deque[E]] = {}
        self._served: dict[Hashable, int] = {}
        self._turns = itertools.count()
        self._size = 0

    def append(self, entry: E) -> None:
        """Queue C{entry} last among its master's at its priority."""
        key = (self._priority(entry), self._group(entry))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(entry)
        self._size += 1

    def popleft(self) -> E:
        """The attempt to start next (see the class)."""
        queues = self._queues
        if len(queues) == 1:
            key = next(iter(queues))
        else:
            top = max(level for level, _ in queues)
            running, served = self._running, self._served
            key = min(
                (k for k in queues if k[0] == top),
                key=lambda k: (running(k[1]), served.get(k[1], -1)),
            )
        queue = queues[key]
        entry = queue.popleft()
        if not queue:
            del queues[key]
        self._served[key[1]] = next(self._turns)
        self._size -= 1
        return entry

    def take(self, fits: Callable[[E], bool], limit: int) -> E | None:
        """
        The first attempt C{fits} accepts, in the order L{popleft} would
        start them (so the same one when it fits), looking at C{limit} at
        most; C{None} when none does.  For a worker whose tasks ask for
        resources (L{p2pexec.resource_use.Pool.start_next}): one that does not
        fit now waits while those behind it that do start.
        """
        queues = self._queues
        if len(queues) == 1:
            keys = list(queues)
        else:
            running, served = self._running, self._served
            keys = sorted(queues, key=lambda k: (-k[0], running(k[1]), served.get(k[1], -1)))
        seen = 0
        for key in keys:
            queue = queues[key]
            for index, entry in enumerate(queue):
                if seen >= limit:
                    return None
                seen += 1
                if fits(entry):
                    del queue[index]
                    if not queue:
                        del queues[key]
                    self._served[key[1]] = next(self._turns)
                    self._size -= 1
                    return entry
        return None

    def keep(self, wanted: Callable[[E], bool]) -> None:
        """Keep only the attempts C{wanted} says to (the others left the queue)."""
        for key in list(self._queues):
            kept = deque(entry for entry in self._queues[key] if wanted(entry))
            self._size -= len(self._queues[key]) - len(kept)
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        live = {group for _, group in self._queues}
        for group in [g for g in self._served if g not in live]:
            del self._served[group]

    def __iter__(self) -> Iterator[E]:
        for queue in list(self._queues.values()):
            yield from queue

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0


def master_of(entry: Any) -> Hashable:
    """A worker's queued attempt's master: the key of the sink its result goes to (name, instance)."""
    return entry.sink.key


def priority_of(entry: Any) -> int:
    """A worker's queued attempt's priority: its assignment's."""
    return entry.assignment.priority
