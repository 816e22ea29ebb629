"""
Integration tests of what a master's journal remembers and what it says when
it cannot write: real C{twistd p2pexec} processes on loopback.

A one-shot master started again with a job that already finished; a master
whose state directory is on a small tmpfs that fills up.  Tasks write a line
to a side file when they start, so that the tests count real executions.
"""

from __future__ import annotations

import re

from tests.integration.cluster import Cluster, read_runs, record_run
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, write_job_file


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
            job_file, {"kind": "w", "shell": True, "command": record_run(side)},
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
