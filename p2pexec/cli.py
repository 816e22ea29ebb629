"""
The C{p2pexec} command-line client: submit, follow, inspect and cancel jobs
on a running node, over the client AMP commands of L{p2pexec.commands}.

The node the client talks to (C{--connect HOST:PORT}) becomes the master of
what it submits, and only knows the jobs it is master of.  The reference,
with every subcommand, option and exit status, is C{docs/cli.rst}.

The module reads from top to bottom as the data flows:

 - pure helpers, with no I/O: addresses, the C{run} subcommand's argument
   expansion and task ids, exit statuses, and the plain-text formatting;
 - the two outputs: L{PlainOutput} (lines, no ANSI codes: for pipes, files
   and C{--plain}) and L{RichOutput} (tables and a live progress bar, for a
   terminal);
 - L{NodeClient}, one AMP connection to a node, which turns every failure
   into a one-line L{CliError};
 - the subcommands, as coroutines over a L{Context} (the node, the output,
   a clock), so that tests can drive them with doubles;
 - the argument parser and L{main}, the only place that touches the global
   reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TextIO, TypeVar

import attr
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import __version__, commands
from p2pexec.auth import ChallengeResponse, KeyFileError, generate_key, http_token, load_key
from p2pexec.jobfile import JobFileError, load_job_file, parse_job
from p2pexec.model import TASK_ID_PATTERN, TaskSpec, ValidationError, parse_instructions, validate_name
from p2pexec.peer import authenticate, tls_binding

PROG = "p2pexec"

DEFAULT_CONNECT = "127.0.0.1:10001"
"""The node the client talks to unless told otherwise (C{--connect}, C{$P2PEXEC_CONNECT})."""

DEFAULT_PORT = 10001
"""The port of a C{--connect} value that names only a host."""

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for the connection, and for each answer."""

POLL_INTERVAL = 0.5
"""Seconds between two JOB_STATUS questions while following a job."""

PLAIN_LINE_INTERVAL = 1.0
"""In plain mode, progress lines come at most this often."""

PAGE_LIMIT = 1000
"""How many tasks one JOB_TASKS question asks for."""

RICH_TABLE_LIMIT = 2000
"""A table with more rows than this is printed as plain lines even on a terminal."""

EXIT_OK = 0
"""Every task succeeded, or the command did what it was asked."""

EXIT_FAILED = 1
"""Some task failed, timed out, could not run, was cancelled, or has no result yet."""

EXIT_USAGE = 2
"""A usage error, a bad job, an unknown job, or no (or a lost) connection."""

EXIT_INTERRUPTED = 130
"""Interrupted (SIGINT, Ctrl-C), as a shell reports it."""

PLACEHOLDER = "{}"
"""What C{run} replaces with each argument."""

ARGUMENTS_MARK = ":::"
"""C{run CMD ::: A B C}: the arguments follow on the command line."""

FILE_MARK = "::::"
"""C{run CMD :::: FILE}: the arguments are the lines of FILE (C{-}: standard input)."""

T = TypeVar("T")


def describe_tls_error(error: Exception) -> str:
    """
    The reasons in an OpenSSL error, e.g. C{tlsv13 alert certificate
    required}, instead of its nested list of tuples.
    """
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry and isinstance(entry[-1], str):
            reasons.append(entry[-1])
    return "; ".join(reasons) or str(error) or type(error).__name__


