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

from collections import OrderedDict, deque

import attr
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.interfaces import IResultSink, ITaskRunner
from p2pexec.log import MAX_IDS_IN_LOG, NodeLogger, format_ids
from p2pexec.model import ERROR, RETURNED, SUCCEEDED, Assignment, TaskResult

log = NodeLogger()

MAX_CACHED_RESULTS = 10_000
"""The most unacknowledged results a worker keeps."""

MAX_CACHED_BYTES = 64 * 1024 * 1024
"""The most output (stdout and stderr tails) the kept results may hold."""

AttemptKey = tuple[str, str, str, int]
"""(master name, job, task id, attempt)."""


@attr.s(auto_attribs=True, slots=True)
class _Queued:
    sink: IResultSink
    job: str
    assignment: Assignment


class Worker:
    """
    Runs the tasks that masters assign to this node.

    @ivar running: how many tasks are running now.
    @ivar completed: how many attempts this worker has finished in all.
    """

    def __init__(
        self,
        name: str,
        capabilities: frozenset[str],
        slots: int,
        runner: ITaskRunner,
        clock: IReactorTime,
    ) -> None:
        self.name = name
        self.capabilities = capabilities
        self.slots = slots
        self._runner = runner
        self._clock = clock
        self._queue: deque[_Queued] = deque()
        self._unsent: dict[tuple[tuple[str, str], str], tuple[IResultSink, list[TaskResult]]] = {}
        self._flush_call: IDelayedCall | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.running = 0
        self.completed = 0
        self.accepting = True
        self._starting = False
        self._running_for: dict[tuple[str, str], int] = {}
        self._active: dict[AttemptKey, _Queued] = {}
        self._cache: OrderedDict[AttemptKey, TaskResult] = OrderedDict()
        self._cache_bytes = 0
        self._cancelled: set[AttemptKey] = set()
        self._stopped_leaving: set[AttemptKey] = set()
        self.answered_from_cache = 0
        self.cache_evictions = 0

    @staticmethod
    def _key(entry: _Queued) -> AttemptKey:
        return (entry.sink.key[0], entry.job, entry.assignment.task.id, entry.assignment.attempt)

    @property
    def queued(self) -> int:
        """How many assigned tasks wait for a slot."""
        return len(self._queue)

    def accept(self, sink: IResultSink, job: str, assignments: list[Assignment]) -> int:
        """
        Queue a batch of tasks from one master and start what fits.

        @raise commands.ShuttingDown: if the node is leaving.
        @raise commands.NotCapable: if any task is of a kind this node does
            not run; then none of the batch is queued.
        """
        if not self.accepting:
            raise commands.ShuttingDown(f"node {self.name} is shutting down and takes no new tasks")
        missing = sorted({a.task.kind for a in assignments} - self.capabilities)
        if missing:
            raise commands.NotCapable(
                f"node {self.name} does not run task kind(s) {', '.join(missing)}; "
                f"it runs {', '.join(sorted(self.capabilities)) or 'nothing'}"
            )
        log.info(
            "Node {name} received instructions: {ids}",
            name=self.name,
            ids=format_ids([a.task.id for a in assignments]),
            job=job,
            count=len(assignments),
        )
        for assignment in assignments:
            entry = _Queued(sink, job, assignment)
            key = self._key(entry)
            cached = self._cache.get(key)
            if cached is not None:
                # Assigned again after its confirmation was lost: answer, do not rerun.
                self.answered_from_cache += 1
                self._add_unsent(entry.sink, entry.job, cached)
                self._schedule_flush()
            elif key not in self._active:
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
                entry = self._queue.popleft()
                self.running += 1
                self._running_for[entry.sink.key] = self._running_for.get(entry.sink.key, 0) + 1
                task = entry.assignment.task
                started.append((task.id, entry.job))
                if task.command is None:
                    self._finished(
                        entry,
                        TaskResult(
                            task_id=task.id,
                            attempt=entry.assignment.attempt,
                            status=SUCCEEDED,
                            node=self.name,
                        ),
                    )
                else:
                    running = maybeDeferred(self._runner.run, entry.job, entry.assignment)
                    running.addErrback(self._runner_failed, entry)
                    running.addCallback(lambda result, entry=entry: self._finished(entry, result))
        finally:
            self._starting = False
        self._log_started(started)

    def _runner_failed(self, failure: Failure, entry: _Queued) -> TaskResult:
        """
        The runner broke instead of reporting how the task ended (a bug):
        log it, and end the attempt as an C{error} result naming it, so the
        slot is freed and the master hears of the task.
        """
        task = entry.assignment.task
        log.failure("Node {name} could not run task {task}", failure, name=self.name, task=task.id, job=entry.job)
        return TaskResult(
            task_id=task.id,
            attempt=entry.assignment.attempt,
            status=ERROR,
            node=self.name,
            error=f"node {self.name} could not run it: {failure.getErrorMessage() or failure.type.__name__}",
        )

    def _log_started(self, started: list[tuple[str, str]]) -> None:
        """One line per task, as the original; one line per burst past L{MAX_IDS_IN_LOG}."""
        if len(started) <= MAX_IDS_IN_LOG:
            for task_id, job in started:
                log.info("Node {name} executing: {task}", name=self.name, task=task_id, job=job)
        else:
            log.info(
                "Node {name} executing {count} tasks: {ids}",
                name=self.name,
                count=len(started),
                ids=format_ids([task_id for task_id, _ in started]),
            )

    def _finished(self, entry: _Queued, result: TaskResult) -> None:
        self.running -= 1
        left = self._running_for[entry.sink.key] - 1
        if left:
            self._running_for[entry.sink.key] = left
        else:
            del self._running_for[entry.sink.key]
        self.completed += 1
        key = self._key(entry)
        self._active.pop(key, None)
        if key in self._stopped_leaving:
            # Stopped because the node is leaving: handed back, to run elsewhere.
            self._stopped_leaving.discard(key)
            result = TaskResult(
                task_id=result.task_id,
                attempt=result.attempt,
                status=RETURNED,
                node=self.name,
                error=f"node {self.name} is leaving; stopped after the drain timeout",
            )
        if key in self._cancelled:
            self._cancelled.discard(key)
        else:
            if result.status != RETURNED and entry.sink.key[0] != self.name:
                # Kept for a remote master until it acknowledges; this node's
                # own master gets it directly and dies with this worker.
                self._remember(key, result)
            self._add_unsent(entry.sink, entry.job, result)
            self._schedule_flush()
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

    def _remember(self, key: AttemptKey, result: TaskResult) -> None:
        """Keep a finished result until its master acknowledges it (bounded)."""
        self._cache[key] = result
        self._cache_bytes += len(result.stdout) + len(result.stderr)
        while len(self._cache) > MAX_CACHED_RESULTS or self._cache_bytes > MAX_CACHED_BYTES:
            old_key, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old.stdout) + len(old.stderr)
            self.cache_evictions += 1
            log.warn(
                "Node {name} dropped the unacknowledged result of {task} (job {job}) from its full cache; "
                "if master {master} asks for it, it runs again",
                name=self.name,
                task=old_key[2],
                job=old_key[1],
                master=old_key[0],
            )

    def acknowledged(self, master: str, job: str, results: list[TaskResult]) -> None:
        """C{master} has these results for good: forget them."""
        for result in results:
            old = self._cache.pop((master, job, result.task_id, result.attempt), None)
            if old is not None:
                self._cache_bytes -= len(old.stdout) + len(old.stderr)

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
            cached = self._cache.get(key)
            if cached is not None:
                answer["done"].append(task_id)
                self.answered_from_cache += 1
                self._add_unsent(sink, job, cached)
            elif key in self._active:
                answer["running"].append(task_id)
            else:
                answer["unknown"].append(task_id)
        if answer["done"]:
            self._schedule_flush()
        return answer

    def cancel(self, master: str, job: str) -> tuple[int, int]:
        """
        Stop every task of C{job} from C{master}: queued ones never start,
        running ones are terminated (their process groups), and none of
        their results is sent.

        @return: (how many were dropped from the queue, how many were stopped).
        """
        dropped = [e for e in self._queue if e.sink.key[0] == master and e.job == job]
        if dropped:
            self._queue = deque(e for e in self._queue if not (e.sink.key[0] == master and e.job == job))
            for entry in dropped:
                self._active.pop(self._key(entry), None)
        running = [entry for key, entry in self._active.items() if key[0] == master and key[1] == job]
        for entry in running:
            self._cancelled.add(self._key(entry))
            self._runner.stop(entry.job, entry.assignment)
        for key in [k for k in self._cache if k[0] == master and k[1] == job]:
            old = self._cache.pop(key)
            self._cache_bytes -= len(old.stdout) + len(old.stderr)
        self._unsent = {k: v for k, v in self._unsent.items() if not (k[0][0] == master and k[1] == job)}
        log.info(
            "Node {name} cancelled job {job} of master {master}: {dropped} queued task(s) dropped, "
            "{stopped} running task(s) stopped",
            name=self.name,
            job=job,
            master=master,
            dropped=len(dropped),
            stopped=len(running),
        )
        self._notify_if_idle()
        return len(dropped), len(running)

    def _add_unsent(self, sink: IResultSink, job: str, result: TaskResult) -> None:
        key = (sink.key, job)
        unsent = self._unsent.get(key)
        if unsent is None:
            self._unsent[key] = (sink, [result])
        else:
            unsent[1].append(result)

    def flush(self) -> None:
        """Send every finished result not yet sent, one batch per master and job."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        unsent, self._unsent = self._unsent, {}
        for (_, job), (sink, results) in unsent.items():
            sink.deliver(job, results)

    def masters_with_work(self) -> set[str]:
        """Names of the masters whose tasks are queued or running here."""
        names = {key[0] for key in self._running_for}
        names.update(entry.sink.key[0] for entry in self._queue)
        return names

    def drop_from(self, master: tuple[str, str]) -> int:
        """
        Forget the queued (not yet started) tasks of a master that went away;
        it puts them back itself.

        @return: how many were dropped.
        """
        before = len(self._queue)
        kept: deque[_Queued] = deque()
        for entry in self._queue:
            if entry.sink.key == master:
                self._active.pop(self._key(entry), None)
            else:
                kept.append(entry)
        self._queue = kept
        dropped = before - len(self._queue)
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
        handed_back = list(self._queue)
        self._queue.clear()
        for entry in handed_back:
            self._active.pop(self._key(entry), None)
            self._add_unsent(
                entry.sink,
                entry.job,
                TaskResult(
                    task_id=entry.assignment.task.id,
                    attempt=entry.assignment.attempt,
                    status=RETURNED,
                    node=self.name,
                    error=f"node {self.name} is leaving; not run",
                ),
            )
        self.flush()
        self._notify_if_idle()
        return len(handed_back)

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
        reported as failed.
        """
        self._stopped_leaving.update(key for key in self._active if key not in self._cancelled)
        self._runner.stop_all()

    def settled(self) -> Deferred[None]:
        """
        Fires once nothing this worker signalled is left running (a runner
        without processes is settled at once).
        """
        settled = getattr(self._runner, "settled", None)
        return settled() if settled is not None else succeed(None)

    def _notify_if_idle(self) -> None:
        if self.running == 0 and not self._queue and self._idle_waiters:
            waiting, self._idle_waiters = self._idle_waiters, []
            for d in waiting:
                d.callback(None)
