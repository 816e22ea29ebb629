"""
Integration tests of task order and fair share (issue 15, parts 2 and 3):
real C{twistd p2pexec} processes on loopback, each test on a multicast
group, port and cluster name of its own.

Every task appends C{ID START END NODE} (its task or job id, the wall-clock
seconds around its work, its worker) to a side file, so that the tests read
what really ran, when and where.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import Any

from tests.integration.cluster import Cluster
from tests.integration.test_cluster import IntegrationTestCase, write_job_file
from tests.integration.test_rogue import run_cli


def timed(label: str, side: str, work: str) -> str:
    """A shell command that runs C{work} and appends C{LABEL START END NODE} to C{side} (whatever C{work} exits)."""
    record = f'echo "{label} $s $(date +%s.%N) $P2PEXEC_NODE" >> {shlex.quote(side)}'
    return f"s=$(date +%s.%N); {work}; status=$?; {record}; exit $status"


def read_side(path: str) -> list[tuple[str, float, float, str]]:
    """The lines of a side file: (label, start, end, node)."""
    with open(path, encoding="utf-8") as f:
        return [(label, float(a), float(b), node) for label, a, b, node in (line.split() for line in f if line.strip())]


def overlap(runs: list[tuple[float, float]], start: float, end: float) -> float:
    """The total length of C{runs} inside [C{start}, C{end}]."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in runs)


def submit(test: IntegrationTestCase, cluster: Cluster, port: int, job_file: str) -> str:
    """Submit C{job_file} to the node on C{port}; the job id."""
    status, output = run_cli(cluster, port, None, "submit", job_file)
    test.assertEqual(status, 0, output)
    return output.split()[-1]


def result(test: IntegrationTestCase, cluster: Cluster, port: int, job: str, status: int = 0) -> dict[str, Any]:
    """C{p2pexec result --json JOB} of the node on C{port}, which must exit with C{status} (1: a task failed)."""
    exited, output = run_cli(cluster, port, None, "result", "--json", job)
    test.assertEqual(exited, status, output)
    return json.loads(output)


class DependencyTests(IntegrationTestCase):
    """C{after} and C{skipped} on a real node."""

    def test_order_and_skipped(self) -> None:
        """
        On one node with 4 slots: c (after a and b) starts only after both
        ended, a and b running at once; d fails, so e (after d) and f
        (after e) end skipped with reasons naming d and e, as C{p2pexec
        result --json} shows, while g, which depends on nothing, succeeds.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        tasks = [
            {"id": "c", "kind": "w", "after": ["a", "b"], "command": timed("c", side, "true"), "shell": True},
            {"id": "a", "kind": "w", "command": timed("a", side, "sleep 0.4"), "shell": True},
            {"id": "b", "kind": "w", "command": timed("b", side, "sleep 0.2"), "shell": True},
            {"id": "f", "kind": "w", "after": ["e"], "command": timed("f", side, "true"), "shell": True},
            {"id": "e", "kind": "w", "after": ["d"], "command": timed("e", side, "true"), "shell": True},
            {"id": "d", "kind": "w", "command": timed("d", side, "(exit 3)"), "shell": True},
            {"id": "g", "kind": "w", "command": timed("g", side, "true"), "shell": True},
        ]
        write_job_file(job_file, {"timeout": 20}, tasks)
        node = cluster.start("m", "--capabilities", "w", "--slots", "4", "--replicas", "0")
        job = submit(self, cluster, node.port, job_file)
        node.wait_for(rf"\] Job {re.escape(job)} finished: ", timeout=15)

        document = result(self, cluster, node.port, job, status=1)
        by_id = {task["id"]: task for task in document["tasks"]}
        statuses = {task_id: task["status"] for task_id, task in by_id.items()}
        self.assertEqual(
            statuses,
            {
                "a": "succeeded",
                "b": "succeeded",
                "c": "succeeded",
                "d": "failed",
                "e": "skipped",
                "f": "skipped",
                "g": "succeeded",
            },
            document,
        )
        self.assertEqual(document["job"]["counts"]["skipped"], 2, document["job"])
        self.assertEqual(by_id["e"]["error"], "skipped: it runs after task 'd', which failed")
        self.assertEqual(by_id["f"]["error"], "skipped: it runs after task 'e', which was skipped")

        runs = {label: (start, end) for label, start, end, _ in read_side(side)}
        self.assertEqual(set(runs), {"a", "b", "c", "d", "g"}, "the skipped tasks must not run")
        self.assertGreaterEqual(runs["c"][0], max(runs["a"][1], runs["b"][1]), runs)
        self.assertLess(runs["b"][0], runs["a"][1], f"a and b did not run at the same time: {runs}")


class TwoMasterShareTests(IntegrationTestCase):
    """Two masters' jobs share the same workers' slots (a small W8, see benchmarks/w8.py)."""

    TASKS = 200
    SLEEP = 0.05

    def test_two_masters_split_the_slots(self) -> None:
        """
        Two workers with 2 slots each; masters A and B (which run nothing)
        are each given 200 x sleep 0.05, 0.3 s apart.  While both jobs have
        tasks running, each gets between 35% and 65% of the slot-time, on
        the two workers together and on each worker alone: neither master
        captures a worker.
        """
        cluster = Cluster(self, budget=50.0)
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        command = timed("$P2PEXEC_JOB_ID", side, f"sleep {self.SLEEP}")
        write_job_file(
            job_file,
            {"command": command, "shell": True, "timeout": 20},
            [{"id": f"t{n}", "kind": "w"} for n in range(self.TASKS)],
        )
        for worker in ("w1", "w2"):
            cluster.start(worker, "--capabilities", "w", "--slots", "2", "--replicas", "0")
        masters = [cluster.start(name, "--capabilities", "none", "--replicas", "0") for name in ("ma", "mb")]
        for master in masters:
            for worker in ("w1", "w2"):
                master.wait_for(rf"\] Node {master.name} connected to peer {worker} ", timeout=10)
        first = submit(self, cluster, masters[0].port, job_file)
        time.sleep(0.3)  # the second job comes 0.3 s after the first was accepted, as in W8
        second = submit(self, cluster, masters[1].port, job_file)
        for master, job in zip(masters, (first, second)):
            master.wait_for(rf"\] Job {re.escape(job)} finished: {self.TASKS} succeeded, 0 failed", timeout=20)

        lines = read_side(side)
        runs = {job: [(a, b) for label, a, b, _ in lines if label == job] for job in (first, second)}
        self.assertEqual([len(runs[first]), len(runs[second])], [self.TASKS, self.TASKS])
        start = max(min(a for a, _ in runs[first]), min(a for a, _ in runs[second]))
        end = min(max(b for _, b in runs[first]), max(b for _, b in runs[second]))
        self.assertGreater(end - start, 0.5, "the two jobs hardly ran at the same time")
        for where in (None, "w1", "w2"):
            mine = overlap(
                [(a, b) for label, a, b, node in lines if label == first and where in (None, node)], start, end
            )
            theirs = overlap(
                [(a, b) for label, a, b, node in lines if label == second and where in (None, node)], start, end
            )
            share = mine / (mine + theirs) if mine + theirs else 0.0
            self.assertTrue(
                0.35 <= share <= 0.65,
                f"the first job had {share:.1%} of the slot-time {'overall' if where is None else 'on ' + where} "
                f"while both ran ({end - start:.2f}s); expected 35-65%",
            )
