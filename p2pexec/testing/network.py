"""
An in-memory network for deterministic tests of whole nodes.

L{FakeNetwork} is a reactor stand-in: a L{Clock} that also implements the
parts of C{IReactorTCP} and C{IReactorMulticast} a node uses.  TCP
connections are pairs of L{twisted.test.iosim.FakeTransport}s moved by
L{IOPump}s; multicast datagrams are delivered to every protocol that joined
the group on that port, the sender included (like loopback mode).  Nothing
touches a real socket, and time only moves when the test says so.

Typical use::

    network = FakeNetwork()
    nodes = [create_node(config, network, FakeRunner(network)) for config in ...]
    for node in nodes:
        node.start()
    network.run(5.0)          # 5 simulated seconds, pumping all the while

Faults for simulations (see L{p2pexec.testing.simulation}): a host can
L{crash <FakeHost.crash>} or be L{frozen <FakeHost.freeze>} (as by
SIGSTOP); the link between two hosts can be L{cut <FakeNetwork.cut>} and
L{mended <FakeNetwork.mend>}, or made slow (L{FakeNetwork.set_delay}).
"""

from __future__ import annotations

import itertools
from bisect import insort
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pexec.testing.plumbing import (
    Connector,
    HostCall,
    HostDelayedCall,
    MulticastPort,
    OwnedFactory,
    Port,
    Pump,
    Transport,
    deliver,
    planned,
)


