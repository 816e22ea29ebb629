"""
The master side of a node: the jobs it accepted, their queues of pending
tasks by kind, and the dispatch loop that hands them to workers.

The master does no I/O itself.  It is given an L{IWorkerLink} to reach the
workers and an L{IJobObserver} to report finished jobs, and it coalesces
dispatching to once per reactor turn through the injected clock.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec import scheduler
from p2pexec.clock import WallClock
from p2pexec.interfaces import IJobObserver, IJournal, IWorkerLink
from p2pexec.job import DEFAULT_MAX_LOSSES, Job, TaskRecord
from p2pexec.journal import JournalError, NullJournal, StoredJob
from p2pexec.log import MAX_IDS_IN_LOG, NodeLogger, format_ids
from p2pexec.model import Assignment, NodeInfo, TaskResult, TaskSpec
from p2pexec.task_states import KIND, KindEvent, KindOutput, KindState, TaskEvent, TaskOutput, TaskState, from_journal

log = NodeLogger()

RECONCILE_GRACE = 10.0
"""Seconds a restarted master waits for a worker that held its tasks to
come back and say what became of them, before it runs them elsewhere."""

JOURNAL_RETRY = 5.0
"""Seconds a master whose journal cannot be written waits before trying to hand out tasks again."""

RETRY_INITIAL_DELAY = 1.0
"""Seconds before a failed task's first retry (doubling each time, plus up
to a second of jitter, at most a minute)."""


QUEUE_HORIZON = 0.05
"""Seconds of work each worker is given beyond its slots, so that the next
batch is at hand when a slot frees (see L{_WorkerSeat.window})."""

WAITING_GRACE = 3.0
"""Seconds a kind may lack a capable node before the master warns about it."""

MAX_PREFETCH = 2000
"""The most tasks queued on a worker beyond its slots."""

MAX_FINISHED_JOBS = 1000
"""Finished jobs a master keeps in memory, for their status and results; past
that the oldest are forgotten (the journal keeps them for a week)."""


@attr.s(auto_attribs=True)
class _WorkerSeat:
    """
    A worker as the master sees it.

    @ivar mean_duration: a moving average of its tasks' run times, once known.
    """

    info: NodeInfo
    outstanding: int = 0
    accepting: bool = True
    mean_duration: float | None = None

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
        """Fold one finished task's run time into L{mean_duration} (a time that is not finite is ignored)."""
        if not math.isfinite(seconds):
            return
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

    Every decision is written to the journal before the message that
    depends on it goes out (see L{p2pexec.journal}).

    Each task's state is stepped by the task machine
    (L{p2pexec.task_states.TASK}, through L{Job.fire}); what it answers
    for the master is done in one place, L{_perform}: a worker's seat
    counter (L{_WorkerSeat.outstanding}) changes only there, on
    L{TaskOutput.HOLD_SEAT} and L{TaskOutput.RELEASE_SEAT}, and a task
    waiting for its retry has its timer in L{retry_timers}.

    @ivar jobs: every job accepted by this node, by id.
    @ivar assignments_sent: how many task attempts were handed out in all.
    @ivar retries_scheduled: how many failed attempts were given a retry.
    @ivar quarantined: how many tasks were quarantined after losing their
        worker too often.
    @ivar stale_results: how many results were dropped as stale (superseded
        attempts, tasks already done, the wrong sender), in all jobs.
    """

    def __init__(
        self,
        me: NodeInfo,
        link: IWorkerLink,
        observer: IJobObserver,
        clock: IReactorTime,
        journal: IJournal | None = None,
        max_losses: int = DEFAULT_MAX_LOSSES,
        jitter: Callable[[], float] = random.random,
        wall: WallClock = time.time,
    ) -> None:
        """
        @param clock: the monotonic clock (the reactor, see L{p2pexec.clock})
            for every timer and duration.
        @param wall: the wall clock, for when jobs started and ended as
            shown to people and kept in the journal.
        """
        self.me = me
        self._link = link
        self._observer = observer
        self._clock = clock
        self._wall = wall
        self.journal: IJournal = journal if journal is not None else NullJournal()
        self._max_losses = max_losses
        self._jitter = jitter
        self._retry_delay: Callable[[int], float] | None = None
        self._in_doubt: dict[str, dict[str, list[tuple[str, int]]]] = {}
        """The attempts of tasks IN_DOUBT, by worker and job: whom to ask about what when a worker comes back."""
        self.retry_timers: dict[tuple[str, str], IDelayedCall] = {}
        """The retry timer of each task waiting for its retry (RETRY_WAIT), by (job, task)."""
        self._reconcile_call: IDelayedCall | None = None
        self.retries_scheduled = 0
        self.quarantined = 0
        self.stale_results = 0
        self._announced: set[str] = set()
        self.result_listeners: list[Callable[[TaskResult], None]] = []
        """Called with every result applied as a task's result (for metrics)."""
        self.jobs: dict[str, Job] = {}
        self._pending: dict[str, deque[tuple[str, str]]] = {}
        self._workers: dict[str, _WorkerSeat] = {}
        self._dispatch_call: IDelayedCall | None = None
        self._kinds: dict[str, KindState] = {}
        """The L{KIND} state of each kind that is not served (deleted once served again)."""
        self._waiting_since: dict[str, float] = {}
        self._job_numbers = itertools.count(1)
        self.assignments_sent = 0
        self.dispatching = True

    # -- jobs -----------------------------------------------------------------

    def new_job_id(self) -> str:
        """A job id unique to this master process."""
        return f"{self.me.name}-{self.me.instance[:8]}-{next(self._job_numbers)}"

    def submit(self, tasks: Iterable[TaskSpec], job_id: str | None = None, source: str | None = None) -> Job:
        """
        Accept a job and queue its tasks (the journal has it by the time
        L{IJournal.durable} fires).

        @param source: what the job came from, so that a restarted master
            given the same job resumes it (see L{find_unfinished}).
        """
        job = Job(
            job_id or self.new_job_id(),
            tasks,
            started=self._clock.seconds(),
            source=source,
            max_losses=self._max_losses,
            started_at=self._wall(),
        )
        self.jobs[job.id] = job
        self.journal.job_added(job)
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

    def withdraw(self, job_id: str) -> None:
        """
        Forget a job just accepted (L{submit}), before any of its tasks went
        out: its submission is refused after all (its journal could not be
        written).
        """
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        assert not job.participants, "a withdrawn job's tasks never went out"
        self.journal.withdraw(job_id)
        self._announced.discard(job_id)
        for kind in list(self._pending):
            kept = deque(entry for entry in self._pending[kind] if entry[0] != job_id)
            if kept:
                self._pending[kind] = kept
            else:
                del self._pending[kind]

    def unfinished(self) -> list[Job]:
        """The jobs that still have tasks without a result."""
        return [job for job in self.jobs.values() if job.finished is None]

    def find_unfinished(self, source: str) -> Job | None:
        """The unfinished job that came from C{source}, if there is one."""
        for job in self.unfinished():
            if job.source == source:
                return job
        return None

    def resume(self, stored: Iterable[StoredJob]) -> list[Job]:
        """
        Take up the unfinished jobs of the journal after a restart.  Finished
        tasks keep their results; pending ones are queued; the ones that were
        out on workers are asked for first (when each worker connects, or
        run again after L{RECONCILE_GRACE} seconds), since they may have
        finished meanwhile.

        A resumed job keeps its journaled start (wall clock); its elapsed
        time goes on from the wall-clock time since then, the only measure
        that spans the restart, counted as 0 if the wall clock now reads
        earlier than that start (it was stepped back meanwhile).
        """
        resumed = []
        now, wall_now = self._clock.seconds(), self._wall()
        for saved in stored:
            job = self._restore(saved, now, wall_now)
            self.jobs[job.id] = job
            resumed.append(job)
            in_doubt = 0
            for task_id, record in job.tasks.items():
                if record.state is TaskState.PENDING:
                    self._pending.setdefault(record.spec.kind, deque()).append((job.id, task_id))
                elif record.state is TaskState.IN_DOUBT:
                    assert record.worker is not None
                    in_doubt += 1
                    self._in_doubt.setdefault(record.worker, {}).setdefault(job.id, []).append(
                        (task_id, record.attempt)
                    )
            counts = job.counts()
            log.info(
                "Node {name} resumed job {job} from its journal: {done} of {total} task(s) done, "
                "{in_doubt} were out on workers, {pending} pending",
                name=self.me.name,
                job=job.id,
                done=counts["done"],
                total=len(job.tasks),
                in_doubt=in_doubt,
                pending=counts["pending"],
            )
            if job.done:
                job.finished = self._clock.seconds()
                self._finish(job)
        # Our own worker died with us: what it held is lost for certain.
        mine = self._in_doubt.pop(self.me.name, {})
        for job_id, attempts in mine.items():
            self._lose(self.jobs[job_id], self.me.name, "was this node before it restarted", attempts, count_loss=False)
        if self._in_doubt:
            self._reconcile_call = self._clock.callLater(RECONCILE_GRACE, self._give_up_in_doubt)
        self.schedule_dispatch()
        return resumed

    def _restore(self, saved: StoredJob, now: float, wall_now: float) -> Job:
        """
        A job rebuilt from its journal record, read at C{now} (monotonic)
        and C{wall_now} (the wall clock): its monotonic start is placed as
        far back as the wall clock says it began, or at C{now} if the wall
        clock now reads earlier than its journaled start.
        """
        records = [
            TaskRecord(
                spec=task.spec,
                state=from_journal(task.state),
                attempt=task.attempt,
                worker=task.worker,
                result=task.result,
                failures=task.failures,
                losses=task.losses,
            )
            for task in saved.tasks
        ]
        started = now - max(0.0, wall_now - saved.started)
        return Job.restore(saved.id, records, started, saved.source, self._max_losses, started_at=saved.started)

    def recall_finished(self, saved: StoredJob) -> Job:
        """
        Show a job that finished before this node restarted (read back from
        the journal) among this master's finished jobs, as it ended: nothing
        of it runs, and nothing is announced again.
        """
        job = self._restore(saved, self._clock.seconds(), self._wall())
        ran = 0.0 if saved.finished is None else max(0.0, saved.finished - saved.started)
        job.finished = job.started + ran
        if saved.finished is not None:
            job.stamp_end(saved.finished)
        job.cancelled = saved.cancelled
        self.jobs[job.id] = job
        self._announced.add(job.id)
        self._forget_oldest_finished()
        return job

    def _reconcile(self, worker: str) -> None:
        """Ask a worker that came back what became of the tasks it held before our restart."""
        for job_id, attempts in self._in_doubt.pop(worker, {}).items():
            job = self.jobs.get(job_id)
            if job is not None:
                # Each still in doubt holds a seat now (HOLD_SEAT), until its result or its loss.
                for task_id, attempt in attempts:
                    record = job.tasks[task_id]
                    if record.attempt == attempt and record.worker == worker:
                        self._perform(job, record, job.fire(record, TaskEvent.WORKER_ASKED, 0.0))
            d = self._link.query_tasks(worker, job_id, attempts)
            d.addCallbacks(
                self._reconciled,
                self._reconcile_failed,
                callbackArgs=(worker, job_id, attempts),
                errbackArgs=(worker, job_id, attempts),
            )

    def _reconciled(self, answer: Any, worker: str, job_id: str, attempts: list[tuple[str, int]]) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        lists, problem = check_query_answer(answer)
        if problem is not None:
            why = f"answered RESULT_QUERY about them with a malformed answer ({problem})"
            self._lose(job, worker, why, attempts, count_loss=False)
            return
        named = lists["done"] | lists["running"]
        lost = [(task_id, attempt) for task_id, attempt in attempts if task_id in lists["unknown"]]
        unnamed = [
            (task_id, attempt)
            for task_id, attempt in attempts
            if task_id not in named and task_id not in lists["unknown"]
        ]
        log.info(
            "Node {name} asked worker {worker} about the {count} task(s) of job {job} it held before this "
            "node restarted: {kept} done or still running there, {lost} unknown there (they run again)",
            name=self.me.name,
            worker=worker,
            count=len(attempts),
            job=job_id,
            kept=len(attempts) - len(lost) - len(unnamed),
            lost=len(lost),
        )
        if lost:
            self._lose(job, worker, "no longer had them", lost, count_loss=False)
        if unnamed:
            why = f"named them in none of the lists of its RESULT_QUERY answer ({format_ids([task_id for task_id, _ in unnamed])})"
            self._lose(job, worker, why, unnamed, count_loss=False)

    def _reconcile_failed(self, failure: Any, worker: str, job_id: str, attempts: list[tuple[str, int]]) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        log.warn(
            "Node {name} could not ask worker {worker} about {count} task(s) of job {job}: {error}; they run again",
            name=self.me.name,
            worker=worker,
            count=len(attempts),
            job=job_id,
            error=failure.getErrorMessage(),
        )
        self._lose(job, worker, "could not be asked about them", attempts, count_loss=False)

    def _give_up_in_doubt(self) -> None:
        """Run elsewhere what the workers that did not come back held."""
        self._reconcile_call = None
        for worker, jobs in list(self._in_doubt.items()):
            for job_id, attempts in jobs.items():
                self._lose(
                    self.jobs[job_id],
                    worker,
                    f"did not come back within {RECONCILE_GRACE:g}s",
                    attempts,
                    count_loss=False,
                )
        self._in_doubt.clear()

    # -- workers ------------------------------------------------------------

    def worker_joined(self, info: NodeInfo) -> None:
        """C{info} can take tasks now (a handshake completed)."""
        seat = self._workers.get(info.name)
        if seat is None:
            self._workers[info.name] = _WorkerSeat(info=info)
        else:
            seat.info, seat.accepting = info, True
        if info.name in self._in_doubt:
            self._reconcile(info.name)
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
        batch = _Batch()
        perform = batch.performer(self, job)
        returned = [task_id for task_id, attempt in attempts if job.take_back(task_id, attempt, worker, perform)]
        if returned:
            log.warn(
                "Worker {worker} refused {count} task(s) of job {job}: {why}; they go back in the queue",
                worker=worker,
                count=len(returned),
                job=job_id,
                why=why,
            )
            self._requeue(job, batch.requeue)
        self.schedule_dispatch()

    def _requeue(self, job: Job, task_ids: list[str]) -> None:
        for task_id in reversed(task_ids):
            kind = job.tasks[task_id].spec.kind
            self._pending.setdefault(kind, deque()).appendleft((job.id, task_id))
        self.schedule_dispatch()

    def worker_lost(self, name: str, why: str, count_loss: bool = True) -> None:
        """
        C{name} is gone: put its unconfirmed tasks back in the queue so that
        they run elsewhere (this is where delivery becomes at-least-once).

        @param count_loss: whether this counts towards the tasks'
            quarantine; not when the same worker process only moved to
            another connection.
        """
        seat = self._workers.pop(name, None)
        if seat is None:
            return
        for job in self.unfinished():
            self._lose(job, name, why, count_loss=count_loss)
        self.schedule_dispatch()

    def _lose(
        self,
        job: Job,
        worker: str,
        why: str,
        attempts: list[tuple[str, int]] | None = None,
        count_loss: bool = True,
    ) -> int:
        """
        Put back what C{worker} held of C{job} (or just these attempts, if
        still current); quarantine repeat losers.

        @return: how many tasks were taken back from C{worker}.
        """
        batch = _Batch()
        requeue, quarantined = job.put_back(
            worker, self._clock.seconds(), attempts, count_loss, batch.performer(self, job)
        )
        self._note_end(job)
        if requeue:
            self._requeue(job, batch.requeue)
            log.warn(
                "Node {name} put {count} unconfirmed task(s) of job {job} back in the queue: worker {worker} {why}",
                name=self.me.name,
                count=len(requeue),
                job=job.id,
                worker=worker,
                why=why,
            )
        for task_id in quarantined:
            self.quarantined += 1
            log.error(
                "Task {task} of job {job} is quarantined: it lost its worker {losses} times (last: {worker}, "
                "which {why}); it is marked failed and not run again",
                task=task_id,
                job=job.id,
                losses=job.tasks[task_id].losses,
                worker=worker,
                why=why,
            )
        if quarantined and job.done:
            self._finish(job)
        return len(requeue) + len(quarantined)

    # -- results --------------------------------------------------------------

    def confirm(self, job_id: str, results: list[TaskResult], sender: str) -> tuple[int, int]:
        """
        Apply a batch of results reported by C{sender}.  They are in the
        journal once L{IJournal.durable} fires: answer the worker after that.

        @return: (applied, stale).
        @raise KeyError: if C{job_id} is not a job of this master.
        """
        job = self.jobs[job_id]
        batch = _Batch(sender, self._workers.get(sender))
        now = self._clock.seconds()
        tasks = job.tasks
        for result in results:
            record = tasks.get(result.task_id)
            if record is None:
                batch.stale += 1
                self._log_stale(job, result, sender)
                continue
            outputs = job.fire(record, job.result_event(record, result, sender), now, result)
            self._perform(job, record, outputs, batch, result)
        self.stale_results += batch.stale
        self._note_end(job)
        if batch.requeue:
            self._requeue(job, batch.requeue)
        self._log_confirmed(job_id, batch.confirmed, sender)
        if job.done and batch.applied:
            # After this turn, so that the answer to the last confirmation
            # goes out before the results file is written.
            self._clock.callLater(0, self._finish, job)
        self.schedule_dispatch()
        return batch.applied, batch.stale

    # -- the task machine's outputs -------------------------------------------

    def _perform(
        self,
        job: Job,
        record: TaskRecord,
        outputs: tuple[TaskOutput, ...],
        batch: _Batch | None = None,
        result: TaskResult | None = None,
    ) -> None:
        """
        Do, in order, what the task machine answered for the master (the
        job did its own part in L{Job.fire}): the one place that holds and
        releases seats, journals, queues, and starts or cancels retry timers.

        @param batch: the call's tallies (results applied, stale, tasks to
            queue again in order); without one, a task to queue again is
            queued at once.
        @param result: the worker's result, for the outputs about it.
        """
        for output in outputs:
            if output is _HOLD_SEAT:
                seat = self._workers.get(record.worker or "")
                if seat is not None:
                    seat.outstanding += 1
            elif output is _JOURNAL:
                self.journal.task_changed(job.id, record)
            elif output is _RELEASE_SEAT:
                seat = self._workers.get(record.worker or "")
                if seat is not None:
                    seat.outstanding -= 1
            elif output is _COUNT_RESULT:
                pass  # done by the job
            elif output is _REPORT_RESULT:
                assert batch is not None and result is not None
                self._report_result(job, result, batch)
            elif output is _ENQUEUE:
                if batch is None:
                    self._requeue(job, [record.spec.id])
                else:
                    batch.requeue.append(record.spec.id)
            elif output is _COUNT_STALE or output is _DROP_RESULT:
                assert batch is not None and result is not None
                batch.stale += 1
                self._log_stale(job, result, batch.sender)
            elif output is _START_RETRY_TIMER:
                assert result is not None
                if batch is not None:
                    batch.applied += 1
                self._schedule_retry(job, record, result)
            elif output is _CANCEL_RETRY_TIMER:
                timer = self.retry_timers.pop((job.id, record.spec.id), None)
                if timer is not None and timer.active():
                    timer.cancel()
            elif output is _STOP_ASSIGNING:
                # Only a leaving worker returns tasks: give it nothing more.
                seat = self._workers.get(record.worker or "")
                if seat is not None:
                    seat.accepting = False
            else:  # pragma: no cover (every output is handled above)
                raise AssertionError(output)

    def _report_result(self, job: Job, result: TaskResult, batch: _Batch) -> None:
        """A worker's result became its task's: tell the listeners, fold its duration into the seat, log a failure."""
        batch.applied += 1
        batch.confirmed.append(result.task_id)
        for listener in self.result_listeners:
            listener(result)
        if batch.seat is not None:
            batch.seat.record_duration(result.duration)
        if not result.succeeded:
            log.warn(
                "Task {task} of job {job} {status} on {worker}: {detail}",
                task=result.task_id,
                job=job.id,
                status=result.status,
                worker=batch.sender,
                detail=result.error or f"exit code {result.exit_code}",
            )

    def _log_stale(self, job: Job, result: TaskResult, sender: str | None) -> None:
        """A result was dropped as stale: say which and why."""
        log.info(
            "Node {name} dropped a stale result for {task} of job {job} (attempt {attempt}) from {worker}: {why}",
            name=self.me.name,
            task=result.task_id,
            attempt=result.attempt,
            worker=sender,
            job=job.id,
            why=job.stale_reason(result, sender),
        )

    def _schedule_retry(self, job: Job, record: TaskRecord, result: TaskResult) -> None:
        """A failed attempt with retries left (RETRY_WAIT): fire RETRY_DUE after a backoff."""
        if self._retry_delay is None:
            from twisted.application.internet import backoffPolicy

            self._retry_delay = backoffPolicy(
                initialDelay=RETRY_INITIAL_DELAY, maxDelay=60.0, factor=2.0, jitter=self._jitter
            )
        delay = self._retry_delay(record.failures - 1)
        self.retries_scheduled += 1
        log.warn(
            "Task {task} of job {job} {status} on {worker} (attempt {attempt}): {detail}; "
            "retry {retry} of {retries} in {delay:.1f}s",
            task=result.task_id,
            job=job.id,
            status=result.status,
            worker=record.worker,
            attempt=result.attempt,
            detail=result.error or f"exit code {result.exit_code}",
            retry=record.failures,
            retries=record.spec.retries,
            delay=delay,
        )
        key = (job.id, record.spec.id)
        old = self.retry_timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self.retry_timers[key] = self._clock.callLater(delay, self._retry_due, job, record)

    def _retry_due(self, job: Job, record: TaskRecord) -> None:
        """A task's retry backoff has passed: it goes back to the front of the queue."""
        self.retry_timers.pop((job.id, record.spec.id), None)
        self._perform(job, record, job.fire(record, TaskEvent.RETRY_DUE, self._clock.seconds()))

    def retrying(self) -> dict[tuple[str, str], float]:
        """The tasks waiting for their retry, by (job, task): when (monotonic clock) each runs again."""
        return {key: timer.getTime() for key, timer in self.retry_timers.items() if timer.active()}

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
        Write the job's end to the journal; once it is there, tell the
        workers that took part, let the observer write the results, then log
        the summary: once the summary is in the log, the results file is
        complete.  Runs once per job.
        """
        if job.id in self._announced:
            return
        self._announced.add(job.id)
        now = self._clock.seconds()
        if job.finished is None:
            job.finished = now
        self._note_end(job)
        self.journal.job_changed(job)

        def announce(_: Any) -> None:
            for worker in sorted(job.participants - {self.me.name}):
                self._link.send_complete(worker, job)
            self._observer.job_finished(job)
            log.info(
                "Job {job} {ended}: {succeeded} succeeded, {failed} failed, {elapsed:.3f}s elapsed",
                job=job.id,
                ended="was cancelled" if job.cancelled else "finished",
                succeeded=job.succeeded,
                failed=job.failed,
                elapsed=job.elapsed(now),
            )
            self._forget_oldest_finished()

        # Announced once its end is in the journal (written again and again
        # if the disk is full, so this may wait; the journal says why).
        self.journal.durable().addCallback(announce)

    def _note_end(self, job: Job) -> None:
        """Stamp a job that has just ended with the wall-clock moment of its end."""
        if job.finished is not None:
            job.stamp_end(self._wall())

    def _forget_oldest_finished(self) -> None:
        """Keep at most L{MAX_FINISHED_JOBS} finished jobs in memory: a daemon runs for months."""
        announced = [self.jobs[job_id] for job_id in self._announced if job_id in self.jobs]
        excess = len(announced) - MAX_FINISHED_JOBS
        if excess <= 0:
            return
        for job in sorted(announced, key=lambda job: job.finished or 0.0)[:excess]:
            del self.jobs[job.id]
            self._announced.discard(job.id)
            log.debug(
                "Node {name} forgot finished job {job} (kept: the newest {limit})",
                name=self.me.name,
                job=job.id,
                limit=MAX_FINISHED_JOBS,
            )

    # -- cancellation ---------------------------------------------------------

    def cancel(self, job_id: str, by: str) -> int:
        """
        Cancel a job: its tasks without a result never start (or start
        again), and every worker that holds some is told to stop them.

        @return: how many tasks were cancelled.
        @raise KeyError: if C{job_id} is not a job of this master.
        """
        job = self.jobs[job_id]
        if job.finished is not None:
            return 0
        before = job.counts()["done"]
        job.cancel(self._clock.seconds(), self.me.name, by, _Batch().performer(self, job))
        self._note_end(job)
        cancelled = len(job.tasks) - before
        # Every node that was ever given one of its tasks: one whose tasks were
        # put back (its connection dropped, say) may still be running them.
        workers = sorted(job.participants)
        for doubtful in self._in_doubt.values():
            doubtful.pop(job_id, None)
        for kind in list(self._pending):
            kept = deque(entry for entry in self._pending[kind] if entry[0] != job_id)
            if kept:
                self._pending[kind] = kept
            else:
                del self._pending[kind]
        log.warn(
            "Node {name} cancelled job {job} ({by}): {count} task(s) without a result will not run; "
            "stopping them on {workers}",
            name=self.me.name,
            job=job_id,
            by=by,
            count=cancelled,
            workers=", ".join(workers) or "no worker",
        )

        def tell_workers(_: Any) -> None:
            for worker in workers:
                self._link.send_cancel(worker, job_id)

        self.journal.durable().addCallback(tell_workers)
        self._finish(job)
        return cancelled

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
        sends: list[tuple[str, str, list[Assignment]]] = []
        jobs = self.jobs
        perform = self._perform
        for worker, entries in planned.assignments.items():
            by_job: dict[str, list[Assignment]] = {}
            for job_id, task_id in entries:
                # A queue entry may outlive its task's wait (a late result
                # finished it, or it waits for a retry) and even its job
                # (forgotten once finished).
                job = jobs.get(job_id)
                if job is None:
                    continue
                record = job.tasks[task_id]
                if record.state is not _PENDING:
                    continue
                outputs = job.fire(record, _DISPATCH, 0.0)
                assignment = job.start_attempt(record, worker)
                perform(job, record, outputs)
                if job_id in by_job:
                    by_job[job_id].append(assignment)
                else:
                    by_job[job_id] = [assignment]
            sends.extend((worker, job_id, assignments) for job_id, assignments in by_job.items())
        for kind in [k for k, q in self._pending.items() if not q]:
            del self._pending[kind]
        if not sends:
            return
        # Each attempt is in the journal before it goes out to another node.
        # Tasks this node runs itself need not wait: they die with it, and a
        # restarted master runs them again anyway.
        if all(worker == self.me.name for worker, _, _ in sends):
            self._send(sends)
            return
        try:
            self.journal.commit()
        except JournalError:
            for worker, job_id, assignments in sends:
                self._take_back(self.jobs[job_id], worker, assignments)
            self.dispatching = False
            self._clock.callLater(JOURNAL_RETRY, self._resume_dispatching)
            log.error(
                "Node {name} stops handing out tasks for {delay:g}s: its journal cannot be written",
                name=self.me.name,
                delay=JOURNAL_RETRY,
            )
            return
        self._send(sends)

    def _send(self, sends: list[tuple[str, str, list[Assignment]]]) -> None:
        for worker, job_id, assignments in sends:
            seat = self._workers.get(worker)
            if seat is None:
                # Lost while this dispatch was sending (an earlier batch found
                # it gone): these go back in the queue, unsent.
                self._take_back(self.jobs[job_id], worker, assignments)
                continue
            self.assignments_sent += len(assignments)
            self._link.send_assignments(worker, job_id, assignments)

    def _take_back(self, job: Job, worker: str, assignments: list[Assignment]) -> None:
        """Put back in the queue, in order, attempts of C{job} that did not go out to C{worker} after all."""
        batch = _Batch()
        perform = batch.performer(self, job)
        for assignment in assignments:
            job.take_back(assignment.task.id, assignment.attempt, worker, perform)
        self._requeue(job, batch.requeue)

    def _resume_dispatching(self) -> None:
        self.dispatching = True
        self.schedule_dispatch()

    def _note_waiting(self, unschedulable: list[str]) -> None:
        """
        Warn once about each kind that no connected node can run, after
        L{WAITING_GRACE} seconds: at start-up workers are still connecting.
        """
        kinds = self._kinds
        if not kinds and not unschedulable:
            return
        now = self._clock.seconds()
        for kind in [kind for kind in kinds if kind not in unschedulable]:
            self._step_kind(kind, KindEvent.SCHEDULABLE, now)
        for kind in unschedulable:
            since = self._waiting_since.get(kind, now)
            self._step_kind(
                kind, KindEvent.GRACE_OVER if now - since >= WAITING_GRACE else KindEvent.UNSCHEDULABLE, now
            )

    def _step_kind(self, kind: str, event: KindEvent, now: float) -> None:
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
                self._clock.callLater(WAITING_GRACE, self.schedule_dispatch)
            elif output is KindOutput.WARN:
                log.warn(
                    "Node {name} has {count} task(s) of kind {kind!r} waiting: no connected node "
                    "has capability {kind!r}; they will be assigned when one joins",
                    name=self.me.name,
                    count=len(self._pending[kind]),
                    kind=kind,
                )
            elif output is KindOutput.FORGET_SINCE:
                self._waiting_since.pop(kind, None)

    def waiting_kinds(self) -> frozenset[str]:
        """The kinds with pending tasks that no connected node can run."""
        capable: set[str] = set()
        for seat in self._workers.values():
            if seat.accepting:
                capable.update(seat.info.capabilities)
        return frozenset(kind for kind, queue in self._pending.items() if queue and kind not in capable)

    def outstanding(self) -> dict[str, int]:
        """How many unconfirmed tasks of this master each worker holds."""
        return {name: seat.outstanding for name, seat in self._workers.items()}

    def workers_with_work(self) -> set[str]:
        """Names of the workers holding unconfirmed tasks of this master."""
        return {name for name, seat in self._workers.items() if seat.outstanding > 0 and name != self.me.name}

    def pending_count(self) -> int:
        """How many tasks wait for a worker."""
        return sum(len(q) for q in self._pending.values())


class _Batch:
    """
    What one call (a confirmation batch, a refusal, a loss, a cancel) tallies
    while the task machine's outputs are performed: one per call, not per task.

    @ivar requeue: the tasks to queue again, in order (queued at the end, in one go).
    @ivar confirmed: the tasks whose result was applied (for the log).
    """

    __slots__ = ("sender", "seat", "requeue", "confirmed", "applied", "stale")

    def __init__(self, sender: str | None = None, seat: _WorkerSeat | None = None) -> None:
        self.sender = sender
        self.seat = seat
        self.requeue: list[str] = []
        self.confirmed: list[str] = []
        self.applied = 0
        self.stale = 0

    def performer(self, master: Master, job: Job) -> Callable[[TaskRecord, tuple[TaskOutput, ...]], None]:
        """A callback for L{Job}'s event methods: performs each task's outputs for C{master} into this batch."""

        def perform(record: TaskRecord, outputs: tuple[TaskOutput, ...]) -> None:
            master._perform(job, record, outputs, self)

        return perform


_PENDING = TaskState.PENDING
_DISPATCH = TaskEvent.DISPATCH
_HOLD_SEAT = TaskOutput.HOLD_SEAT
_RELEASE_SEAT = TaskOutput.RELEASE_SEAT
_JOURNAL = TaskOutput.JOURNAL
_ENQUEUE = TaskOutput.ENQUEUE
_COUNT_RESULT = TaskOutput.COUNT_RESULT
_REPORT_RESULT = TaskOutput.REPORT_RESULT
_COUNT_STALE = TaskOutput.COUNT_STALE
_DROP_RESULT = TaskOutput.DROP_RESULT
_START_RETRY_TIMER = TaskOutput.START_RETRY_TIMER
_CANCEL_RETRY_TIMER = TaskOutput.CANCEL_RETRY_TIMER
_STOP_ASSIGNING = TaskOutput.STOP_ASSIGNING


QUERY_ANSWER_KEYS = ("done", "running", "unknown")
"""The lists of a RESULT_QUERY answer."""


def check_query_answer(answer: Any) -> tuple[dict[str, set[str]], str | None]:
    """
    Read a worker's RESULT_QUERY answer: C{done}, C{running} and C{unknown},
    each a list of task id strings.

    @return: (the three lists as sets, C{None}) if the answer is well formed;
        otherwise (empty sets, what is wrong with it, in words).
    """
    empty: dict[str, set[str]] = {key: set() for key in QUERY_ANSWER_KEYS}
    if not isinstance(answer, dict):
        return empty, f"it is {_describe(answer)}, not an object with lists done, running and unknown"
    lists: dict[str, set[str]] = {}
    for key in QUERY_ANSWER_KEYS:
        value = answer.get(key)
        if not isinstance(value, list):
            what = "missing" if key not in answer else f"{_describe(value)}, not a list of task ids"
            return empty, f"its {key!r} is {what}"
        wrong = [entry for entry in value if not isinstance(entry, str)]
        if wrong:
            return empty, (
                f"its {key!r} holds {len(wrong)} element(s) that are not task id strings, such as {_describe(wrong[0])}"
            )
        lists[key] = set(value)
    return lists, None


def _describe(value: Any) -> str:
    """A value from the wire, named for a log line (short)."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None:
        return "null"
    return f"{kinds.get(type(value), type(value).__name__)} {text}"


def random_instance() -> str:
    """A fresh per-process instance id."""
    return os.urandom(8).hex()
