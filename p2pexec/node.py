"""
The node: the one place where discovery, the peer table, connections, the
master and the worker are wired together.

No other object knows all the parts.  Each part reports what happened and the
node decides what follows: a datagram becomes a peer-table entry, which may
become a connection, whose handshake makes a worker seat for the master,
whose assignments become the worker's queue, whose results flow back to the
master as confirmations.
"""

from __future__ import annotations

import random
import time
from typing import Any

import attr
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail, gatherResults
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands, status
from p2pexec.auth import ChallengeResponse, DatagramSealer
from p2pexec.clock import WallClock
from p2pexec.connections import Dialer, dials
from p2pexec.discovery import DiscoveryProtocol
from p2pexec.heartbeat import FailureDetector, Liveness, Watchman
from p2pexec.job import DEFAULT_MAX_LOSSES, Job
from p2pexec.jobfile import JobFileError, parse_job
from p2pexec.journal import IJournal, JournalError, open_journal
from p2pexec.log import NodeLogger, RateLimitedLog
from p2pexec.master import Master, random_instance
from p2pexec.membership import Change, PeerState, PeerTable
from p2pexec.model import (
    PROTOCOL_VERSION,
    Assignment,
    NodeInfo,
    TaskResult,
    TaskSpec,
    ValidationError,
    validate_name,
)
from p2pexec.peer import MAX_CONNECTIONS_PER_ADDRESS, PeerProtocol, parse_peer_list, peer_entry
from p2pexec.results import write_results
from p2pexec.worker import ITaskRunner, Worker

log = NodeLogger()


_LOCALHOST = {"localhost": "127.0.0.1"}

IDLE_HEARTBEAT_INTERVAL = 10.0
"""Seconds of quiet after which an idle connection gets a HEARTBEAT."""

IDLE_HEARTBEAT_TIMEOUT = 30.0
"""Seconds of silence after which an idle connection is closed as dead."""

MAX_CANCELS_OWED = 1000
"""Cancelled jobs remembered per worker that could not be told yet (the oldest are forgotten first)."""


@attr.s(frozen=True, auto_attribs=True)
class NodeConfig:
    """
    Everything a node is started with (see L{p2pexec.tap.Options}).
    """

    name: str
    port: int = 10001
    interface: str = "127.0.0.1"
    group: tuple[str, int] = ("239.255.42.99", 10000)
    cluster: str = "default"
    capabilities: frozenset[str] = frozenset()
    slots: int = 1
    tasks: tuple[TaskSpec, ...] | None = None
    results: str | None = None
    multicast: bool = True
    seeds: tuple[tuple[str, int], ...] = ()
    drain_timeout: float = 30.0
    disconnect_timeout: float = 2.0
    hello_interval: float = 10.0
    peer_expiry: float = 35.0
    exchange_interval: float = 5.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.5
    state_dir: str | None = None
    job_source: str | None = None
    job_label: str | None = None
    """How the start-up job was given, for the log (C{job file FILE}, C{--tasks ...})."""
    rerun_job: bool = False
    """Run the start-up job even if the journal says it already finished (C{--rerun-job})."""
    max_losses: int = DEFAULT_MAX_LOSSES
    journal_retention: float = 7 * 24 * 3600.0
    key: bytes | None = attr.ib(default=None, repr=False)
    local_token: bytes | None = attr.ib(default=None, repr=False)
    """Without a key: the owner's token (L{p2pexec.localtoken}), which submitting and cancelling need; None: anyone may."""
    web_public: bool = False
    tls: Any | None = None
    """A L{p2pexec.tls.TLSConfig}: AMP connections speak TLS."""


