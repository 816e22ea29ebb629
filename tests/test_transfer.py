"""
Tests for L{p2pexec.transfer}: HAVE_BLOBS in boxes, PUT_BLOB and
FETCH_BLOB with a window of pieces in flight, over a fake caller that
answers only when the test says so (so the unanswered calls can be counted).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands, transfer
from p2pexec.transfer import PIECE, PIECES, WINDOW, missing, pull, push


class HeldCalls:
    """
    A caller whose calls wait until the test answers them: C{calls} holds
    (command, arguments, Deferred) of every call, C{most} the most ever
    unanswered at once.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[type[amp.Command], dict[str, Any], Deferred[dict[str, Any]]]] = []
        self.most = 0

    def callRemote(self, command: type[amp.Command], **kw: Any) -> Deferred[dict[str, Any]]:
        """Record the call; count it unanswered until its Deferred fires."""
        d: Deferred[dict[str, Any]] = Deferred()
        self.calls.append((command, kw, d))
        self.most = max(self.most, self.unanswered())
        return d

    def unanswered(self) -> int:
        """How many calls wait for an answer."""
        return sum(1 for _, _, d in self.calls if not d.called)

    def waiting(self) -> list[tuple[type[amp.Command], dict[str, Any], Deferred[dict[str, Any]]]]:
        """The calls that wait for an answer, oldest first."""
        return [call for call in self.calls if not call[2].called]


class MemoryWriter:
    """An L{IBlobWriter} into memory that checks order and the SHA-256, and records finish/abort."""

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size
        self.data = bytearray()
        self.finished = False
        self.aborted = False

    def write(self, offset: int, data: bytes) -> None:
        """Append, refusing anything but the next offset."""
        if offset != len(self.data):
            raise ValueError(f"offset {offset}, expected {len(self.data)}")
        self.data += data

    def finish(self) -> None:
        """Check the digest (ValueError if it differs)."""
        if hashlib.sha256(self.data).hexdigest() != self.digest:
            raise ValueError("the SHA-256 does not match")
        self.finished = True

    def abort(self) -> None:
        """Note the abort."""
        self.aborted = True


