"""
The command line of C{p2pexec}: its argparse parser, with every subcommand,
option and help text, and the checks argparse cannot make (L{parse_arguments}).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from p2pexec import __version__
from p2pexec.cli.client import DEFAULT_TIMEOUT, parse_address
from p2pexec.cli.errors import EXIT_USAGE, PROG
from p2pexec.cli.fetch import add_fetch_parser
from p2pexec.cli.logs import add_logs_parser
from p2pexec.cli.sources import split_run_line
from p2pexec.model import MAX_PRIORITY, ValidationError, validate_name
from p2pexec.resources import run_request

DEFAULT_CONNECT = "127.0.0.1:10001"
"""The node the client talks to unless told otherwise (C{--connect}, C{$P2PEXEC_CONNECT})."""


def parse_env(values: Sequence[str]) -> dict[str, str]:
    """C{NAME=VALUE} words as a dict; raises L{ValueError} for a word without C{=} or a name."""
    env = {}
    for value in values:
        name, equals, text = value.partition("=")
        if not equals or not name:
            raise ValueError(f"expected NAME=VALUE, not {value!r}")
        env[name] = text
    return env


_DESCRIPTION = """\
The command-line client of p2pexec: it talks to a running node over AMP.
The node it talks to becomes the master of the jobs it submits, and knows
only the jobs it is master of.

exit status:
  0  every task succeeded (or the command did what it was asked)
  1  some task failed, timed out, could not run, was cancelled or skipped, or has no result yet
  2  usage error, bad job file or job, unknown job, or no connection to the node
"""

_EXAMPLES = """\
examples:
  p2pexec submit --wait jobs.toml
  p2pexec submit --tasks a1,a2,b1
  p2pexec run --kind sh -- gzip -k {} ::: *.log
  p2pexec run --kind sh -k --tag -- echo {1}-{2} ::: a b ::: 1 2
  p2pexec watch a1-31f91af8-1
  p2pexec --connect 10.0.0.5:10001 status
  p2pexec result --json a1-31f91af8-1

See docs/cli.rst for the full reference.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, not {text!r}")
    return value


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if abs(value) > MAX_PRIORITY:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {text!r}"
        )
    return value


