"""
Hashing and writing blobs off the reactor thread (issue 16): a transfer's
pieces are hashed (SHA-256) and written by one worker thread, in the order
they arrived, while the reactor thread reads the next boxes; both release
the GIL, so a second core works.

L{SerialThread} runs jobs in the order given, one at a time, in one
thread, and fires each job's Deferred on the reactor thread.  L{inline}
runs them at once (tests, and nodes that want no thread).  L{QueuedWriter}
puts a blob writer (a L{p2pexec.blobs.BlobWriter}) behind such a runner:
it checks each box's offset on the reactor thread, as the bytes are
accepted, and counts the boxes queued, so that a caller can bound them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


class Runner(Protocol):
    """Runs C{job()} somewhere; fires with its result (or fails with its error) on the reactor thread."""

    def __call__(self, job: Callable[[], T]) -> Deferred[T]:
        """Run C{job}, after every job given before it."""


def inline(job: Callable[[], T]) -> Deferred[T]:
    """A L{Runner} that runs C{job} at once, in the caller's thread."""
    try:
        return succeed(job())
    except Exception:
        return fail(Failure())


class IReactorThreads(Protocol):
    """What L{SerialThread} uses of the reactor."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        """Call C{f(*args)} in the reactor thread."""


class SerialThread:
    """
    A L{Runner} with one worker thread (started on the first job, a daemon):
    jobs run in the order given, one at a time; each Deferred fires in the
    reactor thread.
    """

    def __init__(self, reactor: IReactorThreads, name: str = "p2pexec blob writer") -> None:
        self._reactor = reactor
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Deferred[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __call__(self, job: Callable[[], T]) -> Deferred[T]:
        """Queue C{job}; a Deferred of its result."""
        d: Deferred[T] = Deferred()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((job, d))
        return d

    def _work(self) -> None:
        """The worker thread: run each job, hand its outcome to the reactor thread; stop at C{None}."""
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, d = item
            try:
                result = job()
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, result)
            del item, job, d

    def stop(self) -> None:
        """Let the thread end once the jobs queued are done (when the node stops)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


class IBlobWriter(Protocol):
    """
    A blob being received, whose methods block: a L{p2pexec.blobs.BlobWriter},
    or the client's writer to a local file.  What L{QueuedWriter} runs, a
    pull writes into (L{p2pexec.transfer.pull}), and the file service and the
    worker's file runner hold.
    """

    digest: str
    size: int
    received: int

    def write(self, offset: int, data: bytes) -> None:
        """Append C{data} at C{offset} (C{ValueError} otherwise)."""

    def finish(self) -> None:
        """Check the SHA-256 and keep the blob (C{ValueError} if it does not match)."""

    def abort(self) -> None:
        """Remove what was written (idempotent)."""


class QueuedWriter:
    """
    A blob writer whose writes, finish and abort run, in order, on a
    L{Runner}.

    @ivar accepted: the bytes accepted by L{write} (the offset the next box
        must start at), counted on the reactor thread.
    @ivar written: the bytes written (their jobs done).
    @ivar queued: the boxes accepted and not written yet.
    """

    def __init__(self, writer: IBlobWriter, run: Runner = inline) -> None:
        self._writer = writer
        self._run = run
        self.digest = writer.digest
        self.size = writer.size
        self.accepted = 0
        self.written = 0
        self.queued = 0
        self._stopped = False

    @property
    def received(self) -> int:
        """The bytes written so far (for messages)."""
        return self.written

    @property
    def stopped(self) -> bool:
        """Whether L{abort} was called."""
        return self._stopped

    @property
    def complete(self) -> bool:
        """Whether every declared byte was accepted."""
        return self.accepted == self.size

    def write(self, offset: int, pieces: Sequence[bytes]) -> Deferred[None]:
        """
        Accept C{pieces}, whose bytes follow each other from C{offset}
        (== L{accepted}), and write them after those accepted before; fires
        once they are written.  C{ValueError} at once (nothing accepted) for
        a wrong offset, bytes past the size, or a writer aborted.
        """
        if self._stopped:
            raise ValueError(f"Blob {self.digest[:12]} is no longer being received.")
        length = sum(len(piece) for piece in pieces)
        if offset != self.accepted:
            raise ValueError(f"offset {offset}, expected {self.accepted}")
        if offset + length > self.size:
            raise ValueError(f"the piece ends at byte {offset + length}, past the declared size of {self.size} bytes")
        self.accepted += length
        self.queued += 1
        writer = self._writer

        def job() -> None:
            if self._stopped:
                raise ValueError(f"Blob {self.digest[:12]} is no longer being received.")
            at = offset
            for piece in pieces:
                writer.write(at, piece)
                at += len(piece)

        def done(result: Any) -> Any:
            self.queued -= 1
            if not isinstance(result, Failure):
                self.written += length
            return result

        return self._run(job).addBoth(done)

    def finish(self) -> Deferred[None]:
        """Check and keep the blob once every write queued is done; fails (C{ValueError}) if it does not match."""
        return self._run(self._writer.finish)

    def abort(self) -> None:
        """Give up: the writes still queued are skipped, then the writer aborted (idempotent)."""
        if not self._stopped:
            self._stopped = True
            self._run(self._writer.abort).addErrback(lambda _: None)
