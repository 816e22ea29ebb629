"""
The cluster key, and what is derived from it.

A cluster shares one random 256-bit key (C{p2pexec keygen}).  It is never
sent.  From it come three keys of their own, one per use:

  - the datagram key: an HMAC-SHA256 over every discovery datagram, with a
    timestamp and a nonce against replays (L{DatagramSealer});
  - the connection key: a mutual challenge-response that opens every AMP
    connection (L{ChallengeResponse}; the dialler's half, which nodes and
    the command-line client share, is L{authenticate});
  - the HTTP token, which the HTTP API asks for (L{http_token}).

See C{docs/security.rst}.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.protocols import amp

from p2pexec import commands

KEY_BYTES = 32

TRAILER = struct.Struct(">Q16s32s")
"""What a sealed datagram carries after its body: milliseconds since the
epoch, a 16-byte nonce, and the HMAC-SHA256 of body, time and nonce."""
SEAL_MARK = b"\x00"
"""Separates a datagram's JSON body from its trailer (JSON never holds a NUL)."""

DATAGRAM_WINDOW = 10.0
"""Seconds a sealed datagram's timestamp may differ from this node's clock."""

MAX_REMEMBERED_NONCES = 100_000
"""Nonces of recent datagrams remembered against replays; past this, new datagrams are refused."""


class KeyFileError(ValueError):
    """A key file cannot be used; the message says which and why."""


def generate_key() -> str:
    """A new cluster key, as the 64 hexadecimal digits a key file holds."""
    return os.urandom(KEY_BYTES).hex()


