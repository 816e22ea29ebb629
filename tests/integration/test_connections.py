"""
Integration tests: a real node closes the connections it accepted that
never introduce themselves, and keeps a client's connection while it asks.

The introduction limit is the real one (30 s, see
L{p2pexec.peer.INTRODUCTION_TIMEOUT}); the test waits for it once, with all
its connections opened together, and is bounded at 45 s.
"""

from __future__ import annotations

import re
import time

from twisted.trial import unittest

from tests.integration.cluster import Cluster, RawAmpClient

LIMIT = 30.0
"""The node's introduction limit (p2pexec.peer.INTRODUCTION_TIMEOUT), in seconds."""

MARGIN = 8.0
"""How much later than the limit a close may come (a loaded 2-CPU machine)."""


def closed_now(client: RawAmpClient) -> bool:
    """Whether the node has closed C{client}'s connection (EOF or reset is waiting), without blocking."""
    client.socket.setblocking(False)
    try:
        return client.socket.recv(65536) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ConnectionResetError:
        return True
    finally:
        client.socket.setblocking(True)


class SilentConnectionTests(unittest.TestCase):
    """Connections that never introduce themselves are closed at the limit; a polling client is kept."""

    def test_silent_and_half_introduced_connections_closed_polling_client_kept(self) -> None:
        """
        A raw TCP connection that sends nothing, and one that sends
        CONNECT_REQUEST but no HANDSHAKE, are closed by the node 30 s after
        they were made (not before, and within the margin), each with one
        log line naming its address; a client that asks LIST_JOBS every
        second meanwhile keeps its connection past the limit.
        """
        cluster = Cluster(self, budget=45.0)
        x1 = cluster.start("x1", "--capabilities", "x")
        opened = time.monotonic()
        silent = RawAmpClient(x1.port)
        self.addCleanup(silent.close)
        half = RawAmpClient(x1.port)
        self.addCleanup(half.close)
        poller = RawAmpClient(x1.port)
        self.addCleanup(poller.close)
        answer = half.ask(
            b"CONNECT_REQUEST",
            1,
            cluster=cluster.cluster_name.encode(),
            name=b"ghost",
            instance=b"0123",
            version=b"1",
        )
        self.assertEqual(answer.get(b"name"), b"x1", answer)

        closed_at: dict[str, float] = {}
        tag = 0
        while time.monotonic() - opened < LIMIT + MARGIN and len(closed_at) < 2:
            tag += 1
            answer = poller.ask(b"LIST_JOBS", tag)
            self.assertIn(b"jobs", answer, answer)
            for name, client in (("silent", silent), ("half", half)):
                if name not in closed_at and closed_now(client):
                    closed_at[name] = time.monotonic() - opened
            time.sleep(1.0)
        self.assertEqual(
            sorted(closed_at), ["half", "silent"], f"still open after {LIMIT + MARGIN:g}s: {x1.log_tail()}"
        )
        for name, when in closed_at.items():
            # The node counts from the moment it accepted, a little after `opened`.
            self.assertGreaterEqual(when, LIMIT - 1.0, f"{name} closed too early, after {when:.1f}s")

        # The client that kept asking is still served, past the limit.
        self.assertIn(b"jobs", poller.ask(b"LIST_JOBS", tag + 1))
        self.assertFalse(closed_now(poller))

        silent_port = silent.socket.getsockname()[1]
        half_port = half.socket.getsockname()[1]
        x1.wait_for(
            rf"#warn\] Closed the connection from 127\.0\.0\.1:{silent_port}: it did not introduce itself "
            rf"\(CONNECT_REQUEST and HANDSHAKE\) or send a client command within 30s of connecting$",
            timeout=3,
        )
        x1.wait_for(
            rf"#warn\] Closed the connection from 127\.0\.0\.1:{half_port}: node ghost did not complete its "
            rf"introduction \(HANDSHAKE\) within 30s of connecting$",
            timeout=3,
        )
        self.assertEqual(len(x1.find_all(r"Closed the connection from")), 2, x1.log_tail())
        self.assertFalse(re.search(r"Traceback|Unhandled", x1.log_text()))
