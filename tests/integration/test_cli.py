"""
Integration tests of the C{p2pexec} command-line client against real
C{twistd p2pexec} nodes on loopback.

The client runs as a subprocess (C{python -m p2pexec.cli}) with the
checkout on its path and its stdout a pipe, so it prints plain lines.  Each
test has a L{Cluster} of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.trial import unittest

from tests.integration.cluster import CHECKOUT, Cluster, NodeProcess, tail

JOB_ID = r"[A-Za-z0-9_.-]+-[0-9a-f]{8}-\d+"
"""What a job id looks like: <master>-<8 hex digits of its instance>-<number>."""


def write_job(path: str, defaults: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    """A TOML job file; values are written as JSON, which is valid TOML for strings, numbers and arrays."""
    lines = ["[defaults]"] + [f"{key} = {json.dumps(value)}" for key, value in defaults.items()]
    for task in tasks:
        lines += ["", "[[task]]"] + [f"{key} = {json.dumps(value)}" for key, value in task.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pids(path: str) -> list[int]:
    """The pids the tasks wrote to C{path}, one a line."""
    try:
        with open(path) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def kill_sleeps(path: str) -> None:
    """Clean-up: SIGKILL each pid in C{path} still running C{sleep} (tasks outlive a killed node)."""
    for pid in read_pids(path):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sleep" not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def stop(process: subprocess.Popen[Any]) -> None:
    """Clean-up: kill C{process} (by its pid) if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()


