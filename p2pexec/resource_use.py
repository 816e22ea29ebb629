"""
How resources are used: the room a master sees on each worker (L{Room}),
the worker's own pool that never starts more than it has and gives each
GPU task its own devices (L{Pool}), and the master's one log line about
tasks that no live node can ever run (L{WaitingFit}).

The values themselves are L{p2pexec.resources}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attr

from p2pexec import commands
from p2pexec.log import MAX_IDS_IN_LOG, NodeLogger
from p2pexec.model import Assignment
from p2pexec.resources import NodeResources, Request
from p2pexec.task_states import TaskState

if TYPE_CHECKING:
    from p2pexec.job import Job

log = NodeLogger(namespace="p2pexec.master")

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "P2PEXEC_GPUS")
"""The environment variables that name a GPU task's devices."""

SCAN_LIMIT = 256
"""The most queued tasks a worker looks past for one that fits when the first does not."""


@attr.s(auto_attribs=True, slots=True)
class Usage:
    """What tasks hold of a node's resources (the GPU count, not which devices)."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0
    named: dict[str, float] = attr.Factory(dict)

    def fits(self, total: NodeResources, request: Request) -> bool:
        """Whether C{request} fits in what C{total} has beyond this."""
        return (
            self.cpus + request.cpus <= total.cpus + 1e-9
            and self.memory + request.memory <= total.memory
            and self.gpus + request.gpus <= len(total.gpus)
            and all(self.named.get(name, 0.0) + n <= total.has(name) + 1e-9 for name, n in request.named)
        )

    def add(self, request: Request, sign: int = 1) -> None:
        """Count C{request} in (or, with C{sign} -1, out)."""
        self.cpus += sign * request.cpus
        self.memory += sign * request.memory
        self.gpus += sign * request.gpus
        for name, n in request.named:
            self.named[name] = self.named.get(name, 0.0) + sign * n

    def copy(self) -> Usage:
        """A copy to change without changing this one."""
        return Usage(self.cpus, self.memory, self.gpus, dict(self.named))


@attr.s(auto_attribs=True, slots=True)
class Room:
    """
    What a worker has free for one master's tasks, during one scheduling round.

    @ivar total: what it advertised.
    @ivar used: what this master's unconfirmed tasks there hold (a copy, taken from as tasks are placed).
    """

    total: NodeResources
    used: Usage

    @classmethod
    def of(cls, total: NodeResources | None, used: Usage) -> Room | None:
        """The room on a worker that advertised C{total} (none if it advertised nothing)."""
        return None if total is None else cls(total, used.copy())

    def fits(self, request: Request) -> bool:
        """Whether C{request} fits in what is free."""
        return self.used.fits(self.total, request)

    def take(self, request: Request) -> None:
        """Count C{request} as placed here."""
        self.used.add(request)


class _Queued(Protocol):
    """A worker's queued attempt, as the pool sees it."""

    assignment: Assignment
    key: Any


class _Takes(Protocol):
    """A queue that gives the first attempt a test accepts (L{WorkerQueue.take<p2pexec.fairshare.WorkerQueue.take>})."""

    def take(self, fits: Callable[[Any], bool], limit: int) -> Any:
        """The first queued attempt C{fits} accepts, among the first C{limit}, or C{None}."""


def _take_first(queue: deque[Any], fits: Callable[[Any], bool]) -> Any:
    """L{_Takes.take} for a plain C{deque}."""
    for index, entry in enumerate(queue):
        if index >= SCAN_LIMIT:
            return None
        if fits(entry):
            del queue[index]
            return entry
    return None


