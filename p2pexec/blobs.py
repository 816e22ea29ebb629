"""
A node's content-addressed file store: every file a task takes as input or
gives as output, kept once under its SHA-256, in the state directory.

Layout under C{root} (C{STATE/blobs}):

  - C{objects/AB/ABCD...}: one file per blob, named by its SHA-256 in hex,
    in a folder named by the digest's first two characters;
  - C{incoming/DIGEST.RANDOM}: a blob being written; it is hashed as it is
    written, fsynced, and renamed into C{objects/} only once its digest
    checked (so C{objects/} never holds a partial or wrong file); leftovers
    from a crash are removed when the store opens;
  - C{holds/OWNER}: the digests one owner (a job on the master) holds, one a
    line; a held blob is never evicted, and holds survive a restart.

The store is bounded by C{cache_size} bytes: after each blob added, the
least recently used blobs that nobody holds are removed until the total
fits (never the blob just added).  One file is bounded by C{max_transfer}
bytes, enforced while it is written or read, never after.  Memory stays
bounded: files are hashed and copied in 1 MiB pieces.

L{BlobStore.add_file} is synchronous and may take seconds on a big file, so
callers run it in a thread; the store's index is guarded by a lock so that
the reactor thread can read blobs meanwhile.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from p2pexec.log import NodeLogger
from p2pexec.safepaths import safe_name

log = NodeLogger()

DIGEST = re.compile(r"[0-9a-f]{64}")
"""A blob's name: its SHA-256 as 64 lowercase hex digits."""

PIECE = 1024 * 1024

FRESH_PIN = 600.0
"""Seconds a blob just received or added stays pinned (its caller unpins it then): until a job holds it
(a client's input until its job is accepted, a worker's output until its result is applied), so that the
next blob to arrive cannot evict it first."""
"""Bytes read, hashed and copied at a time by L{BlobStore.add_file}."""

OPEN_FILES = 8
"""Blobs whose file descriptors L{BlobStore.read} keeps open (the most recently read)."""

_read_piece: Callable[[int, int], bytes] = os.read
"""How L{BlobStore.add_file} reads one piece; tests replace it to change a file while it is read."""


class BlobError(ValueError):
    """Why a blob was refused; C{str()} is one clear sentence naming the digest or file, the size and the limit."""


