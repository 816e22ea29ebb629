"""
The node's answers to its peers and clients: the L{IPeerHandler} behind
every L{p2pexec.peer.PeerProtocol}.

L{PeerProtocol} parses a box and calls L{Responders}; L{Responders} decides
what it means for the node (admit a peer, queue assignments, apply results,
cancel, put work back when a peer leaves or its connection closes) and hands
the work to the part that does it: the peer table, master, worker, gossip,
outbox, intake or views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.auth import ChallengeResponse
from p2pexec.connection_states import (
    MAX_CONNECTIONS_PER_ADDRESS,
    Compatibility,
    Duplicate,
    compatibility,
    resolve_duplicate,
)
from p2pexec.failover import Deposed
from p2pexec.fence import ballot_of, held_to_wire
from p2pexec.log import NodeLogger
from p2pexec.membership import Change
from p2pexec.model import PROTOCOL_VERSION, Assignment, NodeInfo, TaskResult, ValidationError, validate_name
from p2pexec.replicas import Ballot
from p2pexec.reruns import StillRunning

if TYPE_CHECKING:
    from p2pexec.config import NodeConfig
    from p2pexec.connections import Dialer
    from p2pexec.failover import Replication
    from p2pexec.file_service import FileService
    from p2pexec.gossip import Gossip
    from p2pexec.intake import Intake
    from p2pexec.interfaces import IClientFollowing, IJournal, INode, INodeViews
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.outbox import Outbox
    from p2pexec.peer import PeerProtocol
    from p2pexec.task_output import TaskOutputs
    from p2pexec.tls import TLSConfig
    from p2pexec.worker import Worker

log = NodeLogger()


class Responders:
    """
    The node's side of every connection (an L{IPeerHandler}).

    @ivar challenge: with a cluster key, how a connection proves it.
    @ivar local_challenge: without a key, how a client proves the local
        token (AUTHENTICATE), to submit and cancel.
    @ivar tls: the node's TLS configuration, with C{--tls}.
    @ivar reconnects: connections to a peer opened again after an earlier one closed.
    @ivar following: how a client's question about a job this node does not
        lead is answered (set by the node's wiring, L{p2pexec.node}).
    @ivar files: how the file commands are answered (issue 16; set by the
        node's wiring); C{None}: this node moves no files.
    """

    following: IClientFollowing
    task_outputs: TaskOutputs
    files: FileService | None = None

    def __init__(self, config: NodeConfig, clock: IReactorTime) -> None:
        self._clock = clock
        self.challenge = ChallengeResponse(config.key) if config.key is not None else None
        self.local_challenge = (
            ChallengeResponse(config.local_token) if config.key is None and config.local_token is not None else None
        )
        self.tls: TLSConfig | None = config.tls
        self.reconnects = 0
        self._ever_connected: set[str] = set()
        self._per_address: dict[str, int] = {}

    def wire(
        self,
        node: INode,
        peers: PeerTable,
        master: Master,
        worker: Worker,
        journal: IJournal,
        dialer: Dialer,
        gossip: Gossip,
        outbox: Outbox,
        intake: Intake,
        views: INodeViews,
        replication: Replication,
    ) -> None:
        """Connect the responders to the parts they hand the work to."""
        self._replication = replication
        self._node = node
        self._peers = peers
        self._master = master
        self._worker = worker
        self._journal = journal
        self._dialer = dialer
        self._gossip = gossip
        self._outbox = outbox
        self._intake = intake
        self._views = views

    # -- connections -------------------------------------------------------------

    def introduce(self, protocol: PeerProtocol, info: NodeInfo | None) -> Any:
        """Introduce this node on a connection it dialled (to C{info}, or to a seed)."""
        return protocol.introduce(self._node.info, expected=info.name if info is not None else None)

    def connection_opened(self, protocol: PeerProtocol) -> bool:
        """Count a new connection by remote address; refuse one over L{MAX_CONNECTIONS_PER_ADDRESS}."""
        host = _host(protocol)
        if self._per_address.get(host, 0) >= MAX_CONNECTIONS_PER_ADDRESS:
            return False
        self._per_address[host] = self._per_address.get(host, 0) + 1
        return True

    def connection_released(self, protocol: PeerProtocol) -> None:
        """A connection counted by L{connection_opened} is gone: count one fewer under its address."""
        host = _host(protocol)
        left = self._per_address.get(host, 1) - 1
        if left > 0:
            self._per_address[host] = left
        else:
            self._per_address.pop(host, None)

    def connect_requested(
        self, protocol: PeerProtocol, cluster: str, name: str, instance: str, version: int
    ) -> dict[str, Any]:
        """Accept or refuse a dialling peer (see L{commands.ConnectRequest})."""
        me = self._node.info
        where = protocol.describe()
        if self._node.stopping:
            raise commands.ShuttingDown(f"node {me.name} is shutting down")
        verdict = compatibility(me.cluster, PROTOCOL_VERSION, cluster, version)
        if verdict is Compatibility.OTHER_VERSION:
            log.warn(
                "Refused a connection from {peer} at {where}: it speaks protocol version {version}, "
                "this node speaks {mine}",
                peer=name,
                where=where,
                version=version,
                mine=PROTOCOL_VERSION,
            )
            raise commands.VersionMismatch(f"node {me.name} speaks protocol version {PROTOCOL_VERSION}, not {version}")
        if verdict is Compatibility.OTHER_CLUSTER:
            log.warn(
                "Refused a connection from {peer} at {where}: it is in cluster {cluster!r}, this node in {mine!r}",
                peer=name,
                where=where,
                cluster=cluster,
                mine=me.cluster,
            )
            raise commands.ClusterMismatch(f"node {me.name} is in cluster {me.cluster!r}, not {cluster!r}")
        try:
            validate_name(name, "node name")
        except ValidationError as e:
            raise commands.BadArguments(f"CONNECT_REQUEST: {e}") from None
        if name == me.name:
            if instance == me.instance and protocol.transport is not None:
                # One of this node's seed addresses leads to itself: stop dialling it.
                remote: Any = protocol.transport.getPeer()
                self._dialer.dialled_self((remote.host, remote.port))
            raise commands.NameConflict(f"this node is called {name!r} too; node names must be unique")
        record = self._peers.get(name)
        if record is not None and record.connection is not None:
            # Keep one connection per pair (see resolve_duplicate): refuse
            # this one early if it would lose once its handshake completes.
            same_process = self._peers.is_connected(name, instance)
            decided = resolve_duplicate(me.name, name, same_process, record.connection.dialled, new_dialled=False)
            if decided is Duplicate.KEEP_OLD:
                raise commands.DuplicateConnection(f"node {me.name} is already connected to {name}")
        return {"name": me.name, "instance": me.instance, "version": PROTOCOL_VERSION}

    def handshake_received(self, protocol: PeerProtocol, node: NodeInfo) -> NodeInfo:
        """A dialling peer described itself; we answer with our description."""
        me = self._node.info
        verdict = compatibility(me.cluster, PROTOCOL_VERSION, node.cluster, node.version)
        if verdict is Compatibility.OTHER_VERSION:
            raise commands.VersionMismatch(
                f"node {me.name} speaks protocol version {PROTOCOL_VERSION}, not {node.version}"
            )
        if verdict is Compatibility.OTHER_CLUSTER:
            raise commands.ClusterMismatch(f"node {me.name} is in cluster {me.cluster!r}, not {node.cluster!r}")
        return me

    def connection_ready(self, protocol: PeerProtocol, info: NodeInfo) -> None:
        """A handshake completed: record the connection and offer the peer work."""
        me = self._node.info.name
        old = self._peers.get(info.name)
        if old is not None and old.connection is not None and old.connection is not protocol:
            decided = resolve_duplicate(
                me, info.name, old.info.instance == info.instance, old.connection.dialled, protocol.dialled
            )
            if decided is Duplicate.KEEP_OLD:
                # Both sides dialled at once: the other connection stays, on
                # both sides alike; close this one (it carried nothing yet).
                log.debug("Node {name} keeps its other connection to {peer}", name=me, peer=info.name)
                _close(protocol)
                return
            log.info("Node {name} replaces its connection to {peer}", name=me, peer=info.name)
            if decided is Duplicate.REPLACE_MOVED:
                # The same process holds its tasks, but what was in flight on
                # the old connection may be lost with it: hand it out again,
                # without counting it towards quarantine.
                self._master.worker_lost(info.name, "moved to a new connection", count_loss=False)
            else:
                self._master.worker_lost(info.name, "was replaced by a new connection")
            _close(old.connection)
        if info.name in self._ever_connected:
            self.reconnects += 1
        self._ever_connected.add(info.name)
        change = self._peers.connected(info, protocol, self._clock.seconds())
        if change is Change.NEW:
            log.info("Node {name} discovered peer {peer}", name=me, peer=info.name, address=info.address)
        log.info(
            "Node {name} connected to peer {peer} at {address} (capabilities: {capabilities}; slots: {slots})",
            name=me,
            peer=info.name,
            address=info.address,
            capabilities=",".join(info.capabilities) or "none",
            slots=info.slots,
        )
        if info.capabilities:
            self._master.worker_joined(info)
        # A master back in the same process put back its tasks itself: its queued ones here go.
        self._worker.drop_from((info.name, info.instance), lease=False)
        self._outbox.pay_owed(info.name)
        self._replication.peer_connected(info.name)
        if protocol.dialled:
            self._gossip.exchange_peers(protocol)

    def peers_offered(self, protocol: PeerProtocol, peers: list[tuple[NodeInfo, float]]) -> list[dict[str, Any]]:
        """Merge a peer's known peers; answer with ours."""
        return self._gossip.peers_offered(peers)

    def disconnect_requested(self, protocol: PeerProtocol, reason: str) -> None:
        """A peer says it is leaving: put its work back and stop dialling it."""
        name = protocol.peer_name
        assert name is not None
        log.info("Node {name}: peer {peer} is leaving ({reason})", name=self._node.info.name, peer=name, reason=reason)
        self._peers.left(name)
        # A graceful leave is not a lost worker: quarantine is for tasks that
        # may be what kills their workers, and this one left in order.
        self._master.worker_lost(name, "left the cluster", count_loss=False)
        self._worker.drop_from((name, protocol.peer_instance or ""))
        self._clock.callLater(0, self._dialer.stop, name)

    def connection_lost(self, protocol: PeerProtocol, reason: Failure) -> None:
        """Forget a closed connection and put back what it carried."""
        self._intake.drop_uploads(protocol)
        name = protocol.peer_name
        if name is None:
            return
        if not self._peers.disconnected(name, protocol, self._clock.seconds()):
            return
        stopping = self._node.stopping
        if not protocol.leaving and not stopping:
            if reason.check(ConnectionDone):
                why = "it closed without DISCONNECT_REQUEST (its process may have ended)"
            else:
                why = reason.getErrorMessage()
            log.warn(
                "Node {name} lost its connection to peer {peer}: {reason}",
                name=self._node.info.name,
                peer=name,
                reason=why,
            )
        if not stopping:
            self._master.worker_lost(name, "lost its connection")
            self._replication.peer_lost(name)
        self._worker.drop_from((name, protocol.peer_instance or ""))

    # -- work ----------------------------------------------------------------------

    def assignment_received(
        self, protocol: PeerProtocol, job: str, master: str, master_instance: str, tasks: list[Any], epoch: int | None
    ) -> int:
        """Queue a batch of tasks from a connected master (refused if a newer ballot was seen for C{job})."""
        if master != protocol.peer_name or master_instance != protocol.peer_instance:
            raise ValidationError(f"assignment names master {master!r}, but came from {protocol.peer_name!r}")
        assignments = [Assignment.from_wire(task) for task in tasks]
        sink = self._outbox.sink_for(master, master_instance)
        ballot = ballot_of(epoch, master)
        accepted = self._worker.accept(sink, job, assignments, ballot)
        # The master of an assignment this worker took leads its job at that
        # epoch: clients of this node are forwarded there (p2pexec.following).
        self._replication.directory.learn(job, ballot)
        return accepted

    def confirmation_received(
        self, protocol: PeerProtocol, job: str, results: list[Any]
    ) -> Deferred[tuple[int, int, int]]:
        """
        Apply a worker's batch of results to one of our jobs; answer (applied,
        stale, the epoch this node leads the job at) once they are committed.
        """
        parsed = [TaskResult.from_wire(result) for result in results]
        if job not in self._master.jobs:
            raise commands.UnknownJob(f"node {self._node.info.name} is not the master of job {job!r}")
        assert protocol.peer_name is not None
        applied, stale = self._master.confirm(job, parsed, sender=protocol.peer_name)
        counts = (applied, stale, self._master.epoch_of(job))
        name = self._node.info.name

        def deposed(failure: Failure) -> Any:
            failure.trap(Deposed)
            raise commands.UnknownJob(f"node {name} no longer leads job {job!r}: {failure.getErrorMessage()}")

        # Answered once committed (journaled, and held by a majority of the job's replicas).
        return self._master.durable(job).addCallbacks(lambda _: counts, deposed)

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
        sink = self._outbox.sink_for(protocol.peer_name, protocol.peer_instance or "")
        answer = self._worker.query(sink, job, attempts)
        log.info(
            "Node {name} told master {master} about {count} task(s) of job {job}: {done} done, {running} "
            "running or queued, {unknown} unknown",
            name=self._node.info.name,
            master=protocol.peer_name,
            count=len(attempts),
            job=job,
            done=len(answer["done"]),
            running=len(answer["running"]),
            unknown=len(answer["unknown"]),
        )
        return answer

    def cancel_requested(self, protocol: PeerProtocol, job: str, epoch: int | None = None) -> int:
        """Cancel a job we are master of, or stop our part of a job its master cancelled."""
        if job in self._master.jobs:
            protocol.require_owner("CANCEL_JOB")
            return self._master.cancel(job, by=f"asked by {protocol.peer_name or 'a client at ' + protocol.address()}")
        if protocol.peer_name is not None:
            # From a peer: the job's master, stopping its part here (which
            # may be nothing by now: its tasks here may have finished).
            dropped, stopped = self._worker.cancel(protocol.peer_name, job, ballot_of(epoch, protocol.peer_name))
            return dropped + stopped
        raise commands.UnknownJob(
            f"node {self._node.info.name} is not the master of job {job!r}; send CANCEL_JOB to the node that is"
        )

    def rerun_requested(self, protocol: PeerProtocol, job: str, which: str) -> Deferred[dict[str, Any]]:
        """Run again the tasks of a finished job we are master of (RERUN_TASKS); answered once committed."""
        name = self._node.info.name
        if job not in self._master.jobs:
            raise commands.UnknownJob(f"node {name} is not the master of job {job!r} and knows no such job")
        protocol.require_owner("RERUN_TASKS")
        try:
            again = self._master.rerun(
                job, which, by=f"asked by {protocol.peer_name or 'a client at ' + protocol.address()}"
            )
        except StillRunning as e:
            raise commands.JobRunning(str(e)) from None
        answer: dict[str, Any] = {"count": len(again), "tasks": next(commands.chunk(again, lambda task: task), [])}

        def deposed(failure: Failure) -> Any:
            failure.trap(Deposed)
            raise commands.UnknownJob(f"node {name} no longer leads job {job!r}: {failure.getErrorMessage()}")

        return self._master.durable(job).addCallbacks(lambda _: answer, deposed)

    def attempts_cancel_requested(
        self, protocol: PeerProtocol, job: str, attempts: set[tuple[str, int]], epoch: int | None = None
    ) -> int:
        """A job's master stops the losing copies of tasks that ran twice (CANCEL_ATTEMPTS)."""
        assert protocol.peer_name is not None
        dropped, stopped = self._worker.cancel(protocol.peer_name, job, ballot_of(epoch, protocol.peer_name), attempts)
        return dropped + stopped

    def held_tasks_queried(self, protocol: PeerProtocol, job: str, epoch: int) -> dict[str, Any]:
        """A job's new leader asks what we hold of it (HELD_TASKS): it adopts our part of the job."""
        assert protocol.peer_name is not None
        answer = held_to_wire(self._worker.held(job, Ballot(epoch, protocol.peer_name)))
        log.info(
            "Node {name} told {leader}, leader of job {job} at epoch {epoch}, that it holds {running} of its "
            "task(s) and {finished} unacknowledged result(s)",
            name=self._node.info.name,
            leader=protocol.peer_name,
            job=job,
            epoch=epoch,
            running=len(answer["running"]),
            finished=len(answer["finished"]),
        )
        return answer

    def job_completed(self, protocol: PeerProtocol, job: str, succeeded: int, failed: int, elapsed: float) -> None:
        """A master says one of its jobs that we took part in has finished."""
        log.info(
            "Node {name} heard TASK_COMPLETE from master {master}: job {job} finished "
            "({succeeded} succeeded, {failed} failed, {elapsed:.3f}s)",
            name=self._node.info.name,
            master=protocol.peer_name,
            job=job,
            succeeded=succeeded,
            failed=failed,
            elapsed=elapsed,
        )

    # -- replication and failover (see p2pexec.failover) ---------------------------------

    def replicate_received(
        self, protocol: PeerProtocol, job: str, ballot: Ballot, first_seq: int, records: bytes, last_seq: int | None
    ) -> Deferred[int]:
        """REPLICATE: store a job's records as its replica; answer once durable with the highest seq held."""
        assert protocol.peer_name is not None
        return self._replication.replicate(protocol.peer_name, job, ballot, first_seq, records, last_seq)

    def promise_requested(self, protocol: PeerProtocol, job: str, ballot: Ballot, after: int) -> Deferred[Any]:
        """PROMISE: promise a successor's ballot for a job; answer with the records held beyond C{after}."""
        return self._replication.promise(job, ballot, after)

    def pre_promise_requested(self, protocol: PeerProtocol, job: str, ballot: Ballot) -> Ballot | None:
        """PRE_PROMISE: whether this node would promise a successor's ballot (C{None}), or the leader it still has."""
        assert protocol.peer_name is not None
        return self._replication.pre_promise(protocol.peer_name, job, ballot)

    def leader_announced(self, protocol: PeerProtocol, job: str, ballot: Ballot, master: str) -> None:
        """JOB_LEADER: C{master} leads C{job} at C{ballot} now."""
        if master != ballot.node:
            raise ValidationError(f"JOB_LEADER names master {master!r} but a ballot of {ballot.node!r}")
        log.info(
            "Node {name} heard that {master} leads job {job} at epoch {epoch}",
            name=self._node.info.name,
            master=master,
            job=job,
            epoch=ballot.epoch,
        )
        # The worker's fence rises: the older masters' assignments and cancels
        # are refused from now on.  Which master gets its results is decided by
        # HELD_TASKS (the adoption), not here: a result reaching the new leader
        # before it adopted the job names an attempt it does not know, would be
        # dropped as stale but acknowledged, so the worker would forget it and
        # the task would run again.
        self._worker.fence.admits(job, ballot)
        self._replication.leader_announced(job, ballot)

    def submit_part(
        self, protocol: PeerProtocol, tasks: list[Any], defaults: Any, upload: str, final: bool, priority: int | None
    ) -> Any:
        """A part of a submitted job: the intake collects it (see L{p2pexec.intake.Intake.submit_part})."""
        return self._intake.submit_part(protocol, tasks, defaults, upload, final, priority)

    # -- status: the views answer --------------------------------------------------

    def jobs_status(self) -> list[dict[str, Any]]:
        """Summaries of the jobs this node is master of (LIST_JOBS)."""
        return self._views.jobs_status()

    def job_status(self, job_id: str) -> dict[str, Any]:
        """One job's summary (JOB_STATUS)."""
        return self._views.job_status(job_id)

    def job_tasks(self, job_id: str, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """A page of one job's tasks (JOB_TASKS)."""
        return self._views.job_tasks(job_id, **filters)

    def peers_status(self) -> list[dict[str, Any]]:
        """This node, then its peers (CLUSTER_STATUS)."""
        return self._views.peers_status()

    def node_status(self) -> dict[str, Any]:
        """This node's load and links (NODE_STATUS)."""
        return self._views.node_status()


def _host(protocol: PeerProtocol) -> str:
    """The remote address a connection is counted under (its host, without the port)."""
    return protocol.address().rsplit(":", 1)[0]


def _close(protocol: PeerProtocol) -> None:
    if protocol.transport is not None:
        protocol.transport.loseConnection()
