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

import codecs
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, BinaryIO, TextIO

import attr

from p2pexec.cli.ended import EndedTasks, Node, tail_bytes, whole_output
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


Reader = Callable[[dict[str, Any], str], AsyncIterator[bytes]]
"""Reads what an ended task (its JOB_TASKS entry) wrote to a stream (C{stdout} or C{stderr}), piece by piece."""


async def read_tail(entry: dict[str, Any], stream: str) -> AsyncIterator[bytes]:
    """A L{Reader} that gives the tail in the task's entry, and no more."""
    tail = tail_bytes(entry, stream)
    if tail:
        yield tail


class StreamSink:
    """
    Where the pieces of one task's stream are written as they come: as
    bytes to a pipe or a file (exact, through the stream's binary buffer
    when it has one), or decoded and escaped on a terminal; with a tag,
    each line started with it and a tab, also across pieces.
    """

    def __init__(self, stream: TextIO, tag: str | None) -> None:
        self._stream = stream
        self._binary: BinaryIO | None = None if stream.isatty() else getattr(stream, "buffer", None)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._prefix = None if tag is None else tag.encode("utf-8", "replace") + b"\t"
        self._line_start = True
        self.written = False

    def write(self, data: bytes) -> None:
        """Write one piece."""
        if not data:
            return
        if self._prefix is not None:
            data = b"".join((self._prefix + line if start else line) for line, start in self._lines(data))
        self.written = True
        if self._binary is not None:
            self._stream.flush()
            self._binary.write(data)
        else:
            self._stream.write(for_stream(self._stream, self._decoder.decode(data)))

    def _lines(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """Each line of C{data} (split after each newline), and whether it starts a line of the stream."""
        parts = data.split(b"\n")
        for part in parts[:-1]:
            yield part + b"\n", self._line_start
            self._line_start = True
        if parts[-1]:
            yield parts[-1], self._line_start
            self._line_start = False

    def close(self) -> None:
        """The stream ended: write what the decoder holds, and flush."""
        if self._binary is None:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                self._stream.write(for_stream(self._stream, rest))
        self._stream.flush()


class TaskPrinter:
    """
    Prints each ended task's output, grouped, in completion or
    (C{keep_order}) argument order, each stream written piece by piece as
    C{read} gives it (a held task's output is read once its turn comes).
    """

    def __init__(self, out: TextIO, err: TextIO, keep_order: bool, tag: bool, read: Reader = read_tail) -> None:
        self._out = out
        self._err = err
        self._keep_order = keep_order
        self._tag = tag
        self.read = read
        """Reads a task's stream (L{TaskFollower} sets one that asks the node for the whole output)."""
        self._held: dict[int, tuple[TaskLabel, dict[str, Any]]] = {}
        self._next = 1

    async def ended(self, label: TaskLabel, entry: dict[str, Any]) -> None:
        """One task ended: print it now, or once those before it are (C{keep_order})."""
        if not self._keep_order:
            await self._print(label, entry)
            return
        self._held[label.sequence] = (label, entry)
        while self._next in self._held:
            await self._print(*self._held.pop(self._next))
            self._next += 1

    async def flush(self) -> None:
        """Print what is still held (tasks that never ended leave gaps), in order."""
        for sequence in sorted(self._held):
            await self._print(*self._held.pop(sequence))

    async def _copy(self, entry: dict[str, Any], stream: str, sink: StreamSink) -> None:
        try:
            async for piece in self.read(entry, stream):
                sink.write(piece)
        finally:
            sink.close()

    async def _print(self, label: TaskLabel, entry: dict[str, Any]) -> None:
        tag = label.tag if self._tag else None
        await self._copy(entry, "stdout", StreamSink(self._out, tag))
        errors = StreamSink(self._err, tag)
        await self._copy(entry, "stderr", errors)
        error = entry.get("error")
        if error and entry.get("status") != "succeeded":
            self._err.write(for_stream(self._err, f"{PROG}: task {entry['id']} ({label.tag}): {error}\n"))
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
        order: Sequence[str] | None = None,
    ) -> None:
        """
        @param order: the job's task ids in its order, if the master holds
            exactly these (no C{all_nodes} task), so that only the ended
            tasks are asked for (see L{EndedTasks}).
        """
        self._labels = labels
        self._err = err
        self.printer = printer
        self._joblog = joblog
        self._wall_clock = wall_clock
        self._ended = EndedTasks(job, order=order)
        self._job = job
        self._done = -1
        self._status: StatusLine | None = None
        self._node: Node | None = None
        if printer is not None:
            printer.read = self._read

    def _read(self, entry: dict[str, Any], stream: str) -> AsyncIterator[bytes]:
        """A task's whole output, from the node the job is followed through now."""
        assert self._node is not None, "read before the first poll"
        return whole_output(self._node, self._job, entry, stream, lambda line: self.note(line, always=True))

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
        self._node = node
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
                await self.printer.ended(label, entry)
        if self._status is not None:
            self._status.show()

    async def finish(self, summary: dict[str, Any]) -> None:
        """
        The job ended: print what is held, then its final line on standard
        error (on a terminal; always when some task did not succeed).
        """
        if self.printer is not None:
            await self.printer.flush()
        succeeded = summary["state"] == "finished" and summary["counts"]["succeeded"] == summary["total"]
        if succeeded:
            self.note(final_line(summary))
        else:
            self.note(
                f"{PROG}: job {summary['id']} {summary['state']}: {outcome_counts(summary)} of {summary['total']} "
                f"task(s); each task's result: p2pexec result {summary['id']}",
                always=True,
            )
