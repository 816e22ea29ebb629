"""
Integration tests of C{p2pexec rerun --failed}, C{--node} and C{--all-nodes}
against real C{twistd p2pexec} nodes on loopback (issue 14).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from twisted.trial import unittest

from tests.integration.cluster import Cluster


class RerunCliTests(unittest.TestCase):
    """The client against real nodes."""

    def cli(self, cluster: Cluster, port: int, *argv: str, timeout: float = 30.0) -> tuple[int, str, str]:
        """Run C{p2pexec --connect 127.0.0.1:PORT ARGV...} to its end: exit status, stdout, stderr."""
        done = subprocess.run(
            [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", *argv],
            input="",
            capture_output=True,
            text=True,
            cwd=cluster.folder,
            env=dict(cluster.environment()),
            timeout=cluster.deadline.bound(timeout),
        )
        self.assertNotIn("Traceback", done.stderr, done.stderr)
        return done.returncode, done.stdout, done.stderr

    def tasks(self, cluster: Cluster, port: int, job: str) -> dict[str, Any]:
        """The job's tasks by id, from C{p2pexec result --json}."""
        _, out, err = self.cli(cluster, port, "result", "--json", job)
        return {task["id"]: task for task in json.loads(out)["tasks"]}

    def newest_job(self, cluster: Cluster, port: int) -> str:
        """
        The id of the newest job the node is master of (C{p2pexec jobs
        --json}): C{run} prints only the tasks' output on stdout, and says
        the job's id on stderr only on a terminal.
        """
        status, out, err = self.cli(cluster, port, "jobs", "--json")
        self.assertEqual(status, 0, err)
        return str(json.loads(out)[0]["id"])

    def test_rerun_failed(self) -> None:
        """
        Two tasks fail the first time (a side file remembers): run exits 1;
        rerun --failed runs exactly those again, as attempt 2, and exits 0;
        the results show it.  Rerunning again has nothing to do (exit 0); an
        unknown job is one line and exit 2.
        """
        cluster = Cluster(self)
        node = cluster.start("r1", "--capabilities", "sh", "--slots", "2")
        marks = cluster.path("marks")
        os.makedirs(marks)
        command = f"case {{}} in ok*) exit 0;; esac; test -e {marks}/{{}} && exit 0; touch {marks}/{{}}; exit 3"
        status, out, err = self.cli(
            cluster, node.port, "run", "--kind", "sh", "--shell", "--", command, ":::", "ok1", "x", "ok2", "y"
        )
        self.assertEqual(status, 1, out + err)
        job = re.search(r"^p2pexec: job (\S+) finished: 2 succeeded, 2 failed of 4 task\(s\)", err).group(1)
        self.assertEqual(job, self.newest_job(cluster, node.port))
        status, out, err = self.cli(cluster, node.port, "rerun", "--failed", job)
        self.assertEqual(status, 0, out + err)
        self.assertIn(f"job {job}: 2 task(s) run again: x, y", out)
        tasks = self.tasks(cluster, node.port, job)
        self.assertEqual(
            {t: (v["state"], v["attempts"]) for t, v in tasks.items()},
            {"ok1": ("succeeded", 1), "x": ("succeeded", 2), "ok2": ("succeeded", 1), "y": ("succeeded", 2)},
        )
        status, out, _ = self.cli(cluster, node.port, "rerun", "--failed", job)
        self.assertEqual(status, 0)
        self.assertIn("nothing to rerun", out)
        status, out, err = self.cli(cluster, node.port, "rerun", "--failed", "nosuch-job")
        self.assertEqual(status, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("unknown job", err)

    def test_node_and_all_nodes(self) -> None:
        """
        --all-nodes runs the command once on each node (ids ARG@NODE); --node
        runs every task on the named node; a name no node can have is exit 2.
        """
        cluster = Cluster(self)
        n1 = cluster.start("n1", "--capabilities", "sh", "--slots", "2")
        cluster.start("n2", "--capabilities", "sh", "--slots", "2")
        n1.wait_for(r"\] Node n1 connected to peer n2 ")
        status, out, err = self.cli(cluster, n1.port, "run", "--kind", "sh", "--all-nodes", "--", "true", ":::", "x")
        self.assertEqual(status, 0, out + err)
        job = self.newest_job(cluster, n1.port)
        tasks = self.tasks(cluster, n1.port, job)
        self.assertEqual({t: v.get("node") for t, v in tasks.items()}, {"x@n1": "n1", "x@n2": "n2"})
        status, out, err = self.cli(
            cluster, n1.port, "run", "--kind", "sh", "--node", "n2", "--", "true", ":::", "a", "b", "c"
        )
        self.assertEqual(status, 0, out + err)
        job = self.newest_job(cluster, n1.port)
        self.assertEqual({v.get("node") for v in self.tasks(cluster, n1.port, job).values()}, {"n2"})
        status, out, err = self.cli(
            cluster, n1.port, "run", "--kind", "sh", "--node", "no/such", "--", "true", ":::", "a"
        )
        self.assertEqual(status, 2)
        self.assertIn("no node can have that name", err)
