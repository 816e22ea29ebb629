"""
What the C{p2pexec} command prints, and how.

 - plain formatting, with no I/O: durations, progress lines, table rows;
 - terminal safety: text a node sent (a task's output, an error, a name)
   has its control characters shown escaped on a terminal
   (L{terminal_text}), and is kept exact in a pipe and in C{--json}
   (L{json_text});
 - the two outputs: L{PlainOutput} (lines, no ANSI codes: for pipes, files
   and C{--plain}) and L{RichOutput} (tables and a live progress bar, for a
   terminal); L{make_output} picks one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

PLAIN_LINE_INTERVAL = 1.0
"""In plain mode, progress lines come at most this often."""

RICH_TABLE_LIMIT = 2000
"""A table with more rows than this is printed as plain lines even on a terminal."""


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
    """C{2 succeeded, 1 failed} (and C{, 3 cancelled}, C{, 1 skipped} when there are any)."""
    counts = summary["counts"]
    text = f"{counts['succeeded']} succeeded, {counts['failed']} failed"
    if counts["cancelled"]:
        text += f", {counts['cancelled']} cancelled"
    if counts.get("skipped"):
        text += f", {counts['skipped']} skipped"
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
    "skipped",
    "running",
    "queued",
    "waiting",
    "elapsed",
    "eta",
    "master",
)


def job_row(summary: dict[str, Any]) -> list[str]:
    """One job in the C{jobs} and C{status} tables."""
    counts = summary["counts"]
    return [
        summary["id"],
        summary["state"],
        f"{summary['done']}/{summary['total']}",
        *(
            str(counts.get(state, 0))
            for state in ("succeeded", "failed", "cancelled", "skipped", "running", "pending", "waiting")
        ),
        format_seconds(summary["elapsed"]),
        "-"
        if summary["state"] != "running"
        else "stalled"
        if summary.get("stalled")
        else format_seconds(summary["eta"]),
        master_text(summary),
    ]


def master_text(summary: dict[str, Any]) -> str:
    """
    Who leads a job and in which epoch, as C{m1 (epoch 2)}; C{(replica)}
    added when a node holding a replica answered (a node older than
    issue 13 says neither: C{-}).
    """
    master = summary.get("master")
    if not master:
        return "-"
    text = f"{master} (epoch {summary.get('epoch', 1)})"
    return text + " (replica)" if summary.get("answered_by") == "replica" else text


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
    "skipped": "magenta",
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
        if counts.get("skipped"):
            parts.append(f"[magenta]{counts['skipped']} skipped[/]")
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
