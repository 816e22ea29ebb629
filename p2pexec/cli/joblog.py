"""
GNU parallel's joblog, for C{run --joblog FILE} and C{submit --wait
--joblog FILE}: a header line, then one tab-separated line per task as it
ends, flushed at once, in the format of GNU parallel 20221122:

    Seq  Host  Starttime  JobRuntime  Send  Receive  Exitval  Signal  Command

C{Seq} is the task's sequence number (C{{#}}: its place in the job, from 1);
C{Host} the node that ran it; C{Starttime} when it started (seconds since the
epoch, 3 decimals, by that node's clock); C{JobRuntime} its duration
(C{%10.3f}); C{Send} 0; C{Receive} the bytes of its standard output;
C{Exitval} its exit code (0 when a signal killed it, -1 when it timed out or
never ran, as GNU parallel writes them); C{Signal} the signal that killed it,
or 0; C{Command} the command line, newlines written as NUL as GNU parallel does.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, TextIO

from p2pexec.cli.errors import CliError
from p2pexec.model import TaskSpec

HEADER = "\t".join(("Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command"))

STDOUT = "-"
"""The joblog file name that stands for standard output."""


def command_text(spec: TaskSpec) -> str:
    """
    A task's command as one line: its shell command line, or its argv
    quoted as a shell would read it (GNU parallel's quoting of arguments),
    or, for an instruction, its id.
    """
    if spec.command is None:
        return spec.id
    if isinstance(spec.command, str):
        return spec.command
    return shlex.join(spec.command)


def exit_value(entry: dict[str, Any]) -> int:
    """The C{Exitval} column: the exit code; 0 when killed by a signal; -1 when timed out or not run."""
    code = entry.get("exit_code")
    if isinstance(code, int):
        return code
    if entry.get("status") != "timed-out" and entry.get("signal"):
        return 0
    return -1


def received_bytes(entry: dict[str, Any]) -> int:
    """The C{Receive} column: the bytes the task wrote to standard output (its tail's, if no more is known)."""
    size = entry.get("stdout_size")
    if isinstance(size, int):
        return size
    return len((entry.get("stdout") or "").encode("utf-8", "surrogateescape"))


def joblog_line(sequence: int, entry: dict[str, Any], command: str, seen_at: float) -> str:
    """
    The joblog line of one ended task (a JOB_TASKS entry), without its newline.

    @param seen_at: when the client saw it ended (wall clock); with its
        duration, an estimate of its start when the node did not say.
    """
    duration = float(entry.get("duration") or 0.0)
    started = entry.get("started")
    if not isinstance(started, (int, float)):
        started = seen_at - duration
    return "\t".join(
        (
            str(sequence),
            str(entry.get("node") or "-"),
            f"{started:.3f}",
            f"{duration:10.3f}",
            "0",
            str(received_bytes(entry)),
            str(exit_value(entry)),
            str(entry.get("signal") or 0),
            command.replace("\n", "\0"),
        )
    )


class Joblog:
    """A joblog being written: the header at once, then a line per task, each flushed."""

    def __init__(self, stream: TextIO, owned: bool) -> None:
        self._stream = stream
        self._owned = owned
        self.write_line(HEADER)

    @classmethod
    def open(cls, path: str, stdout: TextIO | None = None) -> Joblog:
        """
        Create (or empty) C{path}, and write the header; C{-}: standard output.

        @raise CliError: if it cannot be opened.
        """
        if path == STDOUT:
            return cls(sys.stdout if stdout is None else stdout, owned=False)
        try:
            stream = open(path, "w", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise CliError(f"--joblog: cannot write {path}: {e.strerror or e}") from None
        return cls(stream, owned=True)

    def write_line(self, line: str) -> None:
        """Write one line and flush it."""
        self._stream.write(line + "\n")
        self._stream.flush()

    def ended(self, sequence: int, entry: dict[str, Any], command: str, seen_at: float) -> None:
        """Log one ended task."""
        self.write_line(joblog_line(sequence, entry, command, seen_at))

    def close(self) -> None:
        """Close the file (not standard output)."""
        if self._owned:
            self._stream.close()
