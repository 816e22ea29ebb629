"""
Integration tests of L{p2pexec.client} against real C{twistd p2pexec}
nodes on loopback: every example of C{docs/client.rst} that shows what it
prints is run as a script (its address replaced by the node's) and must
print exactly that; and the blocking client in a program that runs the
reactor itself, and from several threads at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial import unittest

from tests.integration.cluster import CHECKOUT, Cluster

DOCS = os.path.join(CHECKOUT, "docs", "client.rst")
"""The page whose examples are run."""

ADDRESS = "127.0.0.1:10001"
"""The address the examples use, replaced by the test node's."""


def indented_block(lines: list[str], start: int) -> tuple[str, int]:
    """The indented block after the directive at C{start} (dedented), and the index of the line after it."""
    index = start + 1
    block: list[str] = []
    while index < len(lines) and (not lines[index].strip() or lines[index].startswith("    ")):
        block.append(lines[index][4:])
        index += 1
    return "\n".join(block).strip("\n") + "\n", index


def examples(text: str) -> list[tuple[str, str, str]]:
    """
    Each C{.. code-block:: python} followed by "It prints:" and a
    C{.. code-block:: text}, as (the section's title, the code, what it prints).
    """
    lines = text.splitlines()
    found = []
    title = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and re.fullmatch(r"=+", lines[index + 1]) and line.strip():
            title = line.strip()
        if line.strip() == ".. code-block:: python":
            code, index = indented_block(lines, index)
            rest = [each for each in lines[index : index + 4] if each.strip()]
            if rest[:2] == ["It prints:", ".. code-block:: text"]:
                at = lines.index(".. code-block:: text", index)
                printed, index = indented_block(lines, at)
                found.append((title, code, printed))
            continue
        index += 1
    return found


EXAMPLES = examples(open(DOCS, encoding="utf-8").read())


class ClientTestCase(unittest.TestCase):
    """Runs Python scripts against a node."""

    def start(self) -> tuple[Cluster, str]:
        """A cluster of one node, a1 (kind sh, two slots), and its address."""
        cluster = Cluster(self)
        a1 = cluster.start("a1", "--capabilities", "sh", "--slots", "2")
        return cluster, f"127.0.0.1:{a1.port}"

    def script(self, cluster: Cluster, code: str, timeout: float = 15.0) -> tuple[int, str, str]:
        """Run C{code} with this checkout's Python in the cluster's folder and environment: status, stdout, stderr."""
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                cwd=cluster.folder,
                env=cluster.environment(),
                timeout=cluster.deadline.bound(timeout),
            )
        except subprocess.TimeoutExpired as e:
            self.fail(f"the script still runs after {e.timeout:.1f}s; output: {e.output!r}\n{code}")
        return done.returncode, done.stdout, done.stderr


class DocsExamplesTests(ClientTestCase):
    """docs/client.rst's examples print what the page says."""

    def test_examples_found(self) -> None:
        """The page has its examples, each with what it prints (a change of layout must not skip them)."""
        self.assertGreaterEqual(len(EXAMPLES), 8, [title for title, _, _ in EXAMPLES])

    def run_example(self, number: int) -> None:
        """Run example C{number} against a real node; it must print exactly what the page shows."""
        title, code, printed = EXAMPLES[number]
        cluster, address = self.start()
        status, out, err = self.script(cluster, code.replace(ADDRESS, address))
        if "does not know TASK_OUTPUT" in err:
            raise unittest.SkipTest(f"{title}: this node does not keep task output yet (TASK_OUTPUT)")
        self.assertEqual(status, 0, f"{title}\n{code}\nstdout: {out}\nstderr: {err}\n{cluster.logs()}")
        self.assertEqual(out.rstrip("\n"), printed.rstrip("\n"), f"{title}\n{code}\nstderr: {err}")
        self.assertNotIn("Traceback", err)


def _example_test(number: int) -> object:
    def test(self: DocsExamplesTests) -> None:
        self.run_example(number)

    test.__doc__ = f"docs/client.rst, {EXAMPLES[number][0]!r}: it prints what the page shows."
    return test


for _number in range(len(EXAMPLES)):
    setattr(DocsExamplesTests, f"test_example_{_number + 1}", _example_test(_number))


TWISTED_PROGRAM = """
import sys, threading
from twisted.internet import reactor, threads
from p2pexec.client import Client, ClientClosed

address = sys.argv[1]

def submit(word):
    with Client(address) as cluster:
        job = cluster.submit([{"id": "t", "kind": "sh", "command": ["echo", word]}])
        return job.wait()["t"].stdout.strip()

def main():
    try:
        Client(address)
    except ClientClosed as e:
        print("reactor thread:", e.message)
    d = threads.deferToThread(submit, "from-a-thread")
    d.addCallback(print)
    d.addErrback(lambda f: print("failed:", f.getErrorMessage()))
    d.addBoth(lambda _: reactor.stop())

reactor.callWhenRunning(main)
reactor.run()
"""

THREADS = """
import sys, threading
from p2pexec.client import Client

address = sys.argv[1]
outputs = {}

def submit(word):
    with Client(address) as cluster:
        job = cluster.submit([{"id": "t", "kind": "sh", "command": ["echo", word]}])
        outputs[word] = job.wait()["t"].stdout.strip()

threads = [threading.Thread(target=submit, args=(f"w{n}",)) for n in range(4)]
for each in threads:
    each.start()
for each in threads:
    each.join(20)
print(sorted(outputs.items()))
print([thread.name for thread in threading.enumerate() if thread.name == "p2pexec-reactor"])
"""


class BlockingClientTests(ClientTestCase):
    """The blocking client where the reactor is run by the program, and from several threads."""

    def test_program_runs_the_reactor(self) -> None:
        """
        In a program that runs the reactor in its main thread, a Client in
        the reactor's thread refuses at once (one line); one in another
        thread works on the program's reactor; the program ends normally.
        """
        cluster, address = self.start()
        status, out, err = self.script_with_argument(cluster, TWISTED_PROGRAM, address)
        self.assertEqual(status, 0, (out, err))
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertTrue(
            lines[0].startswith("reactor thread: the blocking Client cannot wait in the reactor's own thread")
        )
        self.assertEqual(lines[1], "from-a-thread")

    def test_threads(self) -> None:
        """Four threads, each with its own Client, at once: each gets its job's result; one reactor thread."""
        cluster, address = self.start()
        status, out, err = self.script_with_argument(cluster, THREADS, address)
        self.assertEqual(status, 0, (out, err))
        self.assertEqual(out.splitlines(), [str([(f"w{n}", f"w{n}") for n in range(4)]), "['p2pexec-reactor']"], err)

    def script_with_argument(self, cluster: Cluster, code: str, argument: str) -> tuple[int, str, str]:
        """Run C{code} with C{argument} as sys.argv[1]."""
        return self.script(cluster, f"import sys; sys.argv[1:] = [{argument!r}]\n" + code, timeout=20)
