"""
Rogue nodes and replays against a cluster with a key: real C{twistd
p2pexec} nodes on loopback (see L{tests.integration.cluster}).

A rogue node sits in the cluster's own multicast group with the cluster's
own name, with a wrong key or none; a rogue client talks raw AMP; a replayer
plays back sealed datagrams and a real client's authenticated bytes.  None
of them gets into a peer table, gets a task, submits a job or makes a node
run anything, and the good nodes say so in their logs.  Protected mode
refuses to start a node on a non-loopback address without a key, and a key
file others can read.

Only 127.0.0.0/8 is used: the nodes keep their default C{--interface}
127.0.0.1, the capture socket joins the group on 127.0.0.1, and the one
non-loopback address (protected mode) is refused before anything binds it.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from p2pexec.auth import ChallengeResponse, generate_key, http_token
from tests.integration.cluster import (
    Cluster,
    ClusterFailure,
    NodeProcess,
    RawAmpClient,
    free_tcp_port,
    multicast_sender,
    read_runs,
    record_run,
)
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, write_job_file

FORGED = r"Dropped a datagram from 127\.0\.0\.1:{port}: the seal does not match the cluster key"
UNSEALED = r"Dropped a datagram from 127\.0\.0\.1:{port}: the datagram carries no cluster-key seal"
REPLAYED = r"Dropped a datagram from 127\.0\.0\.1:{port}: its nonce was seen already"
STALE = r"Dropped a datagram from 127\.0\.0\.1:{port}: sealed [\d.]+s (?:ago|in the future), outside the 10s window"
ANY_PORT = r"\d+"


def write_key_file(path: str, mode: int = 0o600) -> bytes:
    """A new cluster key in C{path} (created with C{mode}, whatever the umask); return the key."""
    text = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return bytes.fromhex(text)


class Api:
    """A node's HTTP API (C{--web PORT}), asked with the cluster's bearer token."""

    def __init__(self, port: int, key: bytes | None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = http_token(key) if key is not None else None

    def request(self, method: str, path: str, body: Any = None, token: bool = True) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request; an error status is an answer too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None or method == "POST":
            request.add_header("content-type", "application/json")
        if token and self.token is not None:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw or b"null")
            except ValueError:
                return e.code, raw.decode("utf-8", "replace")

    def get(self, path: str) -> Any:
        """The body of a GET that must succeed."""
        status, body = self.request("GET", path)
        if status != 200:
            raise ClusterFailure(f"GET {path}: {status} {body!r}")
        return body

    def peers(self) -> dict[str, str]:
        """The node and its peers, by name: the instance of each."""
        return {peer["name"]: peer["instance"] for peer in self.get("/api/peers")["peers"]}

    def jobs(self) -> dict[str, dict[str, Any]]:
        """The jobs the node is master of, by id."""
        return {job["id"]: job for job in self.get("/api/jobs")["jobs"]}


def run_cli(
    cluster: Cluster, port: int, key_file: str | None, *arguments: str, timeout: float = 10.0
) -> tuple[int, str]:
    """Run the command-line client (C{python -m p2pexec.cli}) against the node on C{port}; its status and output."""
    argv = [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}"]
    if key_file is not None:
        argv += ["--key-file", key_file]
    finished = subprocess.run(
        argv + list(arguments),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cluster.folder,
        env=cluster.environment(),
        timeout=cluster.deadline.bound(timeout),
    )
    return finished.returncode, finished.stdout.decode("utf-8", "replace")


def kill_and_reap(process: subprocess.Popen) -> None:
    """Clean-up: SIGKILL C{process} (by its PID) if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()


