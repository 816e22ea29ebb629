"""
Multicast discovery: the DISCOVER/HELLO datagram protocol.

A node multicasts DISCOVER when it starts and then again with backoff (1 s,
2 s, 4 s ... up to C{discover_max_interval}) until it hears from another
node; it answers a DISCOVER from a node it had not heard from (a newcomer or
a restarted node) with a multicast HELLO after a short random delay (answers
are coalesced, so a burst of DISCOVERs costs one HELLO).  It also announces itself
with a HELLO every C{hello_interval} seconds.  Every datagram it accepts from
another node of its cluster is passed to C{on_peer}.

This module only speaks datagrams; what a peer I{means} is the peer table's
business (L{p2pexec.membership}).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IMulticastTransport, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from p2pexec import datagram
from p2pexec.auth import TRAILER, DatagramSealer
from p2pexec.auth import DatagramError as SealError
from p2pexec.log import NodeLogger, RateLimitedLog
from p2pexec.model import NodeInfo

log = NodeLogger()


ANSWER_SPREAD_PER_PEER = 0.002
"""Seconds of answer spread per node heard from (see L{DiscoveryProtocol._answer_spread})."""

MAX_TRACKED_PEERS = 10_000


SEAL_BYTES = TRAILER.size + 1
"""What a cluster-key seal adds to a datagram."""


class DiscoveryProtocol(DatagramProtocol):
    """
    Sends and receives discovery datagrams on one multicast group.

    @ivar sent: how many datagrams were sent, by type, for metrics.
    @ivar received: how many were accepted from other nodes.
    @ivar rejected: how many were dropped, by reason.
    """

    def __init__(
        self,
        local_info: Callable[[], NodeInfo],
        group: tuple[str, int],
        interface: str,
        clock: IReactorTime,
        on_peer: Callable[[NodeInfo], None],
        hello_interval: float = 10.0,
        discover_max_interval: float = 60.0,
        answer_delay: float = 0.25,
        random_fraction: Callable[[], float] = random.random,
        sealer: DatagramSealer | None = None,
    ) -> None:
        self._sealer = sealer
        self._local_info = local_info
        self._group = group
        self._interface = interface
        self._clock = clock
        self._on_peer = on_peer
        self._hello_interval = hello_interval
        self._discover_max_interval = discover_max_interval
        self._answer_delay = answer_delay
        self._random = random_fraction
        self._discover_delay = 1.0
        self._discover_call: IDelayedCall | None = None
        self._hello_call: IDelayedCall | None = None
        self._answer_call: IDelayedCall | None = None
        self._complaints = RateLimitedLog(log, clock)
        self.sent: dict[str, int] = {datagram.DISCOVER: 0, datagram.HELLO: 0}
        self.received = 0
        self._heard_from: set[str] = set()
        self._instances: set[tuple[str, str]] = set()
        self.joined: Deferred[bool] = Deferred()
        """Fires with True once the group is joined, or False if joining failed (logged)."""

    noisy = False

    @property
    def rejected(self) -> dict[str, int]:
        """Datagrams dropped, by reason."""
        return self._complaints.counts

    def startProtocol(self) -> None:
        """Join the group on our interface, then start discovering."""
        host, _ = self._group
        port = self._multicast_port()
        port.setOutgoingInterface(self._interface)
        port.setTTL(1)
        joined = port.joinGroup(host, self._interface).addCallbacks(lambda _: True, self._join_failed)
        joined.addCallback(self._report_joined)
        self._send(datagram.DISCOVER)
        me = self._local_info()
        log.info("Node {name} sent DISCOVER", name=me.name)
        self._discover_call = self._clock.callLater(self._discover_delay, self._rediscover)
        self._hello_call = self._clock.callLater(self._jittered(self._hello_interval), self._announce)

    def _multicast_port(self) -> IMulticastTransport:
        """The multicast port this protocol was given."""
        if self.transport is None:
            raise RuntimeError("the discovery protocol was started without a multicast port")
        return IMulticastTransport(self.transport)

    def _report_joined(self, ok: bool) -> None:
        """Fire L{joined} with C{ok}, once."""
        if not self.joined.called:
            self.joined.callback(ok)

    def _join_failed(self, failure: Failure) -> bool:
        log.error(
            "Could not join multicast group {group} on {interface}: {error}. "
            "Discovery will not hear other nodes; use --interface with an address "
            "of a multicast-capable interface.",
            group=self._group[0],
            interface=self._interface,
            error=failure.getErrorMessage(),
        )
        return False

    def stopProtocol(self) -> None:
        """Cancel every pending send."""
        for call in (self._discover_call, self._hello_call, self._answer_call):
            if call is not None and call.active():
                call.cancel()
        self._discover_call = self._hello_call = self._answer_call = None

    def _jittered(self, interval: float) -> float:
        return interval * (0.8 + 0.4 * self._random())

    def _rediscover(self) -> None:
        self._discover_call = None
        if self._heard_from:
            # Someone answered: periodic HELLOs keep everyone up to date from
            # here on, so DISCOVER (which every node answers) is not repeated.
            return
        self._send(datagram.DISCOVER)
        log.debug("Node {name} sent DISCOVER again", name=self._local_info().name)
        self._discover_delay = min(self._discover_delay * 2, self._discover_max_interval)
        self._discover_call = self._clock.callLater(self._jittered(self._discover_delay), self._rediscover)

    def _announce(self) -> None:
        self._send(datagram.HELLO)
        self._hello_call = self._clock.callLater(self._jittered(self._hello_interval), self._announce)

    def _answer_spread(self) -> float:
        """
        How long answers to a DISCOVER are spread over: a few milliseconds
        per node heard from, up to C{answer_delay}, so that a small cluster
        answers at once and a large one does not answer all at the same time.
        """
        return min(self._answer_delay, ANSWER_SPREAD_PER_PEER * len(self._heard_from))

    def _answer(self) -> None:
        self._answer_call = None
        self._send(datagram.HELLO)

    def _send(self, kind: str) -> None:
        if self.transport is None:
            return
        data = datagram.encode(datagram.Datagram(type=kind, node=self._local_info()))
        if self._sealer is not None:
            data = self._sealer.seal(data)
        try:
            self.transport.write(data, self._group)
        except OSError as e:
            self._complaints.warn(
                "send-failed",
                "%s:%d" % self._group,
                "Could not send {kind} to {group}: {error}",
                kind=kind,
                group="%s:%d" % self._group,
                error=e,
            )
            return
        self.sent[kind] += 1

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """Decode, filter and pass on one datagram; never raise."""
        source = "%s:%d" % (addr[0], addr[1])
        try:
            if self._sealer is not None:
                if len(data) > datagram.MAX_DATAGRAM_BYTES + SEAL_BYTES:
                    raise datagram.DatagramError("too-large", f"{len(data)} bytes is over the limit")
                data = self._sealer.open(data)
            received = datagram.decode(data)
        except (datagram.DatagramError, SealError) as e:
            self._complaints.warn(
                e.reason,
                source,
                "Dropped a datagram from {source}: {detail} [{reason}]",
                detail=e.detail,
            )
            return
        me = self._local_info()
        peer = received.node
        if peer.name == me.name and peer.instance == me.instance:
            return
        if peer.cluster != me.cluster:
            self._complaints.warn(
                "foreign-cluster",
                source,
                "Ignored {kind} from node {peer} of cluster {cluster!r} at {source}: "
                "this node is in cluster {mine!r} [{reason}]",
                kind=received.type,
                peer=peer.name,
                cluster=peer.cluster,
                mine=me.cluster,
            )
            return
        self.received += 1
        sender = (peer.name, peer.instance)
        new_sender = sender not in self._instances
        if new_sender and len(self._instances) < MAX_TRACKED_PEERS:
            self._instances.add(sender)
            self._heard_from.add(peer.name)
        # Answer only a node we had not heard from (a newcomer, or a restart):
        # the others know us already, and would hear our next HELLO anyway.
        if received.type == datagram.DISCOVER and new_sender and self._answer_call is None:
            self._answer_call = self._clock.callLater(self._answer_spread() * self._random(), self._answer)
        self._on_peer(peer)