def _check_digest(digest: object) -> str:
    """C{digest} if it is 64 lowercase hex digits, else L{BlobError}."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise BlobError(f"{digest!r} is not a SHA-256 digest (64 lowercase hex digits).")
    return digest


def _short(digest: str) -> str:
    """A digest shortened for a message."""
    return digest[:12] + "..."


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of C{data} to C{fd}."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: str) -> None:
    """Make a rename in C{folder} durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobWriter:
    """
    One blob being received: bytes written in order into a temporary file in
    C{incoming/}, hashed as they come; L{finish} checks the digest and moves
    the file into the store.  Obtained from L{BlobStore.receive}.
    """

    def __init__(self, store: BlobStore, digest: str, size: int) -> None:
        """Open a fresh temporary file for blob C{digest} of C{size} bytes."""
        self._store = store
        self.digest = digest
        self.size = size
        self.received = 0
        self._hash = hashlib.sha256()
        self._temp = os.path.join(store._incoming, f"{digest}.{secrets.token_hex(8)}")
        self._fd: int | None = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._done = False
        self.pin_on_commit = False
        """Whether the blob is pinned as it is put in place (see L{BlobStore.receive})."""

    @property
    def complete(self) -> bool:
        """Whether every declared byte was received."""
        return self.received == self.size

    def write(self, offset: int, data: bytes) -> None:
        """
        Append C{data}, which must start at byte C{offset} == L{received};
        L{BlobError} (and nothing written) if it does not, if it would go past
        the declared size, or if the writer is finished or aborted.
        """
        if self._fd is None:
            raise BlobError(f"Blob {_short(self.digest)} is no longer being received.")
        if offset != self.received:
            raise BlobError(f"Blob {_short(self.digest)}: piece at offset {offset}, expected offset {self.received}.")
        if self.received + len(data) > self.size:
            raise BlobError(
                f"Blob {_short(self.digest)}: a piece of {len(data):,} bytes at offset {offset:,} goes past "
                f"its declared size of {self.size:,} bytes."
            )
        _write_all(self._fd, data)
        self._hash.update(data)
        self.received += len(data)

    def finish(self) -> None:
        """
        Check the SHA-256 of what was received, then fsync the file and
        rename it into the store (counted, then the store evicts what no longer
        fits).  L{BlobError}, and the temporary file removed, if bytes are
        missing or the digest does not match.
        """
        if self._fd is None:
            raise BlobError(f"Blob {_short(self.digest)} is no longer being received.")
        if not self.complete:
            self.abort()
            raise BlobError(
                f"Blob {_short(self.digest)} is incomplete: {self.received:,} of {self.size:,} bytes received."
            )
        got = self._hash.hexdigest()
        if got != self.digest:
            self.abort()
            raise BlobError(
                f"The bytes received for blob {_short(self.digest)} have SHA-256 {_short(got)}, which does not "
                "match: the file changed while sent?"
            )
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._done = True
        try:
            self._store._commit(self._temp, self.digest, self.size, counted=True, pin=self.pin_on_commit)
        except BaseException:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
            raise

    def abort(self) -> None:
        """Stop receiving and remove the temporary file; doing it twice, or after L{finish}, does nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if not self._done:
            self._done = True
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass


class BlobStore:
    """
    The content-addressed store under C{root}; see the module docstring for
    its layout, bounds and eviction.
    """

    def __init__(self, root: str, cache_size: int, max_transfer: int) -> None:
        """
        Open (creating it if needed) the store in C{root}: remove leftover
        temporary files, load the blobs there (least recently used first, by
        file modification time) and the holds.
        """
        self.root = root
        self.cache_size = cache_size
        self.max_transfer = max_transfer
        self.received_files = 0
        self.received_bytes = 0
        self.evicted_files = 0
        self._objects = os.path.join(root, "objects")
        self._incoming = os.path.join(root, "incoming")
        self._holds_dir = os.path.join(root, "holds")
        self._lock = threading.RLock()
        self._blobs: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._holds: dict[str, frozenset[str]] = {}
        self._pinned: Counter[str] = Counter()
        self._open: OrderedDict[str, int] = OrderedDict()
        for folder in (self._objects, self._incoming, self._holds_dir):
            os.makedirs(folder, exist_ok=True)
        self._sweep(self._incoming, lambda name: True)
        self._sweep(self._holds_dir, lambda name: name.startswith("."))
        self._load_blobs()
        self._load_holds()

    # -- opening -------------------------------------------------------

    def _sweep(self, folder: str, leftover: Callable[[str], bool]) -> None:
        """Remove the files of C{folder} that C{leftover} names (temporary files a crash left)."""
        for entry in os.scandir(folder):
            if leftover(entry.name):
                try:
                    os.unlink(entry.path)
                except OSError as e:
                    log.warn("Could not remove the leftover file {path}: {error}", path=entry.path, error=e)

    def _load_blobs(self) -> None:
        """Index the blobs in C{objects/}, least recently used (oldest modification time) first."""
        found: list[tuple[int, str, int]] = []
        for shard in os.scandir(self._objects):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if DIGEST.fullmatch(entry.name) and entry.name[:2] == shard.name:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        found.append((info.st_mtime_ns, entry.name, info.st_size))
        for _mtime, digest, size in sorted(found):
            self._blobs[digest] = size
            self._total += size

    def _load_holds(self) -> None:
        """Read the holds kept in C{holds/}: one file per owner, one digest a line."""
        for entry in os.scandir(self._holds_dir):
            with open(entry.path, encoding="ascii", errors="replace") as f:
                digests = frozenset(line.strip() for line in f if DIGEST.fullmatch(line.strip()))
            self._holds[entry.name] = digests

    # -- looking up and reading -----------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes of all blobs in the store."""
        return self._total

    def _path(self, digest: str) -> str:
        """Where blob C{digest} lives (whether or not it is there)."""
        return os.path.join(self._objects, digest[:2], digest)

    def has(self, digest: str) -> bool:
        """Whether the store has blob C{digest}; if so it becomes the most recently used."""
        with self._lock:
            if digest not in self._blobs:
                return False
            self._blobs.move_to_end(digest)
        try:
            os.utime(self._path(digest))
        except OSError:
            pass
        return True

    def size_of(self, digest: str) -> int | None:
        """The size of blob C{digest}, or None if the store lacks it."""
        return self._blobs.get(digest)

    def path_of(self, digest: str) -> str:
        """The file of blob C{digest} (to read, never to change); KeyError if the store lacks it."""
        if digest not in self._blobs:
            raise KeyError(digest)
        return self._path(digest)

    def read(self, digest: str, offset: int, limit: int) -> bytes:
        """
        Up to C{limit} bytes of blob C{digest} from byte C{offset}: C{b""} at
        or after its end; KeyError if the store lacks it.  The file stays open
        for the next piece (the L{OPEN_FILES} most recently read are kept).
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"Cannot read {limit} bytes at offset {offset}.")
        with self._lock:
            if digest not in self._blobs:
                raise KeyError(digest)
            fd = self._open.get(digest)
            if fd is None:
                try:
                    fd = os.open(self._path(digest), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    self._forget(digest)
                    raise KeyError(digest) from None
                self._open[digest] = fd
                while len(self._open) > OPEN_FILES:
                    os.close(self._open.popitem(last=False)[1])
            else:
                self._open.move_to_end(digest)
            self._blobs.move_to_end(digest)
            return os.pread(fd, limit, offset)

    def close(self) -> None:
        """Close the files L{read} keeps open (when the node stops)."""
        with self._lock:
            while self._open:
                os.close(self._open.popitem()[1])

    # -- adding -----------------------------------------------------------

    def receive(self, digest: str, size: int, pin: bool = False) -> BlobWriter:
        """
        A writer for blob C{digest} of C{size} bytes; L{BlobError} if the
        digest is malformed, the size negative or over C{max_transfer}.

        @param pin: pin the blob (L{pin}) as it is put in place, before the
            store evicts what no longer fits; the caller unpins it later.
        """
        _check_digest(digest)
        if not isinstance(size, int) or size < 0:
            raise BlobError(f"Blob {_short(digest)} has an invalid size {size!r}.")
        if size > self.max_transfer:
            raise BlobError(
                f"Blob {_short(digest)} is {size:,} bytes, over the --max-transfer limit of {self.max_transfer:,} bytes."
            )
        writer = BlobWriter(self, digest, size)
        writer.pin_on_commit = pin
        return writer

    def add_file(self, path: str, move: bool = False, pin: bool = False) -> tuple[str, int]:
        """
        Add the file at C{path} to the store and return its (digest, size).

        The file is hashed (and, unless moved, copied into C{incoming/}) in
        1 MiB pieces; L{BlobError} as soon as more than C{max_transfer} bytes
        were read, if it is not a regular file, if it disappears, or if it
        changes while read.  With C{move=True} the file is first renamed into
        C{incoming/} (when on the same filesystem; else it is copied), so it
        cannot change under the hash; it is put back if it is refused.
        Synchronous: run it in a thread for big files.  C{pin}: as for L{receive}.
        """
        temp = os.path.join(self._incoming, f"add.{secrets.token_hex(8)}")
        moved = False
        if move:
            try:
                os.rename(path, temp)
                moved = True
            except FileNotFoundError:
                raise BlobError(f"File {path} disappeared before it could be stored.") from None
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES):
                    raise BlobError(f"File {path} could not be moved into the store: {e.strerror}.") from None
        try:
            digest, size = self._hash_file(temp if moved else path, path, None if moved else temp)
        except BaseException:
            if moved:
                try:
                    os.rename(temp, path)
                except OSError:
                    pass
            else:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
            raise
        self._commit(temp, digest, size, counted=False, pin=pin)
        return digest, size

    def _hash_file(self, source: str, shown: str, copy_to: str | None) -> tuple[str, int]:
        """
        Hash C{source} in pieces (C{shown} is the path named in errors),
        copying it to C{copy_to} (fsynced) when given; enforce C{max_transfer}
        and check the file did not change or vanish meanwhile.
        """
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobError(f"File {shown} disappeared before it could be stored.") from None
        except OSError as e:
            raise BlobError(f"File {shown} could not be read: {e.strerror}.") from None
        out: int | None = None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise BlobError(f"{shown} is not a regular file, so it cannot be stored.")
            if before.st_size > self.max_transfer:
                raise BlobError(
                    f"File {shown} is {before.st_size:,} bytes, over the --max-transfer limit of "
                    f"{self.max_transfer:,} bytes."
                )
            if copy_to is not None:
                out = os.open(copy_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            digest = hashlib.sha256()
            size = 0
            while True:
                piece = _read_piece(fd, PIECE)
                if not piece:
                    break
                size += len(piece)
                if size > self.max_transfer:
                    raise BlobError(
                        f"File {shown} is more than {self.max_transfer:,} bytes, over the --max-transfer limit."
                    )
                digest.update(piece)
                if out is not None:
                    _write_all(out, piece)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or size != after.st_size:
                raise BlobError(f"File {shown} changed while it was being stored; store it again once it is written.")
            if copy_to is not None:
                try:
                    now = os.stat(source)
                except FileNotFoundError:
                    raise BlobError(f"File {shown} disappeared while it was being stored.") from None
                if (now.st_dev, now.st_ino) != (after.st_dev, after.st_ino):
                    raise BlobError(f"File {shown} was replaced while it was being stored.")
            # The bytes must be on disk before the blob is: the copy, or the
            # moved file itself (a task's output may still be in the page cache).
            os.fsync(out if out is not None else fd)
            return digest.hexdigest(), size
        finally:
            os.close(fd)
            if out is not None:
                os.close(out)

    def _commit(self, temp: str, digest: str, size: int, counted: bool, pin: bool = False) -> None:
        """
        Rename the checked file C{temp} into place as blob C{digest} (or drop
        it when the store has it already), count it when C{counted} (received
        from elsewhere), pin it if asked, make it the most recently used and
        evict.
        """
        shard = os.path.join(self._objects, digest[:2])
        with self._lock:
            if digest in self._blobs:
                os.unlink(temp)
                self._blobs.move_to_end(digest)
            else:
                os.makedirs(shard, exist_ok=True)
                os.replace(temp, self._path(digest))
                self._blobs[digest] = size
                self._total += size
            if counted:
                self.received_files += 1
                self.received_bytes += size
            if pin:
                self._pinned[digest] += 1
            self._evict(keep=digest)
        _fsync_folder(shard)

    # -- eviction and holds -------------------------------------------------

    def _evict(self, keep: str) -> None:
        """While over C{cache_size}, remove the least recently used blob that is neither held nor C{keep}."""
        if self._total <= self.cache_size:
            return
        held = self.held()
        for digest in list(self._blobs):
            if self._total <= self.cache_size:
                break
            if digest == keep or digest in held:
                continue
            try:
                os.unlink(self._path(digest))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("Could not evict blob {digest}: {error}", digest=digest, error=e)
                continue
            self._forget(digest)
            self.evicted_files += 1

    def _forget(self, digest: str) -> None:
        """Drop blob C{digest} from the index and close its open file, if any."""
        self._total -= self._blobs.pop(digest, 0)
        fd = self._open.pop(digest, None)
        if fd is not None:
            os.close(fd)

    def hold(self, owner: str, digests: Iterable[str]) -> None:
        """
        Add C{digests} to what C{owner} holds: they are never evicted until
        L{release}.  Kept in C{holds/}, one file per owner to which only the
        digests new to it are appended (and fsynced), so that holding a few
        more of a job's outputs costs their lines, not the whole list again;
        holds survive a restart.  A digest the store lacks may be held (it is
        kept once it arrives); a malformed one is a L{BlobError}.
        """
        new = frozenset(_check_digest(d) for d in digests)
        key = safe_name(owner)
        with self._lock:
            held = self._holds.get(key, frozenset())
            added = new - held
            if not added:
                return
            path = os.path.join(self._holds_dir, key)
            created = key not in self._holds
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, "".join(d + "\n" for d in sorted(added)).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._holds[key] = held | added
        if created:
            _fsync_folder(self._holds_dir)

    def release(self, owner: str) -> None:
        """Drop everything C{owner} holds (the blobs stay until evicted); nothing if it holds nothing."""
        key = safe_name(owner)
        with self._lock:
            if self._holds.pop(key, None) is None:
                return
            try:
                os.unlink(os.path.join(self._holds_dir, key))
            except FileNotFoundError:
                pass
            self._evict(keep="")

    def pin(self, digests: Iterable[str]) -> None:
        """
        Keep C{digests} from eviction until as many L{unpin}s: in memory only,
        for a task attempt between fetching its inputs and placing them (a
        restart forgets pins, as it forgets the attempts).
        """
        with self._lock:
            self._pinned.update(digests)

    def unpin(self, digests: Iterable[str]) -> None:
        """Undo one L{pin} of each of C{digests}; evict if the cache is over its size now."""
        with self._lock:
            self._pinned.subtract(digests)
            self._pinned = +self._pinned
            self._evict(keep="")

    def held(self) -> set[str]:
        """Every digest some owner holds, or an attempt pins."""
        with self._lock:
            result: set[str] = set(self._pinned)
            for digests in self._holds.values():
                result |= digests
            return result
