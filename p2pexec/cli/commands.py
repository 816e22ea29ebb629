"""
The subcommands of C{p2pexec}: C{submit}, C{run}, C{watch}, C{status},
C{jobs}, C{result} and C{cancel} as coroutines over a L{Context} (the node,
the output, a clock), so that tests can drive them with doubles; and
C{keygen} and C{token}, which need no node (L{key_command}).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from p2pexec import commands
from p2pexec.auth import KeyFileError, generate_key, http_token, load_key
from p2pexec.cli.client import format_address
from p2pexec.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, CliError
from p2pexec.cli.fetch import do_fetch, fetch_into
from p2pexec.cli.joblog import Joblog
from p2pexec.cli.logs import do_logs
from p2pexec.cli.output import TaskFollower, TaskPrinter, task_labels
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
from p2pexec.cli.runline import run_tasks
from p2pexec.cli.sources import RunLine, run_arguments
from p2pexec.client import calls
from p2pexec.client import keys as calls_keys
from p2pexec.client.calls import PAGE_LIMIT as PAGE_LIMIT
from p2pexec.client.calls import Caller as Caller
from p2pexec.client.calls import Route as Route
from p2pexec.client.calls import with_last as with_last
from p2pexec.client.errors import ClientError, KeyProblem
from p2pexec.jobfile import JobFileError, load_job_file, load_job_priority
from p2pexec.model import TaskSpec, ValidationError, parse_instructions

POLL_INTERVAL = 0.5
"""Seconds between two JOB_STATUS questions while following a job."""


def job_tasks_from(args: argparse.Namespace, stdin: TextIO) -> list[TaskSpec]:
    """
    The tasks that C{submit} or C{run} hands the node, read and checked
    before any connection is made.

    @raise CliError: with the job file's, C{--tasks}' or C{run}'s message.
    """
    if args.command == "run":
        line: RunLine = args.run_line
        args.task_arguments = run_arguments(line, stdin)
        return run_tasks(
            line.command,
            args.task_arguments,
            args.kind,
            shell=args.shell,
            timeout=args.timeout,
            retries=args.retries,
            cwd=args.cwd,
            env=args.env,
            request=getattr(args, "request", None),
            inputs=getattr(args, "inputs", ()),
            outputs=getattr(args, "outputs", ()),
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


# -- exit statuses ----------------------------------------------------------------


def job_exit_status(summary: dict[str, Any]) -> int:
    """L{EXIT_OK} for a finished job whose every task succeeded, else L{EXIT_FAILED}."""
    if summary["state"] == "finished" and summary["counts"]["succeeded"] == summary["total"]:
        return EXIT_OK
    return EXIT_FAILED


def tasks_exit_status(tasks: Sequence[dict[str, Any]]) -> int:
    """L{EXIT_OK} if every task succeeded, else L{EXIT_FAILED} (failed, cancelled, skipped or unfinished)."""
    return EXIT_OK if all(task["state"] == "succeeded" for task in tasks) else EXIT_FAILED


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
    @ivar stdout: where the tasks' own output goes (C{run}, C{submit
        --output}); C{None}: C{sys.stdout}.
    """

    node: Caller
    out: Output
    clock: IReactorTime
    err: TextIO
    connect: Callable[[str], Awaitable[Caller]] | None = None
    stdout: TextIO | None = None


async def submit_job(ctx: Context, tasks: Sequence[TaskSpec], priority: int | None = None) -> str:
    """
    Hand C{tasks} to the node with SUBMIT_JOB, in parts that each stay
    under L{commands.MAX_VALUE_BYTES} (the last with the job's C{priority},
    unless C{None}); return the job id.
    """
    return await calls.submit_tasks(ctx.node, tasks, priority=priority)


async def route(ctx: Context) -> Route:
    """Ask the node (CLUSTER_STATUS) which nodes it knows; without L{Context.connect}, or an answer, none."""
    return await calls.route(ctx.node, ctx.connect)


