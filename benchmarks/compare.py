"""
p2pexec side by side with Dask, Ray and Celery, and xargs (``make bench-compare``).

    python benchmarks/compare.py [--repeat N] [--systems dask,ray,celery] [--system-timeout S] [--no-install]

First, with the network (package registries only), it makes sure of:

  - ``.venv-compare`` (git-ignored), a virtualenv of its own beside
    ``.venv``, with ``dask[distributed]``, ``ray`` and ``celery[redis]``
    (each installed on its own: one that fails to install is reported and
    left out, the others go on);
  - Debian's ``redis-server`` for Celery (``apt-get install -y
    redis-server`` when it is missing; it is never started as a service).

Then it re-runs itself in a fresh network namespace whose only interface is
loopback (``unshare -n``; it refuses to measure without one: Ray, for one,
probes an outside address to learn its own), takes
``/tmp/p2pexec-heavy.lock``, starts redis-server on a free 127.0.0.1 port,
and for each repetition measures, in the same run:

  - p2pexec: W1, W2 (with ``xargs -P 2``), W3, W5 without and with the kill,
    exactly as ``benchmarks/run.py`` does (``benchmarks/workloads.py``);
  - each competitor: W3, W1, W2, W5 without and with the kill, in one
    process per system and repetition (``benchmarks/_competitors.py``
    says how each is set up and measured), bounded by ``--system-timeout``
    seconds; whatever that process leaves behind in its session is killed
    by PID.

The table gives each system's median (min-max) and the ratio p2pexec/other
(median of the per-repetition ratios).  A system that cannot be installed
or fails is reported as such, and the others go on.  Exit status: 0 if
p2pexec's own runs succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402
from _cluster import (  # noqa: E402
    CHECKOUT,
    HERE,
    TWISTD,
    RunFailed,
    heavy_lock,
    interrupt,
    kill_session,
    loopback_only,
    machine,
    median,
    precompile,
    reexec_in_namespace,
    summary,
)

VENV = os.path.join(CHECKOUT, ".venv-compare")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
SYSTEMS = ("dask", "ray", "celery")
PACKAGES = {"dask": "dask[distributed]", "ray": "ray", "celery": "celery[redis]"}
IMPORTS = {"dask": "import dask.distributed", "ray": "import ray", "celery": "import celery, redis"}
INSTALL_TIMEOUT = 1200.0


def say(text: str) -> None:
    """Print C{text}, prefixed with C{compare:}, at once."""
    print(f"compare: {text}", flush=True)


# -- outside the namespace: installing ----------------------------------------------


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:g}s: {' '.join(argv)}"
    except OSError as e:
        return 127, str(e)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def install(systems: list[str], allow_install: bool) -> dict[str, str | None]:
    """Make the comparison virtualenv and redis-server ready; return each system's problem, or None."""
    problems: dict[str, str | None] = {}
    if not os.path.exists(VENV_PYTHON):
        if not allow_install:
            return {s: f"{VENV} does not exist (run without --no-install)" for s in systems}
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        say(f"creating {VENV} with {base}")
        status, output = _run([base, "-m", "venv", VENV], 300)
        if status != 0:
            return {s: f"could not create {VENV}: {_tail(output)}" for s in systems}
        _run([VENV_PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], INSTALL_TIMEOUT)
    for system in systems:
        status, _ = _run([VENV_PYTHON, "-c", IMPORTS[system]], 120)
        if status == 0:
            problems[system] = None
            continue
        if not allow_install:
            problems[system] = f"not installed in {VENV} (run without --no-install)"
            continue
        say(f"installing {PACKAGES[system]} into {VENV}")
        status, output = _run([VENV_PYTHON, "-m", "pip", "install", "--quiet", PACKAGES[system]], INSTALL_TIMEOUT)
        if status == 0:
            status, output = _run([VENV_PYTHON, "-c", IMPORTS[system]], 120)
        problems[system] = None if status == 0 else f"pip install {PACKAGES[system]} failed: {_tail(output)}"
    if "celery" in systems and problems.get("celery") is None and shutil.which("redis-server") is None:
        if allow_install and shutil.which("apt-get") and os.geteuid() == 0:
            say("installing Debian's redis-server (apt-get install -y redis-server)")
            status, output = _run(["apt-get", "install", "-y", "-q", "redis-server"], INSTALL_TIMEOUT)
            if status != 0:
                _run(["apt-get", "update", "-q"], INSTALL_TIMEOUT)
                status, output = _run(["apt-get", "install", "-y", "-q", "redis-server"], INSTALL_TIMEOUT)
            if shutil.which("redis-server") is None:
                problems["celery"] = f"redis-server is missing and apt-get could not install it: {_tail(output)}"
        else:
            problems["celery"] = "redis-server is missing (apt-get install redis-server, as root)"
    return problems


