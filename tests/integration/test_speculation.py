"""
A backup copy on real processes (issue 15, no slow-node tail): a worker whose
tasks take 3 s holds the last running task of a job; a backup on the idle fast
worker finishes it, the slow copy is stopped, and the task has one result.
"""

from __future__ import annotations

from tests.integration.cluster import Cluster, read_runs
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, shell_quote, write_job_file


class BackupTests(IntegrationTestCase):
    """Backup copies between real nodes."""

    def test_backup_wins_and_the_slow_copy_is_stopped(self) -> None:
        """
        Six tasks of 0.3 s; the slow worker (1 slot, its tasks sleep 3 s
        through its own environment) is given two before its pace is known,
        the second queued.  Once its first result shows how slow it is, the
        second is backed up on the idle fast worker.  The side file shows
        that task started twice (attempt 1 on s, attempt 2 on f), the slow
        copy never reached its end, the job ended well before the 6 s the
        slow node needed, and the results file has one result for the
        task: the backup's.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        ends = cluster.path("ends.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        command = (
            f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> {shell_quote(side)}; '
            f'sleep "${{W6_SLEEP:-0.3}}"; echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE" >> {shell_quote(ends)}'
        )
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": f"t{n}"} for n in range(6)])
        cluster.start("f", "--capabilities", "w", "--slots", "2")
        s = cluster.start("s", "--capabilities", "w", "--slots", "1", env=dict(cluster.environment(), W6_SLEEP="3"))
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        backup = m.wait_for(r"\] Node m runs a backup copy of task (\S+) of job \S+ on f \(attempt 2\)", timeout=10)
        task = backup.group(1)
        finished = m.wait_for(JOB_FINISHED, timeout=10)
        self.assertEqual(finished.group(2, 3), ("6", "0"))
        s.wait_for(rf"\] Node s cancelled \['{task}'\] of job \S+ of master m: 0 queued task\(s\) dropped, 1 running")
        runs = read_runs(side)
        self.assertEqual([(node, attempt) for t, node, attempt in runs if t == task], [("s", 1), ("f", 2)])
        self.assertEqual(sorted(t for t, _, _ in runs), sorted([f"t{n}" for n in range(6)] + [task]))
        report = self.results_of(m, results)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (6, 6, 0))
        self.assertEqual(len(report["tasks"]), 6)
        self.assertLess(report["elapsed"], 5.0, "the job waited for the slow copy (until 6 s)")
        entry = next(t for t in report["tasks"] if t["id"] == task)
        self.assertEqual((entry["node"], entry["attempts"], entry["status"]), ("f", 2, "succeeded"))
        with open(ends) as f:
            finished = f.read().split("\n")
        self.assertNotIn(f"{task} s", finished, "the slow copy ran to its end")
        self.assertIn(f"{task} f", finished)
        self.stop_all(cluster)
