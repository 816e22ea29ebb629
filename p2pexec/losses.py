"""
What a master does when a worker hands tasks back: a refused batch put
back in the queue, and the tasks of a lost worker put back (this is where
delivery becomes at-least-once), with repeat losers quarantined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attr

from p2pexec.confirmations import Batch
from p2pexec.log import NodeLogger

if TYPE_CHECKING:
    from p2pexec.job import Job
    from p2pexec.master import Master

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""


def refused(master: Master, worker: str, job_id: str, attempts: list[tuple[str, int]], why: str, usable: bool) -> None:
    """
    C{worker} refused a batch of assignments: put those tasks back.  If
    it is not C{usable} (it is leaving, or cannot run what we thought),
    give it nothing more until it joins again; the tasks it already runs
    stay its own.
    """
    job = master.jobs.get(job_id)
    seat = master._workers.get(worker)
    if seat is not None and not usable:
        seat.accepting = False
    if job is None:
        return
    batch = Batch()
    perform = batch.performer(master, job)
    returned = [task_id for task_id, attempt in attempts if job.take_back(task_id, attempt, worker, perform)]
    if returned:
        log.warn(
            "Worker {worker} refused {count} task(s) of job {job}: {why}; they go back in the queue",
            worker=worker,
            count=len(returned),
            job=job_id,
            why=why,
        )
        master._requeue(job, batch.requeue)
    master.schedule_dispatch()


def does_not_fit(master: Master, worker: str, job_id: str, attempts: list[tuple[str, int]], why: str) -> None:
    """
    C{worker} refused tasks as more than it has (DOES_NOT_FIT): put them
    back, and until it joins again treat it as having only slots, so that
    no task that asks for resources goes to it meanwhile.
    """
    seat = master._workers.get(worker)
    if seat is not None:
        seat.info = attr.evolve(seat.info, resources=None)
    refused(master, worker, job_id, attempts, why, usable=True)


def lose(
    master: Master,
    job: Job,
    worker: str,
    why: str,
    attempts: list[tuple[str, int]] | None = None,
    count_loss: bool = True,
) -> int:
    """
    Put back what C{worker} held of C{job} (or just these attempts, if
    still current); quarantine repeat losers.

    @return: how many tasks were taken back from C{worker}.
    """
    batch = Batch()
    requeue, quarantined = job.put_back(
        worker, master._clock.seconds(), attempts, count_loss, batch.performer(master, job)
    )
    master._endings.note_end(job)
    if requeue:
        master._requeue(job, batch.requeue)
        log.warn(
            "Node {name} put {count} unconfirmed task(s) of job {job} back in the queue: worker {worker} {why}",
            name=master.me.name,
            count=len(requeue),
            job=job.id,
            worker=worker,
            why=why,
        )
    for task_id in quarantined:
        master.quarantined += 1
        log.error(
            "Task {task} of job {job} is quarantined: it lost its worker {losses} times (last: {worker}, "
            "which {why}); it is marked failed and not run again",
            task=task_id,
            job=job.id,
            losses=job.tasks[task_id].losses,
            worker=worker,
            why=why,
        )
    if quarantined and job.done:
        master._endings.finish(job)
    return len(requeue) + len(quarantined)
