"""
Tests for L{p2pexec.blobs}: the content-addressed store of task files
(receiving in pieces with the digest checked, adding local files with the
size bound enforced while reading, reading back in pieces, LRU eviction that
skips held blobs, holds and blobs surviving a reopen, leftovers swept).
"""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import TestCase

from p2pexec import blobs
from p2pexec.blobs import BlobError, BlobStore
from p2pexec.safepaths import safe_name


def sha(data: bytes) -> str:
    """The SHA-256 of C{data} in hex."""
    return hashlib.sha256(data).hexdigest()


class StoreMixin:
    """A store in a temporary folder, and helpers to fill it."""

    def make_store(self, cache_size: int = 10_000, max_transfer: int = 5_000) -> BlobStore:
        """A fresh store bounded by C{cache_size} bytes, one file by C{max_transfer} bytes."""
        self.root = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        return BlobStore(self.root, cache_size, max_transfer)

    def reopen(self, store: BlobStore) -> BlobStore:
        """The same store opened again, as after a restart."""
        store.close()
        return BlobStore(store.root, store.cache_size, store.max_transfer)

    def put(self, store: BlobStore, data: bytes) -> str:
        """Receive C{data} in one piece and return its digest."""
        writer = store.receive(sha(data), len(data))
        writer.write(0, data)
        writer.finish()
        return sha(data)

    def local_file(self, data: bytes) -> str:
        """A file outside the store holding C{data}."""
        path = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(data)
        return path

    def incoming(self) -> list[str]:
        """The files in the store's C{incoming/} folder."""
        return os.listdir(os.path.join(self.root, "incoming"))


