"""
Wider reads and sends for the connections that carry files (issue 16):
Twisted reads at most 64 KiB and sends at most 128 KiB per reactor turn;
files travel in AMP boxes of up to 960,000 bytes, and fewer, larger reads
and sends leave the reactor thread more time for the boxes themselves.
The node widens its connections (L{p2pexec.peer.PeerProtocol}), and so does
the client (L{p2pexec.client.connection.NodeClient}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

IO_BYTES = 1024 * 1024
"""The most bytes a widened connection reads, and sends, per reactor turn."""


def widen(transport: Any) -> None:
    """
    Let C{transport}'s TCP connection read and send up to L{IO_BYTES} bytes
    per reactor turn (instance attributes: other connections keep Twisted's
    defaults).  Through TLS (Twisted's TLS wrapper) the TCP connection under
    it is widened; any other transport (a test's, a UNIX socket) is left as
    it is.
    """
    for _ in range(3):
        if isinstance(transport, tcp.Connection):
            transport.bufferSize = IO_BYTES
            transport.SEND_LIMIT = IO_BYTES
            return
        transport = getattr(transport, "transport", None)
