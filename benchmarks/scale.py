"""
How p2pexec scales: forming a cluster of many nodes, and one big job.

Part 1, formation.  N real ``twistd p2pexec`` processes (as the other
benchmarks start them: the checkout on ``PYTHONPATH``, the twistd beside this
Python, ``--pidfile=``, ``--logger=p2pexec.log.observer`` for microsecond
timestamps, ``--port 0``, ``--slots 1``, a cluster name and a multicast group
of this run's own) are started together, as fast as possible, on loopback.
Measured:

  - formation time: from starting the first process until every node has
    logged "discovered peer" for all N-1 others, and until every node has
    logged "connected to peer" for all N-1 others (the timestamps come from
    the nodes' own logs);
  - the datagrams on the group, by type, during formation and during a quiet
    period afterwards (``--quiet``, 30 s): this script joins the group with a
    passive socket (SO_REUSEADDR/SO_REUSEPORT, IP_ADD_MEMBERSHIP on
    127.0.0.1) that only receives;
  - each node's memory after formation (VmRSS, VmHWM from /proc/PID/status);
  - the TCP connections: the ESTABLISHED sockets each node holds (its socket
    descriptors matched against /proc/net/tcp), and the bytes carried by the
    mesh during the quiet period (``ss -tin``: bytes_sent + bytes_received of
    each connection, counted once, at the accepting end);
  - the CPU seconds (utime + stime from /proc/PID/stat) each node uses while
    idle during the quiet period: the steady-state cost of the mesh.

Part 2, a job.  One master and four workers (``--capabilities w``; the master
has ``--capabilities none-of-these``, so it runs nothing) run a job of
``--tasks`` tasks (100,000) of kind w without a command.  Measured: the
``elapsed`` of the master's results file, tasks/s, the wall time from
starting the master to its results file, and the peak memory (VmHWM) of the
master and of the workers.

Every log is searched for "Traceback", "Unhandled", "#error", "#critical"
and "#warn" (separately for the run and for the shutdown after it).

Safety:

  - everything stays on loopback: by default the script re-runs itself in a
    new network namespace whose only interface is ``lo`` (``unshare -n``,
    which needs root; ``--no-netns`` runs in the host's namespace, still only
    on 127.0.0.1);
  - a run of more than 10 nodes holds ``/tmp/p2pexec-heavy.lock`` (flock),
    so that heavy runs of different people do not overlap.  Run it as
    ``flock /tmp/p2pexec-heavy.lock python benchmarks/scale.py``; when the
    lock is not held by an ancestor process, the script takes it itself;
  - every process is started by PID and stopped by PID (SIGTERM, then
    SIGKILL) in a ``finally``, also on SIGINT, SIGTERM or SIGHUP; every
    phase fails after ``--timeout`` seconds.

Usage::

    flock /tmp/p2pexec-heavy.lock .venv/bin/python benchmarks/scale.py \\
        [--nodes 100] [--tasks 100000] [--timeout 600] [--quiet 30] \\
        [--skip-formation] [--skip-job] [--keep] [--no-netns]
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import _cluster

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
LOCK_PATH = "/tmp/p2pexec-heavy.lock"
HEAVY = 10
"""Runs of more nodes than this hold the heavy-job lock."""
NETNS_ENV = "P2PEXEC_SCALE_NETNS"
KIND = "w"
STOP_WAIT = 60.0
"""Seconds the nodes get to leave after SIGTERM before they are killed."""
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PROBLEMS = ("Traceback", "Unhandled", "#error", "#critical", "#warn")


class RunFailed(Exception):
    """A phase did not complete; the message says why."""


def interrupt(number: int, frame: Any) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, through the finally blocks that stop the nodes."""
    raise KeyboardInterrupt


# -- the machine ----------------------------------------------------------------


def machine() -> str:
    """The CPU count and model, the RAM, and the Python, Twisted and kernel versions."""
    try:
        import twisted

        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "?"
    with open("/proc/meminfo", encoding="ascii") as f:
        total = int(f.readline().split()[1]) / 1024 / 1024
    return (
        f"nproc {os.cpu_count()}, {_cluster.cpu_model()}, {total:.0f} GiB RAM; Python {platform.python_version()}, "
        f"Twisted {twisted_version}, {platform.system()} {platform.release()}"
    )