class Pool:
    """
    A worker's resources: what its running tasks hold, and which GPU
    devices are free.  Tasks that ask for nothing always fit.
    """

    def __init__(self, name: str, total: NodeResources | None) -> None:
        self._name = name
        self.total = total
        self.used = Usage()
        self._free_gpus: list[str] = list(total.gpus) if total is not None else []
        self._held: dict[Hashable, tuple[Request, tuple[str, ...]]] = {}

    def check(self, assignments: Sequence[Assignment]) -> None:
        """
        Refuse a batch with a task that could never run here, even alone.

        @raise commands.DoesNotFit: naming the tasks, what they ask and what this node has.
        """
        total = self.total
        too_big = [
            a.task
            for a in assignments
            if a.task.request is not None and (total is None or not total.holds(a.task.request))
        ]
        if too_big:
            has = "only slots" if total is None else total.describe()
            asks = "; ".join(f"{t.id} needs {t.request.describe()}" for t in too_big[:5] if t.request is not None)
            raise commands.DoesNotFit(f"node {self._name} has {has}, and {asks}")

    def start_next(self, queue: deque[Any] | _Takes) -> Any:
        """
        Take from C{queue} (a worker's L{WorkerQueue<p2pexec.fairshare.WorkerQueue>},
        or a C{deque} in its order) the first attempt that fits now (of the first
        L{SCAN_LIMIT}), hold what it asks, and give a GPU task its devices
        in its environment; C{None} when none fits.
        """
        if isinstance(queue, deque):
            entry = _take_first(queue, self._fits_now)
        else:
            entry = queue.take(self._fits_now, SCAN_LIMIT)
        if entry is not None and entry.assignment.task.request is not None:
            self._hold(entry, entry.assignment.task.request)
        return entry

    def _fits_now(self, entry: _Queued) -> bool:
        """Whether a queued attempt fits in what is free now (one that asks for nothing always does)."""
        request = entry.assignment.task.request
        return request is None or self.total is None or self.used.fits(self.total, request)

    def _hold(self, entry: _Queued, request: Request) -> None:
        devices = tuple(self._free_gpus[: request.gpus])
        del self._free_gpus[: request.gpus]
        self.used.add(request)
        self._held[entry.key] = (request, devices)
        if devices:
            entry.assignment = with_devices(entry.assignment, devices)

    def release(self, key: Hashable) -> None:
        """The attempt C{key} no longer runs: what it held is free again."""
        if not self._held:
            return
        held = self._held.pop(key, None)
        if held is not None:
            request, devices = held
            self.used.add(request, -1)
            self._free_gpus.extend(devices)
            if self.total is not None:
                order = {device: i for i, device in enumerate(self.total.gpus)}
                self._free_gpus.sort(key=order.__getitem__)

    def devices_in_use(self) -> dict[Hashable, tuple[str, ...]]:
        """The GPU devices each running attempt holds."""
        return {key: devices for key, (_, devices) in self._held.items() if devices}


def with_devices(assignment: Assignment, devices: tuple[str, ...]) -> Assignment:
    """C{assignment} with C{CUDA_VISIBLE_DEVICES} and C{P2PEXEC_GPUS} naming C{devices} in its task's environment."""
    task = assignment.task
    names = ",".join(devices)
    env = tuple(pair for pair in task.env if pair[0] not in GPU_VARIABLES)
    env += tuple((variable, names) for variable in GPU_VARIABLES)
    return attr.evolve(assignment, task=attr.evolve(task, env=env))


class QueuedTasks:
    """A master's queue entries (job id, task id) as the resource checks see them."""

    def __init__(self, jobs: Mapping[str, Job]) -> None:
        self._jobs = jobs

    def request_of(self, entry: tuple[str, str]) -> Request | None:
        """What a queued task asks for beyond its slot (see L{p2pexec.resources})."""
        job = self._jobs.get(entry[0])
        return None if job is None else job.tasks[entry[1]].spec.request

    def still_pending(self, entry: tuple[str, str]) -> bool:
        """Whether a queued task has not gone to a worker yet."""
        job = self._jobs.get(entry[0])
        return job is not None and job.tasks[entry[1]].state is TaskState.PENDING


class WaitingFit:
    """
    The master's tasks that no live node can ever run (what they ask is
    more than any capable node has): one log line names them and what is
    missing when they start to wait; nothing more until others do.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.noted: set[Hashable] = set()
        """The entries already named in a log line, while they wait."""

    def note(self, unfit: Iterable[tuple[Hashable, str]], still_waiting: Callable[[Any], bool]) -> None:
        """
        After a scheduling round: C{unfit} are (queue entry, why) for each
        task that fits no live node; C{still_waiting} says whether an entry
        noted before still waits (the others are forgotten).
        """
        if self.noted:
            self.noted = {entry for entry in self.noted if still_waiting(entry)}
        fresh: dict[str, list[Hashable]] = {}
        for entry, why in unfit:
            if entry not in self.noted:
                self.noted.add(entry)
                fresh.setdefault(why, []).append(entry)
        if fresh:
            log.warn(
                "Node {name} has task(s) that no live node can run; they wait until one joins: {what}",
                name=self._name,
                what="; ".join(f"{_labels(entries)} {why}" for why, entries in fresh.items()),
            )


def _labels(entries: list[Hashable]) -> str:
    """Queue entries (job, task) as a log line names them: C{task g1, g2 of job j}."""
    by_job: dict[str, list[str]] = {}
    for entry in entries:
        job, task = entry if isinstance(entry, tuple) and len(entry) == 2 else ("?", entry)
        by_job.setdefault(str(job), []).append(str(task))
    parts = []
    for job, tasks in by_job.items():
        shown = ", ".join(tasks[:MAX_IDS_IN_LOG]) + (
            f" (+{len(tasks) - MAX_IDS_IN_LOG} more)" if len(tasks) > MAX_IDS_IN_LOG else ""
        )
        parts.append(f"task{'s' if len(tasks) > 1 else ''} {shown} of job {job}")
    return ", ".join(parts)
