#!/usr/bin/env python3
"""
Make C{docs/dashboard.png}, the dashboard's picture in the README.

Starts six real nodes on loopback (a cluster, multicast group and port of
their own); C{ams-1} serves the dashboard.  Through its HTTP API it gets a
small job that finishes, one that is cancelled half-way, and then the job
the picture is about: 300 short tasks of three kinds, one of which fails,
and three long ones.
The dashboard is opened in headless Chromium at 1400x900, and the picture is
taken once that job is about half done, with tasks running, done and
failed.  Then every node is stopped (SIGTERM, then SIGKILL by PID) and the
temporary folder removed.

Run it from the checkout, with the project's virtualenv::

    .venv/bin/python docs/make_screenshot.py [--output docs/dashboard.png] [--keep]

It needs C{chromium} and C{chromium-driver} (C{apt-get install chromium
chromium-driver}).  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, CHECKOUT)

from tests.integration import browser  # noqa: E402
from tests.integration.cluster import Cluster, ClusterFailure, free_tcp_port  # noqa: E402

OUTPUT = os.path.join(CHECKOUT, "docs", "dashboard.png")
WIDTH, HEIGHT = 1400, 900
MASTER = "ams-1"
NODES = {
    # name: (capabilities, slots)
    "ams-1": ("build,test", 4),
    "ams-2": ("build,test", 4),
    "fra-1": ("build,render", 4),
    "fra-2": ("test,render", 4),
    "lon-1": ("build,test,render", 6),
    "par-1": ("deploy", 4),  # only three long deploy tasks: a node not fully busy
}
FAILING_TASK = "test-002"
BUDGET = 120.0
"""Seconds the whole run may take."""


class _Session:
    """What L{Cluster} asks of a test case (C{mktemp}, C{addCleanup}), outside trial."""

    def __init__(self, folder: str, cleanups: contextlib.ExitStack) -> None:
        self._folder = folder
        self._cleanups = cleanups

    def mktemp(self) -> str:
        return os.path.join(self._folder, "cluster")

    def addCleanup(self, function: Callable[..., Any], *args: Any) -> None:
        self._cleanups.callback(function, *args)


def main_job() -> dict[str, Any]:
    """
    The job the picture is about: 300 tasks of kinds build, test and render,
    interleaved, each a C{sleep} of a fixed pseudo-random length (one test
    fails early, writing to its stderr), and three long deploy tasks.
    """
    rng = random.Random(7)  # the same job every time
    kinds = {"build": (110, 0.6, 2.0), "test": (120, 0.4, 1.6), "render": (70, 1.0, 3.0)}
    tasks = []
    for i in range(1, max(number for number, _, _ in kinds.values()) + 1):
        for kind, (number, low, high) in kinds.items():
            if i > number:
                continue
            task: dict[str, Any] = {"id": f"{kind}-{i:03d}", "kind": kind}
            if task["id"] == FAILING_TASK:
                task["shell"] = True
                task["command"] = (
                    "sleep 0.8; echo 'assertion failed: GET /health returned 503, expected 200' >&2; exit 1"
                )
            else:
                task["command"] = ["sleep", f"{rng.uniform(low, high):.2f}"]
            tasks.append(task)
    tasks += [{"id": f"deploy-{i:02d}", "kind": "deploy", "command": ["sleep", "40"]} for i in (1, 2, 3)]
    return {"defaults": {"timeout": 60}, "task": tasks}


def small_job(kind: str, number: int, seconds: float) -> dict[str, Any]:
    """C{number} tasks of C{kind}, each sleeping C{seconds}."""
    return {
        "task": [
            {"id": f"{kind}-{i:02d}", "kind": kind, "command": ["sleep", str(seconds)]} for i in range(1, number + 1)
        ]
    }


def api(port: int, path: str, body: Any = None, token: str | None = None) -> Any:
    """Call the master's HTTP API on 127.0.0.1 (POST when there is a C{body}, with its HTTP C{token}) and return its JSON."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="GET" if body is None else "POST"
    )
    request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    with browser.loopback_opener().open(request, timeout=10) as answer:
        return json.load(answer)


