"""
The dashboard in a real browser: headless Chromium driven by Selenium
(L{tests.integration.browser}) on the C{--web} port of a real three-node
cluster on loopback.

The browser only ever loads C{http://127.0.0.1:PORT/}.  Without Debian's
C{chromium} and C{chromium-driver} packages the browser test is skipped, and
says how to install them.  Every wait is bounded: the cluster's budget, and
Selenium's own timeouts for each command.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from typing import Any

from twisted.trial import unittest

from tests.integration import browser
from tests.integration.cluster import CHECKOUT, Cluster, free_tcp_port

DASHBOARD = os.path.join(CHECKOUT, "p2pexec", "dashboard")

KINDS = {"m": "a", "w1": "b", "w2": "c"}
"""Each node runs one kind, so that the job needs all three."""

TASKS_PER_KIND = 12

BUDGET = 45.0
"""Seconds all the test's waits may take together."""

_SHOWN = """
const nodes = [...document.querySelectorAll('#topology svg g.node')].map(
  (g) => ({name: g.dataset.name, state: g.dataset.state, busy: g.dataset.busy, slots: g.dataset.slots}));
const jobs = [...document.querySelectorAll('#jobs .job')].map((job) => ({
  id: job.dataset.id,
  state: job.dataset.state,
  progress: parseFloat(job.querySelector('.progress').dataset.progress),
  master: job.querySelector('[data-count="master"]').textContent,
}));
const rows = [...document.querySelectorAll('#tasks tbody tr')].map((tr) => ({
  id: tr.dataset.id,
  state: tr.dataset.state,
  node: tr.querySelector('td[data-column="node"]').textContent,
}));
return {
  nodes: nodes,
  links: document.querySelectorAll('#topology svg line.link').length,
  jobs: jobs,
  rows: rows,
  emptyTasks: !document.getElementById('tasks-empty').hidden,
  emptyJobs: !document.getElementById('jobs-empty').hidden,
  node: document.getElementById('node-name').textContent,
  health: document.getElementById('health').dataset.health,
  connection: document.getElementById('connection').dataset.connection,
  updated: document.getElementById('last-update').getAttribute('datetime'),
};
"""
"""What the page shows, read through the test hooks that dashboard.js documents."""