def code_version() -> str:
    """The checkout's commit, and whether p2pexec/ differs from it (the nodes run what is on disk)."""
    try:
        head = subprocess.run(
            ["git", "-C", CHECKOUT, "log", "-1", "--format=%h %ci"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", CHECKOUT, "status", "--porcelain", "--", "p2pexec"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"commit {head}" + ("; p2pexec/ has uncommitted changes" if dirty else "; p2pexec/ as committed")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, from /proc/loadavg."""
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


# -- processes --------------------------------------------------------------------


class Node(_cluster.Node):
    """One twistd process and its log, read incrementally, and its port once known."""

    def __init__(self, name: str, process: subprocess.Popen, log_path: str) -> None:
        super().__init__(name, process, log_path)
        self.port: int | None = None
        self.lines_before_stop: int | None = None


def start_node(folder: str, name: str, options: Sequence[str], cluster: str, group: str) -> Node:
    """Start one twistd p2pexec node named C{name}, logging into C{folder}, in a session of its own."""
    log_path = os.path.join(folder, f"{name}.log")
    argv = [
        TWISTD,
        "--pidfile=",
        "-n",
        "--logger=p2pexec.log.observer",
        "p2pexec",
        "--name",
        name,
        "--port",
        "0",
        "--group",
        group,
        "--cluster",
        cluster,
        "--state-dir",
        os.path.join(folder, "state", name),
        *options,
    ]
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as out:
        # A session of its own: a Ctrl-C in the terminal reaches this script
        # only, which then stops every node by PID.
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            env=env,
            start_new_session=True,
        )
    return Node(name, process, log_path)


def stop_nodes(nodes: Sequence[Node], wait: float = STOP_WAIT) -> tuple[float, list[str]]:
    """
    Note each node's log length, then stop them all as the suite does
    (L{_cluster.stop_nodes}).  Return the seconds it took and a complaint for
    each node that did not exit 0.
    """
    started = time.monotonic()
    for node in nodes:
        if node.lines_before_stop is None:
            node.lines_before_stop = len(node.lines())
    complaints = _cluster.stop_nodes(nodes, wait)
    return time.monotonic() - started, complaints


def kill_all(nodes: Sequence[Node]) -> None:
    """SIGKILL (by PID) whatever is still running: the last resort of a finally."""
    for node in nodes:
        if node.process.poll() is None:
            try:
                node.process.kill()
            except ProcessLookupError:
                pass
    for node in nodes:
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def check_alive(nodes: Sequence[Node], what: str) -> None:
    """Raise L{RunFailed}, with the end of its log, if any of C{nodes} has exited (while C{what})."""
    for node in nodes:
        if node.process.poll() is not None:
            raise RunFailed(
                f"{node.name} exited with status {node.process.returncode} while {what}; its log ends:\n{node.tail()}"
            )


# -- /proc -------------------------------------------------------------------------


proc_memory = _cluster.proc_memory


def proc_cpu(pid: int) -> float:
    """utime + stime of C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def tcp_counters() -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops of this network namespace (/proc/net/netstat)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
            return {key: table.get(key, 0) for key in ("ListenOverflows", "ListenDrops")}
    return {}


def established_sockets() -> dict[int, tuple[int, int]]:
    """inode -> (local port, remote port) of every ESTABLISHED TCP socket in this namespace."""
    found = {}
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "01":
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            found[int(fields[9])] = (local_port, remote_port)
    return found


def socket_inodes(pid: int) -> tuple[set[int], int]:
    """The inodes of C{pid}'s sockets, and how many descriptors it holds in all."""
    inodes = set()
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            count += 1
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes, count


def mesh_bytes(listen_ports: set[int]) -> tuple[int, int]:
    """
    (connections, bytes) of the TCP connections accepted on C{listen_ports},
    from C{ss -tin}: bytes_sent + bytes_received of each connection's
    accepting end, so each connection is counted once, both directions.
    """
    try:
        out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, 0
    connections = total = 0
    current_port: int | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            fields = line.split()
            current_port = None
            # Recv-Q Send-Q Local:Port Peer:Port
            if len(fields) >= 4:
                try:
                    current_port = int(fields[2].rsplit(":", 1)[1])
                except ValueError:
                    current_port = None
            continue
        if current_port in listen_ports:
            connections += 1
            for key in ("bytes_sent", "bytes_received"):
                match = re.search(rf"\b{key}:(\d+)", line)
                if match:
                    total += int(match.group(1))
            current_port = None
    return connections, total


# -- the passive listener -----------------------------------------------------------


class GroupListener:
    """
    Joins the multicast group on 127.0.0.1 and counts what arrives, by type
    and sender.  It never sends.
    """

    def __init__(self, group: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((group, port))
        mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str, str, int]] = []
        """(wall time, type, sender name, bytes)"""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start receiving, in a thread of its own."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            when = time.time()
            try:
                body = json.loads(data)
                kind, name = body["type"], body["node"]["name"]
            except (ValueError, KeyError, TypeError):
                kind, name = "other", "?"
            self.received.append((when, kind, name, len(data)))

    def stop(self) -> None:
        """Stop receiving and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def dropped(self) -> int | None:
        """Datagrams the kernel dropped on this socket (from /proc/net/udp), if it can be found."""
        try:
            inode = os.fstat(self.sock.fileno()).st_ino
            with open("/proc/net/udp", encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[9]) == inode:
                        return int(fields[-1])
        except (OSError, ValueError):
            pass
        return None

    def window(self, start: float, end: float) -> dict[str, int]:
        """The datagrams received from C{start} to C{end} (wall time), counted by type."""
        counts: dict[str, int] = collections.Counter()
        for when, kind, _, _ in self.received:
            if start <= when < end:
                counts[kind] += 1
        return dict(counts)

    def window_bytes(self, start: float, end: float) -> int:
        """The bytes of the datagrams received from C{start} to C{end} (wall time)."""
        return sum(size for when, _, _, size in self.received if start <= when < end)


# -- logs ----------------------------------------------------------------------------

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}) ")
STARTED = re.compile(r"Node (\S+) started on port (\d+)")
DISCOVERED = re.compile(r"Node (\S+) discovered peer (\S+)")
CONNECTED = re.compile(r"Node (\S+) connected to peer (\S+)")
LOST = re.compile(r"Node (\S+) lost its connection to peer (\S+)")


def stamp_of(line: str) -> float | None:
    """The timestamp of a log line, in seconds since the epoch, or None if it has none."""
    match = STAMP.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def shape(line: str) -> str:
    """A log line without its timestamp, with names, numbers and addresses generalised."""
    text = STAMP.sub("", line)
    text = re.sub(r"\b[0-9a-f]{16}\b", "<id>", text)
    text = re.sub(r"\b\d+(\.\d+)*\b", "<n>", text)
    text = re.sub(r"\bn<n>\b", "<node>", text)
    return text[:200]


def problems(nodes: Sequence[Node]) -> dict[str, Any]:
    """
    The lines of every log that match L{PROBLEMS}, split into those written
    before the nodes were told to stop and those written while stopping.
    """
    found: dict[str, Any] = {"run": collections.Counter(), "stop": collections.Counter(), "nodes": set()}
    for node in nodes:
        lines = node.lines()
        cut = node.lines_before_stop if node.lines_before_stop is not None else len(lines)
        for number, line in enumerate(lines):
            if any(word in line for word in PROBLEMS):
                found["run" if number < cut else "stop"][shape(line)] += 1
                found["nodes"].add(node.name)
    return found


def print_problems(found: dict[str, Any], say: Callable[[str], None]) -> None:
    """Say how many log lines matched L{PROBLEMS} while running and while stopping, and the commonest."""
    for when, label in (("run", "while running"), ("stop", "while stopping")):
        counter = found[when]
        total = sum(counter.values())
        say(f"  log lines matching {'/'.join(PROBLEMS)} {label}: {total}")
        # Group the shapes once more without the node names, ports and delays.
        grouped: dict[str, int] = collections.Counter()
        for text, count in counter.items():
            grouped[re.sub(r"\b([Nn]ode|peer) [\w.-]+", r"\1 <name>", text)] += count
        for text, count in grouped.most_common(12):
            say(f"    {count:6d} x {text}")


# -- helpers -------------------------------------------------------------------------


def stats(values: Sequence[float], fmt: str) -> str:
    """C{min / median / max} of C{values}, each formatted with C{fmt} (the lower median for C{"d"})."""
    if not values:
        return "-"
    middle = statistics.median_low(values) if fmt == "d" else statistics.median(values)
    return f"min {format(min(values), fmt)} / median {format(middle, fmt)} / max {format(max(values), fmt)}"


def mib(value: float) -> float:
    """C{value} bytes in MiB."""
    return value / 1024 / 1024


def save(path: str, figures: dict) -> None:
    """The raw figures as JSON, beside the logs."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(figures, f, default=lambda o: sorted(o) if isinstance(o, set) else repr(o), indent=1)