class FakeNetwork(Clock):
    """
    A clock plus in-memory TCP and multicast, shared by every node of a test.

    @ivar pumps: the live connections.
    @ivar datagrams: every multicast datagram sent, as (data, group, source).
    @ivar partitioned: hosts whose traffic is dropped (see L{partition}).
    """

    def __init__(self) -> None:
        super().__init__()
        self._servers: dict[tuple[str, int], Port] = {}
        self._multicast_ports: list[MulticastPort] = []
        self._free_ports = itertools.count(40000)
        self.pumps: list[Pump] = []
        self.datagrams: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.partitioned: set[tuple[str, int]] = set()
        self.blocked_multicast: set[tuple[str, str]] = set()
        self.cuts: set[frozenset[str]] = set()
        self.delays: dict[frozenset[str], float] = {}
        self.owners: dict[Any, FakeHost] = {}
        """The host of each protocol built through a L{FakeHost}."""

    # -- IReactorTime: kept in order as calls are added, not sorted again and again

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        """
        See L{twisted.internet.interfaces.IReactorTime.callLater}: as
        L{Clock}'s (calls due at one moment run in the order they were
        made), but inserted in place rather than sorting every call again.
        """
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self.calls.remove, self._moved, self.seconds)
        insort(self.calls, call, key=planned)
        return call

    def _moved(self, call: DelayedCall) -> None:
        """C{call} was moved earlier (L{DelayedCall.reset}): put it in its place."""
        self.calls.remove(call)
        insort(self.calls, call, key=planned)

    def _sortCalls(self) -> None:
        """Nothing to do: L{callLater} keeps the calls in order."""

    def advance(self, amount: float) -> None:
        """
        Move time forward by C{amount} and run the calls due, as L{Clock}
        does; a call moved later meanwhile goes back in line (as a reactor
        does it).
        """
        self.rightNow += amount
        calls = self.calls
        while calls and calls[0].time <= self.rightNow:
            call = calls.pop(0)
            if call.delayed_time:
                call.activate_delay()
                insort(calls, call, key=planned)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)

    # -- IReactorTCP ----------------------------------------------------------

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Port:
        """Listen on C{port} (a fresh one for 0) of C{interface} (127.0.0.1 by default); raise if it is taken."""
        host = interface or "127.0.0.1"
        if port == 0:
            port = next(self._free_ports)
        if (host, port) in self._servers:
            raise error.CannotListenError(host, port, OSError(98, "Address already in use"))
        listening = Port(self, host, port, factory)
        self._servers[(host, port)] = listening
        factory.doStart()
        return listening

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Connector:
        """Start a connection to C{host:port}; it completes, or fails as refused, on the next turn of the clock."""
        connector = Connector(self, host, port, factory)
        connector.source = bindAddress[0] if bindAddress else "127.0.0.1"
        connector.deadline = self.seconds() + timeout
        factory.startedConnecting(connector)
        self.callLater(0, self._complete, connector)
        return connector

    def _complete(self, connector: Connector) -> None:
        if not connector.pending:
            return
        client = connector.factory._host if isinstance(connector.factory, OwnedFactory) else None
        if client is not None and client.crashed:
            # The process that asked for this connection is gone, and its
            # SYNs with it: nothing completes, nobody is told.
            connector.pending = False
            return
        server = self._servers.get((connector.host, connector.port))
        owner = server.factory._host if server is not None and isinstance(server.factory, OwnedFactory) else None
        unreachable = frozenset((connector.source, connector.host)) in self.cuts
        if server is not None and (unreachable or (owner is not None and owner.frozen)):
            # The SYN is lost (a cut link), or nobody accepts yet (a frozen
            # host): try again until the connection attempt times out.
            if self.seconds() < connector.deadline:
                self.callLater(min(0.5, connector.deadline - self.seconds()), self._complete, connector)
                return
            connector.pending = False
            connector.factory.clientConnectionFailed(connector, Failure(error.TCPTimedOutError()))
            return
        connector.pending = False
        if server is None or (connector.host, connector.port) in self.partitioned:
            connector.factory.clientConnectionFailed(
                connector, Failure(error.ConnectionRefusedError("no one listens there"))
            )
            return
        client_address = IPv4Address("TCP", connector.source, next(self._free_ports))
        server_address = IPv4Address("TCP", connector.host, connector.port)
        server_protocol = server.factory.buildProtocol(client_address)
        client_protocol = connector.factory.buildProtocol(server_address)
        server_transport = Transport(server_protocol, True, server_address, client_address)
        client_transport = Transport(client_protocol, False, client_address, server_address)
        # iosim's FakeTransport shares one ConnectionDone instance among all
        # transports (a class attribute).  Each time a Failure of it is
        # raised again (as AMP does to fail outstanding calls), Python chains
        # the new traceback onto the instance's old one, so that shared
        # exception ends up holding every frame it was ever raised through,
        # and with them every simulated cluster that ever lost a
        # connection.  One instance per transport ends with the transport.
        server_transport.disconnectReason = error.ConnectionDone("Connection done")
        client_transport.disconnectReason = error.ConnectionDone("Connection done")
        server_protocol.makeConnection(server_transport)
        client_protocol.makeConnection(client_transport)
        pump = Pump(client_protocol, server_protocol, client_transport, server_transport, False, clock=self)
        pump.server_address = (connector.host, connector.port)
        pump.link = frozenset((connector.source, connector.host))
        self.pumps.append(pump)

    def server_factory(self, host: str, port: int) -> Any:
        """
        The factory listening on C{host:port}, to build a server protocol as
        an incoming connection would (over a transport of the test's own).

        @raise KeyError: if nothing listens there.
        """
        return self._servers[(host, port)].factory

    # -- IReactorMulticast ---------------------------------------------------

    def listenMulticast(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192, listenMultiple: bool = False
    ) -> MulticastPort:
        """Give C{protocol} a multicast port on C{port}; it hears the groups it joins."""
        listening = MulticastPort(self, port, protocol)
        self._multicast_ports.append(listening)
        protocol.makeConnection(listening)
        return listening

    def _multicast(self, data: bytes, group: tuple[str, int], source: tuple[str, int]) -> None:
        self.datagrams.append((data, group, source))
        for listening in list(self._multicast_ports):
            if (source[0], listening.host_address) in self.blocked_multicast:
                continue
            if frozenset((source[0], listening.host_address)) in self.cuts:
                continue
            if listening.port == group[1] and group[0] in listening.groups:
                self.callLater(0, deliver, listening, data, source)

    def inject_datagram(self, data: bytes, group: tuple[str, int], source: tuple[str, int] = ("127.0.0.1", 9)) -> None:
        """Multicast C{data} to C{group} as if a stranger had sent it."""
        self._multicast(data, group, source)

    # -- driving --------------------------------------------------------------

    def pump_once(self) -> bool:
        """Move all pending bytes once; return whether anything moved."""
        moved = False
        for pump in list(self.pumps):
            if self.owners and self._frozen(pump):
                # A stopped process reads and writes nothing; its peers'
                # bytes wait in the buffers.
                continue
            if pump.server_address in self.partitioned or pump.link in self.cuts:
                # Nothing crosses a cut link; each side only learns of its
                # own decision to close.
                for transport in (pump.clientIO, pump.serverIO):
                    if transport.disconnecting and transport.lose(None):
                        moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
                continue
            survivor = pump.serverIO if pump.clientIO.disconnected else pump.clientIO
            if pump.clientIO.disconnected != pump.serverIO.disconnected and not survivor.disconnecting:
                # One side closed while the link was cut: the other side's
                # next contact with it is answered by a reset.
                survivor.lose(Failure(error.ConnectionLost("connection reset by peer")))
                self.pumps.remove(pump)
                moved = True
                continue
            if pump.pump(advanceClock=False, delay=self.delays.get(pump.link, 0.0)):
                moved = True
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self.pumps.remove(pump)
        return moved

    def _frozen(self, pump: Pump) -> bool:
        for protocol in (pump.clientIO.protocol, pump.serverIO.protocol):
            host = self.owners.get(protocol)
            if host is not None and host.frozen:
                return True
        return False

    def next_event(self) -> float | None:
        """
        When something is next due: a call, or bytes held back by a link's
        delay (L{set_delay}) that are not yet due.
        """
        now = self.seconds()
        times = [self.calls[0].getTime()] if self.calls else []
        # Bytes due by now and still held wait behind a cut link or a frozen host.
        times.extend(pump.in_flight[0][0] for pump in self.pumps if pump.in_flight and pump.in_flight[0][0] > now)
        return min(times) if times else None

    def run_events(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        """
        Let C{seconds} of simulated time pass, jumping from one due event to
        the next (much faster than L{run}'s fixed steps when little happens).

        @param stop: checked after each event; once it is true, return at once.
        @return: whether C{stop} became true.
        """
        end = self.seconds() + seconds
        self.flush()
        while True:
            if stop is not None and stop():
                return True
            due = self.next_event()
            if due is None or due > end:
                if self.seconds() < end:
                    self.advance(end - self.seconds())
                self.flush()
                return stop is not None and stop()
            self.advance(max(0.0, due - self.seconds()))
            self.flush()

    def cut(self, a: str, b: str) -> None:
        """
        Cut the link between hosts C{a} and C{b} (addresses): no bytes or
        datagrams cross it, no connection is made over it (an attempt waits
        for its timeout), and neither side is told.
        """
        self.cuts.add(frozenset((a, b)))

    def mend(self, a: str, b: str) -> None:
        """Mend the link between C{a} and C{b}; what was buffered flows again."""
        self.cuts.discard(frozenset((a, b)))

    def set_delay(self, a: str, b: str, seconds: float) -> None:
        """Deliver the bytes between hosts C{a} and C{b} C{seconds} after they are written (0: at once)."""
        if seconds > 0:
            self.delays[frozenset((a, b))] = seconds
        else:
            self.delays.pop(frozenset((a, b)), None)

    def flush(self) -> None:
        """Run due calls and move bytes until nothing more happens now."""
        for _ in range(10_000):
            self.advance(0)
            if not self.pump_once() and not (self.calls and self.calls[0].time <= self.seconds()):
                return
        raise AssertionError("the network did not settle")

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Let C{seconds} of simulated time pass, in steps, flushing at each."""
        end = self.seconds() + seconds
        self.flush()
        while self.seconds() < end:
            self.advance(min(step, end - self.seconds()))
            self.flush()

    def run_until(self, condition: Any, limit: float = 60.0, step: float = 0.05) -> float:
        """
        Run until C{condition()} is true.

        @return: the simulated seconds it took.
        @raise AssertionError: if C{limit} simulated seconds pass first.
        """
        start = self.seconds()
        self.flush()
        while not condition():
            if self.seconds() - start > limit:
                raise AssertionError(f"condition not met within {limit} simulated seconds")
            self.advance(step)
            self.flush()
        return self.seconds() - start

    def alias(self, address: str, port: int, to: tuple[str, int]) -> None:
        """Make connections to C{address:port} reach what listens at C{to} (as a NAT or a service address does)."""
        self._servers[(address, port)] = self._servers[to]

    def host(self, address: str = "127.0.0.1") -> FakeHost:
        """A reactor for one node on this network (see L{FakeHost})."""
        return FakeHost(self, address)

    def block_multicast(self, source: str, destination: str) -> None:
        """Drop multicast datagrams sent from host C{source} to host C{destination}."""
        self.blocked_multicast.add((source, destination))

    def partition(self, host: str, port: int) -> None:
        """
        Cut the cable of the server at C{host:port}: no bytes cross its
        connections and no connection to it completes, and nobody is told.
        """
        self.partitioned.add((host, port))

    def heal(self, host: str, port: int) -> None:
        """Plug the cable back in; what was buffered flows again."""
        self.partitioned.discard((host, port))


@implementer(IReactorTime)
class FakeHost:
    """
    One machine's view of a L{FakeNetwork}: a reactor for one node.

    Time is the network's; everything the node schedules or opens is
    remembered, so that L{crash} can make the node vanish at once, as SIGKILL
    would: its connections drop (the peers see them lost), its datagrams
    stop, and none of its timers fire again.
    """

    def __init__(self, network: FakeNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self.crashed = False
        self.frozen = False
        self._held: list[HostDelayedCall] = []
        self._ports: list[Any] = []
        self._protocols: list[Any] = []

    def seconds(self) -> float:
        """The network's simulated time."""
        return self.network.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object) -> IDelayedCall:
        """
        Schedule C{callable} on the network's clock; it does not run if this
        host has crashed by then, and waits for L{thaw} if it is frozen.
        """
        return HostDelayedCall(self, HostCall(self, callable, args, kwargs), delay)

    def scheduled(self) -> list[Callable[..., Any]]:
        """
        What this host has scheduled and not run yet: the functions given to
        L{callLater}, in the order they are due (a running
        L{twisted.internet.task.LoopingCall} is one of them).
        """
        mine = []
        for call in self.network.getDelayedCalls():
            owner = getattr(call.func, "__self__", None) if isinstance(call, DelayedCall) else None
            if isinstance(owner, HostDelayedCall) and owner.host is self:
                mine.append(owner.call.f)
        return mine

    def getDelayedCalls(self) -> Any:
        """The pending calls of the whole network, not only this host's."""
        return self.network.getDelayedCalls()

    def callWhenRunning(self, f: Any, *args: Any, **kwargs: Any) -> None:
        """Call C{f} on the next turn of the clock, unless this host has crashed by then."""
        self.callLater(0, f, *args, **kwargs)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """Listen on this host's address (or C{interface}), noting the port and the protocols built, for L{crash}."""
        listening = self.network.listenTCP(port, OwnedFactory(self, factory), backlog, interface or self.address)
        self._ports.append(listening)
        return listening

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Any:
        """Connect to C{host:port}, noting the protocol built, for L{crash}; once crashed, never connect."""
        if self.crashed:
            return Connector(self.network, host, port, factory)
        return self.network.connectTCP(
            host, port, OwnedFactory(self, factory), timeout, bindAddress or (self.address, 0)
        )

    def listenMulticast(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192, listenMultiple: bool = False
    ) -> Any:
        """Listen for multicast as this host (see L{FakeNetwork.block_multicast}), noting the port, for L{crash}."""
        listening = self.network.listenMulticast(port, protocol, interface, maxPacketSize, listenMultiple)
        listening.host_address = self.address
        listening.owner = self
        self._ports.append(listening)
        return listening

    def freeze(self) -> None:
        """
        Stop, as SIGSTOP stops a process: none of its calls run and none of
        its connections move until L{thaw}; its connections stay open, so
        its peers see only silence.
        """
        self.frozen = True

    def thaw(self) -> None:
        """Go on, as SIGCONT: the calls that came due meanwhile run first, in order, then the bytes flow."""
        self.frozen = False
        while self._held and not self.frozen and not self.crashed:
            call = self._held.pop(0)
            call.state = "called"
            call.call()

    def crash(self) -> None:
        """Vanish without a word, as a SIGKILLed process does."""
        self.crashed = True
        self.frozen = False
        self._held = []
        for listening in self._ports:
            if isinstance(listening, MulticastPort):
                if listening in self.network._multicast_ports:
                    self.network._multicast_ports.remove(listening)
            else:
                self.network._servers.pop((listening.host, listening.port), None)
        for pump in list(self.network.pumps):
            mine_client = pump.clientIO.protocol in self._protocols
            mine_server = pump.serverIO.protocol in self._protocols
            if not (mine_client or mine_server):
                continue
            self.network.pumps.remove(pump)
            gone, survivor = (pump.clientIO, pump.serverIO) if mine_client else (pump.serverIO, pump.clientIO)
            gone.disconnecting = gone.disconnected = True  # a dead process hears nothing
            # Told at most once: it may have learned of the loss already.
            survivor.lose(Failure(error.ConnectionLost("the peer vanished")))
