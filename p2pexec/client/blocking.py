"""
The blocking client, for scripts and notebooks: L{Client} and L{Job} run
the L{p2pexec.client.api} client on Twisted's reactor in a background
thread, and wait for each answer::

    from p2pexec.client import Client

    with Client("127.0.0.1:10001") as cluster:
        job = cluster.submit([{"id": "t1", "kind": "sh", "command": ["echo", "hi"]}])
        for result in job.results():      # as they complete
            print(result.id, result.status, result.stdout)

One reactor per process: Twisted's reactor cannot be started twice.  The
first L{Client} starts it in a daemon thread (C{p2pexec-reactor}), which
every later L{Client} shares until the process ends (an exit handler stops
it); closing a client closes only its connections.  So clients can be made
and closed any number of times, in any thread but the reactor's own.

When the program runs the reactor itself (a Twisted program), the clients
use that reactor: they work from other threads (C{deferToThread}); in the
reactor's thread, where waiting would block the very loop that must answer,
they refuse with L{ClientClosed} (use L{p2pexec.client.connect} there).
A program that calls C{reactor.run()} after a L{Client} started the reactor
gets Twisted's C{ReactorAlreadyRunning}.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python import threadable

from p2pexec.client.api import POLL_INTERVAL, AsyncClient, JobLike, LogPieces, TaskInput, connect, job_id
from p2pexec.client.connection import DEFAULT_TIMEOUT
from p2pexec.client.errors import ClientClosed
from p2pexec.client.fetching import FetchSummary
from p2pexec.client.results import JobRef, JobResult, JobStatus, TaskResult

T = TypeVar("T")

START_TIMEOUT = 10.0
"""Seconds to wait for the background reactor to start."""

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def reactor_thread(reactor: Any) -> threading.Thread | None:
    """
    Make sure C{reactor} runs, in a daemon thread started here if nothing
    runs it yet; return that thread (C{None}: the program runs it).

    @raise ClientClosed: if called in the reactor's own thread, or if the
        reactor cannot run (it ran and stopped before, in this process).
    """
    global _thread
    with _lock:
        if reactor.running:
            if threadable.isInIOThread():
                raise ClientClosed(
                    "the blocking Client cannot wait in the reactor's own thread: "
                    "use p2pexec.client.connect() there, or call it from another thread"
                )
            return _thread
        if _thread is not None and _thread.is_alive():
            return _thread
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                reactor.run(installSignalHandlers=False)
            except BaseException as e:
                failed.append(e)
            finally:
                started.set()

        reactor.callWhenRunning(started.set)
        thread = threading.Thread(target=run, name="p2pexec-reactor", daemon=True)
        thread.start()
        started.wait(START_TIMEOUT)
        if failed or not reactor.running:
            why = f"{type(failed[0]).__name__}: {failed[0]}" if failed else "it did not start"
            raise ClientClosed(
                f"cannot run Twisted's reactor for the client ({why}); one reactor runs once per process"
            )
        if _thread is None:
            atexit.register(_stop, reactor, thread)
        _thread = thread
        return thread


def _stop(reactor: Any, thread: threading.Thread) -> None:
    """At exit: stop the reactor started for the clients, and let its thread end."""
    if reactor.running:
        reactor.callFromThread(reactor.stop)
        thread.join(START_TIMEOUT)


class _Bridge:
    """Runs a client's operations in the reactor's thread and waits for them in the caller's."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def wait(self, start: Callable[[], Deferred[T]]) -> T:
        """Call C{start} in the reactor's thread; what its Deferred fires with, or its failure raised here."""
        result: T = self.call(start)  # type: ignore[assignment]
        return result

    def call(self, function: Callable[[], T]) -> T:
        """Call C{function} in the reactor's thread; its result (a Deferred's, once fired) or its exception."""
        if threadable.isInIOThread():
            raise ClientClosed(
                "the blocking Client cannot wait in the reactor's own thread: use p2pexec.client.connect()"
            )
        result: T = blockingCallFromThread(self.reactor, function)
        return result

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Generator[T, None, None]:
        """Iterate over the async iterator C{make()} gives, one item per wait."""
        iterator = self.call(make)

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await iterator.__anext__()
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            closing = getattr(iterator, "aclose", None)
            if closing is not None:
                await closing()

        finished = False
        try:
            while True:
                more, item = self.wait(lambda: Deferred.fromCoroutine(step()))
                if not more:
                    finished = True
                    return
                yield item  # type: ignore[misc]
        finally:
            if not finished and self.reactor.running:
                self.wait(lambda: Deferred.fromCoroutine(close()))


