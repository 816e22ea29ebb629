"""
Integration tests: real C{twistd p2pexec} nodes on loopback.

Each test starts its nodes with L{tests.integration.cluster.Cluster}, on a
multicast group, port and cluster name of its own, and reads what they did
from their logs and the C{--results} file.  The methods are synchronous on
purpose: they drive other processes and poll files with bounded waits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from typing import Any

from twisted.trial import unittest

from tests.integration.cluster import Cluster, NodeProcess, RawAmpClient, multicast_sender, read_runs

JOB_FINISHED = r"\] Job (\S+) finished: (\d+) succeeded, (\d+) failed, [\d.]+s elapsed$"


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML ones)."""
    return json.dumps(value)


def write_job_file(path: str, defaults: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    """Write a TOML job file: a C{[defaults]} table and one C{[[task]]} per dictionary."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return toml_string(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = ["[defaults]"] + [f"{k} = {value(v)}" for k, v in defaults.items()]
    for task in tasks:
        lines += ["", "[[task]]"] + [f"{k} = {value(v)}" for k, v in task.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def load_results(path: str) -> dict[str, Any]:
    """The C{--results} file, with its tasks also indexed by id under C{by_id}."""
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    report["by_id"] = {task["id"]: task for task in report["tasks"]}
    return report


def process_alive(pid: int, program: str) -> bool:
    """Whether process C{pid} exists and runs C{program} (so a reused pid does not count)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(os.path.basename(part) == program.encode() for part in argv)


def kill_recorded_sleep(pid_file: str) -> None:
    """
    Clean-up: SIGKILL the C{sleep} whose pid a task wrote to C{pid_file}
    (C{echo $$ > FILE; exec sleep N}), if it still runs.  Tasks run in
    sessions of their own, so they outlive a node killed with SIGKILL.
    """
    try:
        with open(pid_file) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    if process_alive(pid, "sleep"):
        os.kill(pid, signal.SIGKILL)


def shell_quote(text: str) -> str:
    """C{text} quoted for C{/bin/sh}."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


class IntegrationTestCase(unittest.TestCase):
    """Shared helpers of the integration tests."""

    def assertLogHas(self, node: NodeProcess, pattern: str) -> re.Match[str]:
        """Assert that C{node}'s log matches C{pattern} (a multi-line regex) already."""
        matches = node.find_all(pattern)
        if not matches:
            self.fail(f"node {node.name}: no match of {pattern!r}; log {node.log_path} ends with:\n{node.log_tail()}")
        return matches[0]

    def assertOriginalExampleLines(self, cluster: Any, a1: NodeProcess, port_of: Any) -> None:
        """
        Assert every line of the original example output, for master C{a1}
        and workers b1 and c1 of C{cluster}; C{port_of(node)} is the port
        each node should say it started on.
        """
        for node in (a1, cluster.nodes["b1"], cluster.nodes["c1"]):
            self.assertLogHas(node, rf"\] Node {node.name} started on port {port_of(node)}$")
            self.assertLogHas(node, rf"\] Node {node.name} sent DISCOVER$")
        for worker in ("b1", "c1"):
            node = cluster.nodes[worker]
            self.assertLogHas(a1, rf"\] Node a1 discovered peer {worker}$")
            self.assertLogHas(node, rf"\] Node {worker} discovered peer a1$")
            self.assertLogHas(a1, rf"\] Node a1 assigning tasks to peer {worker}$")
            self.assertLogHas(node, rf"\] Node {worker} received instructions: \['{worker}'\]$")
            self.assertLogHas(node, rf"\] Node {worker} executing: {worker}$")
            self.assertLogHas(a1, rf"\] Master received confirmation for {worker} from {worker}$")

    def assertLogClean(self, node: NodeProcess) -> None:
        """Assert that C{node} logged no traceback, unhandled error or error-level line."""
        for pattern in (r"Traceback", r"Unhandled Error", r"Unhandled error", r"#error\]", r"#critical\]"):
            if node.has(pattern):
                self.fail(f"node {node.name} logged {pattern!r}; log {node.log_path} ends with:\n{node.log_tail(80)}")

    def results_of(self, master: NodeProcess, path: str) -> dict[str, Any]:
        """
        The C{--results} file of C{master}'s start-up job, once it says it
        wrote it (the "Job ... finished" line comes first).
        """
        master.wait_for(rf"\] Node {master.name} wrote the results of job \S+ to {re.escape(path)}$")
        return load_results(path)

    def stop_all(self, cluster: Cluster, timeout: float = 10.0) -> None:
        """SIGTERM every running node and assert that each exits 0 and says it stopped."""
        nodes = [node for node in cluster.nodes.values() if node.running()]
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            status = node.wait_exit(timeout)
            self.assertEqual(status, 0, f"node {node.name} exited with {status}:\n{node.log_tail()}")
            self.assertLogHas(node, rf"\] Node {node.name} stopped$")


class OriginalExampleTests(IntegrationTestCase):
    """The original system's example, on three real nodes."""

    def test_original_example(self) -> None:
        """
        a1 is master of a1,a2,b1,c1,a3 and runs the 'a' ones; b1 and c1 find
        it by multicast and run b1 and c1.  Every line of the original
        example's output appears, the job finishes with 5 successes, and the
        results file says which node ran each task.
        """
        cluster = Cluster(self)
        results = cluster.path("results.json")
        a1 = cluster.start("a1", "--tasks", "a1,a2,b1,c1,a3", "--results", results, "--slots", "2")
        b1 = cluster.start("b1", "--slots", "2")
        c1 = cluster.start("c1", "--slots", "2")
        finished = a1.wait_for(JOB_FINISHED, timeout=15)
        job_id = finished.group(1)
        self.assertEqual(finished.group(2, 3), ("5", "0"))

        self.assertOriginalExampleLines(cluster, a1, lambda node: node.port)
        self.assertLogHas(a1, r"\] Node a1 received instructions: \['a1', 'a2', 'a3'\]$")
        for task in ("a1", "a2", "a3"):
            self.assertLogHas(a1, rf"\] Node a1 executing: {task}$")
            self.assertLogHas(a1, rf"\] Master received confirmation for {task} from a1$")
        for worker in (b1, c1):
            # A worker runs nothing but its own kind.
            self.assertEqual(len(worker.find_all(r"\] Node \S+ executing: ")), 1, worker.log_tail())
            worker.wait_for(
                rf"heard TASK_COMPLETE from master a1: job {re.escape(job_id)} finished \(5 succeeded, 0 failed"
            )

        report = self.results_of(a1, results)
        self.assertEqual(report["job"], job_id)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (5, 5, 0))
        self.assertEqual([task["id"] for task in report["tasks"]], ["a1", "a2", "b1", "c1", "a3"])
        expected_node = {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "c1": "c1"}
        for task_id, node in expected_node.items():
            task = report["by_id"][task_id]
            self.assertEqual(
                (task["status"], task["state"], task["node"], task["attempts"], task["kind"]),
                ("succeeded", "done", node, 1, task_id[0]),
                task,
            )
        for node in (a1, b1, c1):
            self.assertLogClean(node)


