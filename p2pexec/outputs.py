"""
A worker's store of its tasks' full output: every attempt's standard output
and standard error, written to files under the node's state directory as
the task writes them, and read back in pieces for TASK_OUTPUT.

Layout: C{STATE_DIR/output/JOB/TASK.ATTEMPT.stdout} and C{.stderr}.  A file
is created on the first byte its stream writes (a quiet task leaves none),
and each piece is written at once, so memory stays bounded whatever a task
prints.  A stream keeps at most L{OutputStore.max_output} bytes; past that
the rest is counted but not kept, and once the attempt ends a note saying
how much was cut is appended (and a C{.cut} marker file left beside it).

Output is kept for C{retention} seconds after it was last written, then
removed with its job's folder (L{OutputStore.sweep}, when the node starts
and every hour): by default as long as a master's journal keeps a finished
job (a week).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from typing import Any

import attr
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from p2pexec.clock import WallClock
from p2pexec.log import NodeLogger

log = NodeLogger()

DEFAULT_MAX_OUTPUT = 100 * 1024 * 1024
"""The most bytes of one stream of one attempt a worker keeps (C{--max-output})."""

DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seconds a job's output is kept after it was last written (C{--output-retention})."""

SWEEP_INTERVAL = 3600.0
"""Seconds between two sweeps of output past its retention."""

MAX_INDEXED = 100_000
"""Ended attempts whose sizes are remembered in memory; older ones are read from their files."""

STREAMS = ("stdout", "stderr")

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SAFE = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9_.:@+-]{0,127}")


def parse_size(text: str) -> int:
    """
    A size in bytes from C{100M}, C{1G}, C{512K}, C{4096} or C{2GiB} (powers of 1024).

    @raise ValueError: with a message saying what a size looks like.
    """
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"expected a size such as 100M, 1G, 512K or a number of bytes, not {text!r}")
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """
    Seconds from C{3600}, C{90s}, C{30m}, C{12h} or C{7d}.

    @raise ValueError: with a message saying what a duration looks like.
    """
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"expected a duration such as 7d, 12h, 30m or a number of seconds, not {text!r}")
    return float(found.group(1)) * _SECONDS[found.group(2).lower()]


def parse_output_options(max_output: str, retention: str) -> tuple[int, float]:
    """
    The node's C{--max-output} and C{--output-retention}, checked.

    @raise ValueError: naming the option at fault.
    """
    try:
        size = parse_size(max_output)
    except ValueError as e:
        raise ValueError(f"--max-output: {e}") from None
    try:
        seconds = parse_duration(retention)
    except ValueError as e:
        raise ValueError(f"--output-retention: {e}") from None
    if seconds <= 0:
        raise ValueError(f"--output-retention: {retention!r}: keep the output for some time (above 0)")
    return size, seconds


