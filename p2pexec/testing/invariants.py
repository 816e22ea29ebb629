"""
The invariants a simulation run (L{p2pexec.testing.simulation}) checks,
and what the nodes expose for them.

The invariant checkers are plain functions that return a list of violations,
each a readable sentence:

  - L{check_results}: every accepted task has exactly one recorded result
    at the final master;
  - L{check_no_double_records}: no task's result was recorded twice;
  - L{check_finished}: the job finished once the faults stopped (with the
    master alive or restarted; with failover, once a majority of the job's
    replica set lives);
  - L{check_fencing}: no worker accepted an assignment from an epoch older
    than one it had seen;
  - L{check_one_leader_per_epoch}: no two nodes acknowledged records of one
    job in the same epoch;
  - L{check_no_unhandled_errors}: nothing was logged as critical (an
    unhandled error in a Deferred, an exception in a responder).

The fencing and leader checks read what the nodes did through an
L{IFailoverProbe}: L{p2pexec.testing.probe.FailoverProbe} for a run with
replication, L{NoFailover} (which observes nothing) for one without.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attr
from twisted.logger import LogLevel, formatEvent

from p2pexec.job import Job
from p2pexec.node import Node

__all__ = [
    "IFailoverProbe",
    "NoFailover",
    "Observation",
    "Recorded",
    "check_fencing",
    "check_finished",
    "check_no_double_records",
    "check_no_unhandled_errors",
    "check_one_leader_per_epoch",
    "check_results",
]


# -- what nodes expose for the failover invariants -----------------------------


@attr.s(frozen=True, auto_attribs=True)
class Observation:
    """
    Something a node did that the failover invariants judge.

    @ivar kind: C{"assignment"}: worker C{node} accepted an assignment of
        C{job} at C{epoch}, having seen at most C{seen} before;
        C{"acknowledged"}: C{node}, as master of C{job} at C{epoch},
        acknowledged a record (to a client or a worker) as committed;
        C{"took over"}: C{node} took C{job} over at C{epoch}, the tasks in
        C{detail} (comma-separated) having their result already.
    @ivar detail: what, for the report (task ids, attempts).
    @ivar incarnation: which life of C{node} (1 for its first start).
    """

    kind: str
    node: str
    job: str
    epoch: int
    seen: int = 0
    detail: str = ""
    incarnation: int = 1


class IFailoverProbe(Protocol):
    """
    What the simulation asks the nodes about failover:
    L{p2pexec.testing.probe.FailoverProbe} for a run with replication,
    L{NoFailover} for one without.
    """

    def attach(self, name: str, incarnation: int, node: Node) -> None:
        """Node C{name} starts (its C{incarnation}-th life): watch it."""

    def observations(self, name: str, node: Node) -> Iterable[Observation]:
        """
        What node C{name} did since it was last asked (asked before it
        crashes and at the end of a run).
        """

    def master_of(self, job: str, nodes: Mapping[str, Node]) -> str | None:
        """The name of the node that leads C{job} now, among the live C{nodes}, or C{None}."""

    def replica_set(self, job: str, original_master: str) -> Sequence[str]:
        """The names of C{job}'s replica set (its master and successors, as accepted)."""

    def settled(self, job: str, node: Node) -> bool:
        """Whether what C{node} decided of C{job} (that it finished, say) is for good: committed."""

    def holds_end(self, job: str, node: Node) -> bool:
        """Whether C{node} holds the record of C{job}'s end (as a member of its replica set)."""


class NoFailover:
    """
    The probe for a run without replication (C{--replicas 0}): a job lives
    on the node that accepted it (its replica set is that node alone), and
    nothing changes epochs, so there is nothing to observe.
    """

    def attach(self, name: str, incarnation: int, node: Node) -> None:
        """Nothing to watch."""

    def observations(self, name: str, node: Node) -> Iterable[Observation]:
        """Nothing: no node keeps epochs."""
        return ()

    def master_of(self, job: str, nodes: Mapping[str, Node]) -> str | None:
        """The live node that has C{job} among its master's jobs, if any."""
        for name, node in nodes.items():
            if job in node.master.jobs:
                return name
        return None

    def replica_set(self, job: str, original_master: str) -> Sequence[str]:
        """The master alone."""
        return (original_master,)

    def settled(self, job: str, node: Node) -> bool:
        """Always: the master's journal is the job's only record."""
        return True

    def holds_end(self, job: str, node: Node) -> bool:
        """Never: nothing is replicated."""
        return False


# -- invariant checkers ---------------------------------------------------------


