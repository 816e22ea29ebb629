"""
The C{p2pexec} command-line client: submit, follow, inspect and cancel jobs
on a running node, over the client AMP commands of L{p2pexec.commands}.

The node the client talks to (C{--connect HOST:PORT}) becomes the master of
what it submits; any node answers about any job (it asks the job's master).
While following a job (C{submit --wait}, C{run}, C{watch}) the client asks
another node it learned of when the connection to its node is lost.  The reference,
with every subcommand, option and exit status, is C{docs/cli.rst}.

The package has a module per job, from the outside in:

 - L{p2pexec.cli.parser}: the argparse parser and its checks;
 - L{p2pexec.cli.sources}, L{p2pexec.cli.replacements} and
   L{p2pexec.cli.runline}: C{run}'s GNU-parallel-style tail (input
   sources, replacement strings) and the tasks made of it;
 - L{p2pexec.cli.ended}, L{p2pexec.cli.output} and L{p2pexec.cli.joblog}:
   the tasks of a followed job as they end, printed as GNU parallel prints
   them and written to a joblog;
 - L{p2pexec.client}: the Python client the command is built on: one AMP
   connection to a node (authentication, TLS, the key found as below), the
   client commands over it (submit, pages of tasks, cancel, following a job
   through another node), and the one-line L{ClientError} every failure
   is; L{p2pexec.cli.client} keeps its connection names importable;
 - L{p2pexec.cli.render}: plain, rich and JSON output, and the escaping of
   what a node sent before it reaches a terminal;
 - L{p2pexec.cli.commands}: the subcommands, as coroutines over a
   L{Context} (the node, the output, a clock), so that tests can drive them
   with doubles;
 - L{p2pexec.cli.errors}: the exit statuses and L{CliError};
 - this module: L{main}, the console script, the only place that touches
   the global reactor, which it runs with L{twisted.internet.task.react}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.python.failure import Failure

from p2pexec.cli.client import ClientError, NodeClient
from p2pexec.cli.commands import SUBCOMMANDS, Context, job_tasks_from, key_command, placed_tasks
from p2pexec.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PROG, CliError
from p2pexec.cli.parser import parse_arguments
from p2pexec.cli.render import Output, for_stream, make_output
from p2pexec.client.keys import find_key, node_connector

__all__ = ["main", "run", "execute"]


async def execute(reactor: Any, args: argparse.Namespace, out: Output, stdin: TextIO, err: TextIO) -> int:
    """Read and check what must be, connect, and run the subcommand."""
    if args.command in ("submit", "run"):
        args.job_tasks = placed_tasks(job_tasks_from(args, stdin), args)
    key = find_key(args.host, args.port, args.key_file)
    if args.tls and not args.key_file:
        raise CliError("--tls needs --key-file: the node's certificate is checked through the cluster key")
    node = NodeClient(reactor, args.host, args.port, args.answer_timeout, key=key, tls=args.tls)
    await node.connect()
    opened = [node]
    # Another node, to follow a job through: the cluster key if given, else
    # that node's own local token if it is this user's.
    connect = node_connector(reactor, key if args.key_file else None, args.tls, args.answer_timeout, opened)

    try:
        return await SUBCOMMANDS[args.command](Context(node, out, reactor, err, connect=connect), args)
    finally:
        for each in opened:
            each.close()


def run(reactor: Any, work: Callable[[], Coroutine[Any, Any, int]], err: TextIO) -> int:
    """
    Run C{work} with L{task.react} on C{reactor} to its end, and return its
    exit status.

    A L{CliError} or a L{ClientError} is printed as one line on C{err}
    (escaped on a terminal: it may quote the node).  SIGINT (Ctrl-C) stops
    the reactor, which cancels C{work}, and gives L{EXIT_INTERRUPTED}.  A
    reader that went away (C{| head}) gives L{EXIT_FAILED}, quietly.
    Anything else is a bug, and raised with its traceback once the reactor
    has stopped.
    """
    finished = False
    bugs: list[Failure] = []

    async def main(reactor: Any) -> int:
        nonlocal finished
        work_done = defer.ensureDeferred(work())
        # react() stops the reactor on SIGINT but leaves the work running:
        # cancel it, so that it can say what it leaves behind.
        reactor.addSystemEventTrigger("before", "shutdown", work_done.cancel)
        try:
            status = await work_done
        except CliError as e:
            err.write(for_stream(err, f"{PROG}: {e.message}") + "\n")
            status = e.status
        except ClientError as e:
            err.write(for_stream(err, f"{PROG}: {e.message}") + "\n")
            status = EXIT_USAGE
        except defer.CancelledError:
            err.write(f"{PROG}: interrupted\n")
            status = EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, and don't let Python complain at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            status = EXIT_FAILED
        except GeneratorExit:
            # Closed, suspended, once the reactor has stopped: nothing to report.
            raise
        except BaseException:
            bugs.append(Failure())
            status = EXIT_FAILED
        finished = True
        # react() exits with the code of a SystemExit, and 0 for any result.
        raise SystemExit(int(status))

    try:
        task.react(main, _reactor=reactor)
    except SystemExit as e:
        code = e.code
    if bugs:
        bugs[0].raiseException()
    if not finished:
        # The reactor stopped, and the work ignored its cancellation.
        err.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """The C{p2pexec} console script; returns its exit status."""
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command in ("keygen", "token"):
        return key_command(args, sys.stdout, sys.stderr)
    out = make_output(sys.stdout, args.plain)
    from twisted.internet import reactor

    from p2pexec.clock import use_monotonic_time

    # The answer timeout and the polling pauses are intervals: a step of the wall clock must not move them.
    use_monotonic_time(reactor)
    return run(reactor, lambda: execute(reactor, args, out, sys.stdin, sys.stderr), sys.stderr)