def say(text: str = "") -> None:
    """Print C{text} at once."""
    print(text, flush=True)


# -- part 1: formation ---------------------------------------------------------------


def formation(folder: str, count: int, timeout: float, quiet: float, group: tuple[str, int], cluster: str) -> dict:
    """Start C{count} nodes at once, measure how they form a cluster and then idle, stop them; return the figures."""
    names = [f"n{number:03d}" for number in range(1, count + 1)]
    group_text = "%s:%d" % group
    listener = GroupListener(*group)
    listener.start()
    nodes: list[Node] = []
    figures: dict[str, Any] = {}
    try:
        counters_before = tcp_counters()
        t0 = time.time()
        for name in names:
            nodes.append(start_node(folder, name, ["--slots", "1"], cluster, group_text))
        spawned = time.time() - t0
        say(
            f"scale: {count} nodes spawned in {spawned:.2f}s (cluster {cluster}, group {group_text}); "
            f"waiting for every node to discover and connect to the {count - 1} others"
        )
        started_at: dict[str, float] = {}
        discovered: dict[str, set[str]] = {name: set() for name in names}
        connected: dict[str, set[str]] = {name: set() for name in names}
        all_discovered_at: dict[str, float] = {}
        all_connected_at: dict[str, float] = {}
        lost = 0
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while len(all_connected_at) < count or len(all_discovered_at) < count:
            for node in nodes:
                for line in node.new_lines():
                    if "Node " not in line:
                        continue
                    match = DISCOVERED.search(line)
                    if match:
                        discovered[node.name].add(match.group(2))
                        if len(discovered[node.name]) == count - 1 and node.name not in all_discovered_at:
                            all_discovered_at[node.name] = stamp_of(line) or time.time()
                        continue
                    match = CONNECTED.search(line)
                    if match:
                        connected[node.name].add(match.group(2))
                        if len(connected[node.name]) == count - 1 and node.name not in all_connected_at:
                            all_connected_at[node.name] = stamp_of(line) or time.time()
                        continue
                    match = LOST.search(line)
                    if match:
                        lost += 1
                        connected[node.name].discard(match.group(2))
                        continue
                    match = STARTED.search(line)
                    if match:
                        node.port = int(match.group(2))
                        started_at[node.name] = stamp_of(line) or time.time()
            check_alive(nodes, "the cluster formed")
            if time.monotonic() > deadline:
                slow = [n for n in names if n not in all_connected_at][:5]
                raise RunFailed(
                    f"the cluster did not form within {timeout:g}s: {len(started_at)} started, "
                    f"{len(all_discovered_at)} discovered all, {len(all_connected_at)} connected to all; "
                    f"for example {slow[0]} is connected to {len(connected[slow[0]])}"
                )
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                say(
                    f"scale:   t+{time.time() - t0:5.1f}s  started {len(started_at)}, discovered all "
                    f"{len(all_discovered_at)}, connected to all {len(all_connected_at)}; "
                    f"connections seen {sum(map(len, connected.values())) // 2} of {count * (count - 1) // 2}; "
                    f"load {load_average()}"
                )
            time.sleep(0.25)
        formed = max(all_connected_at.values())
        figures["started"] = max(started_at.values()) - t0
        figures["discovered"] = max(all_discovered_at.values()) - t0
        figures["connected"] = formed - t0
        figures["lost_during_formation"] = lost
        counters = tcp_counters()
        figures["listen_overflows"] = {k: v - counters_before.get(k, 0) for k, v in counters.items()}
        figures["spawned"] = spawned
        # After formation: memory, connections, CPU; then the quiet period.
        time.sleep(max(0.0, formed + 0.5 - time.time()))
        quiet_start = time.time()
        cpu_before = {node.name: proc_cpu(node.pid) for node in nodes}
        memory = {node.name: proc_memory(node.pid) for node in nodes}
        listen_ports = {node.port for node in nodes if node.port is not None}
        sockets = established_sockets()
        per_node_tcp = []
        per_node_fds = []
        for node in nodes:
            inodes, fds = socket_inodes(node.pid)
            per_node_tcp.append(sum(1 for inode in inodes if inode in sockets))
            per_node_fds.append(fds)
        mesh_connections = sum(1 for local, remote in sockets.values() if local in listen_ports)
        ss_connections, bytes_before = mesh_bytes(listen_ports)
        figures["rss"] = [memory[n].get("VmRSS", 0) for n in names]
        figures["hwm"] = [memory[n].get("VmHWM", 0) for n in names]
        figures["tcp_per_node"] = per_node_tcp
        figures["fds_per_node"] = per_node_fds
        figures["mesh_connections"] = mesh_connections
        figures["ss_connections"] = ss_connections
        say(f"scale: formed; idle for {quiet:g}s to measure the steady state")
        quiet_end = quiet_start + quiet
        # A CPU snapshot every 30 s shows how the idle cost evolves.
        snapshots = [(quiet_start, cpu_before)]
        while time.time() < quiet_end:
            check_alive(nodes, "idle")
            time.sleep(min(1.0, max(0.0, quiet_end - time.time())))
            if time.time() - snapshots[-1][0] >= 30 and quiet_end - time.time() > 5:
                snapshots.append((time.time(), {node.name: proc_cpu(node.pid) for node in nodes}))
        cpu_after = {node.name: proc_cpu(node.pid) for node in nodes}
        snapshots.append((time.time(), cpu_after))
        figures["idle_windows"] = [
            (
                a - t0,
                b - a,
                [cb[n] - ca[n] for n in names],
                listener.window(a, b),
            )
            for (a, ca), (b, cb) in zip(snapshots, snapshots[1:])
        ]
        _, bytes_after = mesh_bytes(listen_ports)
        quiet_end = time.time()
        figures["quiet"] = quiet_end - quiet_start
        figures["cpu_formation"] = [cpu_before[n] for n in names]
        figures["cpu_idle"] = [cpu_after[n] - cpu_before[n] for n in names]
        figures["mesh_bytes_idle"] = bytes_after - bytes_before
        figures["memory_end"] = [proc_memory(node.pid).get("VmRSS", 0) for node in nodes]
        figures["datagrams_formation"] = listener.window(t0, formed)
        figures["datagram_bytes_formation"] = listener.window_bytes(t0, formed)
        figures["datagrams_quiet"] = listener.window(quiet_start, quiet_end)
        figures["datagram_bytes_quiet"] = listener.window_bytes(quiet_start, quiet_end)
        buckets = []
        edge = t0
        while edge < quiet_end:
            buckets.append((edge - t0, listener.window(edge, min(edge + 10, quiet_end)), min(10, quiet_end - edge)))
            edge += 10
        figures["datagram_buckets"] = buckets
        figures["listener_drops"] = listener.dropped()
        figures["t0"] = t0
        figures["log_lines"] = sum(len(node.lines()) for node in nodes)
    finally:
        try:
            figures["stop_seconds"], figures["stop_complaints"] = stop_nodes(nodes)
        finally:
            kill_all(nodes)
            listener.stop()
    figures["problems"] = problems(nodes)
    return figures


