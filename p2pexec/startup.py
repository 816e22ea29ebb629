"""
The job a node is started with (C{--tasks} or C{--job}), and the jobs its
journal says it had not finished: taken up at start, resumed rather than run
twice, and reported (results file, L{StartupJob.initial_job}) once done.

With C{--replicas K} the start-up job is accepted and dispatched at once,
but its replica set is chosen only once K peers are connected, or
L{STARTUP_SETTLE} seconds after the node began, or when the job ends,
whichever comes first (a replica set is chosen among the connected peers,
and at start none is yet); only then are its records replicated, and until
they are committed nothing of the job is acknowledged (the workers'
confirmations wait; their slots do not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2pexec.clock import WallClock
from p2pexec.log import NodeLogger
from p2pexec.results import write_results

if TYPE_CHECKING:
    from p2pexec.config import NodeConfig
    from p2pexec.file_holds import JobFiles
    from p2pexec.interfaces import IJournal, INode
    from p2pexec.job import Job
    from p2pexec.master import Master
    from p2pexec.membership import PeerTable
    from p2pexec.model import NodeInfo

log = NodeLogger()

STARTUP_SETTLE = 2.0
"""Seconds a node started with a job and C{--replicas K} waits for K peers before it chooses the job's replica set anyway."""


def announce(info: NodeInfo, config: NodeConfig) -> None:
    """Say, in the log, that the node started: where it listens, what it runs, how it discovers."""
    log.info(
        "Node {name} started on port {port}",
        name=info.name,
        port=info.port,
        interface=config.interface,
        cluster=config.cluster,
        capabilities=",".join(info.capabilities),
        slots=info.slots,
        instance=info.instance,
    )
    log.info(
        "Node {name}: cluster {cluster!r}, runs {capabilities} with {slots} slot(s), "
        "listens on {interface}:{port}, discovers on {group} (instance {instance})",
        name=info.name,
        cluster=info.cluster,
        capabilities=", ".join(info.capabilities) or "no task kinds",
        slots=info.slots,
        interface=config.interface,
        port=info.port,
        group="%s:%d" % config.group if config.multicast else "nothing (multicast off)",
        instance=info.instance,
    )


