"""
Integration tests of a task's full output (issue 14, item 3): workers keep
it in their state directories, and C{p2pexec logs} brings it back through
any node, byte for byte, or live with C{--follow}.
"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
import time

from tests.integration.cluster import Cluster
from tests.integration.test_cli import CliTestCase, stop, write_job

BIG = 10 * 1000 * 1000
"""Bytes of output of the big task: 10 MB."""


class LogsTests(CliTestCase):
    """C{p2pexec logs} against real nodes: a master, a worker, and a third node asked for the output."""

    def start_trio(self, cluster: Cluster) -> tuple[int, int, int]:
        """
        Master m (runs nothing), worker w (kind sh), and node c (kind other),
        all connected, each job replicated to the two others (so that c knows
        its leader); their ports.
        """
        m = cluster.start("m", "--capabilities", "none", "--replicas", "2")
        w = cluster.start("w", "--capabilities", "sh", "--slots", "2", "--replicas", "2")
        c = cluster.start("c", "--capabilities", "other", "--replicas", "2")
        for node in (m, w, c):
            node.wait_for(r"connected to peer", count=2)
        return m.port, w.port, c.port

    def submit(self, cluster: Cluster, port: int, tasks: list[dict[str, object]], wait: bool) -> str:
        """Submit a job file of C{tasks} (kind sh) to the node at C{port}; its job id."""
        path = cluster.path(f"job-{len(os.listdir(cluster.folder))}.toml")
        write_job(path, {"kind": "sh"}, tasks)
        status, out, err = self.cli(cluster, port, "submit", *(["--wait"] if wait else []), path, timeout=60)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        return out.splitlines()[0]

    def test_ten_megabytes_byte_for_byte(self) -> None:
        """
        A task's 10 MB of binary output comes back exactly (sha256) through
        a node that is neither the job's master nor its worker; the
        result's tail and sizes say the same; --stderr gives the other stream.
        """
        cluster = Cluster(self)
        m, w, c = self.start_trio(cluster)
        data = os.urandom(BIG)
        with open(cluster.path("big.bin"), "wb") as f:
            f.write(data)
        command = ["sh", "-c", f"cat {cluster.path('big.bin')}; echo to-stderr >&2"]
        job = self.submit(cluster, m, [{"id": "big", "command": command}], wait=True)
        env = cluster.environment()
        done = subprocess.run(
            [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{c}", "logs", job, "big"],
            capture_output=True,
            env=env,
            cwd=cluster.folder,
            timeout=cluster.deadline.bound(60),
        )
        self.assertEqual(done.returncode, 0, (done.stderr, cluster.logs()))
        self.assertEqual(len(done.stdout), BIG)
        self.assertEqual(hashlib.sha256(done.stdout).hexdigest(), hashlib.sha256(data).hexdigest())
        status, out, err = self.cli(cluster, w, "logs", "--stderr", job, "big")
        self.assertEqual((status, out), (0, "to-stderr\n"), err)
        kept = os.path.join(cluster.state_dir("w"), "output", job, "big.1.stdout")
        self.assertEqual(os.path.getsize(kept), BIG)

    def test_unknown_task_and_job(self) -> None:
        """An unknown task or job: one clear line, exit 2."""
        cluster = Cluster(self)
        m, w, c = self.start_trio(cluster)
        job = self.submit(cluster, m, [{"id": "t1", "command": ["echo", "hi"]}], wait=True)
        self.assertOneLineError(self.cli(cluster, m, "logs", job, "nope"), "unknown task", "nope")
        self.assertOneLineError(self.cli(cluster, c, "logs", job, "nope"), "unknown task", "nope")
        self.assertOneLineError(self.cli(cluster, m, "logs", "m-00000000-9", "t1"), "unknown job")
        status, out, err = self.cli(cluster, c, "logs", job, "t1")
        self.assertEqual((status, out), (0, "hi\n"), err)

    def test_follow_shows_lines_within_a_second_and_exits_at_the_end(self) -> None:
        """
        C{logs -f} prints a running task's lines as it writes them (within
        a second) and exits, status 0, once the task has ended.
        """
        cluster = Cluster(self)
        m, w, c = self.start_trio(cluster)
        go, done = cluster.path("go"), cluster.path("done")
        script = (
            f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; "
            f"while [ ! -e {done} ]; do sleep 0.05; done; echo last"
        )
        job = self.submit(cluster, m, [{"id": "slow", "command": ["sh", "-c", script]}], wait=False)
        follower = subprocess.Popen(
            [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{c}", "logs", "-f", job, "slow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cluster.environment(),
            cwd=cluster.folder,
        )
        self.addCleanup(stop, follower)
        assert follower.stdout is not None
        fd = follower.stdout.fileno()
        seen = b""

        def read_until(wanted: bytes, within: float) -> float:
            """Read the follower's output until C{wanted} shows; how long it took."""
            nonlocal seen
            started = time.monotonic()
            deadline = started + cluster.deadline.bound(within)
            while wanted not in seen:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(left, 0))
                if not ready:
                    self.fail(f"{wanted!r} not shown within {within}s; shown: {seen!r}\n{cluster.logs()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.fail(f"logs -f ended before {wanted!r}; shown: {seen!r}, stderr: {follower.stderr.read()!r}")
                seen += chunk
            return time.monotonic() - started

        read_until(b"first\n", 15)
        open(go, "w").close()
        self.assertLess(read_until(b"second\n", 5), 1.0, "a line took more than a second to show")
        self.assertIsNone(follower.poll(), "logs -f exited while the task runs")
        open(done, "w").close()
        read_until(b"last\n", 5)
        self.assertEqual(follower.wait(timeout=cluster.deadline.bound(10)), 0, follower.stderr.read())
        self.assertEqual(seen + follower.stdout.read(), b"first\nsecond\nlast\n")


class OutputOptionTests(CliTestCase):
    """The node's output options, given a value that is not one."""

    def test_not_a_size(self) -> None:
        """
        twistd p2pexec --max-output 12X (or --output-retention 3q) exits
        non-zero at once with one line naming the option and the value
        (after twistd's usage, as for any bad option), and starts no node.
        """
        cluster = Cluster(self)
        for option, value, said in (
            ("--max-output", "12X", "expected a size such as 100M"),
            ("--output-retention", "3q", "expected a duration"),
        ):
            status, output = cluster.run_once("--name", "n1", "--port", "0", option, value, timeout=30)
            self.assertNotEqual(status, 0, output)
            errors = [line for line in output.splitlines() if option + ":" in line]
            self.assertEqual(len(errors), 1, output)
            self.assertIn(f"{option}: {said}", errors[0])
            self.assertIn(repr(value), errors[0])
            self.assertNotIn("Traceback", output)
            self.assertNotIn("starting on", output)
