"""
Tests for L{p2pexec.client.AsyncClient.logs} (TASK_OUTPUT, against a fake
AMP responder over L{twisted.test.iosim} and a scripted node) and for
following a job through another node when the connection to one is lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.testing import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import client, commands
from p2pexec.client.connection import NodeClient
from tests.cli_doubles import FakeNode, summary, task_entry

T = TypeVar("T")

JOB = "m1-0123abcd-1"


def drain(iterator: AsyncIterator[T]) -> Deferred[list[T]]:
    """Every item of C{iterator}, once it ends."""

    async def consume() -> list[T]:
        return [item async for item in iterator]

    return Deferred.fromCoroutine(consume())


class OutputServer(amp.AMP):
    """
    A node's TASK_OUTPUT responder: one task's output, kept as it is
    written (L{write}), its attempt ended by L{end}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kept = {"stdout": b"", "stderr": b""}
        self.ended = False
        self.asked: list[tuple[str, int, int]] = []

    def write(self, stream: str, data: bytes) -> None:
        """The task writes C{data}."""
        self.kept[stream] += data

    @commands.TaskOutput.responder
    def task_output(
        self, job: str, task: str, stream: str, offset: int, limit: int | None = None, attempt: int | None = None
    ) -> dict[str, Any]:
        """As DESIGN14 says: at most C{limit} bytes from C{offset}."""
        if job != JOB:
            raise commands.UnknownJob(f"no job {job!r}")
        if task != "t1":
            raise commands.UnknownTask(f"job {job} has no task {task!r}")
        limit = commands.TASK_OUTPUT_LIMIT if limit is None else limit
        self.asked.append((stream, offset, limit))
        kept = self.kept[stream]
        data = kept[offset : offset + limit]
        return {
            "data": data,
            "next_offset": offset + len(data),
            "size": len(kept),
            "ended": self.ended,
            "cut": False,
            "attempt": 1,
            "node": "w1",
        }


