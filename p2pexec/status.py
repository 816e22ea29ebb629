"""
What a node shows its operators: JSON-able views of itself, its peers, the
topology it sees, and the jobs it is master of.

The same views answer the HTTP API (L{p2pexec.web}), the client's AMP
commands (JOB_STATUS, LIST_JOBS, JOB_TASKS, CLUSTER_STATUS) and the
dashboard, so that all three say the same thing.  Their fields are
documented in C{docs/api.rst} and C{docs/openapi.json}.

These functions only read: they take the parts they need and return plain
dicts and lists.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attr

from p2pexec.heartbeat import Liveness
from p2pexec.job import Job, TaskRecord, TaskState
from p2pexec.membership import PeerRecord, PeerState
from p2pexec.model import NodeInfo

PEER_STATES = ("self", "alive", "suspect", "known", "gone")
"""A node's state as the views give it: this node itself; connected and
answering; connected but silent for a while; heard of but not connected;
said goodbye."""

TASK_STATES = ("pending", "waiting", "running", "succeeded", "failed", "cancelled", "skipped")
"""A task's state as the views give it: C{waiting} is pending with no
connected node able to run its kind; C{running} is assigned to a worker
(queued or running there); C{skipped} never ran, as a task it runs after
did not succeed."""


def parse_states(text: str) -> frozenset[str]:
    """
    The states a JOB_TASKS C{state} filter names: one of L{TASK_STATES}, or
    several separated by commas (C{succeeded,failed,cancelled}).

    @raise ValueError: naming what is not a state.
    """
    states = frozenset(part.strip() for part in text.split(","))
    unknown = sorted(states - set(TASK_STATES))
    if unknown:
        raise ValueError(
            f"'state' must name states among {', '.join(TASK_STATES)}, not {', '.join(map(repr, unknown))}"
        )
    return states


@attr.s(auto_attribs=True, frozen=True)
class Load:
    """What a node reported of itself in NODE_STATUS (or knows of itself)."""

    running: int
    queued: int
    links: tuple[str, ...] = ()


def node_entry(
    info: NodeInfo,
    state: str,
    load: Load | None,
    last_heard: float | None = None,
    problem: str | None = None,
) -> dict[str, Any]:
    """
    One node as the views show it (see C{Node} in docs/api.rst).

    @param problem: why this node is not healthy (its journal cannot be
        written), for this node itself; peers do not report theirs.
    """
    return {
        "name": info.name,
        "address": info.address,
        "instance": info.instance,
        "capabilities": list(info.capabilities),
        "slots": info.slots,
        "busy": None if load is None else load.running,
        "queued": None if load is None else load.queued,
        "state": state,
        "last_heard": None if last_heard is None else round(last_heard, 3),
        "problem": problem,
    }


def peer_state(record: PeerRecord, liveness: Liveness | None) -> str:
    """The view's state of a peer, from its table row and its connection's liveness."""
    if record.state is PeerState.LEFT:
        return "gone"
    if record.state is PeerState.CONNECTED:
        return "suspect" if liveness is Liveness.SUSPECT else "alive"
    return "known"


def peers_view(
    me: NodeInfo,
    my_load: Load,
    records: Iterable[PeerRecord],
    liveness: Mapping[str, Liveness],
    loads: Mapping[str, Load],
    now: float,
    problem: str | None = None,
) -> list[dict[str, Any]]:
    """This node first (with its C{problem}, if it has one), then every peer in its table, by name."""
    entries = [node_entry(me, "self", my_load, problem=problem)]
    for record in sorted(records, key=lambda r: r.info.name):
        name = record.info.name
        entries.append(
            node_entry(record.info, peer_state(record, liveness.get(name)), loads.get(name), now - record.last_heard)
        )
    return entries


def topology_view(peers: list[dict[str, Any]], my_links: Iterable[str], loads: Mapping[str, Load]) -> dict[str, Any]:
    """
    Nodes and the live connections between them: this node's own, and those
    its peers reported in NODE_STATUS.  Each link is listed once, its ends in
    name order, with the state of the worse end (alive, suspect).
    """
    known = {entry["name"]: entry for entry in peers}
    me = peers[0]["name"]
    pairs: set[tuple[str, str]] = set()
    for other in my_links:
        pairs.add(_link(me, other))
    for name, load in loads.items():
        if known.get(name, {}).get("state") not in ("alive", "suspect"):
            continue
        for other in load.links:
            if other in known:
                pairs.add(_link(name, other))
    links = []
    for a, b in sorted(pairs):
        states = {known.get(a, {}).get("state"), known.get(b, {}).get("state")}
        links.append({"source": a, "target": b, "state": "suspect" if "suspect" in states else "alive"})
    return {"nodes": peers, "links": links}


def _link(one: str, other: str) -> tuple[str, str]:
    """A link between two nodes, its ends in name order."""
    return (one, other) if one <= other else (other, one)


def task_state(record: TaskRecord, waiting_kinds: frozenset[str]) -> str:
    """The view's state of one task."""
    if record.state is TaskState.ASSIGNED or record.state is TaskState.IN_DOUBT:
        return "running"
    if record.state is TaskState.PENDING or record.state is TaskState.RETRY_WAIT:
        return "waiting" if record.spec.kind in waiting_kinds else "pending"
    assert record.result is not None
    status = record.result.status
    if status == "succeeded":
        return "succeeded"
    if status == "cancelled" or status == "skipped":
        return status
    return "failed"


