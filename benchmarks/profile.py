"""
Profile one p2pexec workload with py-spy and print its hot spots.

py-spy (``.venv/bin/pip install py-spy``) is attached to chosen nodes of a
real run of the workload (see ``benchmarks/workloads.py``) as soon as each
process starts, and samples until it exits.  For each node the script prints
the functions that were on CPU most often: *self* (the sampled frame itself)
and *total* (anywhere on the stack), as shares of that node's busy samples
(``--gil``: only samples where the node holds the GIL, so time spent
waiting in epoll is left out).  The raw
collapsed stacks are kept in ``--out`` (feed them to flamegraph.pl or
speedscope).

``startup`` instead runs one node alone under ``py-spy record`` from its very
first instruction (a one-task job, ``--exit-when-done``), which is what W3's
cold start is made of; ``python -X importtime`` is the finer tool for the
import part.

Usage::

    python benchmarks/profile.py W2 [--nodes master,bench1] [--tasks N] [--rate 250] [--out DIR]
    python benchmarks/profile.py startup

Run it under the heavy-job lock, in a loopback-only namespace (it does both
itself, as run.py does).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cluster  # noqa: E402
import workloads  # noqa: E402
from _cluster import CHECKOUT, TWISTD, guarded_main, heavy_lock  # noqa: E402

PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def attach(pid: int, out: str, rate: int, stop: threading.Event) -> threading.Thread:
    """Keep trying to attach py-spy to C{pid} (it fails while the interpreter is not up yet)."""

    def run() -> None:
        while not stop.is_set():
            process = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "-o",
                    out,
                    "--rate",
                    str(rate),
                    "--nonblocking",
                    "--gil",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                _, err = process.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return
            if os.path.exists(out) and os.path.getsize(out) > 0:
                return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def hot_spots(path: str, top: int) -> str:
    """The top functions of a py-spy raw file, self and total."""
    own: collections.Counter = collections.Counter()
    anywhere: collections.Counter = collections.Counter()
    samples = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            # Drop the "process ..." / "thread ..." pseudo-frames.
            frames = [frame for frame in frames if "(" in frame]
            if not frames or frames[-1].split(" (")[0].endswith("doPoll"):
                continue
            samples += count
            own[_short(frames[-1])] += count
            for frame in set(_short(frame) for frame in frames):
                anywhere[frame] += count
    if not samples:
        return "    (no samples)"
    lines = [f"    {samples} busy samples"]
    lines.append("    self%   function (file)")
    for frame, count in own.most_common(top):
        lines.append(f"    {100 * count / samples:5.1f}   {frame}")
    lines.append("    total%  function (file)  [anywhere on the stack; the reactor's own loop left out]")
    shown = 0
    for frame, count in anywhere.most_common():
        if frame.split(" (")[0] in GENERIC or "twisted/application/" in frame or "twisted/scripts/" in frame:
            continue
        lines.append(f"    {100 * count / samples:5.1f}   {frame}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)


GENERIC = {
    "<module>",
    "run",
    "runApp",
    "ReactorBase.run",
    "ReactorBase.mainLoop",
    "EPollReactor.doPoll",
    "callWithLogger",
    "callWithContext",
    "ThreadedContextTracker.callWithContext",
    "ContextTracker.callWithContext",
    "_PollLikeMixin._doReadOrWrite",
    "ReactorBase.runUntilCurrent",
}
"""Frames on (nearly) every stack of a running node: the twistd entry point and the reactor loop."""


def _short(frame: str) -> str:
    """C{run (/work/main/p2pexec/node.py:12)} -> C{run (p2pexec/node.py)}; line numbers dropped."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", CHECKOUT + "/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{name} ({path})"


def profile_workload(args: argparse.Namespace) -> int:
    """Run the workload with py-spy attached to the chosen nodes, and print each node's hot spots."""
    out = args.out or tempfile.mkdtemp(prefix="p2pexec-profile-")
    os.makedirs(out, exist_ok=True)
    wanted = set(args.nodes.split(","))
    stop = threading.Event()
    threads: list[tuple[str, threading.Thread, str]] = []

    def hook(node: _cluster.Node) -> None:
        if node.name in wanted:
            path = os.path.join(out, f"{args.workload}-{node.name}-{node.pid}.txt")
            threads.append((node.name, attach(node.pid, path, args.rate, stop), path))

    _cluster.STARTED_HOOKS.append(hook)
    top = tempfile.mkdtemp(prefix="p2pexec-profile-run-")
    tasks = args.tasks or {"W1": 50_000, "W2": 4_000, "W5": 1_000, "W5kill": 1_000}[args.workload]
    files = workloads.Files(top, tasks, tasks, tasks)
    try:
        if args.workload == "W1":
            figures = workloads.w1(top, files.w1_job, tasks, args.timeout)
        elif args.workload == "W2":
            figures = workloads.w2(top, files.w2_job, files.w2_ids, tasks, args.timeout, workers=1)
        else:
            figures = workloads.w5(top, files.w5_job, files.side, tasks, args.workload == "W5kill", args.timeout)
    finally:
        stop.set()
        for _, thread, _ in threads:
            thread.join(timeout=30)
    print(f"profile: {args.workload}, {tasks} tasks: {figures}")
    for name, _, path in threads:
        print(f"\n{name}: {path}")
        print(hot_spots(path, args.top) if os.path.exists(path) else "    (py-spy wrote nothing)")
    shutil.rmtree(top, ignore_errors=True)
    return 0


def profile_startup(args: argparse.Namespace) -> int:
    """Run one node alone under py-spy, from start to exit after a one-task job, and print its hot spots."""
    out = args.out or tempfile.mkdtemp(prefix="p2pexec-profile-")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "startup.txt")
    folder = tempfile.mkdtemp(prefix="p2pexec-profile-run-")
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [
        PY_SPY,
        "record",
        "--format",
        "raw",
        "-o",
        path,
        "--rate",
        str(args.rate),
        "--",
        TWISTD,
        "--pidfile=",
        "-n",
        "p2pexec",
        "--name",
        "w1",
        "--port",
        "0",
        "--group",
        _cluster.GROUP,
        "--cluster",
        _cluster.fresh_cluster(),
        "--capabilities",
        "w",
        "--tasks",
        "w1",
        "--exit-when-done",
        "--state-dir",
        os.path.join(folder, "state"),
    ]
    started = time.monotonic()
    process = subprocess.run(
        argv,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=args.timeout,
        start_new_session=True,
    )
    print(
        f"profile: startup of one node (start, run one instruction, exit): "
        f"{time.monotonic() - started:.2f}s under py-spy, status {process.returncode}"
    )
    print(f"\n{path}")
    print(hot_spots(path, args.top))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and profile the workload or the start-up under the guards; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("workload", choices=("W1", "W2", "W5", "W5kill", "startup"))
    parser.add_argument("--nodes", default="master,bench1", help="nodes to attach to (default master,bench1)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks (default: W1 50000, W2 4000, W5 1000)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=20, help="functions to list (default 20)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=None, help="folder for the raw stacks (default: a new temporary one)")
    args = parser.parse_args(argv)
    if not os.access(PY_SPY, os.X_OK):
        print(f"profile: no py-spy beside {sys.executable}; install it: {sys.executable} -m pip install py-spy")
        return 1
    status = guarded_main([os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)], print, False)
    if status is not None:
        return status
    with heavy_lock(1800):
        return profile_startup(args) if args.workload == "startup" else profile_workload(args)


if __name__ == "__main__":
    sys.exit(main())
