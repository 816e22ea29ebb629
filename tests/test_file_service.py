"""
Tests for L{p2pexec.file_service}: HAVE_BLOBS, PUT_BLOB and FETCH_BLOB
answered by a L{PeerProtocol} over an in-memory connection (iosim), with a
dict-backed store that follows the L{p2pexec.blobs.BlobStore} contract:
round trips with the SHA-256 checked, the window observed on the wire,
refusals with the connection kept, writers aborted when the connection
closes, and the proxy through a peer.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.auth import ChallengeResponse
from p2pexec.blobs import FRESH_PIN
from p2pexec.file_service import IDLE_TIMEOUT, MAX_QUEUED, FileService
from p2pexec.peer import PeerProtocol
from p2pexec.transfer import PIECE, WINDOW, missing, pull, push

from .test_model import node
from .test_peer import RecordingHandler
from .test_transfer import HeldRunner, MemoryWriter


class FakeWriter:
    """A BlobWriter double: bytes in order into memory, checked on finish; records aborts."""

    def __init__(self, store: FakeStore, digest: str, size: int) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self.received = 0
        self._data = bytearray()
        self.aborted = False

    @property
    def complete(self) -> bool:
        """All bytes are written."""
        return self.received == self.size

    def write(self, offset: int, data: bytes) -> None:
        """Append (ValueError, as BlobError, unless at the expected offset and within the size)."""
        if offset != self.received or offset + len(data) > self.size:
            raise ValueError(f"offset {offset}, expected {self.received}")
        self._data += data
        self.received += len(data)

    def finish(self) -> None:
        """Keep the blob if its SHA-256 matches (ValueError, as BlobError, otherwise)."""
        if hashlib.sha256(self._data).hexdigest() != self.digest:
            raise ValueError(f"blob {self.digest[:12]} does not match: the file changed while sent?")
        self._store.blobs[self.digest] = bytes(self._data)
        if getattr(self, "pin_on_commit", False):
            self._store.pin([self.digest])

    def abort(self) -> None:
        """Drop what was written."""
        self.aborted = True
        self._data = bytearray()


class FakeStore:
    """A dict-backed BlobStore double (the contract of DESIGN16's part "store"); C{writers} lists every writer made."""

    def __init__(self, max_transfer: int = 1 << 30) -> None:
        self.max_transfer = max_transfer
        self.blobs: dict[str, bytes] = {}
        self.writers: list[FakeWriter] = []
        self.touched: list[str] = []
        self.pinned: collections.Counter[str] = collections.Counter()

    def add(self, data: bytes) -> str:
        """Hold C{data}; its digest."""
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def has(self, digest: str) -> bool:
        """Whether held (noted as a use)."""
        if digest in self.blobs:
            self.touched.append(digest)
            return True
        return False

    def size_of(self, digest: str) -> int | None:
        """The size, or None."""
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def read(self, digest: str, offset: int, limit: int) -> bytes:
        """A piece (KeyError if absent)."""
        return self.blobs[digest][offset : offset + limit]

    def receive(self, digest: str, size: int, pin: bool = False) -> FakeWriter:
        """A writer (ValueError, as BlobError, for a size over max_transfer); C{pin}: pinned once kept."""
        if size > self.max_transfer:
            raise ValueError(f"size {size} over --max-transfer")
        writer = FakeWriter(self, digest, size)
        writer.pin_on_commit = pin
        self.writers.append(writer)
        return writer

    def pin(self, digests: Any) -> None:
        """Count a pin of each."""
        self.pinned.update(digests)

    def unpin(self, digests: Any) -> None:
        """Undo one pin of each."""
        self.pinned.subtract(digests)
        self.pinned = +self.pinned


class FileHandler(RecordingHandler):
    """A L{RecordingHandler} with a file service over a L{FakeStore} (or none, C{files=None})."""

    def __init__(self, name: str, clock: Clock, files: bool = True, token: bytes | None = None) -> None:
        super().__init__(node(name=name, instance=f"i-{name}"))
        self.store = FakeStore()
        self.files = FileService(self.store, clock) if files else None
        if self.files is not None:
            self.files.wire(lambda: self.peers, name)
        self.peers: list[PeerProtocol] = []
        if token is not None:
            self.local_challenge = ChallengeResponse(token)


class Counting:
    """A caller in front of an AMP connection that counts the calls unanswered (C{most}: the most at once)."""

    def __init__(self, protocol: amp.AMP) -> None:
        self._protocol = protocol
        self.unanswered = 0
        self.most = 0
        self.calls = 0

    def callRemote(self, command: type[amp.Command], **kw: Any) -> Deferred[dict[str, Any]]:
        """Send the call; count it until answered."""
        self.calls += 1
        self.unanswered += 1
        self.most = max(self.most, self.unanswered)

        def answered(result: Any) -> Any:
            self.unanswered -= 1
            return result

        return self._protocol.callRemote(command, **kw).addBoth(answered)


def present(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without the optional values that were absent (AMP gives them as None)."""
    return {key: value for key, value in answer.items() if value is not None}


def settle(d: Deferred[Any], *pumps: Any) -> list[Any]:
    """Pump every connection until none moves; C{d}'s outcome, captured before it arrives."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    for _ in range(10_000):
        if not any([pump.pump() for pump in pumps]):
            break
    return outcome


class ClientTests(SynchronousTestCase):
    """An operator's client (plain AMP, no handshake) sends and fetches blobs from a node."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.handler = FileHandler("b1", self.clock)
        self.connect()

    def connect(self) -> None:
        """Connect a client to the node (again)."""
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: PeerProtocol(self.handler, clock=self.clock), amp.AMP, clock=self.clock
        )

    def call(self, command: type[amp.Command], **kw: Any) -> Any:
        """Call C{command} from the client; its result, or its failure's value."""
        outcome = settle(self.client.callRemote(command, **kw), self.pump)
        self.assertEqual(len(outcome), 1, "no answer")
        value = outcome[0]
        return value.value if hasattr(value, "value") and hasattr(value, "trap") else value

    def refusal_lines(self) -> list[str]:
        """The log lines that refused a file command."""
        return [e["log_format"] for e in self.events if e.get("log_format", "").startswith("Refused")]

    def test_received_blob_pinned_for_a_while(self):
        """
        A blob sent here is pinned as it is kept (a client's input until its
        job is accepted, a worker's output until its result is applied, so
        that the next blob cannot evict it), and unpinned L{FRESH_PIN}
        seconds later; one sent again while held is pinned afresh.
        """
        data = os.urandom(200_000)
        digest = hashlib.sha256(data).hexdigest()
        read = lambda offset, limit: data[offset : offset + limit]  # noqa: E731
        settle(push(self.client, read, digest, len(data)), self.pump)
        store = self.handler.store
        self.assertEqual(store.pinned[digest], 1)
        self.clock.advance(FRESH_PIN / 2)
        self.connect()  # the idle client's connection was closed meanwhile
        settle(push(self.client, read, digest, len(data)), self.pump)
        self.assertEqual(store.pinned[digest], 2)
        self.clock.advance(FRESH_PIN / 2)
        self.assertEqual(store.pinned[digest], 1)
        self.clock.advance(FRESH_PIN / 2)
        self.assertEqual(store.pinned[digest], 0)

    def test_push_and_pull_round_trip(self):
        """
        5 MiB go to the node by PUT_BLOB and come back by FETCH_BLOB with
        the SHA-256 checked; never more than the window (4 boxes) waits; the
        counters count one file and its bytes each way.
        """
        data = os.urandom(5 * 1024 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        caller = Counting(self.client)
        self.assertEqual(settle(missing(caller, [digest]), self.pump), [[digest]])
        sent = settle(push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data)), self.pump)
        self.assertEqual(sent, [len(data)])
        self.assertEqual(hashlib.sha256(self.handler.store.blobs[digest]).hexdigest(), digest)
        self.assertEqual(caller.most, WINDOW)
        writer = MemoryWriter(digest, len(data))
        self.assertEqual(settle(pull(caller, writer), self.pump), [None])
        self.assertTrue(writer.finished)
        self.assertEqual(hashlib.sha256(writer.data).hexdigest(), digest)
        self.assertEqual(caller.most, WINDOW)
        files = self.handler.files
        self.assertEqual(
            (files.received_files, files.received_bytes, files.sent_files, files.sent_bytes),
            (1, len(data), 1, len(data)),
        )
        self.assertEqual(files.incoming(self.server), 0)
        self.assertEqual(self.refusal_lines(), [])

    def test_several_pieces_a_box(self):
        """
        One PUT_BLOB may carry C{data} and C{data1}...: the pieces follow
        each other; a gap (C{data2} without C{data1}) is BAD_ARGUMENTS; a
        one-piece box still works; the master logs the upload as from a
        client at its address.
        """
        data = os.urandom(3 * PIECE + 10)
        digest = hashlib.sha256(data).hexdigest()
        gap = self.call(commands.PutBlob, sha256=digest, size=len(data), offset=0, data=data[:PIECE], data2=b"x")
        self.assertIsInstance(gap, commands.BadArguments)
        self.assertIn("'data2' comes without 'data1'", str(gap))
        first = self.call(
            commands.PutBlob, sha256=digest, size=len(data), offset=0, data=data[:PIECE], data1=data[PIECE : 2 * PIECE]
        )
        self.assertEqual(first, {"received": 2 * PIECE, "complete": False})
        second = self.call(
            commands.PutBlob,
            sha256=digest,
            size=len(data),
            offset=2 * PIECE,
            data=data[2 * PIECE : 3 * PIECE],
            data1=data[3 * PIECE :],
        )
        self.assertEqual(second, {"received": len(data), "complete": True})
        self.assertEqual(self.handler.store.blobs[digest], data)
        lines = [e for e in self.events if "received file" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0]["peer"].startswith("a client at "), lines[0]["peer"])

    def test_one_piece_sender(self):
        """A sender of one piece a box (and a puller of one piece a box) still moves a blob both ways."""
        data = os.urandom(5 * PIECE + 1)
        digest = hashlib.sha256(data).hexdigest()
        sent = settle(push(self.client, lambda o, n: data[o : o + n], digest, len(data), pieces=1), self.pump)
        self.assertEqual(sent, [len(data)])
        self.assertEqual(self.handler.store.blobs[digest], data)
        writer = MemoryWriter(digest, len(data))
        self.assertEqual(settle(pull(self.client, writer, pieces=1), self.pump), [None])
        self.assertEqual(bytes(writer.data), data)

    def test_answered_once_written(self):
        """
        With writes in another thread (a held runner here), a box is
        answered only once its pieces are written, in order; more than
        MAX_QUEUED boxes waiting is refused; a refusal aborts the writer
        after the writes queued.
        """
        runner = HeldRunner()
        files = self.handler.files = FileService(self.handler.store, self.clock, run=runner)
        files.wire(lambda: self.handler.peers, "b1")
        data = os.urandom(PIECE * (MAX_QUEUED + 2))
        digest = hashlib.sha256(data).hexdigest()
        answers: list[Any] = []

        def send(n: int) -> None:
            piece = data[n * PIECE : (n + 1) * PIECE]
            d = self.client.callRemote(commands.PutBlob, sha256=digest, size=len(data), offset=n * PIECE, data=piece)
            d.addBoth(answers.append)
            self.pump.flush()

        send(0)
        send(1)
        self.assertEqual((answers, len(runner.jobs)), ([], 2))
        runner.run_one()
        self.pump.flush()
        self.assertEqual(answers, [{"received": PIECE, "complete": False}])
        for n in range(2, MAX_QUEUED + 2):
            send(n)
        self.assertEqual(len(runner.jobs), MAX_QUEUED + 1)  # MAX_QUEUED writes, then the abort
        self.assertIn(f"{MAX_QUEUED} boxes of blob", str(answers[-1].value))
        writer = self.handler.store.writers[0]
        self.assertFalse(writer.aborted)
        while runner.jobs:
            runner.run_one()
        self.pump.flush()
        self.assertTrue(writer.aborted)
        self.assertEqual(writer.received, PIECE)
        self.assertEqual(len(answers), MAX_QUEUED + 2)
        self.assertEqual(len(self.refusal_lines()), 1)

    def test_held_already(self):
        """A blob the node has is answered complete at once; HAVE_BLOBS does not list it; the push sends 0."""
        data = os.urandom(20 * PIECE)
        digest = self.handler.store.add(data)
        self.assertEqual(self.call(commands.HaveBlobs, digests=[digest, "0" * 64]), {"missing": ["0" * 64]})
        sent = settle(push(self.client, lambda o, n: data[o : o + n], digest, len(data)), self.pump)
        self.assertEqual(sent, [0])
        self.assertEqual(self.handler.store.writers, [])

    def test_refusals_keep_the_connection(self):
        """
        Each malformed argument or out-of-turn piece gets BAD_ARGUMENTS or
        TRANSFER_REFUSED with one clear sentence and one log line, and the
        connection keeps serving.
        """
        digest = "a" * 64
        cases = [
            (commands.PutBlob, dict(sha256="A" * 64, size=1, offset=0, data=b"x"), commands.BadArguments, "SHA-256"),
            (commands.PutBlob, dict(sha256=digest, size=1, offset=-1, data=b"x"), commands.BadArguments, "0 or more"),
            (
                commands.PutBlob,
                dict(sha256=digest, size=10**6, offset=0, data=b"x" * 60_001),
                commands.BadArguments,
                "more than 60000",
            ),
            (commands.PutBlob, dict(sha256=digest, size=5, offset=0, data=b""), commands.BadArguments, "is empty"),
            (
                commands.PutBlob,
                dict(sha256=digest, size=2, offset=0, data=b"xyz"),
                commands.TransferRefused,
                "past the declared size of 2 bytes",
            ),
            (
                commands.PutBlob,
                dict(sha256="b" * 64, size=9, offset=3, data=b"xyz"),
                commands.TransferRefused,
                "offset 3, expected 0",
            ),
            (
                commands.PutBlob,
                dict(sha256=digest, size=2 << 30, offset=0, data=b"x"),
                commands.TransferRefused,
                "--max-transfer",
            ),
            (
                commands.FetchBlob,
                dict(sha256=digest, offset=0, limit=960_001),
                commands.BadArguments,
                "'limit' 0 to 960000",
            ),
            (commands.FetchBlob, dict(sha256=digest, offset=-5, limit=10), commands.BadArguments, "'offset'"),
            (commands.FetchBlob, dict(sha256="zz", offset=0, limit=10), commands.BadArguments, "SHA-256"),
            (commands.HaveBlobs, dict(digests={"a": 1}), commands.BadArguments, "list of at most 800"),
            (commands.HaveBlobs, dict(digests=[digest] * 801), commands.BadArguments, "at most 800"),
            (commands.HaveBlobs, dict(digests=[7]), commands.BadArguments, "strings"),
        ]
        for command, kw, error, words in cases:
            before = len(self.refusal_lines())
            answer = self.call(command, **kw)
            self.assertIsInstance(answer, error, repr((command, kw)))
            self.assertIn(words, str(answer))
            self.assertEqual(len(self.refusal_lines()), before + 1, (command, kw))
        self.assertEqual(self.call(commands.HaveBlobs, digests=[digest]), {"missing": [digest]})
        self.assertFalse(self.server.closed)

    def test_out_of_order_piece_aborts(self):
        """A piece at another offset than the next one aborts the transfer; pieces after it are refused quietly."""
        data = os.urandom(4 * PIECE)
        digest = hashlib.sha256(data).hexdigest()
        self.assertEqual(
            self.call(commands.PutBlob, sha256=digest, size=len(data), offset=0, data=data[:PIECE]),
            {"received": PIECE, "complete": False},
        )
        answer = self.call(commands.PutBlob, sha256=digest, size=len(data), offset=2 * PIECE, data=data[:PIECE])
        self.assertEqual(str(answer), f"offset {2 * PIECE}, expected {PIECE}")
        self.assertTrue(self.handler.store.writers[0].aborted)
        lines = len(self.refusal_lines())
        answer = self.call(commands.PutBlob, sha256=digest, size=len(data), offset=3 * PIECE, data=data[:PIECE])
        self.assertIn("an earlier piece of blob", str(answer))
        self.assertEqual(len(self.refusal_lines()), lines)
        self.assertEqual(self.handler.files.refused, 1)

    def test_mismatch_refused(self):
        """Bytes that do not hash to the digest: the last piece is refused with the store's sentence; nothing kept."""
        digest = hashlib.sha256(b"right").hexdigest()
        answer = self.call(commands.PutBlob, sha256=digest, size=5, offset=0, data=b"wrong")
        self.assertIsInstance(answer, commands.TransferRefused)
        self.assertIn("does not match", str(answer))
        self.assertEqual(self.handler.store.blobs, {})
        self.assertTrue(self.handler.store.writers[0].aborted)

    def test_abort_on_connection_loss(self):
        """A blob half sent when the connection closes is aborted; the service forgets the connection."""
        data = os.urandom(3 * PIECE)
        digest = hashlib.sha256(data).hexdigest()
        self.call(commands.PutBlob, sha256=digest, size=len(data), offset=0, data=data[:PIECE])
        self.assertEqual(self.handler.files.incoming(self.server), 1)
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertTrue(self.handler.store.writers[0].aborted)
        self.assertEqual(self.handler.files.incoming(self.server), 0)
        self.assertNotIn(digest, self.handler.store.blobs)

    def test_too_many_at_once(self):
        """A connection may send at most 16 blobs at once; the 17th is refused."""
        for i in range(16):
            digest = f"{i:064x}"
            self.assertEqual(
                self.call(commands.PutBlob, sha256=digest, size=9, offset=0, data=b"x"),
                {"received": 1, "complete": False},
            )
        answer = self.call(commands.PutBlob, sha256="f" * 64, size=9, offset=0, data=b"x")
        self.assertIn("at most 16", str(answer))

    def test_owner_needed_to_put(self):
        """Without a cluster key, a client that did not prove the local token may not PUT_BLOB, but may fetch."""
        self.handler = FileHandler("b1", self.clock, token=b"t" * 32)
        self.connect()
        digest = self.handler.store.add(b"hello")
        answer = self.call(commands.PutBlob, sha256="a" * 64, size=1, offset=0, data=b"x")
        self.assertIsInstance(answer, commands.AuthRequired)
        self.assertEqual(
            present(self.call(commands.FetchBlob, sha256=digest, offset=1, limit=3)), {"data": b"ell", "size": 5}
        )
        self.assertEqual(self.handler.store.writers, [])

    def test_no_file_service(self):
        """A node without a file service refuses PUT_BLOB and FETCH_BLOB and lacks everything."""
        self.handler = FileHandler("b1", self.clock, files=False)
        self.connect()
        answer = self.call(commands.PutBlob, sha256="a" * 64, size=1, offset=0, data=b"x")
        self.assertIsInstance(answer, commands.TransferRefused)
        self.assertIn("moves no files", str(answer))
        self.assertIsInstance(self.call(commands.FetchBlob, sha256="a" * 64, offset=0, limit=1), commands.NoSuchBlob)
        self.assertEqual(self.call(commands.HaveBlobs, digests=["a" * 64]), {"missing": ["a" * 64]})

    def test_client_connection(self):
        """A file command makes the connection a client's (CLIENT_COMMAND): peer commands are then refused."""
        self.assertFalse(self.server.client)
        self.call(commands.HaveBlobs, digests=[])
        self.assertTrue(self.server.client)

    def test_cluster_key_required(self):
        """With a cluster key, a file command before AUTHENTICATE is refused (AUTH_REQUIRED) and the connection closed."""
        self.handler = FileHandler("b1", self.clock)
        self.handler.challenge = ChallengeResponse(b"k" * 32)
        self.connect()
        self.assertIsInstance(self.call(commands.HaveBlobs, digests=["a" * 64]), commands.AuthRequired)
        self.pump.flush()
        self.assertTrue(self.server.closed)

    def test_fetch_past_end_and_nothing_held(self):
        """FETCH_BLOB past the end answers no data and the size; one of a blob nobody has: NO_SUCH_BLOB."""
        digest = self.handler.store.add(b"abc")
        self.assertEqual(
            present(self.call(commands.FetchBlob, sha256=digest, offset=10, limit=5)), {"data": b"", "size": 3}
        )
        answer = self.call(commands.FetchBlob, sha256="b" * 64, offset=0, limit=5)
        self.assertIsInstance(answer, commands.NoSuchBlob)
        self.assertIn("nor does any of its 0 connected peer(s)", str(answer))


