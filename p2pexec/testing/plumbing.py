"""
The plumbing of the in-memory network (L{p2pexec.testing.network}): the
listening ports, connectors and multicast transports L{FakeNetwork} hands
out, the pumps that move (and delay) its bytes, and the calls, delayed
calls and factories through which a L{FakeHost} crashes and freezes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IMulticastTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from zope.interface import implementer

if TYPE_CHECKING:
    from p2pexec.testing.network import FakeHost, FakeNetwork

__all__ = [
    "Connector",
    "HostCall",
    "HostDelayedCall",
    "MulticastPort",
    "OwnedFactory",
    "Port",
    "Pump",
    "Transport",
    "deliver",
    "planned",
]


class Port:
    """A listening TCP port."""

    def __init__(self, network: FakeNetwork, host: str, port: int, factory: Any) -> None:
        self._network = network
        self.host, self.port, self.factory = host, port, factory

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def stopListening(self) -> Deferred[None]:
        self._network._servers.pop((self.host, self.port), None)
        return succeed(None)


class Connector:
    """What L{FakeNetwork.connectTCP} returns."""

    def __init__(self, network: FakeNetwork, host: str, port: int, factory: Any) -> None:
        self._network = network
        self.host, self.port, self.factory = host, port, factory
        self.pending = True
        self.source = "127.0.0.1"
        self.deadline = 0.0

    def stopConnecting(self) -> None:
        if self.pending:
            self.pending = False
            self.factory.clientConnectionFailed(self, Failure(error.UserError()))

    def disconnect(self) -> None:
        self.stopConnecting()

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)


@implementer(IMulticastTransport)
class MulticastPort:
    """The transport of a protocol given to L{FakeNetwork.listenMulticast}."""

    def __init__(self, network: FakeNetwork, port: int, protocol: Any) -> None:
        self._network = network
        self.port = port
        self.protocol = protocol
        self.groups: set[str] = set()
        self.outgoing: str | None = None
        self.ttl = 1
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.host_address = "127.0.0.1"
        self.owner: FakeHost | None = None

    def setOutgoingInterface(self, address: str | int) -> Deferred[int]:
        """Send from C{address} (an IPv4 address, as the node gives it)."""
        self.outgoing = str(address)
        return succeed(1)

    def getOutgoingInterface(self) -> str:
        """The address datagrams are sent from."""
        return self.outgoing or ""

    def setTTL(self, ttl: int) -> None:
        """Note the time-to-live of datagrams sent (nothing routes them further here)."""
        self.ttl = ttl

    def getTTL(self) -> int:
        """The time-to-live of datagrams sent."""
        return self.ttl

    def setLoopbackMode(self, mode: bool) -> None:
        """Ignored: every listener on the group hears every datagram, as on one host in loopback mode."""

    def getLoopbackMode(self) -> bool:
        """Always on (see L{setLoopbackMode})."""
        return True

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Ignored: this network has no broadcast."""

    def getBroadcastAllowed(self) -> bool:
        """This network has no broadcast."""
        return False

    def connect(self, host: str, port: int) -> None:
        """Not supported: a multicast port is not connected."""
        raise NotImplementedError("FakeNetwork's multicast ports cannot be connected")

    def joinGroup(self, address: str, interface: str = "") -> Deferred[None]:
        """Hear the datagrams sent to group C{address} on this port."""
        self.groups.add(address)
        return succeed(None)

    def leaveGroup(self, address: str, interface: str = "") -> Deferred[None]:
        """Stop hearing group C{address}."""
        self.groups.discard(address)
        return succeed(None)

    def write(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        """Send C{data} to the group and port C{address}, to every listener that joined it."""
        if address is None:
            raise ValueError("a multicast datagram needs a destination: the port is not connected")
        self.sent.append((data, address))
        self._network._multicast(data, address, (self.outgoing or "127.0.0.1", self.port))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "0.0.0.0", self.port)

    def stopListening(self) -> Deferred[None]:
        if self in self._network._multicast_ports:
            self._network._multicast_ports.remove(self)
            self.protocol.doStop()
        return succeed(None)


class Transport(FakeTransport):
    """
    A L{FakeTransport} whose protocol hears of the connection's loss once
    at most, however the loss comes (its own close, the peer's, a reset
    after a cut, the peer's crash): a real transport calls
    C{connectionLost} once, and AMP fails if called twice.  Its
    C{disconnected} flag means exactly that its protocol was told.
    """

    def reportDisconnect(self) -> None:
        """Tell the protocol the connection closed cleanly, unless it was told already."""
        self.lose(None)

    def lose(self, reason: Failure | None) -> bool:
        """
        Tell the protocol its connection is lost, for C{reason} (a clean
        close for L{None}), unless it was told already.

        @return: whether it was told now.
        """
        if self.disconnected:
            return False
        self.disconnecting = self.disconnected = True
        if reason is None:
            super().reportDisconnect()
        else:
            self.protocol.connectionLost(reason)
        return True


