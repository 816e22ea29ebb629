"""
Integration tests of C{p2pexec run} printing what its tasks print, as GNU
parallel does, against a real C{twistd p2pexec} node on loopback: the
output grouped per task, C{-k}, C{--tag}, standard error kept apart, the
joblog, and the same lines as GNU parallel's for the same inputs (checked
where GNU parallel is installed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.integration.cluster import Cluster
from tests.integration.test_cli import CliTestCase

PARALLEL = shutil.which("parallel")


class RunOutputTests(CliTestCase):
    """run prints the tasks' output."""

    def test_output_order_tag_stderr_and_joblog(self) -> None:
        """
        run ... ::: a b c prints a, b and c (each task's output whole); -k
        prints them in argument order however they end; --tag starts each
        line with the argument and a tab; the tasks' stderr goes to stderr
        only; --joblog writes GNU parallel's header and a line per task.
        """
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1", "--capabilities", "sh", "--slots", "3")
        status, out, err = self.cli(cluster, a1.port, "run", "--kind", "sh", "--", "echo", "{}", ":::", "a", "b", "c")
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        self.assertEqual(sorted(out.splitlines()), ["a", "b", "c"])
        self.assertEqual(err, "")

        # c ends first, a last: -k still prints a, b, c; each task's two lines stay together.
        script = 'sleep "$2"; echo "$1 one"; echo "$1 two"; echo "$1 oops" >&2'
        joblog = cluster.path("run.log")
        status, out, err = self.cli(
            cluster,
            a1.port,
            "run",
            "--kind",
            "sh",
            "-k",
            "--tag",
            "--joblog",
            joblog,
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "{1}",
            "{2}",
            ":::",
            "a",
            "b",
            "c",
            ":::+",
            "1.2",
            "0.6",
            "0",
            timeout=30,
        )
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        self.assertEqual(
            out.splitlines(),
            [
                f"{tag}\t{name} {n}"
                for name, tag in [("a", "a 1.2"), ("b", "b 0.6"), ("c", "c 0")]
                for n in ("one", "two")
            ],
        )
        self.assertEqual(sorted(err.splitlines()), ["a 1.2\ta oops", "b 0.6\tb oops", "c 0\tc oops"])
        with open(joblog) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
        rows = [line.split("\t") for line in lines[1:]]
        self.assertEqual([row[0] for row in rows], ["3", "2", "1"], "a line per task as it ends: c, b, a")
        for row in rows:
            self.assertEqual(len(row), 9, row)
            self.assertEqual((row[1], row[4], row[5], row[6], row[7]), ("a1", "0", "12", "0", "0"))
            self.assertRegex(row[2], r"^1[0-9]{9}\.[0-9]{3}$")
            self.assertRegex(row[3], r"^ *[0-9]+\.[0-9]{3}$")
            self.assertEqual(len(row[3]), 10)
        self.assertTrue(rows[2][8].startswith("sh -c ") and rows[2][8].endswith(" sh a 1.2"), rows[2][8])
        self.assertGreaterEqual(float(rows[2][3]), 1.2)

    def test_failures_and_bad_positions(self) -> None:
        """
        A failed task's exit code is in the joblog, run exits 1 with one line
        on stderr naming the job; a {3} with two sources is one line, exit 2.
        """
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1")
        joblog = cluster.path("fail.log")
        status, out, err = self.cli(
            cluster,
            a1.port,
            "run",
            "--kind",
            "sh",
            "--joblog",
            joblog,
            "--",
            "sh",
            "-c",
            "exit $1",
            "sh",
            ":::",
            "0",
            "3",
        )
        self.assertEqual(status, 1, (out, err, cluster.logs()))
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertRegex(err, r"^p2pexec: job \S+ finished: 1 succeeded, 1 failed of 2 task\(s\); ")
        with open(joblog) as f:
            exits = sorted(line.split("\t")[6] for line in f.read().splitlines()[1:])
        self.assertEqual(exits, ["0", "3"])
        self.assertOneLineError(
            self.cli(cluster, a1.port, "run", "--kind", "sh", "--", "echo", "{3}", ":::", "a", ":::", "b"),
            "{3} names input source 3, but there are 2 input sources",
        )

    def test_same_lines_as_gnu_parallel(self) -> None:
        """For the same inputs run prints the same set of lines as GNU parallel, and with -k the same order."""
        if PARALLEL is None:
            self.skipTest("GNU parallel is not installed")
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1")
        words = [
            "echo",
            "{#}",
            "{1}",
            "{2/.}",
            "{.}",
            ":::",
            "x.c",
            "d/y.tar.gz",
            ":::",
            "p/q.r",
            "s",
            ":::+",
            "1",
            "2",
        ]
        reference = subprocess.run(
            [PARALLEL, "--will-cite", "-k", *words], capture_output=True, text=True, timeout=60
        ).stdout.splitlines()
        self.assertEqual(len(reference), 4, reference)
        status, out, err = self.cli(cluster, a1.port, "run", "--kind", "sh", "--", *words)
        self.assertEqual(status, 0, (out, err))
        self.assertEqual(sorted(out.splitlines()), sorted(reference))
        status, out, err = self.cli(cluster, a1.port, "run", "--kind", "sh", "-k", "--", *words)
        self.assertEqual(status, 0, (out, err))
        self.assertEqual(out.splitlines(), reference)


class RunWholeOutputTests(CliTestCase):
    """run prints a task's whole output, beyond the tail its result keeps."""

    def test_one_megabyte_byte_for_byte(self) -> None:
        """
        A task that prints 1 MB (every byte value, not UTF-8) beside one that
        prints a line: run's standard output holds both, byte for byte, each
        task's output whole, and nothing on standard error.
        """
        cluster = Cluster(self)
        a1 = self.start_node(cluster, "a1", "--capabilities", "sh", "--slots", "2")
        data = bytes(range(256)) * 4096
        path = cluster.path("big.bin")
        with open(path, "wb") as f:
            f.write(data)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pexec.cli",
                "--connect",
                f"127.0.0.1:{a1.port}",
                "run",
                "--kind",
                "sh",
                "--",
                "sh",
                "-c",
                "{}",
                ":::",
                f"cat {path}",
                "echo small",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=cluster.folder,
            env=dict(cluster.environment()),
            timeout=cluster.deadline.bound(60),
        )
        self.assertEqual(done.returncode, 0, (done.stderr, cluster.logs()))
        self.assertEqual(done.stderr, b"")
        out = done.stdout
        self.assertEqual(len(out), len(data) + len(b"small\n"))
        self.assertIn(out, (data + b"small\n", b"small\n" + data), "each task's output whole, byte for byte")
