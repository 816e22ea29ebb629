"""
The master side of a node: the jobs it accepted, their queues of pending
tasks by kind, and the dispatch loop that hands them to workers.

The master does no I/O itself.  It is given an L{IWorkerLink} to reach the
workers and an L{IJobObserver} to report finished jobs, and it coalesces
dispatching to once per reactor turn through the injected clock.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Iterable, Optional, Protocol

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec import scheduler
from p2pexec.job import Job, Verdict
from p2pexec.log import MAX_IDS_IN_LOG, NodeLogger, format_ids
from p2pexec.model import Assignment, NodeInfo, TaskResult, TaskSpec

log = NodeLogger()


class IWorkerLink(Protocol):
    """How the master reaches its workers."""

    def send_assignments(self, worker: str, job: str, assignments: list[Assignment]) -> None:
        """Hand C{assignments} to C{worker}; a failure means the worker is lost."""

    def send_complete(self, worker: str, job: Job) -> None:
        """Tell C{worker} that C{job} has finished."""


class IJobObserver(Protocol):
    """Who hears about finished jobs."""

    def job_finished(self, job: Job) -> None:
        """C{job} has a result for every task."""


QUEUE_HORIZON = 0.05
"""Seconds of work each worker is given beyond its slots, so that the next
batch is at hand when a slot frees (see L{_WorkerSeat.window})."""

WAITING_GRACE = 3.0
"""Seconds a kind may lack a capable node before the master warns about it."""

MAX_PREFETCH = 2000
"""The most tasks queued on a worker beyond its slots."""


@attr.s(auto_attribs=True)
class _WorkerSeat:
    """
    A worker as the master sees it.

    @ivar mean_duration: a moving average of its tasks' run times, once known.
    """

    info: NodeInfo
    outstanding: int = 0
    accepting: bool = True
    mean_duration: Optional[float] = None

    @property
    def window(self) -> int:
        """
        How many unconfirmed tasks it may hold: its slots, plus enough queued
        work for L{QUEUE_HORIZON} seconds at the rate it has been finishing
        tasks (its slots again, until that rate is known).  Instant tasks get
        a deep queue and travel in big batches; long tasks get a shallow one,
        so that no worker hoards work another could start.
        """
        slots = self.info.slots
        if self.mean_duration is None:
            return 2 * slots
        rate = slots / max(self.mean_duration, 1e-5)
        return slots + max(1, min(MAX_PREFETCH, int(rate * QUEUE_HORIZON)))

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

    def record_duration(self, seconds: float) -> None:
        """Fold one finished task's run time into L{mean_duration}."""
        if self.mean_duration is None:
            self.mean_duration = seconds
        else:
            self.mean_duration += 0.2 * (seconds - self.mean_duration)


