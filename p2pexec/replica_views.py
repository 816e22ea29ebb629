"""
What a node can tell a client of a job it holds replica records of but
does not lead (L{ReplicaViews}, the node's L{p2pexec.interfaces.IReplicaRecords}):
the job's summary and task pages, rebuilt from the records its journal
keeps for the job (see L{p2pexec.failover}).  A rebuilt job is cached until
the records change, so that a status call costs a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from p2pexec import status
from p2pexec.clock import WallClock
from p2pexec.job import Job, TaskRecord
from p2pexec.model import ValidationError
from p2pexec.replication import JobImage, Record, rebuild
from p2pexec.task_states import TaskState

if TYPE_CHECKING:
    from p2pexec.directory import JobDirectory
    from p2pexec.replica_log import ReplicaStore

MAX_CACHED = 1024
"""Rebuilt jobs kept (the least recently rebuilt are dropped first)."""


def image_job(image: JobImage, now: float, wall_now: float, max_losses: int) -> Job:
    """
    The job C{image} describes: the tasks with a recorded result done with
    it, every other task pending.

    @param now: the monotonic clock's reading; C{wall_now}, the wall clock's.
    """
    records = []
    for spec in image.specs:
        result = image.results.get(spec.id)
        if result is None:
            records.append(TaskRecord(spec=spec, attempt=image.attempts.get(spec.id, 0)))
        else:
            records.append(TaskRecord(spec=spec, state=TaskState.DONE, attempt=result.attempt, result=result))
    started = now - max(0.0, wall_now - image.started_at)
    job = Job.restore(image.id, records, started, image.source, max_losses, started_at=image.started_at)
    job.cancelled = image.cancelled
    job.priority = image.priority
    if job.done or image.cancelled or image.ended:
        job.finished = now
    return job


class ReplicaViews:
    """
    The summaries and task pages of the jobs this node holds replica
    records of (an L{p2pexec.interfaces.IReplicaRecords}).

    @param stores: the node's replica stores, by job (L{p2pexec.failover.Replication.stores}).
    @param records_of: a job's records, decoded from the journal
        (L{p2pexec.failover.Replication.records_of}).
    @param directory: who leads each job (its summary names that master and epoch).
    """

    def __init__(
        self,
        stores: dict[str, ReplicaStore],
        records_of: Callable[[str], list[Record]],
        directory: JobDirectory,
        clock: IReactorTime,
        wall: WallClock,
    ) -> None:
        self._stores = stores
        self._records_of = records_of
        self._directory = directory
        self._clock = clock
        self._wall = wall
        self._cache: dict[str, tuple[int, Job]] = {}

    def _job(self, job_id: str) -> Job | None:
        store = self._stores.get(job_id)
        if store is None or not store.version:
            return None
        key = store.version
        cached = self._cache.get(job_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            image = rebuild(self._records_of(job_id))
        except ValidationError:
            return None  # the job's parts are not all here (yet)
        job = image_job(image, self._clock.seconds(), self._wall(), max_losses=1)
        self._cache.pop(job_id, None)
        self._cache[job_id] = (key, job)
        while len(self._cache) > MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        return job

    def _leader(self, job_id: str) -> tuple[str | None, int]:
        leader = self._directory.lookup(job_id)
        if leader is not None:
            return leader.master, leader.ballot.epoch
        store = self._stores.get(job_id)
        accepted = None if store is None else store.accepted
        return (None, 1) if accepted is None else (accepted.node, accepted.epoch)

    def replica_status(self, job: str) -> dict[str, Any] | None:
        """C{job}'s summary from its replica records (its master and epoch as known here), or C{None}."""
        rebuilt = self._job(job)
        if rebuilt is None:
            return None
        master, epoch = self._leader(job)
        return status.job_summary(rebuilt, self._clock.seconds(), frozenset(), master=master, epoch=epoch)

    def replica_tasks(
        self, job: str, offset: int, limit: int, states: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], int] | None:
        """A page of C{job}'s tasks (only in C{states}, if given) from its replica records, and how many matched; or C{None}."""
        rebuilt = self._job(job)
        if rebuilt is None:
            return None
        return status.tasks_page(rebuilt, frozenset(), offset=offset, limit=limit, state=states)

    def replica_jobs(self) -> list[dict[str, Any]]:
        """Summaries of every job held here as a replica."""
        summaries = (self.replica_status(job) for job in list(self._stores))
        return [summary for summary in summaries if summary is not None]
