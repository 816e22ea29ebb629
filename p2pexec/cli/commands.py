"""
The subcommands of C{p2pexec}: C{submit}, C{run}, C{watch}, C{status},
C{jobs}, C{result} and C{cancel} as coroutines over a L{Context} (the node,
the output, a clock), so that tests can drive them with doubles; and
C{keygen} and C{token}, which need no node (L{key_command}).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TextIO, TypeVar

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.auth import KeyFileError, generate_key, http_token, load_key
from p2pexec.cli.client import ClientError, format_address
from p2pexec.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, CliError
from p2pexec.cli.render import (
    JOB_COLUMNS,
    PEER_COLUMNS,
    TASK_COLUMNS,
    Output,
    ProgressDisplay,
    final_line,
    for_stream,
    format_seconds,
    job_row,
    json_text,
    outcome_counts,
    peer_row,
    tail_lines,
    task_row,
)
from p2pexec.cli.runline import RunLine, run_arguments, run_tasks
from p2pexec.jobfile import JobFileError, load_job_file, load_job_priority
from p2pexec.model import TaskSpec, ValidationError, parse_instructions

POLL_INTERVAL = 0.5
"""Seconds between two JOB_STATUS questions while following a job."""

PAGE_LIMIT = 1000
"""How many tasks one JOB_TASKS question asks for."""

T = TypeVar("T")


def job_tasks_from(args: argparse.Namespace, stdin: TextIO) -> list[TaskSpec]:
    """
    The tasks that C{submit} or C{run} hands the node, read and checked
    before any connection is made.

    @raise CliError: with the job file's, C{--tasks}' or C{run}'s message.
    """
    if args.command == "run":
        line: RunLine = args.run_line
        return run_tasks(
            line.command,
            run_arguments(line, stdin),
            args.kind,
            shell=args.shell,
            timeout=args.timeout,
            retries=args.retries,
            cwd=args.cwd,
            env=args.env,
            request=getattr(args, "request", None),
        )
    if args.tasks is not None:
        names = [name.strip() for name in args.tasks.split(",") if name.strip()]
        if not names:
            raise CliError("--tasks: give at least one instruction name, like a1,a2,b1")
        try:
            return parse_instructions(names)
        except ValidationError as e:
            raise CliError(f"--tasks: {e}") from None
    try:
        return load_job_file(args.jobfile)
    except JobFileError as e:
        raise CliError(str(e)) from None


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


# -- exit statuses ----------------------------------------------------------------


def job_exit_status(summary: dict[str, Any]) -> int:
    """L{EXIT_OK} for a finished job whose every task succeeded, else L{EXIT_FAILED}."""
    if summary["state"] == "finished" and summary["counts"]["succeeded"] == summary["total"]:
        return EXIT_OK
    return EXIT_FAILED


def tasks_exit_status(tasks: Sequence[dict[str, Any]]) -> int:
    """L{EXIT_OK} if every task succeeded, else L{EXIT_FAILED} (failed, cancelled or unfinished)."""
    return EXIT_OK if all(task["state"] == "succeeded" for task in tasks) else EXIT_FAILED


class Caller(Protocol):
    """What the subcommands need of a node: one command at a time."""

    address: str

    def call(self, command: type[amp.Command], **arguments: Any) -> Awaitable[dict[str, Any]]:
        """Send C{command}; its answer, or a L{p2pexec.cli.client.ClientError}."""


# -- the subcommands ------------------------------------------------------------------


@attr.s(auto_attribs=True)
class Context:
    """
    What a subcommand works with.

    @ivar node: the node it talks to.
    @ivar out: where it prints.
    @ivar clock: for the pauses between JOB_STATUS questions.
    @ivar err: where notes beside the output go (stderr).
    @ivar connect: connects to another node (C{HOST:PORT}), for following a
        job when the connection to C{node} is lost; C{None}: follow through
        C{node} only.
    """

    node: Caller
    out: Output
    clock: IReactorTime
    err: TextIO
    connect: Callable[[str], Awaitable[Caller]] | None = None


async def submit_job(ctx: Context, tasks: Sequence[TaskSpec], priority: int | None = None) -> str:
    """
    Hand C{tasks} to the node with SUBMIT_JOB, in parts that each stay
    under L{commands.MAX_VALUE_BYTES} (the last with the job's C{priority},
    unless C{None}); return the job id.
    """
    upload = ""
    job = ""
    for part, final in with_last(commands.chunk(tasks, TaskSpec.to_wire)):
        extra = {"priority": priority} if final and priority is not None else {}
        answer = await ctx.node.call(commands.SubmitJob, tasks=part, defaults={}, upload=upload, final=final, **extra)
        upload, job = answer["upload"], answer["job"]
    return job


@attr.s(auto_attribs=True)
class Route:
    """
    The node a job is followed through, and the others it knows of (from
    CLUSTER_STATUS at the start), in the order they are tried when the
    connection to it is lost.
    """

    name: str
    others: list[tuple[str, str]]
    """(name, HOST:PORT) of every other node, not gone, by name."""


async def route(ctx: Context) -> Route:
    """Ask the node (CLUSTER_STATUS) which nodes it knows; without L{Context.connect}, or an answer, none."""
    if ctx.connect is None:
        return Route(ctx.node.address, [])
    try:
        cluster = await ctx.node.call(commands.ClusterStatus)
        me = str(cluster["node"]["name"])
        others = [
            (str(peer["name"]), str(peer["address"]))
            for peer in cluster["peers"]
            if peer.get("state") not in ("gone", "self") and isinstance(peer.get("address"), str)
        ]
    except (ClientError, KeyError, TypeError):
        return Route(ctx.node.address, [])
    return Route(me, others)


async def switch_node(ctx: Context, job: str, way: Route, lost: ClientError) -> dict[str, Any]:
    """
    The connection to C{way.name} is lost: ask the other nodes, in order,
    about C{job}; follow it through the first that knows it (its JOB_STATUS
    answer is returned), with one line on stderr.

    @raise CliError: if no node knows the job (or none can be reached).
    """
    assert ctx.connect is not None
    tried = []
    for name, address in list(way.others):
        try:
            node = await ctx.connect(address)
            summary: dict[str, Any] = (await node.call(commands.JobStatus, job=job))["status"]
        except ClientError as e:
            tried.append(f"{name}: {e.message}")
            continue
        way.others.remove((name, address))
        way.others.append((way.name, ctx.node.address))
        note = f"{PROG}: lost node {way.name}; following job {job} through {name}"
        ctx.err.write(for_stream(ctx.err, note) + "\n")
        ctx.node, way.name = node, name
        return summary
    asked = f" (asked {'; '.join(tried)})" if tried else " (it knew no other node)"
    raise CliError(f"lost node {way.name} ({lost.message}), and no other node knows job {job}{asked}")


async def follow(ctx: Context, job: str) -> int:
    """
    Show C{job}'s progress until it ends (JOB_STATUS every L{POLL_INTERVAL}
    seconds), then how it ended; return its exit status.  When the
    connection to the node is lost, follow the job through another node it
    knew (see L{switch_node}).
    """
    display: ProgressDisplay | None = None
    way = await route(ctx)
    try:
        while True:
            try:
                summary = (await ctx.node.call(commands.JobStatus, job=job))["status"]
            except ClientError as e:
                if not e.lost or ctx.connect is None:
                    raise
                if display is not None:
                    display.close()
                    display = None
                summary = await switch_node(ctx, job, way, e)
            if summary["state"] != "running":
                if display is not None:
                    display.close(summary)
                    display = None
                break
            if display is None:
                display = ctx.out.progress(job)
            display.update(summary, ctx.clock.seconds())
            await deferLater(ctx.clock, POLL_INTERVAL, lambda: None)
    except defer.CancelledError:
        if display is not None:
            display.close()
            display = None
        note = f"{PROG}: stopped following job {job}; it goes on (p2pexec cancel {job} stops it)"
        ctx.err.write(for_stream(ctx.err, note) + "\n")
        raise
    finally:
        if display is not None:
            display.close()
    ctx.out.line(final_line(summary))
    status = job_exit_status(summary)
    if status != EXIT_OK:
        ctx.out.line(f"the results of each task: p2pexec result {job}")
    return status


async def do_submit(ctx: Context, args: argparse.Namespace) -> int:
    """C{submit}: print the job id; with C{--wait}, follow it."""
    priority = getattr(args, "priority", None)
    if priority is None and getattr(args, "jobfile", None) is not None:
        priority = load_job_priority(args.jobfile) or None
    job = await submit_job(ctx, args.job_tasks, priority)
    ctx.out.line(job)
    if args.wait:
        return await follow(ctx, job)
    return EXIT_OK


async def do_run(ctx: Context, args: argparse.Namespace) -> int:
    """C{run}: submit one task per argument and follow the job."""
    tasks = args.job_tasks
    job = await submit_job(ctx, tasks, getattr(args, "priority", None))
    ctx.out.line(f"job {job}: {len(tasks)} task(s) submitted to {ctx.node.address}")
    return await follow(ctx, job)


async def do_watch(ctx: Context, args: argparse.Namespace) -> int:
    """C{watch}: follow a job."""
    return await follow(ctx, args.job)


async def do_jobs(ctx: Context, args: argparse.Namespace) -> int:
    """C{jobs}: the jobs the node is master of."""
    jobs = (await ctx.node.call(commands.ListJobs))["jobs"]
    if args.json:
        ctx.out.line(json_text(jobs))
    else:
        ctx.out.table(f"Jobs of the node at {ctx.node.address}", JOB_COLUMNS, [job_row(job) for job in jobs])
    return EXIT_OK


async def do_status(ctx: Context, args: argparse.Namespace) -> int:
    """C{status}: the node, its peers, and its jobs."""
    cluster = await ctx.node.call(commands.ClusterStatus)
    jobs = (await ctx.node.call(commands.ListJobs))["jobs"]
    nodes = [cluster["node"], *cluster["peers"]]
    if args.json:
        ctx.out.line(json_text({"node": cluster["node"], "peers": cluster["peers"], "jobs": jobs}))
        return EXIT_OK
    problem = cluster["node"].get("problem")
    if problem:
        ctx.out.line(f"Node {cluster['node']['name']} is unhealthy: {problem}")
    ctx.out.table(
        f"Nodes seen by {cluster['node']['name']} ({ctx.node.address})",
        PEER_COLUMNS,
        [peer_row(node) for node in nodes],
    )
    ctx.out.table(f"Jobs of {cluster['node']['name']}", JOB_COLUMNS, [job_row(job) for job in jobs])
    return EXIT_OK


async def all_tasks(ctx: Context, job: str) -> list[dict[str, Any]]:
    """Every task of C{job} with its result, page by page (JOB_TASKS)."""
    tasks: list[dict[str, Any]] = []
    offset = 0
    while offset >= 0:
        answer = await ctx.node.call(commands.JobTasks, job=job, offset=offset, limit=PAGE_LIMIT)
        page = answer["tasks"]
        tasks.extend(page)
        following = answer["next"]
        if following >= 0 and following <= offset:
            raise CliError(f"the node at {ctx.node.address} answered JOB_TASKS with no progress (next={following})")
        offset = following
    return tasks


async def do_result(ctx: Context, args: argparse.Namespace) -> int:
    """C{result}: each task's outcome; exit 0 only if every one succeeded."""
    summary = (await ctx.node.call(commands.JobStatus, job=args.job))["status"]
    tasks = await all_tasks(ctx, args.job)
    if args.json:
        ctx.out.line(json_text({"job": summary, "tasks": tasks}))
        return tasks_exit_status(tasks)
    ctx.out.table(
        f"Job {summary['id']} ({summary['state']}: {summary['done']}/{summary['total']} done, {outcome_counts(summary)}, "
        f"{format_seconds(summary['elapsed'])})",
        TASK_COLUMNS,
        [task_row(task) for task in tasks],
    )
    for task in tasks:
        for stream in ("stdout", "stderr"):
            lines = tail_lines(task.get(stream), args.lines)
            if lines:
                ctx.out.block(f"{task['id']} {stream} (last {len(lines)} line(s))", lines)
    return tasks_exit_status(tasks)


