"""
The competitors' side of ``benchmarks/compare.py``: run the workloads on one
other system, in the comparison virtualenv (``.venv-compare``), and print
one ``RESULT <workload> <json>`` line per workload as soon as it is measured.

    .venv-compare/bin/python benchmarks/_competitors.py SYSTEM --launched T --folder DIR [...]

SYSTEM is ``dask``, ``ray`` or ``celery``.  compare.py starts this script in a
session of its own, inside a loopback-only network namespace, with a time
limit, and kills whatever is left of the session afterwards.

What runs where (two workers, one task at a time each, as p2pexec's two
workers with two slots on a 2-CPU machine are compared to them):

  - dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
    host="127.0.0.1", dashboard_address=None)``; the scheduler runs in this
    process, each worker in a process of its own under a nanny.
  - ray: ``ray.init(num_cpus=2, include_dashboard=False,
    _node_ip_address="127.0.0.1")``: at most two tasks at a time.
  - celery: one ``celery worker -c 2 -P prefork`` (two pool processes),
    Redis (Debian's redis-server, on 127.0.0.1) as broker and result
    backend; tasks sent one by one with ``delay`` and their results gathered
    with ``ResultSet(...).join_native()`` (the fastest of the ways tried
    here: ``group(...).get()`` and one ``get()`` per result were no faster).

Workloads, as close to p2pexec's as each system allows:

  - W3: seconds from compare.py launching this script (``--launched``,
    time.time()) to the first result of one no-op task: interpreter and
    library start-up, the cluster's start, one task.
  - W1: N no-op tasks submitted at once, seconds from submitting to having
    every result (the cluster is up: W3 ran before).
  - W2: N tasks that each run ``true`` (subprocess.run), same.
  - W5: N tasks that each run ``sh -c 'echo "$P2PEXEC_TASK_ID" >> SIDE;
    sleep 0.01'``, four at a time in all, on two workers of two slots each
    (as p2pexec's two workers with ``--slots 2``); once SIDE has 30% of N
    lines, one worker is SIGKILLed.  Lost = tasks without a result or never
    in SIDE; run twice = SIDE lines beyond one per task.  The same without
    the kill is measured first, as the baseline.

      dask: a second LocalCluster(n_workers=2, threads_per_worker=2); one
        worker process is killed (its nanny starts a new one).
      ray: the side task asks for num_cpus=0.5, so four run at once; the
        two lowest-numbered worker processes then running it are killed
        together (Ray has no local unit of two slots; it retries tasks whose
        worker died, and starts new worker processes as needed).
      celery: two ``celery worker -c 2`` instances, each in a process group
        of its own; one instance (main process and pool) is killed with
        killpg.  The task is ``acks_late=True, reject_on_worker_lost=True``;
        with Redis, the messages a dead instance had taken come back only
        after ``visibility_timeout`` (default 3,600 s), so it is set to 5 s,
        with ``unacked_restore_interval=1`` and
        ``unacked_restore_throttle=1`` so that the survivor sweeps every
        second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

SIDE_COMMAND = 'echo "$P2PEXEC_TASK_ID" >> "$P2PEXEC_SIDE"; sleep 0.01'


def report(workload: str, **figures: Any) -> None:
    """Print the C{RESULT} line of C{workload}: its C{figures} as JSON."""
    print(f"RESULT {workload} {json.dumps(figures)}", flush=True)


def side_lines(path: str) -> int:
    """The number of lines in the file at C{path}."""
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def side_counts(path: str) -> Counter:
    """How many times each task ID appears in the side file at C{path}."""
    with open(path, encoding="utf-8") as f:
        return Counter(line.strip() for line in f if line.strip())


def kill_when(path: str, threshold: int, pick: Callable[[], list[int]], deadline: float, group: bool = False) -> dict:
    """
    In a thread: once C{path} has C{threshold} lines, SIGKILL the PIDs (or
    with C{group}, the process groups) that C{pick} names.  The returned
    dict gets "killed" (the PIDs) and "at" (lines of C{path} then).
    """
    outcome: dict = {}

    def watch() -> None:
        while time.monotonic() < deadline:
            if side_lines(path) >= threshold:
                pids = pick()
                killed = []
                for pid in pids:
                    try:
                        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                if killed:
                    outcome["killed"] = killed
                    outcome["at"] = side_lines(path)
                    return
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def w5_figures(side: str, ids: list[str], ok: set[str], took: float, outcome: dict | None) -> dict:
    """The figures of one W5 run: time taken, tasks lost, tasks run twice, and what was killed when."""
    runs = side_counts(side)
    return {
        "elapsed": took,
        "lost": sum(1 for i in ids if i not in ok or runs.get(i, 0) == 0),
        "reruns": sum(count - 1 for count in runs.values() if count > 1),
        "killed_at": None if outcome is None else outcome.get("at"),
        "killed": None if outcome is None else outcome.get("killed"),
    }


def cmdline(pid: int) -> str:
    """The command line of process C{pid}, or C{""} if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def side_env(task_id: str, side: str) -> dict:
    """This process's environment plus the task ID and side file that L{SIDE_COMMAND} reads."""
    return dict(os.environ, P2PEXEC_TASK_ID=task_id, P2PEXEC_SIDE=side)


