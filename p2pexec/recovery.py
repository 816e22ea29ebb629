"""
A restarted master's recovery: taking up the jobs its journal had (the
unfinished ones to run on, the finished ones to show), and asking the
workers that held its tasks what became of them (RESULT_QUERY, whose
answers are checked here) before running those tasks elsewhere.

A new leader's adoption of a job it took over (L{Recovery.adopt}): asking
every capable worker what it holds of the job (HELD_TASKS), so that only
the tasks nobody holds run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec.clock import WallClock
from p2pexec.endings import JobEndings
from p2pexec.interfaces import IWorkerLink
from p2pexec.job import Job, TaskRecord
from p2pexec.journal_schema import StoredJob
from p2pexec.log import NodeLogger, format_ids
from p2pexec.model import TaskResult, ValidationError
from p2pexec.task_states import TaskEvent, TaskState, from_journal

if TYPE_CHECKING:
    from p2pexec.master import Master

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

RECONCILE_GRACE = 10.0
"""Seconds a restarted master waits for a worker that held its tasks to
come back and say what became of them, before it runs them elsewhere."""


class Recovery:
    """
    The part of a L{Master} that deals with its previous life: it works on
    that master's jobs and queues, and puts back (L{Master._lose}) what
    cannot be accounted for.
    """

    def __init__(
        self, master: Master, endings: JobEndings, link: IWorkerLink, clock: IReactorTime, wall: WallClock
    ) -> None:
        """
        @param endings: the master's job endings, for the jobs that ended.
        @param clock: the monotonic clock, for the grace timer and job times.
        @param wall: the wall clock, against which journaled starts are read.
        """
        self._master = master
        self._endings = endings
        self._link = link
        self._clock = clock
        self._wall = wall
        self._in_doubt: dict[str, dict[str, list[tuple[str, int]]]] = {}
        """The attempts of tasks IN_DOUBT, by worker and job: whom to ask about what when a worker comes back."""
        self._reconcile_call: IDelayedCall | None = None

    def resume(self, stored: Iterable[StoredJob]) -> list[Job]:
        """
        Take up the unfinished jobs of the journal after a restart.  Finished
        tasks keep their results; pending ones are queued; the ones that were
        out on workers are asked for first (when each worker connects, or
        run again after L{RECONCILE_GRACE} seconds), since they may have finished meanwhile.

        A resumed job keeps its journaled start (wall clock); its elapsed
        time goes on from the wall-clock time since then, the only measure
        that spans the restart, counted as 0 if the wall clock now reads
        earlier than that start (it was stepped back meanwhile).
        """
        master = self._master
        name = master.me.name
        resumed = []
        now, wall_now = self._clock.seconds(), self._wall()
        for saved in stored:
            job = self._restore(saved, now, wall_now)
            master.jobs[job.id] = job
            resumed.append(job)
            in_doubt = 0
            # Those that wait for others are held back until these succeed (p2pexec.dependencies).
            master.queue_tasks(job, [t for t, record in job.tasks.items() if record.state is TaskState.PENDING])
            for task_id, record in job.tasks.items():
                if record.state is TaskState.IN_DOUBT:
                    assert record.worker is not None
                    in_doubt += 1
                    self._in_doubt.setdefault(record.worker, {}).setdefault(job.id, []).append(
                        (task_id, record.attempt)
                    )
            counts = job.counts()
            log.info(
                "Node {name} resumed job {job} from its journal: {done} of {total} task(s) done, "
                "{in_doubt} were out on workers, {pending} pending",
                name=name,
                job=job.id,
                done=counts["done"],
                total=len(job.tasks),
                in_doubt=in_doubt,
                pending=counts["pending"],
            )
            if job.done:
                job.finished = self._clock.seconds()
                self._endings.finish(job)
        # Our own worker died with us: what it held is lost for certain.
        mine = self._in_doubt.pop(name, {})
        for job_id, attempts in mine.items():
            master._lose(master.jobs[job_id], name, "was this node before it restarted", attempts, count_loss=False)
        if self._in_doubt:
            self._reconcile_call = self._clock.callLater(RECONCILE_GRACE, self._give_up_in_doubt)
        master.schedule_dispatch()
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
        job = Job.restore(saved.id, records, started, saved.source, self._master._max_losses, started_at=saved.started)
        job.priority = saved.priority
        return job

    def recall_finished(self, saved: StoredJob) -> Job:
        """A job that finished before the restart, rebuilt as it ended (see L{Master.recall_finished})."""
        master = self._master
        job = self._restore(saved, self._clock.seconds(), self._wall())
        ran = 0.0 if saved.finished is None else max(0.0, saved.finished - saved.started)
        job.finished = job.started + ran
        if saved.finished is not None:
            job.stamp_end(saved.finished)
        job.cancelled = saved.cancelled
        master.jobs[job.id] = job
        self._endings.announced.add(job.id)
        self._endings.forget_oldest()
        return job

    def worker_joined(self, worker: str) -> None:
        """C{worker} (re)joined: ask it about what it held before our restart, if anything."""
        if worker in self._in_doubt:
            self._reconcile(worker)

    def forget_job(self, job_id: str) -> None:
        """Ask nobody about C{job_id}'s tasks any more (it was cancelled)."""
        for doubtful in self._in_doubt.values():
            doubtful.pop(job_id, None)

    def _reconcile(self, worker: str) -> None:
        """Ask a worker that came back what became of the tasks it held before our restart."""
        master = self._master
        for job_id, attempts in self._in_doubt.pop(worker, {}).items():
            job = master.jobs.get(job_id)
            if job is not None:
                # Each still in doubt holds a seat now (HOLD_SEAT), until its result or its loss.
                for task_id, attempt in attempts:
                    record = job.tasks[task_id]
                    if record.attempt == attempt and record.worker == worker:
                        master._perform(job, record, job.fire(record, TaskEvent.WORKER_ASKED, 0.0))
            d = self._link.query_tasks(worker, job_id, attempts)
            d.addCallbacks(
                self._reconciled,
                self._reconcile_failed,
                callbackArgs=(worker, job_id, attempts),
                errbackArgs=(worker, job_id, attempts),
            )

    def _reconciled(self, answer: Any, worker: str, job_id: str, attempts: list[tuple[str, int]]) -> None:
        job = self._master.jobs.get(job_id)
        if job is None:
            return
        lists, problem = check_query_answer(answer)
        if problem is not None:
            why = f"answered RESULT_QUERY about them with a malformed answer ({problem})"
            self._master._lose(job, worker, why, attempts, count_loss=False)
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
            name=self._master.me.name,
            worker=worker,
            count=len(attempts),
            job=job_id,
            kept=len(attempts) - len(lost) - len(unnamed),
            lost=len(lost),
        )
        if lost:
            self._master._lose(job, worker, "no longer had them", lost, count_loss=False)
        if unnamed:
            why = f"named them in none of the lists of its RESULT_QUERY answer ({format_ids([task_id for task_id, _ in unnamed])})"
            self._master._lose(job, worker, why, unnamed, count_loss=False)

    def _reconcile_failed(self, failure: Any, worker: str, job_id: str, attempts: list[tuple[str, int]]) -> None:
        job = self._master.jobs.get(job_id)
        if job is None:
            return
        log.warn(
            "Node {name} could not ask worker {worker} about {count} task(s) of job {job}: {error}; they run again",
            name=self._master.me.name,
            worker=worker,
            count=len(attempts),
            job=job_id,
            error=failure.getErrorMessage(),
        )
        self._master._lose(job, worker, "could not be asked about them", attempts, count_loss=False)

    def adopt(self, job_id: str, epoch: int) -> Deferred[None]:
        """
        Adopt a job this node just took over at C{epoch} (before it
        dispatches any of it): ask every connected worker that runs one of
        its kinds what it holds of it (HELD_TASKS, for at most
        L{RECONCILE_GRACE} seconds).  A task a worker runs stays with it (its
        seat held, its result awaited); a finished result it reports is
        applied as any confirmation (journaled once); the pending tasks
        nobody reported go back in the queue.  Fires once that is done.
        """
        master = self._master
        job = master.jobs[job_id]
        master.adopted_at[job_id] = epoch
        master._unqueue(job_id)
        kinds = {record.spec.kind for record in job.tasks.values() if record.state is TaskState.PENDING}
        workers = sorted(name for name, seat in master._workers.items() if kinds & set(seat.info.capabilities))
        tally = {"running": 0, "recorded": 0}
        asked = []
        for worker in workers:
            d = self._link.query_held(worker, job_id, epoch).addTimeout(RECONCILE_GRACE, self._clock)
            d.addCallbacks(
                self._held_answered,
                self._held_failed,
                callbackArgs=(worker, job, tally),
                errbackArgs=(worker, job_id),
            )
            asked.append(d)
        done: Deferred[None] = DeferredList(asked, consumeErrors=True).addCallback(
            lambda _: self._adopted(job, epoch, len(workers), tally)
        )
        return done

    def _claim(self, job: Job, task_id: str, attempt: int, worker: str) -> bool:
        """
        Hold a pending task of an adopted job for C{worker}, which reports
        C{attempt} of it: it is assigned to that worker (its seat held).

        @return: whether the task is now C{worker}'s at C{attempt}.
        """
        record = job.tasks.get(task_id)
        if record is None:
            return False
        if record.state is TaskState.PENDING:
            outputs = job.fire(record, TaskEvent.DISPATCH, 0.0)
            record.attempt, record.worker = attempt, worker
            job.participants.add(worker)
            self._master._perform(job, record, outputs)
        return record.worker == worker and record.attempt == attempt

    def _held_answered(self, answer: Any, worker: str, job: Job, tally: dict[str, int]) -> None:
        """A worker said what it holds of an adopted job."""
        try:
            running, finished = check_held_answer(answer)
        except ValidationError as e:
            log.warn(
                "Node {name} got a malformed HELD_TASKS answer from {worker} about job {job}: {error}; "
                "what it holds runs again",
                name=self._master.me.name,
                worker=worker,
                job=job.id,
                error=e,
            )
            return
        for task_id, attempt in running:
            if self._claim(job, task_id, attempt, worker):
                tally["running"] += 1
        results = [result for result in finished if self._claim(job, result.task_id, result.attempt, worker)]
        if results and job.id in self._master.jobs:
            applied, _ = self._master.confirm(job.id, results, sender=worker)
            tally["recorded"] += applied

    def _held_failed(self, failure: Any, worker: str, job_id: str) -> None:
        log.warn(
            "Node {name} could not ask {worker} what it holds of job {job}: {error}; what it holds runs again",
            name=self._master.me.name,
            worker=worker,
            job=job_id,
            error=failure.getErrorMessage() or type(failure.value).__name__,
        )

    def _adopted(self, job: Job, epoch: int, asked: int, tally: dict[str, int]) -> None:
        """Every worker answered (or did not in time): the pending tasks nobody holds go back in the queue."""
        requeue = [task_id for task_id, record in job.tasks.items() if record.state is TaskState.PENDING]
        if job.id in self._master.jobs:
            self._master._requeue(job, requeue)
        log.info(
            "Node {name} adopted job {job} at epoch {epoch}: {asked} worker(s) asked, {running} task(s) still "
            "held by them, {recorded} finished result(s) recorded, {requeued} task(s) to run again",
            name=self._master.me.name,
            job=job.id,
            epoch=epoch,
            asked=asked,
            running=tally["running"],
            recorded=tally["recorded"],
            requeued=len(requeue),
        )

    def _give_up_in_doubt(self) -> None:
        """Run elsewhere what the workers that did not come back held."""
        self._reconcile_call = None
        for worker, jobs in list(self._in_doubt.items()):
            for job_id, attempts in jobs.items():
                self._master._lose(
                    self._master.jobs[job_id],
                    worker,
                    f"did not come back within {RECONCILE_GRACE:g}s",
                    attempts,
                    count_loss=False,
                )
        self._in_doubt.clear()