def page_state(driver: Any, job_id: str) -> dict[str, Any]:
    """What the dashboard shows now: node count and the job's progress and counts."""
    return driver.execute_script(
        """
        const job = document.querySelector('#jobs .job[data-id="' + arguments[0] + '"]');
        const bar = job && job.querySelector('.progress');
        const count = (name) => {
          const item = job && job.querySelector('.job-meta [data-count="' + name + '"]');
          return item ? parseInt(item.textContent.replace(/[^0-9]/g, ''), 10) || 0 : 0;
        };
        return {
          nodes: document.querySelectorAll('#topology svg g.node').length,
          alive: document.querySelectorAll('#topology svg g.node[data-state="alive"]').length,
          progress: bar ? parseFloat(bar.getAttribute('data-progress')) : 0,
          running: count('running'),
          failed: count('failed'),
          rows: document.querySelectorAll('#tasks tbody tr').length,
          live: document.getElementById('connection').getAttribute('data-connection') === 'live',
        };
        """,
        job_id,
    )


def stop(cluster: Cluster) -> None:
    """SIGTERM every node (they stop their tasks), wait, then SIGKILL stragglers by PID."""
    for node in cluster.nodes.values():
        if node.running():
            node.send_signal(signal.SIGTERM)
    end = time.monotonic() + 15
    for node in cluster.nodes.values():
        try:
            node.process.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=OUTPUT, help="where to write the PNG (default: docs/dashboard.png)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (node logs) for a look")
    arguments = parser.parse_args()

    why = browser.missing()
    if why:
        print(f"make_screenshot: {why}", file=sys.stderr)
        return 2

    folder = tempfile.mkdtemp(prefix="p2pexec-screenshot-")
    with contextlib.ExitStack() as cleanups:
        if not arguments.keep:
            cleanups.callback(shutil.rmtree, folder, True)
        cluster = Cluster(_Session(folder, cleanups), budget=BUDGET)
        web = free_tcp_port()
        common = ("--drain-timeout", "1")
        for name, (capabilities, slots) in NODES.items():
            if name != MASTER:
                cluster.start(name, "--capabilities", capabilities, "--slots", str(slots), *common)
        capabilities, slots = NODES[MASTER]
        cluster.start(MASTER, "--capabilities", capabilities, "--slots", str(slots), "--web", str(web), *common)
        token = cluster.http_token(MASTER)
        # Clean-ups run last first: quit the browser, then SIGTERM the nodes,
        # then SIGKILL (the harness's own clean-up) any that did not leave.
        cleanups.callback(stop, cluster)

        def everyone_alive() -> bool:
            nodes = api(web, "/api/topology")["nodes"]
            return sum(node["state"] in ("self", "alive") for node in nodes) == len(NODES)

        def job_state(job_id: str) -> str:
            return api(web, f"/api/jobs/{job_id}?limit=1")["job"]["state"]

        try:
            cluster.wait_until(everyone_alive, lambda: f"not all alive: {api(web, '/api/topology')}", timeout=20)
            # Some history for the job list: a job that finished, one cancelled half-way.
            done = api(web, "/api/jobs", small_job("test", 24, 0.2), token)["job"]
            cluster.wait_until(lambda: job_state(done) == "finished", lambda: f"job {done} did not finish", timeout=20)
            cancelled = api(web, "/api/jobs", small_job("render", 40, 3), token)["job"]
            time.sleep(1.5)
            api(web, f"/api/jobs/{cancelled}/cancel", {}, token)
            main_id = api(web, "/api/jobs", main_job(), token)["job"]
        except ClusterFailure as e:
            print(f"make_screenshot: {e}\n{cluster.logs()}", file=sys.stderr)
            return 1
        total = len(main_job()["task"])

        driver = browser.start_chromium(os.path.join(folder, "browser"), WIDTH, HEIGHT)
        cleanups.callback(driver.quit)
        driver.get(f"http://127.0.0.1:{web}/")

        def mid_way() -> Any:
            shown = page_state(driver, main_id)
            ready = (
                shown["live"]
                and shown["nodes"] == len(NODES)
                and shown["alive"] == len(NODES) - 1
                and shown["failed"] >= 1
                and shown["running"] > 0
                and 0.40 <= shown["progress"] <= 0.75
                and shown["rows"] > 0
            )
            return shown if ready else None

        try:
            shown = cluster.wait_until(
                mid_way, lambda: f"the dashboard shows {page_state(driver, main_id)}", timeout=60
            )
        except ClusterFailure as e:
            print(f"make_screenshot: {e}\n{cluster.logs()}", file=sys.stderr)
            return 1
        driver.save_screenshot(arguments.output)
        print(
            f"make_screenshot: wrote {arguments.output} ({os.path.getsize(arguments.output) // 1024} KiB): "
            f"{shown['nodes']} nodes, job of {total} tasks at {shown['progress']:.0%}, "
            f"{shown['running']} running, {shown['failed']} failed"
        )
        if arguments.keep:
            print(f"make_screenshot: logs kept in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
