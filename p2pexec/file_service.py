"""
How a node answers HAVE_BLOBS, PUT_BLOB and FETCH_BLOB (issue 16; see
L{p2pexec.commands.files} and docs/protocol.rst, "Files").

L{FileService} decides, over the node's blob store (an L{IBlobStore}, the
L{p2pexec.blobs.BlobStore}): which blobs it lacks, where each incoming blob
is being written (one writer per blob per connection, aborted when the
connection closes), and where a piece asked for comes from: the store, or,
for a client asking for a blob this node lacks, the first connected peer
that says (HAVE_BLOBS) it has it, piece by piece (one hop: a peer's
FETCH_BLOB is answered from the store only).

L{p2pexec.file_commands.FileCommands} is the responder, mixed into L{p2pexec.peer.PeerProtocol}:
it checks the arguments and hands the work to the node's service
(C{IPeerHandler.files}; C{None}: the node moves no files).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.blob_thread import IBlobWriter, QueuedWriter, Runner, inline
from p2pexec.blobs import FRESH_PIN
from p2pexec.log import NodeLogger
from p2pexec.model import shorten
from p2pexec.transfer import _call, rate

if TYPE_CHECKING:
    pass

log = NodeLogger()

FILE_COMMANDS = frozenset(command.commandName for command in (commands.HaveBlobs, commands.PutBlob, commands.FetchBlob))
"""The file commands: a client's connection and a peer's may both send them."""

DIGEST = re.compile(r"[0-9a-f]{64}")
"""A blob's name: its SHA-256, 64 lowercase hex digits."""

ASK_TIMEOUT = 30.0
"""Seconds a node waits for a peer's answer when it fetches a piece for a client."""

MAX_INCOMING = 16
"""The most blobs one connection may be sending at once (each has a writer and a temporary file)."""

IDLE_TIMEOUT = 120.0
"""Seconds a PUT_BLOB transfer may go without a box before it is dropped (its temporary file removed)."""

MAX_QUEUED = 16
"""The most PUT_BLOB boxes of one blob taken and not yet written (answered): a sender's window, bounded."""

_REMEMBERED = 1_000
"""The most refused transfers remembered per connection, and blob sources remembered for the proxy."""


def replica_owner(job: str) -> str:
    """The owner a replica holds job C{job}'s files under (HOLD_BLOBS): C{replica:JOB}."""
    return f"replica:{job}"


class IBlobStore(Protocol):
    """The node's blob store (a L{p2pexec.blobs.BlobStore}): what the service uses of it."""

    max_transfer: int

    def has(self, digest: str) -> bool:
        """Whether the blob is held (marking it recently used)."""

    def size_of(self, digest: str) -> int | None:
        """The blob's size, or C{None} if it is not held."""

    def read(self, digest: str, offset: int, limit: int) -> bytes:
        """At most C{limit} bytes from C{offset} (C{b""} at or past the end); C{KeyError} if not held."""

    def receive(self, digest: str, size: int, pin: bool = False) -> IBlobWriter:
        """A writer for an incoming blob (pinned as it is kept, if asked); C{ValueError} for a bad digest or size."""

    def pin(self, digests: Iterable[str]) -> None:
        """Keep these blobs from eviction until unpinned."""

    def unpin(self, digests: Iterable[str]) -> None:
        """Undo one pin of each."""

    def hold(self, owner: str, digests: Iterable[str]) -> None:
        """Keep C{digests} from eviction until C{owner} is released (HOLD_BLOBS)."""


