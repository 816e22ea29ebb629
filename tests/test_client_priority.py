"""
Tests for a job's priority through L{p2pexec.client} (issue 15): the
C{priority} argument of L{AsyncClient.submit} and L{Client.submit}, and a job
file's C{[job] priority}, reach the master node on the in-memory network.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import client
from p2pexec.client.blocking import Client
from tests.test_client import OnANode, tasks

T = TypeVar("T")


def job_file(test: SynchronousTestCase, text: str) -> str:
    """A job file holding C{text}, removed at the end of the test."""
    handle, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(handle, "w") as f:
        f.write(text)
    test.addCleanup(os.remove, path)
    return path


TWO_TASKS = """
[[task]]
id = "t1"
kind = "a"
command = ["true"]

[[task]]
id = "t2"
kind = "a"
command = ["true"]
"""


class SubmitPriorityTests(SynchronousTestCase):
    """AsyncClient.submit sends the job's priority; the master runs the job at it."""

    def priority_on_node(self, on: OnANode, job: client.JobRef) -> int:
        """The priority of C{job} in the master's memory, checked against its JOB_STATUS summary."""
        held: int = on.node.master.jobs[job.id].priority
        connected = on.client()
        self.assertEqual(on.result(connected.status(job)).raw["priority"], held)
        return held

    def test_priority_argument(self) -> None:
        """submit(tasks, priority=7): the node holds the job at priority 7; without it, at 0."""
        on = OnANode(self)
        connected = on.client()
        high = on.result(connected.submit(tasks("t1"), priority=7))
        plain = on.result(connected.submit(tasks("t2")))
        negative = on.result(connected.submit(tasks("t3"), priority=-1_000_000))
        self.assertEqual(self.priority_on_node(on, high), 7)
        self.assertEqual(self.priority_on_node(on, plain), 0)
        self.assertEqual(self.priority_on_node(on, negative), -1_000_000)

    def test_job_file_priority(self) -> None:
        """A job file's [job] priority is sent; a priority argument overrides it, as --priority does."""
        on = OnANode(self)
        connected = on.client()
        path = job_file(self, "[job]\npriority = 5\n" + TWO_TASKS)
        from_file = on.result(connected.submit(path))
        overridden = on.result(connected.submit(path, priority=-3))
        zero = on.result(connected.submit(path, priority=0))
        self.assertEqual(self.priority_on_node(on, from_file), 5)
        self.assertEqual(self.priority_on_node(on, overridden), -3)
        self.assertEqual(self.priority_on_node(on, zero), 0)

    def test_bad_priority(self) -> None:
        """
        A priority that is not a whole number within +-1,000,000 is refused
        before anything is sent, in the words of `p2pexec submit --priority`.
        """
        on = OnANode(self)
        connected = on.client()
        for bad in ["10", 2.5, True, 1_000_001, -1_000_001]:
            failure = self.failureResultOf(
                on.settle(connected.submit(tasks("t1"), priority=bad)),  # type: ignore[arg-type]
                client.JobRefused,
            )
            self.assertEqual(
                failure.value.message, f"priority: expected a whole number from -1000000 to 1000000, not {bad!r}"
            )
        self.assertEqual(on.node.master.jobs, {})

    def test_bad_job_file_priority(self) -> None:
        """A job file whose [job] priority is bad is refused, naming the file and the field."""
        on = OnANode(self)
        connected = on.client()
        path = job_file(self, '[job]\npriority = "high"\n' + TWO_TASKS)
        failure = self.failureResultOf(on.settle(connected.submit(path, priority=1)), client.JobRefused)
        self.assertIn(path, failure.value.message)
        self.assertIn("'priority' must be a whole number", failure.value.message)
        self.assertEqual(on.node.master.jobs, {})


class NetworkBridge:
    """A double of the blocking client's bridge to the reactor's thread: runs each call on the in-memory network."""

    def __init__(self, on: OnANode) -> None:
        self.on = on

    def wait(self, start: Callable[[], Deferred[T]]) -> T:
        """Start the operation and run the network until it fires: its result, or its failure raised."""
        outcomes: list[T] = []
        d = self.on.settle(start())
        d.addCallback(outcomes.append)
        if not outcomes:
            self.on.test.failureResultOf(d).raiseException()
        return outcomes[0]


class BlockingSubmitPriorityTests(SynchronousTestCase):
    """Client.submit passes the priority (and a job file's) on to the AsyncClient."""

    def blocking(self, on: OnANode) -> Client:
        """A blocking Client over a connected AsyncClient, its reactor thread replaced by L{NetworkBridge}."""
        made = Client.__new__(Client)
        made._client = on.client()
        made._bridge = NetworkBridge(on)  # type: ignore[assignment]
        made.address = made._client.address
        return made

    def test_priority_argument(self) -> None:
        """Client.submit(tasks, priority=9) and Client.submit(path): the node holds each job at its priority."""
        on = OnANode(self)
        cluster = self.blocking(on)
        job = cluster.submit(tasks("t1"), priority=9)
        from_file = cluster.submit(job_file(self, "[job]\npriority = 4\n" + TWO_TASKS))
        self.assertEqual(on.node.master.jobs[job.id].priority, 9)
        self.assertEqual(on.node.master.jobs[from_file.id].priority, 4)

    def test_bad_priority(self) -> None:
        """Client.submit raises JobRefused for a bad priority."""
        on = OnANode(self)
        cluster = self.blocking(on)
        with self.assertRaises(client.JobRefused) as caught:
            cluster.submit(tasks("t1"), priority=2_000_000)
        self.assertIn("from -1000000 to 1000000, not 2000000", caught.exception.message)
