"""
The p2pexec side of the benchmark suite: one run of each workload, on real
``twistd p2pexec`` processes on loopback.  L{run} (``make bench``) and
L{compare} (``make bench-compare``) call these; each returns a dict of
figures, or raises L{RunFailed} after stopping everything it started.

Topologies (every node ``--slots 2``, the CPU count of the reference
machine; the master holds the job file and writes ``--results``):

  - W1/W4: workers ``bench1`` and ``bench2`` (capability ``w``) are started
    and listening, then the master ``master``, which runs no task kind
    itself, so that every task crosses the network twice; every node
    ``--replicas 2`` (the default; W1-r0: ``--replicas 0``).  Once the
    master is connected to both workers (its replicas), 10,000 tasks
    without a command are submitted with ``p2pexec submit``.  tasks/s =
    tasks / the ``elapsed`` of the master's "Job ... finished" line
    (accepted -> last result).  W4 is read from
    the same runs: VmHWM of the master and of ``bench1`` from /proc, just
    before they are stopped.
  - W2: 2,000 tasks ``command = ["true"]`` given to one node with
    ``--slots 2``, which runs them itself: at most two ``true`` processes at
    a time on one machine, as with ``xargs -P2``.  Also measured: the same
    through the network, a master that runs nothing and one worker
    ``bench1`` with ``--slots 2`` (both on the same two CPUs), and the W1
    cluster (two such workers).  Wall time = the results
    file's ``elapsed``; also reported: from starting the master process to
    the results file appearing (``launch``), which adds the master's own
    start-up.  ``xargs -P 2 -n 1 true`` over the 2,000 task ids is timed in
    the same run.
  - W3: the master (runs nothing; a job of 10 tasks without a command) and
    two workers are launched back to back, without waiting; seconds from
    just before the first launch (time.time()) to the timestamp of the
    master's first "Master received confirmation" line
    (``--logger=p2pexec.log.observer``, microsecond UTC timestamps).
    Its floor, in the same repetition: three bare twistd nodes
    (``benchmarks/_floor``: listen, join the group, log "started", no
    p2pexec code) launched the same way; seconds until two are up.
  - W5: as W1 (master runs nothing, two workers with 2 slots), 1,000 tasks
    ``echo $P2PEXEC_TASK_ID >> SIDE; sleep 0.01`` (shell).  Once SIDE has
    300 lines, ``bench2`` gets SIGKILL and its supervisor starts a worker
    again at once (as systemd does for ``p2pexec@.service`` with
    ``Restart=on-failure``, and Dask's nanny does).  Lost = tasks without a succeeded
    result or never in SIDE; run twice = executions beyond the first
    (lines of SIDE beyond one per task).  The same run without the kill is
    the baseline; both times are the results file's ``elapsed``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

from _cluster import (
    CHECKOUT,
    Node,
    RunFailed,
    Watch,
    first_stamp,
    fresh_cluster,
    stamp_of,
    start_node,
    stop_nodes,
    wait_listening,
    wait_until,
)

SLOTS = 2
KIND = "w"
WORKERS = ("bench1", "bench2")
MASTER = "master"
IDLE_CAPABILITY = "none-of-these"
"""The master's --capabilities when it runs nothing itself."""

W5_KILL_FRACTION = 0.3


def write_job(path: str, count: int, kind: str = KIND, command: str | None = None, shell: bool = False) -> None:
    """
    A TOML job of C{count} tasks C{<kind><n>}; C{command} is written as a
    TOML literal (a basic string when C{shell}, else the raw TOML text).
    """
    with open(path, "w", encoding="utf-8") as f:
        if command is not None:
            f.write("[defaults]\n")
            if shell:
                f.write(f"command = {json.dumps(command)}\nshell = true\n\n")
            else:
                f.write(f"command = {command}\n\n")
        for number in range(1, count + 1):
            f.write(f'[[task]]\nid = "{kind}{number}"\nkind = "{kind}"\n\n')


