"""
W6, a slow node (issue 15): does a worker that runs its tasks five times
slower hold up the end of a job?

Two workers of kind ``s`` and a master that runs nothing: ``w6fast`` with
``--slots 4``, ``w6slow`` with ``--slots 1`` whose tasks run five times
slower.  Every task is the shell command::

    echo "start $P2PEXEC_TASK_ID $W6_NODE" >> SIDE
    s=$(date +%s.%N); sleep "${W6_SLEEP:-0.2}"
    echo "end $P2PEXEC_TASK_ID $W6_NODE $s $(date +%s.%N)" >> SIDE

and the slow node is slow because its own environment (given to the node
process, which its tasks inherit) sets ``W6_SLEEP=1.0``: the same task takes
0.2 s on ``w6fast`` and 1.0 s on ``w6slow``, as on a loaded machine.

The ideal balance comes from the same repetition: the same job on the fast
node alone takes ``alone`` seconds (its results file's elapsed: launch
overheads included); the two nodes' rates are measured from the SIDE lines
of the two-node run (slots / mean run time of a task on each node), and the
ideal is ``alone * rate_fast / (rate_fast + rate_slow)``: the single-node
time spread over both nodes' combined rate.  The figure is makespan / ideal.
"""

from __future__ import annotations

import os
import shlex
import time

from _cluster import Node, RunFailed, Watch, fresh_cluster, start_node, wait_listening, wait_until
from workloads import IDLE_CAPABILITY, MASTER, W1_FINISHED, _finish, submit

KIND = "s"
TASKS = 60
FAST, SLOW = "w6fast", "w6slow"
FAST_SLOTS, SLOW_SLOTS = 4, 1
FAST_SLEEP, SLOW_SLEEP = 0.2, 1.0


def write_job(path: str, side: str, count: int = TASKS) -> None:
    """The W6 job: C{count} tasks of kind C{s}, each the shell command above, appending to C{side}."""
    quoted = shlex.quote(side)
    command = (
        f'echo "start $P2PEXEC_TASK_ID $W6_NODE" >> {quoted}; s=$(date +%s.%N); '
        f'sleep "${{W6_SLEEP:-{FAST_SLEEP}}}"; echo "end $P2PEXEC_TASK_ID $W6_NODE $s $(date +%s.%N)" >> {quoted}'
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'[defaults]\ncommand = "{command.replace(chr(34), chr(92) + chr(34))}"\nshell = true\n\n')
        for number in range(1, count + 1):
            f.write(f'[[task]]\nid = "{KIND}{number}"\nkind = "{KIND}"\n\n')


def run(folder: str, job_path: str, side: str, timeout: float, slow: bool = True) -> dict:
    """
    One W6 job: on both workers (C{slow}), or on the fast one alone.

    @return: C{elapsed} (the master's "Job ... finished" figure), C{starts}
        and C{ends} per node, C{mean} run time per node, C{twice} (tasks
        started more than once).
    """
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(side):
        os.unlink(side)
    cluster = fresh_cluster()
    nodes: list[Node] = []
    failed: BaseException | None = None
    try:
        deadline = time.monotonic() + timeout
        workers = [(FAST, FAST_SLOTS, {"W6_NODE": FAST})]
        if slow:
            workers.append((SLOW, SLOW_SLOTS, {"W6_NODE": SLOW, "W6_SLEEP": str(SLOW_SLEEP)}))
        for name, slots, env in workers:
            nodes.append(start_node(folder, name, ["--capabilities", KIND], cluster, slots=slots, env=env))
        wait_listening(nodes, nodes, deadline)
        master = start_node(folder, MASTER, ["--capabilities", IDLE_CAPABILITY], cluster, slots=1)
        nodes.append(master)
        watch = Watch(
            master,
            port=r"Node \S+ started on port (\d+)",
            connected=r"Node \S+ connected to peer (\S+)",
            finished=W1_FINISHED.pattern,
        )
        names = {name for name, _, _ in workers}
        wait_until(lambda: watch.poll()["connected"] >= names, nodes, deadline, "the W6 master to connect")
        port = int(next(iter(watch.found["port"])))
        job = submit(folder, port, job_path, max(1.0, deadline - time.monotonic()))
        wait_until(lambda: bool(watch.poll()["finished"]), nodes, deadline, "the W6 job to finish")
        line = next(line for line in master.lines() if W1_FINISHED.search(line))
        match = W1_FINISHED.search(line)
        assert match is not None
        if match.group(1) != job or int(match.group(2)) != TASKS or int(match.group(3)) != 0:
            raise RunFailed(f"W6 ended otherwise than with {TASKS} tasks succeeded: {line}")
        return {"elapsed": float(match.group(4)), **read_side(side)}
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed)


def read_side(side: str) -> dict:
    """Starts, ends and mean run time per node, and tasks started more than once, from the SIDE lines."""
    starts: dict[str, int] = {}
    ends: dict[str, list[float]] = {}
    started: dict[str, int] = {}
    with open(side, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[:1] == ["start"] and len(fields) == 3:
                starts[fields[2]] = starts.get(fields[2], 0) + 1
                started[fields[1]] = started.get(fields[1], 0) + 1
            elif fields[:1] == ["end"] and len(fields) == 5:
                ends.setdefault(fields[2], []).append(float(fields[4]) - float(fields[3]))
    return {
        "starts": starts,
        "ends": {node: len(times) for node, times in ends.items()},
        "mean": {node: sum(times) / len(times) for node, times in ends.items()},
        "twice": sum(1 for count in started.values() if count > 1),
    }


def w6(folder: str, job_path: str, side: str, timeout: float) -> dict:
    """
    W6: the fast node alone, then both nodes, in one repetition; the
    makespan of the second against the ideal balance computed from the first
    and the rates measured in the second (see the module's docstring).
    """
    alone = run(os.path.join(folder, "alone"), job_path, side, timeout, slow=False)
    both = run(os.path.join(folder, "both"), job_path, side, timeout, slow=True)
    mean = both["mean"]
    fast_rate = FAST_SLOTS / mean.get(FAST, FAST_SLEEP)
    # A slow node that finished nothing (every copy of its lost) counts at its nominal pace.
    slow_rate = SLOW_SLOTS / mean.get(SLOW, SLOW_SLEEP)
    ideal = alone["elapsed"] * fast_rate / (fast_rate + slow_rate)
    return {
        "elapsed": both["elapsed"],
        "alone": alone["elapsed"],
        "ideal": ideal,
        "ratio": both["elapsed"] / ideal,
        "fast_rate": fast_rate,
        "slow_rate": slow_rate,
        "slow_starts": both["starts"].get(SLOW, 0),
        "slow_ends": both["ends"].get(SLOW, 0),
        "twice": both["twice"],
    }