def answer_of(data: bytes, offset: int, limit: int) -> dict[str, Any]:
    """FETCH_BLOB's answer: the bytes of C{data} from C{offset}, at most C{limit}, in pieces of PIECE bytes."""
    asked = data[offset : offset + limit]
    answer: dict[str, Any] = {"data": asked[:PIECE], "size": len(data)}
    for n in range(1, (len(asked) + PIECE - 1) // PIECE):
        answer[f"data{n}"] = asked[n * PIECE : (n + 1) * PIECE]
    return answer


def blob(size: int) -> tuple[bytes, str]:
    """C{size} bytes that differ from piece to piece, and their digest."""
    data = bytes((i * 7 + i // PIECE) % 251 for i in range(size))
    return data, hashlib.sha256(data).hexdigest()


class PushTests(SynchronousTestCase):
    """L{push} sends pieces in order, never more than the window unanswered."""

    def test_window_bound(self):
        """
        A one-piece sender (C{pieces=1}, only C{data} in each box): with a
        window of 4, a 10-piece push has 4 PUT_BLOBs unanswered, and one more
        goes out for each answer, never more; pieces are in order, of PIECE
        bytes but the last; it fires with the bytes sent.
        """
        data, digest = blob(PIECE * 9 + 123)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data), window=4, pieces=1)
        self.assertEqual(caller.unanswered(), 4)
        while caller.waiting():
            command, kw, d = caller.waiting()[0]
            received = kw["offset"] + len(kw["data"])
            d.callback({"received": received, "complete": received == len(data)})
            self.assertLessEqual(caller.unanswered(), 4)
        self.assertEqual(caller.most, 4)
        self.assertTrue(all(set(kw) == {"sha256", "size", "offset", "data"} for _, kw, _ in caller.calls))
        self.assertEqual([kw["offset"] for _, kw, _ in caller.calls], [PIECE * i for i in range(10)])
        self.assertEqual(b"".join(kw["data"] for _, kw, _ in caller.calls), data)
        self.assertTrue(all(command is commands.PutBlob for command, _, _ in caller.calls))
        self.assertEqual(self.successResultOf(done), len(data))

    def test_default_window(self):
        """The default window is L{WINDOW} (4) boxes of L{PIECES} (16) pieces."""
        data = bytes(PIECE * PIECES * 5)
        caller = HeldCalls()
        push(caller, lambda offset, limit: data[offset : offset + limit], "0" * 64, len(data))
        self.assertEqual((WINDOW, PIECES, caller.unanswered()), (4, 16, 4))
        self.assertTrue(all(len(kw) == 3 + PIECES for _, kw, _ in caller.calls))

    def test_several_pieces_a_box(self):
        """
        Boxes carry C{data}, C{data1}... C{data15} (PIECE bytes each but the
        last of the blob), from offsets a box apart; at most the window of
        boxes waits; the pieces in name order are the blob.
        """
        data, digest = blob(PIECE * 40 + 5)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data), window=2)
        self.assertEqual(caller.unanswered(), 2)
        while caller.waiting():
            command, kw, d = caller.waiting()[0]
            received = kw["offset"] + sum(len(v) for k, v in kw.items() if k.startswith("data"))
            d.callback({"received": received, "complete": received == len(data)})
        self.assertEqual(caller.most, 2)
        self.assertEqual([kw["offset"] for _, kw, _ in caller.calls], [0, PIECE * 16, PIECE * 32])
        names = ["data"] + [f"data{n}" for n in range(1, 16)]
        boxes = [[kw[name] for name in names if name in kw] for _, kw, _ in caller.calls]
        self.assertEqual([len(box) for box in boxes], [16, 16, 9])
        self.assertEqual([len(piece) for piece in boxes[2]], [PIECE] * 8 + [5])
        self.assertEqual(b"".join(piece for box in boxes for piece in box), data)
        self.assertEqual(self.successResultOf(done), len(data))

    def test_already_held(self):
        """If the first answer says complete for a blob of several pieces, no more are sent and it fires with 0."""
        data, digest = blob(PIECE * 20)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data), window=2)
        caller.calls[0][2].callback({"received": len(data), "complete": True})
        self.assertEqual(self.successResultOf(done), 0)
        caller.calls[1][2].callback({"received": len(data), "complete": True})
        self.assertEqual(len(caller.calls), 2)

    def test_one_piece(self):
        """A blob of one piece, completed by that piece, fires with its size (it was sent, not held already)."""
        data, digest = blob(1000)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data))
        caller.calls[0][2].callback({"received": 1000, "complete": True})
        self.assertEqual(self.successResultOf(done), 1000)

    def test_empty_blob(self):
        """An empty blob is one PUT_BLOB of no data at offset 0."""
        caller = HeldCalls()
        digest = hashlib.sha256(b"").hexdigest()
        done = push(caller, lambda offset, limit: b"", digest, 0)
        self.assertEqual([(kw["offset"], kw["data"], kw["size"]) for _, kw, _ in caller.calls], [(0, b"", 0)])
        caller.calls[0][2].callback({"received": 0, "complete": True})
        self.assertEqual(self.successResultOf(done), 0)

    def test_refused(self):
        """A refusal fails the push with it; answers to pieces still in flight are ignored, nothing more is sent."""
        data, digest = blob(PIECE * 5)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data), window=3, pieces=1)
        caller.calls[0][2].errback(commands.TransferRefused("size over --max-transfer"))
        failure = self.failureResultOf(done, commands.TransferRefused)
        self.assertEqual(str(failure.value), "size over --max-transfer")
        caller.calls[1][2].errback(commands.TransferRefused("an earlier piece was refused"))
        caller.calls[2][2].callback({"received": 0, "complete": False})
        self.assertEqual(len(caller.calls), 3)

    def test_file_changed(self):
        """A read that gives fewer bytes than asked (the file shrank) fails the push with one clear sentence."""
        data, digest = blob(PIECE * 3)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit][:100], digest, len(data))
        failure = self.failureResultOf(done, commands.TransferRefused)
        self.assertIn("the file changed since it was hashed", str(failure.value))
        self.assertEqual(caller.calls, [])

    def test_never_complete(self):
        """All pieces answered but none says complete: the push fails, saying what the receiver holds."""
        data, digest = blob(100)
        caller = HeldCalls()
        done = push(caller, lambda offset, limit: data[offset : offset + limit], digest, len(data))
        caller.calls[0][2].callback({"received": 50, "complete": False})
        self.assertIn("holds 50 of the 100 bytes", str(self.failureResultOf(done).value))

    def test_raised_at_once(self):
        """An error callRemote raises at once (a closed connection) fails the push, not the caller."""

        class Closed:
            def callRemote(self, command, **kw):
                raise RuntimeError("the connection is closed")

        data, digest = blob(10)
        done = push(Closed(), lambda offset, limit: data[offset : offset + limit], digest, len(data))
        self.failureResultOf(done, RuntimeError)