def _read_results(path: str, tasks: int, allow_failed: bool = False) -> dict:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    if not allow_failed and not (report["total"] == report["succeeded"] == tasks and report["failed"] == 0):
        raise RunFailed(
            f"job {report['job']}: {report['succeeded']} of {report['total']} succeeded, "
            f"{report['failed']} failed (expected {tasks} to succeed)"
        )
    return report


def _finish(nodes: list[Node], failed: BaseException | None, expected_dead: tuple[Node, ...] = ()) -> None:
    complaints = stop_nodes([n for n in nodes if n not in expected_dead])
    stop_nodes(list(expected_dead))
    if complaints and failed is None:
        raise RunFailed("; ".join(complaints))


def _start_workers(
    folder: str, cluster: str, deadline: float, names=WORKERS, level: str = "info", extra: Sequence[str] = ()
) -> list[Node]:
    nodes = [
        start_node(folder, name, ["--capabilities", KIND, *extra], cluster, level=level, slots=SLOTS) for name in names
    ]
    wait_listening(nodes, nodes, deadline)
    return nodes


def security_options(folder: str, mode: str) -> list[str]:
    """
    The node options of a security C{mode}: C{plain} (none), C{key} (a
    cluster key: sealed datagrams, authenticated connections) or C{tls} (the
    key and TLS on the AMP connections).  The key file is made in C{folder}.
    """
    if mode == "plain":
        return []
    path = os.path.join(folder, "cluster.key")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    return ["--key-file", path] + (["--tls"] if mode == "tls" else [])


W1_REPLICAS = 2
"""W1's C{--replicas} (the default): every job's records held by a majority of master + 2 workers."""

W1_FINISHED = re.compile(r"Job (\S+) finished: (\d+) succeeded, (\d+) failed, ([0-9.]+)s elapsed")