class Master:
    """
    Tracks this node's jobs and keeps its workers fed.

    Each worker is given at most L{_WorkerSeat.window} unconfirmed tasks, so
    it always has the next batch at hand when a slot frees, without one
    worker hoarding the queue.

    @ivar jobs: every job accepted by this node, by id.
    @ivar assignments_sent: how many task attempts were handed out in all.
    """

    def __init__(
        self,
        me: NodeInfo,
        link: IWorkerLink,
        observer: IJobObserver,
        clock: IReactorTime,
    ) -> None:
        self.me = me
        self._link = link
        self._observer = observer
        self._clock = clock
        self.jobs: dict[str, Job] = {}
        self._pending: dict[str, deque[tuple[str, str]]] = {}
        self._workers: dict[str, _WorkerSeat] = {}
        self._dispatch_call: Optional[IDelayedCall] = None
        self._waiting_since: dict[str, float] = {}
        self._waiting_logged: set[str] = set()
        self._job_numbers = itertools.count(1)
        self.assignments_sent = 0
        self.dispatching = True

    # -- jobs -----------------------------------------------------------------

    def new_job_id(self) -> str:
        """A job id unique to this master process."""
        return f"{self.me.name}-{self.me.instance[:8]}-{next(self._job_numbers)}"

    def submit(self, tasks: Iterable[TaskSpec], job_id: Optional[str] = None) -> Job:
        """Accept a job and queue its tasks."""
        job = Job(job_id or self.new_job_id(), tasks, started=self._clock.seconds())
        self.jobs[job.id] = job
        kinds: dict[str, int] = {}
        for task_id, record in job.tasks.items():
            self._pending.setdefault(record.spec.kind, deque()).append((job.id, task_id))
            kinds[record.spec.kind] = kinds.get(record.spec.kind, 0) + 1
        log.info(
            "Node {name} is master of job {job}: {count} task(s) of kind(s) {kinds}",
            name=self.me.name,
            job=job.id,
            count=len(job.tasks),
            kinds=", ".join(f"{k} ({n})" for k, n in sorted(kinds.items())),
        )
        if not job.tasks:
            self._finish(job)
        self.schedule_dispatch()
        return job

    def unfinished(self) -> list[Job]:
        """The jobs that still have tasks without a result."""
        return [job for job in self.jobs.values() if job.finished is None]

    # -- workers ------------------------------------------------------------

    def worker_joined(self, info: NodeInfo) -> None:
        """C{info} can take tasks now (a handshake completed)."""
        seat = self._workers.get(info.name)
        if seat is None:
            self._workers[info.name] = _WorkerSeat(info=info)
        else:
            seat.info, seat.accepting = info, True
        self.schedule_dispatch()

    def refused(self, worker: str, job_id: str, attempts: list[tuple[str, int]], why: str, usable: bool) -> None:
        """
        C{worker} refused a batch of assignments: put those tasks back.  If
        it is not C{usable} (it is leaving, or cannot run what we thought),
        give it nothing more until it joins again; the tasks it already runs
        stay its own.
        """
        job = self.jobs.get(job_id)
        seat = self._workers.get(worker)
        if seat is not None and not usable:
            seat.accepting = False
        if job is None:
            return
        returned = [task_id for task_id, attempt in attempts if job.take_back(task_id, attempt, worker)]
        if seat is not None:
            seat.outstanding = max(0, seat.outstanding - len(returned))
        if returned:
            log.warn(
                "Worker {worker} refused {count} task(s) of job {job}: {why}; they go back in the queue",
                worker=worker,
                count=len(returned),
                job=job_id,
                why=why,
            )
            self._requeue(job, returned)
        self.schedule_dispatch()

    def _requeue(self, job: Job, task_ids: list[str]) -> None:
        for task_id in reversed(task_ids):
            kind = job.tasks[task_id].spec.kind
            self._pending.setdefault(kind, deque()).appendleft((job.id, task_id))
        self.schedule_dispatch()

    def worker_lost(self, name: str, why: str) -> None:
        """
        C{name} is gone: put its unconfirmed tasks back in the queue so that
        they run elsewhere (this is where delivery becomes at-least-once).
        """
        seat = self._workers.pop(name, None)
        if seat is None:
            return
        for job in self.unfinished():
            returned = job.put_back(name)
            if returned:
                self._requeue(job, returned)
                log.warn(
                    "Node {name} put {count} unconfirmed task(s) of job {job} back in the queue: "
                    "worker {worker} {why}",
                    name=self.me.name,
                    count=len(returned),
                    job=job.id,
                    worker=name,
                    why=why,
                )
        self.schedule_dispatch()

    # -- results --------------------------------------------------------------

    def confirm(self, job_id: str, results: list[TaskResult], sender: str) -> tuple[int, int]:
        """
        Apply a batch of results reported by C{sender}.

        @return: (applied, stale).
        @raise KeyError: if C{job_id} is not a job of this master.
        """
        job = self.jobs[job_id]
        applied = stale = 0
        seat = self._workers.get(sender)
        now = self._clock.seconds()
        returned: list[str] = []
        confirmed: list[str] = []
        for result in results:
            verdict = job.apply(result, now, sender)
            if verdict is Verdict.APPLIED or verdict is Verdict.RETURNED:
                if seat is not None and seat.outstanding > 0:
                    seat.outstanding -= 1
            if verdict is Verdict.RETURNED:
                # Only a leaving worker returns tasks: give it nothing more.
                if seat is not None:
                    seat.accepting = False
                returned.append(result.task_id)
                continue
            if verdict is Verdict.APPLIED:
                applied += 1
                confirmed.append(result.task_id)
                if seat is not None:
                    seat.record_duration(result.duration)
                if not result.succeeded:
                    log.warn(
                        "Task {task} of job {job} {status} on {worker}: {detail}",
                        task=result.task_id,
                        job=job_id,
                        status=result.status,
                        worker=sender,
                        detail=result.error or f"exit code {result.exit_code}",
                    )
            else:
                stale += 1
                log.info(
                    "Dropped a stale confirmation for {task} (attempt {attempt}) from {worker}",
                    task=result.task_id,
                    attempt=result.attempt,
                    worker=sender,
                    job=job_id,
                )
        if returned:
            self._requeue(job, returned)
        self._log_confirmed(job_id, confirmed, sender)
        if job.done and applied:
            # After this turn, so that the answer to the last confirmation
            # goes out before the results file is written.
            self._clock.callLater(0, self._finish, job)
        self.schedule_dispatch()
        return applied, stale

    def _log_confirmed(self, job_id: str, confirmed: list[str], sender: str) -> None:
        """One line per task, as the original; one line per batch past L{MAX_IDS_IN_LOG}."""
        if len(confirmed) <= MAX_IDS_IN_LOG:
            for task_id in confirmed:
                log.info(
                    "Master received confirmation for {task} from {worker}",
                    task=task_id,
                    worker=sender,
                    job=job_id,
                )
        else:
            log.info(
                "Master received confirmations for {count} tasks from {worker}: {ids}",
                count=len(confirmed),
                worker=sender,
                ids=format_ids(confirmed),
                job=job_id,
            )

    def _finish(self, job: Job) -> None:
        """
        Tell the workers that took part, let the observer write the results,
        then log the summary: once the summary is in the log, the results
        file is complete.
        """
        now = self._clock.seconds()
        if job.finished is None:
            job.finished = now
        for worker in sorted(job.participants - {self.me.name}):
            self._link.send_complete(worker, job)
        self._observer.job_finished(job)
        log.info(
            "Job {job} finished: {succeeded} succeeded, {failed} failed, {elapsed:.3f}s elapsed",
            job=job.id,
            succeeded=job.succeeded,
            failed=job.failed,
            elapsed=job.elapsed(now),
        )

    # -- dispatch -----------------------------------------------------------

    def schedule_dispatch(self) -> None:
        """Dispatch once at the end of this reactor turn."""
        if self._dispatch_call is None and self.dispatching:
            self._dispatch_call = self._clock.callLater(0, self.dispatch)

    def stop_dispatching(self) -> None:
        """Hand out no more tasks (the node is leaving)."""
        self.dispatching = False
        if self._dispatch_call is not None and self._dispatch_call.active():
            self._dispatch_call.cancel()
        self._dispatch_call = None

    def dispatch(self) -> None:
        """Give pending tasks to workers with free capacity."""
        self._dispatch_call = None
        if not self.dispatching:
            return
        capacity = [
            scheduler.WorkerCapacity(
                name=name,
                capabilities=frozenset(seat.info.capabilities),
                free=seat.free,
            )
            for name, seat in self._workers.items()
            if seat.accepting
        ]
        planned = scheduler.plan(self._pending, capacity)
        self._note_waiting(planned.unschedulable)
        for worker, entries in planned.assignments.items():
            by_job: dict[str, list[Assignment]] = {}
            for job_id, task_id in entries:
                job = self.jobs[job_id]
                if not job.is_pending(task_id):
                    continue
                by_job.setdefault(job_id, []).append(job.assign(task_id, worker))
            seat = self._workers[worker]
            for job_id, assignments in by_job.items():
                seat.outstanding += len(assignments)
                self.assignments_sent += len(assignments)
                self._link.send_assignments(worker, job_id, assignments)
        for kind in [k for k, q in self._pending.items() if not q]:
            del self._pending[kind]

    def _note_waiting(self, unschedulable: list[str]) -> None:
        """
        Warn once about each kind that no connected node can run, after
        L{WAITING_GRACE} seconds: at start-up workers are still connecting.
        """
        now = self._clock.seconds()
        for kind in list(self._waiting_since):
            if kind not in unschedulable:
                del self._waiting_since[kind]
                self._waiting_logged.discard(kind)
        for kind in unschedulable:
            since = self._waiting_since.setdefault(kind, now)
            if kind in self._waiting_logged:
                continue
            if now - since >= WAITING_GRACE:
                self._waiting_logged.add(kind)
                log.warn(
                    "Node {name} has {count} task(s) of kind {kind!r} waiting: no connected node "
                    "has capability {kind!r}; they will be assigned when one joins",
                    name=self.me.name,
                    count=len(self._pending[kind]),
                    kind=kind,
                )
            elif since == now:
                self._clock.callLater(WAITING_GRACE, self.schedule_dispatch)

    def workers_with_work(self) -> set[str]:
        """Names of the workers holding unconfirmed tasks of this master."""
        return {name for name, seat in self._workers.items() if seat.outstanding > 0 and name != self.me.name}

    def pending_count(self) -> int:
        """How many tasks wait for a worker."""
        return sum(len(q) for q in self._pending.values())


def random_instance() -> str:
    """A fresh per-process instance id."""
    return os.urandom(8).hex()
