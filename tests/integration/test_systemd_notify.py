"""
Integration test of C{Type=notify} and C{WatchdogSec=} support: a real
C{twistd p2pexec} process talks to a notify socket this test binds, as
systemd would.

Like the other integration tests it is synchronous on purpose: it drives
another process and polls a socket, every wait bounded by the cluster's
deadline.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable

from twisted.trial import unittest

from p2pexec.systemd import without_notify_variables
from tests.integration.cluster import Cluster, ClusterFailure, Deadline, tail


class NotifyingCluster(Cluster):
    """A L{Cluster} whose nodes run with systemd's notify variables set to C{notify}."""

    def __init__(self, testcase: unittest.TestCase, notify: dict[str, str]) -> None:
        super().__init__(testcase)
        self._notify = notify

    def environment(self) -> dict[str, str]:
        """The usual environment, without the notify variables of whatever runs the tests, plus ours."""
        return dict(without_notify_variables(super().environment()), **self._notify)


class NotifySocket:
    """The systemd end: a datagram socket bound in a temporary folder, read without blocking."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        # Not testcase.mktemp(): a socket path is limited to 108 bytes.
        folder = tempfile.mkdtemp(prefix="p2pexec-notify-")
        testcase.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.socket.close)
        self.socket.bind(self.path)
        self.socket.setblocking(False)
        self.messages: list[str] = []

    def read(self, timeout: float) -> None:
        """Wait up to C{timeout} seconds for datagrams and keep every one that has arrived."""
        readable, _, _ = select.select([self.socket], [], [], timeout)
        while readable:
            try:
                self.messages.append(self.socket.recv(65536).decode("utf-8"))
            except BlockingIOError:
                return

    def count(self, message: str) -> int:
        """How many datagrams so far were exactly C{message}."""
        return self.messages.count(message)

    def with_line(self, line: str) -> list[str]:
        """The datagrams so far that have C{line} as one of their lines."""
        return [m for m in self.messages if line in m.split("\n")]


class NotifyTests(unittest.TestCase):
    """A node under a pretend systemd: READY=1, WATCHDOG=1, STOPPING=1 and a clean exit."""

    def test_ready_watchdog_stopping(self) -> None:
        """
        Started with NOTIFY_SOCKET and WATCHDOG_USEC=400000, a node sends
        READY=1 naming itself, its address and its pid once it serves, and
        WATCHDOG=1 every 0.2 s; its task does not see the notify variables.
        SIGTERM makes it send STOPPING=1 and exit 0.
        """
        receiver = NotifySocket(self)
        cluster = NotifyingCluster(self, {"NOTIFY_SOCKET": receiver.path, "WATCHDOG_USEC": "400000"})
        seen = cluster.path("task-environment.json")
        job = cluster.path("job.toml")
        script = "import json, os, sys; json.dump({k: os.environ.get(k) for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"
        command = [sys.executable, "-c", script, seen, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]
        with open(job, "w", encoding="utf-8") as f:
            # A JSON array of strings is a TOML array.
            f.write(f'[[task]]\nid = "env"\nkind = "w"\ncommand = {json.dumps(command)}\n')
        node = cluster.start("n1", "--no-multicast", "--capabilities", "w", "--job", job)
        deadline = Deadline(cluster.deadline.bound(15.0))

        def wait(condition: str, done: Callable[[], object]) -> None:
            while not done():
                if not node.running():
                    raise ClusterFailure(
                        f"node n1 exited with status {node.process.returncode} before {condition}; "
                        f"messages {receiver.messages!r}; log ends with:\n{node.log_tail()}"
                    )
                if deadline.remaining() <= 0:
                    raise ClusterFailure(
                        f"no {condition} within {deadline.seconds:.1f}s; messages {receiver.messages!r}; "
                        f"log ends with:\n{node.log_tail()}"
                    )
                receiver.read(deadline.bound(0.05))

        wait("READY=1 and two WATCHDOG=1", lambda: receiver.with_line("READY=1") and receiver.count("WATCHDOG=1") >= 2)
        self.assertEqual(
            receiver.with_line("READY=1"),
            [f"READY=1\nSTATUS=node n1 serving on 127.0.0.1:{node.port}\nMAINPID={node.pid}"],
        )
        self.assertEqual(receiver.with_line("STOPPING=1"), [])
        node.wait_for(r"\] Job \S+ finished: 1 succeeded, 0 failed")
        with open(seen, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"NOTIFY_SOCKET": None, "WATCHDOG_USEC": None, "WATCHDOG_PID": None})

        node.send_signal(signal.SIGTERM)
        wait("STOPPING=1", lambda: receiver.with_line("STOPPING=1"))
        self.assertEqual(node.wait_exit(), 0, node.log_tail())
        receiver.read(0)
        self.assertEqual(receiver.with_line("STOPPING=1"), ["STOPPING=1\nSTATUS=node n1 leaving the cluster"])
        for pattern in ("Traceback", "Unhandled", "Could not notify systemd"):
            self.assertFalse(node.has(pattern), f"log has {pattern!r}:\n{tail(node.log_text(), 80)}")
