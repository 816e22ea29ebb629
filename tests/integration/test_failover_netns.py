"""
Master failover on real processes across network namespaces (issue 13):
the master's network is cut, not its process killed.

Five C{twistd p2pexec} nodes, each on a host of its own (a network
namespace, see L{tests.integration.netns}), all with C{--replicas 2}: a
master that runs nothing and four workers.  The master's link goes down with
the job under way and stays down until the job has finished on the majority
side; then it comes back.  Every task appends its id to a side file when it
starts, so that the test counts real executions.  These tests need root and
C{ip netns}; without them they are skipped, saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.integration.cluster import NodeProcess, read_runs, record_run
from tests.integration.netns import NODE_PORT, HostCluster, netns_problem
from tests.integration.test_cli import CliTestCase, write_job
from tests.integration.test_failover import SLOTS, TASKS, WORKERS, write_failover_job

HEARTBEAT = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2.5")
"""Failure detection as in the other partition tests: a silent peer is declared dead within a few seconds."""

HOSTS = {"m": "h1", "w1": "h2", "w2": "h3", "w3": "h4", "w4": "h5"}
"""The host of each node."""


class MasterCutOffTests(CliTestCase):
    """A job survives its master being cut off from the network; the healed master steps down."""

    def setUp(self) -> None:
        problem = netns_problem()
        if problem is not None:
            raise SkipTest(problem)

    def cli_on(self, cluster: HostCluster, node: str, *argv: str, timeout: float = 15.0) -> tuple[int, str, str]:
        """
        Run C{p2pexec --connect NODE'S-ADDRESS --key-file KEY ARGV...} on
        C{node}'s host (inside its namespace) to its end.

        @return: its exit status, stdout and stderr.
        """
        host = cluster.network[HOSTS[node]]
        argv_ = [
            "ip",
            "netns",
            "exec",
            host.namespace,
            sys.executable,
            "-m",
            "p2pexec.cli",
            "--connect",
            f"{host.address}:{NODE_PORT}",
            "--key-file",
            cluster.key_file(),
            *argv,
        ]
        try:
            done = subprocess.run(
                argv_,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=cluster.folder,
                env=cluster.environment(),
                timeout=cluster.deadline.bound(timeout),
            )
        except subprocess.TimeoutExpired as e:
            self.fail(f"p2pexec {' '.join(argv)} on {node} still running after {e.timeout:.1f}s")
        self.assertNotIn("Traceback", done.stdout + done.stderr, done.stderr)
        return done.returncode, done.stdout, done.stderr

    def result(self, cluster: HostCluster, node: str, job_id: str) -> dict[str, Any] | None:
        """C{p2pexec result --json JOB} asked of C{node}: the document, or C{None} if it did not answer with one."""
        status, out, _ = self.cli_on(cluster, node, "result", "--json", job_id)
        if status not in (0, 1):
            return None
        document: dict[str, Any] = json.loads(out)
        return document

    def assertAllSucceeded(self, document: dict[str, Any], job_id: str, ids: list[str]) -> None:
        """The job's result document says it finished, each of C{ids} once, every one succeeded."""
        summary = document["job"]
        self.assertEqual((summary["id"], summary["state"]), (job_id, "finished"), summary)
        self.assertEqual((summary["total"], summary["done"]), (TASKS, TASKS), summary)
        self.assertEqual(summary["counts"]["succeeded"], TASKS, summary)
        self.assertEqual(sorted(task["id"] for task in document["tasks"]), ids)
        self.assertEqual({task["status"] for task in document["tasks"]}, {"succeeded"})

    def start_five(self, cluster: HostCluster) -> tuple[NodeProcess, list[NodeProcess]]:
        """m on h1 (runs nothing), w1..w4 on h2..h5 (kind w); returns once the mesh is complete."""
        options = ("--replicas", "2", *HEARTBEAT)
        master = cluster.start("m", "--capabilities", "none", *options, host=HOSTS["m"])
        workers = [
            cluster.start(name, "--capabilities", "w", "--slots", str(SLOTS), *options, host=HOSTS[name])
            for name in WORKERS
        ]
        names = ["m", *WORKERS]
        for node in [master, *workers]:
            for other in names:
                if other != node.name:
                    node.wait_for(rf"\] Node {node.name} connected to peer {other} at ", timeout=20)
        return master, workers

    def test_master_cut_off_at_30_percent_then_healed(self) -> None:
        """
        m (on h1) leads a 200-task job over four workers; once 30% of the
        tasks started, h1's link goes down and stays down.  A worker takes
        the job over: the job finishes, every task id is in the side file,
        at most the workers' in-flight slots ran twice, and
        C{p2pexec --connect <another node> result --json JOB} reports all 200
        succeeded; m, cut off, never ends the job.  Then the link comes back:
        m steps down with one line naming the new master and epoch, hands
        nothing of the job out again (no task starts after the heal), and
        the job still has exactly one recorded result per task, through m as
        through the others, each naming the new master at epoch 2.  A new
        job submitted to m then runs to its end on every worker.
        """
        cluster = HostCluster(self, len(HOSTS), budget=240)
        side, job_file, ids = write_failover_job(cluster)
        master, workers = self.start_five(cluster)
        status, out, err = self.cli_on(cluster, "m", "submit", job_file)
        self.assertEqual(status, 0, err)
        job_id = out.strip()
        cluster.wait_until(
            lambda: len(read_runs(side)) >= TASKS * 3 // 10,
            lambda: f"fewer than 30% of the tasks started\n{cluster.logs()}",
        )
        h1 = cluster.network[HOSTS["m"]]
        h1.link_down()
        self.assertLess(len(read_runs(side)), TASKS, "the job was done before the cut: the test proves nothing")

        took = rf"\] Node (w\d) took over job {re.escape(job_id)} as master at epoch 2: m "
        cluster.wait_until(
            lambda: any(worker.has(took) for worker in workers),
            lambda: f"no worker took the job over\n{cluster.logs()}",
            timeout=30,
        )
        [leader] = [worker for worker in workers if worker.has(took)]
        asker = next(worker for worker in workers if worker is not leader)

        def finished_through(node: str) -> dict[str, Any] | None:
            document = self.result(cluster, node, job_id)
            return document if document is not None and document["job"]["state"] == "finished" else None

        document = cluster.wait_until(
            lambda: finished_through(asker.name),
            lambda: f"the job did not finish after the takeover\n{cluster.logs()}",
            timeout=120,
        )
        self.assertAllSucceeded(document, job_id, ids)
        self.assertFalse(master.has(rf"\] Job {re.escape(job_id)} finished"), "the cut-off master ended the job")
        runs = Counter(task for task, _, _ in read_runs(side))
        self.assertEqual(sorted(runs), ids, "some task never ran")
        twice = sorted(task for task, count in runs.items() if count > 1)
        self.assertLessEqual(len(twice), len(WORKERS) * SLOTS, f"more tasks ran again than the workers' slots: {twice}")
        runs_before_heal = len(read_runs(side))

        h1.link_up()
        steps = rf"\] Node m steps down as master of job {re.escape(job_id)}: {leader.name} took it over at epoch 2 "
        master.wait_for(steps, timeout=30)
        for worker in workers:
            master.wait_for(rf"\] Node m connected to peer {worker.name} at ", count=2, timeout=30)
        # Long enough for anything m still held of the job to go out: a
        # heartbeat round and its retry timers.
        settle = time.monotonic() + 3.0
        while time.monotonic() < settle:
            time.sleep(0.1)
        self.assertEqual(len(master.find_all(steps)), 1, master.log_tail())
        self.assertEqual(len(read_runs(side)), runs_before_heal, "a task ran again after the heal")
        self.assertFalse(master.has(rf"\] Job {re.escape(job_id)} finished"), master.log_tail())
        for node in ("m", asker.name, leader.name):
            document = self.result(cluster, node, job_id)
            self.assertIsNotNone(document, f"{node} did not answer for the job")
            assert document is not None
            self.assertAllSucceeded(document, job_id, ids)
            self.assertEqual((document["job"]["master"], document["job"]["epoch"]), (leader.name, 2), node)

        # m goes on leading new jobs with every worker: none was set aside
        # for having fenced the old job off.
        again, again_side = cluster.path("again.toml"), cluster.path("again.txt")
        write_job(
            again,
            {"kind": "w", "shell": True, "command": f"{record_run(again_side)}; sleep 0.2"},
            [{"id": f"again{n}"} for n in range(len(WORKERS) * SLOTS * 2)],
        )
        status, out, err = self.cli_on(cluster, "m", "submit", "--wait", again, timeout=30)
        self.assertEqual(status, 0, f"{out}\n{err}\n{cluster.logs()}")
        self.assertRegex(out.splitlines()[-1], rf"^job m-\S+ finished: {len(WORKERS) * SLOTS * 2} succeeded, 0 failed ")
        self.assertEqual({node for _, node, _ in read_runs(again_side)}, set(WORKERS), "a worker was set aside")
