"""
C{p2pexec fetch JOB [--into DIR]}: the output files of a job's tasks,
into C{DIR/JOB/TASK/PATH} (see L{p2pexec.client.fetching}); and the same
after C{submit --wait --fetch DIR} and C{run --fetch DIR}.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from p2pexec.cli.errors import EXIT_FAILED, EXIT_OK, PROG, CliError
from p2pexec.cli.render import for_stream
from p2pexec.client.fetching import PathRefused, Pull, fetch_outputs

if TYPE_CHECKING:
    from p2pexec.cli.commands import Context


def _size(count: int) -> str:
    """A byte count for people: C{12.5 MB}."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


async def fetch_into(ctx: Context, job: str, into: str, pull: Pull | None = None) -> int:
    """
    Fetch C{job}'s output files into C{into/JOB/}: a line on stderr per
    file that could not be fetched, then a summary line; L{EXIT_OK} if
    every file is there, L{EXIT_FAILED} if not.

    @raise CliError: for a job id or folder that cannot be used (exit 2).
    """
    try:
        summary = await fetch_outputs(ctx.node, job, into, pull)
    except PathRefused as e:
        raise CliError(str(e)) from None
    for problem in summary.problems:
        ctx.err.write(for_stream(ctx.err, f"{PROG}: {problem}") + "\n")
    where = os.path.join(into, job)
    if not (summary.files or summary.present or summary.problems):
        ctx.out.line(f"job {job}: no output files to fetch (no task result lists any)")
        return EXIT_OK
    line = f"job {job}: {summary.files} output file(s) fetched ({_size(summary.bytes)}) into {where}"
    if summary.present:
        line += f"; {summary.present} already there"
    if summary.problems:
        line += f"; {len(summary.problems)} could not be fetched"
    ctx.out.line(line)
    return EXIT_FAILED if summary.problems else EXIT_OK


async def do_fetch(ctx: Context, args: argparse.Namespace) -> int:
    """C{p2pexec fetch}: see L{fetch_into}."""
    return await fetch_into(ctx, args.job, args.into)


def add_fetch_parser(sub: argparse.ArgumentParser) -> None:
    """The arguments of C{p2pexec fetch}, on its subparser."""
    sub.add_argument("job", metavar="JOB", help="the job id")
    sub.add_argument(
        "--into",
        metavar="DIR",
        default=".",
        help="where the files go, as DIR/JOB/TASK/PATH (default: the current folder; made if missing)",
    )
