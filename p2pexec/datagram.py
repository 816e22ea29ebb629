"""
The discovery datagram format: encoding and decoding only, no I/O.

A datagram is one UTF-8 JSON object::

    {"proto": "p2pexec", "v": 1, "type": "HELLO", "node": {...NodeInfo...}}

See C{docs/protocol.rst} for every field.
"""

from __future__ import annotations

import json
from typing import Any

import attr

from p2pexec.model import PROTOCOL_VERSION, NodeInfo, ValidationError, loads_strict

MAGIC = "p2pexec"
"""The value of the C{proto} field, which marks a datagram as ours."""

DISCOVER = "DISCOVER"
HELLO = "HELLO"
DATAGRAM_TYPES = (DISCOVER, HELLO)

MAX_DATAGRAM_BYTES = 1200
"""Neither sent nor accepted above this size; well under a 1,500-byte MTU."""


class DatagramError(ValueError):
    """
    A datagram was refused.

    @ivar reason: a short fixed token for metrics and rate-limited logs:
        C{too-large}, C{not-json}, C{not-p2pexec}, C{version}, C{bad-type}
        or C{bad-field}.
    @ivar detail: a sentence saying what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Datagram:
    """
    A decoded discovery datagram.

    @ivar type: L{DISCOVER} or L{HELLO}.
    @ivar node: the sender's description of itself.
    """

    type: str
    node: NodeInfo


def encode(datagram: Datagram) -> bytes:
    """
    Encode a datagram.

    @raise DatagramError: C{too-large} if it would exceed
        L{MAX_DATAGRAM_BYTES}; the node checks its own HELLO at start-up.
    """
    body = json.dumps(
        {
            "proto": MAGIC,
            "v": PROTOCOL_VERSION,
            "type": datagram.type,
            "node": datagram.node.to_wire(),
        },
        separators=(",", ":"),
    ).encode("utf-8")
    if len(body) > MAX_DATAGRAM_BYTES:
        raise DatagramError(
            "too-large",
            f"a {datagram.type} for {datagram.node.name!r} would be {len(body)} bytes, "
            f"over the {MAX_DATAGRAM_BYTES}-byte limit (too many or too long capabilities?)",
        )
    return body


def decode(data: bytes) -> Datagram:
    """
    Decode and validate a datagram.

    @raise DatagramError: with the reason and a sentence naming what is wrong.
    """
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DatagramError("too-large", f"{len(data)} bytes is over the {MAX_DATAGRAM_BYTES}-byte limit")
    try:
        body: Any = loads_strict(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DatagramError("not-json", "the datagram is not a UTF-8 JSON object") from None
    if not isinstance(body, dict) or body.get("proto") != MAGIC:
        raise DatagramError("not-p2pexec", "the datagram has no 'proto': 'p2pexec' marker")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DatagramError(
            "version",
            f"protocol version {version!r} is not supported (this node speaks version {PROTOCOL_VERSION})",
        )
    kind = body.get("type")
    if kind not in DATAGRAM_TYPES:
        raise DatagramError("bad-type", f"unknown datagram type {kind!r}")
    try:
        node = NodeInfo.from_wire(body.get("node"))
    except ValidationError as e:
        raise DatagramError("bad-field", str(e)) from None
    if node.version != PROTOCOL_VERSION:
        raise DatagramError("version", f"node {node.name!r} speaks protocol version {node.version}")
    return Datagram(type=kind, node=node)