def check_results(job_id: str, accepted: Sequence[str], final: Job | None) -> list[str]:
    """
    Every accepted task has exactly one recorded result at the final master
    (and the job holds no task that was not accepted).

    @param accepted: the ids of the tasks accepted.
    @param final: the job as the final master holds it (C{None}: nobody does).
    """
    if final is None:
        return [f"No live node is master of job {job_id} at the end."]
    problems = []
    missing = [t for t in accepted if t not in final.tasks]
    extra = sorted(set(final.tasks) - set(accepted))
    if missing:
        problems.append(f"Job {job_id} at its final master lacks accepted task(s) {missing}.")
    if extra:
        problems.append(f"Job {job_id} at its final master holds task(s) {extra} that were never accepted.")
    without = [t for t in accepted if t in final.tasks and final.tasks[t].result is None]
    if without and final.finished is not None:
        problems.append(f"Job {job_id} finished with no recorded result for task(s) {without}.")
    if final.finished is not None and final.succeeded + final.failed != len(final.tasks):
        problems.append(
            f"Job {job_id} finished counting {final.succeeded} succeeded and {final.failed} failed "
            f"of {len(final.tasks)} task(s)."
        )
    return problems


@attr.s(frozen=True, auto_attribs=True)
class Recorded:
    """A result a master recorded as its task's (seen through C{Views.on_result})."""

    at: float
    master: str
    incarnation: int
    task: str
    attempt: int
    status: str
    worker: str
    epoch: int = 1
    """The epoch at which the master led the job when it recorded it."""


def check_no_double_records(records: Sequence[Recorded], known: Mapping[tuple[str, int, int], set[str]]) -> list[str]:
    """
    No task's successful result was recorded twice: not twice by one master
    incarnation, and not again by a master that resumed (or took over) the
    job with that task's result already recorded.

    @param records: every result recorded as a task's, in order.
    @param known: the tasks that already had a successful result when each
        (master, incarnation, epoch) took the job up (from its journal, or
        the records of a takeover).
    """
    seen: dict[tuple[str, int, int], dict[str, Recorded]] = {}
    problems = []
    for record in records:
        if record.status != "succeeded":
            continue
        key = (record.master, record.incarnation, record.epoch)
        mine = seen.setdefault(key, {})
        if record.task in known.get(key, set()):
            problems.append(
                f"Task {record.task} was recorded again at t={record.at:.3f} (attempt {record.attempt} on "
                f"{record.worker}) by master {record.master} #{record.incarnation}, which had resumed it with a "
                "result already."
            )
        elif record.task in mine:
            first = mine[record.task]
            problems.append(
                f"Task {record.task} was recorded twice by master {record.master} #{record.incarnation}: "
                f"attempt {first.attempt} on {first.worker} at t={first.at:.3f}, then attempt {record.attempt} "
                f"on {record.worker} at t={record.at:.3f}."
            )
        mine.setdefault(record.task, record)
    return problems


def check_finished(
    job_id: str, final: Job | None, live: Sequence[str], replicas: Sequence[str], quiet_for: float
) -> list[str]:
    """
    The job finished once the faults stopped, if a majority of its replica
    set lives (for today's code the set is the master alone, which is then
    always restarted).

    @param live: the nodes alive at the end.
    @param quiet_for: how long the run went on without faults.
    """
    alive = [name for name in replicas if name in live]
    if len(alive) < len(replicas) // 2 + 1:
        return []
    if final is not None and final.finished is not None:
        return []
    if final is None:
        state = "no live node is its master"
    else:
        counts = Counter(record.state.name.lower() for record in final.tasks.values())
        state = "tasks " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return [
        f"Job {job_id} did not finish within {quiet_for:.0f} s after the faults stopped, with "
        f"{len(alive)} of its {len(replicas)} replica(s) alive ({', '.join(alive)}): {state}."
    ]


def check_fencing(observations: Iterable[Observation]) -> list[str]:
    """No worker accepted an assignment from an epoch older than one it had seen."""
    return [
        f"Worker {o.node} accepted an assignment of job {o.job} ({o.detail}) at epoch {o.epoch} after "
        f"seeing epoch {o.seen}."
        for o in observations
        if o.kind == "assignment" and o.epoch < o.seen
    ]


def check_one_leader_per_epoch(observations: Iterable[Observation]) -> list[str]:
    """No two nodes acknowledged records of one job in the same epoch."""
    leaders: dict[tuple[str, int], list[str]] = {}
    for o in observations:
        if o.kind == "acknowledged":
            names = leaders.setdefault((o.job, o.epoch), [])
            if o.node not in names:
                names.append(o.node)
    return [
        f"Nodes {', '.join(names)} all acknowledged records of job {job} in epoch {epoch}."
        for (job, epoch), names in sorted(leaders.items())
        if len(names) > 1
    ]


def check_no_unhandled_errors(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """Nothing was logged at the critical level (an unhandled error in a Deferred, a responder's exception)."""
    problems = []
    for event in events:
        if event.get("log_level") is LogLevel.critical:
            text = formatEvent(dict(event))
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            problems.append(f"Logged as critical: {text}")
    return problems