# -- inside the namespace: measuring ------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A throw-away redis-server on 127.0.0.1, stopped by PID."""

    def __init__(self, folder: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(os.path.join(folder, "redis.log"), "wb")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RunFailed("redis-server did not start")
            time.sleep(0.05)

    def flush(self) -> None:
        """Empty every database of the server (C{FLUSHALL})."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 seconds) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def run_competitor(system: str, folder: str, args: argparse.Namespace, redis: Redis | None) -> tuple[dict, str | None]:
    """One process of C{_competitors.py}: its figures by workload, and what went wrong, if anything."""
    os.makedirs(folder, exist_ok=True)
    if redis is not None:
        redis.flush()
    argv = [
        VENV_PYTHON,
        os.path.join(HERE, "_competitors.py"),
        system,
        "--folder",
        folder,
        "--w1",
        str(args.w1_tasks),
        "--w2",
        str(args.w2_tasks),
        "--w5",
        str(args.w5_tasks),
    ]
    if redis is not None:
        argv += ["--redis", redis.url]
    stderr_path = os.path.join(folder, "stderr.log")
    figures: dict[str, dict] = {}
    problem = None
    with open(stderr_path, "wb") as err:
        launched = time.time()
        process = subprocess.Popen(
            argv + ["--launched", repr(launched)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=folder,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=args.system_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            problem = f"did not finish within --system-timeout {args.system_timeout:g}s (killed)"
        finally:
            left = kill_session(process.pid)
            if left:
                say(f"{system}: killed {left} process(es) it left behind")
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith("RESULT "):
            _, workload, data = line.split(" ", 2)
            figures[workload] = json.loads(data)
    if problem is None and process.returncode != 0:
        with open(stderr_path, "rb") as f:
            problem = f"exited with status {process.returncode}: {_tail(f.read().decode('utf-8', 'replace'), 3)}"
    return figures, problem


def p2pexec_repeat(top: str, files: workloads.Files, args: argparse.Namespace, number: int) -> dict:
    """One repetition of p2pexec's W1, W2 (with xargs), W3 and W5 without and with the kill: the figures by workload."""
    folder = os.path.join(top, f"{number}-p2pexec")
    os.makedirs(folder, exist_ok=True)
    w1 = workloads.w1(folder, files.w1_job, args.w1_tasks, args.timeout)
    w2 = workloads.w2(folder, files.w2_job, files.w2_ids, args.w2_tasks, args.timeout)
    w3 = workloads.w3(folder, files.w3_job, args.timeout)
    w5 = workloads.w5(folder, files.w5_job, files.side, args.w5_tasks, False, args.timeout)
    w5k = workloads.w5(folder, files.w5_job, files.side, args.w5_tasks, True, args.timeout)
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "W1": {"tasks_per_s": w1["tasks_per_s"], "elapsed": w1["elapsed"]},
        "W2": {"elapsed": w2["elapsed"]},
        "xargs": {"elapsed": w2["xargs"]},
        "W3": {"first_result": w3["first_result"]},
        "W5": w5,
        "W5kill": w5k,
    }


ROWS = (
    # (label, workload, key, format, higher is better)
    ("W1 no-op tasks/s", "W1", "tasks_per_s", ",.0f", True),
    ("W2 x true, s", "W2", "elapsed", ".3f", False),
    ("W3 launch -> first result, s", "W3", "first_result", ".2f", False),
    ("W5 no kill, s", "W5", "elapsed", ".2f", False),
    ("W5 one worker killed at 30%, s", "W5kill", "elapsed", ".2f", False),
    ("W5 kill / no kill", "W5ratio", "ratio", ".2f", False),
    ("W5 tasks lost (kill)", "W5kill", "lost", "d", False),
    ("W5 tasks run twice (kill)", "W5kill", "reruns", "d", False),
)


