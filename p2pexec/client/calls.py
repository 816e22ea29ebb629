"""
The client commands as operations over one node (a L{Caller}), on the
dicts of the wire: submit a job in parts, page through its tasks, cancel
it, read a task's output, and find another node that knows a job when the
connection to this one is lost.  L{p2pexec.client.api} builds the typed
client on them, and the C{p2pexec} command its subcommands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attr
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.client.errors import ClientError, JobNotFound, JobRefused, NodeError
from p2pexec.model import MAX_PRIORITY, TaskSpec

PAGE_LIMIT = 1000
"""How many tasks one JOB_TASKS question asks for."""

T = TypeVar("T")


class Caller(Protocol):
    """What the operations need of a node: one command at a time."""

    address: str

    def call(self, command: type[amp.Command], **arguments: Any) -> Awaitable[dict[str, Any]]:
        """Send C{command}; its answer, or a L{p2pexec.client.errors.ClientError}."""


Connect = Callable[[str], Awaitable[Caller]]
"""Connects to another node by its C{HOST:PORT}."""


def with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the last one."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def task_object(task: TaskSpec | Mapping[str, Any]) -> Any:
    """A task as SUBMIT_JOB carries it: a job file's task object (a mapping is sent as it is, the node checks it)."""
    return task.to_wire() if isinstance(task, TaskSpec) else dict(task)


def check_priority(priority: object) -> int | None:
    """
    A job's priority as the caller gave it (C{None}: none given), checked
    as C{p2pexec submit --priority} checks it.

    @raise JobRefused: for anything but a whole number from -L{MAX_PRIORITY}
        to L{MAX_PRIORITY}, with the CLI's words.
    """
    if priority is None:
        return None
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > MAX_PRIORITY:
        raise JobRefused(f"priority: expected a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {priority!r}")
    return priority


async def submit_tasks(
    node: Caller,
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    defaults: Mapping[str, Any] | None = None,
    priority: int | None = None,
) -> str:
    """
    Hand C{tasks} (L{TaskSpec}s, or job-file task objects) to C{node} with
    SUBMIT_JOB, in parts that each stay under L{commands.MAX_VALUE_BYTES},
    with C{defaults} (a job file's C{[defaults]} table) and the job's
    C{priority} (sent with the last part; C{None}: the default, 0); return
    the job id.  The node becomes the job's master.

    The tasks' input files the node lacks are sent first (see
    L{p2pexec.client.uploads}).
    """
    if any(isinstance(task, TaskSpec) and task.inputs for task in tasks):
        from p2pexec.client.uploads import upload_inputs

        await upload_inputs(node, (task for task in tasks if isinstance(task, TaskSpec)))
    try:
        parts = list(commands.chunk(tasks, task_object))
    except ValueError as e:
        raise JobRefused(f"the job cannot be sent: {e}") from None
    upload = ""
    job = ""
    for part, final in with_last(parts):
        extra = {"priority": priority} if final and priority is not None else {}
        answer = await node.call(
            commands.SubmitJob, tasks=part, defaults=dict(defaults or {}), upload=upload, final=final, **extra
        )
        upload, job = answer["upload"], answer["job"]
    return job


async def job_status(node: Caller, job: str) -> dict[str, Any]:
    """The job's summary (JOB_STATUS; C{JobSummary} in docs/api.rst)."""
    summary: dict[str, Any] = (await node.call(commands.JobStatus, job=job))["status"]
    return summary


class NoProgress(NodeError):
    """The node's pages of tasks (or pieces of output) do not move on."""


async def all_tasks(node: Caller, job: str) -> list[dict[str, Any]]:
    """
    Every task of C{job} with its result, page by page (JOB_TASKS).

    @raise NoProgress: if the node's pages make no progress.
    """
    tasks: list[dict[str, Any]] = []
    offset = 0
    while offset >= 0:
        answer = await node.call(commands.JobTasks, job=job, offset=offset, limit=PAGE_LIMIT)
        tasks.extend(answer["tasks"])
        following = answer["next"]
        if following >= 0 and following <= offset:
            raise NoProgress(f"the node at {node.address} answered JOB_TASKS with no progress (next={following})")
        offset = following
    return tasks


async def cancel_job(node: Caller, job: str) -> int:
    """Cancel C{job} (CANCEL_JOB); how many of its tasks were cancelled (0 if it had ended)."""
    cancelled: int = (await node.call(commands.CancelJob, job=job))["cancelled"]
    return cancelled


async def task_output(
    node: Caller, job: str, task: str, stream: str, offset: int, limit: int = commands.TASK_OUTPUT_LIMIT
) -> dict[str, Any]:
    """One piece of a task's output from byte C{offset} (TASK_OUTPUT; see docs/protocol.rst)."""
    return await node.call(commands.TaskOutput, job=job, task=task, stream=stream, offset=offset, limit=limit)


# -- following a job through another node -------------------------------------------


@attr.s(auto_attribs=True)
class Route:
    """
    The node a job is followed through, and the others it knows of (from
    CLUSTER_STATUS at the start), in the order they are tried when the
    connection to it is lost.
    """

    name: str
    node: Caller
    others: list[tuple[str, str]]
    """(name, HOST:PORT) of every other node, not gone, by name."""


async def route(node: Caller, connect: Connect | None) -> Route:
    """Ask C{node} (CLUSTER_STATUS) which nodes it knows; without C{connect}, or an answer, none."""
    if connect is None:
        return Route(node.address, node, [])
    try:
        cluster = await node.call(commands.ClusterStatus)
        me = str(cluster["node"]["name"])
        others = [
            (str(peer["name"]), str(peer["address"]))
            for peer in cluster["peers"]
            if peer.get("state") not in ("gone", "self") and isinstance(peer.get("address"), str)
        ]
    except (ClientError, KeyError, TypeError):
        return Route(node.address, node, [])
    return Route(me, node, others)


class NoNodeKnowsJob(JobNotFound):
    """The connection to a job's node was lost, and no other node it knew of knows the job."""


async def switch_node(connect: Connect, job: str, way: Route, lost: ClientError) -> dict[str, Any]:
    """
    The connection to C{way.node} is lost: ask the other nodes, in order,
    about C{job}, and follow it through the first that knows it: C{way}
    then names it, and its JOB_STATUS answer is returned.

    @raise NoNodeKnowsJob: if no node knows the job (or none can be reached),
        naming each one asked and its answer.
    """
    tried = []
    for name, address in list(way.others):
        try:
            node = await connect(address)
            summary = await job_status(node, job)
        except ClientError as e:
            tried.append(f"{name}: {e.message}")
            continue
        way.others.remove((name, address))
        way.others.append((way.name, way.node.address))
        way.node, way.name = node, name
        return summary
    asked = f" (asked {'; '.join(tried)})" if tried else " (it knew no other node)"
    raise NoNodeKnowsJob(f"lost node {way.name} ({lost.message}), and no other node knows job {job}{asked}")