def _priority_option(parser: argparse.ArgumentParser, default: str) -> None:
    """C{--priority N} (issue 15: priorities); C{default} says what it is when not given."""
    parser.add_argument(
        "--priority",
        type=_priority,
        metavar="N",
        help=f"the job's priority, a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY} (default: {default}); "
        "higher runs first, and jobs of equal priority share the slots",
    )


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """
    The options every subcommand takes, before or after its name.  After the
    name they default to C{SUPPRESS}, so as not to undo one given before it.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--connect",
        metavar="HOST:PORT",
        default=default(os.environ.get("P2PEXEC_CONNECT") or DEFAULT_CONNECT),
        help="the node to talk to: HOST:PORT, HOST (port 10001) or [IPV6]:PORT "
        f"(default: $P2PEXEC_CONNECT, else {DEFAULT_CONNECT})",
    )
    parser.add_argument(
        "--timeout",
        dest="answer_timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT),
        help=f"how long to wait for the connection and for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        default=default(os.environ.get("P2PEXEC_KEY_FILE")),
        help="the cluster key, if the node has one (default: $P2PEXEC_KEY_FILE)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="the node speaks TLS (twistd p2pexec --tls); needs --key-file",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        default=default(False),
        help="plain lines, no colours or progress bar (the default when stdout is not a terminal)",
    )


def _output_options(parser: argparse.ArgumentParser, condition: str) -> None:
    """C{-k}, C{--tag} and C{--joblog}, as C{run} and C{submit --wait} take them."""
    parser.add_argument(
        "-k",
        "--keep-order",
        action="store_true",
        help=f"{condition}print the tasks' output in argument order, each once those before it are printed",
    )
    parser.add_argument(
        "--tag",
        action="store_true",
        help=f"{condition}start each line of output with the task's arguments (submit: its id) and a tab",
    )
    parser.add_argument(
        "--joblog",
        metavar="FILE",
        help="with "
        + ("--wait" if condition else "run")
        + ": write GNU parallel's joblog to FILE, a line per task as it ends (- for stdout)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The C{p2pexec} parser, and each subcommand's parser by name."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parsers: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=description, epilog=epilog, formatter_class=formatter)
        _connection_options(p, suppress=True)
        parsers[name] = p
        return p

    p = add(
        "submit",
        "submit a job file or instruction names; print the job id",
        "Submit a job to the node, which becomes its master, and print the job id.\n"
        "The job is a TOML job file (see docs/jobs.rst) or, with --tasks, instruction\n"
        "names whose kind is their leading letters (a1 is of kind a).  The file is\n"
        "read and checked before anything is sent.  Big jobs are sent in parts.\n\n"
        "What a task needs (cpus, memory, gpus, resources), where it runs (node,\n"
        "all_nodes), after, and speculative are fields of its [[task]] in the file\n"
        "(docs/jobs.rst); run has options for them (--cpus, --all-nodes, ...).",
        "exit status: 0 once submitted (with --wait: once every task succeeded),\n"
        "1 with --wait if some task did not succeed, 2 for a bad job or no connection.\n\n"
        "examples:\n  p2pexec submit jobs.toml\n  p2pexec submit --wait --tasks a1,a2,b1",
    )
    p.add_argument("jobfile", nargs="?", metavar="JOBFILE", help="a TOML job file")
    p.add_argument("--tasks", metavar="NAMES", help="comma-separated instruction names instead of a file: a1,a2,b1")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end, as watch does, and exit with its status"
    )
    p.add_argument(
        "--output",
        action="store_true",
        help="with --wait: print what the tasks print, as run does (the job id and progress go to stderr)",
    )
    _output_options(p, "with --output: ")
    _fetch_option(p, "with --wait: ")
    _node_option(p, "; a task's own node = ... in the job file wins")
    _priority_option(p, "the job file's [job] priority, else 0")

    p = add(
        "run",
        "one task per argument, GNU-parallel style, followed to the end",
        "Run CMD once per argument, as one job of tasks of kind --kind, and follow it\n"
        "to its end.  In each word of CMD, {} is replaced by the argument; if no word\n"
        "has {}, the argument is appended.  CMD runs as an argv, without a shell,\n"
        "unless --shell (CMD's words are then joined into one /bin/sh command line,\n"
        "and {} becomes the argument, shell-quoted).\n\n"
        "The arguments come as GNU parallel's input sources: ::: ARG... on the\n"
        "command line, :::: FILE... one a line from each file (- for standard input),\n"
        "or standard input when none is given; blank lines are skipped.  Several\n"
        "sources make every combination (the first varies slowest); :::+ and ::::+\n"
        "pair a source off with the one before it (as many as the shorter has).\n\n"
        "Replacement strings: {} the arguments, {.} without extension, {/} base\n"
        "name, {//} directory, {/.} base name without extension, {#} the sequence\n"
        "number; {1} {2} ... one source's value, also as {1.} {1/} {1//} {1/.}.\n\n"
        "Each task's standard output is printed on ours, whole, as it ends (with\n"
        "-k in argument order), its standard error on ours; progress goes to\n"
        "stderr when it is a terminal.  A task's id is its argument (several\n"
        "sources' values joined by _) when that is a valid task id (1-128 characters\n"
        "of A-Z a-z 0-9 _ . : @ + -) not used before; otherwise t1, t2, ...",
        "exit status: 0 if every task succeeded, 1 if not, 2 for usage errors or no connection.\n\n"
        "examples:\n"
        "  p2pexec run --kind sh -- gzip -k {} ::: a.log b.log\n"
        "  p2pexec run --kind sh -k --tag -- echo {1}x{2} ::: 1 2 ::: 3 4\n"
        "  p2pexec run --kind sh --shell -- 'convert {} {.}.png' :::: images.txt\n"
        "  p2pexec run --kind sh --joblog run.log -- ./work {} ::: a b | sort\n"
        "  ls *.csv | p2pexec run --kind py -- python3 load.py",
    )
    p.add_argument("--kind", required=True, help="the kind (capability) of every task: a node must run it")
    p.add_argument("--slots-per-task", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--cpus",
        metavar="N",
        help="CPUs each task needs, like 2 or 0.5 (a node runs tasks only while their needs fit in its own --cpus)",
    )
    p.add_argument(
        "--memory", metavar="SIZE", help="memory each task needs, like 512M or 4G (powers of 1024), or bytes"
    )
    p.add_argument(
        "--gpus",
        metavar="N",
        help="how many GPU devices each task needs; no two tasks share one, and a task finds its own "
        "in CUDA_VISIBLE_DEVICES",
    )
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="how much of a named resource each task needs, like licence=1, of what nodes declare with "
        "--resource (repeatable)",
    )
    p.add_argument("--shell", action="store_true", help="run each command with /bin/sh -c (the argument is quoted)")
    p.add_argument(
        "--task-timeout",
        dest="timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="kill a task's process group after this long (status timed-out)",
    )
    p.add_argument("--retries", type=_count, metavar="N", help="run a failed task again up to N times (0-100)")
    _priority_option(p, "0")
    p.add_argument("--cwd", metavar="DIR", help="the tasks' working directory on the node that runs them")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every task (repeatable)",
    )
    _output_options(p, "")
    p.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="FILE",
        help="a local file sent with every task, into its working directory under its base name (repeatable)",
    )
    p.add_argument(
        "--output",
        dest="outputs",
        action="append",
        default=[],
        metavar="GLOB",
        help="files to send back after each task, a glob relative to its working directory (repeatable; "
        "each must match a file, else the task fails); fetch them with --fetch or p2pexec fetch",
    )
    _fetch_option(p, "")
    _node_option(p, "")
    p.add_argument(
        "--all-nodes",
        action="store_true",
        help="run the command once per argument on every node that runs --kind and is connected to the "
        "master now, one result per node (task ids ARG@NODE; not with --node; see docs/jobs.rst)",
    )
    p.add_argument(
        "run_words",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ... ::: ARG ...",
        help="the command, then its input sources: ::: ARG..., :::: FILE..., :::+ and ::::+ to link",
    )

    p = add(
        "watch",
        "follow a job's progress to its end",
        "Follow a job until it ends: a progress bar with the tasks done, running,\n"
        "queued, waiting for a capability (no connected node runs their kind) and\n"
        "failed, and an ETA.  When stdout is not a terminal (or with --plain), one\n"
        "line per change instead, at most one a second.  Ctrl-C stops watching; the\n"
        "job goes on.",
        "exit status: 0 if every task succeeded, 1 if not, 2 for an unknown job or no connection.",
    )
    p.add_argument("job", metavar="JOB", help="the job id")

    p = add(
        "status",
        "the node, its peers and its jobs, as tables",
        "Show the node and every peer it knows (name, address, capabilities, slots,\n"
        "busy and free slots, queued tasks, state, when last heard from), then the\n"
        "jobs it is master of.  A load shows ? until the node has heard it from that peer.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document: node, peers and jobs")

    p = add("jobs", "the jobs the node is master of", "List the jobs the node is master of, newest first.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")

    p = add(
        "result",
        "one job's per-task results",
        "Show each task of a job: state, status, exit code, node, duration, attempts,\n"
        "error, and the last lines of its output (the node sends at most the last\n"
        "8 KiB of each stream).",
        "exit status: 0 if every task succeeded; 1 if some task failed, was\n"
        "cancelled or has no result yet; 2 for an unknown job or no connection.",
    )
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument("--json", action="store_true", help='print one JSON document: {"job": summary, "tasks": [...]}')
    p.add_argument(
        "--lines",
        type=_count,
        default=5,
        metavar="N",
        help="how many lines of each output tail to show (default 5; 0: none)",
    )

    p = add(
        "cancel",
        "cancel a job",
        "Cancel a job: its tasks without a result never start, and the ones running\n"
        "are stopped on every node.  Prints how many tasks were cancelled.  Send it\n"
        "to the job's master.",
    )
    p.add_argument("job", metavar="JOB", help="the job id")

    p = add(
        "rerun",
        "run a finished job's failed tasks again, and follow them",
        "Run again, as new attempts of the same job, the tasks of JOB that failed,\n"
        "timed out, could not run (error), were cancelled or were skipped (they wait\n"
        "again for the tasks they run after), then follow the job to its\n"
        "end as submit --wait does.  Afterwards the job's results (p2pexec result, the\n"
        "HTTP API, the dashboard) show the new outcomes; attempt numbers go on.  A job\n"
        "that is still running is refused: wait for it, or cancel it first.",
        "exit status: 0 if every task now succeeded (or there was nothing to rerun), 1 if\n"
        "not, 2 for an unknown or running job or no connection.\n\n"
        "examples:\n  p2pexec rerun --failed a1-31f91af8-1",
    )
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument(
        "--failed",
        action="store_true",
        required=True,
        help="run again every task that did not succeed (required: the one choice so far)",
    )

    p = add(
        "keygen",
        "write a new random cluster key",
        "Write a new random 256-bit cluster key (64 hexadecimal digits).  Give the\n"
        "same key file to every node (twistd p2pexec --key-file) and to this client.\n"
        "A key file must be readable by its owner only (mode 0600).",
        "examples:\n  p2pexec keygen --out /etc/p2pexec/cluster.key\n  (umask 077; p2pexec keygen > cluster.key)",
    )
    p.add_argument("--out", metavar="FILE", help="create FILE with mode 0600 (never overwritten) instead of printing")
    p = add(
        "token",
        "print the HTTP API's token",
        "Print the bearer token that the HTTP API and the dashboard ask for: derived\n"
        "from --key-file (a cluster key, or a node's local-token file), or, without\n"
        "it, from the local token of your node at --connect (found by itself).",
        'examples:\n  curl -H "Authorization: Bearer $(p2pexec token --key-file cluster.key)" http://127.0.0.1:8080/api/jobs\n'
        "  open http://127.0.0.1:8080/#token=$(p2pexec token --key-file cluster.key)\n"
        '  open "$(p2pexec token --url)"    # your node at 127.0.0.1:10001, without a key',
    )
    p.add_argument(
        "--url", action="store_true", help="print the dashboard's address with the token (your node's --web port)"
    )

    p = add(
        "logs",
        "a task's full output, or follow it live",
        "Print a task's whole standard output (with --stderr, its standard error) as\n"
        "the worker that ran its newest attempt keeps it, byte for byte.  With --follow,\n"
        "print it as the task writes it and exit when the task ends.  A worker keeps at\n"
        "most its --max-output of each stream (the rest is cut, with a note saying so).",
        "exit status: 0 once printed; 1 if the task has not started (without --follow) or its\n"
        "output is gone; 2 for an unknown job or task, or no connection.\n\n"
        "examples:\n  p2pexec logs a1-31f91af8-1 t3\n  p2pexec logs -f --stderr a1-31f91af8-1 build",
    )
    add_logs_parser(p)

    p = add(
        "fetch",
        "download the output files of a job's tasks",
        "Download the output files of a job's tasks (the files their outputs = [...]\n"
        "matched, sent back to the job's master) into DIR/JOB/TASK/PATH, each checked\n"
        "(size and SHA-256) and written whole or not at all.  A file already there with\n"
        "the same content is left alone.  A path that climbs out of its folder or leads\n"
        "through a symbolic link is refused.",
        "exit status: 0 once every file is there; 1 if some could not be fetched (a line\n"
        "each); 2 for an unknown job, a folder that cannot be made, or no connection.\n\n"
        "examples:\n  p2pexec fetch a1-31f91af8-1\n  p2pexec fetch --into results a1-31f91af8-1",
    )
    add_fetch_parser(p)
    return parser, parsers


def _fetch_option(parser: argparse.ArgumentParser, condition: str) -> None:
    """C{--fetch DIR} (C{submit --wait}, C{run}): the tasks' output files, once the job has ended."""
    parser.add_argument(
        "--fetch",
        metavar="DIR",
        help=f"{condition}once the job has ended, download its tasks' output files into DIR/JOB/TASK/ "
        "(as p2pexec fetch does)",
    )


