"""
The node: the one place where its parts are built and wired together.

L{create_node} builds the parts (a test may give some instead); L{Node}
connects them through the interfaces of L{p2pexec.interfaces}, and runs the
start and the leave sequence.  docs/architecture.rst says which part does
what, and how a datagram becomes a peer, a connection, a worker seat, an
assignment, a result and a confirmation.
"""

from __future__ import annotations

import random
import time
from typing import Any

import attr
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory

from p2pexec.auth import DatagramSealer
from p2pexec.clock import WallClock
from p2pexec.config import NodeConfig
from p2pexec.connections import Dialer
from p2pexec.discovery import DiscoveryProtocol
from p2pexec.gossip import Every, Gossip, LivenessChecks
from p2pexec.intake import Intake
from p2pexec.interfaces import IJournal, ITaskRunner
from p2pexec.job import Job
from p2pexec.journal import open_journal
from p2pexec.leaving import drain, warn_unfinished
from p2pexec.log import NodeLogger
from p2pexec.master import Master, random_instance
from p2pexec.membership import PeerTable
from p2pexec.model import NodeInfo
from p2pexec.outbox import Outbox
from p2pexec.peer import PeerProtocol
from p2pexec.responders import Responders
from p2pexec.startup import StartupJob, announce
from p2pexec.views import Views
from p2pexec.worker import Worker

__all__ = ["Node", "NodeConfig", "create_node"]

log = NodeLogger()


@attr.s(auto_attribs=True, kw_only=True)
class Parts:
    """The parts of one node, as L{create_node} builds them."""

    info: NodeInfo
    peers: PeerTable
    worker: Worker
    journal: IJournal
    master: Master
    dialer: Dialer
    discovery: DiscoveryProtocol
    gossip: Gossip
    liveness: LivenessChecks
    outbox: Outbox
    responders: Responders
    intake: Intake
    views: Views
    startup: StartupJob


def create_node(
    config: NodeConfig,
    reactor: Any,
    runner: ITaskRunner,
    *,
    wall: WallClock = time.time,
    journal: IJournal | None = None,
    worker: Worker | None = None,
    rng: random.Random | None = None,
) -> Node:
    """
    Build a node's parts from C{config} and wire them into a L{Node}.

    @param reactor: the reactor; its C{seconds()} is the monotonic clock of
        every timer, interval and duration (see L{p2pexec.clock}).
    @param runner: what runs the tasks this node is given.
    @param wall: the wall clock, for moments shown to people, kept in the
        journal, or compared with other nodes' clocks.
    @param journal: the journal to keep, instead of the one in
        C{config.state_dir} (opened here: SQLite).
    @param worker: the worker, instead of one built from C{config}.
    @param rng: the source of every random choice of the node (its instance
        id, jitters, whom to gossip with), for a simulation that must replay
        exactly (L{p2pexec.testing.simulation}); by default C{random}'s and
        C{os.urandom}.
    """
    chance: Any = rng if rng is not None else random
    info = NodeInfo(
        name=config.name,
        instance=random_instance() if rng is None else rng.randbytes(8).hex(),
        host=config.interface,
        port=config.port or 1,
        capabilities=tuple(sorted(config.capabilities)),
        slots=config.slots,
        cluster=config.cluster,
    )
    journal = journal if journal is not None else open_journal(config.state_dir, reactor)
    outbox, startup = Outbox(reactor), StartupJob(config, reactor, wall)
    responders = Responders(config, reactor)
    gossip = Gossip(config, reactor, choose=chance.choice, shuffle=chance.shuffle)
    master = Master(
        info,
        link=outbox,
        observer=startup,
        clock=reactor,
        journal=journal,
        max_losses=config.max_losses,
        jitter=chance.random,
        wall=wall,
    )
    dialer = Dialer(
        reactor,
        make_protocol=lambda: PeerProtocol(responders, dialled=True, clock=reactor),
        introduce=responders.introduce,
        random_fraction=chance.random,
    )
    if config.tls is not None:
        dialer.tls_options = config.tls.client_options()
    discovery = DiscoveryProtocol(
        gossip.me,
        config.group,
        config.interface,
        reactor,
        on_peer=gossip.heard_of,
        hello_interval=config.hello_interval,
        random_fraction=chance.random,
        sealer=DatagramSealer(config.key, wall) if config.key is not None else None,
    )
    parts = Parts(
        info=info,
        peers=PeerTable(config.name),
        worker=worker or Worker(config.name, config.capabilities, config.slots, runner, reactor),
        journal=journal,
        master=master,
        dialer=dialer,
        discovery=discovery,
        gossip=gossip,
        liveness=LivenessChecks(config, reactor),
        outbox=outbox,
        responders=responders,
        intake=Intake(),
        views=Views(reactor),
        startup=startup,
    )
    return Node(config, reactor, parts)


