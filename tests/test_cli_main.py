"""
Tests for L{p2pexec.cli.run}, which runs a subcommand with
L{twisted.internet.task.react}: the status L{p2pexec.cli.main} returns, and
what reaches stderr.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import cli
from p2pexec.cli import client, errors
from tests.cli_doubles import FakeReactor


class RunTests(SynchronousTestCase):
    """The status main() returns, and what reaches stderr."""

    def run_work(self, work: Any) -> tuple[int, str]:
        """Run C{work} with L{cli.run} on a L{FakeReactor}: its status and what it wrote to stderr."""
        err = io.StringIO()
        return cli.run(FakeReactor(), work, err), err.getvalue()

    def test_status(self) -> None:
        """The work's status is the exit status; nothing is printed."""

        async def work() -> int:
            return 1

        self.assertEqual(self.run_work(work), (1, ""))

    def test_cli_error(self) -> None:
        """A CliError is one line on stderr, with its status."""

        async def work() -> int:
            raise errors.CliError("cannot connect to 127.0.0.1:1: connection refused")

        self.assertEqual(self.run_work(work), (2, "p2pexec: cannot connect to 127.0.0.1:1: connection refused\n"))

    def test_interrupted(self) -> None:
        """Stopping the reactor before the work ends (Ctrl-C) cancels it: 130."""

        async def work() -> int:
            await defer.Deferred()
            return 0

        self.assertEqual(self.run_work(work), (130, "p2pexec: interrupted\n"))

    def test_bug(self) -> None:
        """Anything else is a bug, raised with its traceback."""

        async def work() -> int:
            raise ZeroDivisionError()

        self.assertRaises(ZeroDivisionError, self.run_work, work)

    def test_client_error(self) -> None:
        """A ClientError from the connection is one line on stderr, with the usage status 2."""

        async def work() -> int:
            raise client.ClientError("no answer from 127.0.0.1:1 to JOB_STATUS within 5s")

        self.assertEqual(self.run_work(work), (2, "p2pexec: no answer from 127.0.0.1:1 to JOB_STATUS within 5s\n"))

    def test_success_is_zero(self) -> None:
        """A status of 0 is returned as 0 (react() would exit 0 for any result)."""

        async def work() -> int:
            return 0

        self.assertEqual(self.run_work(work), (0, ""))

    def test_status_once_the_reactor_runs(self) -> None:
        """Work that ends only once the reactor runs gives its status, and the reactor stops."""
        reactor = FakeReactor()

        async def work() -> int:
            started: defer.Deferred[int] = defer.Deferred()
            reactor.callWhenRunning(started.callback, 3)
            return await started

        err = io.StringIO()
        self.assertEqual(cli.run(reactor, work, err), 3)
        self.assertEqual(err.getvalue(), "")
        self.assertTrue(reactor.stopped)

    def test_interrupted_work_that_ignores_cancellation(self) -> None:
        """Work that swallows its cancellation still ends with 130 once the reactor has stopped."""

        async def work() -> int:
            try:
                await defer.Deferred()
            except defer.CancelledError:
                await defer.Deferred()
            return 0

        self.assertEqual(self.run_work(work), (130, "p2pexec: interrupted\n"))

    def test_interrupted_work_is_cancelled(self) -> None:
        """Stopping the reactor cancels the work, which can say what it leaves (as watch does)."""
        said: list[str] = []

        async def work() -> int:
            try:
                await defer.Deferred()
            except defer.CancelledError:
                said.append("stopped following")
                raise
            return 0

        self.assertEqual(self.run_work(work), (130, "p2pexec: interrupted\n"))
        self.assertEqual(said, ["stopped following"])
