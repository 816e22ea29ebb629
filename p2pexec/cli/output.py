"""
What the tasks print, printed as GNU parallel prints it, for C{run} and
C{submit --wait --output}:

 - each task's standard output on ours, whole (never interleaved with
   another's), as it ends; with C{--keep-order} in argument order, each
   held until those before it are printed;
 - its standard error on ours, after its output, and a line naming the
   task when it did not run or was stopped (C{command not found},
   C{timed out ...});
 - with C{--tag}, each line starting with the task's arguments and a tab;
 - progress as one status line on standard error, only when that is a
   terminal, cleared while output is printed.

L{TaskFollower} ties this to the following of a job: it finds the ended
tasks (L{p2pexec.cli.ended}), prints them, and writes the joblog.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, TextIO

import attr

from p2pexec.cli.ended import EndedTasks, Node, whole_output
from p2pexec.cli.errors import PROG
from p2pexec.cli.joblog import Joblog, command_text
from p2pexec.cli.render import ProgressDisplay, final_line, for_stream, outcome_counts, progress_line
from p2pexec.clock import WallClock
from p2pexec.model import TaskSpec


@attr.s(auto_attribs=True, frozen=True)
class TaskLabel:
    """
    What the client knows of a task it submitted, to print and log it.

    @ivar sequence: its place in the job, from 1 (C{{#}}, the joblog's Seq).
    @ivar tag: what C{--tag} puts before its lines (its arguments, or its id).
    @ivar command: its command line, for the joblog.
    """

    sequence: int
    tag: str
    command: str


def task_labels(tasks: Sequence[TaskSpec], tags: Sequence[str] | None = None) -> dict[str, TaskLabel]:
    """Each task's label by id: its arguments as the tag if given (C{run}), else its id (C{submit})."""
    return {
        spec.id: TaskLabel(number, spec.id if tags is None else tags[number - 1], command_text(spec))
        for number, spec in enumerate(tasks, start=1)
    }


def tagged(text: str, tag: str) -> str:
    """C{text} with C{tag} and a tab before each of its lines."""
    return "".join(f"{tag}\t{line}" for line in text.splitlines(keepends=True))


class StatusLine:
    """
    A job's progress as one line on a terminal (standard error), rewritten
    in place, and cleared while something else is printed.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._text: str | None = None

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def _draw(self) -> None:
        if self._text is not None:
            self._stream.write("\r\x1b[K" + self._text[: max(self._width() - 1, 10)])
            self._stream.flush()

    def update(self, summary: dict[str, Any], now: float) -> None:
        """Show C{summary}'s progress."""
        self._text = for_stream(self._stream, progress_line(summary))
        self._draw()

    def hide(self) -> None:
        """Clear the line, for a while (L{show} draws it again)."""
        if self._text is not None:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def show(self) -> None:
        """Draw the line again after L{hide}."""
        self._draw()

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Clear the line for good."""
        self.hide()
        self._text = None


class TaskPrinter:
    """Prints each ended task's output, grouped, in completion or (C{keep_order}) argument order."""

    def __init__(self, out: TextIO, err: TextIO, keep_order: bool, tag: bool) -> None:
        self._out = out
        self._err = err
        self._keep_order = keep_order
        self._tag = tag
        self._held: dict[int, tuple[TaskLabel, dict[str, Any], str, str]] = {}
        self._next = 1

    def ended(self, label: TaskLabel, entry: dict[str, Any], stdout: str, stderr: str) -> None:
        """One task ended: print it now, or once those before it are (C{keep_order})."""
        if not self._keep_order:
            self._print(label, entry, stdout, stderr)
            return
        self._held[label.sequence] = (label, entry, stdout, stderr)
        while self._next in self._held:
            self._print(*self._held.pop(self._next))
            self._next += 1

    def flush(self) -> None:
        """Print what is still held (tasks that never ended leave gaps), in order."""
        for sequence in sorted(self._held):
            self._print(*self._held.pop(sequence))

    def _print(self, label: TaskLabel, entry: dict[str, Any], stdout: str, stderr: str) -> None:
        if self._tag:
            stdout, stderr = tagged(stdout, label.tag), tagged(stderr, label.tag)
        if stdout:
            self._out.write(for_stream(self._out, stdout))
            self._out.flush()
        error = entry.get("error")
        if error and entry.get("status") != "succeeded":
            stderr += f"{PROG}: task {entry['id']} ({label.tag}): {error}\n"
        if stderr:
            self._err.write(for_stream(self._err, stderr))
            self._err.flush()


class TaskFollower:
    """
    While a job is followed: its ended tasks, printed (L{TaskPrinter}, if
    any) and logged (L{Joblog}, if any), and where progress and the final
    lines go when the tasks' output has standard output to itself.
    """

    def __init__(
        self,
        job: str,
        labels: dict[str, TaskLabel],
        err: TextIO,
        printer: TaskPrinter | None = None,
        joblog: Joblog | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self._labels = labels
        self._err = err
        self.printer = printer
        self._joblog = joblog
        self._wall_clock = wall_clock
        self._ended = EndedTasks(job)
        self._job = job
        self._done = -1
        self._status: StatusLine | None = None

    def note(self, text: str, always: bool = False) -> None:
        """A line for people on standard error: only on a terminal, unless C{always}."""
        if always or self._err.isatty():
            if self._status is not None:
                self._status.hide()
            self._err.write(for_stream(self._err, text) + "\n")
            self._err.flush()
            if self._status is not None:
                self._status.show()

    def progress(self) -> ProgressDisplay | None:
        """
        With a printer, progress as a status line on standard error if that
        is a terminal (else none: C{None} is returned too, and nothing shows).
        Without one, C{None}: the caller shows progress as it always does.
        """
        if self.printer is None or not self._err.isatty():
            return None
        self._status = StatusLine(self._err)
        return self._status

    async def poll(self, node: Node, summary: dict[str, Any]) -> None:
        """Print and log the tasks that ended since the last poll (asked for only when the job's count moved)."""
        if summary["done"] == self._done and summary["state"] == "running":
            return
        self._done = summary["done"]
        ended = await self._ended.new(node)
        if not ended:
            return
        if self._status is not None:
            self._status.hide()
        seen_at = self._wall_clock()
        for entry in ended:
            label = self._labels.get(entry["id"]) or TaskLabel(0, entry["id"], entry["id"])
            if self._joblog is not None:
                self._joblog.ended(label.sequence, entry, label.command, seen_at)
            if self.printer is not None:
                stdout = await whole_output(node, self._job, entry, "stdout")
                stderr = await whole_output(node, self._job, entry, "stderr")
                self.printer.ended(label, entry, stdout, stderr)
        if self._status is not None:
            self._status.show()

    def finish(self, summary: dict[str, Any]) -> None:
        """
        The job ended: print what is held, then its final line on standard
        error (on a terminal; always when some task did not succeed).
        """
        if self.printer is not None:
            self.printer.flush()
        succeeded = summary["state"] == "finished" and summary["counts"]["succeeded"] == summary["total"]
        if succeeded:
            self.note(final_line(summary))
        else:
            self.note(
                f"{PROG}: job {summary['id']} {summary['state']}: {outcome_counts(summary)} of {summary['total']} "
                f"task(s); each task's result: p2pexec result {summary['id']}",
                always=True,
            )