# -- dask -------------------------------------------------------------------------


def noop(i: Any) -> Any:
    """The no-op task: return C{i}."""
    return i


def run_true(i: Any) -> int:
    """The W2 task: run C{true}; return its exit status."""
    return subprocess.run(["true"], check=True).returncode


def run_side(task_id: str, side: str) -> str:
    """The W5 task: run L{SIDE_COMMAND}, which appends C{task_id} to C{side}; return C{task_id}."""
    subprocess.run(["sh", "-c", SIDE_COMMAND], env=side_env(task_id, side), check=True)
    return task_id


def dask_main(args: argparse.Namespace) -> None:
    """Measure W3, then the chosen workloads of W1, W2 and W5, on Dask LocalClusters."""
    import logging

    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
        local_directory=args.folder,
    )
    client = Client(cluster)
    try:
        client.submit(noop, 0, pure=False).result()
        report("W3", first_result=time.time() - args.launched)
        if "W1" in args.workloads:
            started = time.monotonic()
            client.gather(client.map(noop, range(args.w1), pure=False))
            took = time.monotonic() - started
            report("W1", elapsed=took, tasks_per_s=args.w1 / took)
        if "W2" in args.workloads:
            started = time.monotonic()
            client.gather(client.map(run_true, range(args.w2), pure=False))
            report("W2", elapsed=time.monotonic() - started)
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)
    if "W5" not in args.workloads:
        return
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
        local_directory=args.folder,
    )
    client = Client(cluster)
    try:
        ids = [f"t{n}" for n in range(1, args.w5 + 1)]
        for kill in (False, True):
            side = os.path.join(args.folder, f"dask-side-{kill}.txt")
            open(side, "w").close()
            outcome = None
            if kill:
                pids = sorted(client.run(os.getpid).values())
                outcome = kill_when(side, int(args.w5 * 0.3), lambda: [pids[-1]], time.monotonic() + 120)
            started = time.monotonic()
            futures = client.map(run_side, ids, side=side, pure=False)
            done = client.gather(futures, errors="skip")
            took = time.monotonic() - started
            report("W5kill" if kill else "W5", **w5_figures(side, ids, set(done), took, outcome))
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)


# -- ray --------------------------------------------------------------------------


def ray_main(args: argparse.Namespace) -> None:
    """Measure W3, then the chosen workloads of W1, W2 and W5, on a local Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        logging_level="error",
    )
    try:
        r_noop = ray.remote(noop)
        r_true = ray.remote(run_true)

        @ray.remote(num_cpus=0.5)
        def side_task(task_id: str, side: str) -> str:
            return run_side(task_id, side)

        ray.get(r_noop.remote(0))
        report("W3", first_result=time.time() - args.launched)
        if "W1" in args.workloads:
            started = time.monotonic()
            ray.get([r_noop.remote(i) for i in range(args.w1)])
            took = time.monotonic() - started
            report("W1", elapsed=took, tasks_per_s=args.w1 / took)
        if "W2" in args.workloads:
            started = time.monotonic()
            ray.get([r_true.remote(i) for i in range(args.w2)])
            report("W2", elapsed=time.monotonic() - started)
        if "W5" in args.workloads:
            ids = [f"t{n}" for n in range(1, args.w5 + 1)]

            def busy_workers() -> list[int]:
                # A Ray worker process running a task is titled "ray::side_task".
                busy = sorted(
                    int(entry)
                    for entry in os.listdir("/proc")
                    if entry.isdigit() and cmdline(int(entry)).startswith("ray::side_task")
                )
                return busy[:2]

            for kill in (False, True):
                side = os.path.join(args.folder, f"ray-side-{kill}.txt")
                open(side, "w").close()
                outcome = kill_when(side, int(args.w5 * 0.3), busy_workers, time.monotonic() + 120) if kill else None
                started = time.monotonic()
                refs = [side_task.remote(i, side) for i in ids]
                ok = set()
                for ref in refs:
                    try:
                        ok.add(ray.get(ref))
                    except Exception:  # a task that failed for good is lost
                        pass
                took = time.monotonic() - started
                report("W5kill" if kill else "W5", **w5_figures(side, ids, ok, took, outcome))
    finally:
        ray.shutdown()


# -- celery -----------------------------------------------------------------------

CELERY_APP = """
import os, subprocess
from celery import Celery