class CliError(Exception):
    """
    Something the user must hear about, in one line on stderr, and the exit
    status that goes with it.
    """

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- addresses -----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """
    Parse C{HOST:PORT}, C{HOST} (port L{DEFAULT_PORT}) or C{[IPV6]:PORT}.

    @raise ValueError: saying what is wrong with C{text}.
    """
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has no closing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected HOST:PORT, not {text!r}")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:{DEFAULT_PORT}, not {text!r}")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """C{HOST:PORT}, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_failure_reason(failure: BaseException) -> str:
    """Why a connection could not be made, in a few lower-case words."""
    if isinstance(failure, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(failure, (error.TimeoutError, defer.TimeoutError)):
        return "timed out"
    if isinstance(failure, error.DNSLookupError):
        return "host name not found"
    if isinstance(failure, error.NoRouteError):
        return "no route to host"
    if isinstance(failure, error.ConnectError) and failure.osError:
        return str(failure.osError).lower()
    text = str(failure).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(failure).__name__


# -- run: arguments and tasks ----------------------------------------------------


@attr.s(auto_attribs=True, frozen=True)
class RunLine:
    """
    The tail of C{p2pexec run ...}: the command, and where the arguments
    come from.

    @ivar command: the command's words, with their C{{}} placeholders.
    @ivar arguments: the arguments given after C{:::}, or C{None}.
    @ivar file: the file named after C{::::} (C{-} for standard input), or C{None}.
    """

    command: tuple[str, ...]
    arguments: tuple[str, ...] | None = None
    file: str | None = None


def split_run_line(words: Sequence[str]) -> RunLine:
    """
    Split C{CMD ... ::: ARG ...} or C{CMD ... :::: FILE}.  Without either
    mark, the arguments come from standard input, as with GNU parallel.

    @raise ValueError: for a missing command, a missing file, or more than
        one source of arguments.
    """
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    marks = [i for i, word in enumerate(words) if word in (ARGUMENTS_MARK, FILE_MARK)]
    end = marks[0] if marks else len(words)
    command = tuple(words[:end])
    if not command:
        raise ValueError("give the command to run, as in: p2pexec run --kind sh -- echo {} ::: a b c")
    if len(marks) > 1:
        raise ValueError(
            f"give one source of arguments ({ARGUMENTS_MARK} ARG... or {FILE_MARK} FILE); "
            "combining several, as GNU parallel does, is not supported"
        )
    if not marks:
        return RunLine(command)
    rest = tuple(words[end + 1 :])
    if words[end] == ARGUMENTS_MARK:
        if not rest:
            raise ValueError(f"no arguments after {ARGUMENTS_MARK}")
        return RunLine(command, arguments=rest)
    if len(rest) != 1:
        raise ValueError(f"give exactly one file after {FILE_MARK} (- for standard input), not {len(rest)}")
    return RunLine(command, file=rest[0])


def read_argument_lines(stream: Iterable[str]) -> list[str]:
    """One argument per line, without its line ending; blank lines are skipped."""
    arguments = []
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            arguments.append(line)
    return arguments


def run_arguments(line: RunLine, stdin: TextIO) -> list[str]:
    """
    The arguments of a L{RunLine}: given, read from its file, or from
    C{stdin}.

    @raise CliError: if the file cannot be read, if there are none, or if
        they would come from a terminal.
    """
    if line.arguments is not None:
        return list(line.arguments)
    if line.file is None or line.file == "-":
        if line.file is None and stdin.isatty():
            raise CliError(
                f"run: give the arguments after {ARGUMENTS_MARK} or {FILE_MARK} FILE, or pipe them in, one a line"
            )
        try:
            arguments = read_argument_lines(stdin)
        except UnicodeDecodeError as e:
            raise CliError(f"run: cannot read standard input: {e}") from None
        where = "standard input"
    else:
        try:
            with open(line.file, encoding="utf-8") as f:
                arguments = read_argument_lines(f)
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise CliError(f"run: cannot read {line.file}: {reason}") from None
        where = line.file
    if not arguments:
        raise CliError(f"run: no arguments in {where}: nothing to run")
    return arguments


def task_ids(arguments: Sequence[str]) -> list[str]:
    """
    A task id for each argument: the argument itself when it is a valid task
    id not used by an earlier argument, else C{t1}, C{t2}... (numbered
    among those, skipping any id already taken).
    """
    taken: set[str] = set()
    chosen: list[str | None] = []
    for argument in arguments:
        if TASK_ID_PATTERN.fullmatch(argument) and argument not in taken:
            taken.add(argument)
            chosen.append(argument)
        else:
            chosen.append(None)
    number = 0
    ids = []
    for task_id in chosen:
        if task_id is None:
            while True:
                number += 1
                task_id = f"t{number}"
                if task_id not in taken:
                    break
            taken.add(task_id)
        ids.append(task_id)
    return ids


def expand_command(command: Sequence[str], argument: str, shell: bool = False) -> Any:
    """
    C{command} for one argument: each C{{}} replaced by it, or the argument
    appended if there is no C{{}}.

    @return: an argv list; or, with C{shell}, one shell command line (the
        words joined by spaces) with the argument shell-quoted.
    """
    if shell:
        line = " ".join(command)
        quoted = shlex.quote(argument)
        return line.replace(PLACEHOLDER, quoted) if PLACEHOLDER in line else f"{line} {quoted}"
    if any(PLACEHOLDER in word for word in command):
        return [word.replace(PLACEHOLDER, argument) for word in command]
    return [*command, argument]


def run_tasks(
    command: Sequence[str],
    arguments: Sequence[str],
    kind: str,
    shell: bool = False,
    timeout: float | None = None,
    retries: int | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> list[TaskSpec]:
    """
    One task per argument, checked as a job file would be.

    @raise CliError: naming the task and field at fault.
    """
    defaults: dict[str, Any] = {"kind": kind}
    if shell:
        defaults["shell"] = True
    if timeout is not None:
        defaults["timeout"] = timeout
    if retries is not None:
        defaults["retries"] = retries
    if cwd is not None:
        defaults["cwd"] = cwd
    if env:
        defaults["env"] = dict(env)
    tasks = [
        {"id": task_id, "command": expand_command(command, argument, shell)}
        for task_id, argument in zip(task_ids(arguments), arguments)
    ]
    try:
        return parse_job({"defaults": defaults, "task": tasks}, label="run")
    except JobFileError as e:
        raise CliError(str(e)) from None


def parse_env(values: Sequence[str]) -> dict[str, str]:
    """C{NAME=VALUE} words as a dict; raises L{ValueError} for a word without C{=} or a name."""
    env = {}
    for value in values:
        name, equals, text = value.partition("=")
        if not equals or not name:
            raise ValueError(f"expected NAME=VALUE, not {value!r}")
        env[name] = text
    return env


def job_tasks_from(args: argparse.Namespace, stdin: TextIO) -> list[TaskSpec]:
    """
    The tasks that C{submit} or C{run} hands the node, read and checked
    before any connection is made.

    @raise CliError: with the job file's, C{--tasks}' or C{run}'s message.
    """
    if args.command == "run":
        line: RunLine = args.run_line
        return run_tasks(
            line.command,
            run_arguments(line, stdin),
            args.kind,
            shell=args.shell,
            timeout=args.timeout,
            retries=args.retries,
            cwd=args.cwd,
            env=args.env,
        )
    if args.tasks is not None:
        names = [name.strip() for name in args.tasks.split(",") if name.strip()]
        if not names:
            raise CliError("--tasks: give at least one instruction name, like a1,a2,b1")
        try:
            return parse_instructions(names)
        except ValidationError as e:
            raise CliError(f"--tasks: {e}") from None
    try:
        return load_job_file(args.jobfile)
    except JobFileError as e:
        raise CliError(str(e)) from None


def with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the last one."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


# -- exit statuses ----------------------------------------------------------------


def job_exit_status(summary: dict[str, Any]) -> int:
    """L{EXIT_OK} for a finished job whose every task succeeded, else L{EXIT_FAILED}."""
    if summary["state"] == "finished" and summary["counts"]["succeeded"] == summary["total"]:
        return EXIT_OK
    return EXIT_FAILED


def tasks_exit_status(tasks: Sequence[dict[str, Any]]) -> int:
    """L{EXIT_OK} if every task succeeded, else L{EXIT_FAILED} (failed, cancelled or unfinished)."""
    return EXIT_OK if all(task["state"] == "succeeded" for task in tasks) else EXIT_FAILED


# -- plain formatting -------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """C{4.2s}, C{3m05s}, C{2h07m}; C{?} when unknown."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def outcome_counts(summary: dict[str, Any]) -> str:
    """C{2 succeeded, 1 failed} (and C{, 3 cancelled} when there are any)."""
    counts = summary["counts"]
    text = f"{counts['succeeded']} succeeded, {counts['failed']} failed"
    if counts["cancelled"]:
        text += f", {counts['cancelled']} cancelled"
    return text


