"""
Running again what failed (C{p2pexec rerun --failed JOB}, RERUN_TASKS): the
master reopens a finished job and queues, as new attempts of the same job,
its tasks that failed, timed out, could not run (error), were cancelled or
were skipped (a task they run after did not succeed: see
L{p2pexec.dependencies}; they wait again for those tasks, run again first).

The reopening is kept as any other decision: the whole job is written to
the journal again (its end and the old results of those tasks cleared), so
that a restarted master resumes it; a replicated job gets a C{rerun} record
(see L{p2pexec.replication}), so that a successor knows which tasks run
again and from which attempt.  The answer waits until both are durable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pexec.confirmations import Batch
from p2pexec.log import NodeLogger, format_ids
from p2pexec.task_states import TaskState

if TYPE_CHECKING:
    from p2pexec.job import Job
    from p2pexec.master import Master

log = NodeLogger(namespace="p2pexec.master")
"""The master's logger: these lines are the master's, wherever its code lives."""

WHICH = ("failed",)
"""What RERUN_TASKS can run again: C{failed}, every task whose result is not a success (skipped ones too)."""


class StillRunning(Exception):
    """The job has not ended: nothing of it can be run again yet."""


def to_rerun(job: Job) -> list[str]:
    """The tasks of a finished job that did not succeed (failed, timed out, error, cancelled, skipped), in job order."""
    return [
        task_id
        for task_id, record in job.tasks.items()
        if record.state is TaskState.DONE and record.result is not None and not record.result.succeeded
    ]


def rerun(master: Master, job_id: str, which: str, by: str) -> list[str]:
    """
    Reopen C{job_id} and queue its tasks that did not succeed again.

    @param which: what to run again: one of L{WHICH}.
    @param by: who asked, for the log line.
    @return: the ids of the tasks that run again (none: the job is left as it is).
    @raise KeyError: if C{job_id} is not a job of this master.
    @raise ValueError: for a C{which} not in L{WHICH}.
    @raise StillRunning: if the job has not ended (or its end is not yet announced).
    """
    job = master.jobs[job_id]
    if which not in WHICH:
        raise ValueError(f"'which' must be one of {', '.join(WHICH)}, not {which!r}")
    if job.finished is None or job_id not in master._endings.announced:
        counts = job.counts()
        raise StillRunning(
            f"job {job_id} is still running ({counts['done']} of {len(job.tasks)} task(s) done); "
            f"rerun it once it has ended, or cancel it first"
        )
    wanted = to_rerun(job)
    if not wanted:
        return []
    attempts = {task_id: job.tasks[task_id].attempt for task_id in wanted}
    batch = Batch()
    again = job.rerun(wanted, batch.performer(master, job))
    # Written whole: the old results of these tasks and the job's end are
    # cleared in the journal as well (a task update writes only what moved).
    master.journal.job_added(job)
    master._endings.announced.discard(job_id)
    if master.replication is not None:
        master.replication.job_reopened(job_id, attempts)
    log.info(
        "Node {name} runs {count} task(s) of job {job} again ({by}): {ids}",
        name=master.me.name,
        count=len(again),
        job=job_id,
        by=by,
        ids=format_ids(again),
    )
    # The dependency gate is rebuilt from the records: a skipped task run
    # again waits for the tasks it runs after, run again too (issue 15).
    master._gate.forget(job_id)
    master._requeue(job, batch.requeue)
    return again