class LogsTests(SynchronousTestCase):
    """A task's whole output, through real AMP boxes."""

    def setUp(self) -> None:
        """An AsyncClient whose NodeClient is connected over iosim to an L{OutputServer}."""
        self.clock = Clock()
        self.server = OutputServer()
        protocol = amp.AMP()
        self.pump = iosim.connect(
            self.server, iosim.makeFakeServer(self.server), protocol, iosim.makeFakeClient(protocol)
        )
        node = NodeClient(self.clock, "127.0.0.1", 10001, timeout=30)
        node._protocol = protocol
        self.client = client.AsyncClient(node, self.clock)

    def settle(self, d: Deferred[T], seconds: float = 0.0) -> Deferred[T]:
        """Pump the connection (and move the clock by C{seconds} in half-second steps) until C{d} fires."""
        self.pump.flush()
        while not d.called and seconds > 0:
            self.clock.advance(0.5)
            seconds -= 0.5
            self.pump.flush()
        return d

    def test_whole_output_byte_for_byte(self) -> None:
        """1 MB of every byte value comes back whole, in pieces of at most 60,000 bytes."""
        data = bytes(range(256)) * 4096
        self.server.write("stdout", data)
        self.server.ended = True
        pieces = self.successResultOf(self.settle(drain(self.client.logs(JOB, "t1"))))
        self.assertEqual(b"".join(pieces), data)
        self.assertTrue(all(len(piece) <= commands.TASK_OUTPUT_LIMIT for piece in pieces))
        self.assertEqual(len(pieces), -(-len(data) // commands.TASK_OUTPUT_LIMIT))

    def test_stderr(self) -> None:
        """stream='stderr' asks for standard error; another stream is a ValueError."""
        self.server.write("stdout", b"out\n")
        self.server.write("stderr", b"err\n")
        pieces = self.successResultOf(self.settle(drain(self.client.logs(JOB, "t1", stream="stderr"))))
        self.assertEqual(pieces, [b"err\n"])
        self.assertRaises(ValueError, self.client.logs, JOB, "t1", stream="both")

    def test_without_follow_stops_at_what_is_kept(self) -> None:
        """Without follow: what is kept so far, even while the task runs."""
        self.server.write("stdout", b"line 1\n")
        pieces = self.successResultOf(self.settle(drain(self.client.logs(JOB, "t1"))))
        self.assertEqual(pieces, [b"line 1\n"])

    def test_follow(self) -> None:
        """With follow: lines as they are written (within a second), until the attempt ends."""
        self.server.write("stdout", b"line 1\n")
        got: list[bytes] = []

        async def follow() -> None:
            async for piece in self.client.logs(JOB, "t1", follow=True):
                got.append(piece)

        d = Deferred.fromCoroutine(follow())
        self.settle(d)
        self.assertEqual(got, [b"line 1\n"])
        self.server.write("stdout", b"line 2\n")
        self.settle(d, 1.0)
        self.assertEqual(got, [b"line 1\n", b"line 2\n"])
        self.assertNoResult(d)
        self.server.write("stdout", b"last\n")
        self.server.ended = True
        self.successResultOf(self.settle(d, 1.0))
        self.assertEqual(b"".join(got), b"line 1\nline 2\nlast\n")

    def test_unknown_task(self) -> None:
        """An unknown task: TaskNotFound; an unknown job: JobNotFound."""
        self.failureResultOf(self.settle(drain(self.client.logs(JOB, "t9"))), client.TaskNotFound)
        self.failureResultOf(self.settle(drain(self.client.logs("x-1", "t1"))), client.JobNotFound)


class ScriptedLogsTests(SynchronousTestCase):
    """TASK_OUTPUT answers a real node might give: not started yet, gone, stuck."""

    def answer(self, data: bytes, offset: int, size: int, ended: bool) -> dict[str, Any]:
        """A TASK_OUTPUT answer."""
        return {
            "data": data,
            "next_offset": offset + len(data),
            "size": size,
            "ended": ended,
            "cut": False,
            "attempt": 1,
            "node": "w1",
        }

    def test_not_started(self) -> None:
        """Without follow, a task not started yet is OutputNotReady; with follow, it is waited for."""
        clock = Clock()
        not_yet = client.OutputNotReady("no output yet: task t1 has not started")
        node = FakeNode({commands.TaskOutput: [not_yet]})
        self.failureResultOf(drain(client.AsyncClient(node, clock).logs(JOB, "t1")), client.OutputNotReady)
        node = FakeNode({commands.TaskOutput: [not_yet, not_yet, self.answer(b"hi\n", 0, 3, True)]})
        d = drain(client.AsyncClient(node, clock).logs(JOB, "t1", follow=True))
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), [b"hi\n"])

    def test_cut_flag(self) -> None:
        """What logs gives says, once read, whether the worker cut the stream, how much it kept, and where."""
        answer = dict(self.answer(b"kept\n[p2pexec: output cut here]\n", 0, 32, True), cut=True, attempt=2)
        pieces = client.AsyncClient(FakeNode({commands.TaskOutput: [answer]}), Clock()).logs(JOB, "t1")
        self.assertEqual((pieces.cut, pieces.size, pieces.attempt, pieces.node), (None, None, None, None))
        self.assertEqual(self.successResultOf(drain(pieces)), [b"kept\n[p2pexec: output cut here]\n"])
        self.assertEqual((pieces.cut, pieces.size, pieces.attempt, pieces.node), (True, 32, 2, "w1"))
        whole = client.AsyncClient(FakeNode({commands.TaskOutput: [self.answer(b"x", 0, 1, True)]}), Clock())
        pieces = whole.logs(JOB, "t1")
        self.successResultOf(drain(pieces))
        self.assertIs(pieces.cut, False)

    def test_gone(self) -> None:
        """The worker that held the output is gone: OutputGone, one line."""
        node = FakeNode({commands.TaskOutput: [client.OutputGone("the output is gone: worker w1 left")]})
        self.failureResultOf(drain(client.AsyncClient(node, Clock()).logs(JOB, "t1")), client.OutputGone)

    def test_no_progress(self) -> None:
        """A node whose answers do not move on is an error, not an endless loop."""
        node = FakeNode({commands.TaskOutput: [self.answer(b"", 0, 10, False)]})
        failure = self.failureResultOf(drain(client.AsyncClient(node, Clock()).logs(JOB, "t1")), client.NodeError)
        self.assertIn("no progress", failure.value.message)


