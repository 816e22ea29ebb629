"""
The peer table: who this node knows of, and which of them it is connected to.

Pure bookkeeping, no I/O.  Observations come in (a datagram, a peer-exchange
entry, a completed handshake, a lost connection) and the table answers with
what changed, so that the caller can log it and act on it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Any

import attr

from p2pexec.model import NodeInfo

MAX_PEERS = 10_000
"""The most peers a table holds; others are not recorded until some expire."""


class PeerState(enum.Enum):
    """Where a peer stands from this node's point of view."""

    KNOWN = "known"
    """Heard of, not connected."""
    CONNECTED = "connected"
    """Handshake done; tasks can flow."""
    LEFT = "left"
    """Said goodbye with DISCONNECT_REQUEST."""


class Change(enum.Enum):
    """What an observation did to the table."""

    NOTHING = "nothing"
    NEW = "new"
    """A node never seen before."""
    RESTARTED = "restarted"
    """A known name with a new instance id: the old process is gone."""
    UPDATED = "updated"
    """Same instance, a changed description."""
    CONFLICT = "conflict"
    """Another instance claims a name whose current instance is connected."""


@attr.s(auto_attribs=True)
class PeerRecord:
    """
    One row of the peer table.

    @ivar info: the latest description.
    @ivar state: see L{PeerState}.
    @ivar last_heard: when it was last heard of, by the table's clock.
    @ivar connection: the live connection (opaque to this module), if any.
    """

    info: NodeInfo
    state: PeerState
    last_heard: float
    connection: Any | None = None


class PeerTable:
    """
    The peers of one node, keyed by name.
    """

    def __init__(self, me: str) -> None:
        self._me = me
        self._peers: dict[str, PeerRecord] = {}

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, name: str) -> PeerRecord | None:
        """The record for C{name}, if known."""
        return self._peers.get(name)

    def observe(self, info: NodeInfo, heard_at: float) -> Change:
        """
        Record evidence that C{info} was alive at C{heard_at}: now, for a
        datagram from it; earlier, for a peer exchange entry of some age.

        Older evidence never overrides newer: a peer's last-heard time only
        moves forward, and a different instance replaces the known one only
        if it was heard of more recently (and the known one is not connected).
        """
        if info.name == self._me:
            return Change.NOTHING
        record = self._peers.get(info.name)
        if record is None:
            if len(self._peers) >= MAX_PEERS:
                return Change.NOTHING
            self._peers[info.name] = PeerRecord(info=info, state=PeerState.KNOWN, last_heard=heard_at)
            return Change.NEW
        if record.info.instance != info.instance:
            if record.state is PeerState.CONNECTED:
                return Change.CONFLICT
            if heard_at <= record.last_heard:
                return Change.NOTHING
            self._peers[info.name] = PeerRecord(info=info, state=PeerState.KNOWN, last_heard=heard_at)
            return Change.RESTARTED
        record.last_heard = max(record.last_heard, heard_at)
        if record.state is PeerState.LEFT:
            return Change.NOTHING
        if record.info != info:
            record.info = info
            return Change.UPDATED
        return Change.NOTHING

    def connected(self, info: NodeInfo, connection: Any, now: float) -> Change:
        """
        Record a completed handshake with C{info} over C{connection}.
        """
        record = self._peers.get(info.name)
        change = (
            Change.NEW
            if record is None
            else (Change.RESTARTED if record.info.instance != info.instance else Change.NOTHING)
        )
        self._peers[info.name] = PeerRecord(info=info, state=PeerState.CONNECTED, last_heard=now, connection=connection)
        return change

    def is_connected(self, name: str, instance: str | None = None) -> bool:
        """Whether C{name} (with that instance, if given) has a live connection."""
        record = self._peers.get(name)
        if record is None or record.state is not PeerState.CONNECTED:
            return False
        return instance is None or record.info.instance == instance

    def disconnected(self, name: str, connection: Any, now: float) -> bool:
        """
        Record that C{connection} to C{name} closed.

        @return: whether it was the peer's current connection.
        """
        record = self._peers.get(name)
        if record is None or record.connection is not connection:
            return False
        record.connection = None
        if record.state is PeerState.CONNECTED:
            record.state = PeerState.KNOWN
        record.last_heard = now
        return True

    def left(self, name: str) -> None:
        """Record that C{name} said goodbye."""
        record = self._peers.get(name)
        if record is not None:
            record.state = PeerState.LEFT

    def forget(self, name: str) -> None:
        """Drop C{name} from the table."""
        self._peers.pop(name, None)

    def expired(self, now: float, after: float) -> list[str]:
        """Names of unconnected peers not heard of in the last C{after} seconds."""
        return [
            name
            for name, record in self._peers.items()
            if record.connection is None and now - record.last_heard > after
        ]

    def connected_at(self, host: str, port: int) -> bool:
        """Whether a connected peer says it listens at C{host:port}."""
        return any(
            r.state is PeerState.CONNECTED and r.info.host == host and r.info.port == port for r in self._peers.values()
        )

    def connected_peers(self) -> list[PeerRecord]:
        """The peers with a live connection."""
        return [r for r in self._peers.values() if r.state is PeerState.CONNECTED]

    def shareable(
        self, now: float, max_age: float, last_received: Callable[[Any], float] = lambda connection: float("inf")
    ) -> list[tuple[NodeInfo, float]]:
        """
        Every peer still around, with the age of the latest evidence of it,
        for PEER_EXCHANGE.  For a connected peer that is the time since its
        connection last delivered bytes (C{last_received}).  Peers that left,
        or not heard of for C{max_age} seconds, are not passed on: a dead
        node's age only grows, so it is never gossiped back to life.
        """
        shared = []
        for record in self._peers.values():
            if record.state is PeerState.LEFT:
                continue
            heard = record.last_heard
            if record.state is PeerState.CONNECTED:
                heard = min(now, last_received(record.connection))
            age = max(0.0, now - heard)
            if age <= max_age:
                shared.append((record.info, age))
        return shared
