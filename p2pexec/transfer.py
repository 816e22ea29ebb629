"""
Moving blobs over AMP (issue 16): the sending and pulling sides of
HAVE_BLOBS, PUT_BLOB and FETCH_BLOB (see L{p2pexec.commands.files} and
docs/protocol.rst, "Files").

A blob travels in pieces of L{PIECE} bytes, up to L{PIECES} of them in
one box (PUT_BLOB's C{data}, C{data1}...; FETCH_BLOB's answer), at most
C{window} boxes unanswered at once: a sender holds at most C{window} boxes
in memory (its own requests), and so does the receiver (it answers a box
once its pieces are written), whatever the blob's size.  The window keeps
the connection busy while answers come back; several pieces a box spare
most of AMP's cost per box.  A puller writes through a
L{p2pexec.blob_thread.Runner}, so that hashing and writing may run in
another thread; a box counts in the window until it is written.

Used by the client (uploads, fetching outputs), the worker (inputs in,
outputs out) and the node's L{p2pexec.file_service.FileService} (the
proxy).  Nothing here needs a store to push: C{read(offset, limit)} gives
the bytes, from a file or a store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.blob_thread import IBlobWriter as IBlobWriter
from p2pexec.blob_thread import Runner, inline

PIECE = commands.PIECE_LIMIT
"""The bytes of one piece: 60,000, so that a piece fits one AMP value (65,535 bytes)."""

PIECES = commands.PIECES_PER_BOX
"""The pieces one box carries, by default (16: 960,000 bytes)."""

WINDOW = 4
"""How many boxes of one transfer may be unanswered at once, by default."""


class Caller(Protocol):
    """Anything that sends AMP commands: a L{p2pexec.peer.PeerProtocol}, a client's AMP, a test double."""

    def callRemote(self, command: type[amp.Command], **kw: Any) -> Deferred[dict[str, Any]]:
        """Send C{command} with the arguments C{kw}; fire with the answer, or fail with the declared error."""


def rate(size: int, seconds: float) -> str:
    """A transfer's speed for a log line: C{"335 MB/s"} (megabytes of 10**6 bytes), or C{"at once"}."""
    if seconds <= 0:
        return "at once"
    speed = size / seconds / 1e6
    return f"{speed:,.0f} MB/s" if speed >= 10 else f"{speed:.2g} MB/s"


def _call(caller: Caller, command: type[amp.Command], **kw: Any) -> Deferred[dict[str, Any]]:
    """C{caller.callRemote}, with the errors AMP raises at once (a value too long, a closed connection) as a failed Deferred."""
    try:
        return caller.callRemote(command, **kw)
    except Exception:
        d: Deferred[dict[str, Any]] = Deferred()
        d.errback(Failure())
        return d


def missing(caller: Caller, digests: Sequence[str]) -> Deferred[list[str]]:
    """
    Ask (HAVE_BLOBS) which of C{digests} the other side lacks, in boxes of
    at most L{commands.MAX_DIGESTS}; fire with them, in the order given,
    each once.
    """
    unique = list(dict.fromkeys(digests))
    boxes = [unique[i : i + commands.MAX_DIGESTS] for i in range(0, len(unique), commands.MAX_DIGESTS)]

    def checked(answers: list[dict[str, Any]]) -> list[str]:
        lacking: set[str] = set()
        for answer in answers:
            listed = answer["missing"]
            if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
                raise commands.TransferRefused("the answer to HAVE_BLOBS is not a list of digests")
            lacking.update(listed)
        return [digest for digest in unique if digest in lacking]

    asked = [_call(caller, commands.HaveBlobs, digests=box) for box in boxes]
    return gatherResults(asked, consumeErrors=True).addCallbacks(checked, _first_error)


def _first_error(failure: Failure) -> Failure:
    """The failure of the first of several calls that failed (not gatherResults' wrapper)."""
    error = failure.value
    if isinstance(error, FirstError):
        return error.subFailure
    return failure