class DashboardBrowserTests(unittest.TestCase):
    """The dashboard of a live cluster, in headless Chromium."""

    def setUp(self) -> None:
        why = browser.missing()
        if why:
            raise unittest.SkipTest(f"the dashboard test needs a browser: {why}")

    def shown(self, driver: Any) -> dict[str, Any]:
        """What the dashboard in C{driver} shows now."""
        return driver.execute_script(_SHOWN)

    def submit(self, port: int, job: dict[str, Any], token: str) -> str:
        """POST C{job} to the node's C{/api/jobs} on 127.0.0.1 with the node's HTTP C{token}; return the new job's id."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/jobs",
            data=json.dumps(job).encode("utf-8"),
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
            method="POST",
        )
        with browser.loopback_opener().open(request, timeout=10) as answer:
            return json.load(answer)["job"]

    def test_topology_and_progress(self) -> None:
        """
        The dashboard of a node with two workers shows the three nodes
        (itself as self, its workers alive) and the links between them, and
        no job.  A job of 36 tasks, submitted while the page is open, appears
        on it by itself; its progress reaches 1 and every task is listed as
        succeeded.  The node filter asks the API for one node's tasks.  The
        page keeps updating, logs no error, and leaves a screenshot.
        """
        cluster = Cluster(self, budget=BUDGET)
        tasks = [
            {"id": f"{kind}{i:02d}", "kind": kind, "command": ["sleep", "0.2"]}
            for kind in KINDS.values()
            for i in range(1, TASKS_PER_KIND + 1)
        ]
        web = free_tcp_port()
        for name in ("w1", "w2"):
            cluster.start(name, "--capabilities", KINDS[name], "--slots", "2")
        m = cluster.start("m", "--capabilities", KINDS["m"], "--slots", "2", "--web", str(web))
        m.wait_for(rf"serves its dashboard, API and metrics on http://127\.0\.0\.1:{web}/$")

        driver = browser.start_chromium(cluster.path("browser"))
        self.addCleanup(driver.quit)
        driver.get(f"http://127.0.0.1:{web}/")

        def describe() -> str:
            return f"the dashboard shows {self.shown(driver)}; node logs in {cluster.folder}"

        # The topology: three nodes and the workers' links to the master.
        def topology_complete() -> Any:
            shown = self.shown(driver)
            states = {node["name"]: node["state"] for node in shown["nodes"]}
            done = states == {"m": "self", "w1": "alive", "w2": "alive"} and shown["links"] >= 2
            return shown if done else None

        shown = cluster.wait_until(topology_complete, describe, timeout=15)
        self.assertEqual(shown["node"], "m")
        self.assertEqual(shown["health"], "ok")
        self.assertEqual(shown["connection"], "live")
        self.assertTrue(shown["emptyJobs"], shown)
        self.assertEqual(shown["jobs"], [])
        for node in shown["nodes"]:
            self.assertEqual(node["slots"], "2", node)

        # A job submitted now: the page picks it up and follows it to its end.
        job_id = self.submit(web, {"defaults": {"timeout": 30}, "task": tasks}, cluster.http_token("m"))
        progress: list[float] = []

        def job_complete() -> Any:
            shown = self.shown(driver)
            jobs = {job["id"]: job for job in shown["jobs"]}
            job = jobs.get(job_id)
            if job is not None:
                progress.append(job["progress"])
            rows = shown["rows"]
            done = (
                job is not None
                and job["progress"] == 1
                and job["state"] == "finished"
                and len(rows) == len(tasks)
                and all(row["state"] == "succeeded" for row in rows)
            )
            return shown if done else None

        shown = cluster.wait_until(job_complete, describe, timeout=25)
        self.assertEqual([job["id"] for job in shown["jobs"]], [job_id])
        self.assertEqual(shown["jobs"][0]["master"], "master m \u00b7 epoch 1")
        self.assertEqual(progress, sorted(progress), "the progress went backwards")
        self.assertEqual(sorted(row["id"] for row in shown["rows"]), sorted(task["id"] for task in tasks))
        self.assertEqual({row["node"] for row in shown["rows"] if row["id"].startswith("b")}, {"w1"})
        m.wait_for(rf"\] Job {re.escape(job_id)} finished: {len(tasks)} succeeded, 0 failed, ")

        # Still live: the time of the last update moves on.
        before = shown["updated"]
        cluster.wait_until(lambda: self.shown(driver)["updated"] != before, describe, timeout=5)

        # The node filter: only w1's tasks, asked of the API with ?node=w1.
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "task-node")).select_by_value("w1")

        def only_w1() -> Any:
            rows = self.shown(driver)["rows"]
            return len(rows) == TASKS_PER_KIND and all(row["node"] == "w1" for row in rows)

        cluster.wait_until(only_w1, describe, timeout=5)
        Select(driver.find_element(By.ID, "task-state")).select_by_value("failed")
        cluster.wait_until(
            lambda: self.shown(driver)["emptyTasks"] and not self.shown(driver)["rows"], describe, timeout=5
        )
        Select(driver.find_element(By.ID, "task-node")).select_by_value("")
        Select(driver.find_element(By.ID, "task-state")).select_by_value("")
        cluster.wait_until(lambda: len(self.shown(driver)["rows"]) == len(tasks), describe, timeout=5)

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        screenshot = os.path.join(folder, "dashboard.png")
        self.assertTrue(driver.save_screenshot(screenshot), "Chromium took no screenshot")
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", f"{screenshot} is not a PNG")

        self.assertEqual(browser.severe_console_messages(driver), [], "the page logged errors")


class DashboardFilesTests(unittest.SynchronousTestCase):
    """The dashboard's files, as they ship: no CDN, no HTML built from strings."""

    def read(self, name: str) -> str:
        """A file of p2pexec/dashboard."""
        with open(os.path.join(DASHBOARD, name), encoding="utf-8") as f:
            return f.read()

    def test_no_external_resources(self) -> None:
        """
        index.html loads only /static/ files of its own (and data: URLs), and
        the style sheet imports nothing and uses no url() from elsewhere.
        """
        html = self.read("index.html")
        references = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html)
        self.assertIn("/static/dashboard.js", references)
        self.assertIn("/static/dashboard.css", references)
        for reference in references:
            self.assertRegex(reference, r"^(/|data:)", f"index.html refers to {reference!r}")
        css = self.read("dashboard.css")
        self.assertNotIn("@import", css)
        for target in re.findall(r"url\(([^)]*)\)", css):
            self.assertRegex(target.strip("'\" "), r"^(data:|/static/)", f"dashboard.css loads {target!r}")

    def test_no_html_from_strings(self) -> None:
        """
        dashboard.js never parses strings as HTML (innerHTML, outerHTML,
        insertAdjacentHTML, document.write), so nothing the API says can
        become markup; it only fetches paths of its own node.
        """
        script = self.read("dashboard.js")
        for pattern in (r"\.innerHTML\s*=", r"\.outerHTML\s*=", r"insertAdjacentHTML", r"document\.write", r"\beval\("):
            self.assertNotRegex(script, pattern)
        for target in re.findall(r"""(?:fetch|requestJSON)\(\s*["'`]([^"'`]*)""", script):
            self.assertTrue(target.startswith("/"), f"dashboard.js fetches {target!r}")

    def test_every_task_state(self) -> None:
        """
        The state filter offers every task state the API reports
        (L{p2pexec.status.TASK_STATES}, C{skipped} included), and each
        ended state has its own count, progress segment and badge style.
        """
        from p2pexec.status import TASK_STATES

        script = self.read("dashboard.js")
        css = self.read("dashboard.css")
        listed = re.search(r"const TASK_STATES = \[([^\]]*)\]", script)
        assert listed is not None
        self.assertEqual(re.findall(r'"(\w+)"', listed.group(1)), list(TASK_STATES))
        for state in ("succeeded", "failed", "cancelled", "skipped"):
            self.assertRegex(script, rf'for \(const part of \[[^\]]*"{state}"[^\]]*\]\) {{\s*const segment')
            self.assertIn(f'.seg[data-part="{state}"]', css)
            self.assertIn(f'.badge[data-state="{state}"]', css)
        for state in ("cancelled", "skipped"):
            self.assertIn(f"setText(meta.{state}, ", script)
