"""
How a master's jobs end: each job's end is written to the journal, then
announced once (TASK_COMPLETE to the workers that took part, the results
to the observer, the summary to the log), and past L{MAX_FINISHED_JOBS}
the oldest finished jobs are forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from p2pexec.clock import WallClock
from p2pexec.interfaces import IJobObserver, IJournal, IWorkerLink
from p2pexec.job import Job
from p2pexec.log import NodeLogger

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

MAX_FINISHED_JOBS = 1000
"""Finished jobs a master keeps in memory, for their status and results; past
that the oldest are forgotten (the journal keeps them for a week)."""


class JobEndings:
    """
    The ends of one master's jobs.

    @ivar announced: the ids of the jobs whose end was announced (or, for a
        job recalled from the journal, needs no announcing).
    """

    def __init__(
        self,
        name: str,
        jobs: dict[str, Job],
        journal: IJournal,
        link: IWorkerLink,
        observer: IJobObserver,
        clock: IReactorTime,
        wall: WallClock,
        durable: Callable[[str], Deferred[None]] | None = None,
        ended: Callable[[Job], None] | None = None,
    ) -> None:
        """
        @param durable: fires once what was decided about a job is durable
            (and, for a replicated job, committed); the journal's alone by default.
        @param ended: told of each job's end before it is made durable (to replicate it).
        @param name: the master's node name.
        @param jobs: the master's jobs, by id (shared: finished ones are
            deleted from it when forgotten).
        @param clock: the monotonic clock; C{wall} the wall clock.
        """
        self._name = name
        self._jobs = jobs
        self._journal = journal
        self._link = link
        self._observer = observer
        self._clock = clock
        self._wall = wall
        self.announced: set[str] = set()
        self._durable = durable
        self._ended = ended

    def finish(self, job: Job) -> None:
        """
        Write the job's end to the journal; once it is there, tell the
        workers that took part, let the observer write the results, then log
        the summary: once the summary is in the log, the results file is
        complete.  Runs once per job.
        """
        if job.id in self.announced:
            return
        self.announced.add(job.id)
        now = self._clock.seconds()
        if job.finished is None:
            job.finished = now
        self.note_end(job)
        self._journal.job_changed(job)
        if self._ended is not None:
            self._ended(job)

        def announce(_: Any) -> None:
            for worker in sorted(job.participants - {self._name}):
                self._link.send_complete(worker, job)
            self._observer.job_finished(job)
            log.info(
                "Job {job} {ended}: {succeeded} succeeded, {failed} failed, {elapsed:.3f}s elapsed",
                job=job.id,
                ended="was cancelled" if job.cancelled else "finished",
                succeeded=job.succeeded,
                failed=job.failed,
                elapsed=job.elapsed(now),
            )
            self.forget_oldest()

        # Announced once its end is in the journal (written again and again
        # if the disk is full, so this may wait; the journal says why).
        # A master deposed meanwhile announces nothing (its successor will).
        if self._durable is None:
            self._journal.durable().addCallback(announce)
        else:
            self._durable(job.id).addCallbacks(announce, lambda f: None)

    def note_end(self, job: Job) -> None:
        """Stamp a job that has just ended with the wall-clock moment of its end."""
        if job.finished is not None:
            job.stamp_end(self._wall())

    def forget_oldest(self) -> None:
        """Keep at most L{MAX_FINISHED_JOBS} finished jobs in memory: a daemon runs for months."""
        jobs = self._jobs
        announced = [jobs[job_id] for job_id in self.announced if job_id in jobs]
        excess = len(announced) - MAX_FINISHED_JOBS
        if excess <= 0:
            return
        for job in sorted(announced, key=lambda job: job.finished or 0.0)[:excess]:
            del jobs[job.id]
            self.announced.discard(job.id)
            log.debug(
                "Node {name} forgot finished job {job} (kept: the newest {limit})",
                name=self._name,
                job=job.id,
                limit=MAX_FINISHED_JOBS,
            )