class IFileConnection(Protocol):
    """A connection the service answers on or asks through (a L{p2pexec.peer.PeerProtocol})."""

    peer_name: str | None

    @property
    def closed(self) -> bool:
        """Whether the connection is closed, or closing."""

    @property
    def client(self) -> bool:
        """Whether a client is on the other end (not a node)."""

    def address(self) -> str:
        """HOST:PORT of the other end."""

    def describe(self) -> str:
        """Who is on the other end, for log lines."""

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection has closed."""

    def callRemote(self, command: type[amp.Command], **kw: Any) -> Deferred[dict[str, Any]]:
        """Send a command; fire with its answer."""


class _Incoming:
    """The blobs one connection is sending: their writers, and the transfers refused."""

    def __init__(self) -> None:
        self.writers: dict[str, QueuedWriter] = {}
        self.started: dict[str, float] = {}
        self.idle: dict[str, IDelayedCall] = {}
        self.refused: set[str] = set()

    def stop_watching(self, digest: str) -> None:
        """Cancel the idle timer of the transfer of C{digest}, if any."""
        call = self.idle.pop(digest, None)
        if call is not None and call.active():
            call.cancel()


class _Lookup:
    """Asking the connected peers which of them has a blob (for the proxy); the first that has it wins."""

    def __init__(self, asked: int) -> None:
        self.left = asked
        self.waiting: list[Deferred[IFileConnection]] = []
        self.settled = False


class FileService:
    """
    A node's answers to the file commands.

    @ivar sent_files: blobs whose last piece this node answered FETCH_BLOB with
        (from its store, or relayed from a peer).
    @ivar sent_bytes: bytes answered in FETCH_BLOB.
    @ivar received_files: blobs received whole by PUT_BLOB and kept.
    @ivar received_bytes: bytes taken in PUT_BLOB.
    @ivar refused: transfers refused (each logged once).
    """

    def __init__(
        self,
        store: IBlobStore,
        clock: IReactorTime,
        timeout: float = ASK_TIMEOUT,
        max_incoming: int = MAX_INCOMING,
        run: Runner = inline,
    ) -> None:
        """
        @param store: the node's blobs.
        @param clock: for the timeout of the proxy's questions.
        @param timeout: seconds to wait for a peer's answer (proxy).
        @param max_incoming: the most blobs one connection may send at once.
        @param run: runs the writes (hashing, writing, the final check) of
            incoming blobs, in order: a L{p2pexec.blob_thread.SerialThread}
            moves them off the reactor thread.
        """
        self.store = store
        self._run = run
        self._clock = clock
        self._timeout = timeout
        self._max_incoming = max_incoming
        self.sent_files = 0
        self.sent_bytes = 0
        self.received_files = 0
        self.received_bytes = 0
        self.refused = 0
        self._incoming: dict[IFileConnection, _Incoming] = {}
        self._sources: dict[str, IFileConnection] = {}
        self._lookups: dict[str, _Lookup] = {}
        self._peers: Callable[[], Iterable[IFileConnection]] = tuple
        self._me = "this node"

    @property
    def _Me(self) -> str:  # noqa: N802 (the log lines' "Node w1 ...")
        """This node as a log line starts with it: C{Node w1}."""
        return self._me[:1].upper() + self._me[1:]

    def wire(self, peers: Callable[[], Iterable[IFileConnection]], name: str) -> None:
        """
        @param peers: gives the node's open connections to its peers (after
            their handshake), for the proxy.
        @param name: this node's name, for log lines and refusals.
        """
        self._peers = peers
        self._me = f"node {name}"

    # -- HAVE_BLOBS ------------------------------------------------------------

    def have(self, digests: list[str]) -> list[str]:
        """Which of C{digests} (checked already) the store lacks, in order, each once."""
        return [digest for digest in dict.fromkeys(digests) if not self.store.has(digest)]

    # -- HOLD_BLOBS ------------------------------------------------------------

    def hold_for_replica(self, job: str, digests: list[str]) -> list[str]:
        """
        HOLD_BLOBS (C{digests} checked already): hold those of C{digests} the
        store has for job C{job}'s replicated log, under L{replica_owner}
        (released when the log is pruned, see L{p2pexec.file_holds});
        return them, in order, each once.

        @raise commands.TransferRefused: if the hold cannot be written.
        """
        held = [digest for digest in dict.fromkeys(digests) if self.store.has(digest)]
        if held:
            try:
                self.store.hold(replica_owner(job), held)
            except (ValueError, OSError) as e:
                log.error(
                    "{me} could not hold the files of job {job} for its replica: {error}",
                    me=self._Me,
                    job=shorten(job, 80),
                    error=e,
                )
                raise commands.TransferRefused(f"{self._me} could not hold the files: {e}") from None
        return held

    # -- PUT_BLOB --------------------------------------------------------------

    def incoming(self, connection: IFileConnection) -> int:
        """How many blobs C{connection} is sending now (writers open)."""
        state = self._incoming.get(connection)
        return len(state.writers) if state is not None else 0

    def put(
        self, connection: IFileConnection, digest: str, size: int, offset: int, pieces: Sequence[bytes]
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        Take one box of PUT_BLOB (its arguments checked already by
        L{check_piece}): C{pieces} follow each other from C{offset}.  The
        answer comes once they are written (so the sender's window bounds
        what waits here).

        @raise commands.TransferRefused: with one sentence, logged (the
            Deferred fails with it if the write or the final check fails).
        """
        state = self._incoming.get(connection)
        if state is None:
            state = self._incoming[connection] = _Incoming()
            connection.when_lost().addCallback(lambda _: self.connection_lost(connection))
        writer = state.writers.get(digest)
        name = digest[:12]
        end = offset + sum(len(piece) for piece in pieces)
        if end > size:
            raise self._refuse(
                connection, state, digest, f"the piece ends at byte {end}, past the declared size of {size} bytes"
            )
        if writer is None:
            if offset != 0 and digest in state.refused:
                # The rest of a window of pieces after a refusal: refused without another log line.
                raise commands.TransferRefused(f"an earlier piece of blob {name} was refused; start again at offset 0")
            state.refused.discard(digest)
            held = self.store.size_of(digest)
            if held is not None:
                if held != size:
                    raise self._refuse(
                        connection, state, digest, f"blob {name} is held here with {held} bytes, not {size}"
                    )
                self.store.has(digest)
                self._pin_for_a_while(digest, pinned=False)
                return {"received": size, "complete": True}
            if offset != 0:
                raise self._refuse(
                    connection, state, digest, f"offset {offset}, expected 0: no transfer of blob {name} is under way"
                )
            if size > self.store.max_transfer:
                raise self._refuse(
                    connection,
                    state,
                    digest,
                    f"blob {name} of {size} bytes is over {self._me}'s --max-transfer of "
                    f"{self.store.max_transfer} bytes",
                )
            if len(state.writers) >= self._max_incoming:
                raise self._refuse(
                    connection,
                    state,
                    digest,
                    f"this connection is sending {len(state.writers)} blobs already (at most {self._max_incoming})",
                )
            try:
                writer = QueuedWriter(self.store.receive(digest, size, pin=True), self._run)
            except (ValueError, OSError) as e:
                raise self._refuse(connection, state, digest, str(e)) from None
            state.writers[digest] = writer
            state.started[digest] = self._clock.seconds()
        elif size != writer.size:
            raise self._refuse(
                connection, state, digest, f"blob {name} is being sent with {writer.size} bytes, not {size}"
            )
        if offset != writer.accepted:
            raise self._refuse(connection, state, digest, f"offset {offset}, expected {writer.accepted}")
        if writer.queued >= MAX_QUEUED:
            raise self._refuse(
                connection,
                state,
                digest,
                f"{writer.queued} boxes of blob {name} wait to be written (at most {MAX_QUEUED})",
            )
        written = writer.write(offset, pieces)
        self.received_bytes += end - offset
        if writer.complete:
            state.stop_watching(digest)  # the last box: what follows is the writer's, not the sender's
        else:
            self._watch_idle(connection, state, digest, writer)

        def failed(failure: Failure) -> Failure:
            failure.trap(ValueError, OSError)
            if writer.stopped and state.writers.get(digest) is not writer:
                # A box after a refusal of this transfer, or after the connection closed.
                raise commands.TransferRefused(f"an earlier piece of blob {name} was refused; start again at offset 0")
            raise self._refuse(connection, state, digest, str(failure.value), writer)

        if not writer.complete:
            return written.addCallbacks(lambda _: {"received": end, "complete": False}, failed)
        # The writer stays in state.writers until kept: a failure below refuses this transfer.
        return written.addCallback(lambda _: writer.finish()).addCallbacks(
            lambda _: self._kept(connection, state, writer), failed
        )

    def _watch_idle(self, connection: IFileConnection, state: _Incoming, digest: str, writer: QueuedWriter) -> None:
        """(Re)start the idle timer of a transfer: a sender that stops mid-file must not keep its temporary file."""
        state.stop_watching(digest)
        state.idle[digest] = self._clock.callLater(IDLE_TIMEOUT, self._idle, connection, state, digest, writer)

    def _idle(self, connection: IFileConnection, state: _Incoming, digest: str, writer: QueuedWriter) -> None:
        """A transfer went L{IDLE_TIMEOUT} seconds without a box: drop it (logged, counted as refused)."""
        state.idle.pop(digest, None)
        if state.writers.get(digest) is writer:
            self._refuse(
                connection,
                state,
                digest,
                f"no piece of blob {digest[:12]} came for {IDLE_TIMEOUT:g}s ({writer.accepted:,} of "
                f"{writer.size:,} bytes received); the part received is dropped",
                writer,
            )

    def _kept(self, connection: IFileConnection, state: _Incoming, writer: QueuedWriter) -> dict[str, Any]:
        """An incoming blob is whole, checked and kept: count it and log it; the last answer."""
        digest, size = writer.digest, writer.size
        state.stop_watching(digest)
        if state.writers.get(digest) is writer:
            del state.writers[digest]
        self.received_files += 1
        self._pin_for_a_while(digest, pinned=True)
        took = self._clock.seconds() - state.started.pop(digest, self._clock.seconds())
        log.info(
            "{Me} received file {digest} ({size} bytes) from {peer} in {took:.2f}s ({rate})",
            Me=self._Me,
            digest=digest[:12],
            size=f"{size:,}",
            peer=_who(connection),
            took=took,
            rate=rate(size, took),
        )
        return {"received": size, "complete": True}

    def _pin_for_a_while(self, digest: str, pinned: bool) -> None:
        """
        Keep a blob just sent here from eviction for L{FRESH_PIN} seconds (the
        store pinned it as it was kept, if C{pinned}): a client's input until
        its job is accepted and held, a worker's output until its result is.
        """
        if not pinned:
            self.store.pin([digest])
        self._clock.callLater(FRESH_PIN, self.store.unpin, [digest])

    def _refuse(
        self, connection: IFileConnection, state: _Incoming, digest: str, why: str, writer: QueuedWriter | None = None
    ) -> commands.TransferRefused:
        """Abort the transfer of C{digest} on C{connection}, log C{why}, count it; the error to raise."""
        if writer is None or state.writers.get(digest) is writer:
            writer = state.writers.pop(digest, None)
            state.started.pop(digest, None)
            state.stop_watching(digest)
        if writer is not None:
            writer.abort()
        if len(state.refused) >= _REMEMBERED:
            state.refused.clear()
        state.refused.add(digest)
        self.refused += 1
        why = shorten(why)
        log.warn("Refused PUT_BLOB from {peer}: {reason}", peer=_who(connection), reason=why)
        return commands.TransferRefused(why)

    def connection_lost(self, connection: IFileConnection) -> None:
        """A connection closed: abort the blobs it was sending (their temporary files go)."""
        state = self._incoming.pop(connection, None)
        if state is None:
            return
        for digest, writer in state.writers.items():
            state.stop_watching(digest)
            writer.abort()
            log.info(
                "{Me} dropped the part of blob {digest} received from {peer} ({received} of {size} bytes): "
                "the connection closed",
                Me=self._Me,
                digest=digest[:12],
                peer=_who(connection),
                received=writer.received,
                size=writer.size,
            )

    # -- FETCH_BLOB ------------------------------------------------------------

    def fetch(
        self, connection: IFileConnection, digest: str, offset: int, limit: int, proxy: bool
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """
        Answer one FETCH_BLOB (its arguments checked already) from the store,
        or, if C{proxy} (a client asked) and the store lacks it, from a peer.

        @raise commands.NoSuchBlob: nobody this node asks has it.
        """
        size = self.store.size_of(digest)
        if size is not None:
            if offset == 0:
                self.store.has(digest)
            try:
                data = self.store.read(digest, offset, limit)
            except KeyError:
                pass  # Evicted since: as if never held.
            except OSError as e:
                log.warn("{Me} could not read blob {digest}: {error}", Me=self._Me, digest=digest, error=str(e))
                raise commands.NoSuchBlob(f"{self._me} could not read blob {digest[:12]}: {e}") from None
            else:
                return self._count_sent(offset, data, size)
        if not proxy:
            raise commands.NoSuchBlob(f"{self._me} does not hold blob {digest[:12]}")
        return self._proxy(connection, digest, offset, limit)

    def _count_sent(self, offset: int, data: bytes, size: int) -> dict[str, Any]:
        """Count the bytes answered; the answer, in pieces of at most L{commands.PIECE_LIMIT} bytes."""
        self.sent_bytes += len(data)
        if offset + len(data) == size and (data or size == 0):
            self.sent_files += 1
        view = memoryview(data)
        answer: dict[str, Any] = {"data": view[: commands.PIECE_LIMIT], "size": size}
        for n, name in enumerate(commands.EXTRA_PIECES, 1):
            piece = view[n * commands.PIECE_LIMIT : (n + 1) * commands.PIECE_LIMIT]
            if not piece:
                break
            answer[name] = piece
        return answer

    def _proxy(self, connection: IFileConnection, digest: str, offset: int, limit: int) -> Deferred[dict[str, Any]]:
        """A piece of a blob this node lacks, from the peer that has it (found once per blob)."""
        source = self._sources.get(digest)
        if source is not None and source.closed:
            del self._sources[digest]
            source = None
        if source is not None:
            return self._forward(source, digest, offset, limit)
        found = self._find(digest, connection)
        return found.addCallback(lambda peer: self._forward(peer, digest, offset, limit))

    def _find(self, digest: str, asker: IFileConnection) -> Deferred[IFileConnection]:
        """The first connected peer that says it has C{digest}; L{commands.NoSuchBlob} if none does."""
        d: Deferred[IFileConnection] = Deferred()
        lookup = self._lookups.get(digest)
        if lookup is not None:
            lookup.waiting.append(d)
            return d
        peers = [peer for peer in self._peers() if not peer.closed and peer is not asker]
        lookup = self._lookups[digest] = _Lookup(len(peers))
        lookup.waiting.append(d)
        name = digest[:12]

        def settle(outcome: IFileConnection | Failure) -> None:
            if lookup.settled:
                return
            lookup.settled = True
            if self._lookups.get(digest) is lookup:
                del self._lookups[digest]
            for waiting in lookup.waiting:
                if isinstance(outcome, Failure):
                    waiting.errback(outcome)
                else:
                    waiting.callback(outcome)

        def none_has_it() -> None:
            settle(
                Failure(
                    commands.NoSuchBlob(
                        f"{self._me} does not hold blob {name}, nor does any of its {len(peers)} connected peer(s)"
                    )
                )
            )

        def answered(answer: dict[str, Any], peer: IFileConnection) -> None:
            lookup.left -= 1
            listed = answer.get("missing")
            if isinstance(listed, list) and digest not in listed:
                if len(self._sources) >= _REMEMBERED:
                    self._sources.clear()
                self._sources[digest] = peer
                log.info(
                    "{Me} relays blob {digest} for a client from peer {peer}",
                    Me=self._Me,
                    digest=name,
                    peer=peer.describe(),
                )
                settle(peer)
            elif lookup.left == 0:
                none_has_it()

        def failed(failure: Failure, peer: IFileConnection) -> None:
            log.debug(
                "{Me} could not ask {peer} whether it has blob {digest}: {reason}",
                Me=self._Me,
                peer=peer.describe(),
                digest=name,
                reason=_reason(failure, self._timeout),
            )
            lookup.left -= 1
            if lookup.left == 0:
                none_has_it()

        if not peers:
            none_has_it()
        for peer in peers:
            asked = _call(peer, commands.HaveBlobs, digests=[digest])
            asked.addTimeout(self._timeout, self._clock)
            asked.addCallbacks(answered, failed, callbackArgs=(peer,), errbackArgs=(peer,))
        return d

    def _forward(self, source: IFileConnection, digest: str, offset: int, limit: int) -> Deferred[dict[str, Any]]:
        """Ask C{source} for the piece; relay its answer (any failure: NO_SUCH_BLOB, saying why)."""
        asked = _call(source, commands.FetchBlob, sha256=digest, offset=offset, limit=limit)
        asked.addTimeout(self._timeout, self._clock)

        def got(answer: dict[str, Any]) -> dict[str, Any]:
            try:
                data = b"".join(commands.pieces_of(answer))
            except ValueError as e:
                raise commands.TransferRefused(str(e)) from None
            return self._count_sent(offset, data, answer["size"])

        def failed(failure: Failure) -> Failure:
            if self._sources.get(digest) is source:
                del self._sources[digest]
            why = _reason(failure, self._timeout)
            log.warn(
                "{Me} could not relay blob {digest} from {peer}: {reason}",
                Me=self._Me,
                digest=digest[:12],
                peer=source.describe(),
                reason=why,
            )
            raise commands.NoSuchBlob(
                f"{self._me} does not hold blob {digest[:12]}, and peer {source.peer_name} did not give it: {why}"
            )

        return asked.addCallbacks(got, failed)


def _who(connection: IFileConnection) -> str:
    """Who sends on C{connection}, for log lines: a node (its name and address), or a client (its address)."""
    return f"a client at {connection.address()}" if connection.client else connection.describe()


def _reason(failure: Failure, timeout: float) -> str:
    """Why a peer did not answer, in a few words."""
    if failure.check(TimeoutError):
        return f"no answer within {timeout:g}s"
    if failure.check(amp.UnhandledCommand):
        return "it does not know the file commands (an older p2pexec?)"
    return shorten(failure.getErrorMessage() or str(failure.type))
