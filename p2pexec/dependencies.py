"""
Dependencies between the tasks of a job (C{after = ["a", "b"]}): checking
them when a job is loaded, and holding each task back on its master until
the tasks it runs after succeeded.

A task starts only once every task it names in C{after} succeeded.  If one
of them ends otherwise (failed, timed out, an error, quarantined; after its
retries), the task ends as C{skipped}, with an error naming that task, and so
do its own dependents, transitively.  A cancelled job's tasks stay cancelled.

Pure book-keeping over a job's records, no I/O: L{check} runs where a job is
loaded (L{p2pexec.jobfile.parse_job}: job files, SUBMIT_JOB, the HTTP API,
C{p2pexec run}); L{Gate} is the master's (L{p2pexec.master.Master}).  The
gate holds no state of its own that is not derived from the records, so a
master restarted from its journal, or a successor rebuilding the job from its
replicated record (both keep each task's C{after} in its spec), rebuilds it
from the tasks' states and the order holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from p2pexec.model import CANCELLED, SKIPPED, TaskResult, TaskSpec, ValidationError
from p2pexec.task_states import TaskEvent, TaskState

if TYPE_CHECKING:
    from p2pexec.job import Job, TaskRecord
    from p2pexec.master import Master

MAX_NAMED = 10
"""An error lists at most this many unknown ids or tasks of a cycle."""


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_NAMED])
    if len(ids) > MAX_NAMED:
        shown += f" and {len(ids) - MAX_NAMED} more"
    return shown


def check(specs: Sequence[TaskSpec]) -> None:
    """
    Refuse a job whose C{after} lists name unknown tasks or make a cycle.

    @raise ValidationError: naming the task and the unknown ids, or the
        tasks of one cycle, in its order.
    """
    if not any(spec.after for spec in specs):
        return
    known = {spec.id for spec in specs}
    for spec in specs:
        if spec.id in spec.after:
            raise ValidationError(f"task {spec.id!r}: 'after' names the task itself")
        unknown = [other for other in spec.after if other not in known]
        if unknown:
            raise ValidationError(f"task {spec.id!r}: 'after' names no task of the job: {_names(unknown)}")
    cycle = find_cycle({spec.id: spec.after for spec in specs})
    if cycle:
        raise ValidationError(
            f"tasks {_names(cycle)} wait for each other in a cycle through 'after' "
            f"({' -> '.join(cycle[:MAX_NAMED])} -> {cycle[0]}{' ...' if len(cycle) > MAX_NAMED else ''})"
        )


def find_cycle(after: dict[str, tuple[str, ...]]) -> list[str]:
    """
    One cycle of the graph (task -> the tasks it runs after), as its tasks in
    order (each runs after the next, the last after the first), or C{[]}.
    Iterative, so that a chain of any length is checked.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(after, white)
    for root in after:
        if colour[root] != white:
            continue
        colour[root] = grey
        path = [root]
        stack = [iter(after[root])]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                colour[path.pop()] = black
                stack.pop()
            elif colour[following] == grey:
                return path[path.index(following) :]
            elif colour[following] == white:
                colour[following] = grey
                path.append(following)
                stack.append(iter(after[following]))
    return []


