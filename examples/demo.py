"""
The original system's example, on a real local cluster (run by ``make demo``).

Starts three ``twistd p2pexec`` nodes on loopback:

  - a1, master of the instructions a1,a2,b1,c1,a3 (it runs the 'a' ones);
  - b1, which runs kind 'b';
  - c1, which runs kind 'c';

shows their log lines in the original style, waits for the job to finish,
stops all three with SIGTERM, and exits 0 only if every node left cleanly
and every task succeeded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
GROUP = "239.255.42.98:10098"
"""A group of the demo's own, so that it never mixes with real daemons."""
NODES = [
    ("a1", 10001, ["--tasks", "a1,a2,b1,c1,a3"]),
    ("b1", 10002, []),
    ("c1", 10003, []),
]
DEADLINE = 30.0
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
"""The twistd beside this Python, so that the demo runs in the project's virtualenv."""
LINE = re.compile(r"^\S+ \[p2pexec\.[a-z_.]+#(\w+)\] (.*)$")


def start(folder: str, name: str, port: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """Start one node; its log goes to a file in C{folder}."""
    log_path = os.path.join(folder, f"{name}.log")
    argv = [
        TWISTD,
        "--pidfile=",
        "-n",
        "--logger=p2pexec.log.observer",
        "p2pexec",
        "--name",
        name,
        "--port",
        str(port),
        "--group",
        GROUP,
        "--cluster",
        "demo",
        "--slots",
        "2",
        "--state-dir",
        os.path.join(folder, "state", name),
    ] + extra
    if name == "a1":
        argv += ["--results", os.path.join(folder, "results.json")]
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = open(log_path, "wb")
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env)
    return process, log_path


class Tailer:
    """Prints the p2pexec lines that appear in a set of log files."""

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}
        self.seen: dict[str, list[str]] = {}

    def poll(self, paths: list[str]) -> None:
        """Print the new lines of every file, merged in time order."""
        fresh: list[str] = []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for raw in complete.decode("utf-8", "replace").splitlines():
                self.seen.setdefault(path, []).append(raw)
                fresh.append(raw)
        for raw in sorted(fresh, key=lambda line: line.split(" ", 1)[0]):
            match = LINE.match(raw)
            if match:
                level, text = match.groups()
                print(text if level == "info" else f"{level.upper()}: {text}", flush=True)
            elif "Traceback" in raw or "Error" in raw:
                print(raw, flush=True)

    def contains(self, path: str, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.seen.get(path, []))


def main() -> int:
    folder = tempfile.mkdtemp(prefix="p2pexec-demo-")
    processes: list[tuple[str, subprocess.Popen, str]] = []
    tailer = Tailer()
    try:
        for name, port, extra in NODES:
            process, path = start(folder, name, port, extra)
            processes.append((name, process, path))
            for _ in range(15):
                time.sleep(0.02)
                tailer.poll([p for _, _, p in processes])
        master_log = processes[0][2]
        deadline = time.monotonic() + DEADLINE
        while not tailer.contains(master_log, r"Job \S+ finished"):
            for name, process, _ in processes:
                if process.poll() is not None:
                    tailer.poll([p for _, _, p in processes])
                    print(f"demo: node {name} exited early with status {process.returncode}; logs in {folder}")
                    return 1
            if time.monotonic() > deadline:
                print(f"demo: the job did not finish within {DEADLINE:g}s; logs in {folder}")
                return 1
            time.sleep(0.02)
            tailer.poll([p for _, _, p in processes])
        print("demo: the job finished; stopping every node with SIGTERM")
    finally:
        for _, process, _ in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process, _ in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"demo: node {name} did not stop within 15s; killing it")
                process.kill()
                process.wait()
        tailer.poll([p for _, _, p in processes])
    failures = [(name, p.returncode) for name, p, _ in processes if p.returncode != 0]
    if failures:
        print(f"demo: nodes exited uncleanly: {failures}; logs in {folder}")
        return 1
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    print(
        f"demo: every node stopped cleanly. Job {results['job']}: "
        f"{results['succeeded']} succeeded, {results['failed']} failed "
        f"(results: {folder}/results.json)"
    )
    return 0 if results["failed"] == 0 and results["succeeded"] == results["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
