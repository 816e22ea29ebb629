"""
Helpers shared by the benchmarks: starting and stopping real ``twistd
p2pexec`` nodes on loopback, reading their logs as they grow, summarising
figures, describing the machine, and the two guards every benchmark run
goes through:

  - a loopback-only network namespace (``unshare -n``), so that nothing a
    benchmark (or a competitor it runs) sends can leave the machine;
  - the heavy-job lock (``/tmp/p2pexec-heavy.lock``), so that heavy runs of
    different people do not overlap and skew each other.

Every node is started by PID and stopped by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
"""The twistd beside this Python, so that the benchmark runs in the project's virtualenv."""
GROUP = "239.255.42.97:10097"
"""A multicast group of the benchmarks' own, so that they never mix with real daemons or the demo."""
LOCK_PATH = "/tmp/p2pexec-heavy.lock"
LOCKED_ENV = "P2PEXEC_BENCH_LOCKED"
"""Set (to anything) when the caller already holds the heavy-job lock, e.g. under flock(1)."""
NETNS_ENV = "P2PEXEC_BENCH_NETNS"
NODE_OPTIONS_ENV = "P2PEXEC_BENCH_NODE_OPTIONS"
"""Options added to every p2pexec node a benchmark starts (to measure a switch against the default)."""
"""Set by L{reexec_in_namespace} in the re-executed child."""

STOP_WAIT = 15.0
"""Seconds a node gets to leave after SIGTERM before it is killed."""
POLL = 0.005

_clusters = itertools.count(1)

NODE_OPTIONS: list[str] = []
"""Options given to every p2pexec node before its own (benchmarks/run.py --replicas N puts them here)."""

STARTED_HOOKS: list[Callable[[Node], None]] = []
"""Called with each node just after its process starts (benchmarks/profile.py attaches py-spy here)."""


class RunFailed(Exception):
    """A run did not complete; the message says why and where its logs are."""


def fresh_cluster(prefix: str = "bench") -> str:
    """A cluster name no earlier run of this process used, so that no straggler can join a run."""
    return f"{prefix}{os.getpid()}-{next(_clusters)}"


class Node:
    """One twistd process and its log file."""

    def __init__(self, name: str, process: subprocess.Popen, log_path: str) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        """The PID of the twistd process."""
        return self.process.pid

    def new_lines(self) -> list[str]:
        """The complete log lines written since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut].decode("utf-8", "replace").splitlines()

    def lines(self) -> list[str]:
        """The whole log so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []

    def tail(self, count: int = 15) -> str:
        """The last lines of the log, for error messages."""
        lines = self.lines()
        return "\n".join("    " + line for line in lines[-count:]) or "    (empty so far)"

    def memory(self) -> dict[str, int]:
        """VmHWM (peak resident set) and VmRSS of the live process, in bytes."""
        return proc_memory(self.pid)

    def cpu_seconds(self) -> float | None:
        """User plus system CPU seconds the live process has used so far."""
        return proc_cpu_seconds(self.pid)