class ReceiveTests(StoreMixin, TestCase):
    """A blob received in pieces lands in the store only when complete and its digest matches."""

    def test_pieces_in_order(self) -> None:
        """Pieces written in order make the blob; it is readable, counted and its temp file gone."""
        store = self.make_store()
        data = bytes(range(256)) * 10
        writer = store.receive(sha(data), len(data))
        for offset in range(0, len(data), 1000):
            self.assertFalse(writer.complete)
            writer.write(offset, data[offset : offset + 1000])
        self.assertTrue(writer.complete)
        self.assertFalse(store.has(sha(data)))
        writer.finish()
        self.assertTrue(store.has(sha(data)))
        self.assertEqual(store.size_of(sha(data)), len(data))
        with open(store.path_of(sha(data)), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual((store.received_files, store.received_bytes, store.total_bytes), (1, len(data), len(data)))
        self.assertEqual(self.incoming(), [])

    def test_sha_mismatch_on_finish(self) -> None:
        """Bytes that do not hash to the declared digest are refused at finish, and nothing is kept."""
        store = self.make_store()
        writer = store.receive(sha(b"hello"), 5)
        writer.write(0, b"hellO")
        e = self.assertRaises(BlobError, writer.finish)
        self.assertIn("does not match: the file changed while sent?", str(e))
        self.assertFalse(store.has(sha(b"hello")))
        self.assertEqual((self.incoming(), store.received_files, store.total_bytes), ([], 0, 0))

    def test_wrong_offset(self) -> None:
        """A piece not starting where the last one ended is refused, and nothing of it is written."""
        store = self.make_store()
        writer = store.receive(sha(b"abcdef"), 6)
        writer.write(0, b"abc")
        e = self.assertRaises(BlobError, writer.write, 4, b"ef")
        self.assertIn("offset 4, expected offset 3", str(e))
        self.assertEqual(writer.received, 3)
        writer.write(3, b"def")
        writer.finish()
        self.assertTrue(store.has(sha(b"abcdef")))

    def test_past_size_while_writing(self) -> None:
        """A piece going past the declared size is refused before any of it is written."""
        store = self.make_store()
        writer = store.receive(sha(b"abcd"), 4)
        writer.write(0, b"ab")
        e = self.assertRaises(BlobError, writer.write, 2, b"cde")
        self.assertIn("goes past its declared size of 4 bytes", str(e))
        self.assertEqual(writer.received, 2)
        self.assertEqual(os.path.getsize(os.path.join(self.root, "incoming", self.incoming()[0])), 2)

    def test_size_over_max_transfer(self) -> None:
        """A declared size over max_transfer is refused before anything is written."""
        store = self.make_store(max_transfer=100)
        e = self.assertRaises(BlobError, store.receive, "a" * 64, 101)
        self.assertEqual(str(e), f"Blob {'a' * 12}... is 101 bytes, over the --max-transfer limit of 100 bytes.")
        self.assertEqual(self.incoming(), [])
        store.receive("a" * 64, 100).abort()

    def test_bad_digest_and_size(self) -> None:
        """A digest that is not 64 lowercase hex digits, or a negative size, is refused."""
        store = self.make_store()
        for digest in ["A" * 64, "a" * 63, "../" + "a" * 61, ""]:
            e = self.assertRaises(BlobError, store.receive, digest, 1)
            self.assertIn("is not a SHA-256 digest", str(e))
        self.assertIn("invalid size -1", str(self.assertRaises(BlobError, store.receive, "a" * 64, -1)))
        self.assertEqual(self.incoming(), [])

    def test_incomplete_finish(self) -> None:
        """Finishing before every byte came is refused and drops the temp file."""
        store = self.make_store()
        writer = store.receive(sha(b"abcd"), 4)
        writer.write(0, b"ab")
        self.assertIn("2 of 4 bytes received", str(self.assertRaises(BlobError, writer.finish)))
        self.assertEqual(self.incoming(), [])

    def test_abort_idempotent(self) -> None:
        """Abort removes the temp file; a second abort, or a write after it, changes nothing more."""
        store = self.make_store()
        writer = store.receive(sha(b"ab"), 2)
        writer.write(0, b"a")
        writer.abort()
        writer.abort()
        self.assertEqual(self.incoming(), [])
        self.assertRaises(BlobError, writer.write, 1, b"b")

    def test_empty_blob(self) -> None:
        """A blob of zero bytes is complete at once and can be finished and read."""
        store = self.make_store()
        writer = store.receive(sha(b""), 0)
        self.assertTrue(writer.complete)
        writer.finish()
        self.assertEqual(store.read(sha(b""), 0, 10), b"")
        self.assertEqual(store.size_of(sha(b"")), 0)

    def test_received_twice(self) -> None:
        """A blob received again while present is kept once: the total does not grow."""
        store = self.make_store()
        self.put(store, b"same")
        self.put(store, b"same")
        self.assertEqual((store.total_bytes, store.received_files), (4, 2))
        self.assertEqual(self.incoming(), [])


class ReadTests(StoreMixin, TestCase):
    """Reading a blob back in pieces."""

    def test_pieces(self) -> None:
        """Reads give the bytes at the offset, short at the end and empty after it."""
        store = self.make_store()
        digest = self.put(store, b"0123456789")
        self.assertEqual(store.read(digest, 0, 4), b"0123")
        self.assertEqual(store.read(digest, 8, 4), b"89")
        self.assertEqual(store.read(digest, 10, 4), b"")
        self.assertEqual(store.read(digest, 50, 4), b"")

    def test_absent(self) -> None:
        """Reading or locating a blob the store lacks is a KeyError; has and size_of say no."""
        store = self.make_store()
        self.assertRaises(KeyError, store.read, "a" * 64, 0, 1)
        self.assertRaises(KeyError, store.path_of, "a" * 64)
        self.assertFalse(store.has("a" * 64))
        self.assertIsNone(store.size_of("a" * 64))

    def test_open_files_bounded(self) -> None:
        """At most OPEN_FILES blobs stay open; reading more closes the least recently read."""
        self.patch(blobs, "OPEN_FILES", 2)
        store = self.make_store()
        digests = [self.put(store, b"blob %d" % i) for i in range(3)]
        for digest in digests:
            store.read(digest, 0, 1)
        self.assertEqual(list(store._open), digests[1:])
        store.close()
        self.assertEqual(list(store._open), [])

    def test_evicted_blob_closed(self) -> None:
        """A blob evicted while kept open is closed, and reading it is then a KeyError."""
        store = self.make_store(cache_size=10)
        first = self.put(store, b"123456")
        self.assertEqual(store.read(first, 0, 3), b"123")
        fd = store._open[first]
        self.put(store, b"abcdef")
        self.assertNotIn(first, store._open)
        self.assertRaises(OSError, os.fstat, fd)
        self.assertRaises(KeyError, store.read, first, 0, 3)


class AddFileTests(StoreMixin, TestCase):
    """Adding a local file (a task's output) to the store."""

    def test_copy(self) -> None:
        """A file is copied in (the original stays) under its SHA-256, in pieces."""
        self.patch(blobs, "PIECE", 7)
        store = self.make_store()
        data = b"some output, more than one piece long"
        path = self.local_file(data)
        self.assertEqual(store.add_file(path), (sha(data), len(data)))
        self.assertTrue(os.path.exists(path))
        with open(store.path_of(sha(data)), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual((store.received_files, store.total_bytes, self.incoming()), (0, len(data), []))

    def test_move(self) -> None:
        """With move=True the file is renamed into the store."""
        store = self.make_store()
        path = self.local_file(b"moved")
        self.assertEqual(store.add_file(path, move=True), (sha(b"moved"), 5))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(store.read(sha(b"moved"), 0, 10), b"moved")

    def test_over_max_transfer(self) -> None:
        """A file bigger than max_transfer is refused, and a moved one is put back."""
        store = self.make_store(max_transfer=4)
        path = self.local_file(b"12345")
        for move in (False, True):
            e = self.assertRaises(BlobError, store.add_file, path, move)
            self.assertEqual(str(e), f"File {path} is 5 bytes, over the --max-transfer limit of 4 bytes.")
            self.assertTrue(os.path.exists(path))
        self.assertEqual((store.total_bytes, self.incoming()), (0, []))

    def test_grows_past_max_transfer_while_read(self) -> None:
        """A file growing past max_transfer while read is refused at the piece that crosses the bound."""
        self.patch(blobs, "PIECE", 4)
        store = self.make_store(max_transfer=10)
        path = self.local_file(b"1234")
        reads = []

        def growing(fd: int, n: int) -> bytes:
            reads.append(n)
            if len(reads) < 10:  # bounded, so that a store not enforcing the limit ends (and fails) too
                with open(path, "ab") as f:
                    f.write(b"more")
            return os.read(fd, n)

        self.patch(blobs, "_read_piece", growing)
        e = self.assertRaises(BlobError, store.add_file, path)
        self.assertEqual(str(e), f"File {path} is more than 10 bytes, over the --max-transfer limit.")
        self.assertEqual(len(reads), 3)
        self.assertEqual((store.total_bytes, self.incoming()), (0, []))

    def test_changed_while_read(self) -> None:
        """A file written to while read is refused with one sentence, nothing kept."""
        store = self.make_store()
        path = self.local_file(b"1234")

        def changing(fd: int, n: int) -> bytes:
            data = os.read(fd, n)
            if data:
                with open(path, "r+b") as f:
                    f.write(b"X")
                os.utime(path, ns=(1, 1))
            return data

        self.patch(blobs, "_read_piece", changing)
        e = self.assertRaises(BlobError, store.add_file, path)
        self.assertEqual(str(e), f"File {path} changed while it was being stored; store it again once it is written.")
        self.assertEqual((store.total_bytes, self.incoming()), (0, []))

    def test_disappeared_before(self) -> None:
        """A file that is gone is one clear BlobError, copied or moved."""
        store = self.make_store()
        path = os.path.abspath(self.mktemp())
        for move in (False, True):
            e = self.assertRaises(BlobError, store.add_file, path, move)
            self.assertEqual(str(e), f"File {path} disappeared before it could be stored.")
        self.assertEqual(self.incoming(), [])

    def test_disappeared_while_read(self) -> None:
        """A file removed while it is read is refused: what was read may not be what the task left."""
        store = self.make_store()
        path = self.local_file(b"1234")

        def vanishing(fd: int, n: int) -> bytes:
            data = os.read(fd, n)
            if os.path.exists(path):
                os.unlink(path)
            return data

        self.patch(blobs, "_read_piece", vanishing)
        e = self.assertRaises(BlobError, store.add_file, path)
        self.assertEqual(str(e), f"File {path} disappeared while it was being stored.")
        self.assertEqual((store.total_bytes, self.incoming()), (0, []))

    def test_replaced_while_read(self) -> None:
        """A file replaced by another one (a rename over it) while it is read is refused."""
        store = self.make_store()
        path = self.local_file(b"1234")
        other = self.local_file(b"5678")

        def replacing(fd: int, n: int) -> bytes:
            data = os.read(fd, n)
            if os.path.exists(other):
                os.replace(other, path)
            return data

        self.patch(blobs, "_read_piece", replacing)
        e = self.assertRaises(BlobError, store.add_file, path)
        self.assertEqual(str(e), f"File {path} was replaced while it was being stored.")
        self.assertEqual((store.total_bytes, self.incoming()), (0, []))

    def test_not_a_regular_file(self) -> None:
        """A folder is refused with one sentence."""
        store = self.make_store()
        path = os.path.abspath(self.mktemp())
        os.mkdir(path)
        e = self.assertRaises(BlobError, store.add_file, path)
        self.assertEqual(str(e), f"{path} is not a regular file, so it cannot be stored.")


class EvictionTests(StoreMixin, TestCase):
    """The store keeps to cache_size by removing least recently used blobs nobody holds."""

    def test_lru_order(self) -> None:
        """The least recently used blob goes first; has() and read() make a blob recently used."""
        store = self.make_store(cache_size=30)
        a, b, c = (self.put(store, bytes([i]) * 10) for i in range(3))
        self.assertTrue(store.has(a))
        store.read(b, 0, 1)
        d = self.put(store, b"d" * 10)
        self.assertEqual([store.has(x) for x in (a, b, c, d)], [True, True, False, True])
        self.assertEqual((store.total_bytes, store.evicted_files), (30, 1))
        self.put(store, b"e" * 10)
        self.assertFalse(store.has(a))
        self.assertFalse(os.path.exists(os.path.join(self.root, "objects", a[:2], a)))

    def test_held_never_evicted(self) -> None:
        """Held blobs are skipped; the next unheld one goes instead, and released ones go later."""
        store = self.make_store(cache_size=20)
        a, b = self.put(store, b"a" * 10), self.put(store, b"b" * 10)
        store.hold("job-1", [a, b])
        c = self.put(store, b"c" * 10)
        self.assertEqual([store.has(x) for x in (a, b, c)], [True, True, True])
        self.assertEqual(store.held(), {a, b})
        store.release("job-1")
        self.assertEqual(store.held(), set())
        self.assertEqual(store.total_bytes, 20)
        self.assertEqual(store.evicted_files, 1)

    def test_pinned_never_evicted(self) -> None:
        """
        A pinned blob is skipped like a held one, until as many unpins; pins
        are not written down (a reopened store has none).
        """
        store = self.make_store(cache_size=20)
        a, b = self.put(store, b"a" * 10), self.put(store, b"b" * 10)
        store.pin([a])
        store.pin([a])
        c = self.put(store, b"c" * 10)
        self.assertEqual([store.has(x) for x in (a, b, c)], [True, False, True])
        store.unpin([a])
        self.assertEqual(store.held(), {a})
        store.unpin([a])
        self.assertEqual(store.held(), set())
        self.assertEqual(store.total_bytes, 20)
        store.pin([c])
        self.assertEqual(self.reopen(store).held(), set())

    def test_pinned_as_it_is_kept(self) -> None:
        """
        A blob received or added with C{pin=True} is pinned as it is put in
        place, before the store evicts: the next blob cannot evict it.
        """
        store = self.make_store(cache_size=20)
        data = b"a" * 10
        writer = store.receive(sha(data), len(data), pin=True)
        writer.write(0, data)
        writer.finish()
        added, _ = store.add_file(self.local_file(b"b" * 10), pin=True)
        c = self.put(store, b"c" * 10)
        self.assertEqual([store.has(x) for x in (sha(data), added, c)], [True, True, True])
        store.unpin([sha(data), added])
        self.put(store, b"d" * 10)
        self.assertEqual(store.held(), set())
        self.assertFalse(store.has(sha(data)))

    def test_new_blob_kept_when_too_big(self) -> None:
        """A blob bigger than the whole cache is kept (it was just asked for); older ones go."""
        store = self.make_store(cache_size=10)
        a = self.put(store, b"a" * 5)
        big = self.put(store, b"b" * 20)
        self.assertFalse(store.has(a))
        self.assertTrue(store.has(big))

    def test_added_file_evicts(self) -> None:
        """Adding a file also evicts."""
        store = self.make_store(cache_size=10)
        a = self.put(store, b"a" * 8)
        store.add_file(self.local_file(b"b" * 8))
        self.assertFalse(store.has(a))


class PersistenceTests(StoreMixin, TestCase):
    """What survives a restart: blobs in LRU order, holds; what does not: temp files."""

    def test_blobs_and_lru_survive(self) -> None:
        """Blobs are found again, least recently used first by their file times."""
        store = self.make_store(cache_size=30)
        a, b, c = (self.put(store, bytes([i]) * 10) for i in range(3))
        for digest, when in ((a, 300), (b, 100), (c, 200)):
            os.utime(store.path_of(digest), (when, when))
        store = self.reopen(store)
        self.assertEqual(store.total_bytes, 30)
        self.put(store, b"d" * 10)
        self.assertEqual([store.size_of(x) for x in (a, b, c)], [10, None, 10])

    def test_holds_survive(self) -> None:
        """Holds are read back on reopen and still protect their blobs; a release is remembered too."""
        store = self.make_store(cache_size=10)
        a = self.put(store, b"a" * 10)
        store.hold("job/1 with odd name", [a])
        store.hold("job/1 with odd name", ["f" * 64])
        store.hold("other", ["e" * 64])
        store.release("other")
        store = self.reopen(store)
        self.assertEqual(store.held(), {a, "f" * 64})
        self.put(store, b"b" * 10)
        self.assertTrue(store.has(a))
        store.release("job/1 with odd name")
        self.assertEqual(self.reopen(store).held(), set())

    def test_holds_appended_not_rewritten(self) -> None:
        """
        Holding more of a job's files appends only the digests new to it (a
        job with many outputs does not rewrite its whole list each time); a
        torn last line, as a crash mid-write leaves, is ignored on reopen.
        """
        store = self.make_store()
        store.hold("job-1", ["a" * 64, "b" * 64])
        store.hold("job-1", ["b" * 64, "c" * 64])
        path = os.path.join(self.root, "holds", "job-1")
        with open(path) as f:
            self.assertEqual(f.read().split(), ["a" * 64, "b" * 64, "c" * 64])
        with open(path, "a") as f:
            f.write("d" * 20)
        self.assertEqual(self.reopen(store).held(), {"a" * 64, "b" * 64, "c" * 64})

    def test_owner_names_are_safe(self) -> None:
        """An owner name with slashes or dots never leaves holds/; distinct owners stay distinct."""
        store = self.make_store()
        owners = ["../../escape", "a/b", ".hidden", "x" * 300, "plain-job:1"]
        for i, owner in enumerate(owners):
            store.hold(owner, [("%x" % i) * 64])
        names = sorted(os.listdir(os.path.join(self.root, "holds")))
        self.assertEqual(names, sorted(safe_name(o) for o in owners))
        self.assertIn("plain-job:1", names)
        self.assertEqual(len(set(names)), len(owners))
        self.assertEqual(os.listdir(os.path.dirname(self.root)), [os.path.basename(self.root)])

    def test_bad_digest_held(self) -> None:
        """Holding something that is not a digest is refused, and nothing is written."""
        store = self.make_store()
        self.assertRaises(BlobError, store.hold, "job", ["a" * 64, "nope"])
        self.assertEqual(store.held(), set())

    def test_leftovers_swept(self) -> None:
        """Temp files in incoming/ and holds/ from a crash are removed on open; blobs and holds stay."""
        store = self.make_store()
        a = self.put(store, b"kept")
        store.hold("job", [a])
        writer = store.receive(sha(b"partial"), 7)
        writer.write(0, b"part")
        with open(os.path.join(self.root, "holds", ".job.1234"), "w") as f:
            f.write("half")
        store = self.reopen(store)
        self.assertEqual(self.incoming(), [])
        self.assertEqual(os.listdir(os.path.join(self.root, "holds")), ["job"])
        self.assertTrue(store.has(a))
        self.assertEqual(store.held(), {a})

    def test_stray_files_ignored(self) -> None:
        """Files in objects/ that are not blobs are not indexed."""
        store = self.make_store()
        with open(os.path.join(self.root, "objects", "README"), "w") as f:
            f.write("x")
        os.makedirs(os.path.join(self.root, "objects", "aa"))
        with open(os.path.join(self.root, "objects", "aa", "b" * 64), "w") as f:
            f.write("wrong folder")
        store = self.reopen(store)
        self.assertEqual(store.total_bytes, 0)
        self.assertFalse(store.has("b" * 64))
