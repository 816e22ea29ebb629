"""
Integration test of the command policy: a real worker started with
C{--allow} runs the commands it allows and refuses the others, which never
start, and the master gets the refusal as the task's result.
"""

from __future__ import annotations

import os
import signal

from tests.integration.cluster import Cluster
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, write_job_file


class CommandPolicyTests(IntegrationTestCase):
    """C{--allow} on a real worker."""

    def test_allowed_runs_refused_does_not(self) -> None:
        """
        Worker w1 allows C{echo} and C{/usr/bin/true} only: of a job's two
        tasks, the echo runs and succeeds; the touch is refused (the file it
        would create never appears), the worker says so once at warn level,
        and the master's results file records status C{error}, no exit code,
        and the refusal naming the command and the patterns.  The master,
        given no policy, says at start that it runs any command.
        """
        cluster = Cluster(self)
        side = cluster.path("touched")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        write_job_file(
            job_file,
            {"kind": "sh"},
            [
                {"id": "allowed", "command": ["echo", "allowed ran"]},
                {"id": "refused", "command": ["touch", side]},
            ],
        )
        w1 = cluster.start("w1", "--capabilities", "sh", "--allow", "echo", "--allow", "/usr/bin/true")
        m = cluster.start(
            "m",
            "--capabilities",
            "none",
            "--job",
            job_file,
            "--results",
            results,
            "--exit-when-done",
        )
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("1", "1"), cluster.logs())
        self.assertEqual(m.wait_exit(10), 0, m.log_tail())
        report = self.results_of(m, results)

        allowed = report["by_id"]["allowed"]
        self.assertEqual(
            (allowed["status"], allowed["exit_code"], allowed["stdout"], allowed["node"]),
            ("succeeded", 0, "allowed ran\n", "w1"),
            allowed,
        )
        refused = report["by_id"]["refused"]
        self.assertEqual((refused["status"], refused["node"], refused["attempts"]), ("error", "w1", 1), refused)
        self.assertNotIn("exit_code", refused)
        self.assertRegex(
            refused["error"],
            r"^refused by this node's command policy: 'touch' \(/\S+/touch\) matches no --allow pattern "
            r"\(allowed: echo, /usr/bin/true\)$",
        )
        self.assertFalse(os.path.exists(side), "the refused task ran")

        self.assertLogHas(
            w1, r"#info\] Node w1 runs only commands matching --allow: echo, /usr/bin/true; shell tasks are refused$"
        )
        warnings = w1.find_all(r"#warn\] Node w1 refused task refused of job \S+ \(attempt 1\): (.*)$")
        self.assertEqual([match.group(1) for match in warnings], [refused["error"]], w1.log_tail())
        self.assertLogHas(m, r"#info\] Node m runs any command it is given \(no --allow or --instructions\)$")
        self.assertLogHas(m, r"#warn\] Task refused of job \S+ error on w1: refused by this node's command policy: ")

        w1.send_signal(signal.SIGTERM)
        self.assertEqual(w1.wait_exit(10), 0, w1.log_tail())
        for node in (m, w1):
            self.assertLogClean(node)