def submit(folder: str, port: int, job_path: str, timeout: float) -> str:
    """Submit C{job_path} to the node on C{port} with C{p2pexec submit}; return the job id."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", "submit", job_path],
            capture_output=True,
            text=True,
            cwd=folder,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RunFailed(f"p2pexec submit did not finish within {timeout:g}s") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise RunFailed(f"p2pexec submit exited with status {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout.split()[-1]


def w1(
    folder: str, job_path: str, tasks: int, timeout: float, security: str = "plain", replicas: int = W1_REPLICAS
) -> dict:
    """
    W1 (and W4): no-command tasks through a master that runs nothing and two
    workers, every node started with C{--replicas replicas}; C{security} as in
    L{security_options}.  The job is submitted once the master is connected
    to both workers, so that they are its replicas.
    """
    extra = [*security_options(folder, security), "--replicas", str(replicas)]
    cluster = fresh_cluster()
    nodes: list[Node] = []
    failed: BaseException | None = None
    try:
        deadline = time.monotonic() + timeout
        nodes += _start_workers(folder, cluster, deadline, extra=extra)
        master = start_node(folder, MASTER, ["--capabilities", IDLE_CAPABILITY, *extra], cluster, slots=SLOTS)
        nodes.append(master)
        watch = Watch(
            master,
            port=r"Node \S+ started on port (\d+)",
            connected=r"Node \S+ connected to peer (\S+)",
            finished=W1_FINISHED.pattern,
            replicated=r"Node \S+ replicates job \S+ to (.+) \(a majority",
        )
        wait_until(lambda: watch.poll()["connected"] >= set(WORKERS), nodes, deadline, "the W1 master to connect")
        port = int(next(iter(watch.found["port"])))
        job = submit(folder, port, job_path, max(1.0, deadline - time.monotonic()))
        wait_until(lambda: bool(watch.poll()["finished"]), nodes, deadline, "the W1 job to finish")
        if (
            replicas
            and watch.found["replicated"] != {", ".join(WORKERS)}
            and watch.found["replicated"] != {", ".join(reversed(WORKERS))}
        ):
            raise RunFailed(f"job {job} was replicated to {watch.found['replicated'] or 'nobody'}, not both workers")
        line = next(line for line in master.lines() if W1_FINISHED.search(line))
        match = W1_FINISHED.search(line)
        assert match is not None
        if match.group(1) != job or int(match.group(2)) != tasks or int(match.group(3)) != 0:
            raise RunFailed(f"W1 ended otherwise than with {tasks} tasks succeeded: {line}")
        elapsed = float(match.group(4))
        master_memory = master.memory()
        worker_memory = nodes[0].memory()
        other_worker_memory = nodes[1].memory()
        return {
            "cpu": sum(node.cpu_seconds() or 0.0 for node in nodes),
            "elapsed": elapsed,
            "tasks_per_s": tasks / elapsed,
            "master_hwm": master_memory.get("VmHWM"),
            "worker_hwm": worker_memory.get("VmHWM"),
            "worker2_hwm": other_worker_memory.get("VmHWM"),
            "master_rss": master_memory.get("VmRSS"),
            "worker_rss": worker_memory.get("VmRSS"),
        }
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed)


def w2(folder: str, job_path: str, ids_path: str, tasks: int, timeout: float, workers: int = 0) -> dict:
    """
    W2: 2,000 ``true`` against xargs -P2.  With C{workers} 0, one node with
    2 slots runs the job it was given (two processes at a time on one
    machine, as xargs -P2).  Otherwise a master that runs nothing and
    C{workers} workers with 2 slots each: one worker runs two at a time
    through the network path (master and worker competing for the same
    CPUs); two (the W1 cluster) run four.
    """
    cluster = fresh_cluster()
    results_path = os.path.join(folder, "w2-results.json")
    nodes: list[Node] = []
    failed: BaseException | None = None
    figures: dict = {}
    try:
        deadline = time.monotonic() + timeout
        if workers:
            nodes += _start_workers(folder, cluster, deadline, names=WORKERS[:workers])
        launched = time.monotonic()
        nodes.append(
            start_node(
                folder,
                MASTER,
                [
                    "--capabilities",
                    KIND if not workers else IDLE_CAPABILITY,
                    "--job",
                    job_path,
                    "--results",
                    results_path,
                ],
                cluster,
                slots=SLOTS,
            )
        )
        done_at = wait_until(lambda: os.path.exists(results_path), nodes, deadline, "the W2 job to finish", poll=0.002)
        report = _read_results(results_path, tasks)
        figures["elapsed"] = float(report["elapsed"])
        figures["launch"] = done_at - launched
        figures["master_cpu"] = nodes[-1].cpu_seconds()
        figures["worker_cpu"] = nodes[0].cpu_seconds()
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed)
    figures["xargs"] = xargs(ids_path, timeout)
    figures["ratio"] = figures["elapsed"] / figures["xargs"]
    return figures


def xargs(ids_path: str, timeout: float) -> float:
    """Seconds for C{xargs -P 2 -n 1 true} over the task ids (one ``true ID`` per task)."""
    with open(ids_path, "rb") as ids:
        started = time.monotonic()
        process = subprocess.Popen(["xargs", "-P", "2", "-n", "1", "true"], stdin=ids, start_new_session=True)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RunFailed(f"xargs did not finish within {timeout:g}s") from None
        took = time.monotonic() - started
    if status != 0:
        raise RunFailed(f"xargs exited with status {status}")
    return took


def w3(folder: str, job_path: str, timeout: float) -> dict:
    """W3: three nodes launched together; seconds from launch to the master's first result."""
    cluster = fresh_cluster()
    results_path = os.path.join(folder, "w3-results.json")
    nodes: list[Node] = []
    failed: BaseException | None = None
    try:
        deadline = time.monotonic() + timeout
        launched = time.time()
        master = start_node(
            folder,
            MASTER,
            ["--capabilities", IDLE_CAPABILITY, "--job", job_path, "--results", results_path],
            cluster,
            slots=SLOTS,
        )
        nodes.append(master)
        for name in WORKERS:
            nodes.append(start_node(folder, name, ["--capabilities", KIND], cluster, slots=SLOTS))
        watch = Watch(master, first=r"(Master received confirmation)", connected=r"Node \S+ connected to peer (\S+)")
        wait_until(lambda: bool(watch.poll()["first"]), nodes, deadline, "the W3 master's first result")
        wait_until(lambda: os.path.exists(results_path), nodes, deadline, "the W3 job to finish")
        # Stop nobody before every node is up (a node that gets SIGTERM while it
        # is still importing dies of it): wait for both workers to connect.
        wait_until(lambda: watch.poll()["connected"] >= set(WORKERS), nodes, deadline, "both W3 workers to connect")
        first = first_stamp(master, r"Master received confirmation")
        if first is None:
            raise RunFailed("no timestamp on the master's first confirmation line")
        phases = {}
        for node in nodes:
            started = first_stamp(node, r"Node \S+ started on port")
            phases[node.name] = None if started is None else started - launched
        connected = first_stamp(master, r"Node \S+ connected to peer")
        lines = [line for line in master.lines() if "connected to peer" in line]
        worker_up = [phases[name] for name in WORKERS if phases[name] is not None]
        pair_up = max(phases[MASTER], min(worker_up)) if phases[MASTER] is not None and worker_up else None
        return {
            "all_connected": stamp_of(lines[-1]) - launched if lines else None,
            "pair_up": pair_up,
            "first_result": first - launched,
            "master_up": phases[MASTER],
            "last_up": max(v for v in phases.values() if v is not None),
            "first_connect": None if connected is None else connected - launched,
        }
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed)