def report_formation(count: int, f: dict) -> None:
    """Print the figures of L{formation} for C{count} nodes."""
    pairs = count * (count - 1) // 2
    say()
    say(f"== formation of {count} nodes ==")
    say(f"  all {count} processes spawned          {f['spawned']:8.2f} s")
    say(f"  last node logged 'started on port'   {f['started']:8.2f} s after the first spawn")
    say(f"  every node discovered all {count - 1:3d}      {f['discovered']:8.2f} s")
    say(f"  every node connected to all {count - 1:3d}    {f['connected']:8.2f} s")
    say(f"  'lost its connection' lines during formation: {f['lost_during_formation']}")
    say(f"  listen queue overflows during formation (TcpExt, this namespace): {f.get('listen_overflows')}")
    formation_seconds = f["connected"]
    say(
        f"  datagrams during formation ({formation_seconds:.1f} s): "
        + ", ".join(f"{k} {v} ({v / formation_seconds:.1f}/s)" for k, v in sorted(f["datagrams_formation"].items()))
        + f"; {f['datagram_bytes_formation'] / formation_seconds / 1024:.1f} KiB/s"
    )
    q = f["quiet"]
    say(
        f"  datagrams while idle ({q:.1f} s):       "
        + ", ".join(f"{k} {v} ({v / q:.1f}/s)" for k, v in sorted(f["datagrams_quiet"].items()))
        + f"; {f['datagram_bytes_quiet'] / q / 1024:.1f} KiB/s (each node receives every one)"
    )
    say(f"  datagrams the passive listener's socket dropped: {f['listener_drops']}")
    say("  datagrams per 10 s since the first spawn:")
    for start, counts, width in f["datagram_buckets"]:
        say(f"    t+{start:5.0f}s  " + ", ".join(f"{k} {v / width:.1f}/s" for k, v in sorted(counts.items())))
    say(
        f"  VmRSS after formation (MiB): {stats([mib(v) for v in f['rss']], '.1f')}; "
        f"sum {mib(sum(f['rss'])) / 1024:.2f} GiB"
    )
    say(f"  VmHWM after formation (MiB): {stats([mib(v) for v in f['hwm']], '.1f')}")
    say(f"  VmRSS after idling (MiB):    {stats([mib(v) for v in f['memory_end']], '.1f')}")
    say(f"  ESTABLISHED TCP sockets per node: {stats(f['tcp_per_node'], 'd')} (full mesh: {count - 1})")
    say(f"  open descriptors per node:        {stats(f['fds_per_node'], 'd')}")
    say(
        f"  TCP connections between nodes:    {f['mesh_connections']} (/proc/net/tcp), "
        f"{f['ss_connections']} (ss); a full mesh has {pairs}"
    )
    say(
        f"  mesh TCP bytes while idle:        {f['mesh_bytes_idle'] / q / 1024:.1f} KiB/s in all, "
        f"{f['mesh_bytes_idle'] / q / count:.0f} B/s per node"
    )
    say(
        f"  CPU s per node from start to formation: {stats(f['cpu_formation'], '.2f')}; "
        f"sum {sum(f['cpu_formation']):.1f} s"
    )
    idle = f["cpu_idle"]
    say(
        f"  CPU s per node while idle ({q:.0f} s):      {stats(idle, '.3f')}; "
        f"mean {statistics.mean(idle) / q * 100:.2f}% of a core per node, "
        f"{sum(idle) / q * 100:.1f}% of a core for all {count}"
    )
    if len(f["idle_windows"]) > 1:
        say("  idle windows (start after the first spawn, length): CPU per node, datagrams")
        for start, width, cpu, counts in f["idle_windows"]:
            say(
                f"    t+{start:5.0f}s {width:4.0f}s  CPU {statistics.mean(cpu) / width * 100:.2f}% of a core "
                f"per node (max {max(cpu) / width * 100:.2f}%), "
                + ", ".join(f"{k} {v / width:.1f}/s" for k, v in sorted(counts.items()))
            )
    say(f"  log lines written: {f['log_lines']}")
    say(
        f"  stopping all nodes (SIGTERM, wait for exits): {f['stop_seconds']:.1f} s; "
        f"complaints: {len(f['stop_complaints'])}"
    )
    for complaint in f["stop_complaints"][:10]:
        say(f"    {complaint}")
    print_problems(f["problems"], say)


