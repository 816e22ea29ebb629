"""
A job's files copied to its replica set (issue 16): the master pushes the
job's inputs, and the outputs of each result it applies, to every other
member of the job's replica set (PUT_BLOB, after HAVE_BLOBS), then asks it
to hold them for the job (HOLD_BLOBS), so that a successor that takes the
job over has them (see docs/protocol.rst, "Files", and docs/reliability.rst,
"Files and failures").

Bounded: one copy at a time (one job's files to one member), its blobs one
after the other; the others wait in a queue, those of the same job and
member merged.  A member not connected is skipped (and tried again when it
connects); a copy that fails is logged once per job and member and never
fails the job.  L{p2pexec.file_holds.JobFiles} says what to copy where.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands, transfer
from p2pexec.log import NodeLogger

log = NodeLogger()

Connect = Callable[[str], Any | None]
"""C{connect(member)}: the open connection to peer C{member} (a L{transfer.Caller}), or C{None}."""


class ICopyStore(Protocol):
    """What L{ReplicaCopies} uses of a L{p2pexec.blobs.BlobStore}."""

    def size_of(self, digest: str) -> int | None:
        """The blob's size, or C{None} if the store lacks it."""

    def read(self, digest: str, offset: int, limit: int) -> bytes:
        """At most C{limit} bytes of the blob from C{offset}; C{KeyError} if the store lacks it."""


class _Copy:
    """One job's files to copy to one member: their digests, and what they are (C{input}, C{output})."""

    def __init__(self, job: str, member: str) -> None:
        self.job = job
        self.member = member
        self.digests: dict[str, None] = {}
        self.kinds: dict[str, None] = {}

    def add(self, digests: Iterable[str], kind: str) -> None:
        """More files of the same job for the same member."""
        self.digests.update(dict.fromkeys(digests))
        self.kinds[kind] = None


class ReplicaCopies:
    """
    The copies of job files to replica set members this node (a master)
    makes, one at a time (see the module's docstring).

    @ivar copied: blobs pushed to a member (not counting those it had).
    @ivar copied_bytes: bytes of the blobs pushed.
    """

    def __init__(self, store: ICopyStore, clock: IReactorTime, connect: Connect, name: str = "") -> None:
        self._store = store
        self._clock = clock
        self._connect = connect
        self._name = name
        self._queue: OrderedDict[tuple[str, str], _Copy] = OrderedDict()
        self._busy: tuple[str, str] | None = None
        self._starting = False
        self._skipped: dict[tuple[str, str], _Copy] = {}
        self._warned: set[tuple[str, str]] = set()
        self.copied = 0
        self.copied_bytes = 0

    @property
    def idle(self) -> bool:
        """Whether no copy is under way or waiting."""
        return self._busy is None and not self._queue

    def copy(self, job: str, member: str, digests: Iterable[str], kind: str) -> None:
        """Copy the blobs C{digests} of C{job} (its C{kind} files: C{input}, C{output}) to C{member}, in turn."""
        digests = list(digests)
        if not digests:
            return
        key = (job, member)
        waiting = self._queue.get(key)
        if waiting is None:
            waiting = self._queue[key] = _Copy(job, member)
        waiting.add(digests, kind)
        self._next()

    def member_connected(self, member: str) -> None:
        """C{member} connected: copy it the files it was skipped for while away."""
        for key in [key for key in self._skipped if key[1] == member]:
            skipped = self._skipped.pop(key)
            for kind in skipped.kinds:
                self.copy(skipped.job, member, skipped.digests, kind)

    def forget(self, job: str) -> None:
        """C{job} is forgotten (or another node leads it): copy nothing more of it."""
        for table in (self._queue, self._skipped):
            for key in [key for key in table if key[0] == job]:
                del table[key]
        self._warned = {key for key in self._warned if key[0] != job}

    def _next(self) -> None:
        """Start the next copy, unless one is under way (a copy done at once does not recurse: the loop goes on)."""
        if self._starting:
            return
        self._starting = True
        try:
            self._start()
        finally:
            self._starting = False

    def _start(self) -> None:
        while self._busy is None and self._queue:
            key, item = self._queue.popitem(last=False)
            connection = self._connect(item.member)
            if connection is None:
                log.debug(
                    "Node {name} skips copying job {job}'s files to replica {member}: it is not connected "
                    "(they are copied when it connects)",
                    name=self._name,
                    job=item.job,
                    member=item.member,
                )
                skipped = self._skipped.setdefault(key, _Copy(item.job, item.member))
                for kind in item.kinds:
                    skipped.add(item.digests, kind)
                continue
            self._busy = key
            d = self._send(connection, item)
            d.addErrback(self._failed, item)
            d.addBoth(self._done)

    def _done(self, _: Any) -> None:
        self._busy = None
        self._next()

    @inlineCallbacks
    def _send(self, connection: Any, item: _Copy) -> Any:
        """Push what C{item.member} lacks, one blob after the other, then ask it to hold them all."""
        started = self._clock.seconds()
        sizes = {d: size for d in item.digests if (size := self._store.size_of(d)) is not None}
        if not sizes:
            return
        digests = list(sizes)
        lacking = yield transfer.missing(connection, digests)
        for digest in lacking:
            sent = yield transfer.push(connection, partial(self._store.read, digest), digest, sizes[digest])
            if sent:
                self.copied += 1
                self.copied_bytes += sent
        held: list[str] = []
        for start in range(0, len(digests), commands.MAX_DIGESTS):
            answer = yield connection.callRemote(
                commands.HoldBlobs, job=item.job, digests=digests[start : start + commands.MAX_DIGESTS]
            )
            listed = answer["held"]
            if not isinstance(listed, list):
                raise commands.TransferRefused("the answer to HOLD_BLOBS is not a list of digests")
            held.extend(d for d in listed if d in sizes)
        unheld = [d for d in digests if d not in set(held)]
        if unheld:
            raise commands.TransferRefused(
                f"it does not hold {len(unheld)} of them ({', '.join(d[:12] for d in unheld[:3])}) after they were sent"
            )
        log.info(
            "Node {name} copied job {job}'s {count} {kind} file(s) ({size:,} bytes) to replica {member} in {took:.2f}s",
            name=self._name,
            job=item.job,
            count=len(digests),
            kind=" and ".join(item.kinds),
            size=sum(sizes.values()),
            member=item.member,
            took=self._clock.seconds() - started,
        )

    def _failed(self, failure: Failure, item: _Copy) -> None:
        """Log a failed copy once per job and member; the job goes on."""
        key = (item.job, item.member)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warn(
            "Node {name} could not copy job {job}'s files to replica {member}: {error}; a node that takes the "
            "job over may lack them",
            name=self._name,
            job=item.job,
            member=item.member,
            error=failure.getErrorMessage(),
        )