def split_boxes(data: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The complete AMP boxes in a captured stream: each one's bytes as sent, and its keys and values."""
    boxes = []
    start = at = 0
    box: dict[bytes, bytes] = {}
    while at + 2 <= len(data):
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if length == 0:
            boxes.append((data[start:at], box))
            start, box = at, {}
            continue
        key = data[at : at + length]
        size = int.from_bytes(data[at + length : at + length + 2], "big")
        box[key] = data[at + length + 2 : at + length + 2 + size]
        at += length + 2 + size
    return boxes


def read_until_closed(client: RawAmpClient, timeout: float) -> list[dict[bytes, bytes]]:
    """Every box the node sends until it closes the connection (or C{timeout} passes)."""
    client.socket.settimeout(timeout)
    boxes = []
    try:
        while True:
            boxes.append(client.read_box())
    except (ConnectionError, OSError):
        return boxes


class GroupListener:
    """
    A UDP socket in the test's multicast group, joined on 127.0.0.1 beside
    the nodes (C{SO_REUSEADDR} and C{SO_REUSEPORT}), capturing what they
    multicast.
    """

    def __init__(self, group: tuple[str, int]) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind((group[0], group[1]))
        membership = socket.inet_aton(group[0]) + socket.inet_aton("127.0.0.1")
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)

    def close(self) -> None:
        """Leave the group."""
        self.socket.close()

    def capture(self, sender: str, kind: str, timeout: float) -> tuple[bytes, float]:
        """
        The first sealed datagram of type C{kind} from node C{sender}, and
        when it arrived (C{time.time()}).

        @raise ClusterFailure: if none arrives within C{timeout}.
        """
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise ClusterFailure(f"no {kind} from {sender} heard on the group within {timeout:.1f}s")
            readable, _, _ = select.select([self.socket], [], [], left)
            if not readable:
                continue
            data, _ = self.socket.recvfrom(65536)
            body, mark, _ = data.partition(b"\x00")
            try:
                decoded = json.loads(body)
            except ValueError:
                continue
            if mark and decoded.get("type") == kind and decoded.get("node", {}).get("name") == sender:
                return data, time.time()


def proxy_one_client(
    process: subprocess.Popen, listener: socket.socket, port: int, timeout: float
) -> tuple[bytes, bytes]:
    """
    Relay the one connection C{process} makes to C{listener} on to
    127.0.0.1:C{port}, until both ends have closed or C{process} has exited
    and gone quiet (within C{timeout}); return what the client sent and
    what the node answered.
    """
    end = time.monotonic() + timeout
    listener.settimeout(timeout)
    client, _ = listener.accept()
    upstream = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent, answered = bytearray(), bytearray()
    open_ends = {client: (upstream, sent), upstream: (client, answered)}
    try:
        while open_ends and time.monotonic() < end:
            readable, _, _ = select.select(list(open_ends), [], [], 0.1)
            for end_socket in readable:
                other, record = open_ends[end_socket]
                data = end_socket.recv(65536)
                if not data:
                    del open_ends[end_socket]
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                record.extend(data)
                other.sendall(data)
            if not readable and process.poll() is not None:
                break
    finally:
        client.close()
        upstream.close()
    return bytes(sent), bytes(answered)


