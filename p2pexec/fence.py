"""
A worker's fence against deposed masters (master failover, see
C{docs/reliability.rst}).

For each job it holds (or held lately), a worker remembers the highest
ballot it has seen, from assignments, cancels, acknowledgements, JOB_LEADER
and HELD_TASKS: an assignment or cancel of an older ballot is refused with
STALE_BALLOT, an acknowledgement of an older ballot is ignored.  It also
remembers which leader adopted the job (asked HELD_TASKS): the job's
results go there from then on.

The memory is bounded: a job with nothing left on this worker is forgotten
after L{FENCE_MEMORY} seconds, and the oldest past L{MAX_FENCED_JOBS}.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attr
from twisted.internet.interfaces import IReactorTime

from p2pexec import commands
from p2pexec.log import NodeLogger
from p2pexec.model import TaskResult
from p2pexec.replicas import Ballot, parse_stale, stale_description

log = NodeLogger()

FENCE_MEMORY = 3600.0
"""Seconds a worker remembers a job's ballot once it holds nothing of the job."""

MAX_FENCED_JOBS = 100_000
"""The most jobs whose ballots a worker remembers (the least recently seen are forgotten first)."""


def ballot_of(epoch: int | None, master: str) -> Ballot:
    """The ballot a job-scoped command from C{master} stands for (an absent epoch is 1)."""
    return Ballot(1 if epoch is None else epoch, master)


def stale_ballot(job: str, newer: Ballot, refused: Ballot) -> commands.StaleBallot:
    """The STALE_BALLOT error for a command of C{refused} (see L{stale_description}), naming the newer ballot."""
    return commands.StaleBallot(
        stale_description(
            job,
            newer,
            f"job {job} is led by {newer.node} at epoch {newer.epoch}; {refused.node} at epoch {refused.epoch} is deposed",
        )
    )


parse_stale_ballot = parse_stale
"""The newer ballot a STALE_BALLOT description names (see L{p2pexec.replicas.parse_stale})."""


@attr.s(auto_attribs=True, slots=True)
class _Fenced:
    """What the fence knows of one job: the highest ballot seen, the leader that adopted it, when last seen."""

    seen: Ballot
    adopter: Ballot | None
    touched: float


class Fence:
    """
    The highest ballot seen per job, on one worker.

    @param holds: whether this worker still holds something of a job (a
        job it holds is never forgotten).
    """

    def __init__(self, name: str, clock: IReactorTime, holds: Callable[[str], bool]) -> None:
        self._name = name
        self._clock = clock
        self._holds = holds
        self._jobs: OrderedDict[str, _Fenced] = OrderedDict()
        self.refused = 0
        """How many commands of deposed masters were refused or ignored."""

    def __len__(self) -> int:
        """How many jobs' ballots are remembered."""
        return len(self._jobs)

    def highest(self, job: str) -> Ballot | None:
        """The highest ballot seen for C{job}, or C{None}."""
        fenced = self._jobs.get(job)
        return None if fenced is None else fenced.seen

    def adopter(self, job: str) -> Ballot | None:
        """The ballot of the leader that adopted C{job} (asked HELD_TASKS), if one did."""
        fenced = self._jobs.get(job)
        return None if fenced is None else fenced.adopter

    def admits(self, job: str, ballot: Ballot) -> bool:
        """
        Whether a command of C{ballot} about C{job} is current (not older
        than the highest seen); if so, it becomes the highest.
        """
        now = self._clock.seconds()
        fenced = self._jobs.get(job)
        if fenced is None:
            self._jobs[job] = _Fenced(ballot, None, now)
            self._forget_old(now)
            return True
        if ballot < fenced.seen:
            return False
        fenced.seen, fenced.touched = ballot, now
        self._jobs.move_to_end(job)
        return True

    def check(self, job: str, ballot: Ballot, what: str) -> None:
        """
        Admit C{ballot} for C{job} (see L{admits}), or log one line and
        refuse it.

        @param what: the command, for the log line (C{an assignment}).
        @raise commands.StaleBallot: if a newer ballot was seen.
        """
        if not self.admits(job, ballot):
            newer = self._jobs[job].seen
            self.note_refused(job, ballot, what)
            raise stale_ballot(job, newer, ballot)

    def note_refused(self, job: str, ballot: Ballot, what: str) -> None:
        """Count and log a command of a deposed master that was refused or ignored."""
        self.refused += 1
        newer = self._jobs[job].seen
        log.warn(
            "Node {name} refused {what} of job {job} from {master} at epoch {epoch}: "
            "{leader} leads it at epoch {newer}",
            name=self._name,
            what=what,
            job=job,
            master=ballot.node,
            epoch=ballot.epoch,
            leader=newer.node,
            newer=newer.epoch,
        )

    def adopt(self, job: str, ballot: Ballot) -> None:
        """
        C{ballot}'s leader adopts C{job} (it asks HELD_TASKS): the job's
        results go to it from now on.

        @raise commands.StaleBallot: if a newer ballot was seen for C{job}.
        """
        self.check(job, ballot, "a HELD_TASKS query")
        fenced = self._jobs[job]
        if fenced.adopter is None or ballot > fenced.adopter:
            fenced.adopter = ballot

    def _forget_old(self, now: float) -> None:
        """Forget jobs seen longer than L{FENCE_MEMORY} ago that hold nothing here, and the oldest past the cap."""
        while len(self._jobs) > MAX_FENCED_JOBS:
            self._jobs.popitem(last=False)
        for job, fenced in list(self._jobs.items()):
            if now - fenced.touched < FENCE_MEMORY:
                break  # oldest first: the rest are younger
            if self._holds(job):
                fenced.touched = now
                self._jobs.move_to_end(job)
            else:
                del self._jobs[job]


def held_to_wire(held: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """
    The HELD_TASKS answer for what L{p2pexec.worker.Worker.held} found:
    C{running} as C{[task id, attempt]} pairs, C{finished} as C{{"id",
    "attempt", "result"}} objects, each list within one AMP value.  The
    finished results that do not fit are named in C{running} instead: they
    come as EXECUTION_CONFIRMATION.
    """
    finished_items: list[tuple[TaskResult, bytes]] = [
        (result, commands.encode_result_within(result, commands.MAX_VALUE_BYTES // 4)) for result in held["finished"]
    ]
    first: list[tuple[TaskResult, bytes]] = next(
        commands.chunk(
            finished_items,
            lambda item: None,
            encode=lambda item: (
                b'{"id":%s,"attempt":%d,"result":%s}'
                % (commands.encode_json(item[0].task_id), item[0].attempt, item[1])
            ),
        ),
        [],
    )
    fitted = {id(result) for result, _ in first}
    finished = [
        {"id": result.task_id, "attempt": result.attempt, "result": json.loads(encoded)} for result, encoded in first
    ]
    running = [[task_id, attempt] for task_id, attempt in held["running"]]
    running += [[result.task_id, result.attempt] for result, _ in finished_items if id(result) not in fitted]
    return {"running": next(commands.chunk(running, lambda pair: pair), []), "finished": finished}