class PullTests(SynchronousTestCase):
    """L{pull} asks for pieces with a window, writes them in order, checks, then finishes or aborts."""

    def answer(self, call, data):
        """Answer a FETCH_BLOB call with the bytes of C{data} it asks for, in pieces of PIECE bytes."""
        _, kw, d = call
        d.callback(answer_of(data, kw["offset"], kw["limit"]))

    def test_window_bound_and_out_of_order(self):
        """
        With a window of 3, at most 3 FETCH_BLOBs wait; answers given newest
        first are still written in order, and the blob is finished once.
        """
        data, digest = blob(PIECE * 7 + 5)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer, window=3, pieces=1)
        self.assertEqual(caller.unanswered(), 3)
        while caller.waiting():
            self.answer(caller.waiting()[-1], data)
            self.assertLessEqual(caller.unanswered(), 3)
        self.assertEqual(caller.most, 3)
        self.successResultOf(done)
        self.assertEqual(bytes(writer.data), data)
        self.assertTrue(writer.finished)
        self.assertEqual([kw["limit"] for _, kw, _ in caller.calls], [PIECE] * 8)

    def test_empty_blob(self):
        """An empty blob is one FETCH_BLOB at offset 0 (which checks it exists and its size)."""
        digest = hashlib.sha256(b"").hexdigest()
        caller = HeldCalls()
        writer = MemoryWriter(digest, 0)
        done = pull(caller, writer)
        self.assertEqual(len(caller.calls), 1)
        self.answer(caller.calls[0], b"")
        self.successResultOf(done)
        self.assertTrue(writer.finished)

    def test_no_such_blob(self):
        """A refusal aborts the writer and fails the pull with it."""
        data, digest = blob(PIECE * 2)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer, pieces=1)
        caller.calls[0][2].errback(commands.NoSuchBlob("nobody has it"))
        self.failureResultOf(done, commands.NoSuchBlob)
        self.assertTrue(writer.aborted)
        self.answer(caller.calls[1], data)
        self.assertFalse(writer.finished)

    def test_other_size(self):
        """An answer naming another size than the writer expects aborts and fails (TransferRefused)."""
        data, digest = blob(PIECE * 2)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data) + 1)
        done = pull(caller, writer)
        self.answer(caller.calls[0], data)
        failure = self.failureResultOf(done, commands.TransferRefused)
        self.assertIn(f"a size of {len(data)}, expected", str(failure.value))
        self.assertTrue(writer.aborted)

    def test_short_piece(self):
        """A piece shorter than asked (before the end) aborts and fails."""
        data, digest = blob(PIECE * 2)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer)
        caller.calls[0][2].callback({"data": b"x" * 10, "size": len(data)})
        self.failureResultOf(done, commands.TransferRefused)
        self.assertTrue(writer.aborted)

    def test_digest_mismatch(self):
        """Bytes that do not hash to the digest: the writer's finish raises, the pull aborts and fails."""
        data, digest = blob(100)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer)
        self.answer(caller.calls[0], b"y" * 100)
        self.failureResultOf(done, ValueError)
        self.assertTrue(writer.aborted)
        self.assertFalse(writer.finished)


