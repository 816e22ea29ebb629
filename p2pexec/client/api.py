"""
The Twisted API of the client: L{connect} gives an L{AsyncClient}, whose
methods return Deferreds (awaitable in a coroutine) or async iterators::

    from twisted.internet import task
    from p2pexec.client import connect

    async def main(reactor):
        client = await connect(reactor, "127.0.0.1:10001")
        try:
            job = await client.submit([{"id": "t1", "kind": "sh", "command": ["echo", "hi"]}])
            async for result in client.results(job):
                print(result.id, result.status, result.stdout)
        finally:
            client.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))

Progress is polled (JOB_STATUS every C{poll_interval} seconds, then the
tasks that ended, JOB_TASKS); when the connection to the node is lost while
following a job, the client asks the other nodes it learned of
(CLUSTER_STATUS) and goes on through one that knows the job, as the
C{p2pexec} command does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater

from p2pexec import commands
from p2pexec.client import calls
from p2pexec.client.connection import DEFAULT_TIMEOUT, NodeClient, parse_address
from p2pexec.client.errors import ClientError, OutputNotReady
from p2pexec.client.fetching import FetchSummary, fetch_outputs
from p2pexec.client.keys import check_tls, find_key, load_key_file, node_connector
from p2pexec.client.results import JobRef, JobResult, JobStatus, TaskResult
from p2pexec.model import TaskSpec

POLL_INTERVAL = 0.5
"""Seconds between two questions while following a job or a task's output (lines show within a second)."""

STREAMS = ("stdout", "stderr")
"""The streams of a task's output."""

T = TypeVar("T")

TaskInput = TaskSpec | Mapping[str, Any]
"""A task to submit: a L{TaskSpec}, or a job file's task object (C{{"id", "kind", "command", ...}})."""

JobLike = JobRef | str
"""A job, by its L{JobRef} or its id."""


def job_id(job: JobLike | Any) -> str:
    """The id of C{job}: a L{JobRef}, anything with an C{id}, or the id itself."""
    if isinstance(job, str):
        return job
    identifier = getattr(job, "id", None)
    if not isinstance(identifier, str):
        raise TypeError(f"expected a job or a job id, not {job!r}")
    return identifier


def _names_local_files(tasks: Sequence[TaskInput], defaults: Mapping[str, Any] | None) -> bool:
    """Whether some task object (or the defaults) has C{inputs}: local files to read and send first."""
    return bool((defaults or {}).get("inputs")) or any(
        not isinstance(task, TaskSpec) and bool(task.get("inputs")) for task in tasks
    )


def _with_inputs_read(tasks: Sequence[TaskInput], defaults: Mapping[str, Any] | None) -> list[TaskSpec]:
    """
    Task objects (with C{defaults} applied) as L{TaskSpec}s whose inputs are
    read and hashed, relative to the current folder, as a job file's are.

    @raise JobRefused: for a bad task or input (naming it), or task objects mixed with L{TaskSpec}s.
    """
    from p2pexec.client.errors import JobRefused
    from p2pexec.jobfile import JobFileError, parse_job

    objects = [task for task in tasks if not isinstance(task, TaskSpec)]
    if len(objects) != len(tasks):
        raise JobRefused("give tasks with input files all as task objects or all as TaskSpecs, not mixed")
    document: dict[str, Any] = {"task": [dict(task) for task in objects]}
    if defaults:
        document["defaults"] = dict(defaults)
    try:
        return parse_job(document, label="job", base=os.getcwd())
    except JobFileError as e:
        raise JobRefused(str(e)) from None


def _progress(status: JobStatus) -> tuple[Any, ...]:
    """What a change of is worth a L{JobStatus} event: not the time elapsed."""
    return (status.state, status.done, status.total, sorted(status.counts.items()), status.master)


class _Following:
    """
    Where one job is followed: its route (the node it is asked through,
    and the others to try), and what was seen of it so far.
    """

    def __init__(self, way: calls.Route) -> None:
        self.way = way
        self.status: JobStatus | None = None
        self.tasks: list[TaskResult] = []
        self.seen: set[tuple[str, int]] = set()


