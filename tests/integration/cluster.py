"""
A harness for integration tests: real C{twistd p2pexec} processes on
loopback.

Every test gets a L{Cluster} of its own: its own multicast group
(C{239.255.X.Y}), group port and cluster name, so that tests (and other runs
on the same machine) never hear each other.  Nodes listen on C{--port 0} and
the harness reads the port they got from their log.  Only 127.0.0.1 is used:
C{--interface} is left at its default.

Every node writes its stdout and stderr to C{NAME.log} in the test's own
temporary folder, which is kept for post-mortems.  Every wait is bounded by
its own timeout and by the cluster's overall budget, and a wait that runs out
fails the test with the tail of the log it was watching.  Every node is
killed (SIGKILL, by PID) at clean-up if it is still running.

These tests block: they poll files and wait for processes synchronously.
That is deliberate for integration tests, which drive other processes, and
the reason they do not belong with the unit tests.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The root of the checkout whose code the nodes run (through C{PYTHONPATH})."""

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
"""The twistd beside this Python, so that nodes run in the same virtualenv."""

POLL_INTERVAL = 0.05
"""Seconds between two looks at a log file or a condition."""

DEFAULT_TIMEOUT = 10.0
"""How long one wait lasts unless told otherwise."""

DEFAULT_BUDGET = 25.0
"""How long a whole test may spend waiting, in all (a test must end within ~30 s)."""

TAIL_LINES = 40
"""How many lines of a log a failure message quotes."""

_counter = itertools.count(1)

T = TypeVar("T")


class ClusterFailure(AssertionError):
    """A wait ran out, or a node did something a test did not expect."""


