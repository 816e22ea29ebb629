"""
Bringing a job's output files back (issue 16): every output its tasks'
results list (JOB_TASKS) is read from the node with FETCH_BLOB pieces
(L{p2pexec.transfer}'s C{pull}) into C{INTO/JOB/TASK/PATH}.

Each file is written to a temporary file beside its place, checked (size
and SHA-256) and renamed into place, so that a file is either whole or
absent.  A path that climbs out (C{..}, absolute) is refused, and no
symbolic link is followed below C{INTO}: the folders are opened one by one
without following links (C{O_NOFOLLOW}), and the file is created in the
last one.  A file already there with the same size and SHA-256 is left
alone and not asked for again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attr
from twisted.internet.defer import CancelledError, Deferred

from p2pexec import transfer
from p2pexec.client import calls
from p2pexec.client.calls import Caller
from p2pexec.client.errors import ClientError
from p2pexec.client.uploads import Remote
from p2pexec.filenames import check_relative
from p2pexec.jobfile import HASH_PIECE
from p2pexec.model import OutputFile, ValidationError

Pull = Callable[[Any, "LocalWriter"], "Awaitable[None] | Deferred[None]"]
"""C{transfer.pull(caller, writer)}: fill C{writer} with its blob's pieces, then finish it."""

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A place to write an output that would climb out of its folder, or lead through a symbolic link."""


@attr.s(auto_attribs=True)
class FetchSummary:
    """
    What L{fetch_outputs} did.

    @ivar files: files fetched.
    @ivar bytes: their bytes.
    @ivar present: files left alone, already there with the same content.
    @ivar problems: one line per output that could not be fetched.
    """

    files: int = 0
    bytes: int = 0
    present: int = 0
    problems: list[str] = attr.ib(factory=list)


def check_component(name: str, what: str) -> str:
    """
    C{name} (a job or task id) as one folder name.

    @raise PathRefused: for C{.}, C{..}, or a name with C{/} or NUL.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise PathRefused(f"{what} {name!r} cannot be a folder name: refused")
    return name


def open_folder(top: int, parts: Sequence[str], what: str) -> int:
    """
    The folder C{top/parts...}, made where missing, opened without following
    a symbolic link at any step; a new descriptor the caller closes.

    @raise PathRefused: if a step is a symbolic link or not a folder.
    """
    fd = os.dup(top)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathRefused(f"{what}: {part!r} is a symbolic link or not a folder: not followed") from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(folder: int, name: str, size: int, sha256: str) -> bool:
    """Whether C{folder/name} is a regular file (not a link) of C{size} bytes whose SHA-256 is C{sha256}."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size != size:
            return False
        digest = hashlib.sha256()
        while piece := f.read(HASH_PIECE):
            digest.update(piece)
    return digest.hexdigest() == sha256


class LocalWriter:
    """
    Receives one output's pieces (as L{p2pexec.transfer}'s C{pull} gives
    them) into a temporary file in C{folder}, hashing as it goes;
    L{finish} checks size and SHA-256 and renames it to C{name}.

    @ivar digest: the SHA-256 it must have.
    @ivar size: the bytes it must have.
    @ivar received: the bytes written so far.
    """

    def __init__(self, folder: int, name: str, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size
        self.received = 0
        self._folder = folder
        self._name = name
        self._hash = hashlib.sha256()
        self._temp = f".{name}.{secrets.token_hex(4)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self._temp, flags, 0o644, dir_fd=folder)

    @property
    def complete(self) -> bool:
        """Whether every byte has come."""
        return self.received == self.size

    def write(self, offset: int, data: bytes) -> None:
        """
        Write the piece at C{offset}.

        @raise ValueError: for a piece out of order or past the size (nothing written).
        """
        if offset != self.received:
            raise ValueError(f"a piece at offset {offset}, expected {self.received}")
        if self.received + len(data) > self.size:
            raise ValueError(f"a piece past the file's {self.size} bytes")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(data)
        self.received += len(data)

    def finish(self) -> None:
        """
        Check the file and rename it into place.

        @raise ValueError: if it is short or its SHA-256 is not the expected one.
        """
        if not self.complete:
            raise ValueError(f"it ended after {self.received} of its {self.size} bytes")
        if self._hash.hexdigest() != self.digest:
            raise ValueError(
                f"its SHA-256 does not match ({self._hash.hexdigest()[:12]}..., expected {self.digest[:12]}...)"
            )
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.rename(self._temp, self._name, src_dir_fd=self._folder, dst_dir_fd=self._folder)

    def abort(self) -> None:
        """Remove the temporary file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._temp, dir_fd=self._folder)


async def fetch_one(remote: Remote, pull: Pull, top: int, job: str, task: str, output: OutputFile) -> bool:
    """
    Fetch one output under C{top} (C{JOB/TASK/PATH}); whether it was
    fetched (C{False}: already there).

    @raise PathRefused: for a place that leads through a link.
    """
    *folders, name = output.path.split("/")
    folder = open_folder(top, [job, task, *folders], f"task {task}: output {output.path}")
    try:
        if same_file(folder, name, output.size, output.sha256):
            return False
        writer = LocalWriter(folder, name, output.sha256, output.size)
        try:
            await pull(remote, writer)
        except BaseException:
            writer.abort()
            raise
        return True
    finally:
        os.close(folder)


async def fetch_outputs(node: Caller, job: str, into: str, pull: Pull | None = None) -> FetchSummary:
    """
    Fetch every output of C{job}'s results from C{node} into
    C{into/JOB/TASK/PATH} (C{into} made if missing).

    @param pull: C{transfer.pull}; by default L{p2pexec.transfer}'s.
    @return: what was fetched, and a line for each output that was not.
    @raise ClientError: for an unknown job or a lost connection.
    @raise PathRefused: for a job id that cannot be a folder name, or an
        C{into} that cannot be made.
    """
    check_component(job, "job id")
    tasks = await calls.all_tasks(node, job)
    summary = FetchSummary()
    wanted = [(entry, entry["outputs"]) for entry in tasks if entry.get("outputs")]
    if not wanted:
        return summary
    get = pull if pull is not None else transfer.pull
    try:
        os.makedirs(into, exist_ok=True)
        top = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PathRefused(f"cannot make or open the folder {into}: {e.strerror or e}") from None
    remote = Remote(node)
    try:
        for entry, outputs in wanted:
            task = str(entry.get("id"))
            for number, raw in enumerate(outputs if isinstance(outputs, list) else [outputs], start=1):
                try:
                    check_component(task, "task id")
                    output = OutputFile.from_wire(raw, f"task {task}: output #{number}")
                    check_relative(output.path, f"task {task}: output")
                    if await fetch_one(remote, get, top, job, task, output):
                        summary.files += 1
                        summary.bytes += output.size
                    else:
                        summary.present += 1
                except CancelledError:
                    raise
                except (ValidationError, PathRefused) as e:
                    summary.problems.append(f"{e}")
                except ClientError as e:
                    summary.problems.append(f"task {task}: output {_path(raw)}: could not fetch it: {e.message}")
                except Exception as e:  # the node's NO_SUCH_BLOB, a file that cannot be written, a bad piece
                    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    summary.problems.append(f"task {task}: output {_path(raw)}: could not fetch it: {reason}")
    finally:
        os.close(top)
    return summary


def _path(raw: Any) -> str:
    """An output's path as the node gave it, for a problem line."""
    return str(raw.get("path")) if isinstance(raw, dict) else repr(raw)
