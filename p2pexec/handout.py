"""
Handing planned tasks out (the master's dispatch, after L{p2pexec.fairshare.plan_levels}
planned a priority level): each starts a new attempt, held on its worker's
seat, grouped by worker and job for sending.  Kept apart from
L{p2pexec.master} so that the module stays one job's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pexec.model import Assignment
from p2pexec.task_states import TaskEvent, TaskState

if TYPE_CHECKING:
    from p2pexec.master import Master

_PENDING = TaskState.PENDING
_DISPATCH = TaskEvent.DISPATCH


def hand_out(
    master: Master, assignments: dict[str, list[tuple[str, str]]], sends: list[tuple[str, str, list[Assignment]]]
) -> None:
    """Start an attempt of each planned task still pending; add them to C{sends} by worker and job."""
    jobs = master.jobs
    perform = master._perform
    for worker, entries in assignments.items():
        by_job: dict[str, list[Assignment]] = {}
        for job_id, task_id in entries:
            # A queue entry may outlive its task's wait (a late result
            # finished it, or it waits for a retry) and even its job
            # (forgotten once finished).
            job = jobs.get(job_id)
            if job is None:
                continue
            record = job.tasks[task_id]
            if record.state is not _PENDING:
                continue
            outputs = job.fire(record, _DISPATCH, 0.0)
            assignment = job.start_attempt(record, worker)
            perform(job, record, outputs)
            if job_id in by_job:
                by_job[job_id].append(assignment)
            else:
                by_job[job_id] = [assignment]
        sends.extend((worker, job_id, attempts) for job_id, attempts in by_job.items())