class ProxyTests(SynchronousTestCase):
    """A node relays FETCH_BLOB for its client from the first connected peer that has the blob."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.a = FileHandler("a1", self.clock)
        self.b = FileHandler("b1", self.clock)
        self.c = FileHandler("c1", self.clock)
        self.pumps = []
        for other in (self.c, self.b):
            self.a.peers.append(self.link(self.a, other))
        self.client, self.server, pump = connectedServerAndClient(
            lambda: PeerProtocol(self.a), amp.AMP, clock=self.clock
        )
        self.pumps.append(pump)

    def link(self, dialler: FileHandler, acceptor: FileHandler) -> PeerProtocol:
        """Connect two nodes and complete the handshake; the dialler's end."""
        dialling, accepting, pump = connectedServerAndClient(
            lambda: PeerProtocol(acceptor), lambda: PeerProtocol(dialler, dialled=True), clock=self.clock
        )
        self.pumps.append(pump)
        settle(Deferred.fromCoroutine(dialling.introduce(dialler.info)), pump)
        self.assertEqual(dialling.peer_name, acceptor.info.name)
        acceptor.peers.append(accepting)
        return dialling

    def test_relayed_pull(self):
        """
        A client pulls 1 MiB that only b1 holds through a1: the SHA-256
        matches, a1 asked its peers HAVE_BLOBS once, and holds nothing.
        """
        data = os.urandom(1024 * 1024)
        digest = self.b.store.add(data)
        writer = MemoryWriter(digest, len(data))
        self.assertEqual(settle(pull(self.client, writer), *self.pumps), [None])
        self.assertEqual(hashlib.sha256(writer.data).hexdigest(), digest)
        self.assertEqual(self.a.store.blobs, {})
        self.assertEqual((self.b.files.sent_files, self.b.files.sent_bytes), (1, len(data)))
        self.assertEqual((self.a.files.sent_files, self.a.files.sent_bytes), (1, len(data)))
        self.assertEqual(self.c.store.touched, [])

    def test_nobody_has_it(self):
        """A blob no peer has: NO_SUCH_BLOB saying how many peers were asked."""
        outcome = settle(self.client.callRemote(commands.FetchBlob, sha256="c" * 64, offset=0, limit=9), *self.pumps)
        self.assertIn("nor does any of its 2 connected peer(s)", outcome[0].getErrorMessage())
        outcome[0].trap(commands.NoSuchBlob)

    def test_peer_fetch_not_relayed(self):
        """A peer's FETCH_BLOB is answered from the store only (one hop): NO_SUCH_BLOB though a peer has it."""
        digest = self.b.store.add(b"only on b1")
        from_c = self.c.peers[0]
        outcome = settle(from_c.callRemote(commands.FetchBlob, sha256=digest, offset=0, limit=9), *self.pumps)
        self.assertEqual(outcome[0].getErrorMessage(), f"node a1 does not hold blob {digest[:12]}")

    def test_source_lost(self):
        """The peer that had the blob closes: the next piece is NO_SUCH_BLOB naming it, and a new lookup follows."""
        data = os.urandom(2 * PIECE)
        digest = self.b.store.add(data)
        first = settle(self.client.callRemote(commands.FetchBlob, sha256=digest, offset=0, limit=PIECE), *self.pumps)
        self.assertEqual(first[0]["data"], data[:PIECE])
        del self.b.store.blobs[digest]
        second = settle(
            self.client.callRemote(commands.FetchBlob, sha256=digest, offset=PIECE, limit=PIECE), *self.pumps
        )
        self.assertIn("peer b1 did not give it", second[0].getErrorMessage())
        second[0].trap(commands.NoSuchBlob)