async def do_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """C{cancel}: CANCEL_JOB; print how many tasks were cancelled."""
    cancelled = (await ctx.node.call(commands.CancelJob, job=args.job))["cancelled"]
    if cancelled:
        ctx.out.line(f"job {args.job}: {cancelled} task(s) cancelled")
    else:
        ctx.out.line(f"job {args.job}: 0 tasks cancelled (it had already ended)")
    return EXIT_OK


SUBCOMMANDS: dict[str, Callable[[Context, argparse.Namespace], Awaitable[int]]] = {
    "submit": do_submit,
    "run": do_run,
    "watch": do_watch,
    "status": do_status,
    "jobs": do_jobs,
    "result": do_result,
    "cancel": do_cancel,
}


# -- keygen and token: no node involved -------------------------------------------


def local_token(host: str, port: int) -> tuple[bytes, dict[str, Any]] | None:
    """
    The local token of this user's node at C{host:port}, and its runtime
    record (see L{p2pexec.localtoken}), or None.

    @raise CliError: if the node's record names a token that cannot be read.
    """
    from p2pexec.localtoken import LocalTokenError, find_token

    try:
        return find_token(host, port)
    except LocalTokenError as e:
        raise CliError(str(e)) from None


def key_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """C{keygen} and C{token}: the cluster key, and the HTTP token derived from it (no node involved)."""
    if args.command == "keygen":
        key = generate_key()
        if args.out is None:
            out.write(key + "\n")
            return EXIT_OK
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            err.write(f"{PROG}: cannot create {args.out}: {e.strerror} (a key file is never overwritten)\n")
            return EXIT_USAGE
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
        err.write(f"{PROG}: wrote a new cluster key to {args.out} (mode 0600); give it to every node with --key-file\n")
        return EXIT_OK
    record: dict[str, Any] | None = None
    try:
        if args.key_file:
            secret = load_key(args.key_file)
        else:
            found = local_token(args.host, args.port)
            if found is None:
                err.write(
                    f"{PROG}: token: no node of yours with a local token runs at {format_address(args.host, args.port)}; "
                    f"give --connect, or --key-file (a cluster key, or a node's local-token file)\n"
                )
                return EXIT_USAGE
            secret, record = found
    except (KeyFileError, CliError) as e:
        err.write(f"{PROG}: {e}\n")
        return EXIT_USAGE
    token = http_token(secret)
    if not args.url:
        out.write(token + "\n")
        return EXIT_OK
    if record is None or not record.get("web"):
        where = "--key-file names no node" if record is None else "the node serves no HTTP (--web)"
        err.write(f"{PROG}: token --url: {where}; open http://HOST:PORT/#token={token} yourself\n")
        return EXIT_USAGE
    out.write(f"http://{format_address(record['interface'], record['web'])}/#token={token}\n")
    return EXIT_OK