def cluster(*peers: tuple[str, str, str]) -> dict[str, Any]:
    """A CLUSTER_STATUS answer of node m1 with C{peers} as (name, address, state)."""
    return {
        "node": {"name": "m1", "address": "127.0.0.1:10001", "state": "self"},
        "peers": [{"name": name, "address": address, "state": state} for name, address, state in peers],
    }


class FollowThroughAnotherNodeTests(SynchronousTestCase):
    """results() goes on through another node when the connection to its own is lost."""

    def test_results_through_the_next_node(self) -> None:
        """
        m1 is lost mid-job: n2 is tried (refused), then n3, which knows the
        job; the results go on from it, each task once.
        """
        clock = Clock()
        lost = client.ConnectionLost("lost the connection to 127.0.0.1:10001: the node closed it")
        m1 = FakeNode(
            {
                commands.ClusterStatus: [
                    cluster(("n2", "127.0.0.2:10002", "alive"), ("n3", "127.0.0.3:10003", "alive"))
                ],
                commands.JobStatus: [{"status": summary(job=JOB, total=2, running=1, succeeded=1)}, lost],
                commands.JobTasks: [
                    {"tasks": [task_entry("t1"), task_entry("t2", "running", status=None)], "next": -1}
                ],
            }
        )
        n3 = FakeNode(
            {
                commands.JobStatus: [{"status": summary(job=JOB, state="finished", total=2, succeeded=2)}],
                commands.JobTasks: [{"tasks": [task_entry("t1"), task_entry("t2")], "next": -1}],
            },
            address="127.0.0.3:10003",
        )
        tried: list[str] = []

        async def connect(address: str) -> FakeNode:
            tried.append(address)
            if address != n3.address:
                raise client.ConnectFailed(f"cannot connect to {address}: connection refused")
            return n3

        following = client.AsyncClient(m1, clock, connect)
        d = drain(following.results(JOB))
        clock.advance(0.5)
        results = self.successResultOf(d)
        self.assertEqual([(result.id, result.node) for result in results], [("t1", "a1"), ("t2", "a1")])
        self.assertEqual(tried, ["127.0.0.2:10002", "127.0.0.3:10003"])
        self.assertEqual(len(n3.sent(commands.JobTasks)), 1)

    def test_without_other_nodes(self) -> None:
        """Without a way to connect to others, a lost connection ends following with ConnectionLost."""
        lost = client.ConnectionLost("lost the connection to 127.0.0.1:10001: it was reset or dropped")
        m1 = FakeNode({commands.JobStatus: [lost]})
        failure = self.failureResultOf(drain(client.AsyncClient(m1, Clock()).watch(JOB)), client.ConnectionLost)
        self.assertTrue(failure.value.lost)

    def test_no_node_knows(self) -> None:
        """No other node knows the job: JobNotFound naming each one asked."""
        lost = client.ConnectionLost("lost the connection to 127.0.0.1:10001: the node closed it")
        m1 = FakeNode(
            {commands.ClusterStatus: [cluster(("n2", "127.0.0.2:10002", "alive"))], commands.JobStatus: [lost]}
        )
        n2 = FakeNode({commands.JobStatus: [client.JobNotFound("unknown job: n2 does not know it")]}, "127.0.0.2:10002")

        async def connect(address: str) -> FakeNode:
            return n2

        failure = self.failureResultOf(drain(client.AsyncClient(m1, Clock(), connect).watch(JOB)), client.JobNotFound)
        self.assertIn("n2: unknown job", failure.value.message)