def check_held_answer(answer: Any) -> tuple[list[tuple[str, int]], list[TaskResult]]:
    """
    Read a worker's HELD_TASKS answer: C{running}, C{[task id, attempt]}
    pairs, and C{finished}, C{{"id", "attempt", "result"}} objects.

    @raise ValidationError: naming what is wrong with it.
    """
    if not isinstance(answer, dict):
        raise ValidationError(f"it is {_describe(answer)}, not an object with lists running and finished")
    running, finished = answer.get("running"), answer.get("finished")
    if not isinstance(running, list) or not isinstance(finished, list):
        raise ValidationError("its 'running' and 'finished' must be lists")
    pairs = []
    for entry in running:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
        ):
            raise ValidationError(f"its 'running' holds {_describe(entry)}, not a [task id, attempt] pair")
        pairs.append((entry[0], entry[1]))
    results = []
    for entry in finished:
        if not isinstance(entry, dict) or not isinstance(entry.get("result"), dict):
            raise ValidationError(f"its 'finished' holds {_describe(entry)}, not an object with a result")
        result = TaskResult.from_wire(entry["result"])
        if (result.task_id, result.attempt) != (entry.get("id"), entry.get("attempt")):
            raise ValidationError(f"its 'finished' result of {result.task_id} does not match its id and attempt")
        results.append(result)
    return pairs, results


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