def free_udp_port() -> int:
    """
    A UDP port that was free a moment ago, for a group port.  (Binding
    127.0.0.1 also fails on a port someone holds on every address.)
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    """
    A TCP port of 127.0.0.1 that was free a moment ago, for options that
    need a real port number, such as C{--web} (where 0 means "no HTTP").
    Another process could take it before the node binds it; the node then
    exits with one line saying so, and the test fails with its log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_group() -> tuple[str, str]:
    """
    A multicast group address of this process's own, and a cluster name to go
    with it.

    C{239.255.X.Y}: X and Y come from the PID and a per-process counter.
    (X avoids 42, the default group's, so that a test never joins the group
    of a daemon really running on the machine.)
    """
    number = next(_counter)
    pid = os.getpid()
    x = 100 + (pid // 251) % 150
    y = 1 + (pid + number * 7) % 251
    return f"239.255.{x}.{y}", f"it{pid}-{number}"


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last C{lines} lines of C{text}."""
    return "\n".join(text.splitlines()[-lines:])


class Deadline:
    """A point in time after which every wait fails."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, at least 0."""
        return max(0.0, self._end - time.monotonic())

    def bound(self, timeout: float) -> float:
        """C{timeout}, cut down to what is left."""
        return min(timeout, self.remaining())


def poll_until(
    condition: Callable[[], T | None],
    timeout: float,
    describe: Callable[[], str],
) -> T:
    """
    Call C{condition} every L{POLL_INTERVAL} seconds until it returns
    something true, and return that.

    @raise ClusterFailure: with C{describe()} if C{timeout} passes first.
    """
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= end:
            raise ClusterFailure(f"timed out after {timeout:.1f}s: {describe()}")
        time.sleep(POLL_INTERVAL)


class NodeProcess:
    """
    One running C{twistd p2pexec} node.

    @ivar name: its C{--name}.
    @ivar log_path: the file its stdout and stderr go to.
    @ivar process: the L{subprocess.Popen}.
    @ivar argv: how it was started.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: str,
        process: subprocess.Popen,
        deadline: Deadline,
        log_offset: int = 0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.process = process
        self._deadline = deadline
        self._log_offset = log_offset
        self._port: int | None = None

    @property
    def pid(self) -> int:
        """The twistd process's id."""
        return self.process.pid

    def log_text(self) -> str:
        """Everything this process has logged so far (not an earlier node of the same name)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The end of the log, for failure messages."""
        return tail(self.log_text(), lines)

    def find_all(self, pattern: str) -> list[re.Match[str]]:
        """Every match of C{pattern} (a multi-line regex) in the log so far."""
        return list(re.finditer(pattern, self.log_text(), re.MULTILINE))

    def has(self, pattern: str) -> bool:
        """Whether the log matches C{pattern} already."""
        return bool(self.find_all(pattern))

    def wait_for(self, pattern: str, timeout: float = DEFAULT_TIMEOUT, count: int = 1) -> re.Match[str]:
        """
        Wait until the log has C{count} matches of C{pattern}, a multi-line
        regex searched in the whole log, and return the last of them.

        @raise ClusterFailure: with the log's tail if the timeout (or the
            test's budget) passes first, or if the node exits without the
            pattern in its log.
        """
        timeout = self._deadline.bound(timeout)
        end = time.monotonic() + timeout
        while True:
            exited = self.process.poll()
            matches = self.find_all(pattern)
            if len(matches) >= count:
                return matches[count - 1]
            if exited is not None:
                raise ClusterFailure(
                    f"node {self.name} exited with status {exited} before its log had "
                    f"{count} match(es) of {pattern!r} (found {len(matches)}); "
                    f"log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if time.monotonic() >= end:
                raise ClusterFailure(
                    f"node {self.name}: no {count} match(es) of {pattern!r} within {timeout:.1f}s "
                    f"(found {len(matches)}); log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    @property
    def port(self) -> int:
        """The TCP port the node says it listens on (waits for the start-up line)."""
        if self._port is None:
            match = self.wait_for(rf"Node {re.escape(self.name)} started on port (\d+)$")
            self._port = int(match.group(1))
        return self._port

    def send_signal(self, number: int) -> None:
        """Signal the twistd process."""
        self.process.send_signal(number)

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.poll() is None

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """
        Wait for the process to exit and return its status.

        @raise ClusterFailure: with the log's tail if it is still running
            after C{timeout}.
        """
        timeout = self._deadline.bound(timeout)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterFailure(
                f"node {self.name} (pid {self.pid}) still running after {timeout:.1f}s; "
                f"log {self.log_path} ends with:\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process (by its PID) if it still runs, and reap it."""
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


class Cluster:
    """
    The nodes of one test, on a multicast group, port and cluster name of
    their own.

    @ivar folder: the test's own temporary folder (absolute).
    @ivar group: the multicast group C{(address, port)}.
    @ivar cluster_name: the C{--cluster} every node is given.
    @ivar deadline: the overall time budget of the test's waits.
    @ivar nodes: the nodes started so far, by name.
    """

    def __init__(self, testcase: Any, budget: float = DEFAULT_BUDGET) -> None:
        self.folder = os.path.abspath(testcase.mktemp())
        os.makedirs(self.folder)
        address, self.cluster_name = unique_group()
        self.group = (address, free_udp_port())
        self.deadline = Deadline(budget)
        self.nodes: dict[str, NodeProcess] = {}
        self._testcase = testcase

    @property
    def group_option(self) -> str:
        """The C{--group} value, C{ADDR:PORT}."""
        return "%s:%d" % self.group

    def path(self, *parts: str) -> str:
        """A path inside the test's folder."""
        return os.path.join(self.folder, *parts)

    def environment(self) -> dict[str, str]:
        """
        The environment of every node and client: this one, with the checkout
        first on the path, and C{$XDG_STATE_HOME} in the test's folder (where
        nodes leave the runtime records by which clients find their local
        tokens, see L{p2pexec.localtoken}).
        """
        paths = [CHECKOUT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return dict(
            os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", XDG_STATE_HOME=self.path("xdg-state")
        )

    def http_token(self, name: str) -> str:
        """The HTTP token of node C{name}'s local token (a node without a cluster key)."""
        from p2pexec.auth import http_token, load_key
        from p2pexec.localtoken import token_path

        return http_token(load_key(token_path(self.state_dir(name))))

    def launch(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> NodeProcess:
        """
        Run C{argv} as the node C{name}, logging to C{NAME.log} in the test's
        folder, killed by PID at clean-up.

        @param env: the node's whole environment, if not L{environment}.
        """
        log_path = self.path(f"{name}.log")
        with open(log_path, "ab") as out:
            # A restarted node appends to the same log; its handle reads from here on.
            offset = out.tell()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self.environment() if env is None else env,
            )
        node = NodeProcess(name, argv, log_path, process, self.deadline, log_offset=offset)
        self.nodes[name] = node
        self._testcase.addCleanup(node.kill)
        return node

    def state_dir(self, name: str) -> str:
        """The state directory of node C{name} in this cluster (kept across its restarts)."""
        return os.path.join(self.folder, "state", name)

    def start(
        self, name: str, *options: str, port: int = 0, wait: bool = True, env: dict[str, str] | None = None
    ) -> NodeProcess:
        """
        Start a node called C{name} with the cluster's group and cluster name,
        and any other plugin C{options}.

        @param wait: wait until it logs that it started, and learn its port.
        @param env: the node's whole environment, if not L{environment}.
        """
        argv = [
            TWISTD,
            "--pidfile=",
            "-n",
            "p2pexec",
            "--name",
            name,
            "--port",
            str(port),
            "--group",
            self.group_option,
            "--cluster",
            self.cluster_name,
            "--state-dir",
            self.state_dir(name),
            *options,
        ]
        node = self.launch(name, argv, env)
        if wait:
            node.port  # noqa: B018 (reading it waits until the node listens)
        return node

    def run_once(self, *options: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """
        Run C{twistd p2pexec OPTIONS} (no defaults added) to its end.

        @return: its exit status and its output.
        @raise ClusterFailure: if it is still running after C{timeout}.
        """
        argv = [TWISTD, "--pidfile=", "-n", "p2pexec", *options]
        return self._run_to_end(argv, timeout, f"{argv} still running")

    def _run_to_end(self, argv: list[str], timeout: float, what: str) -> tuple[int, str]:
        """
        Run C{argv} in the cluster's folder and environment to its end.

        @return: its exit status and its output (stdout and stderr).
        @raise ClusterFailure: saying C{what} and the output, after C{timeout}.
        """
        try:
            finished = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self.environment(),
                timeout=self.deadline.bound(timeout),
            )
        except subprocess.TimeoutExpired as e:
            output = (e.output or b"").decode("utf-8", "replace")
            raise ClusterFailure(f"{what} after {e.timeout:.1f}s; output:\n{tail(output)}") from None
        return finished.returncode, finished.stdout.decode("utf-8", "replace")

    def wait_until(
        self,
        condition: Callable[[], T | None],
        describe: Callable[[], str],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> T:
        """L{poll_until}, within the cluster's budget."""
        return poll_until(condition, self.deadline.bound(timeout), describe)

    def logs(self) -> str:
        """Every node's log tail, for failure messages."""
        return "\n".join(f"--- {name} ({node.log_path})\n{node.log_tail()}" for name, node in self.nodes.items())

    def call_remote(
        self, port: int, command: str, timeout: float = 5.0, owner: bool = True, **arguments: Any
    ) -> dict[str, Any]:
        """
        Send one AMP command of L{p2pexec.commands} (by class name, such as
        C{"CancelJob"}) to the node listening on C{port}, from a real Twisted
        AMP client in a process of its own (no CONNECT_REQUEST or HANDSHAKE
        first), and return its answer.  As the node's C{owner}, the client
        first proves the node's local token if it finds one, as the
        C{p2pexec} client does.

        @return: the answer's fields; or, if the node answered with an
            error, C{{"error": the exception's class name, "message": ...}}.
        @raise ClusterFailure: if the client cannot connect, or gets no
            answer within C{timeout}.
        """
        argv = [
            sys.executable,
            "-c",
            _CALL_REMOTE,
            str(port),
            command,
            json.dumps(arguments),
            str(timeout),
            str(int(owner)),
        ]
        status, output = self._run_to_end(argv, timeout + 5.0, f"{command} to port {port}: no answer")
        if status != 0:
            raise ClusterFailure(f"{command} to port {port} failed (status {status}):\n{tail(output)}")
        return json.loads(output.strip().splitlines()[-1])


_CALL_REMOTE = r"""
import json, sys
from twisted.internet import defer, endpoints, task
from twisted.protocols import amp
from p2pexec import commands

from p2pexec.auth import ChallengeResponse
from p2pexec.localtoken import find_token
from p2pexec.peer import authenticate

def main(reactor, port, name, arguments, timeout, owner):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port), timeout=float(timeout))

    async def call():
        protocol = await endpoints.connectProtocol(endpoint, amp.AMP())
        found = find_token("127.0.0.1", int(port)) if owner == "1" else None
        if found is not None:
            await authenticate(protocol, ChallengeResponse(found[0]))
        try:
            answer = await protocol.callRemote(getattr(commands, name), **json.loads(arguments))
        except Exception as e:
            answer = {"error": type(e).__name__, "message": str(e)}
        finally:
            protocol.transport.loseConnection()
        print(json.dumps(answer, default=str), flush=True)

    return defer.ensureDeferred(call()).addTimeout(float(timeout), reactor)

task.react(main, sys.argv[1:])
"""
"""The client of L{Cluster.call_remote}: C{python -c SCRIPT PORT COMMAND ARGUMENTS-JSON TIMEOUT OWNER}."""


def multicast_sender() -> socket.socket:
    """
    A UDP socket that sends multicast out of 127.0.0.1 only (bound to it,
    with C{IP_MULTICAST_IF} 127.0.0.1 and a TTL of 1).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return s


class RawAmpClient:
    """
    A blocking AMP client that sends hand-made boxes (well-formed or not) to
    a node and reads its answers, for robustness tests.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def close(self) -> None:
        """Close the connection."""
        self.socket.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.socket.sendall(data)

    def send_box(self, box: dict[bytes, bytes]) -> None:
        """Send one box: each key and value with a 16-bit length, then an empty key."""
        data = b""
        for key, value in box.items():
            data += len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big") + value
        self.send_raw(data + b"\x00\x00")

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed with {len(self._buffer)} of {count} byte(s) read")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read_box(self) -> dict[bytes, bytes]:
        """Read one box (raises L{ConnectionError} if the node closes the connection)."""
        box = {}
        while True:
            length = int.from_bytes(self._read(2), "big")
            if length == 0:
                return box
            key = self._read(length)
            box[key] = self._read(int.from_bytes(self._read(2), "big"))

    def ask(self, command: bytes, tag: int, **arguments: bytes) -> dict[bytes, bytes]:
        """Send a command box with C{_ask} set and return the answer box."""
        box = {b"_command": command, b"_ask": str(tag).encode()}
        box.update({k.encode(): v for k, v in arguments.items()})
        self.send_box(box)
        return self.read_box()

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the node closes the connection (reads EOF) within C{timeout}."""
        self.socket.settimeout(timeout)
        try:
            while True:
                chunk = self.socket.recv(65536)
                if not chunk:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def record_run(side: str) -> str:
    """The shell command that appends this attempt's task, node and attempt number to C{side}."""
    return f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> {shlex.quote(side)}'


def read_runs(side: str) -> list[tuple[str, str, int]]:
    """The (task, node, attempt) lines of a side file, in the order they were written."""
    try:
        with open(side) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in lines:
        task_id, node, attempt = line.split()
        runs.append((task_id, node, int(attempt)))
    return runs