class StartupJob:
    """
    The start-up job, and the master's L{IJobObserver}.

    @ivar initial_job: fires with the start-up job once it finishes.
    @ivar job_id: the start-up job's id, once it is known.
    """

    def __init__(self, config: NodeConfig, clock: IReactorTime, wall: WallClock = time.time) -> None:
        self._config = config
        self._clock = clock
        self._wall = wall
        self.initial_job: Deferred[Job] = Deferred()
        self.job_id: str | None = None
        self._settle: IDelayedCall | None = None
        self.forgotten_listeners: list[Callable[[list[str]], None]] = []
        """Called with the ids of the jobs L{prune} deleted from the journal (their files are released)."""
        self.replicas_forgotten_listeners: list[Callable[[list[str]], None]] = []
        """Called with the jobs whose replicated logs L{prune} deleted (the files held for them are released)."""
        self.files: JobFiles | None = None
        """The master's side of task files: the start-up job's inputs are copied into the store (issue 16)."""

    def wire(self, node: INode, master: Master, journal: IJournal, peers: PeerTable | None = None) -> None:
        """
        Connect it to its node, the master that runs the jobs, the journal
        that has the old ones, and the peer table (who is connected).
        """
        self._node = node
        self._master = master
        self._journal = journal
        self._peers = peers

    def _connected(self) -> int:
        return 0 if self._peers is None else len(self._peers.connected_peers())

    def peer_connected(self, name: str) -> None:
        """A peer connected: choose the start-up job's replica set once C{--replicas} peers are."""
        if self._settle is not None and self._connected() >= self._config.replicas:
            self._place()

    def prune(self) -> None:
        """
        Delete from the journal the jobs, and the replicated logs of jobs,
        that ended longer ago than the retention (by the wall clock: the
        reactor's time means nothing across restarts).  Run at start, before
        the replicated logs are read.
        """
        name = self._node.info.name
        before = self._wall() - self._config.journal_retention
        pruned = self._journal.prune(before)
        if pruned:
            log.info("Node {name} pruned {count} finished job(s) from its journal", name=name, count=pruned)
            for listener in self.forgotten_listeners:
                listener(self._journal.last_pruned())
        logs = self._journal.prune_replicas(before)
        if logs:
            log.info(
                "Node {name} pruned the replicated logs of {count} finished job(s) from its journal",
                name=name,
                count=logs,
            )
            for listener in self.replicas_forgotten_listeners:
                listener(list(self._journal.replicas_pruned))

    def begin(self) -> None:
        """Resume the journal's unfinished jobs; submit the start-up job unless it is one of them, or finished."""
        self._resume_jobs()
        config = self._config
        if config.tasks is None or self.job_id is not None or self._finished_already():
            return
        self.job_id = self._master.new_job_id()
        later = config.replicas > 0 and self._connected() < config.replicas
        if later:
            log.info(
                "Node {name} runs its start-up job {job} now, and chooses its replica set once {count} "
                "peer(s) are connected, or in {settle:g}s; it acknowledges nothing of the job before",
                name=self._node.info.name,
                job=self.job_id,
                count=config.replicas,
                settle=STARTUP_SETTLE,
            )
            self._settle = self._clock.callLater(STARTUP_SETTLE, self._place)
        self._accept(place=not later)

    def _place(self) -> None:
        """Choose the start-up job's replica set now (among the peers connected), and replicate it."""
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = None
        replication = self._master.replication
        if replication is not None and self.job_id is not None:
            replication.place(self.job_id)

    def _accept(self, place: bool) -> None:
        """Accept the start-up job (its replica set chosen now if C{place}) and write it to the journal."""
        config = self._config
        assert self.job_id is not None and config.tasks is not None
        if self.files is not None:
            self.files.take_local(self.job_id, config.tasks)
        self._master.submit(config.tasks, self.job_id, source=config.job_source, place=place)
        # Write it now, while the peers are still being found, rather than
        # when its first tasks are ready to go.
        try:
            self._journal.commit()
        except Exception as e:
            log.error(
                "Node {name} could not write its start-up job {job} to its journal ({error}); "
                "it runs, and is written once the journal can be written (a restart before then "
                "would not resume it)",
                name=self._node.info.name,
                job=self.job_id,
                error=e,
            )

    def _resume_jobs(self) -> None:
        """Take up the journal's unfinished jobs; the start-up job may be one of them."""
        name = self._node.info.name
        stored = self._journal.unfinished_jobs()
        if not stored:
            return
        source = self._config.job_source
        for saved in stored:
            if source is not None and saved.source == source and self.job_id is None:
                self.job_id = saved.id
                log.info(
                    "Node {name} resumes job {job}: it is the job it was started with, unfinished when "
                    "this node last stopped",
                    name=name,
                    job=saved.id,
                )
        self._master.resume(stored)
        replication = self._master.replication
        for saved in stored:
            leader = None if replication is None else replication.directory.lookup(saved.id)
            if replication is not None and saved.id in replication.led_elsewhere and leader is not None:
                log.info(
                    "Node {name} does not resume job {job} from its journal: it stepped down as its master "
                    "before it stopped, and {leader} leads it at epoch {epoch}",
                    name=name,
                    job=saved.id,
                    leader=leader.master,
                    epoch=leader.epoch,
                )

    def _finished_already(self) -> bool:
        """
        Whether the start-up job already finished under an earlier run of
        this node (its journal says so): if so, say it in one line, show it
        among the finished jobs, and fire L{initial_job} with it, unless
        C{--rerun-job} asks for it to run again.
        """
        source = self._config.job_source
        if source is None:
            return False
        saved = self._journal.finished_job(source)
        if saved is None:
            return False
        job = self._master.recall_finished(saved)
        fields = dict(
            name=self._node.info.name,
            label=self._config.job_label or "job",
            ended="was cancelled" if job.cancelled else "already finished",
            when=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.finished)),
            job=job.id,
            succeeded=job.succeeded,
            failed=job.failed,
        )
        if self._config.rerun_job:
            log.info(
                "Node {name}: {label} {ended} at {when} (job {job}: {succeeded} succeeded, {failed} failed); "
                "--rerun-job: running it again as a new job",
                **fields,
            )
            return False
        log.warn(
            "Node {name}: {label} {ended} at {when} (job {job}: {succeeded} succeeded, {failed} failed); "
            "not running it again; pass --rerun-job to run it again",
            **fields,
        )
        self.job_id = job.id
        if not self.initial_job.called:
            self.initial_job.callback(job)
        return True

    def job_finished(self, job: Job) -> None:
        """Write the results file of the start-up job, and fire L{initial_job}."""
        if job.id != self.job_id:
            return
        path = self._config.results
        if path is not None:
            try:
                write_results(path, job.report(self._clock.seconds()))
            except OSError as e:
                log.error("Could not write the results of job {job} to {path}: {error}", job=job.id, path=path, error=e)
            else:
                log.info(
                    "Node {name} wrote the results of job {job} to {path}",
                    name=self._node.info.name,
                    job=job.id,
                    path=path,
                )
        if not self.initial_job.called:
            self.initial_job.callback(job)