class RogueNodeTests(IntegrationTestCase):
    """Rogue nodes in the cluster's group, and rogue clients, against two nodes with the key."""

    def test_rogues_are_kept_out(self) -> None:
        """
        g1 (master of a job of shell tasks) and g2 hold the key; r1 holds
        another key and r2 none, in the same group and cluster, advertising
        the job's kind and a kind of their own, and dialling g1 and g2.
        Neither rogue is ever in a peer table; the good nodes log the rogues'
        datagrams as forged and unsealed, and refuse their connections; a
        job of the rogues' kind stays waiting; raw AMP clients without the
        key cannot submit; and only g1 and g2 ran anything.
        """
        cluster = Cluster(self, budget=40)
        key = write_key_file(cluster.path("cluster.key"))
        write_key_file(cluster.path("rogue.key"))
        side = cluster.path("runs.txt")
        job_file, evil_file = cluster.path("job.toml"), cluster.path("evil.toml")
        task_ids = [f"t{number}" for number in range(6)]
        write_job_file(
            job_file,
            {"kind": "sh", "shell": True, "command": record_run(side)},
            [{"id": task_id} for task_id in task_ids],
        )
        write_job_file(
            evil_file, {"kind": "evil", "shell": True, "command": record_run(side)}, [{"id": "e1"}, {"id": "e2"}]
        )
        web1, web2 = free_tcp_port(), free_tcp_port()
        # --web-public: see ApiTokenTests, the token breaks every request.
        keyed = ("--key-file", cluster.path("cluster.key"), "--capabilities", "sh", "--slots", "2", "--web-public")
        g1 = cluster.start("g1", *keyed, "--web", str(web1), "--job", job_file)
        g2 = cluster.start("g2", *keyed, "--web", str(web2))
        seeds = ("--peer", f"127.0.0.1:{g1.port}", "--peer", f"127.0.0.1:{g2.port}")
        r1 = cluster.start("r1", "--key-file", cluster.path("rogue.key"), "--capabilities", "sh,evil", *seeds)
        r2 = cluster.start("r2", "--capabilities", "sh,evil", *seeds)
        api1, api2 = Api(web1, key), Api(web2, key)

        finished = g1.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), ("6", "0"))
        # A job only the rogues could run (kind evil), submitted by the real client with the key.
        status, output = run_cli(cluster, g1.port, cluster.path("cluster.key"), "submit", evil_file)
        self.assertEqual(status, 0, output)
        evil_job = re.findall(r"\bg1-[0-9a-f]+-\d+\b", output)[-1]

        # What the good nodes see of the rogues: sealed wrongly, not sealed,
        # and a connection that does not authenticate.
        for good in (g1, g2):
            good.wait_for(FORGED.format(port=ANY_PORT))
            good.wait_for(UNSEALED.format(port=ANY_PORT))
            good.wait_for(
                r"Refused the connection from 127\.0\.0\.1:\d+: it sent CONNECT_REQUEST before authenticating"
            )
        # r1 dials with its key and finds that g1 and g2 cannot prove they hold it.
        for good in (g1, g2):
            r1.wait_for(rf"Refused the connection from 127\.0\.0\.1:{good.port}: it does not hold the cluster key")

        self.assertRawClientsRefused(g1, key, cluster.path("rogue.key"), side)

        for good, api in ((g1, api1), (g2, api2)):
            self.assertEqual(sorted(api.peers()), ["g1", "g2"], f"peers of {good.name}")
            self.assertNoTrace(good, "r1", "r2")
        for rogue in (r1, r2):
            self.assertNoTrace(rogue, "g1", "g2")
            self.assertFalse(rogue.has(r"received instructions"), rogue.log_tail())

        jobs = api1.jobs()
        self.assertEqual(sorted(jobs), sorted([finished.group(1), evil_job]), "a rogue client created a job")
        evil = jobs[evil_job]
        self.assertEqual((evil["state"], evil["total"], evil["counts"]["waiting"]), ("running", 2, 2), evil)
        self.assertEqual(api2.jobs(), {})

        runs = read_runs(side)
        self.assertEqual(sorted(task for task, _, _ in runs), task_ids, runs)
        self.assertLessEqual({node for _, node, _ in runs}, {"g1", "g2"}, runs)
        for node in cluster.nodes.values():
            self.assertTrue(node.running(), f"{node.name} exited:\n{node.log_tail()}")
        for good in (g1, g2):
            self.assertLogClean(good)

    def assertNoTrace(self, node: NodeProcess, *others: str) -> None:
        """C{node} never discovered, connected to or assigned tasks to any of C{others}."""
        for other in others:
            for what in ("discovered peer", "connected to peer", "assigning tasks to peer"):
                self.assertFalse(
                    node.has(rf"{what} {other}\b"), f"{node.name} logged '{what} {other}':\n{node.log_tail()}"
                )

    def assertRawClientsRefused(self, node: NodeProcess, key: bytes, rogue_key_file: str, side: str) -> None:
        """
        A raw AMP client without the key gets AUTH_REQUIRED for SUBMIT_JOB
        (of a task that would write to C{side}), and the connection closed;
        one with a wrong key cannot check the node's proof, and its own is
        refused with AUTH_FAILED.
        """
        submit = {
            "tasks": json.dumps([{"id": "x1", "kind": "sh", "shell": True, "command": record_run(side)}]).encode(),
            "defaults": b"null",
            "upload": b"",
            "final": b"True",
        }
        client = RawAmpClient(node.port)
        try:
            answer = client.ask(b"SUBMIT_JOB", 1, **submit)
            self.assertEqual(answer.get(b"_error_code"), b"AUTH_REQUIRED", answer)
            self.assertTrue(client.closed_by_peer(5.0), "the connection stayed open after AUTH_REQUIRED")
        finally:
            client.close()
        node.wait_for(r"Refused the connection from 127\.0\.0\.1:\d+: it sent SUBMIT_JOB before authenticating")

        with open(rogue_key_file, encoding="ascii") as f:
            rogue = ChallengeResponse(bytes.fromhex(f.read().strip()))
        mine = os.urandom(32)
        client = RawAmpClient(node.port)
        try:
            answer = client.ask(b"AUTHENTICATE", 1, nonce=mine)
            theirs, proof = answer[b"nonce"], answer[b"proof"]
            self.assertTrue(ChallengeResponse(key).check("acceptor", mine, theirs, proof), "the node's proof is wrong")
            self.assertFalse(rogue.check("acceptor", mine, theirs, proof), "the wrong key checks the node's proof")
            answer = client.ask(b"AUTH_PROOF", 2, proof=rogue.proof("dialler", mine, theirs))
            self.assertEqual(answer.get(b"_error_code"), b"AUTH_FAILED", answer)
            self.assertTrue(client.closed_by_peer(5.0), "the connection stayed open after AUTH_FAILED")
        finally:
            client.close()
        node.wait_for(r"Refused the connection from 127\.0\.0\.1:\d+: it does not hold the cluster key \(wrong proof\)")


