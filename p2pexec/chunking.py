"""
Splitting lists so that each fits in one AMP value (65,535 bytes), and
encoding the JSON arguments of the wire protocol (see L{p2pexec.commands},
which exports these names too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

MAX_VALUE_BYTES = 60_000
"""A list is chunked so that each JSON value stays under this size."""


T = TypeVar("T")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""One encoder for every value (C{json.dumps} with these options builds a new one per call)."""


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as every JSON argument is encoded."""
    return _ENCODER.encode(value).encode("utf-8")


class Chunk(list[Any]):
    """
    A list of items whose JSON array is already encoded; L{JSON} sends the
    encoding as it is, so that every item is encoded exactly once.

    @ivar items: the original items, in order.
    @ivar encoded: the JSON array, as bytes.
    """

    def __init__(self, items: list[Any], encoded_items: list[bytes]) -> None:
        super().__init__(items)
        self.items = items
        self.encoded = b"[" + b",".join(encoded_items) + b"]"


def chunk(
    items: Iterable[T],
    to_wire: Callable[[T], Any],
    limit: int = MAX_VALUE_BYTES,
    encode: Callable[[T], bytes] | None = None,
) -> Iterator[Chunk]:
    """
    Split C{items} into L{Chunk}s whose JSON array stays under C{limit}
    bytes.  Each chunk iterates as the original C{items} it holds.

    @param to_wire: an item's JSON-able form.
    @param encode: an item's encoding, when it is not C{encode_json(to_wire(item))}.
    @raise ValueError: if a single item alone is over the limit.
    """
    batch: list[T] = []
    encoded_batch: list[bytes] = []
    size = 2
    for item in items:
        encoded = encode(item) if encode is not None else encode_json(to_wire(item))
        item_size = len(encoded) + 1
        if item_size + 2 > limit:
            raise ValueError(f"one item is {item_size} bytes, over the {limit}-byte limit")
        if batch and size + item_size > limit:
            yield Chunk(batch, encoded_batch)
            batch, encoded_batch, size = [], [], 2
        batch.append(item)
        encoded_batch.append(encoded)
        size += item_size
    if batch:
        yield Chunk(batch, encoded_batch)


def encode_result_within(result: Any, limit: int = MAX_VALUE_BYTES - 256) -> bytes:
    """
    The JSON encoding of a L{p2pexec.model.TaskResult}, with its output tails
    shortened (keeping their ends) until it fits in C{limit} bytes.
    """
    wire = result.to_wire()
    encoded = encode_json(wire)
    while len(encoded) > limit:
        shortened = False
        for stream in ("stdout", "stderr"):
            text = wire.get(stream, "")
            if len(text) > 64:
                wire[stream] = text[len(text) // 2 :]
                shortened = True
        if not shortened:
            wire.pop("stdout", None)
            wire.pop("stderr", None)
            if wire.get("error") and len(wire["error"]) > 1024:
                wire["error"] = wire["error"][:1024]
            return encode_json(wire)
        encoded = encode_json(wire)
    return encoded