def proc_memory(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of C{pid} from /proc, in bytes (empty if it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of C{pid} from /proc/PID/stat, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of stat(5), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_node(
    folder: str,
    name: str,
    options: Sequence[str],
    cluster: str,
    level: str = "info",
    slots: int | None = None,
    timestamps: bool = True,
    plugin: str = "p2pexec",
    env: dict[str, str] | None = None,
) -> Node:
    """
    Start one node in C{folder}, its output going to C{<name>.log} there.

    @param options: the node's own options beyond name, port, group, cluster
        and log level.
    @param timestamps: log through C{p2pexec.log.observer} (microsecond UTC
        timestamps), as C{contrib/systemd/p2pexec@.service} does, instead of
        twistd's default logger.
    @param plugin: the twistd plugin to run: C{p2pexec}, or C{p2pexec-floor}
        (C{benchmarks/_floor}: a bare node, the floor under W3).
    @param env: variables added to the node's environment (its tasks inherit them).
    """
    log_path = os.path.join(folder, f"{name}.log")
    argv = [TWISTD, "--pidfile=", "-n"]
    if timestamps:
        argv.append("--logger=p2pexec.log.observer")
    argv += [
        plugin,
        "--name",
        name,
        "--port",
        "0",
        "--group",
        GROUP,
        "--cluster",
        cluster,
        "--state-dir",
        os.path.join(folder, "state", name),
        "--log-level",
        level,
    ]
    if plugin == "p2pexec":
        argv += NODE_OPTIONS
    argv += list(options)
    if plugin == "p2pexec":
        # Extra node options for every node of a run, to compare a switch (P2PEXEC_BENCH_NODE_OPTIONS="--max-output 0").
        argv += shlex.split(os.environ.get(NODE_OPTIONS_ENV, ""))
    if slots is not None:
        argv += ["--slots", str(slots)]
    path = CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", "")
    if plugin != "p2pexec":
        path = os.path.join(HERE, "_floor") + os.pathsep + path
    if "--tls" not in options:
        # As a default install, which has no pyOpenSSL (see _without_tls).
        path = os.path.join(HERE, "_without_tls") + os.pathsep + path
    env = dict(os.environ, **(env or {}), PYTHONPATH=path)
    with open(log_path, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env)
    node = Node(name, process, log_path)
    for hook in STARTED_HOOKS:
        hook(node)
    return node


def stop_nodes(nodes: Sequence[Node], wait: float = STOP_WAIT) -> list[str]:
    """
    Stop every node by its PID: SIGTERM, then SIGKILL after C{wait} seconds.
    A node that already exited (or was killed on purpose) is only reaped.

    @return: a complaint for each node that did not exit 0 on SIGTERM.
    """
    signalled = []
    for node in nodes:
        if node.process.poll() is None:
            try:
                node.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            signalled.append(node)
    complaints = []
    deadline = time.monotonic() + wait
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
            complaints.append(f"{node.name} did not stop within {wait:g}s of SIGTERM and was killed")
            continue
        if node in signalled and node.process.returncode != 0:
            complaints.append(f"{node.name} exited with status {node.process.returncode}")
    return complaints


def wait_until(
    done: Callable[[], bool], nodes: Sequence[Node], deadline: float, what: str, poll: float = POLL
) -> float:
    """
    Poll C{done} until it is true; fail if a node exits or C{deadline}
    (monotonic) passes.

    @return: the monotonic time at which C{done} was first seen true.
    """
    while True:
        if done():
            return time.monotonic()
        for node in nodes:
            if node.process.poll() is not None:
                raise RunFailed(
                    f"{node.name} exited with status {node.process.returncode} while waiting for {what}; "
                    f"its log ends:\n{node.tail()}"
                )
        if time.monotonic() > deadline:
            last = nodes[-1] if nodes else None
            raise RunFailed(
                f"the run's time limit (--timeout) passed while waiting for {what}"
                + (f"; the log of {last.name} ends:\n{last.tail()}" if last else "")
            )
        time.sleep(poll)


class Watch:
    """
    Reads one node's log as it grows and collects what named patterns match
    (the first group of each match), with when each pattern first matched.
    """

    def __init__(self, node: Node, **patterns: str) -> None:
        self._node = node
        self._patterns = {key: re.compile(pattern) for key, pattern in patterns.items()}
        self.found: dict[str, set[str]] = {key: set() for key in patterns}
        self.first_seen: dict[str, float] = {}

    def poll(self) -> dict[str, set[str]]:
        """Read the new lines; return everything found so far."""
        for line in self._node.new_lines():
            for key, pattern in self._patterns.items():
                match = pattern.search(line)
                if match:
                    self.found[key].add(match.group(1))
                    self.first_seen.setdefault(key, time.monotonic())
        return self.found


def wait_listening(nodes: Sequence[Node], everyone: Sequence[Node], deadline: float) -> None:
    """
    Wait until each of C{nodes} listens for multicast (Twisted's own
    "DiscoveryProtocol starting on" line, logged at any --log-level).
    """
    for node in nodes:
        listening = Watch(node, listening=r"(DiscoveryProtocol) starting on \d+")
        wait_until(lambda: bool(listening.poll()["listening"]), everyone, deadline, f"{node.name} to listen")


STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}) ")


def stamp_of(line: str) -> float | None:
    """The time (seconds since the epoch) of a C{p2pexec.log.observer} line, or None."""
    match = STAMP.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def first_stamp(node: Node, pattern: str) -> float | None:
    """The timestamp of the first line of C{node}'s log that matches C{pattern}."""
    compiled = re.compile(pattern)
    for line in node.lines():
        if compiled.search(line):
            return stamp_of(line)
    return None


def summary(values: Sequence[float], fmt: str) -> str:
    """C{median (min-max)} of C{values}, each formatted with C{fmt}."""
    if not values:
        return "-"
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def median(values: Sequence[float]) -> float | None:
    """The median of C{values}, or None if there are none."""
    return statistics.median(values) if values else None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what C{platform.processor()} says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """The CPU count and model, and the Python and Twisted versions."""
    try:
        import twisted

        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "?"
    return (
        f"nproc {os.cpu_count()}, {cpu_model()}; Python {platform.python_version()}, "
        f"Twisted {twisted_version}, {platform.system()} {platform.release()}"
    )


