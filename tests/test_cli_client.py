"""
Tests for L{p2pexec.cli.client}: C{--connect} addresses, and the one-line
L{p2pexec.cli.client.ClientError} every failure of a command becomes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.testing import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import client


class AddressTests(SynchronousTestCase):
    """--connect values, and what a failed connection says."""

    def test_forms(self) -> None:
        """HOST:PORT, HOST alone (port 10001) and [IPV6]:PORT."""
        self.assertEqual(client.parse_address("10.0.0.5:10002"), ("10.0.0.5", 10002))
        self.assertEqual(client.parse_address("node-7.lab"), ("node-7.lab", 10001))
        self.assertEqual(client.parse_address("[::1]:7"), ("::1", 7))
        self.assertEqual(client.parse_address("[::1]"), ("::1", 10001))
        self.assertEqual(client.format_address("::1", 7), "[::1]:7")
        self.assertEqual(client.format_address("h", 7), "h:7")

    def test_refusals(self) -> None:
        """Bad values raise ValueError saying what is wrong."""
        for text, fragment in [
            (":10001", "HOST:PORT"),
            ("h:0", "1 to 65535"),
            ("h:x", "1 to 65535"),
            ("::1", "brackets"),
            ("[::1", "closing"),
            ("[::1]x", "HOST:PORT"),
        ]:
            with self.assertRaises(ValueError) as raised:
                client.parse_address(text)
            self.assertIn(fragment, str(raised.exception), text)

    def test_connect_failure_reasons(self) -> None:
        """Connection failures are said in a few words, not as exception reprs."""
        self.assertEqual(client.connect_failure_reason(error.ConnectionRefusedError()), "connection refused")
        self.assertEqual(client.connect_failure_reason(error.TimeoutError()), "timed out")
        self.assertEqual(client.connect_failure_reason(error.DNSLookupError("x")), "host name not found")
        self.assertEqual(client.connect_failure_reason(error.NoRouteError()), "no route to host")
        self.assertEqual(client.connect_failure_reason(ValueError("Something odd.")), "something odd")


class FakeProtocol:
    """Stands for the AMP connection of a L{p2pexec.cli.client.NodeClient}: callRemote gives a scripted Deferred."""

    def __init__(self, result: defer.Deferred[Any]) -> None:
        self.result = result
        self.transport = None

    def callRemote(self, command: type, **arguments: Any) -> defer.Deferred[Any]:
        """The scripted result, whatever the command."""
        return self.result


class NodeClientTests(SynchronousTestCase):
    """Every failure of a command becomes one line naming the address."""

    def call(self, result: defer.Deferred[Any], clock: Clock | None = None) -> defer.Deferred[Any]:
        """Call C{JOB_STATUS} through a L{p2pexec.cli.client.NodeClient} whose connection answers with C{result}."""
        node = client.NodeClient(clock or Clock(), "127.0.0.1", 10001, timeout=5)
        node._protocol = FakeProtocol(result)  # type: ignore[assignment]
        return defer.ensureDeferred(node.call(commands.JobStatus, job="j"))

    def message(self, result: defer.Deferred[Any], clock: Clock | None = None) -> str:
        """The message of the L{p2pexec.cli.client.ClientError} the call fails with (after the timeout, given a C{clock})."""
        d = self.call(result, clock)
        if clock is not None:
            clock.advance(5)
        return str(self.failureResultOf(d, client.ClientError).value.message)

    def test_answer(self) -> None:
        """An answer comes back as it is."""
        self.assertEqual(self.successResultOf(self.call(defer.succeed({"status": {}}))), {"status": {}})

    def test_errors(self) -> None:
        """Declared errors, unknown ones and a lost connection: one line each."""
        self.assertEqual(
            self.message(defer.fail(commands.UnknownJob("node a1 is not the master of job 'j'"))),
            "unknown job: node a1 is not the master of job 'j'",
        )
        self.assertEqual(
            self.message(defer.fail(commands.BadJob("task #1: bad"))),
            "the node at 127.0.0.1:10001 refused the job: task #1: bad",
        )
        self.assertEqual(
            self.message(defer.fail(Failure(error.ConnectionLost("Connection to the other side was lost.")))),
            "lost the connection to 127.0.0.1:10001: it was reset or dropped",
        )
        self.assertEqual(
            self.message(defer.fail(Failure(error.ConnectionDone()))),
            "lost the connection to 127.0.0.1:10001: the node closed it",
        )
        self.assertIn(
            "answered JOB_STATUS with an error", self.message(defer.fail(commands.BadArguments("JOB_STATUS: bad")))
        )
        self.assertEqual(
            self.message(defer.fail(commands.ShuttingDown("node a1 is shutting down and takes no new jobs"))),
            "the node at 127.0.0.1:10001 is shutting down: node a1 is shutting down and takes no new jobs",
        )

    def test_timeout(self) -> None:
        """No answer within the timeout: one line naming the command and the timeout."""
        self.assertEqual(
            self.message(defer.Deferred(), Clock()), "no answer from 127.0.0.1:10001 to JOB_STATUS within 5s"
        )

    def test_lost(self) -> None:
        """A closed, reset or silent connection is marked lost (another node may be asked); a refusal is not."""

        def lost(result: defer.Deferred[Any], clock: Clock | None = None) -> bool:
            d = self.call(result, clock)
            if clock is not None:
                clock.advance(5)
            return bool(self.failureResultOf(d, client.ClientError).value.lost)

        self.assertTrue(lost(defer.fail(Failure(error.ConnectionLost()))))
        self.assertTrue(lost(defer.fail(Failure(error.ConnectionDone()))))
        self.assertTrue(lost(defer.Deferred(), Clock()))
        self.assertFalse(lost(defer.fail(commands.UnknownJob("node a1 is not the master of job 'j'"))))
