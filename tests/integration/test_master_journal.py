"""
Integration tests of what a master's journal remembers and what it says when
it cannot write: real C{twistd p2pexec} processes on loopback.

A one-shot master started again with a job that already finished; a master
whose state directory is on a small tmpfs that fills up.  Tasks write a line
to a side file when they start, so that the tests count real executions.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import unittest
import urllib.error
import urllib.request

from tests.integration.cluster import Cluster, free_tcp_port, read_runs, record_run
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, write_job_file
from tests.integration.test_rogue import run_cli


def health(port: int) -> tuple[int, dict]:
    """(status, body) of GET /healthz on the node whose --web is C{port}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def fill(folder: str) -> str:
    """Fill the file system of C{folder} with one file; return its path."""
    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return path


class FinishedJobTests(IntegrationTestCase):
    """A master started again with the same --job after that job finished (issue 11, item 4)."""

    def test_finished_job_is_not_run_again_unless_asked(self) -> None:
        """
        A master runs a 3-task job to its end (--exit-when-done) and is
        started again with the same command line: it says in one line that
        the job already finished, runs nothing, and exits 0.  Started once
        more with --rerun-job, it runs the job again as a new job.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "command": record_run(side)},
            [{"id": f"t{n}"} for n in range(3)],
        )
        options = ["--capabilities", "w", "--job", job_file, "--exit-when-done"]
        first = cluster.start("m", *options)
        job_id = first.wait_for(JOB_FINISHED).group(1)
        self.assertEqual(first.wait_exit(10), 0, first.log_tail())
        self.assertEqual(len(read_runs(side)), 3)

        again = cluster.launch("m", first.argv)
        self.assertEqual(again.wait_exit(10), 0, again.log_tail())
        self.assertLogHas(
            again,
            rf"\] Node m: job file {re.escape(job_file)} already finished at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d "
            rf"\(job {re.escape(job_id)}: 3 succeeded, 0 failed\); not running it again; pass --rerun-job to "
            r"run it again$",
        )
        self.assertFalse(again.has(r"\] Node m is master of job "), again.log_tail())
        self.assertEqual(len(read_runs(side)), 3, "the finished job ran again")

        rerun = cluster.launch("m", first.argv + ["--rerun-job"])
        second_id = rerun.wait_for(JOB_FINISHED).group(1)
        self.assertEqual(rerun.wait_exit(10), 0, rerun.log_tail())
        self.assertNotEqual(second_id, job_id)
        self.assertEqual(len(read_runs(side)), 6, "--rerun-job runs every task again")


class FullDiskTests(IntegrationTestCase):
    """A master whose state directory is on a file system that fills up (issue 11, item 5)."""

    def mount_tmpfs(self, folder: str, size: str) -> None:
        """Mount a tmpfs of C{size} on C{folder} (unmounted at clean-up), or skip the test if that is not allowed."""
        os.makedirs(folder)
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root")
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if mounted.returncode != 0:
            raise unittest.SkipTest(f"cannot mount a tmpfs: {mounted.stdout.decode(errors='replace').strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def test_full_disk_is_reported_and_refuses_jobs_until_space_is_back(self) -> None:
        """
        The master's state directory is a 1 MiB tmpfs, filled up.  A job
        submitted with the client is refused at once with the reason (not a
        timeout: nothing of it runs); the log names the journal and says
        'disk full' (and not 'move it away'); /healthz answers 503 with the
        reason, and `p2pexec status` says the node is unhealthy.  Once the
        filler is removed, /healthz is 200 again within a few seconds, and
        the same job is accepted and runs.
        """
        cluster = Cluster(self)
        state = cluster.state_dir("m")
        self.mount_tmpfs(state, "1m")
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        write_job_file(
            job_file, {"kind": "w", "shell": True, "command": record_run(side)}, [{"id": f"t{n}"} for n in range(3)]
        )
        web = free_tcp_port()
        m = cluster.start("m", "--capabilities", "none", "--web", str(web))
        cluster.start("w1", "--capabilities", "w")
        self.assertEqual(health(web)[0], 200)
        filler = fill(state)

        status, output = run_cli(cluster, m.port, None, "submit", job_file, timeout=15)
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("no answer", output)
        self.assertIn("refused the job", output)
        self.assertIn("disk full", output)
        journal = os.path.join(state, "journal.sqlite3")
        self.assertLogHas(m, rf"\] Could not write the journal {re.escape(journal)}: disk full \(")
        self.assertFalse(m.has("move it away"), m.log_tail())
        code, body = health(web)
        self.assertEqual((code, body["status"]), (503, "unhealthy"), body)
        self.assertIn(f"its journal {journal} cannot be written: disk full", body["problem"])
        status, output = run_cli(cluster, m.port, None, "--plain", "status")
        self.assertEqual(status, 0, output)
        self.assertIn(f"Node m is unhealthy: its journal {journal} cannot be written: disk full", output)

        os.unlink(filler)
        cluster.wait_until(lambda: health(web)[0] == 200, lambda: f"/healthz still not ok\n{m.log_tail()}")
        self.assertLogHas(m, rf"\] The journal {re.escape(journal)} can be written again")
        status, output = run_cli(cluster, m.port, None, "submit", job_file)
        self.assertEqual(status, 0, output)
        m.wait_for(JOB_FINISHED)
        self.assertEqual(
            sorted(task for task, _, _ in read_runs(side)), ["t0", "t1", "t2"], "the refused job never ran"
        )