# -- part 2: a job -------------------------------------------------------------------


def write_job(path: str, count: int) -> None:
    """Write a job of C{count} tasks of kind L{KIND}, without a command, to C{path}."""
    with open(path, "w", encoding="utf-8") as f:
        for number in range(1, count + 1):
            f.write(f'[[task]]\nid = "{KIND}{number}"\nkind = "{KIND}"\n\n')


def job(folder: str, tasks: int, timeout: float, group: tuple[str, int], cluster: str, slots: int | None) -> dict:
    """Run a job of C{tasks} tasks on a master and four workers, stop them; return the figures."""
    group_text = "%s:%d" % group
    job_path = os.path.join(folder, "job.toml")
    results_path = os.path.join(folder, "results.json")
    write_job(job_path, tasks)
    workers = [f"bench{number}" for number in range(1, 5)]
    slot_options = ["--slots", str(slots)] if slots is not None else []
    nodes: list[Node] = []
    figures: dict[str, Any] = {}
    try:
        started = time.monotonic()
        deadline = started + timeout
        for name in workers:
            nodes.append(start_node(folder, name, ["--capabilities", KIND, *slot_options], cluster, group_text))
        # The workers hear the master's first DISCOVER once they listen.
        for node in nodes:
            while not any("DiscoveryProtocol starting on" in line for line in node.lines()):
                check_alive(nodes, "the workers started")
                if time.monotonic() > deadline:
                    raise RunFailed(f"{node.name} did not start within {timeout:g}s")
                time.sleep(0.05)
        master_started = time.monotonic()
        master = start_node(
            folder,
            "master",
            ["--capabilities", "none-of-these", "--job", job_path, "--results", results_path, *slot_options],
            cluster,
            group_text,
        )
        nodes.append(master)
        while not os.path.exists(results_path):
            check_alive(nodes, "the job ran")
            if time.monotonic() > deadline:
                raise RunFailed(f"the job did not finish within {timeout:g}s; the master's log ends:\n{master.tail()}")
            time.sleep(0.05)
        figures["wall"] = time.monotonic() - master_started
        with open(results_path, encoding="utf-8") as f:
            report = json.load(f)
        if not (report["total"] == report["succeeded"] == tasks and report["failed"] == 0):
            raise RunFailed(f"{report['succeeded']} of {report['total']} succeeded, {report['failed']} failed")
        figures["elapsed"] = float(report["elapsed"])
        figures["stale"] = report.get("stale_results_dropped", 0)
        figures["master_memory"] = proc_memory(master.pid)
        figures["worker_memory"] = [proc_memory(node.pid) for node in nodes[:-1]]
        figures["master_cpu"] = proc_cpu(master.pid)
        figures["worker_cpu"] = [proc_cpu(node.pid) for node in nodes[:-1]]
        accepted = None
        for line in master.lines():
            if " is master of job" in line:
                accepted = stamp_of(line)
                break
        first = stamp_of(master.lines()[0]) if master.lines() else None
        figures["master_startup"] = (accepted - first) if accepted and first else None
    finally:
        try:
            figures["stop_seconds"], figures["stop_complaints"] = stop_nodes(nodes)
        finally:
            kill_all(nodes)
    figures["problems"] = problems(nodes)
    return figures