class LogPieces:
    """
    The pieces of a task's output that L{AsyncClient.logs} gives: an async
    iterator of bytes, which also tells what the node said of the output
    with the last piece (each C{None} until the node first answered):

    @ivar cut: whether the stream went past the worker's --max-output, so
        that the rest was dropped (the worker appends a line saying so).
    @ivar size: bytes of the stream the worker kept so far.
    @ivar attempt: the attempt of the task whose output this is.
    @ivar node: the worker that kept it.
    """

    def __init__(self, make: Callable[[LogPieces], AsyncIterator[bytes]]) -> None:
        self.cut: bool | None = None
        self.size: int | None = None
        self.attempt: int | None = None
        self.node: str | None = None
        self._pieces = make(self)

    def answered(self, answer: Mapping[str, Any]) -> None:
        """Note what a TASK_OUTPUT answer says of the output."""
        self.cut = bool(answer.get("cut"))
        self.size = answer.get("size")
        self.attempt = answer.get("attempt")
        self.node = answer.get("node")

    def __aiter__(self) -> LogPieces:
        return self

    async def __anext__(self) -> bytes:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        """Stop reading (the node is asked nothing more)."""
        closing = getattr(self._pieces, "aclose", None)
        if closing is not None:
            await closing()


class AsyncClient:
    """
    A connection to one node, for submitting, following, inspecting and
    cancelling jobs.  Every failure is a L{ClientError} (see
    L{p2pexec.client.errors}) with a one-line message.

    @ivar address: C{HOST:PORT} of the node.
    """

    def __init__(
        self,
        node: calls.Caller,
        clock: Any,
        connect: calls.Connect | None = None,
        poll_interval: float = POLL_INTERVAL,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """
        @param node: the connected node (a L{NodeClient}, or a double).
        @param clock: an C{IReactorTime}, for the pauses between questions.
        @param connect: connects to another node by C{HOST:PORT}, to follow
            a job when the connection to C{node} is lost; C{None}: never.
        @param poll_interval: seconds between two questions while following.
        @param on_close: called by L{close}, to close the connections.
        """
        self._node = node
        self._clock = clock
        self._connect = connect
        self._poll = poll_interval
        self._on_close = on_close
        self.address = node.address

    # -- one question each ----------------------------------------------------------

    def submit(
        self, tasks: Sequence[TaskInput] | str, defaults: Mapping[str, Any] | None = None, priority: int | None = None
    ) -> Deferred[JobRef]:
        """
        Submit a job: C{tasks} are L{TaskSpec}s or job-file task objects
        (see docs/jobs.rst), or C{tasks} is the path of a job file.  The node
        becomes the job's master.

        @param defaults: a job file's C{[defaults]} table, for every task.
        @param priority: the job's priority, a whole number from -1,000,000
            to 1,000,000 (higher runs first); C{None}: the job file's
            C{[job] priority} when C{tasks} is a path, else 0.
        @return: a Deferred firing with the job's L{JobRef}, once the job is
            in the master's journal; or failing with L{p2pexec.client.errors.JobRefused}
            (naming the task and field at fault, or the bad C{priority}), or another L{ClientError}.
        """
        return Deferred.fromCoroutine(self._submit(tasks, defaults, priority))

    async def _submit(
        self, tasks: Sequence[TaskInput] | str, defaults: Mapping[str, Any] | None, priority: int | None
    ) -> JobRef:
        priority = calls.check_priority(priority)
        if isinstance(tasks, str):
            from p2pexec.client.errors import JobRefused
            from p2pexec.jobfile import JobFileError, load_job_file, load_job_priority

            try:
                loaded = load_job_file(tasks)
                if priority is None:
                    # As `p2pexec submit`: 0 (the default) is not sent, for nodes before issue 15.
                    priority = load_job_priority(tasks) or None
            except JobFileError as e:
                raise JobRefused(str(e)) from None
            except (OSError, ValueError) as e:
                raise JobRefused(f"job file {tasks}: {e}") from None
            tasks = loaded
        elif _names_local_files(tasks, defaults):
            # Task objects naming local files: read them here, as a job file's (relative to the current folder).
            tasks, defaults = _with_inputs_read(tasks, defaults), None
        listed = list(tasks)
        identifier = await calls.submit_tasks(self._node, listed, defaults, priority)
        return JobRef(identifier, self.address, len(listed))

    def status(self, job: JobLike) -> Deferred[JobStatus]:
        """The job's progress now (JOB_STATUS)."""
        return Deferred.fromCoroutine(self._status(job))

    async def _status(self, job: JobLike) -> JobStatus:
        return JobStatus.from_summary(await calls.job_status(self._node, job_id(job)))

    def result(self, job: JobLike) -> Deferred[JobResult]:
        """The job's progress and every task's result now, without waiting for its end (see L{wait})."""
        return Deferred.fromCoroutine(self._result(job))

    async def _result(self, job: JobLike) -> JobResult:
        status = await self._status(job)
        tasks = await calls.all_tasks(self._node, job_id(job))
        return JobResult(status, tuple(TaskResult.from_entry(task) for task in tasks))

    def jobs(self) -> Deferred[list[JobStatus]]:
        """The jobs the node is master of, newest first, then those it holds replicas of (LIST_JOBS)."""

        async def jobs() -> list[JobStatus]:
            answer = await self._node.call(commands.ListJobs)
            return [JobStatus.from_summary(job) for job in answer["jobs"]]

        return Deferred.fromCoroutine(jobs())

    def fetch(self, job: JobLike, into: str = ".") -> Deferred[FetchSummary]:
        """
        Fetch the output files of the job's results into C{into/JOB/TASK/PATH},
        each checked against its size and SHA-256 (FETCH_BLOB, through this
        node); a file already there with the same content is left alone.
        Fires with a L{FetchSummary}, whose C{problems} name each output not
        fetched (one line each).
        """
        return Deferred.fromCoroutine(fetch_outputs(self._node, job_id(job), into))

    def cancel(self, job: JobLike) -> Deferred[int]:
        """Cancel the job (CANCEL_JOB): no task of it starts any more, running ones are stopped; how many were cancelled."""
        return Deferred.fromCoroutine(calls.cancel_job(self._node, job_id(job)))

    # -- following ------------------------------------------------------------------

    def watch(self, job: JobLike) -> AsyncIterator[JobStatus | TaskResult]:
        """
        Follow the job to its end: a L{JobStatus} each time its progress
        changes, and a L{TaskResult} for each task as it ends (before the
        status that counts it); the last item is the final L{JobStatus}.
        """
        return self._watch(job, None)

    async def results(self, job: JobLike) -> AsyncIterator[TaskResult]:
        """Each task's result as it ends, until the job ends (see L{watch})."""
        async for event in self._watch(job, None):
            if isinstance(event, TaskResult):
                yield event

    def wait(self, job: JobLike) -> Deferred[JobResult]:
        """Wait for the job to end; its final progress and every task's result."""

        async def wait() -> JobResult:
            following = await self._start_following(job_id(job))
            async for _ in self._watch(job, following):
                pass
            assert following.status is not None
            return JobResult(following.status, tuple(following.tasks))

        return Deferred.fromCoroutine(wait())

    async def _start_following(self, job: str) -> _Following:
        return _Following(await calls.route(self._node, self._connect))

    async def _ask(self, following: _Following, job: str, ask: Callable[[calls.Caller], Awaitable[T]]) -> T:
        """C{ask} the node the job is followed through; once lost, through the next that knows it."""
        try:
            return await ask(following.way.node)
        except ClientError as e:
            if not e.lost or self._connect is None:
                raise
            await calls.switch_node(self._connect, job, following.way, e)
            return await ask(following.way.node)

    async def _watch(self, job: JobLike, following: _Following | None) -> AsyncIterator[JobStatus | TaskResult]:
        identifier = job_id(job)
        if following is None:
            following = await self._start_following(identifier)
        while True:
            status = JobStatus.from_summary(
                await self._ask(following, identifier, lambda node: calls.job_status(node, identifier))
            )
            previous = following.status
            if previous is None or status.done != previous.done or status.ended:
                entries = await self._ask(following, identifier, lambda node: calls.all_tasks(node, identifier))
                following.tasks = [TaskResult.from_entry(entry) for entry in entries]
                for task in following.tasks:
                    key = (task.id, task.attempt)
                    if task.ended and key not in following.seen:
                        following.seen.add(key)
                        yield task
            following.status = status
            if previous is None or _progress(status) != _progress(previous):
                yield status
            if status.ended:
                return
            await deferLater(self._clock, self._poll, lambda: None)

    def logs(self, job: JobLike, task: str, stream: str = "stdout", follow: bool = False) -> LogPieces:
        """
        A task's whole output (TASK_OUTPUT), as pieces of bytes: what was
        kept so far; with C{follow}, what it writes next too, until its
        attempt ends (and, if it has not started yet, from its start).
        Once it is consumed, its C{cut} says whether the worker cut the
        stream at its --max-output (see L{LogPieces}).

        @param stream: C{"stdout"} or C{"stderr"}.
        @raise ValueError: for another C{stream}.
        """
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        return LogPieces(lambda pieces: self._logs(job_id(job), task, stream, follow, pieces))

    async def _logs(self, job: str, task: str, stream: str, follow: bool, pieces: LogPieces) -> AsyncIterator[bytes]:
        offset = 0
        while True:
            try:
                answer = await calls.task_output(self._node, job, task, stream, offset)
            except OutputNotReady:
                if not follow:
                    raise
                await deferLater(self._clock, self._poll, lambda: None)
                continue
            pieces.answered(answer)
            data, following, size = answer["data"], answer["next_offset"], answer["size"]
            if data:
                yield data
            if following < size:
                if following <= offset and not data:
                    raise calls.NoProgress(
                        f"the node at {self.address} answered TASK_OUTPUT with no progress (next_offset={following})"
                    )
                offset = following
                continue
            offset = following
            if not follow or answer["ended"]:
                return
            await deferLater(self._clock, self._poll, lambda: None)

    def close(self) -> None:
        """Close the connections this client opened."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def connect(
    reactor: Any,
    address: str = "127.0.0.1:10001",
    key_file: str | None = None,
    tls: bool = False,
    *,
    key: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    follow_other_nodes: bool = True,
    endpoint: IStreamClientEndpoint | None = None,
) -> Deferred[AsyncClient]:
    """
    Connect to the node at C{address}, as the C{p2pexec} command does.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @param address: C{HOST:PORT}, C{HOST} (port 10001) or C{[IPV6]:PORT}.
    @param key_file: the cluster key's file (or a node's
        C{STATE_DIR/local-token}); without one, the node's local token if
        the node is this user's (found in its runtime record), else no key.
    @param tls: speak TLS, to a node that runs C{--tls} (needs C{key_file}).
    @param key: the key itself, instead of C{key_file}.
    @param timeout: seconds to wait for the connection, and for each answer.
    @param poll_interval: seconds between two questions while following.
    @param follow_other_nodes: when the connection is lost while following
        a job, ask the other nodes the node knew of.
    @param endpoint: how to reach the node (tests: an in-memory network).
    @return: a Deferred firing with an L{AsyncClient}, or failing with a
        L{ClientError} (L{p2pexec.client.errors.ConnectFailed},
        L{p2pexec.client.errors.AuthenticationFailed}, ...).
    """

    async def connecting() -> AsyncClient:
        host, port = parse_address(address)
        cluster_key = key if key is not None else (load_key_file(key_file) if key_file else None)
        node_key = cluster_key if cluster_key is not None else find_key(host, port)
        check_tls(tls, cluster_key)
        node = NodeClient(reactor, host, port, timeout, key=node_key, tls=tls, endpoint=endpoint)
        await node.connect()
        opened = [node]

        def close() -> None:
            for each in opened:
                each.close()

        others = node_connector(reactor, cluster_key, tls, timeout, opened) if follow_other_nodes else None
        return AsyncClient(node, reactor, others, poll_interval, close)

    return Deferred.fromCoroutine(connecting())