def _node_name(text: str) -> str:
    try:
        return validate_name(text, "a node name")
    except ValidationError as e:
        raise argparse.ArgumentTypeError(f"{e}; no node can have that name") from None


def _node_option(parser: argparse.ArgumentParser, more: str) -> None:
    """C{--node NAME} (on C{submit} and C{run}): the tasks run on that node only; C{more} ends its help."""
    parser.add_argument(
        "--node",
        type=_node_name,
        metavar="NAME",
        help=f"run every task only on the node named NAME (they wait while it is absent){more}",
    )


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse and check C{argv}; argparse exits (status 2, with the usage) on a
    usage error, and (status 0) after C{--help}.

    Adds C{host} and C{port}, and for C{run}, C{run_line} and C{env} as a dict.
    """
    parser, parsers = build_parser()
    args = parser.parse_args(list(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(EXIT_USAGE)
    this = parsers[args.command]
    try:
        args.host, args.port = parse_address(args.connect)
    except ValueError as e:
        this.error(f"--connect: {e}")
    if args.command == "submit":
        if (args.jobfile is None) == (args.tasks is None):
            this.error("give a JOBFILE or --tasks NAMES (one of them)")
        for given, flag, needs in [
            (args.output, "--output", "--wait"),
            (args.joblog is not None, "--joblog", "--wait"),
            (args.keep_order, "--keep-order", "--output"),
            (args.tag, "--tag", "--output"),
            (args.fetch is not None, "--fetch", "--wait"),
        ]:
            if given and not getattr(args, needs.lstrip("-")):
                this.error(f"{flag} needs {needs}")
    if args.command == "run":
        try:
            validate_name(args.kind, "the kind")
        except ValidationError as e:
            this.error(f"--kind: {e}")
        if args.all_nodes and args.node is not None:
            this.error("--node and --all-nodes: give one of them (one node, or every node)")
        if args.slots_per_task is not None:
            this.error(
                "--slots-per-task was removed: every task takes one slot; ask for CPUs with --cpus N "
                "(a node runs tasks only while their --cpus add up to no more than its own --cpus)"
            )
        try:
            args.request = run_request(args.cpus, args.memory, args.gpus, args.resource)
        except ValueError as e:
            this.error(str(e))
        try:
            args.run_line = split_run_line(args.run_words)
        except ValueError as e:
            this.error(str(e))
        try:
            args.env = parse_env(args.env)
        except ValueError as e:
            this.error(f"--env: {e}")
    return args