class SenderStub:
    """A node's connection, as the service sees it, that never closes (heartbeats keep a real one up)."""

    peer_name = "w1"
    closed = False
    client = False

    def address(self) -> str:
        """Its address."""
        return "127.0.0.1:4000"

    def describe(self) -> str:
        """Its name and address."""
        return "w1 at 127.0.0.1:4000"

    def when_lost(self) -> Deferred[None]:
        """Never fires."""
        return Deferred()


class IdleTransferTests(SynchronousTestCase):
    """A PUT_BLOB transfer whose sender stops mid-file is dropped after IDLE_TIMEOUT, its temporary file removed."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.files = FileService(self.store, self.clock)
        self.files.wire(lambda: [], "b1")
        self.sender = SenderStub()
        self.data = os.urandom(3 * PIECE)
        self.digest = hashlib.sha256(self.data).hexdigest()

    def put(self, index: int) -> object:
        """Send piece C{index} of the three."""
        piece = self.data[index * PIECE : (index + 1) * PIECE]
        return self.files.put(self.sender, self.digest, len(self.data), index * PIECE, [piece])

    def test_stalled_transfer_dropped(self) -> None:
        """No box for IDLE_TIMEOUT seconds: the writer is aborted, counted as refused, and logged once."""
        with capturedLogs() as events:
            self.put(0)
            self.clock.advance(IDLE_TIMEOUT - 1)
            self.assertEqual(self.files.incoming(self.sender), 1)
            self.clock.advance(1)
        self.assertEqual(self.files.incoming(self.sender), 0)
        self.assertTrue(self.store.writers[0].aborted)
        self.assertEqual(self.files.refused, 1)
        lines = [formatEvent(e) for e in events if "came for" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"no piece of blob {self.digest[:12]} came for 120s (60,000 of 180,000 bytes received)", lines[0])

    def test_steady_transfer_kept(self) -> None:
        """Boxes that keep coming, each within IDLE_TIMEOUT of the last, keep the transfer; a finished one leaves no timer."""
        self.put(0)
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.put(1)
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.put(2)
        self.assertEqual(self.store.blobs[self.digest], self.data)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), self.clock.seconds() + FRESH_PIN)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the pin's, not an idle timer