def report_job(tasks: int, slots: int | None, f: dict) -> None:
    """Print the figures of L{job}."""
    say()
    say(
        f"== a job of {tasks} no-command tasks: 1 master (runs nothing) + 4 workers, "
        f"{'--slots ' + str(slots) if slots else 'default --slots (' + str(os.cpu_count()) + ')'} =="
    )
    say(f"  elapsed (master's results file)  {f['elapsed']:8.3f} s  ->  {tasks / f['elapsed']:,.0f} tasks/s")
    say(f"  wall, master start to results    {f['wall']:8.3f} s  (includes parsing the job file and start-up)")
    if f.get("master_startup") is not None:
        say(
            f"  master: from its first log line (the job file is parsed before it) to 'is master of job': {f['master_startup']:.3f} s"
        )
    mm = f["master_memory"]
    say(
        f"  master VmHWM {mib(mm.get('VmHWM', 0)):.1f} MiB, VmRSS at the end {mib(mm.get('VmRSS', 0)):.1f} MiB, "
        f"CPU {f['master_cpu']:.2f} s"
    )
    say(
        f"  workers VmHWM (MiB): {stats([mib(m.get('VmHWM', 0)) for m in f['worker_memory']], '.1f')}; "
        f"CPU s: {stats(f['worker_cpu'], '.2f')}"
    )
    say(f"  stale results dropped: {f['stale']}")
    say(f"  stopping: {f['stop_seconds']:.1f} s; complaints: {f['stop_complaints'] or 'none'}")
    print_problems(f["problems"], say)