class RealCommandTests(IntegrationTestCase):
    """A job file of real shell commands, run by a master and a worker."""

    def test_job_of_real_commands(self) -> None:
        """
        Tasks that succeed, one that exits 3, one that times out after 1 s
        (its process group is killed at once), and one with a working folder
        and environment; each result says its status, exit code, output tail
        and node.
        """
        cluster = Cluster(self)
        marks = cluster.path("marks")
        workdir = cluster.path("work dir")
        os.makedirs(marks)
        os.makedirs(workdir)
        pid_file = cluster.path("slow.pid")
        self.addCleanup(kill_recorded_sleep, pid_file)
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        mark = 'echo "$P2PEXEC_NODE" > ' + shell_quote(marks) + '/"$P2PEXEC_TASK_ID"'
        tasks = [
            # First, so that it is in the master's first batch: it runs on m.
            {"id": "slow", "timeout": 1, "command": f"echo $$ > {shell_quote(pid_file)}; exec sleep 30"},
            {"id": "ok1", "command": f"echo out-$P2PEXEC_TASK_ID; {mark}"},
            {"id": "ok2", "command": f"echo out-$P2PEXEC_TASK_ID; {mark}"},
            {"id": "exit3", "command": "echo about to fail; echo oops >&2; exit 3"},
            {"id": "ok3", "command": f"echo out-$P2PEXEC_TASK_ID; {mark}"},
            # Only s1 runs kind 'remote': the folder and environment travel over AMP.
            {
                "id": "where",
                "kind": "remote",
                "cwd": workdir,
                "env": {"GREETING": "hello from env"},
                "command": f'pwd -P; echo "$GREETING"; {mark}',
            },
        ]
        write_job_file(job_file, {"kind": "sh", "shell": True}, tasks)

        s1 = cluster.start("s1", "--capabilities", "sh,remote", "--slots", "1")
        started = time.monotonic()
        m = cluster.start(
            "m",
            "--capabilities",
            "sh",
            "--slots",
            "1",
            "--job",
            job_file,
            "--results",
            results,
            "--exit-when-done",
        )
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        elapsed = time.monotonic() - started
        self.assertEqual(finished.group(2, 3), ("4", "2"), m.log_tail())
        # 'sleep 30' must not hold the job up: it is killed at its 1 s timeout.
        self.assertLess(elapsed, 8.0, f"the job took {elapsed:.1f}s")
        self.assertEqual(m.wait_exit(10), 0, m.log_tail())
        self.assertLogHas(m, r"\] Node m stopped$")
        s1.wait_for(r"\] Node s1: peer m is leaving \(shutdown\)$")

        report = self.results_of(m, results)
        by_id = report["by_id"]
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (6, 4, 2))

        slow = by_id["slow"]
        self.assertEqual((slow["status"], slow["node"], slow["attempts"]), ("timed-out", "m", 1), slow)
        self.assertIn("timed out after 1s", slow["error"])
        self.assertGreaterEqual(slow["duration"], 0.9, slow)
        self.assertLess(slow["duration"], 3.0, slow)
        with open(pid_file) as f:
            sleep_pid = int(f.read())
        self.assertFalse(process_alive(sleep_pid, "sleep"), f"the timed-out task's sleep (pid {sleep_pid}) still runs")
        self.assertLogHas(m, r"#warn\] Task slow of job \S+ timed-out on m: timed out after 1s")

        failed = by_id["exit3"]
        self.assertEqual((failed["status"], failed["exit_code"]), ("failed", 3), failed)
        self.assertEqual((failed["stdout"], failed["stderr"]), ("about to fail\n", "oops\n"), failed)
        self.assertIn(failed["node"], ("m", "s1"))
        self.assertLogHas(m, rf"#warn\] Task exit3 of job \S+ failed on {failed['node']}: exit code 3$")

        for task_id in ("ok1", "ok2", "ok3"):
            task = by_id[task_id]
            self.assertEqual(
                (task["status"], task["exit_code"], task["stdout"], task.get("stderr", ""), task["attempts"]),
                ("succeeded", 0, f"out-{task_id}\n", "", 1),
                task,
            )
            self.assertIn(task["node"], ("m", "s1"))
            with open(os.path.join(marks, task_id)) as f:
                self.assertEqual(f.read(), task["node"] + "\n", f"{task_id} says it ran elsewhere than its result")
        # ok1 was in m's first batch of two (window = 1 slot + 1 prefetched).
        self.assertEqual(by_id["ok1"]["node"], "m")

        where = by_id["where"]
        self.assertEqual((where["status"], where["exit_code"], where["node"]), ("succeeded", 0, "s1"), where)
        self.assertEqual(where["stdout"], f"{os.path.realpath(workdir)}\nhello from env\n")
        with open(os.path.join(marks, "where")) as f:
            self.assertEqual(f.read(), "s1\n")
        self.assertLogHas(s1, r"\] Node s1 executing: where$")
        for node in (m, s1):
            self.assertLogClean(node)