def w3_floor(folder: str, timeout: float) -> dict:
    """
    The floor under W3: three bare twistd nodes (C{p2pexec-floor}: listen,
    join the group, log "started"; no p2pexec code) launched together, as W3
    launches its nodes; seconds from launch until two of them, and all three,
    are up.
    """
    cluster = fresh_cluster()
    nodes: list[Node] = []
    failed: BaseException | None = None
    try:
        deadline = time.monotonic() + timeout
        launched = time.time()
        for name in (MASTER, *WORKERS):
            nodes.append(start_node(folder, name, [], cluster, plugin="p2pexec-floor"))
        started = r"Node \S+ started on port"
        wait_until(lambda: all(first_stamp(n, started) is not None for n in nodes), nodes, deadline, "3 floor nodes")
        up = sorted(first_stamp(n, started) - launched for n in nodes)
        return {"two_up": up[1], "all_up": up[2]}
    except BaseException as e:
        failed = e
        raise
    finally:
        # A bare twistd exits with the signal that stopped it (-15), which is as expected here.
        _finish(nodes, failed, expected_dead=tuple(nodes))


def w5(folder: str, job_path: str, side_path: str, tasks: int, kill: bool, timeout: float) -> dict:
    """W5: shell tasks on two workers; with C{kill}, SIGKILL one worker at 30%."""
    cluster = fresh_cluster()
    results_path = os.path.join(folder, f"w5-{'kill' if kill else 'base'}-results.json")
    open(side_path, "w").close()
    nodes: list[Node] = []
    failed: BaseException | None = None
    victim: Node | None = None
    killed_at_lines = None
    try:
        deadline = time.monotonic() + timeout
        nodes += [start_node(folder, name, ["--capabilities", KIND], cluster, slots=SLOTS) for name in WORKERS]
        wait_listening(nodes, nodes, deadline)
        master = start_node(
            folder,
            MASTER,
            ["--capabilities", IDLE_CAPABILITY, "--job", job_path, "--results", results_path],
            cluster,
            slots=SLOTS,
        )
        nodes.append(master)
        killed_at = None
        if kill:
            victim = nodes[1]
            threshold = int(tasks * W5_KILL_FRACTION)

            def side_lines() -> int:
                with open(side_path, "rb") as f:
                    return f.read().count(b"\n")

            wait_until(lambda: side_lines() >= threshold, nodes, deadline, "30% of the W5 tasks to start", poll=0.001)
            victim.process.send_signal(signal.SIGKILL)
            killed_at = time.time()
            victim.process.wait()
            killed_at_lines = side_lines()
            # Its supervisor starts it again at once, as systemd does for
            # p2pexec@.service (Restart=on-failure) and Dask's nanny does
            # for a Dask worker.  Its log goes to a file of its own.
            nodes.append(
                start_node(
                    folder,
                    victim.name + "-restarted",
                    ["--capabilities", KIND],
                    cluster,
                    slots=SLOTS,
                )
            )
        alive = [n for n in nodes if n is not victim]
        wait_until(lambda: os.path.exists(results_path), alive, deadline, "the W5 job to finish")
        report = _read_results(results_path, tasks, allow_failed=True)
        with open(side_path, encoding="utf-8") as f:
            runs = Counter(line.strip() for line in f if line.strip())
        ids = [task["id"] for task in report["tasks"]]
        succeeded = {task["id"] for task in report["tasks"] if task.get("status") == "succeeded"}
        lost = sum(1 for i in ids if i not in succeeded or runs.get(i, 0) == 0)
        requeued = first_stamp(master, r"put \d+ unconfirmed task\(s\) of job")
        return {
            "requeue_delay": None if killed_at is None or requeued is None else requeued - killed_at,
            "twice": sorted(i for i, count in runs.items() if count > 1),
            "elapsed": float(report["elapsed"]),
            "lost": lost,
            "reruns": sum(count - 1 for count in runs.values() if count > 1),
            "reassigned": sum(1 for task in report["tasks"] if task.get("attempts", 1) > 1),
            "stale": report.get("stale_results_dropped", 0),
            "killed_at": killed_at_lines,
            "victim_slots": SLOTS if kill else None,
        }
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed, expected_dead=(victim,) if victim is not None else ())