app = Celery("p2pexec_bench", broker={url!r}, backend={url!r})
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=False,
)
if os.environ.get("P2PEXEC_BENCH_W5"):
    app.conf.broker_transport_options = {{
        "visibility_timeout": 5, "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
    }}

SIDE_COMMAND = {side!r}


@app.task
def noop(i):
    return i


@app.task
def run_true(i):
    return subprocess.run(["true"], check=True).returncode


@app.task(acks_late=True, reject_on_worker_lost=True)
def run_side(task_id, side):
    env = dict(os.environ, P2PEXEC_TASK_ID=task_id, P2PEXEC_SIDE=side)
    subprocess.run(["sh", "-c", SIDE_COMMAND], env=env, check=True)
    return task_id
"""


def celery_main(args: argparse.Namespace) -> None:
    """Measure W3, then the chosen workloads of W1, W2 and W5, on Celery workers with Redis."""
    with open(os.path.join(args.folder, "p2pexec_bench_app.py"), "w", encoding="utf-8") as f:
        f.write(CELERY_APP.format(url=args.redis, side=SIDE_COMMAND))
    log = open(os.path.join(args.folder, "celery-worker.log"), "wb")

    def start_worker(name: str, **env: str) -> subprocess.Popen:
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        return subprocess.Popen(
            [
                celery,
                "-A",
                "p2pexec_bench_app",
                "worker",
                "-c",
                "2",
                "-P",
                "prefork",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}@localhost",
            ],
            cwd=args.folder,
            env=dict(os.environ, PYTHONPATH=args.folder, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    def stop_workers(workers: list[subprocess.Popen]) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    workers = [start_worker("bench")]
    try:
        sys.path.insert(0, args.folder)
        import p2pexec_bench_app as bench
        from celery.result import ResultSet

        bench.noop.delay(0).get(timeout=60)
        report("W3", first_result=time.time() - args.launched)
        if "W1" in args.workloads:
            started = time.monotonic()
            ResultSet([bench.noop.delay(i) for i in range(args.w1)]).join_native(timeout=300)
            took = time.monotonic() - started
            report("W1", elapsed=took, tasks_per_s=args.w1 / took)
        if "W2" in args.workloads:
            started = time.monotonic()
            ResultSet([bench.run_true.delay(i) for i in range(args.w2)]).join_native(timeout=300)
            report("W2", elapsed=time.monotonic() - started)
        if "W5" in args.workloads:
            stop_workers(workers)
            workers = [start_worker(f"w5-{n}", P2PEXEC_BENCH_W5="1") for n in (1, 2)]
            os.environ["P2PEXEC_BENCH_W5"] = "1"
            ids = [f"t{n}" for n in range(1, args.w5 + 1)]
            deadline = time.monotonic() + 60
            while len(bench.app.control.ping(timeout=0.5) or []) < 2 and time.monotonic() < deadline:
                pass
            for kill in (False, True):
                side = os.path.join(args.folder, f"celery-side-{kill}.txt")
                open(side, "w").close()
                outcome = (
                    kill_when(side, int(args.w5 * 0.3), lambda: [workers[1].pid], time.monotonic() + 120, group=True)
                    if kill
                    else None
                )
                started = time.monotonic()
                result = ResultSet([bench.run_side.delay(i, side) for i in ids])
                values = result.join_native(timeout=300, propagate=False)
                took = time.monotonic() - started
                ok = {v for v in values if isinstance(v, str)}
                report("W5kill" if kill else "W5", **w5_figures(side, ids, ok, took, outcome))
    finally:
        stop_workers(workers)
        log.close()


def main() -> int:
    """Parse the arguments and measure the workloads on the system named."""
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=("dask", "ray", "celery"))
    parser.add_argument("--launched", type=float, required=True, help="time.time() when the caller launched this")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--w1", type=int, default=10_000)
    parser.add_argument("--w2", type=int, default=2_000)
    parser.add_argument("--w5", type=int, default=1_000)
    parser.add_argument("--workloads", default="W1,W2,W3,W5")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    args.workloads = set(args.workloads.split(","))
    {"dask": dask_main, "ray": ray_main, "celery": celery_main}[args.system](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