class HeldRunner:
    """A runner whose jobs wait until the test runs them (in order), as a writer thread would."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, job: Any) -> Deferred[Any]:
        """Queue C{job}; its Deferred fires when the test runs it."""
        d: Deferred[Any] = Deferred()
        self.jobs.append((job, d))
        return d

    def run_one(self) -> None:
        """Run the oldest job waiting."""
        job, d = self.jobs.pop(0)
        try:
            result = job()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


class PiecesPullTests(SynchronousTestCase):
    """L{pull} with several pieces a box, and writes that wait (a writer thread)."""

    def test_several_pieces_a_box(self):
        """Boxes ask for 16 pieces at once (960,000 bytes); answers in pieces are written in order."""
        data, digest = blob(PIECE * 40 + 7)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer)
        self.assertEqual(
            [(kw["offset"], kw["limit"]) for _, kw, _ in caller.calls],
            [(0, 960_000), (960_000, 960_000), (1_920_000, 960_000)],
        )
        for call in reversed(caller.waiting()):
            PullTests.answer(self, call, data)  # type: ignore[arg-type]
        self.successResultOf(done)
        self.assertEqual(bytes(writer.data), data)
        self.assertTrue(writer.finished)

    def test_gap_in_pieces(self):
        """An answer with C{data2} but no C{data1} is refused (TransferRefused naming it) and the writer aborted."""
        data, digest = blob(PIECE * 3)
        caller = HeldCalls()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer)
        caller.calls[0][2].callback({"data": data[:PIECE], "data2": data[PIECE:], "size": len(data)})
        failure = self.failureResultOf(done, commands.TransferRefused)
        self.assertIn("'data2' comes without 'data1'", str(failure.value))
        self.assertTrue(writer.aborted)

    def test_window_counts_writes(self):
        """
        Boxes answered but not yet written keep their place in the window
        (memory: at most the window of boxes), written in order, one new
        box asked as each is written; the finish runs after the last write.
        """
        data, digest = blob(PIECE * 16 * 5)
        caller = HeldCalls()
        runner = HeldRunner()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer, window=2, run=runner)
        self.assertEqual(len(caller.calls), 2)
        PullTests.answer(self, caller.calls[1], data)  # type: ignore[arg-type]
        PullTests.answer(self, caller.calls[0], data)  # type: ignore[arg-type]
        self.assertEqual((len(caller.calls), len(runner.jobs)), (2, 2))
        runner.run_one()
        self.assertEqual(len(caller.calls), 3)
        self.assertEqual(len(writer.data), PIECE * 16)
        while caller.waiting() or runner.jobs:
            if caller.waiting():
                PullTests.answer(self, caller.waiting()[0], data)  # type: ignore[arg-type]
            else:
                runner.run_one()
            writes = [job for job, _ in runner.jobs if job != writer.finish]
            self.assertLessEqual(len(writes) + caller.unanswered(), 2)
        self.successResultOf(done)
        self.assertEqual(bytes(writer.data), data)
        self.assertTrue(writer.finished)
        self.assertEqual(len(caller.calls), 5)

    def test_abort_after_writes(self):
        """A failure while writes wait: the writer is aborted by the runner after them, never finished."""
        data, digest = blob(PIECE * 16 * 3)
        caller = HeldCalls()
        runner = HeldRunner()
        writer = MemoryWriter(digest, len(data))
        done = pull(caller, writer, window=2, run=runner)
        PullTests.answer(self, caller.calls[0], data)  # type: ignore[arg-type]
        caller.calls[1][2].errback(commands.NoSuchBlob("evicted"))
        self.failureResultOf(done, commands.NoSuchBlob)
        self.assertFalse(writer.aborted)
        while runner.jobs:
            runner.run_one()
        self.assertEqual((writer.aborted, writer.finished), (True, False))
        self.assertEqual(len(writer.data), PIECE * 16)


class MissingTests(SynchronousTestCase):
    """L{missing} asks HAVE_BLOBS in boxes of at most 800 digests."""

    def test_boxes(self):
        """1,000 digests (one twice) go in two boxes; the answer keeps the order asked, each once."""
        digests = [f"{i:064x}" for i in range(1000)]
        caller = HeldCalls()
        done = missing(caller, digests + [digests[0]])
        self.assertEqual([len(kw["digests"]) for _, kw, _ in caller.calls], [800, 200])
        caller.calls[1][2].callback({"missing": [digests[999], digests[900]]})
        caller.calls[0][2].callback({"missing": [digests[5]]})
        self.assertEqual(self.successResultOf(done), [digests[5], digests[900], digests[999]])

    def test_bad_answer(self):
        """An answer that is not a list of strings fails with one sentence."""
        caller = HeldCalls()
        done = missing(caller, ["a" * 64])
        caller.calls[0][2].callback({"missing": {"no": 1}})
        self.assertIn("not a list of digests", str(self.failureResultOf(done, commands.TransferRefused).value))

    def test_refused(self):
        """The other side's error fails it (not wrapped)."""
        caller = HeldCalls()
        done = missing(caller, ["a" * 64])
        caller.calls[0][2].errback(commands.BadArguments("HAVE_BLOBS: no"))
        self.failureResultOf(done, commands.BadArguments)

    def test_nothing(self):
        """No digests: no box, nothing missing."""
        caller = HeldCalls()
        self.assertEqual(self.successResultOf(missing(caller, [])), [])
        self.assertEqual(caller.calls, [])


class RateTests(SynchronousTestCase):
    """L{transfer.rate}: a transfer's speed as a log line says it."""

    def test_rate(self) -> None:
        """Whole MB/s from 10 on, two significant digits below, and 'at once' for no time at all."""
        self.assertEqual(transfer.rate(1_073_741_824, 3.2), "336 MB/s")
        self.assertEqual(transfer.rate(65, 0.002), "0.033 MB/s")
        self.assertEqual(transfer.rate(5, 0.0), "at once")