def check_output_options(options: MutableMapping[str, Any]) -> None:
    """
    Check and convert a node's C{--max-output} and C{--output-retention} in place.

    @raise usage.UsageError: naming the option at fault.
    """
    try:
        options["max-output"], options["output-retention"] = parse_output_options(
            options["max-output"], options["output-retention"]
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def open_store(options: Mapping[str, Any], state_dir: str, node: str) -> OutputStore | None:
    """The store a node's checked options ask for (in C{STATE_DIR/output}); C{None} for C{--max-output 0}."""
    if not options["max-output"]:
        return None
    where = os.path.join(state_dir, "output")
    return OutputStore(where, node, options["max-output"], options["output-retention"], time.time)


def format_size(size: int) -> str:
    """C{size} bytes in a few characters (C{100 MiB}, C{512 KiB}, C{12 bytes})."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _file_name(name: str) -> str:
    """C{name} as one path component: itself if plain, else a digest (never C{..} or a slash)."""
    if _SAFE.fullmatch(name) and name not in (".", ".."):
        return name
    return "x-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@attr.s(auto_attribs=True, slots=True)
class Piece:
    """What a stream holds from an offset on: the answer to TASK_OUTPUT, but for the node and attempt."""

    data: bytes
    next_offset: int
    size: int
    ended: bool
    cut: bool


@attr.s(auto_attribs=True, slots=True, eq=False)
class _Stream:
    """One stream of one attempt: its file, and what was written to it."""

    path: str
    limit: int
    fd: int | None = None
    written: int = 0
    """Bytes the task wrote, kept or not."""
    kept: int = 0
    """Bytes of the task's kept in the file (at most C{limit})."""
    size: int = 0
    """Bytes in the file: C{kept}, and the note once it is appended."""
    cut: bool = False
    broken: str | None = None


class AttemptOutput:
    """
    The output of one running attempt, written to its files as it arrives
    (see L{OutputStore.start}).
    """

    def __init__(self, store: OutputStore, folder: str, stem: str, limit: int) -> None:
        self._store = store
        self._folder = folder
        self.streams = tuple(_Stream(os.path.join(folder, f"{stem}.{name}"), limit) for name in STREAMS)
        self.ended = False

    def write(self, stream: int, data: bytes) -> None:
        """Keep C{data} written by the task to C{stream} (0: stdout, 1: stderr), up to the limit."""
        s = self.streams[stream]
        s.written += len(data)
        room = s.limit - s.kept
        if room <= 0 or s.broken is not None:
            s.cut = s.cut or room <= 0
            return
        if len(data) > room:
            data = data[:room]
            s.cut = True
        if self._append(s, data):
            s.kept += len(data)

    def _append(self, s: _Stream, data: bytes) -> bool:
        """Write C{data} at the end of C{s}'s file (created if need be); C{False} if it could not."""
        try:
            if s.fd is None:
                s.fd = self._store.create(self._folder, s.path)
            view = memoryview(data)
            while view:
                view = view[os.write(s.fd, view) :]
        except OSError as e:
            s.broken = e.strerror or str(e)
            log.warn(
                "Node {name} could not keep the output in {path}: {error}; the rest of that stream is not kept",
                name=self._store.node,
                path=s.path,
                error=s.broken,
            )
            self._close(s)
            return False
        s.size += len(data)
        return True

    def end(self) -> None:
        """The attempt ended: append the note to a cut stream, and close the files."""
        if self.ended:
            return
        self.ended = True
        for s in self.streams:
            if s.cut and s.broken is None:
                note = (
                    f"\n[p2pexec: output cut here: the task wrote {s.written} bytes to this stream, "
                    f"{s.written - s.kept} more than the worker's --max-output of {format_size(s.limit)}]\n"
                )
                self._append(s, note.encode("ascii"))
                try:
                    os.close(os.open(s.path + ".cut", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                except OSError:
                    pass
            self._close(s)

    def _close(self, s: _Stream) -> None:
        if s.fd is not None:
            try:
                os.close(s.fd)
            except OSError:
                pass
            s.fd = None


class OutputStore:
    """
    The full output of the attempts this worker ran (see the module's docstring).

    @ivar directory: where it keeps it (C{STATE_DIR/output}).
    @ivar max_output: the most bytes kept per stream per attempt.
    @ivar retention: seconds a job's output is kept after it was last written.
    """

    def __init__(
        self,
        directory: str,
        node: str,
        max_output: int = DEFAULT_MAX_OUTPUT,
        retention: float = DEFAULT_RETENTION,
        wall: WallClock | None = None,
    ) -> None:
        self.directory = directory
        self.node = node
        self.max_output = max_output
        self.retention = retention
        self._wall = wall
        self._made: set[str] = set()
        self._attempts: OrderedDict[tuple[str, str, int], AttemptOutput] = OrderedDict()

    def start(self, job: str, task: str, attempt: int) -> AttemptOutput:
        """An attempt starts: where its output goes (nothing is created until it writes)."""
        folder = os.path.join(self.directory, _file_name(job))
        entry = AttemptOutput(self, folder, f"{_file_name(task)}.{attempt}", self.max_output)
        key = (job, task, attempt)
        self._attempts.pop(key, None)
        self._attempts[key] = entry
        if len(self._attempts) > MAX_INDEXED:
            for old_key in list(self._attempts)[: len(self._attempts) - MAX_INDEXED]:
                if self._attempts[old_key].ended:
                    del self._attempts[old_key]
        return entry

    def keep_sweeping(self, clock: IReactorTime) -> None:
        """Sweep now (the node starts), and again every L{SWEEP_INTERVAL} seconds of C{clock}."""
        try:
            self.sweep()
        except OSError as e:
            log.warn("Node {name} could not sweep its kept output: {error}", name=self.node, error=e)
        clock.callLater(SWEEP_INTERVAL, self.keep_sweeping, clock)

    def create(self, folder: str, path: str) -> int:
        """Open C{path} for a stream's output, making its job's folder the first time."""
        if folder not in self._made:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            self._made.add(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            # Swept meanwhile: make it again.
            os.makedirs(folder, mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)

    def read(self, job: str, task: str, attempt: int, stream: str, offset: int, limit: int) -> Piece | None:
        """
        Up to C{limit} bytes of C{stream} of an attempt from C{offset} on, or
        C{None} if this worker holds nothing of that attempt (it never ran
        here, or its output was removed).
        """
        index = STREAMS.index(stream)
        entry = self._attempts.get((job, task, attempt))
        if entry is not None:
            s = entry.streams[index]
            size, ended, cut, path = s.size, entry.ended, s.cut, s.path
        else:
            stem = os.path.join(self.directory, _file_name(job), f"{_file_name(task)}.{attempt}")
            path = f"{stem}.{stream}"
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                other = f"{stem}.{STREAMS[1 - index]}"
                if not os.path.exists(other):
                    return None
                size = 0
            ended, cut = True, os.path.exists(path + ".cut")
        data = b""
        if offset < size and limit > 0:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                data = os.pread(fd, min(limit, size - offset), offset)
            finally:
                os.close(fd)
        return Piece(data, offset + len(data), size, ended, cut)

    def sweep(self, now: float | None = None) -> int:
        """
        Remove the output of every job whose folder was last written more
        than L{retention} seconds before C{now} (wall clock, by default the
        store's clock), unless one of its attempts is still running.

        @return: how many jobs' output was removed.
        """
        if now is None:
            assert self._wall is not None, "give the store a wall clock, or sweep() a time"
            now = self._wall()
        live = {os.path.dirname(e.streams[0].path) for e in self._attempts.values() if not e.ended}
        removed = 0
        try:
            folders = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False) or folder.path in live:
                continue
            try:
                newest = max([folder.stat().st_mtime] + [f.stat().st_mtime for f in os.scandir(folder.path)])
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warn("Node {name} could not look at {path}: {error}", name=self.node, path=folder.path, error=e)
                continue
            if newest < now - self.retention:
                shutil.rmtree(folder.path, ignore_errors=True)
                self._made.discard(folder.path)
                removed += 1
        if removed:
            stale = [
                k
                for k, e in self._attempts.items()
                if e.ended and not os.path.isdir(os.path.dirname(e.streams[0].path))
            ]
            for key in stale:
                del self._attempts[key]
            log.info(
                "Node {name} removed the kept output of {count} job(s) older than --output-retention",
                name=self.node,
                count=removed,
            )
        return removed
