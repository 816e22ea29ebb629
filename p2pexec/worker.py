"""
The worker side of a node: a queue of assigned tasks, run at most C{slots} at
a time, with their results batched back to each task's master.

Results are not sent one by one: everything that finishes within one reactor
turn goes back to its master as a single EXECUTION_CONFIRMATION batch.

Every finished result stays in a bounded cache until its master has
acknowledged it, keyed by (master, job, task, attempt): a master that lost
the confirmation (its connection dropped, or it restarted) is answered from
the cache when it asks (L{Worker.query}) or assigns the same attempt again,
and the task does not run twice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attr
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.attempt_states import ATTEMPT, HOLDS_SLOT, KEPT, AttemptEvent, AttemptOutput, AttemptState, query_answer
from p2pexec.fairshare import WorkerQueue, master_of, priority_of
from p2pexec.fence import Fence
from p2pexec.interfaces import IResultSink, ITaskRunner
from p2pexec.log import NodeLogger, format_ids, log_started
from p2pexec.model import ERROR, RETURNED, SUCCEEDED, Assignment, TaskResult
from p2pexec.replicas import Ballot
from p2pexec.resource_use import Pool
from p2pexec.resources import NodeResources

log = NodeLogger()

MAX_CACHED_RESULTS = 10_000
"""The most unacknowledged results a worker keeps."""

MAX_CACHED_BYTES = 64 * 1024 * 1024
"""The most output (stdout and stderr tails) the kept results may hold."""

AttemptKey = tuple[str, str, str, int]
"""(master name, job, task id, attempt)."""


@attr.s(auto_attribs=True, slots=True, eq=False)
class _Attempt:
    """
    One task attempt on this worker.

    @ivar key: its (master, job, task, attempt).
    @ivar state: where it stands (see L{p2pexec.attempt_states}).
    @ivar result: what goes (or went) to its master once it ended: its
        result, or the C{returned} one when the node is leaving.
    @ivar claimed: a master asked about it since its own went away (see L{Worker.drop_from}).
    """

    sink: IResultSink
    job: str
    assignment: Assignment
    key: AttemptKey
    state: AttemptState = AttemptState.QUEUED
    result: TaskResult | None = None
    claimed: bool = False


_ENDED = AttemptEvent.ENDED
_ENDED_NOT_KEPT = AttemptEvent.ENDED_NOT_KEPT
_QUEUED = AttemptState.QUEUED
_CANCELLED = AttemptState.CANCELLED
_STOP_PROCESS = AttemptOutput.STOP_PROCESS
_TAKE_SLOT = AttemptOutput.TAKE_SLOT
_RUN = AttemptOutput.RUN
_FREE_SLOT = AttemptOutput.FREE_SLOT
_KEEP_RESULT = AttemptOutput.KEEP_RESULT
_QUEUE_RESULT = AttemptOutput.QUEUE_RESULT
_FORGET_RESULT = AttemptOutput.FORGET_RESULT
_QUEUE_RETURNED = AttemptOutput.QUEUE_RETURNED
_COUNT_FROM_CACHE = AttemptOutput.COUNT_FROM_CACHE
_UNQUEUE = AttemptOutput.UNQUEUE
_UNQUEUE_RESULT = AttemptOutput.UNQUEUE_RESULT
_START = AttemptEvent.START
_ACKNOWLEDGED = AttemptEvent.ACKNOWLEDGED
_FLUSHED = AttemptEvent.FLUSHED
_step = ATTEMPT.step
_HELD = (_QUEUED, AttemptState.RUNNING)


class Worker:
    """
    Runs the tasks that masters assign to this node.

    Each attempt's state is one L{AttemptState} on it, stepped by the
    L{ATTEMPT} machine; the containers below are indexes of it, each filled
    and emptied by the machine's outputs (L{_perform}):

      - C{_queue}: the attempts in QUEUED, started by priority, then fair share between masters (L{WorkerQueue});
      - C{_active}: the attempts queued or running (L{ACTIVE}), by key;
      - C{_running_for}: how many hold a slot, per master;
      - C{_cache}: the attempts whose result is kept until acknowledged
        (L{KEPT}), oldest first;
      - C{_unsent}: the attempts whose result waits for this turn's batch.

    @ivar running: how many tasks are running now.
    @ivar completed: how many attempts this worker has finished in all.
    @ivar fence: the highest ballot seen per job (see L{p2pexec.fence}).
    @ivar lease: seconds the tasks of a master that went away are kept
        (queued ones too) for a new leader to adopt; 0 drops its queued
        tasks at once.
    """

    def __init__(
        self,
        name: str,
        capabilities: frozenset[str],
        slots: int,
        runner: ITaskRunner,
        clock: IReactorTime,
        lease: float = 0.0,
        resources: NodeResources | None = None,
    ) -> None:
        self.name = name
        self.pool = Pool(name, resources)
        self.lease = lease
        self.fence = Fence(name, clock, self.holds_job)
        self.capabilities = capabilities
        self.slots = slots
        self._runner = runner
        self._clock = clock
        self._queue = WorkerQueue(master_of, priority_of, lambda key: self._running_for.get(key, 0))
        self._unqueued = False
        self._unsent: dict[tuple[tuple[str, str], str], tuple[IResultSink, list[_Attempt]]] = {}
        self._flush_call: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.running = 0
        self.completed = 0
        self.accepting = True
        self._starting = False
        self._running_for: dict[tuple[str, str], int] = {}
        self._active: dict[AttemptKey, _Attempt] = {}
        self._cache: OrderedDict[AttemptKey, _Attempt] = OrderedDict()
        self._cache_bytes = 0
        self.answered_from_cache = 0
        self.cache_evictions = 0

    @property
    def queued(self) -> int:
        """How many assigned tasks wait for a slot."""
        return len(self._queue)

    def state_of(self, master: str, job: str, task_id: str, attempt: int) -> AttemptState | None:
        """The state of an attempt this worker holds (queued, running or kept), or C{None}."""
        key = (master, job, task_id, attempt)
        entry = self._active.get(key) or self._cache.get(key)
        return None if entry is None else entry.state

    # -- the machine ----------------------------------------------------------

    def _fire(self, entry: _Attempt, event: AttemptEvent) -> None:
        """Step C{entry}'s machine with C{event} and perform the outputs."""
        entry.state, outputs = _step(entry.state, event)
        if outputs:
            self._perform(entry, outputs)

    def _perform(self, entry: _Attempt, outputs: tuple[AttemptOutput, ...]) -> None:
        """Do what the attempt machine answered, in order (the one place that does)."""
        # Module constants, most frequent first: an enum member looked up on
        # its class costs a Python-level call on every test.
        for output in outputs:
            if output is _TAKE_SLOT:
                self.running += 1
                master = entry.sink.key
                self._running_for[master] = self._running_for.get(master, 0) + 1
            elif output is _RUN:
                self._run(entry)
            elif output is _FREE_SLOT:
                # Starting what fits next is the caller's, once every output is done.
                self.running -= 1
                master = entry.sink.key
                left = self._running_for[master] - 1
                if left:
                    self._running_for[master] = left
                else:
                    del self._running_for[master]
                self.completed += 1
                del self._active[entry.key]
                if entry.assignment.task.request is not None:
                    self.pool.release(entry.key)
            elif output is _KEEP_RESULT:
                self._remember(entry)
            elif output is _QUEUE_RESULT:
                self._add_unsent(entry)
                self._schedule_flush()
            elif output is _FORGET_RESULT:
                if self._cache.pop(entry.key, None) is not None:
                    result = entry.result
                    assert result is not None
                    self._cache_bytes -= len(result.stdout) + len(result.stderr)
            elif output is _QUEUE_RETURNED:
                entry.result = self._returned(entry)
                self._add_unsent(entry)
                self._schedule_flush()
            elif output is _COUNT_FROM_CACHE:
                self.answered_from_cache += 1
            elif output is _UNQUEUE:
                # The callers that unqueue compact the queue once, after the lot.
                del self._active[entry.key]
                self._unqueued = True
            elif output is _STOP_PROCESS:
                self._runner.stop(entry.job, entry.assignment)
            elif output is _UNQUEUE_RESULT:
                pass  # flush() skips cancelled attempts
            else:  # pragma: no cover (every output is handled above)
                raise AssertionError(output)

    def _compact_queue(self) -> None:
        """Take the attempts that left QUEUED out of the queue (one pass for a whole cancel, drop or leave)."""
        if self._unqueued:
            self._unqueued = False
            self._queue.keep(lambda entry: entry.state is _QUEUED)

    def _returned(self, entry: _Attempt) -> TaskResult:
        """The C{returned} result of an attempt handed back because the node is leaving."""
        why = "not run" if entry.result is None else "stopped after the drain timeout"
        return TaskResult(
            task_id=entry.assignment.task.id,
            attempt=entry.assignment.attempt,
            status=RETURNED,
            node=self.name,
            error=f"node {self.name} is leaving; {why}",
        )

    # -- tasks ----------------------------------------------------------------

    def accept(self, sink: IResultSink, job: str, assignments: list[Assignment], ballot: Ballot | None = None) -> int:
        """
        Queue a batch of tasks from one master (at C{ballot}) and start what fits.

        @raise commands.StaleBallot: if a newer ballot was seen for C{job}.
        @raise commands.ShuttingDown: if the node is leaving.
        @raise commands.NotCapable: if any task is of a kind this node does
            not run; then none of the batch is queued.
        @raise commands.DoesNotFit: if any asks for more than this node has (L{Pool.check}).
        """
        if not self.accepting:
            raise commands.ShuttingDown(f"node {self.name} is shutting down and takes no new tasks")
        missing = sorted({a.task.kind for a in assignments} - self.capabilities)
        if missing:
            raise commands.NotCapable(
                f"node {self.name} does not run task kind(s) {', '.join(missing)}; "
                f"it runs {', '.join(sorted(self.capabilities)) or 'nothing'}"
            )
        self.pool.check(assignments)
        if ballot is not None:
            self.fence.check(job, ballot, "an assignment")
        log.info(
            "Node {name} received instructions: {ids}",
            name=self.name,
            ids=format_ids([a.task.id for a in assignments]),
            job=job,
            count=len(assignments),
        )
        master = sink.key[0]
        for assignment in assignments:
            key = (master, job, assignment.task.id, assignment.attempt)
            cached = self._cache.get(key)
            if cached is not None:
                # Assigned again after its confirmation was lost: answer, do not rerun.
                cached.sink = sink
                self._fire(cached, AttemptEvent.RESEND)
            else:
                active = self._active.get(key)
                if active is not None:
                    self._fire(active, AttemptEvent.ASSIGNED_AGAIN)
                else:
                    entry = _Attempt(sink, job, assignment, key)
                    self._active[key] = entry
                    self._queue.append(entry)
        self._start_what_fits()
        return len(assignments)

    def _start_what_fits(self) -> None:
        """
        Start queued tasks while slots are free.  Instructions finish at
        once, freeing their slot for the next; the loop (not recursion) takes
        care of that, however long the queue.
        """
        if self._starting:
            return
        self._starting = True
        started: list[tuple[str, str]] = []
        try:
            while self._queue and self.running < self.slots:
                # By priority and fair share; one asking for resources only if they are free (L{Pool.start_next}).
                entry = self.pool.start_next(self._queue)
                if entry is None:
                    break
                started.append((entry.assignment.task.id, entry.job))
                entry.state, outputs = _step(entry.state, _START)
                self._perform(entry, outputs)
        finally:
            self._starting = False
        log_started(log, self.name, started)

    def _run(self, entry: _Attempt) -> None:
        """Run an attempt that took a slot: an instruction ends at once, a command through the runner."""
        task = entry.assignment.task
        if task.command is None:
            self._finished(
                entry,
                TaskResult(task_id=task.id, attempt=entry.assignment.attempt, status=SUCCEEDED, node=self.name),
            )
        else:
            running = maybeDeferred(self._runner.run, entry.job, entry.assignment)
            running.addErrback(self._runner_failed, entry)
            running.addCallback(lambda result: self._finished(entry, result))

    def _runner_failed(self, failure: Failure, entry: _Attempt) -> TaskResult:
        """
        The runner broke instead of reporting how the task ended (a bug):
        log it, and end the attempt as an C{error} result naming it, so the
        slot is freed and the master hears of the task.
        """
        task = entry.assignment.task
        log.failure("Node {name} could not run task {task}", failure, name=self.name, task=task.id, job=entry.job)
        what = failure.getErrorMessage() or (failure.type.__name__ if failure.type is not None else "unknown error")
        return TaskResult(
            task_id=task.id,
            attempt=entry.assignment.attempt,
            status=ERROR,
            node=self.name,
            error=f"node {self.name} could not run it: {what}",
        )

    def _finished(self, entry: _Attempt, result: TaskResult) -> None:
        """
        An attempt's run ended.  Its state says what follows (kept and sent,
        sent, handed back, or dropped); a result for a remote master that is
        not C{returned} is kept until acknowledged, this node's own master
        gets it directly and dies with this worker.
        """
        entry.result = result
        event = _ENDED if result.status != RETURNED and entry.key[0] != self.name else _ENDED_NOT_KEPT
        entry.state, outputs = _step(entry.state, event)
        if outputs:
            self._perform(entry, outputs)
        if entry.assignment.task.command is None:
            # Instructions finish inside the start loop, which goes on.
            self._start_what_fits()
        else:
            # A process ended.  Its result goes out with the others of this
            # turn; the next task starts one reactor turn later, once that
            # result has been written, so that a node killed while spawning
            # leaves no finished task unconfirmed.
            self._clock.callLater(0, self._clock.callLater, 0, self._start_what_fits)
        self._notify_if_idle()

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def _remember(self, entry: _Attempt) -> None:
        """Keep a finished result until its master acknowledges it (bounded)."""
        self._cache[entry.key] = entry
        self._cache_bytes += _size(entry)
        while len(self._cache) > MAX_CACHED_RESULTS or self._cache_bytes > MAX_CACHED_BYTES:
            old_key, old = self._cache.popitem(last=False)
            self._cache_bytes -= _size(old)
            self.cache_evictions += 1
            self._fire(old, AttemptEvent.EVICTED)
            log.warn(
                "Node {name} dropped the unacknowledged result of {task} (job {job}) from its full cache; "
                "if master {master} asks for it, it runs again",
                name=self.name,
                task=old_key[2],
                job=old_key[1],
                master=old_key[0],
            )

    def acknowledged(self, master: str, job: str, results: list[TaskResult], ballot: Ballot | None = None) -> None:
        """C{master}'s job's leader (at C{ballot}) has these results for good: forget them, unless it is deposed."""
        if ballot is not None and not self.fence.admits(job, ballot):
            self.fence.note_refused(job, ballot, "an acknowledgement")
            return
        for result in results:
            entry = self._cache.get((master, job, result.task_id, result.attempt))
            if entry is not None:
                entry.state, outputs = _step(entry.state, _ACKNOWLEDGED)
                self._perform(entry, outputs)

    def query(self, sink: IResultSink, job: str, attempts: list[tuple[str, int]]) -> dict[str, list[str]]:
        """
        A master (restarted, or reconnected) asks what became of these
        attempts.  Finished ones are sent to C{sink} again, from the cache.

        @return: C{{"done": ids, "running": ids, "unknown": ids}}; unknown
            ones never reached this node, or were dropped with their
            master's connection before they started.
        """
        master = sink.key[0]
        answer: dict[str, list[str]] = {"done": [], "running": [], "unknown": []}
        for task_id, attempt in attempts:
            key = (master, job, task_id, attempt)
            entry = self._cache.get(key) or self._active.get(key)
            said = "unknown" if entry is None else query_answer(entry.state)
            answer[said].append(task_id)
            if entry is not None:
                entry.claimed = True
            if said == "done":
                assert entry is not None
                entry.sink = sink
                self._fire(entry, AttemptEvent.RESEND)
        return answer

    def cancel(
        self, master: str, job: str, ballot: Ballot | None = None, only: set[tuple[str, int]] | None = None
    ) -> tuple[int, int]:
        """
        Stop every task of C{job} from C{master} (from any master, for a
        leader past epoch 1), or C{only} these (task id, attempt): queued ones
        never start, running ones are terminated (their process groups), and
        none of their results is sent.

        @return: (how many were dropped from the queue, how many were stopped).
        @raise commands.StaleBallot: if a newer ballot than C{ballot} was seen for C{job}.
        """
        if ballot is not None:
            self.fence.check(job, ballot, "a cancel")
        anyone = ballot is not None and ballot.epoch > 1
        dropped = stopped = 0
        held = [e for k, e in self._active.items() if k[1] == job and (anyone or k[0] == master)]
        held += [e for k, e in self._cache.items() if k[1] == job and (anyone or k[0] == master)]
        for batch_key, (_, entries) in self._unsent.items():
            if batch_key[1] == job and (anyone or batch_key[0][0] == master):
                held += [e for e in entries if e.state is not _CANCELLED and not ATTEMPT.is_final(e.state)]
        seen: set[int] = set()
        for entry in held:
            if id(entry) in seen or entry.state is _CANCELLED or (only is not None and entry.key[2:] not in only):
                continue
            seen.add(id(entry))
            if entry.state is _QUEUED:
                dropped += 1
            elif entry.state in HOLDS_SLOT:
                stopped += 1
            self._fire(entry, AttemptEvent.CANCEL)
        self._compact_queue()
        log.info(
            "Node {name} cancelled {what} of master {master}: {dropped} queued task(s) dropped, "
            "{stopped} running task(s) stopped",
            name=self.name,
            what=f"job {job}" if only is None else f"{format_ids(sorted(t for t, _ in only))} of job {job}",
            job=job,
            master=master,
            dropped=dropped,
            stopped=stopped,
        )
        self._notify_if_idle()
        return dropped, stopped

    def _add_unsent(self, entry: _Attempt) -> None:
        key = (entry.sink.key, entry.job)
        unsent = self._unsent.get(key)
        if unsent is None:
            self._unsent[key] = (entry.sink, [entry])
        else:
            unsent[1].append(entry)

    def flush(self) -> None:
        """Send every finished result not yet sent, one batch per master and job."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        unsent, self._unsent = self._unsent, {}
        for (_, job), (sink, entries) in unsent.items():
            results: list[TaskResult] = []
            for entry in entries:
                # A cancelled attempt's result is unqueued (UNQUEUE_RESULT): skipped here.
                if entry.state is not _CANCELLED and entry.result is not None:
                    results.append(entry.result)
                    # FLUSHED has no outputs in any state.
                    entry.state, _ = _step(entry.state, _FLUSHED)
            if results:
                sink.deliver(job, results)

    def masters_with_work(self) -> set[str]:
        """Names of the masters whose tasks are queued or running here."""
        names = {key[0] for key in self._running_for}
        names.update(entry.sink.key[0] for entry in self._queue)
        return names

    def held(self, job: str, ballot: Ballot) -> dict[str, list[Any]]:
        """
        A new leader of C{job} (at C{ballot}) asks what this worker holds of it
        (HELD_TASKS): it adopts the job; the kept results go to it as confirmations.

        @return: C{{"running": [(task, attempt)], "finished": [result]}}.
        @raise commands.StaleBallot: if a newer ballot was seen for C{job}.
        """
        self.fence.adopt(job, ballot)
        held = [e for k, e in self._active.items() if k[1] == job and e.state in _HELD]
        kept = [e for k, e in self._cache.items() if k[1] == job and e.state in KEPT]
        for entry in held:
            entry.claimed = True
        for entry in kept:
            self._fire(entry, AttemptEvent.RESEND)
        running = [(e.assignment.task.id, e.assignment.attempt) for e in held]
        return {"running": running, "finished": [e.result for e in kept]}

    def holds_job(self, job: str) -> bool:
        """Whether C{job} has an attempt queued, running or kept here."""
        return any(k[1] == job for k in self._active) or any(k[1] == job for k in self._cache)

    def drop_from(self, master: tuple[str, str], lease: bool = True) -> int:
        """
        A master went away.  With a L{lease}, keep its tasks for a new leader to
        adopt, and drop the queued ones none adopted when it is over; without
        (or C{lease} false: the same process is back and put them back), now.

        @return: how many were dropped.
        """
        if lease and self.lease > 0 and any(e.sink.key == master for e in self._active.values()):
            why = "Node {name} keeps the tasks of master {master}, which went away, for {lease:g}s for a new leader"
            log.info(why, name=self.name, master=master[0], lease=self.lease)
            self._clock.callLater(self.lease, self.drop_from, master, False)
            return 0
        dropped = 0
        for entry in self._queue:
            if entry.sink.key == master and not (entry.claimed and lease is False):
                self._fire(entry, AttemptEvent.MASTER_GONE)
                dropped += 1
        self._compact_queue()
        if dropped:
            log.info(
                "Node {name} dropped {count} queued task(s) of master {master}, which went away",
                name=self.name,
                count=dropped,
                master=master[0],
            )
        self._notify_if_idle()
        return dropped

    def stop_accepting(self) -> int:
        """
        Refuse new tasks from now on, and hand the queued ones back to their
        masters (as C{returned} results, sent at once) so that they run
        elsewhere without waiting for this node to leave.

        @return: how many tasks were handed back.
        """
        self.accepting = False
        handed_back = len(self._queue)
        for entry in self._queue:
            self._fire(entry, AttemptEvent.STOP_ACCEPTING)
        self._compact_queue()
        self.flush()
        self._notify_if_idle()
        return handed_back

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once nothing runs and nothing is queued."""
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        self._notify_if_idle()
        return d

    def stop_running(self) -> None:
        """
        Terminate every running task (when draining times out): each is
        handed back to its master as C{returned}, to run elsewhere, not
        reported as failed.  (Queued ones were handed back already, by
        L{stop_accepting}.)
        """
        for entry in self._active.values():
            if entry.state in HOLDS_SLOT:
                entry.state, outputs = _step(entry.state, AttemptEvent.STOP_RUNNING)
                # STOP_PROCESS for each, done at once below.
                assert outputs in ((), (_STOP_PROCESS,)), outputs
        self._runner.stop_all()

    def settled(self) -> Deferred[None]:
        """Fires once nothing this worker signalled is left running (see L{ITaskRunner.settled})."""
        return self._runner.settled()

    def _notify_if_idle(self) -> None:
        if self.running == 0 and not self._queue and self._idle_waiters:
            waiting, self._idle_waiters = self._idle_waiters, []
            for d in waiting:
                d.callback(None)


def _size(entry: _Attempt) -> int:
    """The bytes of output a kept attempt's result holds."""
    assert entry.result is not None
    return len(entry.result.stdout) + len(entry.result.stderr)