async def switch_node(ctx: Context, job: str, way: Route, lost: ClientError) -> dict[str, Any]:
    """
    The connection to C{way.name} is lost: ask the other nodes, in order,
    about C{job}; follow it through the first that knows it (its JOB_STATUS
    answer is returned), with one line on stderr (see
    L{p2pexec.client.calls.switch_node}).

    @raise CliError: if no node knows the job (or none can be reached).
    """
    assert ctx.connect is not None
    was = way.name
    try:
        summary = await calls.switch_node(ctx.connect, job, way, lost)
    except calls.NoNodeKnowsJob as e:
        raise CliError(e.message) from None
    note = f"{PROG}: lost node {was}; following job {job} through {way.name}"
    ctx.err.write(for_stream(ctx.err, note) + "\n")
    ctx.node = way.node
    return summary


async def follow(ctx: Context, job: str, tasks: TaskFollower | None = None) -> int:
    """
    Show C{job}'s progress until it ends (JOB_STATUS every L{POLL_INTERVAL}
    seconds), then how it ended; return its exit status.  When the
    connection to the node is lost, follow the job through another node it
    knew (see L{switch_node}).

    @param tasks: prints and logs the tasks as they end; with a printer, it
        also shows the progress and the final lines, on stderr.
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
                display = ctx.out.progress(job) if tasks is None or tasks.printer is None else tasks.progress()
            if display is not None:
                display.update(summary, ctx.clock.seconds())
            if tasks is not None:
                await tasks.poll(ctx.node, summary)
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
    if tasks is not None:
        await tasks.poll(ctx.node, summary)
        if tasks.printer is not None:
            await tasks.finish(summary)
            return job_exit_status(summary)
    ctx.out.line(final_line(summary))
    status = job_exit_status(summary)
    if status != EXIT_OK:
        ctx.out.line(f"the results of each task: p2pexec result {job}")
    return status


async def follow_tasks(
    ctx: Context, args: argparse.Namespace, tags: list[str] | None, printing: bool, submitted: str, always: bool
) -> int:
    """
    Submit C{args.job_tasks} and follow the job, the tasks printed as they
    end if C{printing} (C{--keep-order}, C{--tag}), and logged if
    C{--joblog}; C{submitted} (with C{{job}}) is said on stderr (only on a
    terminal, unless C{always}), or on stdout when not C{printing}.
    """
    tasks: list[TaskSpec] = args.job_tasks
    stdout = sys.stdout if ctx.stdout is None else ctx.stdout
    joblog_file = getattr(args, "joblog", None)
    joblog = Joblog.open(joblog_file, stdout) if joblog_file else None
    try:
        job = args.job_id = await submit_job(ctx, tasks, getattr(args, "job_priority", getattr(args, "priority", None)))
        keep_order, tag = getattr(args, "keep_order", False), getattr(args, "tag", False)
        printer = TaskPrinter(stdout, ctx.err, keep_order, tag) if printing else None
        # all_nodes tasks become TASK@NODE on the master: the job's order is then its own.
        order = None if any(task.all_nodes for task in tasks) else [task.id for task in tasks]
        follower = TaskFollower(job, task_labels(tasks, tags), ctx.err, printer, joblog, order=order)
        if printing:
            follower.note(submitted.format(job=job), always)
        else:
            ctx.out.line(submitted.format(job=job))
        return await follow(ctx, job, follower)
    finally:
        if joblog is not None:
            joblog.close()


async def do_submit(ctx: Context, args: argparse.Namespace) -> int:
    """
    C{submit}: print the job id; with C{--wait}, follow it (printing the
    tasks' output with C{--output}).  The job's priority: C{--priority}, else
    the job file's C{[job] priority}.
    """
    priority = getattr(args, "priority", None)
    if priority is None and getattr(args, "jobfile", None) is not None:
        priority = load_job_priority(args.jobfile) or None
    args.job_priority = priority
    output, joblog = getattr(args, "output", False), getattr(args, "joblog", None)
    if args.wait and (output or joblog):
        return await fetched(ctx, args, await follow_tasks(ctx, args, None, output, "{job}", always=True))
    job = args.job_id = await submit_job(ctx, args.job_tasks, priority)
    ctx.out.line(job)
    if args.wait:
        return await fetched(ctx, args, await follow(ctx, job))
    return EXIT_OK


async def do_run(ctx: Context, args: argparse.Namespace) -> int:
    """C{run}: submit one task per argument, follow the job, and print what the tasks print."""
    tags = [" ".join(arguments) for arguments in args.task_arguments]
    submitted = f"job {{job}}: {len(args.job_tasks)} task(s) submitted to {ctx.node.address}"
    return await fetched(ctx, args, await follow_tasks(ctx, args, tags, True, submitted, always=False))


async def fetched(ctx: Context, args: argparse.Namespace, status: int) -> int:
    """
    With C{--fetch DIR}, the ended job's output files fetched into DIR (see
    L{p2pexec.cli.fetch}); the exit status C{status}, or L{EXIT_FAILED} if
    some file could not be fetched.
    """
    into = getattr(args, "fetch", None)
    if into is None:
        return status
    return max(status, await fetch_into(ctx, args.job_id, into))


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
    try:
        return await calls.all_tasks(ctx.node, job)
    except calls.NoProgress as e:
        raise CliError(e.message) from None


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
    cancelled = await calls.cancel_job(ctx.node, args.job)
    if cancelled:
        ctx.out.line(f"job {args.job}: {cancelled} task(s) cancelled")
    else:
        ctx.out.line(f"job {args.job}: 0 tasks cancelled (it had already ended)")
    return EXIT_OK


# -- rerun, and where tasks run (issue 14, rerun) ------------------------------------


def placed_tasks(tasks: list[TaskSpec], args: argparse.Namespace) -> list[TaskSpec]:
    """
    C{submit}'s and C{run}'s tasks with C{--node NAME} (for each task that
    names no node of its own and is not C{all_nodes}) or C{--all-nodes}
    (C{run}: every task) applied.
    """
    node: str | None = getattr(args, "node", None)
    if getattr(args, "all_nodes", False):
        return [attr.evolve(task, node=None, all_nodes=True) for task in tasks]
    if node is None:
        return tasks
    return [task if task.node is not None or task.all_nodes else attr.evolve(task, node=node) for task in tasks]


async def do_rerun(ctx: Context, args: argparse.Namespace) -> int:
    """C{rerun --failed}: RERUN_TASKS, then follow the job as C{submit --wait} does."""
    try:
        answer = await ctx.node.call(commands.RerunTasks, job=args.job, which="failed")
    except commands.JobRunning as e:
        raise CliError(f"cannot rerun now: {e}") from None
    count = answer["count"]
    if not count:
        ctx.out.line(f"job {args.job}: nothing to rerun (no task failed, timed out, errored, was cancelled or skipped)")
        return EXIT_OK
    shown = ", ".join(str(task) for task in answer["tasks"][:10])
    more = f" and {count - 10} more" if count > 10 else ""
    ctx.out.line(f"job {args.job}: {count} task(s) run again: {shown}{more}")
    return await follow(ctx, args.job)


SUBCOMMANDS: dict[str, Callable[[Context, argparse.Namespace], Awaitable[int]]] = {
    "submit": do_submit,
    "run": do_run,
    "watch": do_watch,
    "status": do_status,
    "jobs": do_jobs,
    "result": do_result,
    "cancel": do_cancel,
    "rerun": do_rerun,
    "logs": do_logs,
    "fetch": do_fetch,
}


# -- keygen and token: no node involved -------------------------------------------


def local_token(host: str, port: int) -> tuple[bytes, dict[str, Any]] | None:
    """
    The local token of this user's node at C{host:port}, and its runtime
    record (see L{p2pexec.localtoken}), or None.

    @raise CliError: if the node's record names a token that cannot be read.
    """
    try:
        return calls_keys.local_token(host, port)
    except KeyProblem as e:
        raise CliError(e.message) from None


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
