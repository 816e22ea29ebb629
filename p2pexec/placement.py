"""
Jobs accepted before their replica set is chosen, without I/O: a node's
start-up job runs at once, but its replica set is chosen only once enough
peers are connected, or after a settle time (see L{p2pexec.startup}).
Until then what the job's log would say is held here, and so is every wait
for a commit: nothing of the job is acknowledged before its records are
held by a majority of the set finally chosen (L{p2pexec.failover}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attr
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from p2pexec.job import Job


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


class Placements:
    """The jobs of one node whose replica set is still to be chosen, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, Unplaced] = {}

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
