"""
Files travel with tasks, on the worker side: L{FileRunner} wraps the node's
L{ITaskRunner} (the process executor).

A task without inputs or outputs goes straight to the inner runner.  For one
with files, each attempt:

  1. fetches the inputs this node's blob store lacks (FETCH_BLOB pieces, see
     L{p2pexec.transfer}) from the job's leader first, then from every other
     connected peer (C{sources(job)}); a node that leads the job itself finds
     them in its own store;
  2. makes a fresh sandbox (C{STATE/sandboxes/JOB/TASK/ATTEMPT}), unless the
     task sets C{cwd}, and places copies of the inputs there;
  3. runs the task there (the inner runner, with C{cwd} set to the sandbox);
  4. collects the declared outputs, adds each to the store (in a thread:
     it hashes the whole file), and pushes each to the job's leader
     (PUT_BLOB pieces; nothing when this node leads the job);
  5. reports the result with its outputs (path, size, SHA-256), or failed
     with the reason; then removes the sandbox.

The store, the sandboxes and the transfers are seams (the L{typing.Protocol}s
below): L{p2pexec.file_parts} gives the real ones (L{p2pexec.blobs},
L{p2pexec.sandbox}, L{p2pexec.transfer}), tests give fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import attr
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2pexec.blob_thread import IBlobWriter
from p2pexec.blobs import FRESH_PIN
from p2pexec.file_values import MAX_RESULT_OUTPUTS
from p2pexec.interfaces import ITaskRunner
from p2pexec.log import NodeLogger
from p2pexec.model import ERROR, FAILED, SUCCEEDED, Assignment, OutputFile, TaskResult, TaskSpec
from p2pexec.transfer import rate

log = NodeLogger()

T = TypeVar("T")

OUTPUT_RECORD_BYTES = 100
"""A result's record of one output file, beyond its path: its digest, size and JSON punctuation (an upper bound)."""

MAX_OUTPUT_RECORDS_BYTES = 36_000
"""The most bytes of output records one result carries: with its output tails, it must fit one AMP value."""

COLLECTED = frozenset({SUCCEEDED, FAILED})
"""The statuses after which a task's outputs are collected: it ran to its end (a failed one's outputs help to see why)."""


class IBlobStore(Protocol):
    """What L{FileRunner} uses of a L{p2pexec.blobs.BlobStore}."""

    max_transfer: int

    def has(self, digest: str) -> bool:
        """Whether the blob is here (marking it recently used)."""

    def read(self, digest: str, offset: int, limit: int) -> bytes:
        """Up to C{limit} bytes of the blob from C{offset}."""

    def receive(self, digest: str, size: int) -> IBlobWriter:
        """A writer for a blob coming in."""

    def add_file(self, path: str, move: bool = False, pin: bool = False) -> tuple[str, int]:
        """Hash the file at C{path} and keep it (pinned as it is kept, if asked); its (digest, size)."""

    def pin(self, digests: Iterable[str]) -> None:
        """Keep these blobs from eviction until unpinned (in memory)."""

    def unpin(self, digests: Iterable[str]) -> None:
        """Undo one pin of each."""


class ISandboxes(Protocol):
    """What L{FileRunner} uses of L{p2pexec.sandbox.Sandboxes}."""

    def create(self, job: str, task: str, attempt: int) -> str:
        """A fresh empty folder for one attempt."""

    def remove(self, directory: str) -> None:
        """Remove a sandbox (never raises)."""


class FileOps(Protocol):
    """The functions of L{p2pexec.sandbox} and L{p2pexec.transfer} that L{FileRunner} calls."""

    def place_inputs(self, store: Any, directory: str, inputs: Sequence[tuple[str, str]]) -> None:
        """Copy each (name, digest) blob to C{directory/name}."""

    def collect_outputs(
        self, directory: str, patterns: Sequence[tuple[str, bool]], max_transfer: int
    ) -> tuple[list[tuple[str, str]], str | None]:
        """The files matching the (glob, optional) patterns, as (relative, absolute) paths, and an error or None."""

    def pull(self, caller: Any, writer: Any) -> Deferred[None]:
        """Fetch a blob into C{writer} from C{caller} (FETCH_BLOB), then finish it."""

    def push(self, caller: Any, read: Callable[[int, int], bytes], digest: str, size: int) -> Deferred[int]:
        """Send a blob to C{caller} (PUT_BLOB); fire with the bytes sent."""


