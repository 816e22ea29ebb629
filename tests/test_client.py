"""
Tests for the Twisted API of L{p2pexec.client} (L{p2pexec.client.connect},
L{p2pexec.client.AsyncClient}) against real nodes on the in-memory network
of L{p2pexec.testing.network}: their real AMP responders, authentication and
job handling, with simulated sockets, processes and time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import client
from p2pexec.model import FAILED, SUCCEEDED, TaskSpec
from p2pexec.node import NodeConfig, create_node
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

T = TypeVar("T")

KEY = bytes(range(32))


class OnANode:
    """A real node a1 (kind a, one slot) on a L{FakeNetwork}, and clients of it from another host."""

    def __init__(self, test: SynchronousTestCase, key: bytes | None = None, duration: float = 1.0) -> None:
        # No runtime record of a real node of this user's must be found.
        state = tempfile.mkdtemp()
        test.addCleanup(os.rmdir, state)
        test.patch(os, "environ", dict(os.environ, XDG_STATE_HOME=state))
        self.test = test
        self.network = FakeNetwork()
        self.host = self.network.host("127.0.0.1")
        self.runner = FakeRunner(self.host, "a1", duration=duration, outcome=self.outcome)
        self.node = create_node(
            NodeConfig(name="a1", interface="127.0.0.1", port=10001, capabilities=frozenset({"a"}), slots=1, key=key),
            self.host,
            self.runner,
        )
        self.node.start()
        self.client_host = self.network.host("127.0.0.9")

    @staticmethod
    def outcome(assignment: Any) -> tuple[str, int]:
        """Tasks whose id starts with C{bad} fail with exit code 3; the others succeed."""
        return (FAILED, 3) if assignment.task.id.startswith("bad") else (SUCCEEDED, 0)

    def connect(self, **options: Any) -> Deferred[client.AsyncClient]:
        """Start connecting a client to a1."""
        endpoint = TCP4ClientEndpoint(self.client_host, "127.0.0.1", 10001)
        return client.connect(self.client_host, "127.0.0.1:10001", endpoint=endpoint, **options)

    def settle(self, d: Deferred[T], limit: float = 60.0) -> Deferred[T]:
        """Run the network until C{d} fires (within C{limit} simulated seconds)."""
        self.network.run_until(lambda: d.called, limit=limit)
        return d

    def result(self, d: Deferred[T], limit: float = 60.0) -> T:
        """Run the network until C{d} fires, and give its result."""
        return self.test.successResultOf(self.settle(d, limit))

    def collect(self, iterator: Callable[[], AsyncIterator[T]]) -> Deferred[list[tuple[float, T]]]:
        """Consume an async iterator, noting the simulated time of each item."""

        async def consume() -> list[tuple[float, T]]:
            return [(self.network.seconds(), item) async for item in iterator()]

        return Deferred.fromCoroutine(consume())

    def client(self, **options: Any) -> client.AsyncClient:
        """A connected client, closed at the end of the test."""
        connected = self.result(self.connect(**options))
        self.test.addCleanup(connected.close)
        return connected


def tasks(*ids: str) -> list[dict[str, Any]]:
    """Job-file task objects of kind a."""
    return [{"id": task, "kind": "a", "command": ["echo", task]} for task in ids]


class AsyncClientTests(SynchronousTestCase):
    """Submit, follow, inspect and cancel through the Twisted API."""

    def test_results_as_they_complete(self) -> None:
        """
        results() gives each task's typed result as it ends, one at a time
        (one slot, one second each), then stops with the job.
        """
        on = OnANode(self)
        connected = on.client()
        job = on.result(connected.submit(tasks("t1", "bad2", "t3")))
        self.assertEqual((job.address, job.tasks), ("127.0.0.1:10001", 3))
        got = on.result(on.collect(lambda: connected.results(job)))
        results = [result for _, result in got]
        self.assertEqual(sorted(result.id for result in results), ["bad2", "t1", "t3"])
        times = [when for when, _ in got]
        self.assertEqual(len(set(times)), 3, f"results came together, not as they ended: {times}")
        by_id = {result.id: result for result in results}
        self.assertEqual((by_id["t1"].status, by_id["t1"].exit_code, by_id["t1"].node), (SUCCEEDED, 0, "a1"))
        self.assertEqual((by_id["bad2"].status, by_id["bad2"].exit_code, by_id["bad2"].state), (FAILED, 3, "failed"))
        self.assertEqual(by_id["t3"].attempt, 1)
        self.assertEqual(by_id["t3"].duration, 1.0)
        self.assertTrue(by_id["t1"].succeeded and not by_id["bad2"].succeeded)

    def test_watch_and_wait(self) -> None:
        """
        watch() gives statuses as progress changes and results as tasks
        end, the final status last; wait() gives the final JobResult.
        """
        on = OnANode(self)
        connected = on.client()
        job = on.result(connected.submit([TaskSpec(id="t1", kind="a", command=("true",)), *tasks("bad2")]))
        events = [event for _, event in on.result(on.collect(lambda: connected.watch(job.id)))]
        final = events[-1]
        assert isinstance(final, client.JobStatus)
        self.assertEqual((final.state, final.done, final.total), ("finished", 2, 2))
        self.assertEqual(final.counts["failed"], 1)
        self.assertFalse(final.succeeded)
        ended = [event.id for event in events if isinstance(event, client.TaskResult)]
        self.assertEqual(sorted(ended), ["bad2", "t1"])
        statuses = [event for event in events if isinstance(event, client.JobStatus)]
        self.assertEqual([status.done for status in statuses], sorted(status.done for status in statuses))
        outcome = on.result(connected.wait(job))
        self.assertEqual(outcome.id, job.id)
        self.assertFalse(outcome.succeeded)
        self.assertEqual([task.id for task in outcome.failed], ["bad2"])
        self.assertEqual(outcome["t1"].status, SUCCEEDED)

    def test_result_now_and_cancel(self) -> None:
        """result() answers at once, without waiting; cancel() stops the job and says how many tasks it cancelled."""
        on = OnANode(self, duration=100.0)
        connected = on.client()
        job = on.result(connected.submit(tasks("t1", "t2", "t3")))
        on.network.run(1.0)
        now = on.result(connected.result(job))
        self.assertEqual(now.status.state, "running")
        self.assertEqual([task.ended for task in now.tasks], [False, False, False])
        self.assertEqual(on.result(connected.cancel(job)), 3)
        status = on.result(connected.status(job))
        self.assertEqual((status.state, status.counts["cancelled"]), ("cancelled", 3))
        self.assertIn(job.id, [each.id for each in on.result(connected.jobs())])

    def test_unknown_job(self) -> None:
        """A job no node knows: JobNotFound, one line."""
        on = OnANode(self)
        connected = on.client()
        failure = self.failureResultOf(on.settle(connected.status("nope-1")), client.JobNotFound)
        self.assertIn("unknown job", failure.value.message)
        self.assertNotIn("\n", failure.value.message)

    def test_bad_job(self) -> None:
        """A job the node refuses (a repeated task id): JobRefused naming what is wrong."""
        on = OnANode(self)
        connected = on.client()
        failure = self.failureResultOf(on.settle(connected.submit(tasks("t1", "t1"))), client.JobRefused)
        self.assertIn("refused the job", failure.value.message)
        self.assertIn("t1", failure.value.message)

    def test_keys(self) -> None:
        """With a cluster key: the right key works, a wrong one fails to connect, none is refused."""
        on = OnANode(self, key=KEY)
        connected = on.client(key=KEY)
        self.assertEqual(len(on.result(connected.submit(tasks("t1"))).id.split("-")), 3)
        wrong = self.failureResultOf(on.settle(on.connect(key=bytes(32))), client.AuthenticationFailed)
        self.assertIn("do not match", wrong.value.message)
        keyless = on.client()
        refused = self.failureResultOf(on.settle(keyless.submit(tasks("t2"))), client.ClientError)
        self.assertIn("give --key-file", refused.value.message)

    def test_connect_failures(self) -> None:
        """A bad address, a missing key file, and TLS without a key: each a ClientError subclass, one line."""
        on = OnANode(self)
        bad = self.failureResultOf(client.connect(on.client_host, "h:x"), client.BadAddress)
        self.assertIn("1 to 65535", bad.value.message)
        missing = self.failureResultOf(client.connect(on.client_host, "h:1", key_file="/nonexistent/key"))
        self.assertIsInstance(missing.value, client.ClientError)
        self.assertIn("/nonexistent/key", missing.value.message)
        tls = self.failureResultOf(client.connect(on.client_host, "h:1", tls=True), client.ClientError)
        self.assertIn("--tls needs", tls.value.message)