def table(measured: dict[str, list[dict]], problems: dict[str, str | None], repeat: int) -> None:
    """Print each system's figures and its ratios to p2pexec, then the problems and the quoted figures."""
    systems = [s for s in ("p2pexec", "xargs", *SYSTEMS) if s in measured]
    for runs in measured.values():
        for run in runs:
            if "W5" in run and "W5kill" in run:
                run["W5ratio"] = {"ratio": run["W5kill"]["elapsed"] / run["W5"]["elapsed"]}
    print(
        f"median (min-max) of {repeat} repetition(s); ratio = p2pexec / other, per repetition, then median "
        f"(W1: above 1 = p2pexec faster; seconds: below 1 = p2pexec faster)"
    )
    print()
    header = ["figure"] + systems[:1] + [f"{s}  [ratio]" for s in systems[1:]]
    body = []
    for label, workload, key, fmt, _ in ROWS:
        row = [label]
        for system in systems:
            values = [r[workload][key] for r in measured[system] if workload in r and r[workload].get(key) is not None]
            if system == "xargs" and workload != "W2":
                row.append("")
                continue
            if system == "xargs":
                values = [r["elapsed"] for r in (x.get("xargs") for x in measured["p2pexec"]) if r]
            if not values:
                row.append("-")
                continue
            cell = summary(values, fmt)
            if system != "p2pexec" and key not in ("lost", "reruns"):
                if system == "xargs":
                    pairs = [(r["W2"]["elapsed"], r["xargs"]["elapsed"]) for r in measured["p2pexec"]]
                else:
                    pairs = [
                        (m[workload][key], o[workload][key])
                        for m, o in zip(measured["p2pexec"], measured[system])
                        if workload in m and workload in o
                    ]
                ratios = [a / b for a, b in pairs if b]
                if ratios:
                    cell += f"  [{median(ratios):.2f}]"
            row.append(cell)
        body.append(row)
    widths = [max(len(r[i]) for r in body + [header]) for i in range(len(header))]
    fmt_line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt_line.format(*header))
    print("-" * (sum(widths) + 2 * len(widths)))
    for row in body:
        print(fmt_line.format(*row))
    print()
    for system, problem in problems.items():
        if problem:
            print(f"{system}: NOT MEASURED: {problem}")
    quoted = {
        "dask": ("W1", "tasks_per_s", "~950 no-op tasks/s"),
        "celery": ("W1", "tasks_per_s", "~720/s"),
        "ray": ("W1", "tasks_per_s", "~1,975/s"),
    }
    for system, (workload, key, text) in quoted.items():
        values = [r[workload][key] for r in measured.get(system, []) if workload in r]
        if values:
            print(f"quoted: {system} {text}; here: {summary(values, ',.0f')} tasks/s")
    xs = [r["xargs"]["elapsed"] for r in measured.get("p2pexec", [])]
    if xs:
        print(f"quoted: xargs -P2 W2 ~0.84 s; here: {summary(xs, '.3f')} s")