class Pump(IOPump):
    """
    An L{IOPump} that knows the listening address its connection reached
    (see L{FakeNetwork.partition}) and the hosts it links (see
    L{FakeNetwork.cut}), and can hold bytes back (see L{FakeNetwork.set_delay}).
    Its ends are L{Transport}s.
    """

    server_address: tuple[str, int] = ("", 0)
    link: frozenset[str] = frozenset()
    clientIO: Transport
    serverIO: Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight: deque[tuple[float, Any, bytes]] = deque()

    def pump(self, debug: bool = False, advanceClock: bool = True, delay: float = 0.0) -> bool:
        """
        Move bytes; with a C{delay}, those written now arrive C{delay}
        seconds later, in order.  Once everything sent has arrived, a close
        goes through as iosim's does: first the closer's peer is told, then,
        on the next pump, the closer (each at most once: a side may have
        been told already, of its own close behind a cut link).
        """
        if advanceClock:
            self.clock.advance(0)
        now = self.clock.seconds()
        moved = False
        self.clientIO._checkProducer()
        self.serverIO._checkProducer()
        for source, destination in ((self.clientIO, self.serverIO), (self.serverIO, self.clientIO)):
            data = source.getOutBuffer()
            if data:
                due = max(now + delay, self.in_flight[-1][0] if self.in_flight else 0.0)
                self.in_flight.append((due, destination, data))
        while self.in_flight and self.in_flight[0][0] <= now:
            _, destination, data = self.in_flight.popleft()
            destination.bufferReceived(data)
            moved = True
        if self.in_flight or moved:
            return moved
        # Everything sent has arrived: a close may go through now.
        for closer, peer in ((self.serverIO, self.clientIO), (self.clientIO, self.serverIO)):
            if closer.disconnecting and not closer.disconnected:
                if not peer.disconnected:
                    peer.lose(None)
                else:
                    closer.lose(None)
                return True
        return False


class HostCall:
    """A call a L{FakeHost} scheduled: it does not run once the host has crashed."""

    def __init__(
        self, host: FakeHost, f: Callable[..., Any], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        self.host = host
        self.f = f
        self._args = args
        self._kwargs = kwargs

    def __call__(self) -> Any:
        if not self.host.crashed:
            return self.f(*self._args, **self._kwargs)
        return None


@implementer(IDelayedCall)
class HostDelayedCall:
    """
    What L{FakeHost.callLater} returns: a call that does not run once its
    host crashed, and that waits while its host is frozen (it stays active,
    and can be cancelled, until L{FakeHost.thaw} runs it).
    """

    def __init__(self, host: FakeHost, call: HostCall, delay: float) -> None:
        self.host = host
        self.call = call
        self.state = "pending"
        self._delayed = host.network.callLater(delay, self._due)

    def _due(self) -> None:
        if self.host.crashed:
            self.state = "called"
        elif self.host.frozen:
            self.state = "held"
            self.host._held.append(self)
        else:
            self.state = "called"
            self.call()

    def getTime(self) -> float:
        """When it is (or was) due."""
        return float(self._delayed.getTime())

    def cancel(self) -> None:
        """Do not run it."""
        if self.state == "held":
            if self in self.host._held:  # not once the host crashed
                self.host._held.remove(self)
            self.state = "cancelled"
            return
        self._delayed.cancel()
        self.state = "cancelled"

    def delay(self, secondsLater: float) -> None:
        """Run it C{secondsLater} seconds later than planned."""
        self._delayed.delay(secondsLater)

    def reset(self, secondsFromNow: float) -> None:
        """Run it C{secondsFromNow} seconds from now instead."""
        if self.state == "held":
            if self in self.host._held:
                self.host._held.remove(self)
            self.state = "pending"
            self._delayed = self.host.network.callLater(secondsFromNow, self._due)
            return
        self._delayed.reset(secondsFromNow)

    def active(self) -> bool:
        """Whether it has yet to run (or to be cancelled)."""
        return self.state == "held" or (self.state == "pending" and bool(self._delayed.active()))


class OwnedFactory:
    """Wraps a factory so that its host knows the protocols it builds."""

    def __init__(self, host: FakeHost, factory: Any) -> None:
        self._host = host
        self._factory = factory

    def buildProtocol(self, address: Any) -> Any:
        protocol = self._factory.buildProtocol(address)
        self._host._protocols.append(protocol)
        if protocol is not None:
            self._host.network.owners[protocol] = self._host
        return protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


def planned(call: DelayedCall) -> float:
    """When C{call} was last put in line to run (a later L{DelayedCall.reset} is seen when it is due)."""
    return float(call.time)


def deliver(listening: MulticastPort, data: bytes, source: tuple[str, int]) -> None:
    if listening.owner is not None and listening.owner.frozen:
        return  # a stopped process's socket buffer: assume it overflowed
    if listening in listening._network._multicast_ports:
        listening.protocol.datagramReceived(data, source)
