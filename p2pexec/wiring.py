"""
The parts of one node and how they are joined: L{build_parts} builds them
from a L{NodeConfig}, L{wire} connects them through the interfaces of
L{p2pexec.interfaces} once the L{p2pexec.node.Node} that holds them exists.
(The node itself runs the start and leave sequences; see docs/architecture.rst.)
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import attr

from p2pexec.auth import DatagramSealer
from p2pexec.clock import WallClock
from p2pexec.config import NodeConfig
from p2pexec.connections import Dialer
from p2pexec.directory import JobDirectory
from p2pexec.discovery import DiscoveryProtocol
from p2pexec.failover import Replication
from p2pexec.file_parts import NodeFiles, build_files, wire_files
from p2pexec.following import Following
from p2pexec.gossip import Gossip, LivenessChecks
from p2pexec.intake import Intake
from p2pexec.interfaces import IJournal, ITaskRunner
from p2pexec.journal import open_journal
from p2pexec.master import Master, random_instance
from p2pexec.membership import PeerTable
from p2pexec.model import NodeInfo
from p2pexec.outbox import Outbox
from p2pexec.outputs import OutputStore
from p2pexec.peer import PeerProtocol
from p2pexec.peer_names import PeerNames, Resolve, threaded_resolver
from p2pexec.replica_views import ReplicaViews
from p2pexec.responders import Responders
from p2pexec.startup import StartupJob
from p2pexec.task_output import TaskOutputs
from p2pexec.views import Views
from p2pexec.worker import Worker

if TYPE_CHECKING:
    from p2pexec.node import Node


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
    directory: JobDirectory
    replication: Replication
    following: Following
    task_outputs: TaskOutputs
    peer_names: PeerNames
    files: NodeFiles | None = None


def build_parts(
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
) -> Parts:
    """Build a node's parts from C{config} (see L{p2pexec.node.create_node} for the parameters)."""
    chance: Any = rng if rng is not None else random
    info = NodeInfo(
        name=config.name,
        instance=random_instance() if rng is None else rng.randbytes(8).hex(),
        host=config.interface,
        port=config.port or 1,
        capabilities=tuple(sorted(config.capabilities)),
        slots=config.slots,
        cluster=config.cluster,
        resources=config.resources,
    )
    journal = journal if journal is not None else open_journal(config.state_dir, reactor)
    outbox, startup = Outbox(reactor), StartupJob(config, reactor, wall)
    responders = Responders(config, reactor)
    gossip = Gossip(config, reactor, choose=chance.choice, shuffle=chance.shuffle)
    directory = JobDirectory()
    replication = Replication(config.replicas, config.takeover_grace, reactor, directory)
    master = Master(
        info,
        link=outbox,
        observer=startup,
        clock=reactor,
        journal=journal,
        max_losses=config.max_losses,
        jitter=chance.random,
        wall=wall,
        replication=replication,
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
    peers = PeerTable(config.name)
    files = build_files(config, reactor, runner, peers, directory, master)
    if files is not None:
        runner = files.runner  # inputs fetched and outputs sent around every task with files
    parts = Parts(
        info=info,
        peers=peers,
        files=files,
        worker=worker
        or Worker(
            config.name, config.capabilities, config.slots, runner, reactor, config.master_lease, config.resources
        ),
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
        directory=directory,
        replication=replication,
        following=Following(reactor),
        task_outputs=TaskOutputs(reactor, outputs),
        peer_names=PeerNames(
            config.seeds,
            config.peer_refresh,
            reactor,
            (lambda: resolve) if resolve is not None else (lambda: threaded_resolver(reactor)),
        ),
    )
    parts.following.replicas = ReplicaViews(replication.stores, replication.records_of, directory, reactor, wall)
    responders.following = parts.following
    responders.task_outputs = parts.task_outputs
    return parts


def wire(node: Node, p: Parts) -> None:
    """Connect C{node}'s parts to each other (and to the node, which they read their name and state from)."""
    p.outbox.wire(node, p.peers, p.master, p.worker)
    p.gossip.wire(node, p.peers, p.dialer)
    p.liveness.wire(node, p.peers, p.master, p.worker, p.outbox)
    p.intake.wire(node, p.master, p.journal)
    p.startup.wire(node, p.master, p.journal, p.peers)
    p.views.wire(node, p.peers, p.master, p.worker, p.journal, p.liveness, p.discovery, p.responders)
    p.responders.wire(
        node, p.peers, p.master, p.worker, p.journal, p.dialer, p.gossip, p.outbox, p.intake, p.views, p.replication
    )
    p.replication.wire(node, p.peers, p.master, p.journal)
    p.replication.connected_listeners.append(p.startup.peer_connected)
    p.liveness.on_dead.append(p.replication.peer_dead)
    p.following.wire(node, p.peers, p.views, p.directory)
    p.task_outputs.wire(node, p.peers, p.master, p.worker, p.directory)
    p.peer_names.wire(lambda: node.info, p.peers, p.dialer)
    if p.files is not None:
        wire_files(
            p.files, p.peers, node.info.name, p.responders, p.intake, p.master, p.startup, p.views, p.replication
        )
