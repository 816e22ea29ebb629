"""
The responders to HAVE_BLOBS, PUT_BLOB and FETCH_BLOB (issue 16; see
docs/protocol.rst, "Files"): L{FileCommands}, mixed into
L{p2pexec.peer.PeerProtocol}, checks each box's arguments and hands the
work to the node's L{p2pexec.file_service.FileService}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.file_service import DIGEST, FileService, IFileConnection, log
from p2pexec.framing import bad_arguments
from p2pexec.model import shorten

if TYPE_CHECKING:
    from p2pexec.interfaces import IPeerHandler
    from p2pexec.model import NodeInfo


# -- the arguments ------------------------------------------------------------------

MAX_JOB_ID = 1_000
"""The longest job id HOLD_BLOBS takes (a job's id is far shorter)."""


def check_digest(value: str, what: str = "sha256") -> None:
    """C{ValueError} unless C{value} is a SHA-256 digest (64 lowercase hex digits)."""
    if not DIGEST.fullmatch(value):
        raise ValueError(
            f"{what!r} must be a SHA-256 digest of 64 lowercase hex digits, not {shorten(repr(value), 80)}"
        )


def check_digests(value: Any) -> list[str]:
    """HAVE_BLOBS' C{digests}: a list of at most L{commands.MAX_DIGESTS} digests; C{ValueError} otherwise."""
    if not isinstance(value, list) or len(value) > commands.MAX_DIGESTS:
        raise ValueError(f"'digests' must be a list of at most {commands.MAX_DIGESTS} SHA-256 digests")
    for digest in value:
        if not isinstance(digest, str):
            raise ValueError("'digests' must hold strings")
        check_digest(digest, "digests")
    return value


def check_piece(sha256: str, size: int, offset: int, pieces: list[bytes]) -> None:
    """PUT_BLOB's arguments, on their own (the transfer is checked by the service); C{ValueError} otherwise."""
    check_digest(sha256)
    if size < 0 or offset < 0:
        raise ValueError("'size' and 'offset' must be 0 or more")
    for name, data in zip(("data", *commands.EXTRA_PIECES), pieces):
        if len(data) > commands.PIECE_LIMIT:
            raise ValueError(f"{name!r} holds {len(data)} bytes, more than {commands.PIECE_LIMIT}")
        if not data and (size != 0 or name != "data"):
            raise ValueError(f"{name!r} is empty, but the blob is not")


class FileCommands(amp.CommandLocator):
    """The responders to HAVE_BLOBS, PUT_BLOB and FETCH_BLOB, mixed into L{p2pexec.peer.PeerProtocol}."""

    _handler: IPeerHandler
    peer: NodeInfo | None

    def describe(self) -> str:
        """The peer's name and address, for log lines (provided by the protocol)."""
        raise NotImplementedError

    def require_owner(self, command: str) -> None:
        """Refuse C{command} unless this side may submit (provided by L{p2pexec.client_commands.ClientCommands})."""
        raise NotImplementedError

    def _files(self) -> FileService | None:
        """The node's file service; C{None}: it moves no files (a test's handler may not have one at all)."""
        return getattr(self._handler, "files", None)

    @commands.HaveBlobs.responder
    def _have_blobs(self, digests: Any) -> dict[str, Any]:
        try:
            asked = check_digests(digests)
        except ValueError as e:
            raise bad_arguments(self.describe(), "HAVE_BLOBS", e) from None
        files = self._files()
        return {"missing": list(dict.fromkeys(asked)) if files is None else files.have(asked)}

    @commands.HoldBlobs.responder
    def _hold_blobs(self, job: str, digests: Any) -> dict[str, Any]:
        try:
            asked = check_digests(digests)
            if not 1 <= len(job) <= MAX_JOB_ID:
                raise ValueError(f"'job' must be 1 to {MAX_JOB_ID} characters")
        except ValueError as e:
            raise bad_arguments(self.describe(), "HOLD_BLOBS", e) from None
        if self.peer is None:
            # (The connection machine refuses it before the handshake already.)
            raise commands.TransferRefused("not allowed: HOLD_BLOBS comes from a peer, after its handshake")
        files = self._files()
        if files is None:
            raise commands.TransferRefused("not allowed: this node moves no files")
        return {"held": files.hold_for_replica(job, asked)}

    @commands.PutBlob.responder
    def _put_blob(
        self, sha256: str, size: int, offset: int, **box: bytes | None
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        try:
            pieces = commands.pieces_of(box)
            check_piece(sha256, size, offset, pieces)
        except ValueError as e:
            raise bad_arguments(self.describe(), "PUT_BLOB", e) from None
        if self.peer is None:
            # A client's (no handshake): only the node's owner may store files.
            self.require_owner("PUT_BLOB")
        files = self._files()
        if files is None:
            log.warn("Refused PUT_BLOB from {peer}: this node moves no files", peer=self.describe())
            raise commands.TransferRefused("not allowed: this node moves no files")
        return files.put(cast(IFileConnection, self), sha256, size, offset, pieces)

    @commands.FetchBlob.responder
    def _fetch_blob(self, sha256: str, offset: int, limit: int) -> dict[str, Any] | Deferred[dict[str, Any]]:
        try:
            check_digest(sha256)
            if offset < 0 or not 0 <= limit <= commands.BOX_LIMIT:
                raise ValueError(f"'offset' must be 0 or more and 'limit' 0 to {commands.BOX_LIMIT}")
        except ValueError as e:
            raise bad_arguments(self.describe(), "FETCH_BLOB", e) from None
        files = self._files()
        if files is None:
            raise commands.NoSuchBlob("this node moves no files")
        return files.fetch(cast(IFileConnection, self), sha256, offset, limit, proxy=self.peer is None)
