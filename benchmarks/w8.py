"""
W8, fair share between masters: two jobs from two different masters over
the same two workers, and how the workers' slots are split while both run.

Topology: workers ``bench1`` and ``bench2`` (capability ``w``, ``--slots
2``) are started and listening, then two masters ``masterA`` and
``masterB`` that run nothing themselves.  Once both masters are connected
to both workers, ``p2pexec submit`` gives ``masterA`` a job of 200 tasks
``sleep 0.05`` and, 0.5 s after that submission returned, ``masterB`` an
identical job.  Each task appends ``JOB START END`` (its job id and the
wall-clock seconds around its ``sleep``) to a side file.

The split: the window in which both jobs have tasks running runs from the
later of the two jobs' first starts to the earlier of their last ends; each
job's share is its tasks' running time inside that window over both jobs'.
The target is 50% +- 10% each: a worker serving several masters must not be
captured by whichever asked first (docs/performance.rst, W8).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Iterable

from _cluster import Node, RunFailed, fresh_cluster, start_node, wait_until
from workloads import (
    IDLE_CAPABILITY,
    SLOTS,
    WORKERS,
    _finish,
    _start_workers,
    client,
    first_line,
    node_port,
    write_job,
)

MASTERS = ("masterA", "masterB")
W8_TASKS = 200
W8_SLEEP = 0.05
W8_GAP = 0.5
"""Seconds between the two submissions."""
W8_TARGET = 0.10
"""Each job's share of the slots while both run may be this far from one half."""


def write_w8_job(path: str, side_path: str, tasks: int = W8_TASKS, sleep: float = W8_SLEEP) -> None:
    """The W8 job: C{tasks} shell tasks that sleep C{sleep} s and append C{JOB START END NODE} to C{side_path}."""
    record = f'echo "$P2PEXEC_JOB_ID $s $(date +%s.%N) $P2PEXEC_NODE" >> {shlex.quote(side_path)}'
    write_job(path, tasks, command=f"s=$(date +%s.%N); sleep {sleep}; {record}", shell=True)


def read_side(path: str, node: str | None = None) -> dict[str, list[tuple[float, float]]]:
    """
    Each job's task runs (start, end) from a side file of C{JOB START END
    NODE} lines (only those on C{node}, if given).
    """
    runs: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 4 and node in (None, fields[3]):
                runs.setdefault(fields[0], []).append((float(fields[1]), float(fields[2])))
    return runs


def overlap(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """The total length of C{intervals} inside [C{start}, C{end}]."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


def split(runs: dict[str, list[tuple[float, float]]], first: str, second: str) -> dict:
    """
    The split of slot-time between jobs C{first} and C{second} in the window
    where both have tasks running: C{share} (of C{first}), C{window}
    (seconds), C{busy} (slot-seconds of both in it).

    @raise RunFailed: if a job has no runs or the two never ran together.
    """
    if not runs.get(first) or not runs.get(second):
        raise RunFailed(f"the side file lacks the runs of job {first if not runs.get(first) else second}")
    start = max(min(a for a, _ in runs[first]), min(a for a, _ in runs[second]))
    end = min(max(b for _, b in runs[first]), max(b for _, b in runs[second]))
    if end <= start:
        raise RunFailed(f"jobs {first} and {second} never ran at the same time")
    mine, theirs = overlap(runs[first], start, end), overlap(runs[second], start, end)
    if mine + theirs <= 0:
        raise RunFailed("no task ran in the window where both jobs had tasks")
    return {"share": mine / (mine + theirs), "window": end - start, "busy": mine + theirs, "start": start, "end": end}


def w8(
    folder: str,
    timeout: float,
    tasks: int = W8_TASKS,
    sleep: float = W8_SLEEP,
    gap: float = W8_GAP,
    second_sleep: float | None = None,
) -> dict:
    """
    W8: two jobs of C{tasks} x C{sleep} from two masters over two workers,
    submitted C{gap} s apart; see the module.  Returns the split (L{split})
    and each job's elapsed seconds.

    @param second_sleep: the second job's tasks sleep this long instead
        (default: C{sleep}).
    """
    cluster = fresh_cluster()
    side = os.path.join(folder, "w8-side.txt")
    open(side, "w").close()
    job_paths = [os.path.join(folder, "w8-first.toml"), os.path.join(folder, "w8-second.toml")]
    write_w8_job(job_paths[0], side, tasks, sleep)
    write_w8_job(job_paths[1], side, tasks, sleep if second_sleep is None else second_sleep)
    nodes: list[Node] = []
    failed: BaseException | None = None
    try:
        deadline = time.monotonic() + timeout
        nodes += _start_workers(folder, cluster, deadline)
        masters = [
            start_node(folder, name, ["--capabilities", IDLE_CAPABILITY], cluster, slots=SLOTS) for name in MASTERS
        ]
        nodes += masters
        for master in masters:
            for worker in WORKERS:
                pattern = rf"Node {re.escape(master.name)} connected to peer {re.escape(worker)}\b"
                wait_until(lambda: first_line(master, pattern) is not None, nodes, deadline, pattern)
        ports = [node_port(master, nodes, deadline) for master in masters]
        first = client(ports[0], ["submit", job_paths[0]], timeout).strip()
        submitted = time.monotonic()
        time.sleep(max(0.0, submitted + gap - time.monotonic()))
        second = client(ports[1], ["submit", job_paths[1]], timeout).strip()
        for master, job in zip(masters, (first, second)):
            ended = rf"Job {re.escape(job)} (finished|was cancelled)"
            wait_until(lambda: first_line(master, ended) is not None, nodes, deadline, f"W8 job {job} to finish")
        runs = read_side(side)
        figures = split(runs, first, second)
        for worker in WORKERS:
            # Each worker's own split, in the same window: a worker captured by one master shows here.
            on = read_side(side, worker)
            mine = overlap(on.get(first, ()), figures["start"], figures["end"])
            theirs = overlap(on.get(second, ()), figures["start"], figures["end"])
            figures[f"share_{worker}"] = mine / (mine + theirs) if mine + theirs > 0 else None
        for label, master, job in (("first", masters[0], first), ("second", masters[1], second)):
            document = json.loads(client(node_port(master, nodes, deadline), ["result", "--json", job], timeout))
            summary = document["job"]
            if summary["state"] != "finished" or summary["counts"].get("succeeded") != tasks:
                raise RunFailed(f"W8 job {job}: {summary['state']}, {summary.get('succeeded')} of {tasks} succeeded")
            figures[f"{label}_elapsed"] = float(summary["finished"]) - float(summary["started"])
        figures["runs"] = {job: len(runs.get(job, ())) for job in (first, second)}
        return figures
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed)
