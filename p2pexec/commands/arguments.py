"""
The JSON argument types of the AMP commands.

Part of L{p2pexec.commands}, which re-exports every name.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from p2pexec.chunking import Chunk, encode_json
from p2pexec.model import loads_strict


class JSON(amp.Argument):
    """
    An AMP argument holding a JSON document (UTF-8, compact).

    Decoding errors surface as L{BadArguments<p2pexec.commands.errors.BadArguments>} through
    L{p2pexec.peer.PeerProtocol.locateResponder}.
    """

    def toString(self, inObject: Any) -> bytes:
        """Encode C{inObject} as compact UTF-8 JSON (a L{Chunk} is encoded already)."""
        if isinstance(inObject, Chunk):
            return inObject.encoded
        return encode_json(inObject)

    def fromString(self, inString: bytes) -> Any:
        """Decode UTF-8 JSON (a lone surrogate is refused, as malformed)."""
        return loads_strict(inString)


class RawJSON(JSON):
    """
    A JSON argument taken as its bytes, undecoded (REPLICATE's records: a
    replica stores them as received, and decodes them only when it needs
    them).  The wire is the same as L{JSON}'s.
    """

    def toString(self, inObject: Any) -> bytes:
        """Bytes as they are, else as L{JSON} encodes."""
        if isinstance(inObject, bytes):
            return inObject
        return super().toString(inObject)

    def fromString(self, inString: bytes) -> Any:
        """The bytes, undecoded."""
        return inString