class ReplayTests(IntegrationTestCase):
    """Sealed datagrams and an authenticated client's bytes, played again."""

    def test_replays_are_refused(self) -> None:
        """
        A sealed DISCOVER captured from the group and multicast again is
        refused as replayed, and later as stale, and the peer tables do not
        change.  The bytes of a real client's authenticated SUBMIT_JOB
        (through a proxy) played on a new connection fail at AUTH_PROOF: the
        node's nonce is new, the connection is closed, and no job is made.
        """
        cluster = Cluster(self, budget=45)
        key = write_key_file(cluster.path("cluster.key"))
        listener = GroupListener(cluster.group)
        self.addCleanup(listener.close)
        web1, web2 = free_tcp_port(), free_tcp_port()
        # --web-public: see ApiTokenTests, the token breaks every request.
        keyed = ("--key-file", cluster.path("cluster.key"), "--web-public")
        g1 = cluster.start("g1", *keyed, "--web", str(web1))
        g1.wait_for(r"\] Node g1 sent DISCOVER$")
        g2 = cluster.start("g2", *keyed, "--web", str(web2))
        # g2's first DISCOVER: g1 heard it (and g2 itself, multicast loops back).
        discover, captured_at = listener.capture("g2", "DISCOVER", timeout=cluster.deadline.bound(5))
        api1, api2 = Api(web1, key), Api(web2, key)
        g1.wait_for(r"\] Node g1 connected to peer g2 ")
        g2.wait_for(r"\] Node g2 connected to peer g1 ")
        tables = (api1.peers(), api2.peers())
        self.assertEqual(sorted(tables[0]), ["g1", "g2"])

        sender = multicast_sender()
        self.addCleanup(sender.close)
        replayer = sender.getsockname()[1]
        sender.sendto(discover, cluster.group)
        for node in (g1, g2):
            node.wait_for(REPLAYED.format(port=replayer))
        self.assertEqual((api1.peers(), api2.peers()), tables)

        self.assertClientReplayRefused(cluster, g1, api1, g2, api2)

        # Past the 10 s window, the same bytes are stale rather than replayed.
        cluster.wait_until(
            lambda: time.time() > captured_at + 10.5, lambda: "the datagram's window did not pass", timeout=12
        )
        sender.sendto(discover, cluster.group)
        for node in (g1, g2):
            node.wait_for(STALE.format(port=replayer))
        self.assertEqual((api1.peers(), api2.peers()), tables)
        for node in (g1, g2):
            self.assertLogClean(node)

    def assertClientReplayRefused(
        self, cluster: Cluster, g1: NodeProcess, api1: Api, g2: NodeProcess, api2: Api
    ) -> None:
        """
        Submit a job through a recording proxy with the real client; then
        play what the client sent on new connections to g1 (step by step,
        and all at once) and to g2.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p2pexec.cli",
                "--connect",
                f"127.0.0.1:{listener.getsockname()[1]}",
                "--key-file",
                cluster.path("cluster.key"),
                "submit",
                "--tasks",
                "q1,q2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cluster.folder,
            env=cluster.environment(),
        )
        self.addCleanup(kill_and_reap, client)
        sent, answered = proxy_one_client(client, listener, g1.port, timeout=cluster.deadline.bound(10))
        output = client.communicate(timeout=cluster.deadline.bound(10))[0].decode()
        self.assertEqual(client.returncode, 0, output)
        jobs = api1.jobs()
        self.assertEqual(len(jobs), 1, jobs)

        boxes = split_boxes(sent)
        commands = [box.get(b"_command") for _, box in boxes]
        self.assertEqual(commands[:3], [b"AUTHENTICATE", b"AUTH_PROOF", b"SUBMIT_JOB"], commands)
        first_nonce = split_boxes(answered)[0][1][b"nonce"]

        # Step by step: the node answers AUTHENTICATE with a nonce of its
        # own, new, so the recorded AUTH_PROOF does not fit it.
        replay = RawAmpClient(g1.port)
        try:
            replay.send_raw(boxes[0][0])
            answer = replay.read_box()
            self.assertNotEqual(answer[b"nonce"], first_nonce, "the node used the same nonce twice")
            replay.send_raw(boxes[1][0])
            self.assertEqual(replay.read_box().get(b"_error_code"), b"AUTH_FAILED")
            self.assertTrue(replay.closed_by_peer(5.0), "the connection stayed open after AUTH_FAILED")
        finally:
            replay.close()
        g1.wait_for(r"Refused the connection from 127\.0\.0\.1:\d+: it does not hold the cluster key \(wrong proof\)")

        # All at once, to g1 (which saw the original) and to g2 (which did not).
        for node in (g1, g2):
            replay = RawAmpClient(node.port)
            try:
                replay.send_raw(sent)
                answers = read_until_closed(replay, 5.0)
            finally:
                replay.close()
            codes = [box.get(b"_error_code") for box in answers if b"_error" in box]
            self.assertIn(b"AUTH_FAILED", codes, answers)
            self.assertFalse([box for box in answers if b"job" in box and box.get(b"job")], answers)
        self.assertEqual(api1.jobs().keys(), jobs.keys())
        self.assertEqual(api2.jobs(), {})


class ApiTokenTests(IntegrationTestCase):
    """The HTTP API of a node with a key, without --web-public."""

    def test_token_opens_the_api(self) -> None:
        """
        GET /api/peers and /api/jobs answer 200 with the bearer token, and
        401 without it or with a wrong one; POST /api/jobs with the token
        creates a job.
        """
        cluster = Cluster(self)
        key = write_key_file(cluster.path("cluster.key"))
        web = free_tcp_port()
        node = cluster.start("g1", "--key-file", cluster.path("cluster.key"), "--web", str(web))
        api = Api(web, key)
        wrong = Api(web, bytes(32))
        for path in ("/api/peers", "/api/jobs"):
            self.assertEqual(api.request("GET", path, token=False)[0], 401, path)
            self.assertEqual(wrong.request("GET", path)[0], 401, path)
            status, body = api.request("GET", path)
            self.assertEqual(status, 200, f"GET {path} with the token: {status} {body!r}\n{node.log_tail()}")
        status, body = api.request("POST", "/api/jobs", {"task": [{"id": "q1", "kind": "q"}]})
        self.assertEqual(status, 201, f"POST /api/jobs with the token: {status} {body!r}")
        self.assertLogClean(node)


class ProtectedModeTests(IntegrationTestCase):
    """A node refuses to start unprotected where others can reach it."""

    def test_non_loopback_interface_needs_a_key(self) -> None:
        """
        C{--interface} 10.254.254.1 (not loopback; it need not exist, the
        refusal comes first) without C{--key-file} exits with status 1 or 2
        and one line naming C{--key-file} and C{--insecure}.
        """
        cluster = Cluster(self)
        status, output = cluster.run_once(
            "--name",
            "x",
            "--interface",
            "10.254.254.1",
            "--port",
            "0",
            "--group",
            cluster.group_option,
            "--cluster",
            cluster.cluster_name,
            "--state-dir",
            cluster.state_dir("x"),
        )
        self.assertIn(status, (1, 2), output)
        lines = [line for line in output.splitlines() if "--key-file" in line and "--insecure" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn("10.254.254.1", lines[0])
        self.assertNotIn("started on port", output)

    def test_key_file_readable_by_others(self) -> None:
        """A key file of mode 0644 is refused: the message names the file and says chmod 600."""
        cluster = Cluster(self)
        path = cluster.path("open.key")
        write_key_file(path, mode=0o644)
        status, output = cluster.run_once(
            "--name",
            "x",
            "--port",
            "0",
            "--key-file",
            path,
            "--group",
            cluster.group_option,
            "--cluster",
            cluster.cluster_name,
            "--state-dir",
            cluster.state_dir("x"),
        )
        self.assertIn(status, (1, 2), output)
        lines = [line for line in output.splitlines() if path in line and "chmod 600" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertNotIn("started on port", output)