def inside(args: argparse.Namespace) -> int:
    """In the loopback-only namespace: measure p2pexec and the competitors, print the table; return the exit status."""
    with open(args.inside, encoding="utf-8") as f:
        problems: dict[str, str | None] = json.load(f)
    if not loopback_only():
        say("refusing to measure: not in a loopback-only network namespace")
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    top = tempfile.mkdtemp(prefix="p2pexec-compare-")
    systems = [s for s in args.systems if problems.get(s) is None]
    say(machine())
    say(
        f"network: loopback-only namespace; systems: p2pexec, xargs, {', '.join(systems) or 'no other'}; "
        f"{args.repeat} repetition(s)"
    )
    precompile()
    files = workloads.Files(top, args.w1_tasks, args.w2_tasks, args.w5_tasks)
    measured: dict[str, list[dict]] = {}
    redis: Redis | None = None
    started = time.monotonic()
    status = 0
    try:
        with heavy_lock(1800, say):
            if "celery" in systems:
                try:
                    redis = Redis(top)
                    say(f"redis-server on {redis.url} (pid {redis.process.pid})")
                except (RunFailed, OSError) as e:
                    problems["celery"] = f"redis-server: {e}"
                    systems.remove("celery")
            for number in range(1, args.repeat + 1):
                try:
                    mine = p2pexec_repeat(top, files, args, number)
                except RunFailed as e:
                    say(f"run {number}: p2pexec FAILED: {e}")
                    status = 1
                    break
                measured.setdefault("p2pexec", []).append(mine)
                measured["xargs"] = measured.get("xargs", []) + [{"W2": mine["xargs"]}]
                say(
                    f"run {number}: p2pexec  W1 {mine['W1']['tasks_per_s']:,.0f}/s  W2 {mine['W2']['elapsed']:.3f}s "
                    f"(xargs {mine['xargs']['elapsed']:.3f}s)  W3 {mine['W3']['first_result']:.2f}s  "
                    f"W5 {mine['W5']['elapsed']:.2f}s / kill {mine['W5kill']['elapsed']:.2f}s"
                )
                for system in list(systems):
                    t0 = time.monotonic()
                    figures, problem = run_competitor(system, os.path.join(top, f"{number}-{system}"), args, redis)
                    if figures:
                        measured.setdefault(system, []).append(figures)
                    parts = []
                    for workload, key, fmt in (
                        ("W3", "first_result", ".2f"),
                        ("W1", "tasks_per_s", ",.0f"),
                        ("W2", "elapsed", ".3f"),
                        ("W5", "elapsed", ".2f"),
                        ("W5kill", "elapsed", ".2f"),
                    ):
                        if workload in figures:
                            parts.append(f"{workload} {format(figures[workload][key], fmt)}")
                    if "W5kill" in figures:
                        parts.append(f"lost {figures['W5kill']['lost']} run twice {figures['W5kill']['reruns']}")
                    say(
                        f"run {number}: {system:<8} {'  '.join(parts) or 'nothing measured'}  "
                        f"({time.monotonic() - t0:.0f}s)"
                    )
                    if problem:
                        say(f"run {number}: {system} FAILED: {problem} (logs: {top}/{number}-{system})")
                        problems[system] = f"run {number} {problem}" + (
                            "; figures of the runs before are shown" if number > 1 or figures else ""
                        )
                        if not figures:
                            systems.remove(system)
    except KeyboardInterrupt:
        say(f"interrupted; files in {top}")
        status = 1
    finally:
        if redis is not None:
            redis.stop()
    print()
    print(f"p2pexec side by side: {machine()}")
    table(measured, problems, args.repeat)
    print()
    print(
        "p2pexec: W1/W5 master (runs nothing) + 2 workers --slots 2; W2 one node --slots 2 running the job "
        "itself; W3 3 nodes launched together."
    )
    print(
        "dask: LocalCluster 2 worker processes x 1 thread (W5: x 2 threads); ray: ray.init(num_cpus=2) (W5: "
        "num_cpus=0.5 per task); celery: 1 worker -c 2 prefork (W5: 2 workers -c 2), Redis broker+backend."
    )
    print(
        "W5 kill: p2pexec a worker node, dask a worker process (its nanny restarts it), ray 2 busy worker "
        "processes, celery one worker instance (visibility_timeout 5 s). See benchmarks/_competitors.py."
    )
    if args.keep or status != 0 or any(problems.values()):
        print(f"total {time.monotonic() - started:.0f}s; logs and files kept in {top}")
    else:
        print(f"total {time.monotonic() - started:.0f}s")
        shutil.rmtree(top, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, install what is missing, re-run in a loopback-only namespace; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="competitors (default dask,ray,celery)")
    parser.add_argument(
        "--system-timeout",
        type=float,
        default=300.0,
        help="seconds one competitor's repetition may take before it is killed (default 300)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one p2pexec run may take (default 120)")
    parser.add_argument("--w1-tasks", type=int, default=10_000)
    parser.add_argument("--w2-tasks", type=int, default=2_000)
    parser.add_argument("--w5-tasks", type=int, default=1_000)
    parser.add_argument("--no-install", action="store_true", help="install nothing; use what is there")
    parser.add_argument("--keep", action="store_true", help="keep every run's files and the competitors' logs")
    parser.add_argument("--inside", default=None, help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not set(args.systems) <= set(SYSTEMS) or args.repeat < 1:
        parser.error(f"--systems takes some of {','.join(SYSTEMS)}; --repeat >= 1")
    if args.inside:
        return inside(args)
    if not os.access(TWISTD, os.X_OK):
        say(f"no twistd beside {sys.executable}; run it with the project's virtualenv")
        return 1
    problems = install(args.systems, not args.no_install)
    for system, problem in problems.items():
        say(f"{system}: {'ready' if problem is None else 'NOT AVAILABLE: ' + problem}")
    fd, state = tempfile.mkstemp(prefix="p2pexec-compare-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(problems, f)
    try:
        status = reexec_in_namespace([sys.executable, os.path.abspath(__file__), *raw, "--inside", state])
    finally:
        os.unlink(state)
    if status is None:
        say(
            "cannot make a loopback-only network namespace (unshare -n, as root); refusing to run the "
            "competitors outside one"
        )
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