class InThread(Protocol):
    """Runs a blocking call away from the reactor: C{deferToThread}, or a synchronous one in tests."""

    def __call__(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Call C{f(*args, **kwargs)}; fire with its value or its failure."""


@attr.s(auto_attribs=True)
class FileCounters:
    """
    What the file runner moved, for the node's status and metrics.

    @ivar inputs_fetched: input blobs fetched from another node.
    @ivar inputs_fetched_bytes: their bytes.
    @ivar inputs_cached: inputs found in this node's store (nothing moved).
    @ivar outputs_sent: output blobs pushed to a job's leader.
    @ivar outputs_sent_bytes: the bytes those pushes sent (0 for one the leader had).
    @ivar file_errors: attempts ended by a file problem (fetch, path, missing output, push).
    """

    inputs_fetched: int = 0
    inputs_fetched_bytes: int = 0
    inputs_cached: int = 0
    outputs_sent: int = 0
    outputs_sent_bytes: int = 0
    file_errors: int = 0


class FileProblem(Exception):
    """An attempt cannot go on because of one of its files; str() is the result's error, one sentence."""

    def __init__(self, message: str, status: str = ERROR) -> None:
        super().__init__(message)
        self.status = status


def has_files(task: TaskSpec) -> bool:
    """Whether C{task} declares inputs or outputs."""
    return bool(task.inputs or task.outputs)


def _short(digest: str) -> str:
    return digest[:8] + "..."


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


class FileRunner:
    """
    An L{ITaskRunner} that brings a task's inputs and takes its outputs back
    around an C{inner} runner (see the module's docstring).

    @ivar counters: what it moved (L{FileCounters}).
    """

    def __init__(
        self,
        inner: ITaskRunner,
        store: IBlobStore,
        sandboxes: ISandboxes,
        sources: Callable[[str], Sequence[Any]],
        push_to: Callable[[str], Any | None],
        clock: IReactorTime,
        in_thread: InThread,
        ops: FileOps,
        name: str = "",
        restricted: bool = False,
    ) -> None:
        """
        @param sources: the connections (AMP callers) to fetch a job's inputs
            from, best first: its leader, then the other connected peers.
        @param push_to: the connection to the job's leader, for its outputs;
            C{None} when this node leads the job (its store is the leader's);
            it raises L{LookupError} (saying why) when the leader cannot be reached.
        @param in_thread: runs the blocking file work (hashing, copying).
        @param ops: the placing, collecting and transfer functions.
        @param name: this node's name, for the log.
        @param restricted: whether the node's command policy (C{--allow},
            C{--instructions}) narrows what it runs: a task with inputs and
            its own C{cwd} is then refused, as its files could land in any
            folder the node can write (an allowed program's, say).
        """
        self._inner = inner
        self._store = store
        self._sandboxes = sandboxes
        self._sources = sources
        self._push_to = push_to
        self._clock = clock
        self._in_thread = in_thread
        self._ops = ops
        self._name = name
        self._restricted = restricted
        self._fetching: dict[str, list[Deferred[None]]] = {}
        self._stopped: set[tuple[str, str, int]] = set()
        self._preparing: set[tuple[str, str, int]] = set()
        self.counters = FileCounters()

    # -- ITaskRunner -----------------------------------------------------------

    def run(self, job: str, assignment: Assignment) -> Deferred[TaskResult]:
        """Run one attempt: straight through the inner runner without files, else with them (never fails)."""
        if not has_files(assignment.task):
            return self._inner.run(job, assignment)
        return Deferred.fromCoroutine(self._run(job, assignment))

    def stop(self, job: str, assignment: Assignment) -> None:
        """Terminate one attempt: before its process started, it never starts; after, the inner runner stops it."""
        key = (job, assignment.task.id, assignment.attempt)
        if key in self._preparing:
            self._stopped.add(key)
        self._inner.stop(job, assignment)

    def stop_all(self) -> None:
        """Terminate every attempt (those still fetching never start)."""
        self._stopped.update(self._preparing)
        self._inner.stop_all()

    def settled(self) -> Deferred[None]:
        """Fires once the inner runner has nothing signalled left running."""
        return self._inner.settled()

    # -- one attempt -----------------------------------------------------------

    async def _run(self, job: str, assignment: Assignment) -> TaskResult:
        task = assignment.task
        key = (job, task.id, assignment.attempt)
        sandbox: str | None = None
        self._preparing.add(key)
        # The inputs stay in the cache from their fetch until they are placed,
        # even when fetching a later one would evict them.
        inputs = [item.sha256 for item in task.inputs]
        self._store.pin(inputs)
        try:
            try:
                if self._restricted and (task.inputs or task.outputs) and task.cwd is not None:
                    raise FileProblem(
                        f"refused by this node's command policy: task {task.id} names its own cwd "
                        f"{task.cwd!r} and files (inputs or outputs); under --allow or --instructions, a task's "
                        f"files are placed and collected only in a fresh sandbox (leave cwd out)"
                    )
                await self._fetch_inputs(job, task)
                directory = task.cwd
                if directory is None:
                    sandbox = directory = self._sandboxes.create(job, task.id, assignment.attempt)
                await self._place_inputs(task, directory)
            except FileProblem as e:
                return self._problem(job, assignment, e)
            finally:
                self._store.unpin(inputs)
                self._preparing.discard(key)
                stopped = key in self._stopped
                self._stopped.discard(key)
            if stopped:
                why = f"node {self._name} stopped it before it started (while its input files were prepared)"
                return self._problem(job, assignment, FileProblem(why))
            inner = attr.evolve(assignment, task=attr.evolve(task, cwd=directory))
            result: TaskResult = await maybeDeferred(self._inner.run, job, inner)
            if not task.outputs or result.status not in COLLECTED:
                return result
            try:
                outputs = await self._take_outputs(job, task, directory, move=sandbox is not None)
            except FileProblem as e:
                if result.status != SUCCEEDED:
                    return result  # it failed already: its own reason says more
                self.counters.file_errors += 1
                log.warn(
                    "Node {name}: task {task} of job {job}: {error}", name=self._name, task=task.id, job=job, error=e
                )
                return attr.evolve(result, status=e.status, error=str(e))
            return attr.evolve(result, outputs=outputs)
        finally:
            if sandbox is not None:
                self._remove(sandbox)

    def _problem(self, job: str, assignment: Assignment, problem: FileProblem) -> TaskResult:
        """The result of an attempt that did not run because of a file: C{error}, with the reason."""
        self.counters.file_errors += 1
        task = assignment.task
        log.warn(
            "Node {name}: task {task} of job {job}: {error}", name=self._name, task=task.id, job=job, error=problem
        )
        return TaskResult(
            task_id=task.id, attempt=assignment.attempt, status=problem.status, node=self._name, error=str(problem)
        )

    def _remove(self, sandbox: str) -> None:
        """Remove a sandbox in a thread (it may hold big files); a failure is only logged."""

        def failed(failure: Any) -> None:
            log.warn(
                "Node {name} could not remove sandbox {path}: {error}", name=self._name, path=sandbox, error=failure
            )

        self._in_thread(self._sandboxes.remove, sandbox).addErrback(failed)

    # -- inputs ----------------------------------------------------------------

    async def _fetch_inputs(self, job: str, task: TaskSpec) -> None:
        """Fetch every input the store lacks, one after the other (the same blob once, however many ask)."""
        for item in task.inputs:
            if self._store.has(item.sha256):
                self.counters.inputs_cached += 1
                continue
            try:
                await self._fetch_once(job, item.sha256, item.size, item.name)
            except Exception as e:
                raise FileProblem(
                    f"could not fetch input {item.name} (sha256 {_short(item.sha256)}) of task {task.id}: {_reason(e)}"
                ) from None

    def _fetch_once(self, job: str, digest: str, size: int, name: str) -> Deferred[None]:
        """Fetch one blob, or wait for the fetch of it already under way."""
        waiting = self._fetching.get(digest)
        if waiting is not None:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            return d
        self._fetching[digest] = []

        def done(outcome: Any) -> Any:
            for waiter in self._fetching.pop(digest, []):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(None)
            return outcome

        return Deferred.fromCoroutine(self._fetch(job, digest, size, name)).addBoth(done)

    async def _fetch(self, job: str, digest: str, size: int, name: str) -> None:
        """Pull one blob from the first source that gives it; fail with the last reason."""
        sources = list(self._sources(job))
        if not sources:
            raise LookupError("no connected node to fetch it from")
        reason = ""
        for caller in sources:
            writer = self._store.receive(digest, size)
            started = self._clock.seconds()
            try:
                # On failure the pull aborts the writer itself, after the writes it queued:
                # aborting here too could close the file under a write still under way.
                await self._ops.pull(caller, writer)
            except Exception as e:
                reason = _reason(e)
                continue
            took = self._clock.seconds() - started
            self.counters.inputs_fetched += 1
            self.counters.inputs_fetched_bytes += size
            log.info(
                "Node {name} fetched input {input} ({size} bytes, sha256 {digest}) from {peer} in {took:.2f}s ({rate})",
                name=self._name,
                input=name,
                size=f"{size:,}",
                digest=_short(digest),
                peer=getattr(caller, "peer_name", None) or "a peer",
                took=took,
                rate=rate(size, took),
            )
            return
        raise LookupError(reason)

    async def _place_inputs(self, task: TaskSpec, directory: str) -> None:
        """Copy the inputs into the task's folder (in a thread)."""
        if not task.inputs:
            return
        pairs = [(item.name, item.sha256) for item in task.inputs]
        try:
            await self._in_thread(self._ops.place_inputs, self._store, directory, pairs)
        except KeyError as e:
            raise FileProblem(
                f"an input of task {task.id} left this node's cache before it was placed ({e}): "
                f"--cache-size is too small for the task's inputs"
            ) from None
        except (ValueError, OSError) as e:
            raise FileProblem(f"could not place the inputs of task {task.id}: {_reason(e)}") from None

    # -- outputs ---------------------------------------------------------------

    async def _take_outputs(self, job: str, task: TaskSpec, directory: str, move: bool) -> tuple[OutputFile, ...]:
        """Collect, store and push the declared outputs; their records, in path order."""
        patterns = [(pattern.glob, pattern.optional) for pattern in task.outputs]
        try:
            found, error = await self._in_thread(
                self._ops.collect_outputs, directory, patterns, self._store.max_transfer
            )
        except (ValueError, OSError) as e:
            raise FileProblem(f"task {task.id}: could not collect its outputs: {_reason(e)}", FAILED) from None
        if error is not None:
            raise FileProblem(f"task {task.id}: {error}", FAILED)
        records = sum(len(relative.encode("utf-8")) + OUTPUT_RECORD_BYTES for relative, _ in found)
        if len(found) > MAX_RESULT_OUTPUTS or records > MAX_OUTPUT_RECORDS_BYTES:
            raise FileProblem(
                f"task {task.id}: its output patterns matched {len(found):,} files, more than one result can list "
                f"(at most {MAX_RESULT_OUTPUTS:,} files and about {MAX_OUTPUT_RECORDS_BYTES:,} bytes of their "
                f"records, here {records:,}): archive them into fewer files, or narrow the patterns",
                FAILED,
            )
        try:
            leader = self._push_to(job)
        except LookupError as e:
            raise FileProblem(f"task {task.id}: could not send its outputs: {_reason(e)}") from None
        outputs: list[OutputFile] = []
        taken: dict[str, tuple[str, int]] = {}
        for relative, path in found:
            if path in taken:
                # The same file under another name (a symlink in the folder): stored once, moved away already.
                digest, size = taken[path]
            else:
                try:
                    digest, size = await self._in_thread(self._store.add_file, path, move, True)
                except (ValueError, OSError) as e:
                    raise FileProblem(f"task {task.id}: output {relative}: {_reason(e)}", FAILED) from None
                taken[path] = (digest, size)
                self._pin_for_a_while(digest)
            if leader is not None:
                await self._push(leader, task, relative, digest, size)
            outputs.append(OutputFile(path=relative, size=size, sha256=digest))
        return tuple(outputs)

    def _pin_for_a_while(self, digest: str) -> None:
        """
        Unpin, L{FRESH_PIN} seconds from now, a new output the store pinned as
        it was added: until the job's master holds it (its result applied),
        or while it is pushed (a later output must not evict an earlier one).
        """
        self._clock.callLater(FRESH_PIN, self._store.unpin, [digest])

    async def _push(self, leader: Any, task: TaskSpec, relative: str, digest: str, size: int) -> None:
        """Send one output to the job's leader (nothing if it has it)."""
        store = self._store
        try:
            sent = await self._ops.push(leader, lambda offset, limit: store.read(digest, offset, limit), digest, size)
        except Exception as e:
            raise FileProblem(
                f"task {task.id}: could not send output {relative} to the job's master: {_reason(e)}"
            ) from None
        self.counters.outputs_sent += 1
        self.counters.outputs_sent_bytes += sent


def synchronous(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """An L{InThread} that calls at once, in this thread (for tests, and for small work)."""
    return maybeDeferred(f, *args, **kwargs)