def speed_probe() -> float:
    """
    Milliseconds of CPU a fixed pure-Python loop (3,000,000 additions) takes
    now: the host's speed at this moment.  On the shared virtual machines the
    suite runs on it drifts by half over minutes (290-450 ms seen on one
    machine), and every absolute figure drifts with it; ratios taken within
    a repetition do not.
    """
    started = time.process_time()
    total = 0
    for number in range(3_000_000):
        total += number
    return (time.process_time() - started) * 1000


# -- the guards ---------------------------------------------------------------


def interfaces() -> list[str]:
    """The network interfaces of this process's network namespace."""
    names = []
    try:
        with open("/proc/self/net/dev", encoding="ascii") as f:
            for line in f.readlines()[2:]:
                names.append(line.partition(":")[0].strip())
    except OSError:
        pass
    return names


def loopback_only() -> bool:
    """Whether this process's network namespace has no interface but C{lo}."""
    return interfaces() == ["lo"]


def reexec_in_namespace(argv: Sequence[str]) -> int | None:
    """
    Run C{argv} in a fresh network namespace whose only interface is
    loopback (C{unshare -n}, which needs root) and return its exit status;
    None if no such namespace can be made here.
    """
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        return None
    probe = subprocess.run(
        [unshare, "-n", "sh", "-c", f"{ip} link set lo up"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if probe.returncode != 0:
        return None
    env = dict(os.environ, **{NETNS_ENV: "1"})
    child = subprocess.Popen([unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$0" "$@"', *argv], env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        try:
            return child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


@contextlib.contextmanager
def heavy_lock(timeout: float, say: Callable[[str], None] = print) -> Iterator[None]:
    """
    Hold C{/tmp/p2pexec-heavy.lock} (flock, as flock(1) takes it) for the
    duration, waiting at most C{timeout} seconds for it.  Skipped when
    L{LOCKED_ENV} says the caller holds it already.
    """
    if os.environ.get(LOCKED_ENV):
        yield
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            say(
                f"waiting (at most {timeout:g}s) for {LOCK_PATH}: another heavy job holds it "
                f"(if you hold it yourself, e.g. under flock(1), set {LOCKED_ENV}=1)"
            )
            deadline = time.monotonic() + timeout
            while True:
                time.sleep(0.5)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RunFailed(f"{LOCK_PATH} was not free within {timeout:g}s") from None
        os.environ[LOCKED_ENV] = "1"
        try:
            yield
        finally:
            os.environ.pop(LOCKED_ENV, None)
    finally:
        os.close(fd)


def guarded_main(argv: Sequence[str], say: Callable[[str], None], require_netns: bool) -> int | None:
    """
    Put the running script in a loopback-only network namespace: return
    None when it already is in one (go on), else the exit status of the
    script re-run in one.  If no namespace can be made, go on outside one
    unless C{require_netns}, in which case return 2.
    """
    if loopback_only():
        return None
    if os.environ.get(NETNS_ENV):
        say(f"not in a loopback-only network namespace after unshare (interfaces: {interfaces()})")
        return 2
    status = reexec_in_namespace([sys.executable, *argv])
    if status is not None:
        return status
    if require_netns:
        say("cannot make a loopback-only network namespace (unshare -n needs root); refusing to run")
        return 2
    say("note: no loopback-only network namespace (unshare -n needs root); running in the host's, on 127.0.0.1 only")
    return None


def session_members(session: int) -> list[int]:
    """The PIDs of every process in session C{session} (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == session:
            members.append(int(entry))
    return members


def kill_session(session: int) -> int:
    """SIGKILL every process left in session C{session} (by PID); return how many."""
    killed = 0
    for pid in session_members(session):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def interrupt(number: int, frame: object) -> None:
    """A SIGTERM handler: like Ctrl-C, unwind through the finally blocks that stop the nodes."""
    raise KeyboardInterrupt


def precompile() -> None:
    """
    Compile the checkout's p2pexec (and its twistd plugin) to bytecode, as
    pip does when it installs a package.  The nodes import p2pexec from the
    checkout (PYTHONPATH), and with PYTHONDONTWRITEBYTECODE set (as on the
    development machines) Python would otherwise compile every module again
    at each start, which a deployed node never does.
    """
    import compileall

    for folder in (
        os.path.join(CHECKOUT, "p2pexec"),
        os.path.join(CHECKOUT, "twisted", "plugins"),
        os.path.join(HERE, "_floor"),
    ):
        compileall.compile_dir(folder, quiet=1)
