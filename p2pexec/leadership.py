"""
Who leads a master's jobs, and until when: a job cancelled (which ends
its leadership of the job's tasks), a job taken over from its lost master
(rebuilt from its replicated records), and a job another node leads now,
stepped down from (see L{p2pexec.failover}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pexec.confirmations import Batch
from p2pexec.job import Job
from p2pexec.log import NodeLogger
from p2pexec.replica_views import image_job
from p2pexec.task_states import TaskState

if TYPE_CHECKING:
    from p2pexec.master import Master
    from p2pexec.replication import JobImage

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""


def take_over(master: Master, image: JobImage, epoch: int) -> Job:
    """
    Lead a job taken over from its lost master, rebuilt from its
    replicated records: the tasks with a recorded result keep it; every
    other task waits, unqueued, for L{adopt} to queue those nobody holds.
    """
    now = master._clock.seconds()
    job = image_job(image, now, master._wall(), master._max_losses)
    job.finished = None  # finished below, once it is the master's
    master.jobs[job.id] = job
    master.journal.job_added(job)
    counts = job.counts()
    log.info(
        "Node {name} is master of job {job} at epoch {epoch}: {done} of {total} task(s) have their result",
        name=master.me.name,
        job=job.id,
        epoch=epoch,
        done=counts["done"],
        total=len(job.tasks),
    )
    if job.done or image.cancelled or image.ended:
        job.finished = now
        master._endings.finish(job)
    return job


def step_down(master: Master, job_id: str) -> None:
    """
    Another node leads C{job_id} now: hand out nothing more of it, stop
    its retry timers, and forget it here (a confirmation for it is then
    refused as for an unknown job).
    """
    master.adopted_at.pop(job_id, None)
    job = master.jobs.pop(job_id, None)
    if job is None:
        return
    master._unqueue(job_id)
    master._recovery.forget_job(job_id)
    master._endings.announced.discard(job_id)
    for task_id, record in job.tasks.items():
        master._retries.cancel((job_id, task_id))
        if record.state is TaskState.ASSIGNED:
            master.seat_change(record.worker, job.priority, record.spec, -1)


def cancel(master: Master, job_id: str, by: str) -> int:
    """
    Cancel a job: its tasks without a result never start (or start
    again), and every worker that holds some is told to stop them, once the
    cancellation is durable (and, for a replicated job, committed).

    @return: how many tasks were cancelled.
    @raise KeyError: if C{job_id} is not a job of this master.
    """
    job = master.jobs[job_id]
    if job.finished is not None:
        return 0
    before = job.counts()["done"]
    job.cancel(master._clock.seconds(), master.me.name, by, Batch().performer(master, job))
    master._endings.note_end(job)
    cancelled = len(job.tasks) - before
    # Every node that was ever given one of its tasks: one whose tasks were
    # put back (its connection dropped, say) may still be running them.
    workers = sorted(job.participants)
    master._recovery.forget_job(job_id)
    master._unqueue(job_id)
    if master.replication is not None:
        master.replication.job_cancelled(job_id, by)
    log.warn(
        "Node {name} cancelled job {job} ({by}): {count} task(s) without a result will not run; "
        "stopping them on {workers}",
        name=master.me.name,
        job=job_id,
        by=by,
        count=cancelled,
        workers=", ".join(workers) or "no worker",
    )

    def tell_workers(_: Any) -> None:
        for worker in workers:
            master._link.send_cancel(worker, job_id)

    master.durable(job_id).addCallbacks(tell_workers, lambda f: None)
    master._endings.finish(job)
    return cancelled
