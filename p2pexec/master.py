"""
The master side of a node: the jobs it accepted, their queues of pending
tasks by kind, and the dispatch loop that hands them to workers.

The master does no I/O itself.  It is given an L{IWorkerLink} to reach the
workers and an L{IJobObserver} to report finished jobs, and it coalesces
dispatching to once per reactor turn through the injected clock.

Its parts: L{p2pexec.seats} (how much work each worker is given),
L{p2pexec.recovery} (taking up the journal's jobs after a restart),
L{p2pexec.confirmations} (the tallies and log lines of reported results),
L{p2pexec.retries} (the backoff timers of failed tasks),
L{p2pexec.waiting} (kinds no connected node can run),
L{p2pexec.endings} (announcing a job's end, forgetting old jobs) and
L{p2pexec.speculation} (backup copies near the end of a job).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec import dependencies, fairshare, leadership, losses, reruns
from p2pexec.clock import WallClock
from p2pexec.confirmations import Batch, log_confirmed, log_stale, report_result
from p2pexec.dependencies import Gate
from p2pexec.endings import JobEndings
from p2pexec.handout import hand_out
from p2pexec.interfaces import IJobObserver, IJournal, IWorkerLink
from p2pexec.job import DEFAULT_MAX_LOSSES, Job, TaskRecord
from p2pexec.journal import NullJournal
from p2pexec.journal_health import JournalError
from p2pexec.journal_schema import StoredJob
from p2pexec.log import NodeLogger
from p2pexec.model import Assignment, NodeInfo, TaskResult, TaskSpec
from p2pexec.placement import PinnedQueues, expand_all_nodes
from p2pexec.recovery import Recovery
from p2pexec.resource_use import QueuedTasks, WaitingFit
from p2pexec.retries import RetryTimers
from p2pexec.seats import WorkerSeat
from p2pexec.speculation import Speculation
from p2pexec.task_states import TaskEvent, TaskOutput
from p2pexec.waiting import WaitingKinds

if TYPE_CHECKING:
    from p2pexec.failover import Replication
    from p2pexec.replication import JobImage

log = NodeLogger()

JOURNAL_RETRY = 5.0
"""Seconds a master whose journal cannot be written waits before trying to hand out tasks again."""


class Master:
    """
    Tracks this node's jobs and keeps its workers fed.

    Each worker is given at most L{WorkerSeat.window<p2pexec.seats.WorkerSeat.window>} unconfirmed tasks, so
    it always has the next batch at hand when a slot frees, without one
    worker hoarding the queue.

    Every decision is written to the journal before the message that
    depends on it goes out (see L{p2pexec.journal}).

    Each task's state is stepped by the task machine
    (L{p2pexec.task_states.TASK}, through L{Job.fire}); what it answers
    for the master is done in one place, L{_perform}: a worker's seat
    counter (L{WorkerSeat.outstanding<p2pexec.seats.WorkerSeat.outstanding>}) changes only there, on
    L{TaskOutput.HOLD_SEAT} and L{TaskOutput.RELEASE_SEAT} (but for the
    seat of a backup's other copy, held by L{Speculation}), and a task
    waiting for its retry has its timer in L{RetryTimers}.

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
        replication: Replication | None = None,
    ) -> None:
        """
        @param clock: the monotonic clock (the reactor, see L{p2pexec.clock})
            for every timer and duration.
        @param replication: where the jobs' records are replicated (see
            L{p2pexec.failover}); without it, nothing is.
        @param wall: the wall clock, for when jobs started and ended as
            shown to people and kept in the journal.
        """
        self.me = me
        self._link = link
        self._clock = clock
        self._wall = wall
        self.journal: IJournal = journal if journal is not None else NullJournal()
        self._max_losses = max_losses
        self._retries = RetryTimers(clock, jitter, self._retry_due)
        self.quarantined = 0
        self.stale_results = 0
        self.result_listeners: list[Callable[[TaskResult], None]] = []
        """Called with every result applied as a task's result (for metrics)."""
        self.job_result_listeners: list[Callable[[str, TaskResult], None]] = []  # the same, with the job's id
        self.jobs: dict[str, Job] = {}
        self.replication = replication
        self.held_back: set[str] = set()
        """Jobs of the journal not to resume from it alone: it takes them over again, or another leads them (failover)."""
        self.adopted_at: dict[str, int] = {}
        """The epoch of each job adopted after a takeover (L{adopt}); forgotten when it steps down."""
        self._endings = JobEndings(
            me.name, self.jobs, self.journal, link, observer, clock, wall, self.durable, self._job_ended
        )
        self._recovery = Recovery(self, self._endings, link, clock, wall)
        self._queues = fairshare.PendingQueues()
        self._held = fairshare.Held()
        self._gate = Gate()
        self._workers: dict[str, WorkerSeat] = {}
        self._dispatch_call: IDelayedCall | None = None
        self._waiting = WaitingKinds(me.name, clock, self.schedule_dispatch)
        self._pinned = PinnedQueues(me.name, clock, self.schedule_dispatch)
        self._unfit = WaitingFit(me.name)
        self._queued = QueuedTasks(self.jobs)
        self._job_numbers = itertools.count(1)
        self.assignments_sent = 0
        self.dispatching = True
        self.speculation = Speculation(self)

    # -- jobs -----------------------------------------------------------------

    def new_job_id(self) -> str:
        """A job id unique to this master process."""
        return f"{self.me.name}-{self.me.instance[:8]}-{next(self._job_numbers)}"

    def submit(
        self,
        tasks: Iterable[TaskSpec],
        job_id: str | None = None,
        source: str | None = None,
        place: bool = True,
        priority: int = 0,
    ) -> Job:
        """
        Accept a job and queue its tasks (the journal has it by the time
        L{IJournal.durable} fires).

        @param source: what the job came from, so that a restarted master
            given the same job resumes it (see L{find_unfinished}).
        @param place: whether its replica set is chosen now; if not, it is
            once L{Replication.place<p2pexec.failover.Replication.place>} is
            called, and nothing of it is committed before.
        @param priority: higher runs first (see L{p2pexec.fairshare}).
        """
        job_id = job_id or self.new_job_id()
        capable = {name: seat.info.capabilities for name, seat in self._workers.items() if seat.accepting}
        job = Job(
            job_id,
            expand_all_nodes(job_id, list(tasks), capable),
            started=self._clock.seconds(),
            source=source,
            max_losses=self._max_losses,
            started_at=self._wall(),
        )
        job.priority = priority
        self.jobs[job.id] = job
        self.journal.job_added(job)
        if self.replication is not None:
            self.replication.job_accepted(job, place)
        kinds: dict[str, int] = {}
        for record in job.tasks.values():
            kinds[record.spec.kind] = kinds.get(record.spec.kind, 0) + 1
        self.queue_tasks(job, list(job.tasks))
        log.info(
            "Node {name} is master of job {job}: {count} task(s) of kind(s) {kinds}",
            name=self.me.name,
            job=job.id,
            count=len(job.tasks),
            kinds=", ".join(f"{k} ({n})" for k, n in sorted(kinds.items())),
        )
        if not job.tasks:
            self._endings.finish(job)
        self.schedule_dispatch()
        return job

    def durable(self, job_id: str) -> Deferred[None]:
        """
        Fires once what this master decided about C{job_id} so far is in its
        journal and, for a replicated job, committed (held by a majority of
        its replica set); fails with L{p2pexec.failover.Deposed} if another
        node took the job over meanwhile.  Acknowledge nothing before.
        """
        d = self.journal.durable()
        replication = self.replication
        if replication is None:
            return d
        return d.addCallback(lambda _: replication.committed(job_id))

    def _job_ended(self, job: Job) -> None:
        if self.replication is not None:
            self.replication.job_ended(job)

    def epoch_of(self, job_id: str) -> int:
        """
        The epoch at which this node leads C{job_id}: its replicated log's
        ballot, else the epoch it was adopted at (L{adopt}), else 1.
        """
        epoch = 1 if self.replication is None else self.replication.epoch_of(job_id)
        return max(epoch, self.adopted_at.get(job_id, 1))

    def take_over(self, image: JobImage, epoch: int) -> Job:
        """Lead a job taken over from its lost master (see L{p2pexec.leadership.take_over})."""
        return leadership.take_over(self, image, epoch)

    def step_down(self, job_id: str) -> None:
        """Another node leads C{job_id} now (see L{p2pexec.leadership.step_down})."""
        leadership.step_down(self, job_id)

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
        self._endings.announced.discard(job_id)
        self._unqueue(job_id)

    def _unqueue(self, job_id: str) -> None:
        """Take C{job_id}'s tasks out of the queues."""
        self._queues.drop(job_id)
        self._pinned.unqueue(job_id)
        self._gate.forget(job_id)

    def queue_tasks(
        self, job: Job, task_ids: list[str], front: bool = False, skip: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Queue pending tasks of C{job}, but those that wait for others (see L{p2pexec.dependencies.queue_tasks})."""
        dependencies.queue_tasks(self, job, task_ids, front, skip)

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
        Take up the unfinished jobs of the journal after a restart (see
        L{Recovery.resume}), but those L{held_back} for a takeover.
        """
        return self._recovery.resume(saved for saved in stored if saved.id not in self.held_back)

    def adopt(self, job_id: str, epoch: int) -> Deferred[None]:
        """Adopt a job just taken over at C{epoch}, before dispatching it (see L{Recovery.adopt})."""
        return self._recovery.adopt(job_id, epoch)

    def recall_finished(self, saved: StoredJob) -> Job:
        """
        Show a job that finished before this node restarted (read back from
        the journal) among this master's finished jobs, as it ended: nothing
        of it runs, and nothing is announced again.
        """
        return self._recovery.recall_finished(saved)

    @property
    def retries_scheduled(self) -> int:
        """How many failed attempts were given a retry."""
        return self._retries.scheduled

    def retrying(self) -> dict[tuple[str, str], float]:
        """The tasks waiting for their retry, by (job, task): when (monotonic clock) each runs again."""
        return self._retries.waiting()

    # -- workers ------------------------------------------------------------

    def worker_joined(self, info: NodeInfo) -> None:
        """C{info} can take tasks now (a handshake completed)."""
        seat = self._workers.get(info.name)
        if seat is None:
            self._workers[info.name] = WorkerSeat(info=info)
        else:
            seat.info, seat.accepting = info, True
        self._recovery.worker_joined(info.name)
        self.schedule_dispatch()

    def refused(self, worker: str, job_id: str, attempts: list[tuple[str, int]], why: str, usable: bool) -> None:
        """C{worker} refused a batch of assignments: put them back (see L{p2pexec.losses.refused})."""
        losses.refused(self, worker, job_id, attempts, why, usable)

    def _requeue(self, job: Job, task_ids: list[str]) -> None:
        self.queue_tasks(job, task_ids, front=True)

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
        self._held.forget(name)
        self.speculation.worker_lost(name)
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
        """Put back what C{worker} held of C{job} (see L{p2pexec.losses.lose}); return how many tasks."""
        return losses.lose(self, job, worker, why, attempts, count_loss)

    # -- results --------------------------------------------------------------

    def confirm(self, job_id: str, results: list[TaskResult], sender: str) -> tuple[int, int]:
        """
        Apply a batch of results reported by C{sender}.  They are in the
        journal once L{IJournal.durable} fires: answer the worker after that.

        @return: (applied, stale).
        @raise KeyError: if C{job_id} is not a job of this master.
        """
        job = self.jobs[job_id]
        batch = Batch(sender, self._workers.get(sender))
        now = self._clock.seconds()
        tasks = job.tasks
        self.speculation.last_result[sender] = now
        copies = self.speculation.copies
        for result in results:
            record = tasks.get(result.task_id)
            if record is None:
                batch.stale += 1
                log_stale(self.me.name, job, result, sender)
                continue
            if copies and (job_id, result.task_id) in copies:
                result = self.speculation.claim(job, record, result, sender)
            outputs = job.fire(record, job.result_event(record, result, sender), now, result)
            self._perform(job, record, outputs, batch, result)
            if copies and (job_id, result.task_id) in copies:
                self.speculation.settle(job, record)
        self.stale_results += batch.stale
        if self.replication is not None and batch.confirmed:
            self.replication.results_recorded(
                job_id,
                [(task_id, tasks[task_id].result) for task_id in batch.confirmed],  # type: ignore[misc]
            )
        self._endings.note_end(job)
        if batch.requeue:
            self._requeue(job, batch.requeue)
        log_confirmed(job_id, batch.confirmed, sender)
        if job.done and batch.applied:
            # After this turn, so that the answer to the last confirmation
            # goes out before the results file is written.
            self._clock.callLater(0, self._endings.finish, job)
        self.schedule_dispatch()
        return batch.applied, batch.stale

    # -- the task machine's outputs -------------------------------------------

    def _perform(
        self,
        job: Job,
        record: TaskRecord,
        outputs: tuple[TaskOutput, ...],
        batch: Batch | None = None,
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
                self.seat_change(record.worker, job.priority, record.spec, 1)
            elif output is _JOURNAL:
                self.journal.task_changed(job.id, record)
            elif output is _RELEASE_SEAT:
                self.seat_change(record.worker, job.priority, record.spec, -1)
            elif output is _COUNT_RESULT:
                # Counted by the job; the tasks that run after it may go now, or are skipped.
                ready, skips = self._gate.finished(job, record)
                if ready or skips:
                    self.queue_tasks(job, ready, skip=skips)
            elif output is _REPORT_RESULT:
                assert batch is not None and result is not None
                report_result(job, result, batch, self.result_listeners, self.job_result_listeners)
            elif output is _ENQUEUE:
                if batch is None:
                    self._requeue(job, [record.spec.id])
                else:
                    batch.requeue.append(record.spec.id)
            elif output is _COUNT_STALE or output is _DROP_RESULT:
                assert batch is not None and result is not None
                batch.stale += 1
                log_stale(self.me.name, job, result, batch.sender)
            elif output is _START_RETRY_TIMER:
                assert result is not None
                if batch is not None:
                    batch.applied += 1
                self._retries.start(job, record, result)
            elif output is _CANCEL_RETRY_TIMER:
                self._retries.cancel((job.id, record.spec.id))
            elif output is _STOP_ASSIGNING:
                # Only a leaving worker returns tasks: give it nothing more.
                seat = self._workers.get(record.worker or "")
                if seat is not None:
                    seat.accepting = False
            elif output is TaskOutput.UNCOUNT_RESULT:
                pass  # done by the job (Job.rerun)
            else:  # pragma: no cover (every output is handled above)
                raise AssertionError(output)

    def seat_change(self, worker: str | None, priority: int, spec: TaskSpec, delta: int) -> None:
        """An attempt of C{spec} holds (1) or frees (-1) a seat on C{worker}: its slot, its resources, its level."""
        seat = self._workers.get(worker or "")
        if seat is not None:
            seat.hold(spec.request, delta)
            self._held.change(seat.info.name, priority, delta)

    def _retry_due(self, job: Job, record: TaskRecord) -> None:
        """A task's retry backoff has passed: it goes back to the front of the queue."""
        self._perform(job, record, job.fire(record, TaskEvent.RETRY_DUE, self._clock.seconds()))

    # -- cancellation ---------------------------------------------------------

    def cancel(self, job_id: str, by: str) -> int:
        """
        Cancel a job (see L{p2pexec.leadership.cancel}).

        @return: how many tasks were cancelled.
        @raise KeyError: if C{job_id} is not a job of this master.
        """
        return leadership.cancel(self, job_id, by)

    def rerun(self, job_id: str, which: str, by: str) -> list[str]:
        """Run again the tasks of a finished job that did not succeed (see L{p2pexec.reruns.rerun})."""
        return reruns.rerun(self, job_id, which, by)

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
        asking = any(job.asks_resources for job in self.jobs.values())  # else: slots alone, as before issue 15
        sends: list[tuple[str, str, list[Assignment]]] = []
        pinned = self._pinned
        unschedulable, unfit, absent = fairshare.plan_levels(
            self._queues,
            self._workers,
            self._held,
            self._queued.request_of if asking else None,
            lambda planned: hand_out(self, planned, sends),
            pinned.levels,
        )
        self._waiting.note(unschedulable, self._queues.kind_view())
        if pinned.levels or absent:
            pinned.note(absent, self._workers.__contains__)
            pinned.drop_empty()
        if unfit or self._unfit.noted:
            self._unfit.note(unfit, self._queued.still_pending)
        sends.extend(self.speculation.dispatched(sends, self._queues.kind_view(), self._workers, self._clock.seconds()))
        if not sends:
            return
        self._commit_and_send(sends)

    def _commit_and_send(self, sends: list[tuple[str, str, list[Assignment]]]) -> None:
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
        batch = Batch()
        perform = batch.performer(self, job)
        for assignment in assignments:
            job.take_back(assignment.task.id, assignment.attempt, worker, perform)
        self._requeue(job, batch.requeue)

    def _resume_dispatching(self) -> None:
        self.dispatching = True
        self.schedule_dispatch()

    def waiting_kinds(self) -> frozenset[str]:
        """The kinds with pending tasks that no connected node can run."""
        return self._queues.waiting_kinds(self._workers)

    def outstanding(self) -> dict[str, int]:
        """How many unconfirmed tasks of this master each worker holds."""
        return {name: seat.outstanding for name, seat in self._workers.items()}

    def workers_with_work(self) -> set[str]:
        """Names of the workers holding unconfirmed tasks of this master."""
        return {name for name, seat in self._workers.items() if seat.outstanding > 0 and name != self.me.name}

    def pending_count(self) -> int:
        """How many tasks wait for a worker."""
        return self._queues.count() + self._pinned.count()


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


def random_instance() -> str:
    """A fresh per-process instance id."""
    return os.urandom(8).hex()