def push(
    caller: Caller,
    read: Callable[[int, int], bytes],
    digest: str,
    size: int,
    window: int = WINDOW,
    pieces: int = PIECES,
) -> Deferred[int]:
    """
    Send the blob C{digest} of C{size} bytes (PUT_BLOB boxes of up to
    C{pieces} pieces, in order, at most C{window} boxes unanswered).

    @param read: C{read(offset, limit)} gives the C{limit} bytes at
        C{offset} (a file, or a store); fewer bytes than asked means the
        file changed since it was hashed, and fails the push.
    @return: fires with the bytes of the pieces taken (0 if the answer to
        the first piece says complete although the blob needs more pieces:
        the other side had it already); fails with the other side's refusal
        (L{commands.TransferRefused}) or a local error.
    """
    return _Push(caller, read, digest, size, max(1, window), min(max(1, pieces), PIECES)).done


class _Push:
    """One blob being sent: the boxes sent, the answers awaited."""

    def __init__(
        self, caller: Caller, read: Callable[[int, int], bytes], digest: str, size: int, window: int, pieces: int
    ) -> None:
        self._caller = caller
        self._read = read
        self._digest = digest
        self._size = size
        self._window = window
        self._pieces = pieces
        self._next = 0
        self._started = False
        self._unanswered = 0
        self._sent = 0
        self.done: Deferred[int] = Deferred()
        self._send()

    def _send(self) -> None:
        """Send boxes until C{window} are unanswered or none is left."""
        while (
            not self.done.called and self._unanswered < self._window and (self._next < self._size or not self._started)
        ):
            offset = self._next
            box: dict[str, bytes] = {}
            at = offset
            for name in ("data", *commands.EXTRA_PIECES[: self._pieces - 1]):
                limit = min(PIECE, self._size - at)
                if name != "data" and limit == 0:
                    break
                try:
                    data = self._read(at, limit)
                except Exception:
                    self._fail(Failure())
                    return
                if len(data) != limit:
                    self._fail(
                        Failure(
                            commands.TransferRefused(
                                f"read {len(data)} bytes at offset {at} of blob {self._digest[:12]}, expected "
                                f"{limit}: the file changed since it was hashed"
                            )
                        )
                    )
                    return
                box[name] = data
                at += limit
            self._started = True
            self._next = at
            self._unanswered += 1
            d = _call(self._caller, commands.PutBlob, sha256=self._digest, size=self._size, offset=offset, **box)
            d.addCallbacks(self._answered, self._fail, callbackArgs=(offset, at - offset))

    def _answered(self, answer: dict[str, Any], offset: int, limit: int) -> None:
        """A piece was taken: finish if the blob is whole there, else send more."""
        self._unanswered -= 1
        if self.done.called:
            return
        if offset == 0 and answer["complete"] and limit < self._size:
            # The first box cannot have made it whole: it had the blob already.
            self.done.callback(0)
            return
        self._sent += limit
        if answer["complete"]:
            self.done.callback(self._sent)
        elif self._unanswered == 0 and self._next >= self._size:
            self._fail(
                Failure(
                    commands.TransferRefused(
                        f"the receiver holds {answer['received']} of the {self._size} bytes of blob "
                        f"{self._digest[:12]} after the last box, and does not call it complete"
                    )
                )
            )
        else:
            self._send()

    def _fail(self, failure: Failure) -> None:
        """Fail the push with the first error; later answers are ignored."""
        if not self.done.called:
            self.done.errback(failure)


def pull(
    caller: Caller, writer: IBlobWriter, window: int = WINDOW, pieces: int = PIECES, run: Runner = inline
) -> Deferred[None]:
    """
    Fetch the blob C{writer.digest} of C{writer.size} bytes (FETCH_BLOB
    boxes of up to C{pieces} pieces, at most C{window} boxes unanswered or
    waiting to be written) into C{writer}, in order even if answers came
    out of order, then C{writer.finish()}.  C{run} runs each write and the
    finish (in order: another thread, say).  On any failure
    C{writer.abort()} is called (through C{run}, after the writes under
    way) and the Deferred fails (with the other side's error,
    L{commands.NoSuchBlob} say, or L{commands.TransferRefused} if its
    answers do not add up).
    """
    return _Pull(caller, writer, max(1, window), min(max(1, pieces), PIECES) * PIECE, run).done