def task_entry(record: TaskRecord, waiting_kinds: frozenset[str], output: bool = True) -> dict[str, Any]:
    """One task with its latest result (see C{Task} in docs/api.rst)."""
    entry: dict[str, Any] = {
        "id": record.spec.id,
        "kind": record.spec.kind,
        "state": task_state(record, waiting_kinds),
        "attempts": record.attempt,
        "node": record.worker,
        "status": None,
        "exit_code": None,
        "duration": None,
        "error": None,
    }
    result = record.result
    if result is not None:
        entry.update(
            node=result.node,
            status=result.status,
            exit_code=result.exit_code,
            duration=round(result.duration, 6),
            error=result.error,
        )
        if result.started is not None:
            entry["started"] = round(result.started, 6)
        if result.signal is not None:
            entry["signal"] = result.signal
        for name in ("stdout_size", "stderr_size", "output_cut"):
            value = getattr(result, name)
            if value is not None:
                entry[name] = value
        if result.outputs:
            entry["outputs"] = [each.to_wire() for each in result.outputs]
        if output:
            entry.update(stdout=result.stdout, stderr=result.stderr)
    return entry


def job_summary(
    job: Job,
    now: float,
    waiting_kinds: frozenset[str],
    stalled: str | None = None,
    *,
    master: str | None = None,
    epoch: int = 1,
    answered_by: str = "master",
) -> dict[str, Any]:
    """
    One job's progress (see C{JobSummary} in docs/api.rst).

    @param stalled: why no task of a running job can make progress (its
        master's journal cannot be written); it then has no ETA.
    @param master: the node that leads the job (its current master).
    @param epoch: the epoch it leads the job in (1 until a takeover).
    @param answered_by: C{master} when its master made the summary,
        C{replica} when a node holding a replica of its records did.
    """
    counts = dict.fromkeys(TASK_STATES, 0)
    for record in job.tasks.values():
        counts[task_state(record, waiting_kinds)] += 1
    total = len(job.tasks)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"] + counts["skipped"]
    elapsed = job.elapsed(now)
    eta = None
    if job.finished is not None:
        stalled = None
    elif done and done < total and stalled is None:
        eta = round(elapsed / done * (total - done), 3)
    if job.cancelled:
        state = "cancelled"
    elif job.finished is not None:
        state = "finished"
    else:
        state = "running"
    return {
        "id": job.id,
        "state": state,
        "total": total,
        "done": done,
        "progress": round(done / total, 4) if total else 1.0,
        "counts": counts,
        "started": round(job.started_at, 3),
        "finished": None if job.finished_at is None else round(job.finished_at, 3),
        "elapsed": round(elapsed, 3),
        "eta": eta,
        "stalled": stalled,
        "stale_results_dropped": job.stale,
        "priority": job.priority,
        "master": master,
        "epoch": epoch,
        "answered_by": answered_by,
    }


def tasks_page(
    job: Job,
    waiting_kinds: frozenset[str],
    offset: int = 0,
    limit: int | None = None,
    state: str | Collection[str] | None = None,
    node: str | None = None,
    output: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """
    The tasks of C{job} in job order, filtered by view state (one, or any
    of several) and node, from C{offset} (of the filtered list), at most
    C{limit}.

    @return: the page and the total that matched the filters.
    """
    matched = []
    states = {state} if isinstance(state, str) else None if state is None else set(state)
    for record in job.tasks.values():
        if states is not None and task_state(record, waiting_kinds) not in states:
            continue
        shown_node = record.result.node if record.result is not None else record.worker
        if node is not None and shown_node != node:
            continue
        matched.append(record)
    end = len(matched) if limit is None else offset + limit
    return [task_entry(record, waiting_kinds, output) for record in matched[offset:end]], len(matched)