class _LocalSink:
    """Results of the tasks this node runs as its own master."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.key = (node.info.name, node.info.instance)

    def deliver(self, job: str, results: list[TaskResult]) -> None:
        self._node.master.confirm(job, results, sender=self._node.info.name)


class _RemoteSink:
    """Results going back to another node that is their master."""

    def __init__(self, node: Node, name: str, instance: str) -> None:
        self._node = node
        self.key = (name, instance)

    def deliver(self, job: str, results: list[TaskResult]) -> None:
        self._node._send_confirmations(self.key, job, results)


class Node:
    """
    One p2pexec node.

    @ivar info: how this node describes itself to others.
    @ivar peers: the peer table.
    @ivar master: the jobs this node is master of.
    @ivar worker: the tasks this node runs.
    @ivar initial_job: fires with the job given at start-up once it finishes.
    """

    def __init__(
        self,
        config: NodeConfig,
        reactor: Any,
        runner: ITaskRunner,
        wall: WallClock = time.time,
        journal: IJournal | None = None,
    ) -> None:
        """
        @param reactor: the reactor; its C{seconds()} is the monotonic clock of
            every timer, interval and duration (see L{p2pexec.clock}).
        @param wall: the wall clock, for moments shown to people, kept in the
            journal, or compared with other nodes' clocks.
        @param journal: the journal to keep, instead of the one in
            C{config.state_dir} (a seam for tests: one whose writes fail).
        """
        self.config = config
        self._reactor = reactor
        self._wall = wall
        self.info = NodeInfo(
            name=config.name,
            instance=random_instance(),
            host=config.interface,
            port=config.port or 1,
            capabilities=tuple(sorted(config.capabilities)),
            slots=config.slots,
            cluster=config.cluster,
        )
        self.peers = PeerTable(config.name)
        self.worker = Worker(config.name, config.capabilities, config.slots, runner, reactor)
        self.journal: IJournal = journal if journal is not None else open_journal(config.state_dir, reactor)
        self.master = Master(
            self.info,
            link=self,
            observer=self,
            clock=reactor,
            journal=self.journal,
            max_losses=config.max_losses,
            wall=wall,
        )
        self.dialer = Dialer(
            reactor, make_protocol=lambda: PeerProtocol(self, dialled=True, clock=reactor), introduce=self._introduce
        )
        self.watchman = Watchman(
            busy=FailureDetector(config.heartbeat_interval, config.heartbeat_timeout),
            idle=FailureDetector(IDLE_HEARTBEAT_INTERVAL, IDLE_HEARTBEAT_TIMEOUT),
            ping=self._ping,
            on_dead=self._declare_dead,
            on_change=self._liveness_changed,
            pings_when_idle=lambda protocol: protocol.dialled,
        )
        self.challenge = ChallengeResponse(config.key) if config.key is not None else None
        self.local_challenge = (
            ChallengeResponse(config.local_token) if config.key is None and config.local_token is not None else None
        )
        """Without a key: how a client proves the local token (AUTHENTICATE), to submit and cancel."""
        self.tls = config.tls
        if self.tls is not None:
            self.dialer.tls_options = self.tls.client_options()
        self.discovery = DiscoveryProtocol(
            lambda: self.info,
            config.group,
            config.interface,
            reactor,
            on_peer=self._heard_of,
            hello_interval=config.hello_interval,
            sealer=DatagramSealer(config.key, wall) if config.key is not None else None,
        )
        self.initial_job: Deferred[Job] = Deferred()
        self._initial_job_id: str | None = None
        self._complaints = RateLimitedLog(log, reactor)
        self._tcp_port: Any = None
        self._udp_port: Any = None
        self._loops: list[LoopingCall] = []
        self._serving = False
        self._ready_waiters: list[Deferred[None]] = []
        self._loads: dict[str, status.Load] = {}
        self._loads_asked = float("-inf")
        self._uploads: dict[str, tuple[PeerProtocol, list[Any], Any]] = {}
        self._cancels_owed: dict[str, dict[str, None]] = {}
        """Per worker, the cancelled jobs it could not be told of (it was not connected), oldest first."""
        self._upload_numbers = 0
        self.reconnects = 0
        self._per_address: dict[str, int] = {}
        self._ever_connected: set[str] = set()
        self._in_flight: set[Deferred[Any]] = set()
        self._confirming: dict[str, int] = {}
        self._local_sink: _LocalSink | None = None
        self.stopping = False

    # -- start and stop -------------------------------------------------------

    def listen(self) -> None:
        """
        Bind the AMP port (before privileges are dropped, when run by twistd).

        @raise twisted.internet.error.CannotListenError: if the port is taken.
        """
        factory = Factory.forProtocol(lambda: PeerProtocol(self, clock=self._reactor))
        factory.noisy = False
        if self.tls is not None:
            self._tcp_port = self._reactor.listenSSL(
                self.config.port, factory, self.tls.server_options(), interface=self.config.interface
            )
        else:
            self._tcp_port = self._reactor.listenTCP(self.config.port, factory, interface=self.config.interface)
        self.info = attr.evolve(self.info, port=self._tcp_port.getHost().port)
        self.master.me = self.info

    def start(self) -> None:
        """Announce ourselves, start discovery, and accept the start-up job if there is one."""
        if self._tcp_port is None:
            self.listen()
        self._local_sink = _LocalSink(self)
        log.info(
            "Node {name} started on port {port}",
            name=self.info.name,
            port=self.info.port,
            interface=self.config.interface,
            cluster=self.config.cluster,
            capabilities=",".join(self.info.capabilities),
            slots=self.info.slots,
            instance=self.info.instance,
        )
        log.info(
            "Node {name}: cluster {cluster!r}, runs {capabilities} with {slots} slot(s), "
            "listens on {interface}:{port}, discovers on {group} (instance {instance})",
            name=self.info.name,
            cluster=self.info.cluster,
            capabilities=", ".join(self.info.capabilities) or "no task kinds",
            slots=self.info.slots,
            interface=self.config.interface,
            port=self.info.port,
            group="%s:%d" % self.config.group if self.config.multicast else "nothing (multicast off)",
            instance=self.info.instance,
        )
        if self.config.multicast:
            _, group_port = self.config.group
            self._udp_port = self._reactor.listenMulticast(group_port, self.discovery, listenMultiple=True)
            self.discovery.joined.addCallback(lambda joined: (self._now_serving(), joined)[1])
        else:
            self._now_serving()
        for interval, call in (
            (self.config.peer_expiry / 3, self._expire_peers),
            (self.config.exchange_interval, self._gossip),
            (self.config.heartbeat_interval / 2, self._check_liveness),
        ):
            loop = LoopingCall(call)
            loop.clock = self._reactor
            loop.start(interval, now=False).addErrback(lambda f: log.failure("Periodic task failed", f))
            self._loops.append(loop)
        for host, port in self.config.seeds:
            if (_LOCALHOST.get(host, host), port) == (self.info.host, self.info.port):
                continue
            log.info("Node {name} will dial seed {address}", name=self.info.name, address=f"{host}:{port}")
            self.dialer.ensure_seed(
                host, port, is_connected=self.peers.is_connected, connected_at=self.peers.connected_at
            )
        if not self.config.multicast and not self.config.seeds:
            log.warn(
                "Node {name} has multicast off and no --peer: it will only meet nodes that dial it",
                name=self.info.name,
            )
        if self.info.capabilities:
            self.master.worker_joined(self.info)
        self._resume_jobs()
        if self.config.tasks is not None and self._initial_job_id is None and not self._finished_already():
            self._initial_job_id = self.master.new_job_id()
            self.master.submit(self.config.tasks, self._initial_job_id, source=self.config.job_source)
            # Write it now, while the peers are still being found, rather
            # than when its first tasks are ready to go.
            try:
                self.journal.commit()
            except Exception as e:
                log.error(
                    "Node {name} could not write its start-up job {job} to its journal ({error}); "
                    "it runs, and is written once the journal can be written (a restart before then "
                    "would not resume it)",
                    name=self.info.name,
                    job=self._initial_job_id,
                    error=e,
                )

    def _resume_jobs(self) -> None:
        """Take up the journal's unfinished jobs; the start-up job may be one of them."""
        journal = self.journal
        prune = getattr(journal, "prune", None)
        if prune is not None:
            pruned = prune(self._wall() - self.config.journal_retention)
            if pruned:
                log.info(
                    "Node {name} pruned {count} finished job(s) from its journal", name=self.info.name, count=pruned
                )
        stored = journal.unfinished_jobs()
        if not stored:
            return
        source = self.config.job_source
        for saved in stored:
            if source is not None and saved.source == source and self._initial_job_id is None:
                self._initial_job_id = saved.id
                log.info(
                    "Node {name} resumes job {job}: it is the job it was started with, unfinished when "
                    "this node last stopped",
                    name=self.info.name,
                    job=saved.id,
                )
        self.master.resume(stored)

    def _finished_already(self) -> bool:
        """
        Whether the start-up job already finished under an earlier run of
        this node (its journal says so): if so, say it in one line, show it
        among the finished jobs, and fire L{initial_job} with it, unless
        C{--rerun-job} asks for it to run again.
        """
        source = self.config.job_source
        if source is None:
            return False
        saved = self.journal.finished_job(source)
        if saved is None:
            return False
        job = self.master.recall_finished(saved)
        label = self.config.job_label or "job"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.finished))
        ended = "was cancelled" if job.cancelled else "already finished"
        if self.config.rerun_job:
            log.info(
                "Node {name}: {label} {ended} at {when} (job {job}: {succeeded} succeeded, {failed} failed); "
                "--rerun-job: running it again as a new job",
                name=self.info.name,
                label=label,
                ended=ended,
                when=when,
                job=job.id,
                succeeded=job.succeeded,
                failed=job.failed,
            )
            return False
        log.warn(
            "Node {name}: {label} {ended} at {when} (job {job}: {succeeded} succeeded, {failed} failed); "
            "not running it again; pass --rerun-job to run it again",
            name=self.info.name,
            label=label,
            ended=ended,
            when=when,
            job=job.id,
            succeeded=job.succeeded,
            failed=job.failed,
        )
        self._initial_job_id = job.id
        if not self.initial_job.called:
            self.initial_job.callback(job)
        return True

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
        self.dialer.hold()
        self.master.stop_dispatching()
        handed_back = self.worker.stop_accepting()
        if handed_back:
            log.info(
                "Node {name} is leaving: handing back {count} queued task(s)",
                name=self.info.name,
                count=handed_back,
            )
        if self.worker.running:
            log.info(
                "Node {name} is leaving: waiting up to {timeout:g}s for {count} running task(s)",
                name=self.info.name,
                timeout=self.config.drain_timeout,
                count=self.worker.running,
            )
            try:
                await self.worker.when_idle().addTimeout(self.config.drain_timeout, self._reactor)
            except TimeoutError:
                log.warn(
                    "Node {name}: {count} task(s) still running after {timeout:g}s; stopping them",
                    name=self.info.name,
                    count=self.worker.running,
                    timeout=self.config.drain_timeout,
                )
                self.worker.stop_running()
                try:
                    await self.worker.when_idle().addTimeout(10.0, self._reactor)
                except TimeoutError:
                    log.error("Node {name}: tasks did not stop; leaving anyway", name=self.info.name)
        # What ignored SIGTERM (a task stopped now, or one that timed out,
        # was cancelled or left children behind a moment ago) gets its
        # SIGKILL before the node goes.
        await _bounded(self.worker.settled(), 10.0, self._reactor)
        self.worker.flush()
        if self._in_flight:
            await _bounded(
                DeferredList(list(self._in_flight), consumeErrors=True), self.config.disconnect_timeout, self._reactor
            )
        for job in self.master.unfinished():
            log.warn(
                "Node {name} is leaving with job {job} unfinished: {done} of {total} task(s) have results",
                name=self.info.name,
                job=job.id,
                done=job.succeeded + job.failed,
                total=len(job.tasks),
            )
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._udp_port is not None:
            await self._udp_port.stopListening()
        farewells = []
        for record in self.peers.connected_peers():
            protocol = record.connection
            farewells.append(self._say_goodbye(record.info.name, protocol))
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
            log.error("Node {name} could not close its journal: {error}", name=self.info.name, error=e)
        log.info("Node {name} stopped", name=self.info.name)

    def _say_goodbye(self, name: str, protocol: PeerProtocol) -> Deferred[Any]:
        sent = protocol.callRemote(commands.DisconnectRequest, reason="shutdown")

        def acked(_: Any) -> None:
            log.info("Node {name} got DISCONNECT_ACK from {peer}", name=self.info.name, peer=name)

        def failed(failure: Failure) -> None:
            if protocol.leaving:
                log.info("Node {name} and peer {peer} left at the same time", name=self.info.name, peer=name)
                return
            log.info(
                "Node {name} got no DISCONNECT_ACK from {peer}: {error}",
                name=self.info.name,
                peer=name,
                error=failure.getErrorMessage() or failure.type.__name__,
            )

        sent.addTimeout(self.config.disconnect_timeout, self._reactor)
        sent.addCallbacks(acked, failed)
        sent.addBoth(lambda _: protocol.transport.loseConnection())
        return sent

    # -- membership ---------------------------------------------------------

    def _heard_of(self, info: NodeInfo, age: float = 0.0) -> None:
        """
        A datagram from C{info} arrived (C{age} 0), or a peer exchange
        mentioned it, with the age of the sender's latest evidence of it.
        """
        if info.cluster != self.info.cluster or info.version != PROTOCOL_VERSION:
            return
        if info.name == self.info.name:
            if info.instance != self.info.instance and age == 0.0:
                self._warn_name_conflict(info, "also calls itself")
            return
        if age > self.config.peer_expiry:
            return
        change = self.peers.observe(info, self._reactor.seconds() - age)
        if change is Change.NEW:
            log.info("Node {name} discovered peer {peer}", name=self.info.name, peer=info.name, address=info.address)
        elif change is Change.RESTARTED:
            log.info(
                "Node {name} sees peer {peer} restarted (new instance {instance})",
                name=self.info.name,
                peer=info.name,
                instance=info.instance,
            )
        elif change is Change.CONFLICT:
            if age > 0:
                return
            self._warn_name_conflict(info, "claims the name of a connected peer, and is ignored while that one lives:")
            return
        record = self.peers.get(info.name)
        if (
            not self.stopping
            and record is not None
            and record.state is PeerState.KNOWN
            and dials(self.info.name, info.name)
        ):
            self.dialer.ensure(record.info)

    def _introduce(self, protocol: PeerProtocol, info: NodeInfo | None) -> Any:
        """Introduce ourselves on a dialled connection (to C{info}, or to a seed)."""
        return protocol.introduce(self.info, expected=info.name if info is not None else None)

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

    def _expire_peers(self) -> None:
        for name in self.peers.expired(self._reactor.seconds(), self.config.peer_expiry):
            record = self.peers.get(name)
            self.peers.forget(name)
            self.dialer.stop(name)
            if record is not None and record.state is not PeerState.LEFT:
                log.info(
                    "Node {name} forgot peer {peer}: not heard from in {after:g}s",
                    name=self.info.name,
                    peer=name,
                    after=self.config.peer_expiry,
                )

    def _check_liveness(self) -> None:
        """Judge every connection: quickly where work flows, slowly where none does."""
        busy = self.master.workers_with_work() | self.worker.masters_with_work() | set(self._confirming)
        connections = [(record.info.name, record.connection) for record in self.peers.connected_peers()]
        self.watchman.check(self._reactor.seconds(), connections, busy)

    def _ping(self, protocol: PeerProtocol) -> None:
        protocol.callRemote(commands.Heartbeat).addErrback(lambda f: None)

    def _liveness_changed(self, name: str, liveness: Liveness, silent: float) -> None:
        if liveness is Liveness.SUSPECT:
            log.warn(
                "Node {name} suspects peer {peer}: silent for {silent:.1f}s",
                name=self.info.name,
                peer=name,
                silent=silent,
            )
        elif liveness is Liveness.ALIVE:
            log.info("Node {name}: peer {peer} answers again", name=self.info.name, peer=name)

    def _declare_dead(self, name: str, protocol: PeerProtocol, silent: float, timeout: float) -> None:
        log.warn(
            "Node {name} declared peer {peer} dead: silent for {silent:.1f}s (timeout {timeout:g}s); "
            "closing the connection",
            name=self.info.name,
            peer=name,
            silent=silent,
            timeout=timeout,
        )
        protocol.transport.abortConnection()

    def _gossip(self) -> None:
        connected = self.peers.connected_peers()
        if connected:
            self._exchange_peers(random.choice(connected).connection)

    def _peers_to_share(self) -> list[dict[str, Any]]:
        """
        What this node tells others in PEER_EXCHANGE: itself and every peer
        it has heard of within the expiry time, each with the age of that
        evidence (so a dead node's age only grows and it expires everywhere),
        shuffled and cut to fit one AMP value.
        """
        now = self._reactor.seconds()
        entries = [(self.info, 0.0)] + self.peers.shareable(
            now, self.config.peer_expiry, last_received=lambda connection: connection.last_received
        )
        random.shuffle(entries)
        wire = [peer_entry(info, age) for info, age in entries]
        # The first chunk: each entry encoded once, and sent as encoded.
        return next(commands.chunk(wire, lambda entry: entry))

    def _exchange_peers(self, protocol: PeerProtocol) -> None:
        d = protocol.callRemote(commands.PeerExchange, peers=self._peers_to_share())

        def merge(answer: dict[str, Any]) -> None:
            try:
                peers = parse_peer_list(answer.get("peers"))
            except ValidationError as e:
                log.warn("Bad PEER_EXCHANGE answer from {peer}: {error}", peer=protocol.describe(), error=e)
                return
            for info, age in peers:
                self._heard_of(info, age)

        d.addCallbacks(merge, lambda f: log.debug("PEER_EXCHANGE failed: {error}", error=f.getErrorMessage()))

    def connection_ready(self, protocol: PeerProtocol, info: NodeInfo) -> None:
        """A handshake completed: record the connection and offer the peer work."""
        old = self.peers.get(info.name)
        if old is not None and old.connection is not None and old.connection is not protocol:
            same_process = old.info.instance == info.instance
            lower_dials = dials(self.info.name, info.name)
            if same_process and old.connection.dialled == lower_dials and protocol.dialled != lower_dials:
                # Both sides dialled at once: keep the connection dialled by
                # the lower name, on both sides alike, and close the other
                # (which carried nothing yet from this side).
                log.debug("Node {name} keeps its other connection to {peer}", name=self.info.name, peer=info.name)
                protocol.transport.loseConnection()
                return
            log.info("Node {name} replaces its connection to {peer}", name=self.info.name, peer=info.name)
            if same_process:
                # The same process holds its tasks, but what was in flight on
                # the old connection may be lost with it: hand it out again,
                # without counting it towards quarantine.
                self.master.worker_lost(info.name, "moved to a new connection", count_loss=False)
            else:
                self.master.worker_lost(info.name, "was replaced by a new connection")
            old.connection.transport.loseConnection()
        if info.name in self._ever_connected:
            self.reconnects += 1
        self._ever_connected.add(info.name)
        change = self.peers.connected(info, protocol, self._reactor.seconds())
        if change is Change.NEW:
            log.info("Node {name} discovered peer {peer}", name=self.info.name, peer=info.name, address=info.address)
        log.info(
            "Node {name} connected to peer {peer} at {address} (capabilities: {capabilities}; slots: {slots})",
            name=self.info.name,
            peer=info.name,
            address=info.address,
            capabilities=",".join(info.capabilities) or "none",
            slots=info.slots,
        )
        if info.capabilities:
            self.master.worker_joined(info)
        for job in self._cancels_owed.pop(info.name, {}):
            self.send_cancel(info.name, job)
        if protocol.dialled:
            self._exchange_peers(protocol)

    # -- status views (HTTP API, client commands, dashboard) ---------------

    LOAD_REFRESH = 1.0
    """Seconds between asking the connected peers for their load, while someone looks."""

    def my_load(self) -> status.Load:
        """This node's running and queued tasks and its live connections."""
        return status.Load(
            running=self.worker.running,
            queued=self.worker.queued,
            links=tuple(sorted(record.info.name for record in self.peers.connected_peers())),
        )

    def _refresh_loads(self) -> None:
        """Ask every connected peer for NODE_STATUS, at most once per L{LOAD_REFRESH} seconds."""
        now = self._reactor.seconds()
        if now - self._loads_asked < self.LOAD_REFRESH:
            return
        self._loads_asked = now
        connected = {record.info.name: record.connection for record in self.peers.connected_peers()}
        for name in [n for n in self._loads if n not in connected]:
            del self._loads[name]
        for name, protocol in connected.items():
            d = protocol.callRemote(commands.NodeStatus)
            d.addCallbacks(self._load_reported, lambda f: None, callbackArgs=(name,))

    def _load_reported(self, answer: dict[str, Any], name: str) -> None:
        reported = answer.get("status")
        if not isinstance(reported, dict):
            return
        try:
            self._loads[name] = status.Load(
                running=int(reported["running"]),
                queued=int(reported["queued"]),
                links=tuple(str(link) for link in reported.get("links", []))[:10_000],
            )
        except (KeyError, TypeError, ValueError):
            log.debug("Bad NODE_STATUS answer from {peer}: {answer!r}", peer=name, answer=reported)

    def peers_status(self) -> list[dict[str, Any]]:
        """This node and its peers (see L{status.peers_view})."""
        self._refresh_loads()
        liveness = {}
        for record in self.peers.connected_peers():
            liveness[record.info.name] = self.watchman.liveness(record.connection)
        return status.peers_view(
            self.info,
            self.my_load(),
            list(self.peers),
            liveness,
            self._loads,
            self._reactor.seconds(),
            problem=self.problem(),
        )

    def problem(self) -> str | None:
        """Why this node is not healthy (its journal cannot be written), or C{None}."""
        problem = self.journal.problem
        return None if problem is None else problem.describe()

    def topology_status(self) -> dict[str, Any]:
        """Nodes and links (see L{status.topology_view})."""
        peers = self.peers_status()
        return status.topology_view(peers, self.my_load().links, self._loads)

    def jobs_status(self) -> list[dict[str, Any]]:
        """Every job this node is master of, newest first."""
        now = self._reactor.seconds()
        waiting = self.master.waiting_kinds()
        jobs = sorted(self.master.jobs.values(), key=lambda job: job.started, reverse=True)
        stalled = self.problem()
        return [status.job_summary(job, now, waiting, stalled) for job in jobs]

    def job_status(self, job_id: str) -> dict[str, Any]:
        """One job's summary; raises L{commands.UnknownJob}."""
        job = self._job(job_id)
        return status.job_summary(job, self._reactor.seconds(), self.master.waiting_kinds(), self.problem())

    def job_tasks(self, job_id: str, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """A page of one job's tasks (see L{status.tasks_page}); raises L{commands.UnknownJob}."""
        return status.tasks_page(self._job(job_id), self.master.waiting_kinds(), **filters)

    def _job(self, job_id: str) -> Job:
        job = self.master.jobs.get(job_id)
        if job is None:
            raise commands.UnknownJob(f"node {self.info.name} is not the master of job {job_id!r}")
        return job

    def submit(self, tasks: list[Any], defaults: Any = None, label: str = "submitted job") -> Deferred[str]:
        """
        Accept a job given as job-file task objects (and [defaults]); fire
        with its id once it is in the journal.

        @raise commands.BadJob: naming the task and field at fault.
        @raise commands.ShuttingDown: if the node is leaving.
        @raise commands.JournalUnwritable: if its journal cannot be written
            (the job is then not accepted: nothing of it runs).
        """
        if self.stopping:
            raise commands.ShuttingDown(f"node {self.info.name} is shutting down and takes no new jobs")
        self._check_journal()
        document: dict[str, Any] = {"task": tasks}
        if defaults:
            document["defaults"] = defaults
        try:
            specs = parse_job(document, label=label)
        except JobFileError as e:
            raise commands.BadJob(str(e)) from None
        self._check_journal()
        job = self.master.submit(specs)
        # Written now, not after the group-commit delay: a job that cannot
        # be written is refused, not accepted and left waiting unanswered.
        try:
            self.journal.commit()
        except JournalError as e:
            self.master.withdraw(job.id)
            self._check_journal()
            raise commands.JournalUnwritable(f"node {self.info.name} takes no new job: {e}") from None
        return self.journal.durable().addCallback(lambda _: job.id)

    def _check_journal(self) -> None:
        """
        @raise commands.JournalUnwritable: if the journal cannot be
            written at the moment, saying why.
        """
        problem = self.journal.problem
        if problem is not None:
            log.warn(
                "Node {name} refused a job: {problem}",
                name=self.info.name,
                problem=problem.describe(),
            )
            raise commands.JournalUnwritable(f"node {self.info.name} takes no new job: {problem.describe()}")

    def submit_part(self, protocol: PeerProtocol, tasks: list[Any], defaults: Any, upload: str, final: bool) -> Any:
        """
        SUBMIT_JOB in parts: collect the tasks of an upload (which belongs to
        the connection that started it, and is dropped with it); submit them
        with the last part.  Every part must carry the first part's
        C{defaults} (C{null} and C{{}} alike mean none): a part whose
        defaults differ is refused, and the upload is dropped.
        """
        if upload:
            owner, collected, first_defaults = self._uploads.pop(upload, (None, None, None))
            if collected is None or owner is not protocol:
                raise commands.UnknownUpload(f"node {self.info.name} has no upload {upload!r} on this connection")
            if (defaults or None) != (first_defaults or None):
                raise commands.BadJob(
                    f"upload {upload!r}: this part's defaults differ from its first part's; every part of a job "
                    f"must carry the same defaults (the upload is dropped: send the job again)"
                )
            collected.extend(tasks)
        else:
            collected = list(tasks)
        if not final:
            if len(collected) > 1_000_000:
                raise commands.BadJob("a job holds at most 1,000,000 tasks")
            self._upload_numbers += 1
            upload = f"{self.info.instance[:8]}-{self._upload_numbers}"
            self._uploads[upload] = (protocol, collected, defaults)
            return {"upload": upload, "job": ""}
        return self.submit(collected, defaults).addCallback(lambda job_id: {"upload": "", "job": job_id})

    def node_status(self) -> dict[str, Any]:
        """What this node tells a peer that asks NODE_STATUS."""
        load = self.my_load()
        return {"running": load.running, "queued": load.queued, "links": list(load.links)}

    # -- IPeerHandler -------------------------------------------------------

    def connect_requested(
        self, protocol: PeerProtocol, cluster: str, name: str, instance: str, version: int
    ) -> dict[str, Any]:
        """Accept or refuse a dialling peer (see L{commands.ConnectRequest})."""
        where = protocol.describe()
        if self.stopping:
            raise commands.ShuttingDown(f"node {self.info.name} is shutting down")
        if version != PROTOCOL_VERSION:
            log.warn(
                "Refused a connection from {peer} at {where}: it speaks protocol version {version}, "
                "this node speaks {mine}",
                peer=name,
                where=where,
                version=version,
                mine=PROTOCOL_VERSION,
            )
            raise commands.VersionMismatch(
                f"node {self.info.name} speaks protocol version {PROTOCOL_VERSION}, not {version}"
            )
        if cluster != self.info.cluster:
            log.warn(
                "Refused a connection from {peer} at {where}: it is in cluster {cluster!r}, this node in {mine!r}",
                peer=name,
                where=where,
                cluster=cluster,
                mine=self.info.cluster,
            )
            raise commands.ClusterMismatch(
                f"node {self.info.name} is in cluster {self.info.cluster!r}, not {cluster!r}"
            )
        try:
            validate_name(name, "node name")
        except ValidationError as e:
            raise commands.BadArguments(f"CONNECT_REQUEST: {e}") from None
        if name == self.info.name:
            raise commands.NameConflict(f"this node is called {name!r} too; node names must be unique")
        record = self.peers.get(name)
        if record is not None and record.connection is not None and self.peers.is_connected(name, instance):
            # Keep one connection per pair.  A peer that dials again while we
            # think the old connection lives knows better (it lost it), so the
            # new one wins; but if both sides dialled at once, the one dialled
            # by the lower name wins, on both sides alike.
            if record.connection.dialled and dials(self.info.name, name):
                raise commands.DuplicateConnection(f"node {self.info.name} is already connected to {name}")
        return {"name": self.info.name, "instance": self.info.instance, "version": PROTOCOL_VERSION}

    def handshake_received(self, protocol: PeerProtocol, node: NodeInfo) -> NodeInfo:
        """A dialling peer described itself; we answer with our description."""
        if node.cluster != self.info.cluster:
            raise commands.ClusterMismatch(
                f"node {self.info.name} is in cluster {self.info.cluster!r}, not {node.cluster!r}"
            )
        if node.version != PROTOCOL_VERSION:
            raise commands.VersionMismatch(
                f"node {self.info.name} speaks protocol version {PROTOCOL_VERSION}, not {node.version}"
            )
        return self.info

    def peers_offered(self, protocol: PeerProtocol, peers: list[tuple[NodeInfo, float]]) -> list[dict[str, Any]]:
        """Merge a peer's known peers; answer with ours."""
        for info, age in peers:
            self._heard_of(info, age)
        return self._peers_to_share()

    def assignment_received(
        self, protocol: PeerProtocol, job: str, master: str, master_instance: str, tasks: list[Any]
    ) -> int:
        """Queue a batch of tasks from a connected master."""
        if master != protocol.peer_name or master_instance != protocol.peer_instance:
            raise ValidationError(f"assignment names master {master!r}, but came from {protocol.peer_name!r}")
        assignments = [Assignment.from_wire(task) for task in tasks]
        sink = _RemoteSink(self, master, master_instance)
        return self.worker.accept(sink, job, assignments)

    def confirmation_received(self, protocol: PeerProtocol, job: str, results: list[Any]) -> Deferred[tuple[int, int]]:
        """Apply a worker's batch of results to one of our jobs; answer once they are journaled."""
        parsed = [TaskResult.from_wire(result) for result in results]
        if job not in self.master.jobs:
            raise commands.UnknownJob(f"node {self.info.name} is not the master of job {job!r}")
        assert protocol.peer_name is not None
        counts = self.master.confirm(job, parsed, sender=protocol.peer_name)
        return self.journal.durable().addCallback(lambda _: counts)

    def results_queried(self, protocol: PeerProtocol, job: str, tasks: list[Any]) -> dict[str, list[str]]:
        """A master asks what became of attempts it gave us (after its restart)."""
        attempts = []
        for entry in tasks:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("id"), str)
                and isinstance(entry.get("attempt"), int)
                and not isinstance(entry.get("attempt"), bool)
            ):
                raise ValidationError(f'each task must be {{"id": string, "attempt": integer}}, not {entry!r}')
            attempts.append((entry["id"], entry["attempt"]))
        assert protocol.peer_name is not None
        sink = _RemoteSink(self, protocol.peer_name, protocol.peer_instance or "")
        answer = self.worker.query(sink, job, attempts)
        log.info(
            "Node {name} told master {master} about {count} task(s) of job {job}: {done} done, {running} "
            "running or queued, {unknown} unknown",
            name=self.info.name,
            master=protocol.peer_name,
            count=len(attempts),
            job=job,
            done=len(answer["done"]),
            running=len(answer["running"]),
            unknown=len(answer["unknown"]),
        )
        return answer

    def cancel_requested(self, protocol: PeerProtocol, job: str) -> int:
        """Cancel a job we are master of, or stop our part of a job its master cancelled."""
        if job in self.master.jobs:
            protocol.require_owner("CANCEL_JOB")
            return self.master.cancel(job, by=f"asked by {protocol.peer_name or 'a client at ' + protocol.address()}")
        if protocol.peer_name is not None:
            # From a peer: the job's master, stopping its part here (which
            # may be nothing by now: its tasks here may have finished).
            dropped, stopped = self.worker.cancel(protocol.peer_name, job)
            return dropped + stopped
        raise commands.UnknownJob(
            f"node {self.info.name} is not the master of job {job!r}; send CANCEL_JOB to the node that is"
        )

    def job_completed(self, protocol: PeerProtocol, job: str, succeeded: int, failed: int, elapsed: float) -> None:
        """A master says one of its jobs that we took part in has finished."""
        log.info(
            "Node {name} heard TASK_COMPLETE from master {master}: job {job} finished "
            "({succeeded} succeeded, {failed} failed, {elapsed:.3f}s)",
            name=self.info.name,
            master=protocol.peer_name,
            job=job,
            succeeded=succeeded,
            failed=failed,
            elapsed=elapsed,
        )

    def disconnect_requested(self, protocol: PeerProtocol, reason: str) -> None:
        """A peer says it is leaving: put its work back and stop dialling it."""
        name = protocol.peer_name
        assert name is not None
        log.info("Node {name}: peer {peer} is leaving ({reason})", name=self.info.name, peer=name, reason=reason)
        self.peers.left(name)
        # A graceful leave is not a lost worker: quarantine is for tasks that
        # may be what kills their workers, and this one left in order.
        self.master.worker_lost(name, "left the cluster", count_loss=False)
        self.worker.drop_from((name, protocol.peer_instance or ""))
        self._reactor.callLater(0, self.dialer.stop, name)

    def connection_opened(self, protocol: PeerProtocol) -> bool:
        """Count a new connection by remote address; refuse one over L{MAX_CONNECTIONS_PER_ADDRESS}."""
        host = protocol.address().rsplit(":", 1)[0]
        if self._per_address.get(host, 0) >= MAX_CONNECTIONS_PER_ADDRESS:
            return False
        self._per_address[host] = self._per_address.get(host, 0) + 1
        protocol.counted_address = host
        return True

    def connection_lost(self, protocol: PeerProtocol, reason: Failure) -> None:
        """Forget a closed connection and put back what it carried."""
        host = getattr(protocol, "counted_address", None)
        if host is not None:
            left = self._per_address.get(host, 1) - 1
            if left > 0:
                self._per_address[host] = left
            else:
                self._per_address.pop(host, None)
        for upload in [key for key, (owner, _, _) in self._uploads.items() if owner is protocol]:
            del self._uploads[upload]
        name = protocol.peer_name
        if name is None:
            return
        if not self.peers.disconnected(name, protocol, self._reactor.seconds()):
            return
        if not protocol.leaving and not self.stopping:
            if reason.check(ConnectionDone):
                why = "it closed without DISCONNECT_REQUEST (its process may have ended)"
            else:
                why = reason.getErrorMessage()
            log.warn(
                "Node {name} lost its connection to peer {peer}: {reason}",
                name=self.info.name,
                peer=name,
                reason=why,
            )
        if not self.stopping:
            self.master.worker_lost(name, "lost its connection")
        self.worker.drop_from((name, protocol.peer_instance or ""))

    # -- IWorkerLink --------------------------------------------------------

    def send_assignments(self, worker: str, job: str, assignments: list[Assignment]) -> None:
        """Hand tasks to a worker: ourselves directly, others over AMP."""
        if worker == self.info.name:
            assert self._local_sink is not None
            self.worker.accept(self._local_sink, job, assignments)
            return
        record = self.peers.get(worker)
        if record is None or record.connection is None:
            self.master.worker_lost(worker, "is not connected")
            return
        protocol: PeerProtocol = record.connection
        log.info(
            "Node {name} assigning tasks to peer {peer}",
            name=self.info.name,
            peer=worker,
            job=job,
            count=len(assignments),
        )
        for batch in commands.chunk(assignments, Assignment.to_wire):
            d = protocol.callRemote(
                commands.InstructionAssignment,
                job=job,
                master=self.info.name,
                master_instance=self.info.instance,
                tasks=batch,
            )
            attempts = [(assignment.task.id, assignment.attempt) for assignment in batch.items]
            d.addErrback(self._assignment_refused, worker, job, attempts)

    def _assignment_refused(self, failure: Failure, worker: str, job: str, attempts: list[tuple[str, int]]) -> None:
        """
        A worker refused a batch.  A refusal (it is leaving, or cannot run
        the kind) puts just that batch back and stops assigning to it; a lost
        connection is handled by L{connection_lost}.
        """
        if failure.check(
            commands.ShuttingDown,
            commands.NotCapable,
            commands.BadArguments,
            commands.ConnectRequired,
            amp.RemoteAmpError,
        ):
            self.master.refused(worker, job, attempts, failure.getErrorMessage(), usable=False)
        else:
            log.debug("INSTRUCTION_ASSIGNMENT to {peer} failed: {error}", peer=worker, error=failure.getErrorMessage())

    def query_tasks(self, worker: str, job: str, attempts: list[tuple[str, int]]) -> Deferred[dict[str, Any]]:
        """Ask C{worker} what became of these attempts (RESULT_QUERY, in chunks; the master checks the answer)."""
        record = self.peers.get(worker)
        if record is None or record.connection is None:
            return fail(ConnectionError(f"worker {worker} is not connected"))
        protocol: PeerProtocol = record.connection
        asked = [
            protocol.callRemote(commands.ResultQuery, job=job, tasks=batch)
            for batch in commands.chunk([{"id": t, "attempt": a} for t, a in attempts], lambda entry: entry)
        ]

        def merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
            # The chunks' lists joined, as they came: the master judges them
            # (a value that is not a list is kept, so that it is named).
            merged: dict[str, Any] = {"done": [], "running": [], "unknown": []}
            for answer in answers:
                for key in list(merged):
                    value = answer.get(key)
                    if isinstance(merged[key], list) and isinstance(value, list):
                        merged[key].extend(value)
                    elif isinstance(merged[key], list):
                        merged[key] = value
            return merged

        return gatherResults(asked, consumeErrors=True).addCallback(merge)

    def send_cancel(self, worker: str, job: str) -> None:
        """Tell C{worker} (perhaps this node) to stop every task of C{job} it holds."""
        if worker == self.info.name:
            self.worker.cancel(self.info.name, job)
            return
        record = self.peers.get(worker)
        if record is None or record.connection is None:
            self._owe_cancel(worker, job, "not connected")
            return

        def failed(failure: Failure) -> None:
            if failure.check(ConnectionDone, ConnectionLost):
                # The connection was closing already: tell it on the next one.
                self._owe_cancel(worker, job, "its connection closed")
            else:
                log.warn("CANCEL_JOB to {worker} failed: {error}", worker=worker, error=failure.getErrorMessage())

        record.connection.callRemote(commands.CancelJob, job=job).addErrback(failed)

    def _owe_cancel(self, worker: str, job: str, why: str) -> None:
        """Remember to tell C{worker} that C{job} is cancelled once it connects again."""
        owed = self._cancels_owed.setdefault(worker, {})
        owed[job] = None
        while len(owed) > MAX_CANCELS_OWED:
            del owed[next(iter(owed))]
        log.warn(
            "Node {name} could not tell {worker} to stop job {job} yet: {why}; it will be told when it "
            "connects again, and its results are dropped meanwhile",
            name=self.info.name,
            worker=worker,
            job=job,
            why=why,
        )

    def send_complete(self, worker: str, job: Job) -> None:
        """Tell a worker that took part that C{job} is finished."""
        record = self.peers.get(worker)
        if record is None or record.connection is None:
            return
        d = record.connection.callRemote(
            commands.TaskComplete,
            job=job.id,
            succeeded=job.succeeded,
            failed=job.failed,
            elapsed=job.elapsed(self._reactor.seconds()),
        )
        d.addErrback(
            lambda f: log.debug("TASK_COMPLETE to {peer} failed: {error}", peer=worker, error=f.getErrorMessage())
        )

    def _send_confirmations(self, master: tuple[str, str], job: str, results: list[TaskResult]) -> None:
        # To whichever process is master {name} now: one restarted with its
        # journal knows the job; any other answers UNKNOWN_JOB.
        name, _ = master
        record = self.peers.get(name)
        if record is None or record.connection is None:
            log.info(
                "Node {name} could not confirm {count} result(s) of job {job}: master {master} is not "
                "connected. Finished ones are kept: a master restarted with its journal asks for them; "
                "otherwise it runs those tasks again",
                name=self.info.name,
                count=len(results),
                job=job,
                master=name,
            )
            return
        protocol: PeerProtocol = record.connection
        for batch in commands.chunk(results, TaskResult.to_wire, encode=commands.encode_result_within):
            d = protocol.callRemote(commands.ExecutionConfirmation, job=job, results=batch)
            d.addCallback(self._acknowledged, name, job, list(batch.items))
            self._in_flight.add(d)
            self._confirming[name] = self._confirming.get(name, 0) + 1
            d.addBoth(_discard_from, self._in_flight, d)
            d.addBoth(self._confirmed, name)
            d.addErrback(
                lambda f: log.warn(
                    "EXECUTION_CONFIRMATION to {master} failed: {error}", master=name, error=f.getErrorMessage()
                )
            )

    def _acknowledged(self, answer: Any, master: str, job: str, results: list[TaskResult]) -> Any:
        """The master has these results for good: the worker may forget them."""
        self.worker.acknowledged(master, job, results)
        return answer

    def _confirmed(self, result: Any, master: str) -> Any:
        """An EXECUTION_CONFIRMATION to C{master} was answered (or failed)."""
        left = self._confirming.get(master, 1) - 1
        if left > 0:
            self._confirming[master] = left
        else:
            self._confirming.pop(master, None)
        return result

    # -- IJobObserver -------------------------------------------------------

    def job_finished(self, job: Job) -> None:
        """Write the results file of the start-up job, and fire L{initial_job}."""
        if job.id != self._initial_job_id:
            return
        if self.config.results is not None:
            try:
                write_results(self.config.results, job.report(self._reactor.seconds()))
            except OSError as e:
                log.error(
                    "Could not write the results of job {job} to {path}: {error}",
                    job=job.id,
                    path=self.config.results,
                    error=e,
                )
            else:
                log.info(
                    "Node {name} wrote the results of job {job} to {path}",
                    name=self.info.name,
                    job=job.id,
                    path=self.config.results,
                )
        if not self.initial_job.called:
            self.initial_job.callback(job)


def _discard_from(result: Any, pending: set[Deferred[Any]], d: Deferred[Any]) -> Any:
    pending.discard(d)
    return result


async def _bounded(d: Deferred[Any], timeout: float, clock: Any) -> None:
    try:
        await d.addTimeout(timeout, clock)
    except TimeoutError:
        pass