class WorkerLossTests(IntegrationTestCase):
    """Workers that die, come back or leave while a job runs."""

    TASKS = 40
    SLOTS = 2

    def test_worker_killed_mid_job(self) -> None:
        """
        Of two workers, w1 is killed with SIGKILL while it runs tasks; the
        master puts its unconfirmed tasks back and w2 runs them, so the job
        still finishes with every task succeeded.  Each task ran at least
        once, and only tasks that were in flight on w1 ran twice.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        command = f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> {shell_quote(side)}; sleep 0.2'
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "command": command},
            [{"id": f"t{number:02d}"} for number in range(self.TASKS)],
        )
        ids = {f"t{number:02d}" for number in range(self.TASKS)}

        def runs() -> list[tuple[str, str, int]]:
            return read_runs(side)

        w1 = cluster.start("w1", "--capabilities", "w", "--slots", str(self.SLOTS))
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", str(self.SLOTS))
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        cluster.wait_until(
            lambda: (
                sum(1 for _, node, _ in runs() if node == "w1") >= 3
                and m.has(r"\] Master received confirmation for t\d+ from w1$")
            ),
            lambda: f"w1 ran fewer than 3 tasks, or none was confirmed; side file: {runs()}\n{cluster.logs()}",
        )
        w1.send_signal(signal.SIGKILL)
        self.assertEqual(w1.wait_exit(5), -signal.SIGKILL)
        self.assertFalse(m.has(JOB_FINISHED), "the job finished before w1 was killed: the test proves nothing")
        before_kill = runs()

        put_back = m.wait_for(
            r"\] Node m put (\d+) unconfirmed task\(s\) of job \S+ back in the queue: worker w1 lost its connection$"
        )
        finished = m.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), (str(self.TASKS), "0"), m.log_tail())

        all_runs = runs()
        counts = Counter(task_id for task_id, _, _ in all_runs)
        self.assertEqual(set(counts), ids, "some task never ran")
        duplicated = sorted(task_id for task_id, count in counts.items() if count > 1)
        # A worker holds at most slots + prefetch (2 + 2) unconfirmed tasks;
        # only those can have run on w1 without their result reaching the
        # master, so at most 4 tasks run twice, and none more than twice.
        self.assertLessEqual(len(duplicated), 2 * self.SLOTS, f"ran twice: {duplicated}")
        self.assertLessEqual(max(counts.values()), 2, counts)
        self.assertLessEqual(len(duplicated), int(put_back.group(1)), "a task ran twice that was not put back")
        for task_id in duplicated:
            attempts = [(node, attempt) for t, node, attempt in all_runs if t == task_id]
            self.assertEqual(attempts, [("w1", 1), ("w2", 2)], f"{task_id} ran {attempts}")
            self.assertIn((task_id, "w1", 1), before_kill)
        # Nothing ran on w1 after it was killed.
        self.assertEqual([r for r in all_runs if r[1] == "w1"], [r for r in before_kill if r[1] == "w1"])

        report = self.results_of(m, results)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (self.TASKS, self.TASKS, 0))
        for task in report["tasks"]:
            self.assertEqual((task["status"], task["state"]), ("succeeded", "done"), task)
            self.assertIn(task["node"], ("w1", "w2"), task)
            # The result that counted is the last attempt, and it ran where the side file says.
            self.assertIn((task["id"], task["node"], task["attempts"]), all_runs, task)
            if task["attempts"] > 1:
                self.assertEqual(task["node"], "w2", task)
        self.assertTrue(any(task["node"] == "w1" for task in report["tasks"]), "w1 never confirmed a task")
        self.assertEqual(
            sorted(t["id"] for t in report["tasks"] if t["attempts"] > 1),
            sorted(t for t in ids if any(r[0] == t and r[2] == 2 for r in all_runs)),
        )
        w2.wait_for(r"\] Node w2 lost its connection to peer w1: ")
        for node in (m, w2):
            self.assertLogClean(node)

    def test_worker_restarted_under_the_same_name(self) -> None:
        """
        The only worker is killed with SIGKILL and started again under the
        same name: the master sees a new instance, puts back what the old one
        held, and the new one runs the rest of the job.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        pid_file = cluster.path("t0.pid")
        self.addCleanup(kill_recorded_sleep, pid_file)
        # t0's first attempt lasts long enough to be certainly unfinished when w1 is killed.
        command = (
            f'echo "$P2PEXEC_TASK_ID $P2PEXEC_ATTEMPT $P2PEXEC_NODE" >> {shell_quote(side)}; '
            f'if [ "$P2PEXEC_TASK_ID $P2PEXEC_ATTEMPT" = "t0 1" ]; then '
            f"echo $$ > {shell_quote(pid_file)}; exec sleep 10; fi; "
            f"sleep 0.1"
        )
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": f"t{n}"} for n in range(12)])
        old = cluster.start("w1", "--capabilities", "w", "--slots", "1")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        old.wait_for(r"\] Node w1 executing: t0$")
        old.send_signal(signal.SIGKILL)
        self.assertEqual(old.wait_exit(5), -signal.SIGKILL)
        m.wait_for(
            r"\] Node m put \d+ unconfirmed task\(s\) of job \S+ back in the queue: worker w1 lost its connection$"
        )
        new = cluster.start("w1", "--capabilities", "w", "--slots", "1")
        m.wait_for(r"\] Node m sees peer w1 restarted \(new instance [0-9a-f]+\)$")
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("12", "0"), m.log_tail())
        report = self.results_of(m, results)
        self.assertEqual({t["status"] for t in report["tasks"]}, {"succeeded"})
        self.assertEqual(report["by_id"]["t0"]["attempts"], 2, report["by_id"]["t0"])
        self.assertEqual(len(new.find_all(r"\] Node w1 executing: ")), 12, new.log_tail())
        for node in (m, new):
            self.assertLogClean(node)

    def test_vanished_worker_is_not_said_to_refuse(self) -> None:
        """
        A worker that vanishes while an INSTRUCTION_ASSIGNMENT to it is
        unanswered lost its connection; the master must not report that it
        refused the tasks.  (A hand-made AMP client plays the worker, so that
        the assignment is certainly unanswered when the connection closes.)
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        write_job_file(job_file, {"kind": "w", "shell": True, "command": "true"}, [{"id": "t1"}, {"id": "t2"}])
        m = cluster.start("m", "--capabilities", "none", "--job", job_file)
        fake = RawAmpClient(m.port)
        self.addCleanup(fake.close)
        info = {
            "name": "afake",
            "instance": "f00d",
            "host": "127.0.0.1",
            "port": 9,
            "capabilities": ["w"],
            "slots": 1,
            "cluster": cluster.cluster_name,
            "version": 1,
        }
        answer = fake.ask(
            b"CONNECT_REQUEST", 1, cluster=cluster.cluster_name.encode(), name=b"afake", instance=b"f00d", version=b"1"
        )
        self.assertEqual(answer.get(b"name"), b"m", answer)
        answer = fake.ask(b"HANDSHAKE", 2, node=json.dumps(info).encode())
        self.assertIn(b"node", answer)
        while True:
            box = fake.read_box()
            if box.get(b"_command") == b"INSTRUCTION_ASSIGNMENT":
                break
        fake.close()
        put_back = m.wait_for(r"\] Node m put 2 unconfirmed task\(s\) of job \S+ back in the queue: worker afake (.*)$")
        self.assertEqual(put_back.group(1), "lost its connection", m.log_tail())

    def test_drain_timeout_hands_running_task_back(self) -> None:
        """
        SIGTERM to a worker whose task outlasts --drain-timeout: after the
        timeout the task's process group is stopped and the task handed back
        (not reported as failed); it runs on the other worker, and the job
        succeeds.
        """
        cluster = Cluster(self)
        pids = cluster.path("pids.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        command = f'if [ "$P2PEXEC_NODE" = w1 ]; then sleep 60 & echo $! >> {shell_quote(pids)}; wait; fi'
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": "t0"}])
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "1", "--drain-timeout", "1")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        w1.wait_for(r"\] Node w1 executing: t0$")
        cluster.wait_until(lambda: os.path.exists(pids), lambda: "the task did not start its sleep")
        cluster.start("w2", "--capabilities", "w", "--slots", "1")
        m.wait_for(r"\] Node m connected to peer w2 at ")
        w1.send_signal(signal.SIGTERM)
        w1.wait_for(r"\] Node w1: 1 task\(s\) still running after 1s; stopping them$")
        self.assertEqual(w1.wait_exit(15), 0, w1.log_tail())
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("1", "0"), m.log_tail())
        report = self.results_of(m, results)
        self.assertEqual(report["by_id"]["t0"]["node"], "w2")
        self.assertEqual(report["by_id"]["t0"]["attempts"], 2)
        with open(pids) as f:
            sleeper = int(f.read().split()[0])
        cluster.wait_until(
            lambda: not process_alive(sleeper, "sleep"), lambda: f"the stopped task's child {sleeper} is still running"
        )

    def test_sigterm_worker_drains(self) -> None:
        """
        SIGTERM to a worker that is running a task: it finishes the task,
        confirms it and leaves with status 0; the task is not run again, and
        the job finishes on the other worker.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        command = f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE" >> {shell_quote(side)}; sleep 1'
        write_job_file(job_file, {"kind": "w", "shell": True, "command": command}, [{"id": f"t{n}"} for n in range(6)])
        w1 = cluster.start("w1", "--capabilities", "w", "--slots", "1")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results)
        w1.wait_for(r"\] Node w1 executing: t0$")
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "1")
        m.wait_for(r"\] Node m connected to peer w2 at ")
        w1.send_signal(signal.SIGTERM)
        w1.wait_for(r"\] Node w1 is leaving: waiting up to 30s for 1 running task\(s\)$")
        self.assertEqual(w1.wait_exit(10), 0, w1.log_tail())
        self.assertLogHas(w1, r"\] Node w1 stopped$")
        m.wait_for(r"\] Master received confirmation for t0 from w1$")
        m.wait_for(r"\] Node m: peer w1 is leaving \(shutdown\)$")
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("6", "0"), m.log_tail())
        with open(side) as f:
            ran = Counter(line.split()[0] for line in f)
        self.assertEqual(ran, Counter({f"t{n}": 1 for n in range(6)}), "a task ran twice or never")
        report = self.results_of(m, results)
        self.assertEqual(report["by_id"]["t0"]["node"], "w1")
        self.assertEqual(report["by_id"]["t0"]["attempts"], 1)
        for node in (m, w1, w2):
            self.assertLogClean(node)

    def test_leaving_worker_hands_back_queued_tasks_at_once(self) -> None:
        """
        A worker that leaves says it hands back its queued tasks: another
        idle worker must get them at once, not only after the leaving
        worker's running task ends (up to --drain-timeout later).
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        job_file = cluster.path("job.toml")
        pid_file = cluster.path("long.pid")
        self.addCleanup(kill_recorded_sleep, pid_file)
        record = f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE" >> {shell_quote(side)}'
        write_job_file(
            job_file,
            {"shell": True},
            [
                {"id": "long", "kind": "solo", "command": f"{record}; echo $$ > {shell_quote(pid_file)}; exec sleep 6"},
                {"id": "queued", "kind": "w", "command": record},
            ],
        )
        w1 = cluster.start("w1", "--capabilities", "w,solo", "--slots", "1")
        m = cluster.start("m", "--capabilities", "none", "--job", job_file)
        # w1 is the only worker: its window (1 slot + 1 prefetched) takes both.
        w1.wait_for(r"\] Node w1 executing: long$")
        self.assertLogHas(w1, r"\] Node w1 received instructions: \['long', 'queued'\]$")
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "1")
        m.wait_for(r"\] Node m connected to peer w2 at ")
        w1.send_signal(signal.SIGTERM)
        w1.wait_for(r"\] Node w1 is leaving: handing back 1 queued task\(s\)$")
        w2.wait_for(r"\] Node w2 executing: queued$", timeout=3)
        self.assertFalse(w1.has(r"\] Node w1 executing: queued$"), w1.log_tail())
        self.assertTrue(w1.running(), "w1 should still be draining its long task")


class ShutdownTests(IntegrationTestCase):
    """Nodes leave cleanly on SIGTERM."""

    NAMES = ("n1", "n2", "n3")

    def _connected_cluster(self) -> Cluster:
        cluster = Cluster(self)
        for name in self.NAMES:
            cluster.start(name)
        for name in self.NAMES:
            for other in self.NAMES:
                if other != name:
                    cluster.nodes[name].wait_for(rf"\] Node {name} connected to peer {other} at ")
        return cluster

    def test_sigterm_every_node_at_once(self) -> None:
        """
        SIGTERM to every node of a connected cluster at once: each exits 0
        within 10 s and says it stopped, and of every pair of nodes at least
        one logged the other's departure.  (Which one depends on whose
        DISCONNECT_REQUEST arrived first; a node that already closed the
        connection to a peer hears nothing more from it.)
        """
        cluster = self._connected_cluster()
        started = time.monotonic()
        self.stop_all(cluster, timeout=10)
        self.assertLess(time.monotonic() - started, 10.0)
        nodes = cluster.nodes
        for name in self.NAMES:
            for other in self.NAMES:
                if name < other:
                    self.assertTrue(
                        nodes[name].has(rf"\] Node {name}: peer {other} is leaving \(shutdown\)$")
                        or nodes[other].has(rf"\] Node {other}: peer {name} is leaving \(shutdown\)$"),
                        f"neither {name} nor {other} logged the other leaving\n{cluster.logs()}",
                    )
        for node in nodes.values():
            self.assertFalse(node.has(r"lost its connection to peer"), node.log_tail())
            self.assertLogClean(node)

    def test_sigterm_one_node_after_another(self) -> None:
        """
        SIGTERM to one node at a time: each exits 0 and says it stopped, and
        every node still running logged the departure of each one that left.
        """
        cluster = self._connected_cluster()
        nodes = cluster.nodes
        remaining = list(self.NAMES)
        for name in reversed(self.NAMES):
            remaining.remove(name)
            nodes[name].send_signal(signal.SIGTERM)
            self.assertEqual(nodes[name].wait_exit(10), 0, nodes[name].log_tail())
            self.assertLogHas(nodes[name], rf"\] Node {name} stopped$")
            for other in remaining:
                nodes[other].wait_for(rf"\] Node {other}: peer {name} is leaving \(shutdown\)$", timeout=5)
                self.assertTrue(nodes[other].running())
        for node in nodes.values():
            self.assertFalse(node.has(r"lost its connection to peer"), node.log_tail())
            self.assertLogClean(node)


class BadInputTests(IntegrationTestCase):
    """Garbage on the wire does not bring a node down."""

    def test_garbage_datagrams_and_boxes(self) -> None:
        """
        Garbage datagrams to the node's group are dropped with a log line
        each; garbage bytes and malformed AMP boxes on its TCP port are
        refused; afterwards a second node joins it and a job that needs both
        completes.
        """
        cluster = Cluster(self)
        x1 = cluster.start("x1", "--capabilities", "x")
        x1.wait_for(r"\] Node x1 sent DISCOVER$")

        sender = multicast_sender()
        self.addCleanup(sender.close)
        source = "127.0.0.1:%d" % sender.getsockname()[1]
        node = {
            "name": "ghost",
            "instance": "0123",
            "host": "127.0.0.1",
            "port": 9,
            "capabilities": [],
            "slots": 1,
            "cluster": cluster.cluster_name,
            "version": 1,
        }
        garbage = {
            b"\xff\xfe\x00 not even text": r"the datagram is not a UTF-8 JSON object",
            json.dumps({"hello": "world"}).encode(): r"the datagram has no 'proto': 'p2pexec' marker",
            json.dumps(
                {"proto": "p2pexec", "v": 99, "type": "HELLO", "node": node}
            ).encode(): r"protocol version 99 is not supported",
            json.dumps(
                {"proto": "p2pexec", "v": 1, "type": "EXPLODE", "node": node}
            ).encode(): r"unknown datagram type 'EXPLODE'",
            json.dumps(
                {"proto": "p2pexec", "v": 1, "type": "HELLO", "node": dict(node, name="bad name!")}
            ).encode(): r"node name must be 1-64 characters",
            b"x" * 5000: r"5000 bytes is over the 1200-byte limit",
        }
        # More of the same reasons: rate-limited, but they must not hurt either.
        extra = [b"", b"[" * 1100, b"{" * 1000, b"null", json.dumps({"proto": "p2pexec", "v": 1}).encode()]
        for data in list(garbage) + extra:
            sender.sendto(data, cluster.group)
        for detail in garbage.values():
            x1.wait_for(rf"#warn\] Dropped a datagram from {re.escape(source)}: {detail}", timeout=5)

        port = x1.port
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff\xff" + bytes(range(256)) * 4, b"\x00\x00"):
            client = RawAmpClient(port)
            self.addCleanup(client.close)
            client.send_raw(junk)
            self.assertTrue(client.closed_by_peer(5), f"{junk[:20]!r} did not get the connection closed")
        x1.wait_for(
            r"#warn\] Dropped the connection with unknown node at 127\.0\.0\.1:\d+: "
            r"it sent data that is not valid AMP \(NoEmptyBoxes",
            timeout=5,
        )
        client = RawAmpClient(port)
        client.send_raw(b"\x00\x05_ask\x00\x05")
        client.close()

        client = RawAmpClient(port)
        self.addCleanup(client.close)
        answer = client.ask(b"CONNECT_REQUEST", 1, cluster=cluster.cluster_name.encode())
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        answer = client.ask(b"NO_SUCH_COMMAND", 2)
        self.assertEqual(answer.get(b"_error_code"), b"UNHANDLED", answer)
        answer = client.ask(
            b"INSTRUCTION_ASSIGNMENT", 3, job=b"j", master=b"ghost", master_instance=b"0123", tasks=b"[]"
        )
        self.assertEqual(answer.get(b"_error_code"), b"CONNECT_REQUIRED", answer)
        answer = client.ask(
            b"CONNECT_REQUEST",
            4,
            cluster=cluster.cluster_name.encode(),
            name=b"ghost",
            instance=b"0123",
            version=b"not a number",
        )
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        answer = client.ask(
            b"CONNECT_REQUEST",
            5,
            cluster=cluster.cluster_name.encode(),
            name=b"ghost",
            instance=b"0123",
            version=b"1",
        )
        self.assertEqual(answer.get(b"name"), b"x1", answer)
        answer = client.ask(b"HANDSHAKE", 6, node=b"{{{ not json")
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        answer = client.ask(b"HANDSHAKE", 7, node=json.dumps(dict(node, name=5)).encode())
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        answer = client.ask(b"HANDSHAKE", 8, node=json.dumps(node).encode())
        self.assertEqual(json.loads(answer[b"node"])["name"], "x1", answer)
        answer = client.ask(b"PEER_EXCHANGE", 9, peers=json.dumps({"not": "a list"}).encode())
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        answer = client.ask(b"EXECUTION_CONFIRMATION", 10, job=b"no-such-job", results=b"[]")
        self.assertEqual(answer.get(b"_error_code"), b"UNKNOWN_JOB", answer)
        answer = client.ask(
            b"INSTRUCTION_ASSIGNMENT",
            11,
            job=b"j",
            master=b"someone-else",
            master_instance=b"0123",
            tasks=json.dumps([{"id": "x9", "attempt": 1}]).encode(),
        )
        self.assertEqual(answer.get(b"_error_code"), b"BAD_ARGUMENTS", answer)
        client.close()
        self.assertLogHas(
            x1, r"#warn\] Refused a box from unknown node at 127\.0\.0\.1:\d+: CONNECT_REQUEST: malformed arguments"
        )
        self.assertLogHas(x1, r"#warn\] Refused HANDSHAKE from ghost at 127\.0\.0\.1:\d+: ")

        results = cluster.path("results.json")
        y1 = cluster.start("y1", "--tasks", "x1,y1,x2", "--results", results)
        finished = y1.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("3", "0"), y1.log_tail())
        report = self.results_of(y1, results)
        self.assertEqual({t["id"]: t["node"] for t in report["tasks"]}, {"x1": "x1", "x2": "x1", "y1": "y1"})
        self.assertLogHas(x1, r"\] Node x1 executing: x1$")
        self.assertTrue(x1.running())
        self.assertLogClean(x1)
        self.assertLogClean(y1)

    def test_non_amp_bytes_are_logged(self) -> None:
        """
        Bytes that are not AMP framing (here an HTTP request) close the
        connection with one log line saying so, like other non-AMP data.
        """
        cluster = Cluster(self)
        x1 = cluster.start("x1", "--capabilities", "x")
        client = RawAmpClient(x1.port)
        self.addCleanup(client.close)
        client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.closed_by_peer(5))
        x1.wait_for(
            r"#warn\] Dropped the connection with unknown node at 127\.0\.0\.1:\d+: it sent data that is not valid AMP",
            timeout=3,
        )


class CommandLineTests(IntegrationTestCase):
    """Bad options are refused before a node starts."""

    CASES = [
        (["--name", "n1", "--slots", "0"], r"--slots: 0 is out of range"),
        (["--name", "n1", "--group", "10.0.0.1:5"], r"--group: 10\.0\.0\.1 is not a multicast address"),
        (["--name", "bad name!"], r"--name must be 1-64 characters"),
        (["--name", "n1", "--job", "missing.toml"], r"--job: job file missing\.toml: cannot be read"),
        (["--name", "n1", "--port", "70000"], r"--port: 70000 is out of range"),
        (["--name", "n1", "--log-level", "loud"], r"--log-level: 'loud' is not one of"),
        (["--name", "n1", "--tasks", "a1", "--job", "x.toml"], r"--tasks and --job cannot be used together"),
        (["--port", "0"], r"--name is required"),
    ]

    def test_bad_options_are_refused(self) -> None:
        """
        Each bad option makes twistd exit non-zero at once, with a one-line
        message naming the option (after twistd's usage text), and no
        traceback.
        """
        cluster = Cluster(self)
        for options, message in self.CASES:
            extra = [] if "--group" in options else ["--group", cluster.group_option]
            if "--port" not in options:
                extra += ["--port", "0"]
            started = time.monotonic()
            status, output = cluster.run_once(*options, *extra, timeout=10)
            took = time.monotonic() - started
            lines = [line for line in output.splitlines() if line.strip()]
            context = f"{options}: status {status} after {took:.1f}s; output ends:\n" + "\n".join(lines[-5:])
            self.assertNotEqual(status, 0, context)
            self.assertLess(took, 5.0, context)
            self.assertNotIn("Traceback", output, context)
            self.assertTrue(lines, context)
            self.assertRegex(lines[-1], message, context)
            self.assertNotIn("started on port", output, context)
