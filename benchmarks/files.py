"""
W10, "a big input": one 1 GiB file sent with a task, through two nodes.

Two nodes with separate state folders are started on loopback: ``master``
(runs no task kind) and ``worker`` (kind ``files``, one slot); once they are
connected, ``p2pexec submit --wait`` hands the master a job of one task
whose ``inputs`` is the 1 GiB file and whose command checks the copy's size
in its sandbox.  Two hops are timed, each by the node that received the
file (its log line names the bytes and the seconds):

  - upload: the client to the master (PUT_BLOB pieces);
  - fetch: the master to the worker (FETCH_BLOB pieces), then placed in the
    task's sandbox.

The baseline, in the same repetition and before and after the p2pexec run:
the same file copied over a loopback TCP socket by Python (a sender thread
reads it in 1 MiB pieces and ``sendall``s them; the receiver writes what it
reads to a file), as ``cat FILE | nc`` would.  A hop's ratio is its MB/s
over the baseline's (the mean of the two copies). Also timed in the same
repetition: the SHA-256 of the file in one process, which every hop must
compute as it receives (a node checks each file against its digest), so
that its ratio to the socket copy is the ceiling of a hop's ratio on one
core.  Peak RSS: VmHWM of each
node just before it is stopped, and the client's maximum RSS from
``wait4``.  Targets (issue 16): each ratio at least 0.5; no node above
100 MiB.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time

from _cluster import CHECKOUT, Node, RunFailed, Watch, fresh_cluster, start_node, stop_nodes, wait_until

KIND = "files"
PIECE = 1024 * 1024
UPLOAD = re.compile(r"Node master received file \S+ \((\d[\d,]*) bytes\) from .* in ([\d.]+)s")
"""The master's line once an uploaded file is whole (see p2pexec/file_service.py)."""
FETCH = re.compile(r"Node worker fetched input \S+ \((\d[\d,]*) bytes.*\) from master in ([\d.]+)s")
"""The worker's line once it fetched an input (see p2pexec/file_runner.py)."""


def make_file(path: str, size: int) -> None:
    """Write C{size} random bytes to C{path} (random, so that nothing on the way can shrink them)."""
    block = os.urandom(PIECE)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(block[: min(left, PIECE)])
            left -= PIECE
            block = block[1:] + block[:1]


def sha256_seconds(path: str) -> float:
    """Seconds to SHA-256 C{path} in this process, read in 1 MiB pieces: what every receiving hop must also do."""
    digest = hashlib.sha256()
    started = time.monotonic()
    with open(path, "rb") as source:
        for piece in iter(lambda: source.read(PIECE), b""):
            digest.update(piece)
    return time.monotonic() - started


def socket_copy(path: str, into: str) -> float:
    """Seconds to copy C{path} into C{into} over a loopback TCP socket (the baseline)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def receive() -> None:
        connection, _ = server.accept()
        with connection, open(into, "wb") as out:
            while True:
                data = connection.recv(PIECE)
                if not data:
                    return
                out.write(data)

    receiver = threading.Thread(target=receive)
    receiver.start()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sender, open(path, "rb") as source:
        while True:
            data = source.read(PIECE)
            if not data:
                break
            sender.sendall(data)
    receiver.join()
    took = time.monotonic() - started
    server.close()
    if os.path.getsize(into) != os.path.getsize(path):
        raise RunFailed("the baseline socket copy lost bytes")
    os.unlink(into)
    return took


def _client_run(argv: list[str], timeout: float) -> tuple[int, int, str]:
    """Run the client; return (exit status, its maximum RSS in KiB, its stderr's end)."""
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("P2PEXEC_CONNECT", None)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stderr is not None
        err = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        timer.cancel()
    return process.returncode, int(usage.ru_maxrss), err.decode(errors="replace")[-800:]


def _hop(node: Node, pattern: re.Pattern[str], size: int) -> float:
    """Seconds of the hop C{node} logged for a file of C{size} bytes."""
    for line in node.lines():
        match = pattern.search(line)
        if match and int(match.group(1).replace(",", "")) == size:
            return float(match.group(2))
    raise RunFailed(f"{node.name} logged no line for the {size:,}-byte file ({pattern.pattern})")


def w10(folder: str, size: int, timeout: float) -> dict:
    """One repetition of W10: the baseline copy, the p2pexec job, the baseline again."""
    source = os.path.join(folder, "big.bin")
    make_file(source, size)
    figures: dict = {"size": size}
    before = socket_copy(source, os.path.join(folder, "copy.bin"))
    hashing = sha256_seconds(source)
    job = os.path.join(folder, "w10.toml")
    with open(job, "w") as out:
        out.write(
            f'[[task]]\nid = "big"\nkind = "{KIND}"\ninputs = ["big.bin"]\n'
            f'command = ["sh", "-c", "test $(stat -c %s big.bin) -eq {size}"]\n'
        )
    cluster = fresh_cluster()
    nodes: list[Node] = []
    try:
        deadline = time.monotonic() + timeout
        worker = start_node(folder, "worker", ["--capabilities", KIND, "--replicas", "0"], cluster, slots=1)
        nodes.append(worker)
        master = start_node(folder, "master", ["--capabilities", "none-of-these", "--replicas", "0"], cluster)
        nodes.append(master)
        watch = Watch(master, port=r"Node \S+ started on port (\d+)", connected=r"Node \S+ connected to peer (\S+)")
        wait_until(lambda: "worker" in watch.poll()["connected"], nodes, deadline, "the master to connect")
        port = int(next(iter(watch.found["port"])))
        argv = [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", "submit", "--wait", job]
        status, figures["client_rss_kib"], err = _client_run(argv, max(1.0, deadline - time.monotonic()))
        if status != 0:
            raise RunFailed(f"p2pexec submit --wait exited with status {status}: {err}")
        figures["upload_s"] = _hop(master, UPLOAD, size)
        figures["fetch_s"] = _hop(worker, FETCH, size)
        figures["master_hwm_kib"] = master.memory().get("VmHWM", 0) // 1024
        figures["worker_hwm_kib"] = worker.memory().get("VmHWM", 0) // 1024
    finally:
        stop_nodes(nodes)
    after = socket_copy(source, os.path.join(folder, "copy.bin"))
    os.unlink(source)
    baseline = (before + after) / 2
    figures["socket_mbps"] = size / baseline / 1e6
    figures["sha256_mbps"] = size / hashing / 1e6
    figures["sha256_ratio"] = figures["sha256_mbps"] / figures["socket_mbps"]
    figures["upload_mbps"] = size / figures["upload_s"] / 1e6
    figures["fetch_mbps"] = size / figures["fetch_s"] / 1e6
    figures["upload_ratio"] = figures["upload_mbps"] / figures["socket_mbps"]
    figures["fetch_ratio"] = figures["fetch_mbps"] / figures["socket_mbps"]
    return figures
