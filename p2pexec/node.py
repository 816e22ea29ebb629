"""
The node: its parts, built and wired together, started and stopped.

L{create_node} builds the parts (a test may give some instead; the building
and joining live in L{p2pexec.wiring}); L{Node} holds them, and runs the
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

from p2pexec.clock import WallClock
from p2pexec.config import NodeConfig
from p2pexec.gossip import Every
from p2pexec.interfaces import IJournal, ITaskRunner
from p2pexec.job import Job
from p2pexec.leaving import drain, warn_unfinished
from p2pexec.listeners import Listener
from p2pexec.log import NodeLogger
from p2pexec.outputs import OutputStore
from p2pexec.peer import PeerProtocol
from p2pexec.peer_names import Resolve
from p2pexec.startup import announce
from p2pexec.wiring import Parts, build_parts, wire
from p2pexec.worker import Worker

__all__ = ["Node", "NodeConfig", "create_node"]

log = NodeLogger()


def create_node(
    config: NodeConfig,
    reactor: Any,
    runner: ITaskRunner,
    *,
    wall: WallClock = time.time,
    journal: IJournal | None = None,
    worker: Worker | None = None,
    rng: random.Random | None = None,
    outputs: OutputStore | None = None,
    resolve: Resolve | None = None,
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
    @param outputs: where the runner keeps the tasks' full output, which
        TASK_OUTPUT reads (L{p2pexec.outputs}); none by default.
    @param resolve: resolves the seeds given by name (L{p2pexec.peer_names});
        by default C{getaddrinfo} in C{reactor}'s thread pool.
    """
    parts = build_parts(
        config, reactor, runner, wall=wall, journal=journal, worker=worker, rng=rng, outputs=outputs, resolve=resolve
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
    @ivar directory: the newest known leader of each job (see L{p2pexec.directory}).
    @ivar following: the answers to a client about jobs this node does not lead.
    @ivar listeners: the AMP port and (with multicast) the discovery port.
    @ivar loops: the periodic calls (peer expiry, gossip, liveness).  The
        listeners and loops are services, children of the L{NodeService},
        that the node starts and stops at their points of its sequences.
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
        self.directory, self.replication, self.following = p.directory, p.replication, p.following
        self.peer_names = p.peer_names
        self.stopping = False
        self.loops = [
            Every("peer expiry", config.peer_expiry / 3, self.gossip.expire_peers, reactor),
            Every("gossip", config.exchange_interval, self.gossip.gossip, reactor),
            Every("liveness checks", config.heartbeat_interval / 2, self.liveness.check, reactor),
        ]
        self.amp_port = Listener("AMP port", self._listen_amp)
        self.discovery_port = Listener("discovery port", self._listen_discovery)
        self.listeners = [self.amp_port, self.discovery_port] if config.multicast else [self.amp_port]
        self._serving = False
        self._ready_waiters: list[Deferred[None]] = []
        wire(self, p)
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
        address: Any = self.amp_port.bind().getHost()
        self.info = attr.evolve(self.info, port=address.port)

    def _listen_amp(self) -> Any:
        factory = Factory.forProtocol(lambda: PeerProtocol(self.responders, clock=self._reactor))
        factory.noisy = False
        config = self.config
        if config.tls is not None:
            return self._reactor.listenSSL(
                config.port, factory, config.tls.server_options(), interface=config.interface
            )
        return self._reactor.listenTCP(config.port, factory, interface=config.interface)

    def _listen_discovery(self) -> Any:
        return self._reactor.listenMulticast(self.config.group[1], self.discovery, listenMultiple=True)

    @property
    def listening(self) -> Any:
        """The listening AMP port (its factory builds the connections the node accepts), or C{None}."""
        return self.amp_port.port

    def start(self) -> None:
        """Listen, announce ourselves, start discovery and the loops, and take up the start-up job if there is one."""
        if self.amp_port.port is None:
            self.listen()
        info, config = self.info, self.config
        announce(info, config)
        for listener in self.listeners:
            listener.startService()
        if config.multicast:
            self.discovery.joined.addCallback(self._joined)
        else:
            self._now_serving()
        for loop in self.loops:
            loop.startService()
        self.gossip.dial_seeds()
        self.peer_names.start()
        if info.capabilities:
            self.master.worker_joined(info)
        self.startup.prune()
        again = self.replication.load()
        self.master.held_back = again | self.replication.led_elsewhere
        self.startup.begin()
        self.replication.take_over_again(again)

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
        self.peer_names.stop()
        self.master.stop_dispatching()
        await drain(self.worker, config.drain_timeout, self._reactor, name)
        self.worker.flush()
        await self.outbox.flush(config.disconnect_timeout)
        warn_unfinished(self.master, name)
        for loop in self.loops:
            loop.stopService()
        await self.discovery_port.stopService()
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
        await self.amp_port.stopService()
        try:
            self.journal.close()
        except Exception as e:
            log.error("Node {name} could not close its journal: {error}", name=name, error=e)
        log.info("Node {name} stopped", name=name)
