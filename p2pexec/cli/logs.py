"""
C{p2pexec logs JOB TASK}: a task's full standard output (or, with
C{--stderr}, error), byte for byte, read in pieces with TASK_OUTPUT; with
C{--follow}, as the task writes it, until it ends.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet.task import deferLater

from p2pexec import commands
from p2pexec.cli.errors import EXIT_FAILED, EXIT_OK, CliError
from p2pexec.client.errors import OutputGone, OutputNotReady, TaskNotFound

if TYPE_CHECKING:
    from p2pexec.cli.commands import Context

FOLLOW_INTERVAL = 0.25
"""Seconds between two TASK_OUTPUT questions while following a task that has written nothing new."""


async def print_output(ctx: Context, job: str, task: str, stream: str, follow: bool, out: BinaryIO) -> int:
    """
    Write the kept C{stream} of C{task}'s newest attempt to C{out}: what is
    kept now, or with C{follow} everything until the attempt ends.

    @raise CliError: for an unknown task (exit 2), output that is gone or
        not there yet without C{follow} (exit 1).
    """
    offset = 0
    attempt: int | None = None
    while True:
        # The node's errors, as the client turns them (TaskNotFound, ...) or as AMP raises them.
        try:
            answer = await ctx.node.call(commands.TaskOutput, job=job, task=task, stream=stream, offset=offset)
        except (commands.UnknownTask, TaskNotFound) as e:
            raise CliError(f"unknown task: {_reason(e, 'unknown task: ')}") from None
        except (commands.NotStarted, OutputNotReady) as e:
            if not follow or offset:
                raise CliError(
                    f"no output yet: {_reason(e, 'no output yet: ')}; follow it with --follow", EXIT_FAILED
                ) from None
            await deferLater(ctx.clock, FOLLOW_INTERVAL, lambda: None)
            continue
        except (commands.OutputGone, OutputGone) as e:
            raise CliError(
                f"the output of task {task} of job {job} is gone: {_reason(e, 'the output is gone: ')}", EXIT_FAILED
            ) from None
        if attempt is None:
            attempt = answer["attempt"]
        elif answer["attempt"] != attempt:
            # The attempt followed ended unseen and the task runs again.
            ctx.err.write(
                f"p2pexec: attempt {attempt} of task {task} ended and attempt {answer['attempt']} started; "
                f"run p2pexec logs again for it\n"
            )
            return EXIT_FAILED
        if answer["data"]:
            out.write(answer["data"])
            out.flush()
        offset = answer["next_offset"]
        if offset < answer["size"]:
            continue
        if not follow or answer["ended"]:
            return EXIT_OK
        await deferLater(ctx.clock, FOLLOW_INTERVAL, lambda: None)


def _reason(error: Exception, prefix: str) -> str:
    """What the node said, without the C{prefix} the client put before it."""
    text = str(error)
    return text[len(prefix) :] if text.startswith(prefix) else text


async def do_logs(ctx: Context, args: argparse.Namespace) -> int:
    """C{p2pexec logs}: see L{print_output}; the bytes go to standard output as they are."""
    stream = "stderr" if args.stderr else "stdout"
    return await print_output(ctx, args.job, args.task, stream, args.follow, sys.stdout.buffer)


def add_logs_parser(sub: argparse.ArgumentParser) -> None:
    """The arguments of C{p2pexec logs}, on its subparser."""
    sub.add_argument("job", metavar="JOB", help="the job id")
    sub.add_argument("task", metavar="TASK", help="the task id")
    sub.add_argument(
        "-f", "--follow", action="store_true", help="print the output as the task writes it, until the task ends"
    )
    sub.add_argument("--stderr", action="store_true", help="the task's standard error instead of its standard output")
