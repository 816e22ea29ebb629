"""
Membership: how a node learns of its peers, forgets them, and judges its
connections alive.

L{Gossip} turns what discovery datagrams and PEER_EXCHANGE say into peer
table entries (and dials those this node should dial), forgets peers not
heard of within the expiry time, and exchanges its peer list with a random
connected peer now and then.  L{LivenessChecks} judges every connection with
the two failure detectors of L{p2pexec.heartbeat}.  L{Every} runs one of
their periodic calls as a child service of the node's service tree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from p2pexec import commands
from p2pexec.connection_states import Compatibility, compatibility
from p2pexec.connections import dials
from p2pexec.heartbeat import FailureDetector, Liveness, Watchman
from p2pexec.log import NodeLogger, RateLimitedLog
from p2pexec.membership import Change, PeerState
from p2pexec.model import PROTOCOL_VERSION, NodeInfo, ValidationError
from p2pexec.peer import parse_peer_list, peer_entry
from p2pexec.peer_names import is_address

if TYPE_CHECKING:
    from p2pexec.config import NodeConfig
    from p2pexec.connections import Dialer
    from p2pexec.interfaces import INode
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.outbox import Outbox
    from p2pexec.peer import PeerProtocol
    from p2pexec.worker import Worker

log = NodeLogger()

IDLE_HEARTBEAT_INTERVAL = 10.0
"""Seconds of quiet after which an idle connection gets a HEARTBEAT."""

IDLE_HEARTBEAT_TIMEOUT = 30.0
"""Seconds of silence after which an idle connection is closed as dead."""


class Every(Service):
    """
    Call C{call} every C{interval} seconds of C{clock} while the service
    runs (the first call one interval after it starts).  A call that fails
    is logged, and the calls stop.
    """

    def __init__(self, name: str, interval: float, call: Callable[[], None], clock: IReactorTime) -> None:
        self.name = name
        self.interval = interval
        self._loop = LoopingCall(call)
        self._loop.clock = clock

    def startService(self) -> None:
        """Start calling (once it has started, starting again does nothing)."""
        if self._loop.running:
            return
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(lambda f: log.failure("Periodic task failed", f))

    def stopService(self) -> None:
        """Stop calling (stopping a stopped one does nothing)."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    @property
    def calling(self) -> bool:
        """Whether the calls go on (a failed call stops them)."""
        return bool(self._loop.running)


class Gossip:
    """What this node knows of the other nodes of its cluster, and tells them."""

    def __init__(
        self,
        config: NodeConfig,
        clock: IReactorTime,
        choose: Callable[[list[Any]], Any] = random.choice,
        shuffle: Callable[[list[Any]], None] = random.shuffle,
    ):
        """
        @param choose: picks the peer to exchange peer lists with.
        @param shuffle: shuffles the peer list shared (in place).
        """
        self._config = config
        self._clock = clock
        self._choose = choose
        self._shuffle = shuffle
        self._complaints = RateLimitedLog(log, clock)

    def wire(self, node: INode, peers: PeerTable, dialer: Dialer) -> None:
        """Connect gossip to its node, its peer table and the dialer that opens connections."""
        self._node = node
        self._peers = peers
        self._dialer = dialer

    def me(self) -> NodeInfo:
        """How this node describes itself (what discovery announces)."""
        return self._node.info

    def dial_seeds(self) -> None:
        """
        Dial the seeds given by address (C{--peer}) until connected, except
        this node itself; warn if nothing finds peers.  Seeds given by name
        are resolved and dialled by L{p2pexec.peer_names.PeerNames}.
        """
        me, config = self._node.info, self._config
        for host, port in config.seeds:
            if not is_address(host) or (host, port) == (me.host, me.port):
                continue
            log.info("Node {name} will dial seed {address}", name=me.name, address=f"{host}:{port}")
            self._dialer.ensure_seed(
                host, port, is_connected=self._peers.is_connected, connected_at=self._peers.connected_at
            )
        if not config.multicast and not config.seeds:
            log.warn("Node {name} has multicast off and no --peer: it will only meet nodes that dial it", name=me.name)

    def heard_of(self, info: NodeInfo, age: float = 0.0) -> None:
        """
        A datagram from C{info} arrived (C{age} 0), or a peer exchange
        mentioned it, with the age of the sender's latest evidence of it.
        """
        me = self._node.info
        if compatibility(me.cluster, PROTOCOL_VERSION, info.cluster, info.version) is not Compatibility.COMPATIBLE:
            return
        if info.name == me.name:
            if info.instance != me.instance and age == 0.0:
                self._warn_name_conflict(info, "also calls itself")
            return
        if age > self._config.peer_expiry:
            return
        change = self._peers.observe(info, self._clock.seconds() - age)
        if change is Change.NEW:
            log.info("Node {name} discovered peer {peer}", name=me.name, peer=info.name, address=info.address)
        elif change is Change.RESTARTED:
            log.info(
                "Node {name} sees peer {peer} restarted (new instance {instance})",
                name=me.name,
                peer=info.name,
                instance=info.instance,
            )
        elif change is Change.CONFLICT:
            if age > 0:
                return
            self._warn_name_conflict(info, "claims the name of a connected peer, and is ignored while that one lives:")
            return
        record = self._peers.get(info.name)
        if (
            not self._node.stopping
            and record is not None
            and record.state is PeerState.KNOWN
            and dials(me.name, info.name)
        ):
            self._dialer.ensure(record.info)

    def _warn_name_conflict(self, info: NodeInfo, what: str) -> None:
        self._complaints.warn(
            "name-conflict",
            info.address,
            "The node at {address} (instance {instance}) {what} {name}; node names must be "
            "unique in a cluster: give each a different --name",
            name=info.name,
            address=info.address,
            instance=info.instance,
            what=what,
        )

    def expire_peers(self) -> None:
        """Forget the unconnected peers not heard of within the expiry time."""
        for name in self._peers.expired(self._clock.seconds(), self._config.peer_expiry):
            record = self._peers.get(name)
            self._peers.forget(name)
            self._dialer.stop(name)
            if record is not None and record.state is not PeerState.LEFT:
                log.info(
                    "Node {name} forgot peer {peer}: not heard from in {after:g}s",
                    name=self._node.info.name,
                    peer=name,
                    after=self._config.peer_expiry,
                )

    def gossip(self) -> None:
        """Exchange peer lists with one connected peer, chosen at random."""
        connected = self._peers.connected_peers()
        if connected:
            self.exchange_peers(self._choose(connected).connection)

    def peers_to_share(self) -> list[dict[str, Any]]:
        """
        What this node tells others in PEER_EXCHANGE: itself and every peer
        it has heard of within the expiry time, each with the age of that
        evidence (so a dead node's age only grows and it expires everywhere),
        shuffled and cut to fit one AMP value.
        """
        now = self._clock.seconds()
        entries = [(self._node.info, 0.0)] + self._peers.shareable(
            now, self._config.peer_expiry, last_received=lambda connection: connection.last_received
        )
        self._shuffle(entries)
        wire = [peer_entry(info, age) for info, age in entries]
        # The first chunk: each entry encoded once, and sent as encoded.
        return next(commands.chunk(wire, lambda entry: entry))

    def peers_offered(self, peers: list[tuple[NodeInfo, float]]) -> list[dict[str, Any]]:
        """Merge a peer's known peers; answer with ours."""
        for info, age in peers:
            self.heard_of(info, age)
        return self.peers_to_share()

    def exchange_peers(self, protocol: PeerProtocol) -> None:
        """Send PEER_EXCHANGE on C{protocol}, and merge the answer."""
        d = protocol.callRemote(commands.PeerExchange, peers=self.peers_to_share())

        def merge(answer: dict[str, Any]) -> None:
            try:
                peers = parse_peer_list(answer.get("peers"))
            except ValidationError as e:
                log.warn("Bad PEER_EXCHANGE answer from {peer}: {error}", peer=protocol.describe(), error=e)
                return
            for info, age in peers:
                self.heard_of(info, age)

        d.addCallbacks(merge, lambda f: log.debug("PEER_EXCHANGE failed: {error}", error=f.getErrorMessage()))