# -- part 3: the cost of one datagram and one peer exchange, in-process ---------------


def micro(sizes: Sequence[int], say: Callable[[str], None] = say) -> dict:
    """
    The CPU cost, in this process, of what an idle node does over and over
    in a cluster of N nodes: handle one HELLO from a known peer, and one
    PEER_EXCHANGE (build and encode its list, decode and merge the other's),
    with the node's own code (L{p2pexec.node.Node} on a memory reactor).
    The socket and reactor overhead of a real datagram or AMP box is not in
    these figures.
    """
    sys.path.insert(0, CHECKOUT)
    from twisted.internet.defer import succeed
    from twisted.internet.testing import MemoryReactorClock

    from p2pexec import commands, datagram
    from p2pexec.model import NodeInfo
    from p2pexec.node import NodeConfig, create_node
    from p2pexec.peer import parse_peer_list

    class NoRunner:
        def run(self, job: str, assignment: Any) -> Any:
            raise NotImplementedError

        def stop_all(self) -> None:
            pass

    class Connection:
        dialled = True
        transport = None

        def __init__(self, now: float) -> None:
            self.last_received = now

        def callRemote(self, *args: Any, **kwargs: Any) -> Any:
            return succeed({})

    figures = {}
    for size in sizes:
        reactor = MemoryReactorClock()
        node = create_node(NodeConfig(name="n000", cluster="micro", capabilities=frozenset({"n"})), reactor, NoRunner())
        peers = [
            NodeInfo(
                name=f"n{k:03d}",
                instance=os.urandom(8).hex(),
                host="127.0.0.1",
                port=30000 + k,
                capabilities=("n",),
                slots=1,
                cluster="micro",
            )
            for k in range(1, size)
        ]
        for info in peers:
            node.peers.connected(info, Connection(reactor.seconds()), reactor.seconds())
        hellos = [datagram.encode(datagram.Datagram(type=datagram.HELLO, node=info)) for info in peers]
        rounds = max(1, 20000 // len(hellos))
        started = time.process_time()
        for _ in range(rounds):
            for data in hellos:
                node.discovery.datagramReceived(data, ("127.0.0.1", 40000))
        per_hello = (time.process_time() - started) / (rounds * len(hellos))
        argument = commands.JSON()
        exchanges = max(3, 600 // size)
        started = time.process_time()
        for _ in range(exchanges):
            encoded = argument.toString(node.gossip.peers_to_share())
            for info, age in parse_peer_list(argument.fromString(encoded)):
                node.gossip.heard_of(info, age)
        per_half = (time.process_time() - started) / exchanges
        checks = max(20, 20000 // size)
        started = time.process_time()
        for _ in range(checks):
            node.liveness.check()
        per_check = (time.process_time() - started) / checks
        figures[size] = {
            "hello": per_hello,
            "exchange_half": per_half,
            "exchange_bytes": len(encoded),
            "liveness": per_check,
        }
        # Per node and second, idle: the group's datagrams at the steady rate
        # (see the analysis in docs/performance.rst) are all received by every
        # node; each node starts one exchange every 5 s and answers one on
        # average, and each exchange is two lists built, sent, parsed and merged.
        say(
            f"  N={size:4d}: one HELLO {per_hello * 1e6:6.1f} us; one PEER_EXCHANGE list of {size} "
            f"({len(encoded):,} bytes) built, encoded, decoded and merged: {per_half * 1e3:6.2f} ms; "
            f"gossip per node: {2 * 2 * per_half / 5 * 100:.3f}% of a core; "
            f"one liveness check of {size - 1} idle connections {per_check * 1e3:.3f} ms "
            f"({4 * per_check * 100:.2f}% of a core at 4 checks/s)"
        )
    return figures


# -- guards --------------------------------------------------------------------------


def ancestors() -> set[int]:
    """The PIDs of this process and of its ancestors (PID 1 excluded)."""
    found = set()
    pid = os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])
    return found


def lock_held_by_ancestor() -> bool:
    """Whether an ancestor of this process (flock(1) running this script) holds L{LOCK_PATH}."""
    try:
        inode = os.stat(LOCK_PATH).st_ino
        mine = ancestors()
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" not in fields:
                    continue
                at = fields.index("FLOCK")
                pid = int(fields[at + 3])
                lock_inode = int(fields[at + 4].rsplit(":", 1)[1])
                if lock_inode == inode and pid in mine:
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def take_lock(wait: float) -> int | None:
    """Take L{LOCK_PATH} (waiting at most C{wait} seconds); return its descriptor."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if not told:
            say(f"scale: waiting (at most {wait:g}s) for {LOCK_PATH}: another heavy run holds it")
            told = True
        if time.monotonic() > deadline:
            os.close(fd)
            raise RunFailed(f"{LOCK_PATH} was not free within {wait:g}s")
        time.sleep(1)


def only_loopback() -> bool:
    """Whether this process's network namespace has no interface but C{lo}."""
    with open("/proc/self/net/dev", encoding="ascii") as f:
        return [line.partition(":")[0].strip() for line in f.readlines()[2:]] == ["lo"]


def rerun_in_namespace(argv: Sequence[str]) -> int | None:
    """Re-run this script in a new network namespace with only C{lo}; None if that cannot be done."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None or os.geteuid() != 0:
        return None
    env = dict(os.environ, **{NETNS_ENV: "1"})
    # unshare execs sh, which execs Python: the child's PID is the script's.
    child = subprocess.Popen(
        [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$0" "$@"', sys.executable, *argv], env=env
    )

    def forward(number: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(number)

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, forward)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def raise_file_limit(needed: int) -> None:
    """Raise the soft limit of open files to C{needed} (at most the hard limit), or say that it could not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            except (ValueError, OSError) as e:
                say(f"scale: could not raise the open-file limit to {needed}: {e}")


# -- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; run the micro-benchmark, or the formation and the job under the guards; return the status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--nodes", type=int, default=100, help="nodes to form a cluster of (default 100)")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in the job (default 100000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds after which a phase fails (default 600)")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="seconds of idle measured after formation (default 30)"
    )
    parser.add_argument("--job-slots", type=int, default=None, help="--slots of the job's nodes (default: theirs)")
    parser.add_argument(
        "--micro",
        type=str,
        default=None,
        metavar="N,N,...",
        help="only measure, in-process, the cost of one HELLO and one PEER_EXCHANGE at these cluster sizes",
    )
    parser.add_argument("--skip-formation", action="store_true", help="run only the job")
    parser.add_argument("--skip-job", action="store_true", help="run only the formation")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--no-netns", action="store_true", help="run in the host's network namespace (on 127.0.0.1)")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.tasks < 1 or args.timeout <= 0 or args.quiet <= 0:
        parser.error("--nodes must be at least 2, --tasks at least 1, --timeout and --quiet above 0")
    if not os.access(TWISTD, os.X_OK):
        say(f"scale: no twistd beside {sys.executable}; run it with the project's virtualenv")
        return 1

    if args.micro is not None:
        say(f"scale: {machine()}")
        say("scale: in-process cost of the idle traffic (p2pexec code only; no sockets, no reactor):")
        micro([int(size) for size in args.micro.split(",")])
        return 0

    if not args.no_netns and not only_loopback():
        if os.environ.get(NETNS_ENV):
            say("scale: still not in a loopback-only network namespace after unshare; refusing to run")
            return 2
        status = rerun_in_namespace([os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)])
        if status is not None:
            return status
        say(
            "scale: cannot make a loopback-only network namespace (needs root and unshare); "
            "running in the host's, on 127.0.0.1 only"
        )

    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, interrupt)
    raise_file_limit(max(4096, 4 * args.nodes + 256))
    lock_fd = None
    heavy = not args.skip_formation and args.nodes > HEAVY
    top = tempfile.mkdtemp(prefix="p2pexec-scale-")
    failed = False
    kept: list[dict] = []
    try:
        if heavy and not lock_held_by_ancestor():
            lock_fd = take_lock(wait=3600)
        pid = os.getpid()
        # A group and a cluster of this run's own.
        group = (f"239.255.{77 + pid % 50}.{1 + pid % 250}", 20000 + pid % 20000)
        say(f"scale: {machine()}")
        say(f"scale: code: {code_version()}")
        say(
            f"scale: load average before: {load_average()}; network namespace: "
            f"{'loopback only' if only_loopback() else 'the host, 127.0.0.1 only'}; logs in {top}"
        )
        if not args.skip_formation:
            folder = os.path.join(top, f"formation-{args.nodes}")
            os.makedirs(folder)
            f = formation(folder, args.nodes, args.timeout, args.quiet, group, f"scale{pid}f")
            save(os.path.join(top, "formation.json"), f)
            kept.append(f)
            report_formation(args.nodes, f)
        if not args.skip_job:
            folder = os.path.join(top, "job")
            os.makedirs(folder)
            j = job(folder, args.tasks, args.timeout, group, f"scale{pid}j", args.job_slots)
            save(os.path.join(top, "job.json"), j)
            kept.append(j)
            report_job(args.tasks, args.job_slots, j)
    except RunFailed as e:
        failed = True
        say(f"scale: FAILED: {e}")
    except KeyboardInterrupt:
        failed = True
        say("scale: interrupted; every node was stopped")
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    if (
        not failed
        and not args.keep
        and any(sum(figures["problems"][when].values()) for figures in kept for when in ("run", "stop"))
    ):
        say("scale: some logs have problem lines: keeping them")
        args.keep = True
    if failed or args.keep:
        say(f"scale: logs kept in {top}")
    else:
        shutil.rmtree(top, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
