"""
What a node shows: the read side for the HTTP API, the metrics and the AMP
status commands (L{INodeViews}).

L{Views} reads the node's parts and shapes what it reads with
L{p2pexec.status}; it changes nothing but its cache of the peers' loads,
which it refreshes (NODE_STATUS) at most once a second while someone looks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from p2pexec import commands, status
from p2pexec.log import NodeLogger

if TYPE_CHECKING:
    from p2pexec.discovery import DiscoveryProtocol
    from p2pexec.file_parts import NodeFiles
    from p2pexec.gossip import LivenessChecks
    from p2pexec.interfaces import IJournal, INode
    from p2pexec.job import Job
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.model import TaskResult
    from p2pexec.responders import Responders
    from p2pexec.worker import Worker

log = NodeLogger()

LOAD_REFRESH = 1.0
"""Seconds between asking the connected peers for their load, while someone looks."""

COUNTERS = (
    "assignments_sent",
    "stale_results",
    "retries",
    "quarantined",
    "reconnects",
    "datagrams_received",
    "worker_tasks_completed",
    "results_answered_from_cache",
    "worker_running",
    "worker_queued",
    "worker_slots",
)
"""The names L{Views.counters} gives figures for."""


class Views:
    """The node's status, as its operators and peers are shown it."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._loads: dict[str, status.Load] = {}
        self._loads_asked = float("-inf")
        self.files: NodeFiles | None = None
        """The node's file parts (issue 16), whose counters the status and metrics show; C{None}: no files."""

    def wire(
        self,
        node: INode,
        peers: PeerTable,
        master: Master,
        worker: Worker,
        journal: IJournal,
        liveness: LivenessChecks,
        discovery: DiscoveryProtocol,
        responders: Responders,
    ) -> None:
        """Connect the views to every part they read."""
        self._node = node
        self._peers = peers
        self._master = master
        self._worker = worker
        self._journal = journal
        self._liveness = liveness
        self._discovery = discovery
        self._responders = responders

    def my_load(self) -> status.Load:
        """This node's running and queued tasks and its live connections."""
        return status.Load(
            running=self._worker.running,
            queued=self._worker.queued,
            links=tuple(sorted(record.info.name for record in self._peers.connected_peers())),
        )

    def _refresh_loads(self) -> None:
        """Ask every connected peer for NODE_STATUS, at most once per L{LOAD_REFRESH} seconds."""
        now = self._clock.seconds()
        if now - self._loads_asked < LOAD_REFRESH:
            return
        self._loads_asked = now
        connected = {
            record.info.name: record.connection
            for record in self._peers.connected_peers()
            if record.connection is not None
        }
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
        for record in self._peers.connected_peers():
            if record.connection is not None:
                liveness[record.info.name] = self._liveness.liveness(record.connection)
        entries = status.peers_view(
            self._node.info,
            self.my_load(),
            list(self._peers),
            liveness,
            self._loads,
            self._clock.seconds(),
            problem=self.problem(),
        )
        if self.files is not None:
            entries[0]["transfers"] = self.files.figures()
        return entries

    def problem(self) -> str | None:
        """Why this node is not healthy (its journal cannot be written), or C{None}."""
        problem = self._journal.problem
        return None if problem is None else problem.describe()

    def topology_status(self) -> dict[str, Any]:
        """Nodes and links (see L{status.topology_view})."""
        peers = self.peers_status()
        return status.topology_view(peers, self.my_load().links, self._loads)

    def jobs_status(self) -> list[dict[str, Any]]:
        """Every job this node is master of, newest first."""
        now = self._clock.seconds()
        waiting = self._master.waiting_kinds()
        jobs = sorted(self._master.jobs.values(), key=lambda job: job.started, reverse=True)
        stalled = self.problem()
        me = self._node.info.name
        return [status.job_summary(job, now, waiting, stalled, master=me, epoch=self.epoch_of(job)) for job in jobs]

    def job_status(self, job_id: str) -> dict[str, Any]:
        """One job's summary; raises L{commands.UnknownJob}."""
        job = self._job(job_id)
        return status.job_summary(
            job,
            self._clock.seconds(),
            self._master.waiting_kinds(),
            self.problem(),
            master=self._node.info.name,
            epoch=self.epoch_of(job),
        )

    def leads(self, job_id: str) -> bool:
        """Whether this node is the master of C{job_id} (it answers for it itself)."""
        return job_id in self._master.jobs

    def epoch_of(self, job: Job) -> int:
        """
        The epoch this node leads C{job} in: 1, the original master's, until
        another node takes it over (see L{p2pexec.failover}).
        """
        return self._master.epoch_of(job.id)

    def job_tasks(self, job_id: str, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """A page of one job's tasks (see L{status.tasks_page}); raises L{commands.UnknownJob}."""
        return status.tasks_page(self._job(job_id), self._master.waiting_kinds(), **filters)

    def _job(self, job_id: str) -> Job:
        job = self._master.jobs.get(job_id)
        if job is None:
            raise commands.UnknownJob(f"node {self._node.info.name} is not the master of job {job_id!r}")
        return job

    def node_status(self) -> dict[str, Any]:
        """What this node tells a peer that asks NODE_STATUS."""
        load = self.my_load()
        return {"running": load.running, "queued": load.queued, "links": list(load.links)}

    def counters(self) -> dict[str, int]:
        """The node's counters and gauges for the metrics, by the names of L{COUNTERS}."""
        master, worker = self._master, self._worker
        return {
            "assignments_sent": master.assignments_sent,
            "stale_results": master.stale_results,
            "retries": master.retries_scheduled,
            "quarantined": master.quarantined,
            "reconnects": self._responders.reconnects,
            "datagrams_received": self._discovery.received,
            "worker_tasks_completed": worker.completed,
            "results_answered_from_cache": worker.answered_from_cache,
            "worker_running": worker.running,
            "worker_queued": worker.queued,
            "worker_slots": worker.slots,
        } | self.transfer_figures()

    def transfer_figures(self) -> dict[str, int]:
        """The file counters and cache gauges, as C{transfer_NAME} (none for a node that moves no files)."""
        files = self.files
        return {} if files is None else {f"transfer_{name}": value for name, value in files.figures().items()}

    def datagrams_rejected(self) -> dict[str, int]:
        """Discovery datagrams dropped, by reason."""
        return dict(self._discovery.rejected)

    def on_result(self, listener: Callable[[TaskResult], None]) -> None:
        """Call C{listener} with every result applied to a task of this node's jobs."""
        self._master.result_listeners.append(listener)