def load_key(path: str) -> bytes:
    """
    Read a key file: 64 hexadecimal digits, readable by its owner only.

    @raise KeyFileError: if it is missing, readable by others, or malformed.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise KeyFileError(f"key file {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path}: not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path}: its mode is {stat.S_IMODE(info.st_mode):04o}; a cluster key must be readable by "
            f"its owner only: chmod 600 {path}"
        )
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(200).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"key file {path}: cannot be read: {e}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path}: not a cluster key (64 hexadecimal digits, as p2pexec keygen writes)")
    return key


def derive(key: bytes, purpose: str) -> bytes:
    """The key for one C{purpose}, derived from the cluster key."""
    return hmac.new(key, f"p2pexec {purpose} v1".encode("ascii"), hashlib.sha256).digest()


def http_token(key: bytes) -> str:
    """The bearer token of the HTTP API (and of the dashboard), from the cluster key."""
    return derive(key, "http token").hex()


class DatagramError(ValueError):
    """A sealed datagram was refused: C{reason} is C{unsealed}, C{forged}, C{stale} or C{replayed}."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DatagramSealer:
    """
    Seals outgoing datagrams and opens incoming ones with the datagram key.

    @param clock: the wall clock, seconds since the epoch (C{time.time}):
        the timestamps are compared with other nodes' clocks.
    @param random_bytes: nonces (C{os.urandom}).
    """

    def __init__(
        self,
        key: bytes,
        clock: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
        window: float = DATAGRAM_WINDOW,
        max_nonces: int = MAX_REMEMBERED_NONCES,
    ) -> None:
        self._key = derive(key, "datagram")
        self._clock = clock
        self._random = random_bytes
        self._window = window
        self._max_nonces = max_nonces
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def seal(self, body: bytes) -> bytes:
        """C{body}, then the mark and the trailer (time, nonce, HMAC)."""
        millis = int(self._clock() * 1000)
        nonce = self._random(16)
        mac = hmac.new(self._key, body + struct.pack(">Q", millis) + nonce, hashlib.sha256).digest()
        return body + SEAL_MARK + TRAILER.pack(millis, nonce, mac)

    def open(self, data: bytes) -> bytes:
        """
        Check a datagram's seal and return its body.

        @raise DatagramError: C{unsealed} (no trailer, or truncated),
            C{forged} (the HMAC does not match), C{stale} (outside the time
            window) or C{replayed} (its nonce was seen already).
        """
        if len(data) < TRAILER.size + 1 or data[-TRAILER.size - 1 : -TRAILER.size] != SEAL_MARK:
            raise DatagramError(
                "unsealed", "the datagram carries no cluster-key seal (a node without the key, or truncated)"
            )
        body, trailer = data[: -TRAILER.size - 1], data[-TRAILER.size :]
        millis, nonce, mac = TRAILER.unpack(trailer)
        expected = hmac.new(self._key, body + struct.pack(">Q", millis) + nonce, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise DatagramError("forged", "the seal does not match the cluster key (a wrong key, or altered)")
        now = self._clock()
        sent = millis / 1000.0
        if abs(now - sent) > self._window:
            when = f"{now - sent:.1f}s ago" if sent <= now else f"{sent - now:.1f}s in the future"
            raise DatagramError(
                "stale", f"sealed {when}, outside the {self._window:g}s window (are the clocks in step?)"
            )
        self._forget_before(now - self._window)
        if nonce in self._seen:
            raise DatagramError("replayed", "its nonce was seen already")
        if len(self._seen) >= self._max_nonces:
            raise DatagramError("replayed", f"over {self._max_nonces} datagrams within {self._window:g}s; refused")
        self._seen[nonce] = sent
        return body

    def _forget_before(self, cutoff: float) -> None:
        # Nonces arrive roughly in time order; forget from the oldest end.
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if when >= cutoff:
                break
            del self._seen[oldest]


class ChallengeResponse:
    """
    The mutual proof that opens a connection, with the connection key.

    The dialler sends a random nonce; the acceptor answers with its own and
    a proof over both; the dialler checks it and sends its proof; the
    acceptor checks that.  Each proof is an HMAC-SHA256 with the side's
    role in it, so that one side's proof cannot be played back as the
    other's, and the nonces make every connection's proofs new.
    """

    def __init__(self, key: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._key = derive(key, "connection")
        self._random = random_bytes

    def nonce(self) -> bytes:
        """A fresh 32-byte nonce."""
        return self._random(32)

    def proof(self, role: str, dialler_nonce: bytes, acceptor_nonce: bytes, binding: bytes = b"") -> bytes:
        """
        The proof of C{role} (C{dialler} or C{acceptor}) for these nonces;
        C{binding} is the fingerprint of the acceptor's TLS certificate on a
        TLS connection (empty otherwise), so that a proof is only good on
        the connection it was made for.
        """
        message = role.encode("ascii") + dialler_nonce + acceptor_nonce + binding
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check(
        self, role: str, dialler_nonce: bytes, acceptor_nonce: bytes, proof: bytes | None, binding: bytes = b""
    ) -> bool:
        """Whether C{proof} is C{role}'s proof for these nonces and binding."""
        if not isinstance(proof, bytes):
            return False
        return hmac.compare_digest(proof, self.proof(role, dialler_nonce, acceptor_nonce, binding))


async def authenticate(
    protocol: amp.AMP, challenge: ChallengeResponse, binding: Callable[[], bytes] = lambda: b""
) -> None:
    """
    The dialler's half of the mutual challenge-response on an AMP
    connection (a node's, or the command-line client's): send a nonce, check
    the acceptor's proof, send ours.

    @param binding: once the answer is in, the fingerprint of the acceptor's
        TLS certificate (see L{tls_binding}); a man in the middle presents
        another, and the proofs do not match.
    @raise commands.AuthFailed: if the acceptor's proof is wrong, or it
        refuses ours.
    """
    nonce = challenge.nonce()
    answer = await protocol.callRemote(commands.Authenticate, nonce=nonce)
    theirs = answer["nonce"]
    bound = binding()
    if not challenge.check("acceptor", nonce, theirs, answer["proof"], bound):
        raise commands.AuthFailed("the other side does not hold this cluster's key (or a TLS man in the middle)")
    await protocol.callRemote(commands.AuthProof, proof=challenge.proof("dialler", nonce, theirs, bound))


def tls_binding(transport: Any) -> bytes:
    """As the dialler: the fingerprint of the certificate the acceptor presented (empty without TLS)."""
    if transport is None or not ISSLTransport.providedBy(transport):
        return b""
    from p2pexec.tls import peer_fingerprint

    return peer_fingerprint(transport)