class Node:
    """
    One p2pexec node: its parts, wired together, started and stopped in order.

    @ivar info: how this node describes itself to others.
    @ivar peers: the peer table.
    @ivar master: the jobs this node is master of.
    @ivar worker: the tasks this node runs.
    @ivar views: what the web, metrics and status commands read.
    @ivar loops: the periodic calls (peer expiry, gossip, liveness), as
        services: children of L{p2pexec.service.NodeService}, started here
        too when the node runs without one.
    @ivar stopping: whether the node is leaving.
    """

    def __init__(self, config: NodeConfig, reactor: Any, parts: Parts) -> None:
        self.config = config
        self._reactor = reactor
        self.info, p = parts.info, parts
        self.peers, self.worker, self.journal, self.master = p.peers, p.worker, p.journal, p.master
        self.dialer, self.discovery, self.gossip, self.liveness = p.dialer, p.discovery, p.gossip, p.liveness
        self.outbox, self.responders, self.intake = p.outbox, p.responders, p.intake
        self.views, self.startup = p.views, p.startup
        self.stopping = False
        self.loops = [
            Every("peer expiry", config.peer_expiry / 3, self.gossip.expire_peers, reactor),
            Every("gossip", config.exchange_interval, self.gossip.gossip, reactor),
            Every("liveness checks", config.heartbeat_interval / 2, self.liveness.check, reactor),
        ]
        self._tcp_port: Any = None
        self._udp_port: Any = None
        self._serving = False
        self._ready_waiters: list[Deferred[None]] = []
        p.outbox.wire(self, p.peers, p.master, p.worker)
        p.gossip.wire(self, p.peers, p.dialer)
        p.liveness.wire(self, p.peers, p.master, p.worker, p.outbox)
        p.intake.wire(self, p.master, p.journal)
        p.startup.wire(self, p.master, p.journal)
        p.views.wire(self, p.peers, p.master, p.worker, p.journal, p.liveness, p.discovery, p.responders)
        p.responders.wire(self, p.peers, p.master, p.worker, p.journal, p.dialer, p.gossip, p.outbox, p.intake, p.views)
        self.submit = self.intake.submit
        self.submit_part = self.intake.submit_part
        self.peers_status, self.topology_status = self.views.peers_status, self.views.topology_status
        self.jobs_status, self.job_status = self.views.jobs_status, self.views.job_status
        self.job_tasks = self.views.job_tasks
        self.problem = self.views.problem

    @property
    def initial_job(self) -> Deferred[Job]:
        """Fires with the job given at start-up once it finishes."""
        return self.startup.initial_job

    def listen(self) -> None:
        """
        Bind the AMP port (before privileges are dropped, when run by twistd).

        @raise twisted.internet.error.CannotListenError: if the port is taken.
        """
        factory = Factory.forProtocol(lambda: PeerProtocol(self.responders, clock=self._reactor))
        factory.noisy = False
        config = self.config
        if config.tls is not None:
            self._tcp_port = self._reactor.listenSSL(
                config.port, factory, config.tls.server_options(), interface=config.interface
            )
        else:
            self._tcp_port = self._reactor.listenTCP(config.port, factory, interface=config.interface)
        self.info = attr.evolve(self.info, port=self._tcp_port.getHost().port)

    @property
    def listening(self) -> Any:
        """The listening AMP port (its factory builds the connections the node accepts), or C{None}."""
        return self._tcp_port

    def start(self) -> None:
        """Announce ourselves, start discovery and the loops, and take up the start-up job if there is one."""
        if self._tcp_port is None:
            self.listen()
        info, config = self.info, self.config
        announce(info, config)
        if config.multicast:
            self._udp_port = self._reactor.listenMulticast(config.group[1], self.discovery, listenMultiple=True)
            self.discovery.joined.addCallback(self._joined)
        else:
            self._now_serving()
        for loop in self.loops:
            loop.startService()
        self.gossip.dial_seeds()
        if info.capabilities:
            self.master.worker_joined(info)
        self.startup.begin()

    def ready(self) -> Deferred[None]:
        """
        Fires once the node serves: its TCP port listens (L{start} has run)
        and, with multicast on, discovery has joined its group (or failed to,
        which is logged as an error).
        """
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        if self._serving:
            self._now_serving()
        return d

    def _joined(self, joined: Any) -> Any:
        self._now_serving()
        return joined

    def _now_serving(self) -> None:
        self._serving = True
        waiting, self._ready_waiters = self._ready_waiters, []
        for d in waiting:
            d.callback(None)

    async def stop(self) -> None:
        """
        Leave the cluster: take no more tasks, finish (within the drain
        timeout) or hand back what runs here, flush confirmations, say
        DISCONNECT_REQUEST to every peer and wait (bounded) for the ACKs,
        then close everything.
        """
        if self.stopping:
            return
        self.stopping = True
        name, config = self.info.name, self.config
        self.dialer.hold()
        self.master.stop_dispatching()
        await drain(self.worker, config.drain_timeout, self._reactor, name)
        self.worker.flush()
        await self.outbox.flush(config.disconnect_timeout)
        warn_unfinished(self.master, name)
        for loop in self.loops:
            loop.stopService()
        if self._udp_port is not None:
            await self._udp_port.stopListening()
        farewells = [
            self.outbox.say_goodbye(record.info.name, record.connection, config.disconnect_timeout)
            for record in self.peers.connected_peers()
            if record.connection is not None
        ]
        if farewells:
            await DeferredList(farewells, consumeErrors=True)
        await self.dialer.stop_all()
        for record in self.peers:
            if record.connection is not None and record.connection.transport is not None:
                record.connection.transport.loseConnection()
        if self._tcp_port is not None:
            await self._tcp_port.stopListening()
        try:
            self.journal.close()
        except Exception as e:
            log.error("Node {name} could not close its journal: {error}", name=name, error=e)
        log.info("Node {name} stopped", name=name)
