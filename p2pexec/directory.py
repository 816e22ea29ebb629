"""
Where each job is led: what this node has learned of jobs it does not
master (from a takeover's JOB_LEADER announcement, from the replica records
it holds), so that a client asking any node about a job is sent to, or
answered for, its current master.
"""

from __future__ import annotations

import attr

from p2pexec.replicas import Ballot


@attr.s(frozen=True, slots=True, auto_attribs=True)
class JobLeader:
    """A job's leader as last learned: its name and the ballot it leads with."""

    job: str
    ballot: Ballot

    @property
    def master(self) -> str:
        """The leader's node name."""
        return self.ballot.node

    @property
    def epoch(self) -> int:
        """The leader's epoch."""
        return self.ballot.epoch


class JobDirectory:
    """
    The newest known leader of each job, bounded: the oldest entries are
    forgotten past C{limit}, since a job is only looked up while people
    follow it.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._leaders: dict[str, JobLeader] = {}

    def learn(self, job: str, ballot: Ballot) -> bool:
        """Record that C{ballot} leads C{job}, unless a newer ballot is known; return whether it was news."""
        known = self._leaders.get(job)
        if known is not None and known.ballot >= ballot:
            return False
        self._leaders.pop(job, None)
        self._leaders[job] = JobLeader(job, ballot)
        while len(self._leaders) > self._limit:
            del self._leaders[next(iter(self._leaders))]
        return True

    def lookup(self, job: str) -> JobLeader | None:
        """The newest known leader of C{job}, or C{None}."""
        return self._leaders.get(job)

    def __len__(self) -> int:
        """How many jobs' leaders are known."""
        return len(self._leaders)