def progress_line(summary: dict[str, Any]) -> str:
    """One line of a job's progress, as C{watch} prints it in plain mode."""
    counts = summary["counts"]
    stalled = summary.get("stalled")
    return (
        f"{summary['id']}: {summary['done']}/{summary['total']} done ({outcome_counts(summary)}), "
        f"{counts['running']} running, {counts['pending']} queued, "
        f"{counts['waiting']} waiting for a capability, "
        + (f"stalled: {stalled}" if stalled else f"ETA {format_seconds(summary['eta'])}")
    )


def final_line(summary: dict[str, Any]) -> str:
    """How a followed job ended."""
    if summary["state"] == "cancelled":
        return (
            f"job {summary['id']} was cancelled: {outcome_counts(summary)} after {format_seconds(summary['elapsed'])}"
        )
    return f"job {summary['id']} finished: {outcome_counts(summary)} in {format_seconds(summary['elapsed'])}"


def _progress_key(summary: dict[str, Any]) -> tuple[Any, ...]:
    counts = summary["counts"]
    return (summary["state"], summary["total"], *(counts[state] for state in sorted(counts)))


class PlainProgress:
    """
    Decides the lines of C{watch} in plain mode: one when the counts change,
    at most one every C{interval} seconds.
    """

    def __init__(self, interval: float = PLAIN_LINE_INTERVAL) -> None:
        self._interval = interval
        self._last_key: tuple[Any, ...] | None = None
        self._last_time: float | None = None

    def update(self, summary: dict[str, Any], now: float) -> str | None:
        """The line to print for C{summary} seen at C{now}, or C{None}."""
        key = _progress_key(summary)
        if key == self._last_key:
            return None
        if self._last_time is not None and now - self._last_time < self._interval:
            return None
        self._last_key, self._last_time = key, now
        return progress_line(summary)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header and rows as lines, each column left-aligned, two spaces apart."""
    widths = [len(column) for column in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [columns, *rows]]


def table_width(columns: Sequence[str], rows: Sequence[Sequence[str]], wrapped: int = 10) -> int:
    """
    The narrowest a table can be without cutting a cell: columns two spaces
    apart, a free-text column (error, capabilities) wrapped at C{wrapped}
    characters.
    """
    widths = []
    for i, column in enumerate(columns):
        width = max([len(column), *(len(row[i]) for row in rows)])
        widths.append(min(width, wrapped) if column in _WRAPPING_COLUMNS else width)
    return sum(widths) + 2 * (len(widths) - 1)


def cell(value: Any, width: int = 60) -> str:
    """A table cell: C{-} for nothing, one line, at most C{width} characters."""
    if value is None or value == "":
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


_WRAPPING_COLUMNS = frozenset({"error", "capabilities"})
"""Table columns of free text, which a terminal table may wrap."""


JOB_COLUMNS = (
    "job",
    "state",
    "done",
    "succeeded",
    "failed",
    "cancelled",
    "running",
    "queued",
    "waiting",
    "elapsed",
    "eta",
)


def job_row(summary: dict[str, Any]) -> list[str]:
    """One job in the C{jobs} and C{status} tables."""
    counts = summary["counts"]
    return [
        summary["id"],
        summary["state"],
        f"{summary['done']}/{summary['total']}",
        *(str(counts[state]) for state in ("succeeded", "failed", "cancelled", "running", "pending", "waiting")),
        format_seconds(summary["elapsed"]),
        "-"
        if summary["state"] != "running"
        else "stalled"
        if summary.get("stalled")
        else format_seconds(summary["eta"]),
    ]


PEER_COLUMNS = ("name", "address", "capabilities", "slots", "busy", "free", "queued", "state", "last heard")


def peer_row(peer: dict[str, Any]) -> list[str]:
    """One node in the C{status} table (C{?} for a load it has not reported yet)."""
    busy = peer["busy"]
    last_heard = peer["last_heard"]
    return [
        peer["name"],
        peer["address"],
        ",".join(peer["capabilities"]) or "-",
        str(peer["slots"]),
        "?" if busy is None else str(busy),
        "?" if busy is None else str(max(0, peer["slots"] - busy)),
        "?" if peer["queued"] is None else str(peer["queued"]),
        peer["state"],
        "-" if last_heard is None else f"{format_seconds(last_heard)} ago",
    ]


TASK_COLUMNS = ("task", "kind", "state", "status", "exit", "node", "duration", "attempts", "error")


def task_row(task: dict[str, Any]) -> list[str]:
    """One task in the C{result} table."""
    return [
        task["id"],
        task["kind"],
        task["state"],
        cell(task["status"]),
        cell(task["exit_code"]),
        cell(task["node"]),
        "-" if task["duration"] is None else f"{task['duration']:.3f}s",
        str(task["attempts"]),
        cell(task["error"]),
    ]


def tail_lines(text: str | None, count: int) -> list[str]:
    """The last C{count} lines of C{text}."""
    if not text or count <= 0:
        return []
    return text.rstrip("\n").split("\n")[-count:]


# -- text from the node, on a terminal ----------------------------------------------


_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""
What a terminal would act on rather than show: the C0 controls but tab and
newline (escape sequences start with ESC, 0x1b), DEL, the C1 controls (0x9b
is a CSI of its own), and the bidirectional overrides and isolates, which
reorder what is shown.
"""