class CliTestCase(unittest.TestCase):
    """Runs the client."""

    def cli(
        self, cluster: Cluster | None, port: int, *argv: str, stdin: str | None = None, timeout: float = 15.0
    ) -> tuple[int, str, str]:
        """
        Run C{p2pexec --connect 127.0.0.1:PORT ARGV...} to its end.

        @return: its exit status, stdout and stderr.
        """
        env = dict(os.environ)
        env.pop("P2PEXEC_CONNECT", None)
        if cluster is not None:
            env = dict(cluster.environment())
            timeout = cluster.deadline.bound(timeout)
        else:
            env["PYTHONPATH"] = CHECKOUT
        try:
            done = subprocess.run(
                [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", *argv],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                cwd=cluster.folder if cluster is not None else None,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            self.fail(f"p2pexec {' '.join(argv)} still running after {e.timeout:.1f}s; output:\n{e.output}")
        for stream in (done.stdout, done.stderr):
            self.assertNotIn("\x1b", stream, f"escape codes in plain mode: {stream!r}")
            self.assertNotIn("Traceback", stream, stream)
        return done.returncode, done.stdout, done.stderr

    def start_node(self, cluster: Cluster, name: str, *options: str) -> NodeProcess:
        """A node that runs kind C{sh}, two tasks at once, unless told otherwise."""
        return cluster.start(name, *(options or ("--capabilities", "sh", "--slots", "2")))

    def assertOneLineError(self, result: tuple[int, str, str], *fragments: str) -> str:
        """Assert exit status 2, nothing on stdout, and one line on stderr holding each fragment."""
        status, out, err = result
        self.assertEqual(status, 2, (out, err))
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("p2pexec: "), err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        return err


class SubmitTests(CliTestCase):
    """submit and run, followed to their end."""

    def test_submit_wait_succeeds(self) -> None:
        """
        submit --wait with a job file prints the job id first, follows the
        job to its end and exits 0 when every task succeeded; result shows
        each task and its output.
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        write_job(
            job_file,
            {"kind": "sh"},
            [
                {"id": "hello", "command": ["echo", "hello"]},
                {"id": "world", "command": ["sh", "-c", "echo world; echo note >&2"]},
            ],
        )
        a1 = self.start_node(cluster, "a1")
        status, out, err = self.cli(cluster, a1.port, "submit", "--wait", job_file)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        lines = out.splitlines()
        self.assertRegex(lines[0], rf"^{JOB_ID}$")
        job = lines[0]
        self.assertRegex(lines[-1], rf"^job {re.escape(job)} finished: 2 succeeded, 0 failed in [\d.]+s$")
        a1.wait_for(rf"\] Job {re.escape(job)} finished: 2 succeeded, 0 failed")

        status, out, err = self.cli(cluster, a1.port, "result", job)
        self.assertEqual(status, 0, (out, err))
        self.assertIn(f"Job {job} (finished: 2/2 done, 2 succeeded, 0 failed", out)
        rows = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
        self.assertEqual(rows["hello"][:6], ["hello", "sh", "succeeded", "succeeded", "0", "a1"])
        self.assertEqual(rows["world"][:6], ["world", "sh", "succeeded", "succeeded", "0", "a1"])
        self.assertIn("hello stdout (last 1 line(s)):\n  hello\n", out)
        self.assertIn("world stderr (last 1 line(s)):\n  note\n", out)

    def test_failing_task(self) -> None:
        """A job with a failing task: submit --wait exits 1 and says so."""
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        write_job(
            job_file,
            {"kind": "sh"},
            [
                {"id": "good", "command": ["true"]},
                {"id": "bad", "command": ["sh", "-c", "exit 3"]},
            ],
        )
        a1 = self.start_node(cluster, "a1")
        status, out, err = self.cli(cluster, a1.port, "submit", "--wait", job_file)
        self.assertEqual(status, 1, (out, err))
        lines = out.splitlines()
        job = lines[0]
        self.assertEqual(
            lines[-2:],
            [
                lines[-2],
                f"the results of each task: p2pexec result {job}",
            ],
        )
        self.assertRegex(lines[-2], rf"^job {re.escape(job)} finished: 1 succeeded, 1 failed in ")

    def test_run_with_arguments(self) -> None:
        """
        run with ::: runs the command once per argument, {} replaced, each
        task named by its argument when it can be (t1 otherwise), and exits
        0; :::: - reads the arguments from standard input.
        """
        cluster = Cluster(self)
        side = cluster.path("side.txt")
        a1 = self.start_node(cluster, "a1")
        record = f'echo "$1|$P2PEXEC_TASK_ID" >> {shlex.quote(side)}'
        status, out, err = self.cli(
            cluster,
            a1.port,
            "run",
            "--kind",
            "sh",
            "--",
            "sh",
            "-c",
            record,
            "sh",
            "{}",
            ":::",
            "alpha",
            "b c",
            "gamma",
        )
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        # The tasks print nothing; run prints only what they print, and its
        # own lines only on a terminal (stderr here is a pipe).
        self.assertEqual((out, err), ("", ""))
        with open(side) as f:
            self.assertEqual(sorted(f.read().splitlines()), ["alpha|alpha", "b c|t1", "gamma|gamma"])

        status, out, err = self.cli(
            cluster,
            a1.port,
            "run",
            "--kind",
            "sh",
            "--",
            "sh",
            "-c",
            record,
            "sh",
            "{}.txt",
            "::::",
            "-",
            stdin="d1\n\nd2\n",
        )
        self.assertEqual(status, 0, (out, err))
        with open(side) as f:
            self.assertEqual(
                sorted(f.read().splitlines()), ["alpha|alpha", "b c|t1", "d1.txt|d1", "d2.txt|d2", "gamma|gamma"]
            )

    def test_result_json(self) -> None:
        """
        result --json prints one JSON document: the job's summary, and each
        task's state, status, exit code, node, duration and output; it
        exits 1 as a task failed.
        """
        cluster = Cluster(self)
        job_file = cluster.path("job.toml")
        write_job(
            job_file,
            {"kind": "sh"},
            [
                {"id": "out", "command": ["sh", "-c", "printf 'one\\ntwo\\n'"]},
                {"id": "err", "command": ["sh", "-c", "echo broken >&2; exit 7"]},
            ],
        )
        a1 = self.start_node(cluster, "a1")
        status, out, _ = self.cli(cluster, a1.port, "submit", "--wait", job_file)
        self.assertEqual(status, 1, out)
        job = out.splitlines()[0]
        status, out, err = self.cli(cluster, a1.port, "result", "--json", job)
        self.assertEqual(status, 1, err)
        document = json.loads(out)
        summary = document["job"]
        self.assertEqual((summary["id"], summary["state"], summary["total"], summary["done"]), (job, "finished", 2, 2))
        self.assertEqual(summary["counts"]["succeeded"], 1)
        self.assertEqual(summary["counts"]["failed"], 1)
        tasks = {task["id"]: task for task in document["tasks"]}
        self.assertEqual(list(tasks), ["out", "err"])
        self.assertEqual(
            {k: tasks["out"][k] for k in ("state", "status", "exit_code", "node", "stdout")},
            {"state": "succeeded", "status": "succeeded", "exit_code": 0, "node": "a1", "stdout": "one\ntwo\n"},
        )
        self.assertEqual(
            {k: tasks["err"][k] for k in ("state", "status", "exit_code", "node", "stderr")},
            {"state": "failed", "status": "failed", "exit_code": 7, "node": "a1", "stderr": "broken\n"},
        )
        self.assertGreaterEqual(tasks["out"]["duration"], 0)


class InspectTests(CliTestCase):
    """jobs and status."""

    def test_jobs(self) -> None:
        """jobs lists the jobs the node is master of, newest first, with their counts and their master and epoch."""
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1", "--capabilities", "a")
        jobs = []
        for names in ("a1,a2", "a3"):
            status, out, err = self.cli(cluster, a1.port, "submit", "--tasks", names)
            self.assertEqual(status, 0, err)
            jobs.append(out.strip())
        cluster.wait_until(
            lambda: self.cli(cluster, a1.port, "jobs")[1].count(" finished ") == 2,
            lambda: self.cli(cluster, a1.port, "jobs")[1],
        )
        status, out, err = self.cli(cluster, a1.port, "jobs")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], f"Jobs of the node at 127.0.0.1:{a1.port}:")
        self.assertEqual(
            lines[1].split(),
            [
                "job",
                "state",
                "done",
                "succeeded",
                "failed",
                "cancelled",
                "skipped",
                "running",
                "queued",
                "waiting",
                "elapsed",
                "eta",
                "master",
            ],
        )
        self.assertEqual(lines[2].split()[:9], [jobs[1], "finished", "1/1", "1", "0", "0", "0", "0", "0"])
        self.assertEqual(lines[3].split()[:9], [jobs[0], "finished", "2/2", "2", "0", "0", "0", "0", "0"])
        # Issue 13: the master column names the job's master and epoch.
        self.assertEqual(lines[2].split()[-3:], ["a1", "(epoch", "1)"])
        self.assertEqual(lines[3].split()[-3:], ["a1", "(epoch", "1)"])

    def test_status_shows_the_peers(self) -> None:
        """status shows the node itself and its peer, with address, capabilities, slots and state, then its jobs."""
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1", "--capabilities", "a", "--slots", "2")
        b1 = self.start_node(cluster, "b1", "--capabilities", "b,sh", "--slots", "3")
        a1.wait_for(r"\] Node a1 connected to peer b1 ")

        def rows() -> dict[str, list[str]]:
            out = self.cli(cluster, a1.port, "status")[1]
            return {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.split()[0] in ("a1", "b1")}

        seen = cluster.wait_until(lambda: (r := rows()) and r.get("b1", [""] * 8)[7] == "alive" and r, rows)
        self.assertEqual(seen["a1"][:8], ["a1", f"127.0.0.1:{a1.port}", "a", "2", "0", "2", "0", "self"])
        self.assertEqual(seen["b1"][:4], ["b1", f"127.0.0.1:{b1.port}", "b,sh", "3"])
        status, out, err = self.cli(cluster, a1.port, "status")
        self.assertEqual(status, 0, err)
        self.assertEqual(out.splitlines()[0], f"Nodes seen by a1 (127.0.0.1:{a1.port}):")
        self.assertIn("Jobs of a1:\n  (none)\n", out)


class CancelTests(CliTestCase):
    """cancel."""

    def test_cancel_a_running_job(self) -> None:
        """
        A job of four sleep 30 tasks on a node with two slots: cancel says 4
        tasks were cancelled, the job ends cancelled, the submit --wait that
        followed it exits 1, and every task's result is cancelled.
        """
        cluster = Cluster(self)
        pids = cluster.path("pids.txt")
        self.addCleanup(kill_sleeps, pids)
        job_file = cluster.path("job.toml")
        write_job(
            job_file,
            {"kind": "sh", "shell": True, "command": f"echo $$ >> {shlex.quote(pids)}; exec sleep 30"},
            [{"id": f"s{n}"} for n in range(4)],
        )
        a1 = self.start_node(cluster, "a1")
        followed = cluster.path("wait.out")
        with open(followed, "w") as out:
            waiting = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p2pexec.cli",
                    "--connect",
                    f"127.0.0.1:{a1.port}",
                    "submit",
                    "--wait",
                    job_file,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cluster.folder,
                env=cluster.environment(),
            )
        self.addCleanup(stop, waiting)

        def read_followed() -> str:
            with open(followed) as f:
                return f.read()

        job = cluster.wait_until(
            lambda: (m := re.match(rf"({JOB_ID})\n", read_followed())) and m.group(1), read_followed
        )
        cluster.wait_until(lambda: len(read_pids(pids)) == 2, lambda: f"pids: {read_pids(pids)}\n{cluster.logs()}")

        status, out, err = self.cli(cluster, a1.port, "cancel", job)
        self.assertEqual((status, out, err), (0, f"job {job}: 4 task(s) cancelled\n", ""))
        try:
            waited = waiting.wait(timeout=cluster.deadline.bound(10))
        except subprocess.TimeoutExpired:
            self.fail(f"submit --wait still running after the cancel:\n{tail(read_followed())}")
        self.assertEqual(waited, 1, read_followed())
        self.assertRegex(
            read_followed().splitlines()[-2],
            rf"^job {re.escape(job)} was cancelled: 0 succeeded, 0 failed, 4 cancelled after ",
        )
        status, out, _ = self.cli(cluster, a1.port, "result", "--json", job)
        self.assertEqual(status, 1)
        document = json.loads(out)
        self.assertEqual(document["job"]["state"], "cancelled")
        self.assertEqual([task["status"] for task in document["tasks"]], ["cancelled"] * 4)
        status, out, _ = self.cli(cluster, a1.port, "cancel", job)
        self.assertEqual((status, out), (0, f"job {job}: 0 tasks cancelled (it had already ended)\n"))


class ErrorTests(CliTestCase):
    """Errors are one line on stderr, status 2."""

    def test_connection_refused(self) -> None:
        """Nothing listens: one line naming the address and the reason, for every subcommand, status 2."""
        port = free_tcp_port()
        for argv in (["status"], ["jobs"], ["watch", "j"], ["submit", "--tasks", "a1"]):
            self.assertOneLineError(
                self.cli(None, port, *argv), f"p2pexec: cannot connect to 127.0.0.1:{port}: connection refused"
            )

    def test_bad_job_file(self) -> None:
        """A bad job file is refused before any connection, with jobfile's one-line message, status 2."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[[task]]\nid = "x"\nkind = "sh"\ncommand = ["true"]\ntimeout = -1\n')
        self.assertOneLineError(
            self.cli(None, free_tcp_port(), "submit", path),
            f"p2pexec: job file {path}: task #1 ('x'): 'timeout' must be a number of seconds above 0, not -1",
        )

    def test_unknown_job(self) -> None:
        """watch, result and cancel of a job the node is not master of: one line, status 2."""
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1")
        for argv in (["watch", "nope"], ["result", "nope"], ["result", "--json", "nope"], ["cancel", "nope"]):
            self.assertOneLineError(
                self.cli(cluster, a1.port, *argv), "p2pexec: unknown job: node a1 is not the master of job 'nope'"
            )