class Gate:
    """
    The tasks of a master's jobs that wait for others (before they are
    queued), rebuilt from a job's records the first time it is seen.

    @ivar _waiting: per job, each waiting task's unmet dependencies; a job
        without dependencies is not in it (nothing to hold back).
    @ivar _dependents: per job, each task's waiting dependents.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, dict[str, set[str]]] = {}
        self._dependents: dict[str, dict[str, list[str]]] = {}
        self._seen: set[str] = set()

    def _track(self, job: Job) -> list[tuple[str, str]]:
        """Build C{job}'s waiting tasks from its records; return those to skip at once (task, why)."""
        self._seen.add(job.id)
        tasks = job.tasks
        if not any(record.spec.after for record in tasks.values()):
            return []
        waiting: dict[str, set[str]] = {}
        dependents: dict[str, list[str]] = {}
        failed: list[TaskRecord] = []
        for task_id, record in tasks.items():
            if record.state is not TaskState.PENDING or not record.spec.after:
                continue
            unmet = set()
            for other in record.spec.after:
                done = tasks[other]
                if done.state is not TaskState.DONE or done.result is None:
                    unmet.add(other)
                elif not done.result.succeeded:
                    unmet.add(other)
                    failed.append(done)
            if unmet:
                waiting[task_id] = unmet
                for other in unmet:
                    dependents.setdefault(other, []).append(task_id)
        self._waiting[job.id] = waiting
        self._dependents[job.id] = dependents
        skips: list[tuple[str, str]] = []
        for record in failed:
            skips.extend(self._cascade(job.id, record.spec.id, _failed_reason(record)))
        return skips

    def admit(self, job: Job, task_ids: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """
        Of C{task_ids} (pending tasks of C{job} to queue), those to queue
        now; the others wait for the tasks they run after.

        @return: (the ids to queue, in order; (task, why) of the tasks to
            skip at once: their dependencies ended without success before
            this master took up the job, e.g. across a restart).
        """
        skips = [] if job.id in self._seen else self._track(job)
        waiting = self._waiting.get(job.id)
        if not waiting:
            return (task_ids if isinstance(task_ids, list) else list(task_ids)), skips
        skipped = {task for task, _ in skips}
        return [t for t in task_ids if t not in waiting and t not in skipped], skips

    def finished(self, job: Job, record: TaskRecord) -> tuple[list[str], list[tuple[str, str]]]:
        """
        C{record} has its final result: the tasks of C{job} now free to
        queue, and those to skip, (task, why), transitively, if it did not
        succeed (but for a cancellation: a cancelled job's tasks are all
        cancelled anyway).
        """
        if job.id not in self._seen:
            self._track(job)
        dependents = self._dependents.get(job.id)
        if not dependents or record.spec.id not in dependents:
            return [], []
        result = record.result
        if result is None or result.status == CANCELLED:
            return [], []
        if not result.succeeded:
            return [], self._cascade(job.id, record.spec.id, _failed_reason(record))
        waiting = self._waiting[job.id]
        ready = []
        for task in dependents.pop(record.spec.id):
            unmet = waiting.get(task)
            if unmet is None:
                continue
            unmet.discard(record.spec.id)
            if not unmet:
                del waiting[task]
                ready.append(task)
        return ready, []

    def _cascade(self, job_id: str, failed: str, why: str) -> list[tuple[str, str]]:
        """Every waiting task that runs after C{failed}, transitively, with why it is skipped (breadth first)."""
        waiting, dependents = self._waiting[job_id], self._dependents[job_id]
        skips: list[tuple[str, str]] = []
        todo = deque([(failed, why)])
        while todo:
            task, cause = todo.popleft()
            for dependent in dependents.pop(task, ()):
                if waiting.pop(dependent, None) is None:
                    continue
                reason = f"skipped: it runs after task {task!r}, which {cause}"
                skips.append((dependent, reason))
                todo.append((dependent, "was skipped"))
        return skips

    def waiting(self, job_id: str) -> int:
        """How many tasks of C{job_id} wait for others."""
        return len(self._waiting.get(job_id, ()))

    def forget(self, job_id: str) -> None:
        """C{job_id} ended or left this master."""
        self._waiting.pop(job_id, None)
        self._dependents.pop(job_id, None)
        self._seen.discard(job_id)


def _failed_reason(record: TaskRecord) -> str:
    """How a task that ended without success ended, for its dependents' reason."""
    result = record.result
    status = result.status if result is not None else "failed"
    if status == SKIPPED:
        return "was skipped"
    return "failed" if status == "failed" else f"ended {status}"


def skipped_result(record: TaskRecord, master: str, why: str) -> TaskResult:
    """The result that ends a task skipped for C{why}: it never ran."""
    return TaskResult(
        task_id=record.spec.id, attempt=record.attempt, status=SKIPPED, node=record.worker or master, error=why
    )


def queue_tasks(master: Master, job: Job, task_ids: list[str], front: bool, skip: Iterable[tuple[str, str]]) -> None:
    """
    Queue pending tasks of C{job} on C{master} (in order, last; or C{front}:
    first; a task pinned to a node in its node's queue,
    L{p2pexec.placement.PinnedQueues}), but those that wait for others (its L{Gate}); end those to
    C{skip} (task, why), and those the gate says to skip, as skipped.
    """
    ready, skips = master._gate.admit(job, task_ids)
    skips = [*skips, *skip]
    add, tasks, priority, job_id = master._queues.add, job.tasks, job.priority, job.id
    for task_id in reversed(ready) if front else ready:
        spec = tasks[task_id].spec
        if spec.node is None:
            add(priority, spec.kind, job_id, task_id, front)
        else:  # it runs on that node only (issue 14, p2pexec.placement)
            master._pinned.add(priority, spec.kind, spec.node, [(job_id, task_id)], front)
    for task_id, why in skips:
        record = tasks[task_id]
        if record.state is TaskState.PENDING:
            result = skipped_result(record, master.me.name, why)
            master._perform(job, record, job.fire(record, TaskEvent.CANCEL, master._clock.seconds(), result))
    master.schedule_dispatch()
