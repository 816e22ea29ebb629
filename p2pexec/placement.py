"""
Where a task runs, when its job says (issue 14): a task with C{node = "b1"}
runs on node b1 only, and one with C{all_nodes = true} once on every live
node that runs its kind.

L{expand_all_nodes} turns each C{all_nodes} task into one task per capable
worker connected to the master when it accepts the job, named C{ID@NODE}
and pinned to that node.  L{PinnedQueues} holds the master's queues of
pinned tasks, by priority level and (kind, node), beside its queues by
kind (L{p2pexec.fairshare.PendingQueues}); at each priority level the
scheduler serves them first, each by its node alone (see
L{p2pexec.scheduler.plan} and L{p2pexec.fairshare.plan_levels}),
and says once, in one log line, when such tasks wait for their node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

import attr
from twisted.internet.interfaces import IReactorTime

from p2pexec.log import NodeLogger, format_ids
from p2pexec.model import TaskSpec, ValidationError
from p2pexec.waiting import WAITING_GRACE

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

Entry = tuple[str, str]
"""A queue entry: (job id, task id)."""


def expand_all_nodes(
    job_id: str, specs: list[TaskSpec], workers: Mapping[str, frozenset[str] | tuple[str, ...]]
) -> list[TaskSpec]:
    """
    C{specs}, each C{all_nodes} task replaced by one copy per worker of
    C{workers} (name to capabilities) that runs its kind, in name order: id
    C{ID@NODE}, pinned to that node.  With no such worker, the task stays one
    task of its kind (it waits, as any task nobody runs, and runs once, on
    the first node that can), and the master says so.  A task that runs
    after an C{all_nodes} task (its C{after}) runs after all its copies.

    @raise ValidationError: if a copy's id is already another task's.
    """
    if not any(spec.all_nodes for spec in specs):
        return specs
    ids = {spec.id for spec in specs}
    out: list[TaskSpec] = []
    copies: dict[str, list[str]] = {}
    for spec in specs:
        if not spec.all_nodes:
            out.append(spec)
            continue
        nodes = sorted(name for name, capabilities in workers.items() if spec.kind in capabilities)
        if not nodes:
            log.warn(
                "Job {job}: no connected node runs kind {kind!r}, so task {task} (all_nodes) waits as one "
                "task and runs once, on the first node that does",
                job=job_id,
                kind=spec.kind,
                task=spec.id,
            )
            out.append(attr.evolve(spec, all_nodes=False))
            continue
        for node in nodes:
            copy = f"{spec.id}@{node}"
            if copy in ids:
                raise ValidationError(
                    f"task {spec.id!r}: its copy for node {node} would be named {copy!r}, "
                    "which another task of the job already is"
                )
            ids.add(copy)
            out.append(attr.evolve(spec, id=copy, node=node, all_nodes=False))
        copies[spec.id] = [f"{spec.id}@{node}" for node in nodes]
        log.info(
            "Job {job}: task {task} runs on every node that runs kind {kind!r}: {nodes}",
            job=job_id,
            task=spec.id,
            kind=spec.kind,
            nodes=", ".join(nodes),
        )
    if not copies:
        return out
    # A task that runs after an all_nodes task runs after all its copies (issue 15's after).
    return [
        attr.evolve(spec, after=tuple(c for other in spec.after for c in copies.get(other, [other])))
        if any(other in copies for other in spec.after)
        else spec
        for spec in out
    ]


class PinnedQueues:
    """
    A master's queues of tasks that run on one node only, by priority level
    (see L{p2pexec.fairshare}) then (kind, node), and their wait for that
    node: one warning per wait, once it lasted L{WAITING_GRACE} seconds (at
    start-up workers are still connecting).
    """

    def __init__(self, name: str, clock: IReactorTime, recheck: Callable[[], None]) -> None:
        """
        @param name: the master's node name, for the warning.
        @param clock: the monotonic clock.
        @param recheck: called once a wait's grace is over, to plan again.
        """
        self._name = name
        self._clock = clock
        self._recheck = recheck
        self.levels: dict[int, dict[tuple[str, str], deque[Entry]]] = {}
        self._since: dict[tuple[str, str], float] = {}
        self._warned: set[tuple[str, str]] = set()

    def add(self, priority: int, kind: str, node: str, entries: Iterable[Entry], front: bool = False) -> None:
        """Queue C{entries} (in order) of a job of C{priority} for C{node}: at the back, or at the front."""
        queue = self.levels.setdefault(priority, {}).setdefault((kind, node), deque())
        if front:
            queue.extendleft(reversed(list(entries)))
        else:
            queue.extend(entries)

    def unqueue(self, job_id: str) -> None:
        """Take C{job_id}'s tasks out of the queues."""
        for queues in self.levels.values():
            for key in list(queues):
                queues[key] = deque(entry for entry in queues[key] if entry[0] != job_id)
        self.drop_empty()

    def drop_empty(self) -> None:
        """Forget the queues emptied by a dispatch (and their wait, when no level has that queue left)."""
        for priority in list(self.levels):
            queues = self.levels[priority]
            for key in [key for key, queue in queues.items() if not queue]:
                del queues[key]
            if not queues:
                del self.levels[priority]
        live = {key for queues in self.levels.values() for key in queues}
        for key in [key for key in self._since if key not in live]:
            del self._since[key]
            self._warned.discard(key)

    def count(self) -> int:
        """How many pinned tasks wait for a worker."""
        return sum(len(queue) for queues in self.levels.values() for queue in queues.values())

    def waiting(self, key: tuple[str, str]) -> list[Entry]:
        """The entries queued for (kind, node) C{key}, at every level, highest first."""
        return [
            entry
            for _, queues in sorted(self.levels.items(), key=lambda level: -level[0])
            for entry in queues.get(key, ())
        ]

    def note(self, absent: list[tuple[str, str]], connected: Callable[[str], bool]) -> None:
        """
        After a dispatch: C{absent} are the (kind, node) queues whose node was
        not there to take them; C{connected} tells whether a node is connected
        (then it lacks the kind).
        """
        if not absent and not self._since:
            return
        now = self._clock.seconds()
        waiting = set(absent)
        for key in [key for key in self._since if key not in waiting]:
            del self._since[key]
            self._warned.discard(key)
        for key in absent:
            since = self._since.get(key)
            if since is None:
                self._since[key] = now
                self._clock.callLater(WAITING_GRACE, self._recheck)
            elif now - since >= WAITING_GRACE and key not in self._warned:
                self._warned.add(key)
                kind, node = key
                why = f"{node} does not run kind {kind!r}" if connected(node) else f"{node} is not connected"
                log.warn(
                    "Node {name} has {count} task(s) that run only on node {node} waiting: {why}; they run "
                    "when it can take them: {ids}",
                    name=self._name,
                    count=len(self.waiting(key)),
                    node=node,
                    why=why,
                    ids=format_ids([task_id for _, task_id in self.waiting(key)]),
                )