class Client:
    """
    A blocking client of a p2pexec node (a context manager: closed at the
    end of its C{with}).  Every failure is a L{ClientError} (see
    L{p2pexec.client.errors}) with a one-line message.

    @ivar address: C{HOST:PORT} of the node.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:10001",
        key_file: str | None = None,
        tls: bool = False,
        *,
        key: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        reactor: Any = None,
    ) -> None:
        """
        Connect to the node at C{address}, with its key found as the
        C{p2pexec} command finds it (see L{p2pexec.client.connect} for the
        parameters); C{reactor} defaults to Twisted's global reactor, started
        in a background thread if nothing runs it.

        @raise ClientError: if the node cannot be reached or refuses the key.
        """
        self._reactor = reactor if reactor is not None else _global_reactor()
        reactor_thread(self._reactor)
        self._bridge = _Bridge(self._reactor)
        self._client: AsyncClient | None = self._bridge.wait(
            lambda: connect(
                self._reactor, address, key_file, tls, key=key, timeout=timeout, poll_interval=poll_interval
            )
        )
        self.address = self._client.address

    def _async(self) -> AsyncClient:
        if self._client is None:
            raise ClientClosed(f"this client of {self.address} is closed")
        return self._client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; the client cannot be used afterwards (closing twice is harmless)."""
        client, self._client = self._client, None
        if client is not None and self._reactor.running:
            self._bridge.call(client.close)

    def submit(
        self, tasks: Sequence[TaskInput] | str, defaults: Mapping[str, Any] | None = None, priority: int | None = None
    ) -> Job:
        """
        Submit a job (L{TaskSpec}s or job-file task objects, or the path of
        a job file; see L{AsyncClient.submit}) at C{priority} (C{None}: the
        job file's C{[job] priority}, else 0) and return its L{Job}.
        """
        client = self._async()
        ref: JobRef = self._bridge.wait(lambda: client.submit(tasks, defaults, priority))
        return Job(self, ref.id)

    def job(self, job: JobLike) -> Job:
        """The L{Job} of an id (no question asked)."""
        return Job(self, job_id(job))

    def jobs(self) -> list[JobStatus]:
        """The jobs the node is master of, newest first (LIST_JOBS)."""
        client = self._async()
        return self._bridge.wait(client.jobs)

    def status(self, job: JobLike) -> JobStatus:
        """The job's progress now."""
        client = self._async()
        return self._bridge.wait(lambda: client.status(job))

    def result(self, job: JobLike) -> JobResult:
        """The job's progress and every task's result now, without waiting."""
        client = self._async()
        return self._bridge.wait(lambda: client.result(job))

    def wait(self, job: JobLike) -> JobResult:
        """Wait for the job to end; its final progress and every task's result."""
        client = self._async()
        return self._bridge.wait(lambda: client.wait(job))

    def results(self, job: JobLike) -> Iterator[TaskResult]:
        """Each task's result as it ends, until the job ends."""
        client = self._async()
        return self._bridge.iterate(lambda: client.results(job))

    def watch(self, job: JobLike) -> Iterator[JobStatus | TaskResult]:
        """The job's progress as it changes, and each task's result as it ends (see L{AsyncClient.watch})."""
        client = self._async()
        return self._bridge.iterate(lambda: client.watch(job))

    def cancel(self, job: JobLike) -> int:
        """Cancel the job; how many tasks were cancelled."""
        client = self._async()
        return self._bridge.wait(lambda: client.cancel(job))

    def fetch(self, job: JobLike, into: str = ".") -> FetchSummary:
        """The output files of the job's results, fetched into C{into/JOB/TASK/PATH} (see L{AsyncClient.fetch})."""
        client = self._async()
        return self._bridge.wait(lambda: client.fetch(job, into))

    def logs(self, job: JobLike, task: str, stream: str = "stdout", follow: bool = False) -> Logs:
        """
        A task's whole output, in pieces of bytes; with C{follow}, until its
        attempt ends (see L{AsyncClient.logs}); then its C{cut} says whether
        the worker cut it (see L{Logs}).
        """
        client = self._async()
        return Logs(self._bridge, lambda: client.logs(job, task, stream, follow))