class Files:
    """The job files of every workload, written once per suite run."""

    def __init__(self, top: str, w1_tasks: int, w2_tasks: int, w5_tasks: int) -> None:
        self.top = top
        self.w1_job = os.path.join(top, "w1.toml")
        write_job(self.w1_job, w1_tasks)
        self.w2_job = os.path.join(top, "w2.toml")
        write_job(self.w2_job, w2_tasks, command='["true"]')
        self.w2_ids = os.path.join(top, "w2-ids.txt")
        with open(self.w2_ids, "w", encoding="ascii") as f:
            f.writelines(f"{KIND}{n}\n" for n in range(1, w2_tasks + 1))
        self.w3_job = os.path.join(top, "w3.toml")
        write_job(self.w3_job, 10)
        self.side = os.path.join(top, "w5-side.txt")
        self.w5_job = os.path.join(top, "w5.toml")
        write_job(
            self.w5_job,
            w5_tasks,
            command=f'echo "$P2PEXEC_TASK_ID" >> {shlex.quote(self.side)}; sleep 0.01',
            shell=True,
        )


W7_REPLICAS = ("--replicas", "2")
"""Every W7 node's replication, given explicitly whatever the node's default is."""


def node_port(node: Node, nodes: Sequence[Node], deadline: float) -> int:
    """The TCP port C{node} listens on (from its "started on port" line)."""
    pattern = rf"Node {re.escape(node.name)} started on port (\d+)"
    wait_until(lambda: first_line(node, pattern) is not None, nodes, deadline, f"{node.name} to say its port")
    return int(first_line(node, pattern) or 0)


