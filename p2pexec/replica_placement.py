"""
A job's replica set chosen and its log started, as its master
(L{Placing}, part of L{p2pexec.failover.Replication}); and the jobs
accepted before their replica set is chosen (L{Placements}): a node's
start-up job runs at once, but its replica set is chosen only once enough
peers are connected, or after a settle time (see L{p2pexec.startup}).
Until then what the job's log would say is held here, and so is every wait
for a commit: nothing of the job is acknowledged before its records are
held by a majority of the set finally chosen (L{p2pexec.failover}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attr
from twisted.internet.defer import Deferred

from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult, TaskSpec
from p2pexec.replica_log import ReplicaStore
from p2pexec.replicas import Ballot, ReplicaSet
from p2pexec.replication import JOB, MasterLog, Record, job_records

if TYPE_CHECKING:
    from p2pexec.directory import JobDirectory
    from p2pexec.job import Job
    from p2pexec.membership import PeerTable

log = NodeLogger(namespace="p2pexec.failover")


@attr.s(auto_attribs=True, eq=False, slots=True)
class Unplaced:
    """
    A job whose replica set is still to be chosen.

    @ivar entries: the records logged meanwhile (kind, data), in order,
        after the job's own.
    @ivar waiters: fire once the records logged so far are committed.
    """

    job: Job
    entries: list[tuple[str, dict[str, Any]]] = attr.Factory(list)
    waiters: list[Deferred[None]] = attr.Factory(list)


PlacedListener = Callable[[str, tuple[str, ...], list[TaskSpec], list[TaskResult]], None]
"""
Called with a job's id, its replica set (this node among them), its tasks and the results they have, once this node leads the job with that
set: chosen at accept, later (a start-up job), or taken over (issue 16: the
job's files are copied to the set, see L{p2pexec.file_holds}).
"""


class Placements:
    """
    The jobs of one node whose replica set is still to be chosen, by id;
    and who hears once a job's set is known (L{listeners}).
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Unplaced] = {}
        self.listeners: list[PlacedListener] = []

    def placed(
        self, job_id: str, members: tuple[str, ...], specs: list[TaskSpec], results: Iterable[TaskResult]
    ) -> None:
        """This node leads C{job_id} with the replica set C{members}: tell the L{listeners}."""
        if not self.listeners:
            return
        done = list(results)
        for listener in self.listeners:
            listener(job_id, members, specs, done)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, job: Job) -> None:
        """C{job} was accepted; its replica set is chosen later (L{pop})."""
        self._jobs[job.id] = Unplaced(job)

    def note(self, job_id: str, entries: list[tuple[str, dict[str, Any]]]) -> bool:
        """Hold C{entries} for C{job_id}'s log, if its set is still to be chosen; return whether they were held."""
        unplaced = self._jobs.get(job_id)
        if unplaced is None:
            return False
        unplaced.entries.extend(entries)
        return True

    def wait(self, job_id: str) -> Deferred[None] | None:
        """A Deferred that fires once C{job_id}'s records so far are committed, if its set is still to be chosen."""
        unplaced = self._jobs.get(job_id)
        if unplaced is None:
            return None
        d: Deferred[None] = Deferred()
        unplaced.waiters.append(d)
        return d

    def pop(self, job_id: str) -> Unplaced | None:
        """The job, its records and its waiters, to be placed now (C{None} if it is not waiting)."""
        return self._jobs.pop(job_id, None)


class Placing:
    """
    The master's methods of L{p2pexec.failover.Replication} that choose a
    job's replica set and start its log; it provides what is declared here.
    """

    replicas: int
    directory: JobDirectory
    logs: dict[str, MasterLog]
    stores: dict[str, ReplicaStore]
    unplaced: Placements
    _peers: PeerTable
    _members: dict[str, tuple[str, ...]]
    _waiters: dict[str, list[tuple[int, Deferred[None]]]]

    @property
    def _me(self) -> str:
        raise NotImplementedError

    def _master_log(
        self, job_id: str, members: Iterable[str], ballot: Ballot, records: Iterable[Record] = ()
    ) -> MasterLog:
        raise NotImplementedError

    def _write_own(self, job_id: str, log_: MasterLog) -> None:
        raise NotImplementedError

    def _changed(self, job_id: str) -> None:
        raise NotImplementedError

    def job_accepted(self, job: Job, place: bool = True) -> None:
        """
        A job was accepted here: choose its replica set and log the job
        (nothing with C{--replicas 0}); with C{place} false, later (L{place}).
        """
        if self.replicas <= 0:
            return
        if not place:
            self.unplaced.add(job)
            return
        self._place(job, [])

    def place(self, job_id: str) -> None:
        """Choose now the replica set of a job accepted without one, and log what it did so far."""
        unplaced = self.unplaced.pop(job_id)
        if unplaced is None:
            return
        self._place(unplaced.job, unplaced.entries)
        log_ = self.logs.get(job_id)
        for d in unplaced.waiters:
            if log_ is None:
                d.callback(None)
            else:
                self._waiters.setdefault(job_id, []).append((log_.tail, d))

    def _place(self, job: Job, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Choose C{job}'s replica set among the connected peers, and log it with C{entries} after it."""
        live = [record.info.name for record in self._peers.connected_peers()]
        members = ReplicaSet.choose(job.id, self._me, live, self.replicas).members
        if len(members) == 1:
            # No other node to replicate to, so nothing could take the job
            # over: keep no log of it (a log held every record in memory, 8
            # MiB for W4's 10,000 tasks) and run it as --replicas 0 would.
            log.info(
                "Node {name} does not replicate job {job}: no other node is connected, so it has no failover",
                name=self._me,
                job=job.id,
            )
            return
        ballot = Ballot(1, self._me)
        self.logs[job.id] = log_ = self._master_log(job.id, members, ballot)
        self._members[job.id] = members
        specs = [record.spec for record in job.tasks.values()]
        for data, raw in job_records(job.id, specs, members, job.source, job.started_at, priority=job.priority):
            log_.append(JOB, data, raw)
        for kind, data in entries:
            log_.append(kind, data)
        self.stores[job.id] = ReplicaStore(job.id)
        self._write_own(job.id, log_)
        self.directory.learn(job.id, ballot)
        log.info(
            "Node {name} replicates job {job} to {replicas} (a majority is {majority} of {size})",
            name=self._me,
            job=job.id,
            replicas=", ".join(members[1:]),
            majority=log_.majority,
            size=len(members),
        )
        self._changed(job.id)
        self.unplaced.placed(job.id, members, specs, [r.result for r in job.tasks.values() if r.result is not None])