_LINE_END_RETURNS = re.compile("\r+(?=\n|$)")


def terminal_text(text: str) -> str:
    """
    C{text} (a task's output, an error, a name: anything a node sent) made
    safe to show on a terminal: every character in L{_TERMINAL_CONTROLS}
    is shown escaped, as C{\\x1b} or C{\\u202e}; tab and newline stay, and
    a carriage return that ends a line (C{\\r\\n} line endings) is dropped,
    while one inside a line, which would let the rest overwrite it, is
    shown as C{\\r}.  Backslashes are not escaped: the exact text is what
    C{--json}, or a pipe, gives.
    """
    text = _LINE_END_RETURNS.sub("", text)
    return _TERMINAL_CONTROLS.sub(_escaped_control, text)


def _escaped_control(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_JSON_UNESCAPED_CONTROLS = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def json_text(value: Any) -> str:
    """
    C{value} as indented JSON, non-ASCII text as itself, but with the
    controls JSON leaves raw (DEL, C1, bidirectional overrides) written as
    C{\\u} escapes as well: the same data, and nothing a terminal acts on.
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return _JSON_UNESCAPED_CONTROLS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def for_stream(stream: TextIO, text: str) -> str:
    """C{text} as it is for a pipe or a file, through L{terminal_text} for a terminal."""
    return terminal_text(text) if stream.isatty() else text


# -- outputs -----------------------------------------------------------------------


class ProgressDisplay(Protocol):
    """How C{watch} shows a job while it runs."""

    def update(self, summary: dict[str, Any], now: float) -> None:
        """Show C{summary}, seen at C{now}."""

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Stop showing progress, after showing the last C{summary} if given."""


class Output(Protocol):
    """Where the subcommands print (stdout); errors go to stderr, always plain."""

    def line(self, text: str) -> None:
        """Print one line of text as it is."""

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Print a table under a title."""

    def block(self, title: str, lines: Sequence[str]) -> None:
        """Print a titled block of lines (a task's output tail)."""

    def progress(self, job: str) -> ProgressDisplay:
        """Start showing a job's progress."""


class _PlainProgressDisplay:
    def __init__(self, output: PlainOutput) -> None:
        self._output = output
        self._decide = PlainProgress()

    def update(self, summary: dict[str, Any], now: float) -> None:
        text = self._decide.update(summary, now)
        if text is not None:
            self._output.line(text)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        pass  # The final line says how the job ended.


class PlainOutput:
    """
    Plain lines for pipes and files, and for a terminal with C{--plain}: no
    colours, no cursor movement.  On a terminal, what the node sent is shown
    through L{terminal_text}; to a pipe or a file it is written exactly.
    """

    def __init__(self, stream: TextIO, escape: bool | None = None) -> None:
        """
        @param escape: whether to show control characters escaped; by
            default, whether C{stream} is a terminal.
        """
        self._stream = stream
        self._escape = stream.isatty() if escape is None else escape

    def _text(self, text: str) -> str:
        return terminal_text(text) if self._escape else text

    def line(self, text: str) -> None:
        """Print C{text} and a newline, flushed (progress must show at once)."""
        self._stream.write(self._text(text) + "\n")
        self._stream.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """The title, then the rows aligned under a header (or C{(none)})."""
        self.line(f"{title}:")
        if not rows:
            self.line("  (none)")
            return
        rows = [[self._text(value) for value in row] for row in rows]
        self._stream.write("".join(line + "\n" for line in format_table(columns, rows)))
        self._stream.flush()

    def block(self, title: str, lines: Sequence[str]) -> None:
        """The title, then each line indented by two spaces."""
        self.line(f"{title}:")
        for text in lines:
            self.line(f"  {text}")

    def progress(self, job: str) -> ProgressDisplay:
        """A line per change, at most one per second."""
        return _PlainProgressDisplay(self)


_STATE_STYLES = {
    "succeeded": "green",
    "finished": "green",
    "alive": "green",
    "self": "bold green",
    "failed": "red",
    "timed-out": "red",
    "error": "red",
    "gone": "red",
    "cancelled": "magenta",
    "running": "yellow",
    "suspect": "yellow",
    "waiting": "cyan",
    "known": "dim",
    "pending": "dim",
}


class _RichProgressDisplay:
    def __init__(self, console: Any, job: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            auto_refresh=False,
        )
        from rich.markup import escape

        # The description is read as markup: a job id is text, not markup.
        self._task = self._progress.add_task(escape(terminal_text(job)), total=None, detail="", eta="?")
        self._started = False

    def update(self, summary: dict[str, Any], now: float) -> None:
        counts = summary["counts"]
        parts = [f"[yellow]{counts['running']} running[/]"]
        if counts["pending"]:
            parts.append(f"{counts['pending']} queued")
        if counts["waiting"]:
            parts.append(f"[cyan]{counts['waiting']} waiting (no capable node)[/]")
        parts.append(f"[red]{counts['failed']} failed[/]" if counts["failed"] else "0 failed")
        if counts["cancelled"]:
            parts.append(f"[magenta]{counts['cancelled']} cancelled[/]")
        self._progress.update(
            self._task,
            completed=summary["done"],
            total=summary["total"],
            detail="  ".join(parts),
            eta="stalled" if summary.get("stalled") else format_seconds(summary["eta"]),
        )
        if not self._started:
            self._progress.start()
            self._started = True
        self._progress.refresh()

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if summary is not None and self._started:
            self.update(summary, 0.0)
        if self._started:
            self._progress.stop()


class RichOutput:
    """
    Tables, colours and a live progress bar, for a terminal (through
    C{rich}).  Text is never read as markup, and control characters are
    shown escaped (L{terminal_text}).
    """

    def __init__(self, console: Any) -> None:
        self._console = console

    def line(self, text: str) -> None:
        """Print C{text} as it is (no markup, no highlighting), its control characters escaped."""
        self._console.print(terminal_text(text), markup=False, highlight=False, emoji=False, soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """
        A C{rich} table, states coloured.  A table too long, or too wide for
        the terminal even with its free-text columns wrapped, is printed as
        plain aligned lines instead, so that no cell is cut.
        """
        from rich import box
        from rich.table import Table
        from rich.text import Text

        title = terminal_text(title)
        rows = [[terminal_text(value) for value in row] for row in rows]

        def plain() -> None:
            self._console.print(Text(f"{title}:", style="bold"), soft_wrap=True)
            if not rows:
                self.line("  (none)")
            for text in format_table(columns, rows) if rows else []:
                self.line(text)

        if not rows or len(rows) > RICH_TABLE_LIMIT:
            plain()
            return
        table = Table(
            # A Text, not a str: rich reads a str title as markup.
            title=Text(title),
            title_justify="left",
            title_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for column in columns:
            # Ids, states and numbers stay whole; free text (errors, capabilities) wraps.
            table.add_column(column, no_wrap=column not in _WRAPPING_COLUMNS, overflow="fold")
        for row in rows:
            table.add_row(*(Text(value, style=_STATE_STYLES.get(value, "")) for value in row))
        if table_width(columns, rows) > self._console.width:
            plain()
            return
        self._console.print(table)

    def block(self, title: str, lines: Sequence[str]) -> None:
        """The title in bold, then the lines, indented."""
        from rich.text import Text

        self._console.print(Text(f"{terminal_text(title)}:", style="bold"), soft_wrap=True)
        for text in lines:
            self.line(f"  {text}")

    def progress(self, job: str) -> ProgressDisplay:
        """A live progress bar."""
        return _RichProgressDisplay(self._console, job)


def make_output(stdout: TextIO, plain: bool) -> Output:
    """L{RichOutput} on a terminal, unless C{plain}; L{PlainOutput} otherwise."""
    if plain or not stdout.isatty():
        return PlainOutput(stdout)
    from rich.console import Console

    return RichOutput(Console(file=stdout))


# -- the connection -----------------------------------------------------------------


class Caller(Protocol):
    """What the subcommands need of a node: one command at a time."""

    address: str

    def call(self, command: type[amp.Command], **arguments: Any) -> Awaitable[dict[str, Any]]:
        """Send C{command}; its answer, or a L{CliError}."""


class NodeClient:
    """
    One AMP connection to a node, for the client commands (no
    CONNECT_REQUEST or HANDSHAKE).  Every failure becomes a L{CliError}
    whose message names the address and the reason.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        timeout: float = DEFAULT_TIMEOUT,
        key: bytes | None = None,
        tls: bool = False,
    ) -> None:
        self._key = key
        self._tls = tls
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self._protocol: amp.AMP | None = None
        self.address = format_address(host, port)

    async def connect(self) -> None:
        """Connect, or raise L{CliError}."""
        endpoint: Any = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
        if self._tls:
            from twisted.internet.endpoints import wrapClientTLS

            from p2pexec.tls import TLSConfig

            # The node's certificate is checked through the key's proofs (pinned).
            endpoint = wrapClientTLS(TLSConfig(None, None).client_options(), endpoint)
        try:
            self._protocol = await connectProtocol(endpoint, amp.AMP())
        except defer.CancelledError:
            raise
        except Exception as e:
            raise CliError(f"cannot connect to {self.address}: {connect_failure_reason(e)}") from None
        if self._key is not None:
            protocol = self._protocol
            proving = defer.ensureDeferred(
                authenticate(protocol, ChallengeResponse(self._key), lambda: tls_binding(protocol.transport))
            )
            try:
                await proving.addTimeout(self._timeout, self._reactor)
            except (commands.AuthFailed, amp.RemoteAmpError, amp.UnhandledCommand) as e:
                self.close()
                raise CliError(f"the node at {self.address} and this key do not match: {e}") from None
            except defer.TimeoutError:
                self.close()
                raise CliError(f"no answer from {self.address} to AUTHENTICATE within {self._timeout:g}s") from None
            except (error.ConnectionDone, error.ConnectionLost, error.ConnectionClosed):
                hint = "" if self._tls else " (if it speaks TLS, add --tls)"
                raise CliError(f"the node at {self.address} closed the connection while authenticating{hint}") from None
            except Exception as e:
                self.close()
                if self._tls and type(e).__module__.startswith("OpenSSL"):
                    # A node with the operator's certificates (--tls-cert) asks
                    # for a client certificate, which this client does not have.
                    raise CliError(
                        f"the TLS handshake with {self.address} failed ({describe_tls_error(e)}); the client "
                        f"reaches nodes that run --tls with their own certificates, not ones given --tls-cert"
                    ) from None
                raise CliError(f"the connection to {self.address} failed while authenticating: {e}") from None

    async def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """Send C{command} and wait (at most the timeout) for its answer."""
        assert self._protocol is not None, "call connect() first"
        name = command.commandName.decode("ascii")
        try:
            answer: dict[str, Any] = await self._send(command, arguments)
        except defer.TimeoutError:
            raise CliError(f"no answer from {self.address} to {name} within {self._timeout:g}s") from None
        except error.ConnectionDone:
            raise CliError(f"lost the connection to {self.address}: the node closed it") from None
        except (error.ConnectionLost, error.ConnectionClosed):
            raise CliError(f"lost the connection to {self.address}: it was reset or dropped") from None
        except commands.UnknownJob as e:
            raise CliError(f"unknown job: {e}") from None
        except commands.AuthRequired as e:
            if "local token" in str(e):
                raise CliError(
                    f"the node at {self.address} refused {name}: it takes it only from the user that runs it "
                    f"(whose client finds the node's local token by itself), or with --key-file STATE_DIR/local-token"
                ) from None
            raise CliError(f"the node at {self.address} belongs to a cluster with a key: give --key-file") from None
        except commands.BadJob as e:
            raise CliError(f"the node at {self.address} refused the job: {e}") from None
        except commands.ShuttingDown as e:
            raise CliError(f"the node at {self.address} is shutting down: {e}") from None
        except commands.JournalUnwritable as e:
            raise CliError(f"the node at {self.address} refused the job: {e}") from None
        except amp.UnhandledCommand:
            raise CliError(f"the node at {self.address} does not know {name} (is it an older p2pexec?)") from None
        except (amp.RemoteAmpError, amp.UnknownRemoteError, commands.BadArguments, commands.UnknownUpload) as e:
            raise CliError(f"the node at {self.address} answered {name} with an error: {e}") from None
        return answer

    def _send(self, command: type[amp.Command], arguments: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        assert self._protocol is not None
        try:
            d = self._protocol.callRemote(command, **arguments)
        except amp.TooLong as e:
            # Raised synchronously; the chunking should have prevented it.
            return defer.fail(CliError(f"{command.commandName.decode()} is too big for one message: {e}"))
        return d.addTimeout(self._timeout, self._reactor)

    def close(self) -> None:
        """Close the connection, if open."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.loseConnection()
        self._protocol = None


# -- the subcommands ------------------------------------------------------------------


@attr.s(auto_attribs=True)
class Context:
    """
    What a subcommand works with.

    @ivar node: the node it talks to.
    @ivar out: where it prints.
    @ivar clock: for the pauses between JOB_STATUS questions.
    @ivar err: where notes beside the output go (stderr).
    """

    node: Caller
    out: Output
    clock: IReactorTime
    err: TextIO


async def submit_job(ctx: Context, tasks: Sequence[TaskSpec]) -> str:
    """
    Hand C{tasks} to the node with SUBMIT_JOB, in parts that each stay
    under L{commands.MAX_VALUE_BYTES}; return the job id.
    """
    upload = ""
    job = ""
    for part, final in with_last(commands.chunk(tasks, TaskSpec.to_wire)):
        answer = await ctx.node.call(commands.SubmitJob, tasks=part, defaults={}, upload=upload, final=final)
        upload, job = answer["upload"], answer["job"]
    return job


async def follow(ctx: Context, job: str) -> int:
    """
    Show C{job}'s progress until it ends (JOB_STATUS every L{POLL_INTERVAL}
    seconds), then how it ended; return its exit status.
    """
    display: ProgressDisplay | None = None
    try:
        while True:
            summary = (await ctx.node.call(commands.JobStatus, job=job))["status"]
            if summary["state"] != "running":
                if display is not None:
                    display.close(summary)
                    display = None
                break
            if display is None:
                display = ctx.out.progress(job)
            display.update(summary, ctx.clock.seconds())
            await deferLater(ctx.clock, POLL_INTERVAL, lambda: None)
    except defer.CancelledError:
        if display is not None:
            display.close()
            display = None
        note = f"{PROG}: stopped following job {job}; it goes on (p2pexec cancel {job} stops it)"
        ctx.err.write(for_stream(ctx.err, note) + "\n")
        raise
    finally:
        if display is not None:
            display.close()
    ctx.out.line(final_line(summary))
    status = job_exit_status(summary)
    if status != EXIT_OK:
        ctx.out.line(f"the results of each task: p2pexec result {job}")
    return status


async def do_submit(ctx: Context, args: argparse.Namespace) -> int:
    """C{submit}: print the job id; with C{--wait}, follow it."""
    job = await submit_job(ctx, args.job_tasks)
    ctx.out.line(job)
    if args.wait:
        return await follow(ctx, job)
    return EXIT_OK


async def do_run(ctx: Context, args: argparse.Namespace) -> int:
    """C{run}: submit one task per argument and follow the job."""
    tasks = args.job_tasks
    job = await submit_job(ctx, tasks)
    ctx.out.line(f"job {job}: {len(tasks)} task(s) submitted to {ctx.node.address}")
    return await follow(ctx, job)


async def do_watch(ctx: Context, args: argparse.Namespace) -> int:
    """C{watch}: follow a job."""
    return await follow(ctx, args.job)


async def do_jobs(ctx: Context, args: argparse.Namespace) -> int:
    """C{jobs}: the jobs the node is master of."""
    jobs = (await ctx.node.call(commands.ListJobs))["jobs"]
    if args.json:
        ctx.out.line(json_text(jobs))
    else:
        ctx.out.table(f"Jobs of the node at {ctx.node.address}", JOB_COLUMNS, [job_row(job) for job in jobs])
    return EXIT_OK


async def do_status(ctx: Context, args: argparse.Namespace) -> int:
    """C{status}: the node, its peers, and its jobs."""
    cluster = await ctx.node.call(commands.ClusterStatus)
    jobs = (await ctx.node.call(commands.ListJobs))["jobs"]
    nodes = [cluster["node"], *cluster["peers"]]
    if args.json:
        ctx.out.line(json_text({"node": cluster["node"], "peers": cluster["peers"], "jobs": jobs}))
        return EXIT_OK
    problem = cluster["node"].get("problem")
    if problem:
        ctx.out.line(f"Node {cluster['node']['name']} is unhealthy: {problem}")
    ctx.out.table(
        f"Nodes seen by {cluster['node']['name']} ({ctx.node.address})",
        PEER_COLUMNS,
        [peer_row(node) for node in nodes],
    )
    ctx.out.table(f"Jobs of {cluster['node']['name']}", JOB_COLUMNS, [job_row(job) for job in jobs])
    return EXIT_OK


async def all_tasks(ctx: Context, job: str) -> list[dict[str, Any]]:
    """Every task of C{job} with its result, page by page (JOB_TASKS)."""
    tasks: list[dict[str, Any]] = []
    offset = 0
    while offset >= 0:
        answer = await ctx.node.call(commands.JobTasks, job=job, offset=offset, limit=PAGE_LIMIT)
        page = answer["tasks"]
        tasks.extend(page)
        following = answer["next"]
        if following >= 0 and following <= offset:
            raise CliError(f"the node at {ctx.node.address} answered JOB_TASKS with no progress (next={following})")
        offset = following
    return tasks


async def do_result(ctx: Context, args: argparse.Namespace) -> int:
    """C{result}: each task's outcome; exit 0 only if every one succeeded."""
    summary = (await ctx.node.call(commands.JobStatus, job=args.job))["status"]
    tasks = await all_tasks(ctx, args.job)
    if args.json:
        ctx.out.line(json_text({"job": summary, "tasks": tasks}))
        return tasks_exit_status(tasks)
    ctx.out.table(
        f"Job {summary['id']} ({summary['state']}: {summary['done']}/{summary['total']} done, {outcome_counts(summary)}, "
        f"{format_seconds(summary['elapsed'])})",
        TASK_COLUMNS,
        [task_row(task) for task in tasks],
    )
    for task in tasks:
        for stream in ("stdout", "stderr"):
            lines = tail_lines(task.get(stream), args.lines)
            if lines:
                ctx.out.block(f"{task['id']} {stream} (last {len(lines)} line(s))", lines)
    return tasks_exit_status(tasks)


async def do_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """C{cancel}: CANCEL_JOB; print how many tasks were cancelled."""
    cancelled = (await ctx.node.call(commands.CancelJob, job=args.job))["cancelled"]
    if cancelled:
        ctx.out.line(f"job {args.job}: {cancelled} task(s) cancelled")
    else:
        ctx.out.line(f"job {args.job}: 0 tasks cancelled (it had already ended)")
    return EXIT_OK


SUBCOMMANDS: dict[str, Callable[[Context, argparse.Namespace], Awaitable[int]]] = {
    "submit": do_submit,
    "run": do_run,
    "watch": do_watch,
    "status": do_status,
    "jobs": do_jobs,
    "result": do_result,
    "cancel": do_cancel,
}


# -- the command line ---------------------------------------------------------------------


_DESCRIPTION = """\
The command-line client of p2pexec: it talks to a running node over AMP.
The node it talks to becomes the master of the jobs it submits, and knows
only the jobs it is master of.

exit status:
  0  every task succeeded (or the command did what it was asked)
  1  some task failed, timed out, could not run, was cancelled, or has no result yet
  2  usage error, bad job file or job, unknown job, or no connection to the node
"""

_EXAMPLES = """\
examples:
  p2pexec submit --wait jobs.toml
  p2pexec submit --tasks a1,a2,b1
  p2pexec run --kind sh -- gzip -k {} ::: *.log
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
        "read and checked before anything is sent.  Big jobs are sent in parts.",
        "exit status: 0 once submitted (with --wait: once every task succeeded),\n"
        "1 with --wait if some task did not succeed, 2 for a bad job or no connection.\n\n"
        "examples:\n  p2pexec submit jobs.toml\n  p2pexec submit --wait --tasks a1,a2,b1",
    )
    p.add_argument("jobfile", nargs="?", metavar="JOBFILE", help="a TOML job file")
    p.add_argument("--tasks", metavar="NAMES", help="comma-separated instruction names instead of a file: a1,a2,b1")
    p.add_argument(
        "--wait", action="store_true", help="follow the job to its end, as watch does, and exit with its status"
    )

    p = add(
        "run",
        "one task per argument, GNU-parallel style, followed to the end",
        "Run CMD once per argument, as one job of tasks of kind --kind, and follow it\n"
        "to its end.  In each word of CMD, {} is replaced by the argument; if no word\n"
        "has {}, the argument is appended.  CMD runs as an argv, without a shell,\n"
        "unless --shell (CMD's words are then joined into one /bin/sh command line,\n"
        "and {} becomes the argument, shell-quoted).\n\n"
        "The arguments come after ::: on the command line, or one a line from FILE\n"
        "after :::: (- for standard input), or from standard input when neither is\n"
        "given.  Blank lines are skipped.\n\n"
        "A task's id is its argument when that is a valid task id (1-128 characters\n"
        "of A-Z a-z 0-9 _ . : @ + -) not used before; otherwise t1, t2, ...",
        "exit status: 0 if every task succeeded, 1 if not, 2 for usage errors or no connection.\n\n"
        "examples:\n"
        "  p2pexec run --kind sh -- gzip -k {} ::: a.log b.log\n"
        "  p2pexec run --kind sh --shell -- 'convert {} {}.png' :::: images.txt\n"
        "  ls *.csv | p2pexec run --kind py -- python3 load.py",
    )
    p.add_argument("--kind", required=True, help="the kind (capability) of every task: a node must run it")
    p.add_argument(
        "--slots-per-task",
        type=int,
        default=1,
        metavar="N",
        help="only 1: a node runs --slots tasks at once, each in one slot; p2pexec has no per-task slot count",
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
    p.add_argument("--cwd", metavar="DIR", help="the tasks' working directory on the node that runs them")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every task (repeatable)",
    )
    p.add_argument(
        "run_words",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ... ::: ARG ...",
        help="the command, then ::: and the arguments, or :::: FILE",
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
    return parser, parsers


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
    if args.command == "run":
        try:
            validate_name(args.kind, "the kind")
        except ValidationError as e:
            this.error(f"--kind: {e}")
        if args.slots_per_task != 1:
            this.error(
                f"--slots-per-task {args.slots_per_task}: p2pexec has no per-task slot count; every task "
                "takes one slot of the node that runs it (a node runs --slots tasks at once), so only 1 is accepted"
            )
        try:
            args.run_line = split_run_line(args.run_words)
        except ValueError as e:
            this.error(str(e))
        try:
            args.env = parse_env(args.env)
        except ValueError as e:
            this.error(f"--env: {e}")
    return args


async def execute(reactor: Any, args: argparse.Namespace, out: Output, stdin: TextIO, err: TextIO) -> int:
    """Read and check what must be, connect, and run the subcommand."""
    if args.command in ("submit", "run"):
        args.job_tasks = job_tasks_from(args, stdin)
    key = None
    if args.key_file:
        try:
            key = load_key(args.key_file)
        except KeyFileError as e:
            raise CliError(str(e)) from None
    else:
        found = _local_token(args.host, args.port)
        key = found[0] if found is not None else None
    if args.tls and not args.key_file:
        raise CliError("--tls needs --key-file: the node's certificate is checked through the cluster key")
    node = NodeClient(reactor, args.host, args.port, args.answer_timeout, key=key, tls=args.tls)
    await node.connect()
    try:
        return await SUBCOMMANDS[args.command](Context(node, out, reactor, err), args)
    finally:
        node.close()


def run_in_reactor(reactor: Any, work: Callable[[], Awaitable[int]], err: TextIO) -> int:
    """
    Run C{work} under C{reactor} to its end and return its exit status.

    A L{CliError} is printed as one line; SIGINT (Ctrl-C) stops the reactor,
    which cancels C{work}, and gives L{EXIT_INTERRUPTED}.  Anything else is
    a bug, and raised with its traceback.
    """
    outcome: list[Any] = []
    pending: list[defer.Deferred[int]] = []

    def start() -> None:
        d = defer.ensureDeferred(work())
        pending.append(d)

        def done(result: Any) -> None:
            outcome.append(result)
            if reactor.running:
                try:
                    reactor.stop()
                except error.ReactorNotRunning:
                    pass

        d.addBoth(done)

    def interrupted() -> None:
        for d in pending:
            d.cancel()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    reactor.run()
    if not outcome:
        err.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    result = outcome[0]
    if not isinstance(result, Failure):
        return int(result)
    if result.check(CliError):
        # The message may quote the node (an error's description): escaped on a terminal.
        err.write(for_stream(err, f"{PROG}: {result.value.message}") + "\n")
        return int(result.value.status)
    if result.check(defer.CancelledError):
        err.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    if result.check(BrokenPipeError):
        # The reader went away (| head): stop quietly, and don't let Python complain at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    result.raiseException()
    raise AssertionError("unreachable")


def _local_token(host: str, port: int) -> tuple[bytes, dict[str, Any]] | None:
    """
    The local token of this user's node at C{host:port}, and its runtime
    record (see L{p2pexec.localtoken}), or None.

    @raise CliError: if the node's record names a token that cannot be read.
    """
    from p2pexec.localtoken import LocalTokenError, find_token

    try:
        return find_token(host, port)
    except LocalTokenError as e:
        raise CliError(str(e)) from None


def key_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """C{keygen} and C{token}: the cluster key, and the HTTP token derived from it (no node involved)."""
    if args.command == "keygen":
        key = generate_key()
        if args.out is None:
            out.write(key + "\n")
            return EXIT_OK
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            err.write(f"{PROG}: cannot create {args.out}: {e.strerror} (a key file is never overwritten)\n")
            return EXIT_USAGE
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
        err.write(f"{PROG}: wrote a new cluster key to {args.out} (mode 0600); give it to every node with --key-file\n")
        return EXIT_OK
    record: dict[str, Any] | None = None
    try:
        if args.key_file:
            secret = load_key(args.key_file)
        else:
            found = _local_token(args.host, args.port)
            if found is None:
                err.write(
                    f"{PROG}: token: no node of yours with a local token runs at {format_address(args.host, args.port)}; "
                    f"give --connect, or --key-file (a cluster key, or a node's local-token file)\n"
                )
                return EXIT_USAGE
            secret, record = found
    except (KeyFileError, CliError) as e:
        err.write(f"{PROG}: {e}\n")
        return EXIT_USAGE
    token = http_token(secret)
    if not args.url:
        out.write(token + "\n")
        return EXIT_OK
    if record is None or not record.get("web"):
        where = "--key-file names no node" if record is None else "the node serves no HTTP (--web)"
        err.write(f"{PROG}: token --url: {where}; open http://HOST:PORT/#token={token} yourself\n")
        return EXIT_USAGE
    out.write(f"http://{format_address(record['interface'], record['web'])}/#token={token}\n")
    return EXIT_OK


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
    return run_in_reactor(reactor, lambda: execute(reactor, args, out, sys.stdin, sys.stderr), sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
