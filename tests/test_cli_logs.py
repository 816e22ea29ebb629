"""
Tests for C{p2pexec logs} (L{p2pexec.cli.logs.print_output}) over a
scripted node that fails as the real client does (L{p2pexec.client}'s
errors, not AMP's).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import errors
from p2pexec.cli.logs import FOLLOW_INTERVAL, print_output
from p2pexec.client import errors as client_errors
from tests.cli_doubles import Harness


def answer(data: bytes, offset: int = 0, ended: bool = True) -> dict[str, Any]:
    """A TASK_OUTPUT answer holding all that is kept."""
    return {
        "data": data,
        "next_offset": offset + len(data),
        "size": offset + len(data),
        "ended": ended,
        "cut": False,
        "attempt": 1,
        "node": "w1",
    }


class LogsTests(SynchronousTestCase):
    """logs: a task not started yet, output gone, an unknown task."""

    def logs(self, script: list[Any], follow: bool) -> tuple[Any, bytes, Harness]:
        """Run print_output over C{script}, the clock moved on; its Deferred's result or failure, and the bytes out."""
        harness = Harness({commands.TaskOutput: script})
        out = io.BytesIO()
        d = harness.start(lambda ctx, _: print_output(ctx, "j-1", "t1", "stdout", follow, out), None)
        for _ in range(5):
            harness.clock.advance(FOLLOW_INTERVAL)
        results: list[Any] = []
        d.addBoth(results.append)
        return results[0], out.getvalue(), harness

    def test_follow_waits_for_a_task_not_started(self) -> None:
        """With --follow, a task that has not started is waited for, then printed."""
        not_yet = client_errors.OutputNotReady("no output yet: task t1 has not started")
        result, out, _ = self.logs([not_yet, not_yet, answer(b"hi\n")], follow=True)
        self.assertEqual((result, out), (errors.EXIT_OK, b"hi\n"))

    def test_not_started_without_follow(self) -> None:
        """Without --follow, a task not started is one line, exit 1, that says to follow it."""
        not_yet = client_errors.OutputNotReady("no output yet: task t1 has not started")
        result, _, _ = self.logs([not_yet], follow=False)
        result.trap(errors.CliError)
        self.assertEqual(result.value.status, errors.EXIT_FAILED)
        self.assertEqual(result.value.message, "no output yet: task t1 has not started; follow it with --follow")

    def test_gone(self) -> None:
        """Output the worker no longer has: one line naming the task and job, exit 1."""
        gone = client_errors.OutputGone("the output is gone: worker w1 left")
        result, _, _ = self.logs([gone], follow=False)
        result.trap(errors.CliError)
        self.assertEqual(result.value.status, errors.EXIT_FAILED)
        self.assertEqual(result.value.message, "the output of task t1 of job j-1 is gone: worker w1 left")

    def test_unknown_task(self) -> None:
        """An unknown task: one line, exit 2."""
        unknown = client_errors.TaskNotFound("unknown task: job j-1 has no task 't1'")
        result, _, _ = self.logs([unknown], follow=True)
        result.trap(errors.CliError)
        self.assertEqual((result.value.status, result.value.message), (2, "unknown task: job j-1 has no task 't1'"))