class LivenessChecks:
    """
    Judges every connection: quickly where work flows (either way), slowly
    where none does; pings, and closes a connection judged dead.

    @ivar watchman: the detectors (the views read each connection's liveness).
    """

    def __init__(self, config: NodeConfig, clock: IReactorTime) -> None:
        self._clock = clock
        self.watchman = Watchman(
            busy=FailureDetector(config.heartbeat_interval, config.heartbeat_timeout),
            idle=FailureDetector(IDLE_HEARTBEAT_INTERVAL, IDLE_HEARTBEAT_TIMEOUT),
            ping=self._ping,
            on_dead=self._declare_dead,
            on_change=self._liveness_changed,
            pings_when_idle=lambda protocol: protocol.dialled,
        )
        self.on_dead: list[Callable[[str, float], None]] = []
        """Told of each peer declared dead (its name, how long it was silent), before its connection closes."""

    def wire(self, node: INode, peers: PeerTable, master: Master, worker: Worker, outbox: Outbox) -> None:
        """Connect the checks to what tells whether work flows on a connection."""
        self._node = node
        self._peers = peers
        self._master = master
        self._worker = worker
        self._outbox = outbox

    def check(self) -> None:
        """Judge every connection now."""
        busy = self._master.workers_with_work() | self._worker.masters_with_work() | set(self._outbox.confirming)
        connections = [(record.info.name, record.connection) for record in self._peers.connected_peers()]
        self.watchman.check(self._clock.seconds(), connections, busy)

    def liveness(self, protocol: PeerProtocol) -> Liveness:
        """How the detector watching C{protocol} judges it."""
        return self.watchman.liveness(protocol)

    def _ping(self, protocol: PeerProtocol) -> None:
        protocol.callRemote(commands.Heartbeat).addErrback(lambda f: None)

    def _liveness_changed(self, name: str, liveness: Liveness, silent: float) -> None:
        me = self._node.info.name
        if liveness is Liveness.SUSPECT:
            log.warn("Node {name} suspects peer {peer}: silent for {silent:.1f}s", name=me, peer=name, silent=silent)
        elif liveness is Liveness.ALIVE:
            log.info("Node {name}: peer {peer} answers again", name=me, peer=name)

    def _declare_dead(self, name: str, protocol: PeerProtocol, silent: float, timeout: float) -> None:
        log.warn(
            "Node {name} declared peer {peer} dead: silent for {silent:.1f}s (timeout {timeout:g}s); "
            "closing the connection",
            name=self._node.info.name,
            peer=name,
            silent=silent,
            timeout=timeout,
        )
        for hook in self.on_dead:
            hook(name, silent)
        transport: Any = protocol.transport
        if transport is not None:
            transport.abortConnection()
