"""
Throughput of one master and two workers on loopback (run by ``make bench``).

Each run starts real ``twistd p2pexec`` processes, as ``examples/demo.py``
does (the checkout on ``PYTHONPATH``, the twistd beside this Python,
``--pidfile=``, a multicast group of the benchmark's own, cluster "bench",
``--port 0`` so that no fixed port can clash):

  - two workers, bench1 and bench2, with ``--capabilities w``;
  - then, once both listen, the master, given a job file of N tasks of kind
    "w" without a command (the worker marks each one done at once, so what is
    measured is the cost of the task farm itself: assignment, confirmation,
    book-keeping and logging).  It is called "master" so that its name sorts
    after the workers': the lower name dials, so the workers connect as soon
    as they hear the master's DISCOVER instead of waiting for its HELLO.

Two variants are measured: the master with ``--capabilities none-of-these``
(only the workers run tasks), and the master with ``--capabilities w`` (it
runs tasks too).  Each runs at the default ``--log-level info`` (the primary
figure: every task adds log lines, and that is part of the cost) and at
``--log-level warn``.

Figures per run:

  - ready: seconds from starting the first process until the master has
    logged "connected to peer" for both workers (an info line, so it is not
    measured at ``--log-level warn``);
  - tasks/s: N / the "elapsed" of the master's ``--results`` file, which the
    master computes with its own clock from accepting the job (when it starts)
    to the last confirmation.  It therefore includes the few milliseconds
    between the master starting and the workers being connected, shown as
    "connect" (measured by watching the master's log, so only to within a few
    milliseconds, and only at info level).

Every process is stopped by PID (SIGTERM, then SIGKILL) whatever happens, and
each run fails after ``--timeout`` seconds (120 by default).  Like
``benchmarks/run.py``, it re-runs itself in a loopback-only network namespace
when it can (``unshare -n``, as root) and holds ``/tmp/p2pexec-heavy.lock``
while it measures.  The exit status
is 1 if any run fails; the logs of a failed run are kept and their folder
printed.

Usage: python benchmarks/throughput.py [--tasks N] [--repeat N] [--timeout S] [--slots N] [--keep]

``--slots N`` gives every node ``--slots N`` (the default is the CPU count);
a worker may hold twice its slots in unconfirmed tasks, so with cheap tasks
this is what bounds how many travel per round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cluster import (  # noqa: E402  (the benchmarks folder is not a package)
    STOP_WAIT,
    TWISTD,
    Node,
    RunFailed,
    Watch,
    guarded_main,
    heavy_lock,
    interrupt,
    machine,
    start_node,
    stop_nodes,
    summary,
    wait_until,
)

CLUSTER = "bench"
WORKERS = ("bench1", "bench2")
MASTER = "master"
KIND = "w"

VARIANTS = (
    ("workers only", "none-of-these"),
    ("master works too", KIND),
)
"""(label, the master's --capabilities)."""
LEVELS = ("info", "warn")


def write_job(path: str, count: int) -> None:
    """A TOML job file of C{count} tasks of kind "w" without a command."""
    with open(path, "w", encoding="utf-8") as f:
        for number in range(1, count + 1):
            f.write(f'[[task]]\nid = "{KIND}{number}"\nkind = "{KIND}"\n\n')


def start(folder: str, name: str, extra: list[str], level: str, slots: int | None = None) -> Node:
    """Start one node in C{folder}, its output going to C{<name>.log} there."""
    return start_node(folder, name, extra, CLUSTER, level=level, slots=slots)


def stop(nodes: list[Node]) -> list[str]:
    """Stop every node by its PID: SIGTERM, then SIGKILL after L{STOP_WAIT} seconds."""
    return stop_nodes(nodes, STOP_WAIT)


def one_run(
    folder: str,
    job_path: str,
    tasks: int,
    capabilities: str,
    level: str,
    timeout: float,
    slots: int | None = None,
) -> dict:
    """
    Run the cluster once and return its figures: ready, connect (both
    C{None} at warn level) and elapsed, in seconds.

    @raise RunFailed: if anything goes wrong; every process is stopped anyway.
    """
    results_path = os.path.join(folder, "results.json")
    nodes: list[Node] = []
    figures: dict = {"ready": None, "connect": None}
    failed: BaseException | None = None
    try:
        started = time.monotonic()
        deadline = started + timeout
        for name in WORKERS:
            nodes.append(start(folder, name, ["--capabilities", KIND], level, slots))
        # Twisted's own "<protocol> starting on <port>" line is logged at any
        # --log-level; once the workers listen for multicast, they hear the
        # master's first DISCOVER.
        for worker in nodes[:]:
            listening = Watch(worker, listening=r"(DiscoveryProtocol) starting on \d+")
            wait_until(lambda: bool(listening.poll()["listening"]), nodes, deadline, f"{worker.name} to listen")
        master = start(
            folder,
            MASTER,
            ["--capabilities", capabilities, "--job", job_path, "--results", results_path],
            level,
            slots,
        )
        nodes.append(master)
        if level in ("debug", "info"):
            watch = Watch(
                master,
                job=r"Node \S+ (is master) of job",
                connected=r"Node \S+ connected to peer (\S+)",
            )
            ready_at = wait_until(
                lambda: watch.poll()["connected"] >= set(WORKERS),
                nodes,
                deadline,
                "the master to connect to both workers",
            )
            figures["ready"] = ready_at - started
            if "job" not in watch.first_seen:
                raise RunFailed("the master connected to its workers before logging its job")
            figures["connect"] = ready_at - watch.first_seen["job"]
        # The job started when the master did; the results file appears
        # (atomically renamed into place) once it has finished.
        wait_until(lambda: os.path.exists(results_path), nodes, deadline, "the job to finish")
        with open(results_path, encoding="utf-8") as f:
            report = json.load(f)
        if not (report["total"] == report["succeeded"] == tasks and report["failed"] == 0):
            raise RunFailed(
                f"job {report['job']}: {report['succeeded']} of {report['total']} succeeded, "
                f"{report['failed']} failed (expected {tasks} to succeed)"
            )
        figures["elapsed"] = float(report["elapsed"])
        figures["stale"] = report.get("stale_results_dropped", 0)
    except BaseException as e:
        failed = e
        raise
    finally:
        complaints = stop(nodes)
        if complaints and failed is None:
            raise RunFailed("; ".join(complaints))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run each variant at each log level, and print the table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the job (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant and log level (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after which a run fails (default 120)")
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="give every node --slots N (default: the nodes' own default, the CPU count)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs of successful runs too")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeat < 1 or args.timeout <= 0 or (args.slots is not None and args.slots < 1):
        parser.error("--tasks, --repeat and --slots must be at least 1, --timeout above 0")
    if not os.access(TWISTD, os.X_OK):
        print(f"bench: no twistd beside {sys.executable}; run it with the project's virtualenv (make bench)")
        return 1

    status = guarded_main([os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)], print, False)
    if status is not None:
        return status
    signal.signal(signal.SIGTERM, interrupt)
    top = tempfile.mkdtemp(prefix="p2pexec-bench-")
    job_path = os.path.join(top, "job.toml")
    write_job(job_path, args.tasks)
    slots = f"--slots {args.slots}" if args.slots is not None else f"default --slots ({os.cpu_count()})"
    print(
        f"bench: {args.tasks} no-command tasks of kind {KIND!r}; 1 master + 2 workers on loopback, {slots}; "
        f"{args.repeat} run(s) of each variant and log level"
    )
    print(f"bench: {machine()}")
    measured: dict[tuple[str, str], list[dict]] = {}
    lock = heavy_lock(1800)
    try:
        lock.__enter__()
        for repeat in range(1, args.repeat + 1):
            for label, capabilities in VARIANTS:
                for level in LEVELS:
                    folder = os.path.join(top, f"{len(measured.get((label, level), [])) + 1}-{capabilities}-{level}")
                    os.makedirs(folder)
                    try:
                        figures = one_run(folder, job_path, args.tasks, capabilities, level, args.timeout, args.slots)
                    except RunFailed as e:
                        print(f"bench: run {repeat} of '{label}' at --log-level {level} FAILED: {e}")
                        print(f"bench: logs kept in {folder}")
                        return 1
                    measured.setdefault((label, level), []).append(figures)
                    ready = "-" if figures["ready"] is None else f"{figures['ready']:.2f}s"
                    connect = "-" if figures["connect"] is None else f"{figures['connect'] * 1000:.0f}ms"
                    print(
                        f"bench: run {repeat}: {label:<17} {level:<4}  ready {ready:>6}  connect {connect:>6}  "
                        f"elapsed {figures['elapsed']:.3f}s  {args.tasks / figures['elapsed']:,.0f} tasks/s",
                        flush=True,
                    )
                    if not args.keep:
                        shutil.rmtree(folder, ignore_errors=True)
    except KeyboardInterrupt:
        print(f"bench: interrupted; every node was stopped; files in {top}")
        return 1
    finally:
        lock.__exit__(None, None, None)
    print()
    header = f"{'variant':<17} {'log':<5} {'ready s':<17} {'connect ms':<13} {'elapsed s':<22} {'tasks/s':<23}"
    print(f"median (min-max) of {args.repeat} run(s), {args.tasks} tasks:")
    print(header)
    print("-" * len(header))
    for label, _ in VARIANTS:
        for level in LEVELS:
            runs = measured[(label, level)]
            ready = [r["ready"] for r in runs if r["ready"] is not None]
            connect = [r["connect"] * 1000 for r in runs if r["connect"] is not None]
            elapsed = [r["elapsed"] for r in runs]
            rates = [args.tasks / e for e in elapsed]
            print(
                f"{label:<17} {level:<5} {summary(ready, '.2f'):<17} {summary(connect, '.0f'):<13} "
                f"{summary(elapsed, '.3f'):<22} {summary(rates, ',.0f'):<23}"
            )
    primary = [args.tasks / r["elapsed"] for r in measured[(VARIANTS[0][0], LEVELS[0])]]
    print()
    print(
        f"primary figure ({VARIANTS[0][0]}, --log-level {LEVELS[0]}): "
        f"{statistics.median(primary):,.0f} tasks/s (median of {len(primary)})"
    )
    print()
    print("ready: from starting the first process to the master's 'connected to peer' line for both workers")
    print("       (an info line: not measured at --log-level warn).")
    print("connect: from the master's job line to its second 'connected to peer' line, as seen by this script")
    print("       (to within a few ms; info level only): the part of 'elapsed' spent before both workers joined.")
    print("tasks/s: tasks / 'elapsed' in the master's --results file (job accepted at master start -> last result).")
    if args.keep:
        print(f"logs: {top}")
    else:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