def client(port: int, argv: Sequence[str], timeout: float) -> str:
    """Run C{p2pexec --connect 127.0.0.1:PORT ARGV...}; return its output (RunFailed unless it exits 0)."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("P2PEXEC_CONNECT", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RunFailed(f"p2pexec {' '.join(argv)} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        raise RunFailed(f"p2pexec {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_mesh(nodes: list[Node], everyone: list[Node], deadline: float) -> None:
    """Wait until each of C{nodes} logged a connection to each other (the replica set is taken from them)."""
    for node in nodes:
        for other in nodes:
            if other is not node:
                pattern = rf"Node {re.escape(node.name)} connected to peer {re.escape(other.name)}\b"
                wait_until(lambda: first_line(node, pattern) is not None, everyone, deadline, f"{pattern!r}")


def w7(folder: str, job_path: str, side_path: str, tasks: int, kill: bool, timeout: float) -> dict:
    """
    W7: W5's job on a master that runs nothing and two workers, every node
    C{--replicas 2}, the job submitted once they are all connected; with
    C{kill}, the MASTER is SIGKILLed at 30% and never restarted.  The result
    is fetched through a surviving node either way.
    """
    cluster = fresh_cluster()
    open(side_path, "w").close()
    nodes: list[Node] = []
    failed: BaseException | None = None
    master: Node | None = None
    try:
        deadline = time.monotonic() + timeout
        nodes += _start_workers(folder, cluster, deadline, extra=W7_REPLICAS)
        master = start_node(folder, MASTER, ["--capabilities", IDLE_CAPABILITY, *W7_REPLICAS], cluster, slots=SLOTS)
        nodes.append(master)
        wait_mesh(nodes, nodes, deadline)
        ports = {node.name: node_port(node, nodes, deadline) for node in nodes}
        job = client(ports[MASTER], ["submit", job_path], timeout).strip()
        replicated = first_line(master, rf"replicates job {re.escape(job)} to (.*) \(a majority")
        if replicated is None or "no other node" in replicated:
            raise RunFailed(f"job {job} was not replicated to both workers: {replicated!r}")
        figures: dict = {"job": job}
        leader = master
        if kill:
            threshold = int(tasks * W5_KILL_FRACTION)
            wait_until(lambda: side_count(side_path) >= threshold, nodes, deadline, "30% of the W7 tasks", poll=0.001)
            master.process.send_signal(signal.SIGKILL)
            master.process.wait()
            figures["killed_at"] = side_count(side_path)
            took = re.compile(rf"Node (\S+) took over job {re.escape(job)} as master at epoch (\d+)")
            alive = [n for n in nodes if n is not master]
            wait_until(
                lambda: any(first_line(n, took.pattern) for n in alive), alive, deadline, "a worker to take W7 over"
            )
            leader = next(n for n in alive if first_line(n, took.pattern))
        ended = rf"Job {re.escape(job)} (finished|was cancelled)"
        survivors = [n for n in nodes if n is not master or not kill]
        wait_until(lambda: first_line(leader, ended) is not None, survivors, deadline, "the W7 job to finish")
        asker = next(n for n in survivors if n is not leader)
        document = json.loads(client(ports[asker.name], ["result", "--json", job], timeout))
        summary = document["job"]
        if summary["state"] != "finished" or summary["total"] != tasks:
            raise RunFailed(f"job {job} through {asker.name}: {summary['state']}, {summary['total']} tasks")
        with open(side_path, encoding="utf-8") as f:
            runs = Counter(line.strip() for line in f if line.strip())
        succeeded = {task["id"] for task in document["tasks"] if task.get("status") == "succeeded"}
        ids = [f"{KIND}{n}" for n in range(1, tasks + 1)]
        figures.update(
            elapsed=float(summary["finished"]) - float(summary["started"]),
            lost=sum(1 for i in ids if i not in succeeded or runs.get(i, 0) == 0),
            reruns=sum(count - 1 for count in runs.values() if count > 1),
            reassigned=sum(1 for task in document["tasks"] if task.get("attempts", 1) > 1),
            asked=asker.name,
            answered_by=summary.get("answered_by"),
            epoch=summary.get("epoch"),
        )
        if kill:
            dead = first_stamp(leader, rf"lost its connection to peer {MASTER}\b|{MASTER}\S* was declared dead")
            taken = first_stamp(leader, rf"took over job {re.escape(job)} as master")
            resumed = first_stamp(leader, r"Master received confirmation")
            if dead is None or taken is None or resumed is None:
                raise RunFailed(f"{leader.name}'s log lacks its detection, takeover or first result line")
            figures.update(leader=leader.name, takeover=taken - dead, resume=resumed - dead)
        return figures
    except BaseException as e:
        failed = e
        raise
    finally:
        _finish(nodes, failed, expected_dead=(master,) if kill and master is not None else ())


def side_count(path: str) -> int:
    """Lines in the side file: task executions started so far."""
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def first_line(node: Node, pattern: str) -> str | None:
    """The first group of the first line of C{node}'s log matching C{pattern} (the whole match without a group)."""
    compiled = re.compile(pattern)
    for line in node.lines():
        match = compiled.search(line)
        if match:
            return match.group(1) if compiled.groups else match.group(0)
    return None
