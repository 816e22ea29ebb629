"""
A harness for multi-host integration tests: real C{twistd p2pexec} nodes,
each on a "host" of its own, where a host is a Linux network namespace.

The network of one test looks like this::

    p2pxPID-N-h1 (10.213.X.1/24)         p2pxPID-N-sw
      lo, p2pxeth  ----- veth -----  h1 -+
    p2pxPID-N-h2 (10.213.X.2/24)         |
      lo, p2pxeth  ----- veth -----  h2 -+- bridge p2pxbrPID (no address)
    ...                                  |

  - Every host is a namespace with C{lo} up and one veth, C{p2pxeth}, with
    an address in the private subnet C{10.213.X.0/24} and a route
    C{224.0.0.0/4} through it, so that multicast crosses the bridge.
  - The bridge lives in a "switch" namespace of its own, with no address
    and no other interface.  The subnet exists only inside these
    namespaces: the root namespace, its interfaces and its routes are never
    touched, and no host has a route anywhere else, so no packet can leave.
  - Every link is created from inside a test namespace (C{ip -n NS link add
    ... peer ... netns OTHER}), so no interface ever appears in the root
    namespace, even for a moment.

L{Network} builds that, and tears it all down, by name and PID: it kills
every process still inside a host namespace (the nodes and the tasks they
started in sessions of their own), then deletes the namespaces, which
deletes their links and the bridge.  A test registers the tear-down with
C{addCleanup} as soon as the network exists; a set-up that fails half-way
tears down what it made before raising; and an C{atexit} hook catches a run
interrupted before its clean-ups.  Only a run killed outright leaves
namespaces behind: C{python -m tests.integration.netns} removes those whose
test process is gone (their names carry its PID).

L{HostCluster} is a L{tests.integration.cluster.Cluster} whose nodes run on
those hosts: C{ip netns exec NS twistd --pidfile= -n
--logger=p2pexec.log.observer p2pexec --interface HOST-IP ...}.  Every node
listens on the same port, L{NODE_PORT}, on its own host, so a test can name
a seed before that seed has started.

All of it needs root and a working C{ip netns}; L{netns_problem} says why a
test cannot run here, and the tests skip with that message.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from p2pexec.auth import generate_key
from tests.integration.cluster import TWISTD, Cluster, ClusterFailure, NodeProcess

NODE_PORT = 10001
"""The TCP port of every node, on its own host."""

HOST_LINK = "p2pxeth"
"""The name of each host's link to the bridge, inside that host's namespace."""

MULTICAST_ROUTE = "224.0.0.0/4"
"""Multicast goes out of the host's link (the host has no default route)."""

IP_TIMEOUT = 10.0
"""Seconds one C{ip} command may take."""

_counter = itertools.count(1)
_live_networks: list[Network] = []
_problem: tuple[str | None] | None = None


def ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """
    Run C{ip ARGUMENTS}, bounded in time.

    @raise ClusterFailure: with its output if C{check} and it failed.
    """
    argv = ["ip", *arguments]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ClusterFailure(f"{' '.join(argv)} still running after {IP_TIMEOUT:g}s") from None
    if check and done.returncode != 0:
        raise ClusterFailure(f"{' '.join(argv)} exited with {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done


def netns_problem() -> str | None:
    """
    Why network namespaces cannot be used here, or C{None} if they can.

    It takes root, the C{ip} command, and a kernel that lets this process
    create a namespace with a bridge and a veth in it (checked once, with a
    throw-away namespace).
    """
    global _problem
    if _problem is None:
        _problem = (_find_problem(),)
    return _problem[0]


def _find_problem() -> str | None:
    if os.geteuid() != 0:
        return f"needs root to create network namespaces (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2) to create network namespaces"
    probe = f"p2pxprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except ClusterFailure as e:
        return f"'ip netns' does not work here: {e}"
    try:
        ip("-n", probe, "link", "add", "p2pxbr", "type", "bridge")
        ip("-n", probe, "link", "add", "p2pxa", "type", "veth", "peer", "name", "p2pxb")
    except ClusterFailure as e:
        return f"cannot create a bridge and a veth in a network namespace: {e}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def netns_pids(namespace: str) -> list[int]:
    """The PIDs of every process inside C{namespace}."""
    done = ip("netns", "pids", namespace, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def namespace_exists(namespace: str) -> bool:
    """Whether C{ip netns} still lists C{namespace}."""
    listing = ip("netns", "list", check=False).stdout
    return any(line.split(" ")[0] == namespace for line in listing.splitlines())


class Host:
    """
    One host of a L{Network}: a network namespace with one link to the
    bridge.

    @ivar label: its short name in the test, C{h1}, C{h2}...
    @ivar namespace: the network namespace's name.
    @ivar address: its IPv4 address in the private subnet.
    @ivar link: the name of its link to the bridge, inside the namespace.
    """

    def __init__(self, label: str, namespace: str, address: str, prefix: int) -> None:
        self.label = label
        self.namespace = namespace
        self.address = address
        self.prefix = prefix
        self.link = HOST_LINK

    def __repr__(self) -> str:
        return f"<Host {self.label} {self.namespace} {self.address}>"

    def ip(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run C{ip ARGUMENTS} inside this host's namespace."""
        return ip("-n", self.namespace, *arguments, check=check)

    def run(self, *argv: str, timeout: float = IP_TIMEOUT) -> str:
        """Run a short command inside this host's namespace and return its stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def netns_id(self) -> str:
        """C{net:[INODE]}: what C{readlink /proc/self/ns/net} says inside this host."""
        return self.run("readlink", "/proc/self/ns/net").strip()

    def link_down(self) -> None:
        """Take this host's link down: it can reach no other host, nor be reached."""
        self.ip("link", "set", self.link, "down")

    def link_up(self) -> None:
        """
        Bring this host's link back up, with its multicast route (taking a
        link down deletes the routes through it; its address stays).
        """
        self.ip("link", "set", self.link, "up")
        self.ip("route", "replace", MULTICAST_ROUTE, "dev", self.link)

    def multicast_groups(self) -> list[str]:
        """The IPv4 multicast groups joined on this host's link (C{ip maddr})."""
        listing = self.ip("maddr", "show", "dev", self.link).stdout
        return [line.split()[1] for line in listing.splitlines() if line.split()[:1] == ["inet"]]


class Network:
    """
    C{count} hosts, C{h1}..C{hN}, joined by a bridge in a namespace of its
    own.  Built at once; torn down by L{teardown} (registered with the test's
    C{addCleanup}, and with C{atexit}).

    @ivar hosts: the hosts, by label.
    @ivar subnet: the private C{10.213.X.0/24}.
    """

    def __init__(self, testcase: Any, count: int) -> None:
        problem = netns_problem()
        if problem is not None:
            from twisted.trial.unittest import SkipTest

            raise SkipTest(problem)
        pid = os.getpid()
        token = f"p2px{pid}-{next(_counter)}"
        third = 1 + pid % 250
        self.subnet = f"10.213.{third}.0/24"
        self.switch = f"{token}-sw"
        self.bridge = f"p2pxbr{pid}"
        self.hosts: dict[str, Host] = {}
        for number in range(1, count + 1):
            label = f"h{number}"
            self.hosts[label] = Host(label, f"{token}-{label}", f"10.213.{third}.{number}", 24)
        self._made: list[str] = []
        self._torn_down = False
        _live_networks.append(self)
        testcase.addCleanup(self.teardown)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def _build(self) -> None:
        ip("netns", "add", self.switch)
        self._made.append(self.switch)
        sw = ("-n", self.switch)
        ip(*sw, "link", "set", "lo", "up")
        # No IGMP snooping: the bridge floods multicast to every port, as a
        # plain switch does; no STP: ports forward at once.
        ip(*sw, "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0", "stp_state", "0")
        ip(*sw, "link", "set", self.bridge, "up")
        for host in self.hosts.values():
            ip("netns", "add", host.namespace)
            self._made.append(host.namespace)
            port = f"p2px{host.label}"
            # Created from inside the switch: neither end is ever in the root namespace.
            ip(*sw, "link", "add", port, "type", "veth", "peer", "name", host.link, "netns", host.namespace)
            ip(*sw, "link", "set", port, "master", self.bridge)
            ip(*sw, "link", "set", port, "up")
            host.ip("link", "set", "lo", "up")
            host.ip("addr", "add", f"{host.address}/{host.prefix}", "dev", host.link)
            host.ip("link", "set", host.link, "up")
            host.ip("route", "add", MULTICAST_ROUTE, "dev", host.link)

    def __getitem__(self, label: str) -> Host:
        return self.hosts[label]

    def kill_everything_in(self, host: Host) -> None:
        """SIGKILL every process inside C{host}'s namespace, by PID."""
        for pid in netns_pids(host.namespace):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def teardown(self) -> None:
        """
        Kill every process left in the hosts, then delete every namespace
        this network made (their links and the bridge go with them).  Safe
        to call twice.

        @raise ClusterFailure: if a namespace could not be deleted.
        """
        if self._torn_down:
            return
        self._torn_down = True
        if self in _live_networks:
            _live_networks.remove(self)
        problems = []
        for host in self.hosts.values():
            if host.namespace in self._made:
                self.kill_everything_in(host)
        # Give the kernel a moment to reap them, so the namespaces really go.
        end = time.monotonic() + 5
        while time.monotonic() < end and any(
            netns_pids(h.namespace) for h in self.hosts.values() if h.namespace in self._made
        ):
            time.sleep(0.05)
        for namespace in reversed(self._made):
            done = ip("netns", "del", namespace, check=False)
            if done.returncode != 0 and namespace_exists(namespace):
                problems.append(f"{namespace}: {done.stderr.strip()}")
        self._made = []
        if problems:
            raise ClusterFailure("could not delete network namespace(s): " + "; ".join(problems))


@atexit.register
def _teardown_leftovers() -> None:
    """Tear down networks whose test never got to its clean-ups (an interrupted run)."""
    for network in list(_live_networks):
        try:
            network.teardown()
        except Exception:
            pass


LEFTOVER = re.compile(r"p2px(\d+)-\d+-(?:sw|h\d+)$")
"""The names of this harness's namespaces; the number is the test process's PID."""


def sweep_leftovers() -> list[str]:
    """
    Delete the namespaces of test runs whose process no longer exists,
    after killing what still runs inside them.  For a human to run after a
    run was killed outright; tests never call it.

    @return: the names of the namespaces deleted.
    """
    deleted = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        namespace = line.split(" ")[0]
        match = LEFTOVER.fullmatch(namespace)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        for pid in netns_pids(namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if ip("netns", "del", namespace, check=False).returncode == 0:
            deleted.append(namespace)
    return deleted


class HostCluster(Cluster):
    """
    The nodes of one test, each on a host of a L{Network}, on a multicast
    group and cluster name of their own.

    The folder, the deadline, the log files and clean-up (SIGKILL by PID) are
    those of L{Cluster}; only the way a node starts differs.
    """

    def __init__(self, testcase: Any, hosts: int, budget: float = 40.0) -> None:
        self.network = Network(testcase, hosts)
        super().__init__(testcase, budget)
        self.host_of: dict[str, Host] = {}

    def key_file(self) -> str:
        """
        The cluster's key file (made on first use, mode 0600): nodes on
        addresses other than loopback need one (protected mode), and the
        multi-host tests run sealed datagrams and authenticated connections
        across real links.
        """
        path = os.path.join(self.folder, "cluster.key")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(generate_key() + "\n")
        return path

    def start(
        self, name: str, *options: str, host: str | None = None, port: int = NODE_PORT, wait: bool = True
    ) -> NodeProcess:
        """
        Start a node called C{name} on C{host} (a label, C{h1}...), listening
        on C{port} at that host's address, with the cluster's group and
        cluster name and any other plugin C{options}.

        @param wait: wait until it logs that it started.
        """
        if host is None:
            raise TypeError("HostCluster.start needs host=")
        where = self.network[host]
        argv = [
            "ip",
            "netns",
            "exec",
            where.namespace,
            TWISTD,
            "--pidfile=",
            "-n",
            "--logger=p2pexec.log.observer",
            "p2pexec",
            "--name",
            name,
            "--port",
            str(port),
            "--interface",
            where.address,
            "--group",
            self.group_option,
            "--cluster",
            self.cluster_name,
            "--state-dir",
            self.state_dir(name),
            "--key-file",
            self.key_file(),
            *options,
        ]
        # "ip netns exec" enters the namespace and execs twistd: same PID.
        node = self.launch(name, argv)
        self.host_of[name] = where
        if wait:
            node.port  # noqa: B018 (reading it waits until the node listens)
        return node

    def seed(self, host: str, port: int = NODE_PORT) -> str:
        """The C{--peer} value naming the node on C{host}: C{ADDRESS:PORT}."""
        return f"{self.network[host].address}:{port}"


if __name__ == "__main__":
    for name in sweep_leftovers():
        print(f"deleted network namespace {name}")
