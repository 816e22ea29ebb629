"""
How a node's worker leaves: it hands back what is queued, waits (bounded) for
what runs, stops what still runs, and waits (bounded) for the stopped tasks to
be gone, before the node says goodbye (see L{p2pexec.node.Node.stop}).
"""

from __future__ import annotations

from twisted.internet.defer import TimeoutError
from twisted.internet.interfaces import IReactorTime

from p2pexec.log import NodeLogger
from p2pexec.master import Master
from p2pexec.outbox import bounded
from p2pexec.worker import Worker

log = NodeLogger()

STOP_GRACE = 10.0
"""Seconds the stopped tasks have to end before the node leaves anyway."""


async def drain(worker: Worker, timeout: float, clock: IReactorTime, name: str) -> None:
    """Hand back the queued tasks; wait (bounded) for the running ones, then stop what still runs."""
    handed_back = worker.stop_accepting()
    if handed_back:
        log.info("Node {name} is leaving: handing back {count} queued task(s)", name=name, count=handed_back)
    if worker.running:
        log.info(
            "Node {name} is leaving: waiting up to {timeout:g}s for {count} running task(s)",
            name=name,
            timeout=timeout,
            count=worker.running,
        )
        try:
            await worker.when_idle().addTimeout(timeout, clock)
        except TimeoutError:
            log.warn(
                "Node {name}: {count} task(s) still running after {timeout:g}s; stopping them",
                name=name,
                count=worker.running,
                timeout=timeout,
            )
            worker.stop_running()
            try:
                await worker.when_idle().addTimeout(STOP_GRACE, clock)
            except TimeoutError:
                log.error("Node {name}: tasks did not stop; leaving anyway", name=name)
    # What ignored SIGTERM (a task stopped now, or one that timed out,
    # was cancelled or left children behind a moment ago) gets its
    # SIGKILL before the node goes.
    await bounded(worker.settled(), STOP_GRACE, clock)


def warn_unfinished(master: Master, name: str) -> None:
    """Say which of the jobs C{master} holds are left unfinished, and how far each got."""
    for job in master.unfinished():
        log.warn(
            "Node {name} is leaving with job {job} unfinished: {done} of {total} task(s) have results",
            name=name,
            job=job.id,
            done=job.succeeded + job.failed,
            total=len(job.tasks),
        )
