"""
Sending a job's input files to the node before the job itself (issue 16):
the node is asked which of their SHA-256 digests it lacks (HAVE_BLOBS), and
only those are sent (PUT_BLOB, in pieces, a window of them in flight), read
from the local files the job file named.  L{p2pexec.client.calls.submit_tasks}
calls L{upload_inputs} before SUBMIT_JOB.

The transfers themselves are L{p2pexec.transfer}'s C{missing} and C{push},
looked up when first needed (a job without inputs never loads them), or
given by the caller (tests pass fakes).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.protocols import amp

from p2pexec import transfer
from p2pexec.client.calls import Caller
from p2pexec.client.errors import ClientError, JobRefused
from p2pexec.jobfile import hash_file
from p2pexec.model import InputFile, TaskSpec

Missing = Callable[[Any, Sequence[str]], "Awaitable[list[str]] | Deferred[list[str]]"]
"""C{transfer.missing(caller, digests)}: the digests the node lacks."""

Push = Callable[..., "Awaitable[int] | Deferred[int]"]
"""C{transfer.push(caller, read, digest, size)}: send one file; the bytes sent."""


class UploadFailed(JobRefused):
    """An input could not be sent (unreadable, changed since it was hashed, or refused by the node)."""


class Remote:
    """
    A client L{Caller} as L{p2pexec.transfer} wants one: C{callRemote}
    returning a Deferred (the client's C{call} turns the node's errors
    into one-line L{ClientError}s on the way).
    """

    def __init__(self, node: Caller) -> None:
        self.node = node

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Send C{command} through the client's connection."""

        async def call() -> dict[str, Any]:
            return await self.node.call(command, **arguments)

        return Deferred.fromCoroutine(call())


class LocalInput:
    """
    One input's local file, open for L{read}: it must still have the size
    it had when hashed (checked when opened, and on each read).  Its bytes
    are not hashed again here: the node checks the SHA-256 of what it
    receives and refuses a mismatch, which L{upload_inputs} then explains
    (L{changed_since_hashed}).
    """

    def __init__(self, task: str, file: InputFile) -> None:
        assert file.source is not None
        self._task = task
        self._file = file
        try:
            self._fd = os.open(file.source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UploadFailed(f"input {file.source} of task {task} cannot be read: {e.strerror or e}") from None
        size = os.fstat(self._fd).st_size
        if size != file.size:
            self.close()
            raise changed(task, file, f"it has {size} bytes now, {file.size} when hashed")

    def read(self, offset: int, limit: int) -> bytes:
        """
        Up to C{limit} bytes from C{offset}.

        @raise UploadFailed: if the file is shorter than it was.
        """
        data = os.pread(self._fd, limit, offset)
        if len(data) < min(limit, self._file.size - offset):
            raise changed(self._task, self._file, f"it ended at byte {offset + len(data)}, not {self._file.size}")
        return data

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def changed(task: str, file: InputFile, how: str) -> UploadFailed:
    """The one line for input C{file} of C{task}, which changed since it was hashed (C{how})."""
    return UploadFailed(f"input {file.source} of task {task} changed since it was hashed ({how}); submit the job again")


def changed_since_hashed(file: InputFile) -> bool:
    """
    Whether C{file}'s local copy no longer has the SHA-256 it was named by
    (hashed again: only after the node refused it, to say why).
    """
    assert file.source is not None
    try:
        digest, _ = hash_file(file.source)
    except OSError:
        return True
    return digest != file.sha256


def inputs_to_send(tasks: Iterable[TaskSpec]) -> dict[str, tuple[str, InputFile]]:
    """Each input digest with a local file behind it, once, with the first task that has it."""
    files: dict[str, tuple[str, InputFile]] = {}
    for task in tasks:
        for each in task.inputs:
            if each.source is not None:
                files.setdefault(each.sha256, (task.id, each))
    return files


async def upload_inputs(
    node: Caller, tasks: Iterable[TaskSpec], missing: Missing | None = None, push: Push | None = None
) -> int:
    """
    Send C{node} the input files of C{tasks} that it lacks (each digest
    once, however many tasks share it); return how many files were sent.

    @param missing: C{transfer.missing}; by default L{p2pexec.transfer}'s.
    @param push: C{transfer.push}; by default L{p2pexec.transfer}'s.
    @raise UploadFailed: naming the file and task, for a file that cannot
        be read, one that changed since it was hashed, or one the node
        refused (with its reason).
    """
    files = inputs_to_send(tasks)
    if not files:
        return 0
    find = missing if missing is not None else transfer.missing
    send = push if push is not None else transfer.push
    remote = Remote(node)
    try:
        lacking = await find(remote, list(files))
    except ClientError as e:
        raise UploadFailed(f"could not ask the node at {node.address} which inputs it has: {e.message}") from None
    sent = 0
    for digest in lacking:
        if digest not in files:
            continue
        task, file = files[digest]
        local = LocalInput(task, file)
        try:
            await send(remote, local.read, digest, file.size)
        except (UploadFailed, CancelledError):
            raise
        except Exception as e:  # the node's TRANSFER_REFUSED (a ClientError), or as AMP raises it
            if changed_since_hashed(file):
                # The node refused bytes whose SHA-256 did not match: say why, in the client's words.
                raise changed(task, file, "its SHA-256 is not the same") from None
            reason = e.message if isinstance(e, ClientError) else str(e)
            raise UploadFailed(f"could not send input {file.source} of task {task}: {reason}") from None
        finally:
            local.close()
        sent += 1
    return sent
