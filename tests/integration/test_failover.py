"""
Master failover on real processes (issue 13): a job outlives its master.

Five C{twistd p2pexec} nodes on loopback, each with the default
C{--replicas 2}: a master that runs nothing and four workers.  The master
is SIGKILLed with the job under way and never restarted.  Every task
appends its id to a side file when it starts, so that the test counts real
executions, not what the nodes say.  Like the other integration tests it is
synchronous on purpose: every wait is a bounded poll.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter

from tests.integration.cluster import Cluster, NodeProcess, read_runs, record_run, tail
from tests.integration.test_cli import JOB_ID, CliTestCase, stop, write_job

WORKERS = ("w1", "w2", "w3", "w4")
SLOTS = 2
TASKS = 200


def write_failover_job(cluster: Cluster) -> tuple[str, str, list[str]]:
    """
    Write the job of L{TASKS} tasks of kind w that each record their run in
    a side file, then sleep 0.2 s; return the side file, the job file and
    the task ids.
    """
    side = cluster.path("side.txt")
    job_file = cluster.path("job.toml")
    ids = [f"t{n:03d}" for n in range(TASKS)]
    write_job(
        job_file,
        {"kind": "w", "shell": True, "command": f"{record_run(side)}; sleep 0.2"},
        [{"id": task_id} for task_id in ids],
    )
    return side, job_file, ids


def start_five(cluster: Cluster) -> tuple[NodeProcess, list[NodeProcess]]:
    """
    The master m (runs nothing) and the workers w1..w4 (kind w, L{SLOTS}
    slots), all with C{--replicas 2}; returns once every node is connected
    to every other (the replica set is taken among the nodes connected when
    the job is accepted).
    """
    master = cluster.start("m", "--capabilities", "none", "--replicas", "2")
    workers = [cluster.start(name, "--capabilities", "w", "--slots", str(SLOTS), "--replicas", "2") for name in WORKERS]
    for name in WORKERS:
        master.wait_for(rf"\] Node m connected to peer {name}\b")
    for worker in workers:
        for other in WORKERS:
            if other != worker.name:
                worker.wait_for(rf"\] Node {worker.name} connected to peer {other}\b")
    return master, workers


class MasterKilledTests(CliTestCase):
    """A job survives the loss of its master while a majority of its replicas live."""

    def test_master_sigkilled_at_30_percent_and_never_restarted(self) -> None:
        """
        m (C{--capabilities none}) leads a 200-task job over four workers and
        is SIGKILLed once 30% of the tasks started; it never comes back.  A
        successor takes the job over: the job finishes, every task id is in
        the side file, at most the workers' in-flight slots ran twice, and
        C{p2pexec --connect <another node> result --json JOB} reports all 200
        succeeded.
        """
        cluster = Cluster(self, budget=240)
        side, job_file, ids = write_failover_job(cluster)
        master, workers = start_five(cluster)

        status, out, err = self.cli(cluster, master.port, "submit", job_file)
        self.assertEqual(status, 0, err)
        job_id = out.strip()
        cluster.wait_until(
            lambda: len(read_runs(side)) >= TASKS * 3 // 10,
            lambda: f"fewer than 30% of the tasks started\n{cluster.logs()}",
        )
        master.send_signal(signal.SIGKILL)
        self.assertEqual(master.wait_exit(5), -signal.SIGKILL)
        started_before_kill = len(read_runs(side))
        self.assertLess(started_before_kill, TASKS, "the job was done before the kill: the test proves nothing")

        took = re.compile(rf"\] Node (w\d) took over job {re.escape(job_id)} as master at epoch 2: ")
        cluster.wait_until(
            lambda: any(worker.has(took.pattern) for worker in workers),
            lambda: f"no worker took the job over\n{cluster.logs()}",
        )
        [leader] = [worker for worker in workers if worker.has(took.pattern)]
        asker = next(worker for worker in workers if worker is not leader)

        def result() -> tuple[int, str, str]:
            return self.cli(cluster, asker.port, "result", "--json", job_id)

        cluster.wait_until(
            lambda: result()[0] == 0 and json.loads(result()[1])["job"]["state"] == "finished",
            lambda: f"the job did not finish after the takeover\n{result()}\n{cluster.logs()}",
        )
        status, out, err = result()
        self.assertEqual(status, 0, err)
        document = json.loads(out)
        summary = document["job"]
        self.assertEqual((summary["id"], summary["total"], summary["done"]), (job_id, TASKS, TASKS))
        self.assertEqual(summary["counts"]["succeeded"], TASKS)
        self.assertEqual(sorted(task["id"] for task in document["tasks"]), ids)
        self.assertEqual({task["status"] for task in document["tasks"]}, {"succeeded"})

        runs = Counter(task for task, _, _ in read_runs(side))
        self.assertEqual(sorted(runs), ids, "some task never ran")
        twice = sorted(task for task, count in runs.items() if count > 1)
        self.assertLessEqual(len(twice), len(WORKERS) * SLOTS, f"more tasks ran again than the workers' slots: {twice}")


class SubmitWaitFollowsTests(CliTestCase):
    """C{p2pexec submit --wait} follows its job to the new master."""

    def test_submit_wait_follows_the_job_when_its_master_is_killed(self) -> None:
        """
        The real client, C{p2pexec submit --wait} connected to m, follows a
        200-task job; m is SIGKILLed at 30% and never restarted.  The client
        says on stderr which node it now follows the job through, prints the
        usual final line (200 succeeded, 0 failed) and exits 0.
        """
        cluster = Cluster(self, budget=240)
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        write_job(
            job_file,
            {"kind": "w", "shell": True, "command": f"{record_run(side)}; sleep 0.2"},
            [{"id": f"t{n:03d}"} for n in range(TASKS)],
        )
        master, workers = start_five(cluster)
        out_path, err_path = cluster.path("wait.out"), cluster.path("wait.err")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            waiting = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p2pexec.cli",
                    "--connect",
                    f"127.0.0.1:{master.port}",
                    "submit",
                    "--wait",
                    job_file,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cluster.folder,
                env=cluster.environment(),
            )
        self.addCleanup(stop, waiting)

        def read(path: str) -> str:
            with open(path) as f:
                return f.read()

        job_id = cluster.wait_until(
            lambda: (m := re.match(rf"({JOB_ID})\n", read(out_path))) and m.group(1),
            lambda: f"{read(out_path)}{read(err_path)}",
        )
        cluster.wait_until(
            lambda: len(read_runs(side)) >= TASKS * 3 // 10,
            lambda: f"fewer than 30% of the tasks started\n{cluster.logs()}",
        )
        master.send_signal(signal.SIGKILL)
        self.assertEqual(master.wait_exit(5), -signal.SIGKILL)
        self.assertLess(len(read_runs(side)), TASKS, "the job was done before the kill: the test proves nothing")

        try:
            status = waiting.wait(timeout=cluster.deadline.bound(120))
        except subprocess.TimeoutExpired:
            self.fail(f"submit --wait still running:\n{tail(read(out_path))}\n{tail(read(err_path))}\n{cluster.logs()}")
        out, err = read(out_path), read(err_path)
        self.assertEqual(status, 0, f"{out}\n{err}\n{cluster.logs()}")
        self.assertRegex(
            out.splitlines()[-1], rf"^job {re.escape(job_id)} finished: {TASKS} succeeded, 0 failed in [\d.]+s$"
        )
        self.assertRegex(err, rf"(?m)^p2pexec: lost node m; following job {re.escape(job_id)} through w\d$")
        self.assertNotIn("Traceback", out + err)
        runs = Counter(task for task, _, _ in read_runs(side))
        self.assertEqual(len(runs), TASKS, "some task never ran")