class _Pull:
    """One blob being fetched: the boxes asked, the answers held until their turn, the writes under way."""

    def __init__(self, caller: Caller, writer: IBlobWriter, window: int, box: int, run: Runner) -> None:
        self._caller = caller
        self._writer = writer
        self._window = window
        self._box = box
        self._run = run
        self._next_ask = 0
        self._asked_any = False
        self._next_write = 0
        self._early: dict[int, list[bytes]] = {}
        self._unanswered = 0
        self._writing = 0
        self._finishing = False
        self.done: Deferred[None] = Deferred()
        self._ask()

    def _ask(self) -> None:
        """Ask for boxes until C{window} are unanswered or unwritten, or none is left."""
        size = self._writer.size
        while (
            not self.done.called
            and self._unanswered + len(self._early) + self._writing < self._window
            and (self._next_ask < size or not self._asked_any)
        ):
            offset = self._next_ask
            self._asked_any = True
            self._next_ask = offset + self._box
            self._unanswered += 1
            d = _call(self._caller, commands.FetchBlob, sha256=self._writer.digest, offset=offset, limit=self._box)
            d.addCallbacks(self._answered, self._fail, callbackArgs=(offset,))

    def _answered(self, answer: dict[str, Any], offset: int) -> None:
        """Check a box; write it and those after it that came early."""
        self._unanswered -= 1
        if self.done.called:
            return
        size = self._writer.size
        expected = max(0, min(self._box, size - offset))
        try:
            pieces = commands.pieces_of(answer)
        except ValueError as e:
            self._fail(Failure(commands.TransferRefused(f"blob {self._writer.digest[:12]} was answered badly: {e}")))
            return
        got = sum(len(piece) for piece in pieces)
        if answer["size"] != size or got != expected:
            self._fail(
                Failure(
                    commands.TransferRefused(
                        f"blob {self._writer.digest[:12]} was answered with {got} bytes at offset {offset} of "
                        f"a size of {answer['size']}, expected {expected} bytes of a size of {size}"
                    )
                )
            )
            return
        self._early[offset] = pieces
        self._write()

    def _write(self) -> None:
        """Hand the boxes whose turn it is to the writer; finish once all are written; ask for more."""
        writer = self._writer
        while self._next_write in self._early:
            at = self._next_write
            pieces = self._early.pop(at)
            length = sum(len(piece) for piece in pieces)
            self._next_write += length
            self._writing += 1
            self._run(partial(_write_pieces, writer, at, pieces)).addCallbacks(self._written, self._fail)
            if not length:
                break
        if (
            not self._finishing
            and self._unanswered == 0
            and not self._early
            and self._next_ask >= writer.size
            and self._next_write >= writer.size
        ):
            self._finishing = True
            self._run(writer.finish).addCallbacks(self._finished, self._fail)
            return
        self._ask()

    def _written(self, _: None) -> None:
        """A box is written: its place in the window is free."""
        self._writing -= 1
        if not self.done.called:
            self._ask()

    def _finished(self, _: None) -> None:
        """The blob is whole and checked."""
        if not self.done.called:
            self.done.callback(None)

    def _fail(self, failure: Failure) -> None:
        """Abort the writer and fail the pull with the first error; later answers are ignored."""
        if self.done.called:
            return
        self._early.clear()
        try:
            self._run(self._writer.abort).addErrback(lambda _: None)
        finally:
            self.done.errback(failure)


def _write_pieces(writer: IBlobWriter, offset: int, pieces: list[bytes]) -> None:
    """Write C{pieces}, whose bytes follow each other from C{offset}."""
    for piece in pieces:
        writer.write(offset, piece)
        offset += len(piece)