class Logs:
    """
    The pieces of a task's output that L{Client.logs} gives: an iterator of
    bytes, which also tells what the node said of the output with the last
    piece (each C{None} until the node first answered; see L{LogPieces}):
    C{cut} (the stream went past the worker's --max-output and the rest was
    dropped), C{size} (bytes kept so far), C{attempt}, C{node}.
    """

    def __init__(self, bridge: _Bridge, make: Callable[[], LogPieces]) -> None:
        self._async: LogPieces | None = None

        def made() -> LogPieces:
            self._async = make()
            return self._async

        self._pieces = bridge.iterate(made)

    def __iter__(self) -> Logs:
        return self

    def __next__(self) -> bytes:
        return next(self._pieces)

    def close(self) -> None:
        """Stop reading before the end."""
        self._pieces.close()

    @property
    def cut(self) -> bool | None:
        """Whether the worker cut the stream at its --max-output."""
        return None if self._async is None else self._async.cut

    @property
    def size(self) -> int | None:
        """Bytes of the stream the worker kept so far."""
        return None if self._async is None else self._async.size

    @property
    def attempt(self) -> int | None:
        """The attempt whose output this is."""
        return None if self._async is None else self._async.attempt

    @property
    def node(self) -> str | None:
        """The worker that kept it."""
        return None if self._async is None else self._async.node


class Job:
    """
    A job, for the blocking L{Client} that submitted (or named) it.

    @ivar id: the job's id.
    """

    def __init__(self, client: Client, identifier: str) -> None:
        self.client = client
        self.id = identifier

    def __repr__(self) -> str:
        return f"<Job {self.id} at {self.client.address}>"

    def __str__(self) -> str:
        return self.id

    def status(self) -> JobStatus:
        """Its progress now."""
        return self.client.status(self.id)

    def result(self) -> JobResult:
        """Its progress and every task's result now, without waiting."""
        return self.client.result(self.id)

    def wait(self) -> JobResult:
        """Wait for it to end; its final progress and every task's result."""
        return self.client.wait(self.id)

    def results(self) -> Iterator[TaskResult]:
        """Each task's result as it ends, until the job ends."""
        return self.client.results(self.id)

    def watch(self) -> Iterator[JobStatus | TaskResult]:
        """Its progress as it changes, and each task's result as it ends."""
        return self.client.watch(self.id)

    def cancel(self) -> int:
        """Cancel it; how many tasks were cancelled."""
        return self.client.cancel(self.id)

    def fetch(self, into: str = ".") -> FetchSummary:
        """Its results' output files, fetched into C{into/JOB/TASK/PATH} (see L{AsyncClient.fetch})."""
        return self.client.fetch(self.id, into)

    def logs(self, task: str, stream: str = "stdout", follow: bool = False) -> Logs:
        """A task's whole output, in pieces of bytes; with C{follow}, until its attempt ends (see L{Logs})."""
        return self.client.logs(self.id, task, stream, follow)


__all__ = ["Client", "Job", "Logs"]
