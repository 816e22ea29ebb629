"""
W9, "parallel habits": what a GNU parallel user types, end to end.

One node ``--slots 2`` (kind ``sh``) is started and listening; then, in the
same repetition and in turn:

  - ``p2pexec run --kind sh -- echo {} ::: 1 ... 2000``: the client process
    from its start to its exit (start-up, submission, following, printing
    the 2,000 lines);
  - ``parallel -j2 echo ::: 1 ... 2000`` (GNU parallel, if installed);
  - ``seq 2000 | xargs -P2 -n1 echo``.

Each one's standard output is checked to be the same 2,000 lines (as a
set).  The node's own start-up is not counted: a ``run`` user has a
cluster already.  Ratios are p2pexec / parallel and p2pexec / xargs of the
same repetition.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from _cluster import CHECKOUT, Node, RunFailed, fresh_cluster, start_node, stop_nodes, wait_until

PARALLEL = shutil.which("parallel")
"""GNU parallel, when installed (W9 is skipped without it)."""

KIND = "sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _timed(argv: list[str], timeout: float, stdin: bytes | None = None, env: dict | None = None) -> tuple[float, bytes]:
    """Seconds C{argv} took from start to exit, and its stdout; L{RunFailed} if it fails."""
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RunFailed(f"{argv[0]} did not finish within {timeout:g}s") from None
    took = time.monotonic() - started
    if process.returncode != 0:
        raise RunFailed(f"{' '.join(argv[:4])} ... exited with status {process.returncode}: {err[-500:]!r}")
    return took, out


def w9(folder: str, tasks: int, timeout: float) -> dict:
    """One repetition of W9: p2pexec run, parallel -j2 and xargs -P2, timed in turn."""
    numbers = [str(n) for n in range(1, tasks + 1)]
    expected = sorted(numbers)
    port = _free_port()
    nodes: list[Node] = []
    figures: dict = {}
    try:
        deadline = time.monotonic() + timeout
        nodes.append(
            start_node(folder, "habits", ["--capabilities", KIND, "--port", str(port)], fresh_cluster(), slots=2)
        )
        wait_until(lambda: _accepts(port), nodes, deadline, "the node to accept connections")
        env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("P2PEXEC_CONNECT", None)
        run = [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{port}", "run", "--kind", KIND]
        figures["p2pexec"], out = _timed([*run, "--", "echo", "{}", ":::", *numbers], timeout, env=env)
        if sorted(out.decode().splitlines()) != expected:
            raise RunFailed("p2pexec run printed other lines than the 2,000 numbers")
    finally:
        stop_nodes(nodes)
    if PARALLEL is not None:
        figures["parallel"], out = _timed([PARALLEL, "--will-cite", "-j2", "echo", ":::", *numbers], timeout)
        if sorted(out.decode().splitlines()) != expected:
            raise RunFailed("parallel printed other lines than the 2,000 numbers")
        figures["ratio_parallel"] = figures["p2pexec"] / figures["parallel"]
    figures["xargs"], out = _timed(["xargs", "-P2", "-n1", "echo"], timeout, stdin="\n".join(numbers).encode() + b"\n")
    if sorted(out.decode().splitlines()) != expected:
        raise RunFailed("xargs printed other lines than the 2,000 numbers")
    figures["ratio_xargs"] = figures["p2pexec"] / figures["xargs"]
    return figures
