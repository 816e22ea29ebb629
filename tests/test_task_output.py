"""
Tests for TASK_OUTPUT (L{p2pexec.task_output}): how a node answers as the
job's master, as a worker and by forwarding, over doubles of its peers'
connections; the responder's argument checks; and C{p2pexec logs}
(L{p2pexec.cli.logs}) over a scripted node and a L{Clock}.
"""

from __future__ import annotations

import io
import os
from typing import Any

import attr
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial.unittest import TestCase

from p2pexec import commands
from p2pexec.attempt_states import AttemptState
from p2pexec.cli.errors import CliError
from p2pexec.cli.logs import FOLLOW_INTERVAL, print_output
from p2pexec.cli.parser import parse_arguments
from p2pexec.directory import JobDirectory
from p2pexec.job import Job
from p2pexec.model import TaskSpec
from p2pexec.outputs import OutputStore
from p2pexec.replicas import Ballot
from p2pexec.task_output import OutputCommands, TaskOutputs
from p2pexec.task_states import TaskState
from tests.cli_doubles import Harness


@attr.s(auto_attribs=True)
class _Info:
    name: str


@attr.s(auto_attribs=True)
class _Node:
    info: _Info


class Link:
    """
    A peer connection double: TASK_OUTPUT sent on it is answered by the
    other node's L{TaskOutputs}, as arriving over a peer link from C{sender}.
    """

    def __init__(self, sender: str, target: TaskOutputs | None) -> None:
        self.sender = sender
        self.target = target
        self.closed = False
        self.sent: list[dict[str, Any]] = []

    def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[dict[str, Any]]:
        """Answer as the target node would (declared errors fail the Deferred, as AMP's do)."""
        assert command is commands.TaskOutput
        self.sent.append(arguments)
        if self.target is None:
            return fail(amp.UnhandledCommand("TASK_OUTPUT"))
        a = dict(arguments)
        return self.target.answer(
            a["job"], a["task"], a["stream"], a["offset"], a["limit"], a.get("attempt"), self.sender, "peer"
        )


@attr.s(auto_attribs=True)
class _Record:
    connection: Link | None


class Peers:
    """A peer table double: a record, with its link, per peer name."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}

    def get(self, name: str) -> _Record | None:
        """The peer's record, if linked."""
        return _Record(self.links[name]) if name in self.links else None


class _Master:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}


class _Worker:
    def __init__(self) -> None:
        self.states: dict[tuple[str, str, str, int], AttemptState] = {}

    def state_of(self, master: str, job: str, task_id: str, attempt: int) -> AttemptState | None:
        return self.states.get((master, job, task_id, attempt))


class Cluster:
    """Three nodes' L{TaskOutputs}: m (the job's master), w (its worker, with a store) and c (neither)."""

    def __init__(self, testcase: TestCase, w_store: bool = True) -> None:
        self.clock = Clock()
        folder = os.path.abspath(testcase.mktemp())
        self.store = OutputStore(os.path.join(folder, "output"), "w", 1 << 20) if w_store else None
        self.nodes: dict[str, TaskOutputs] = {}
        self.peers: dict[str, Peers] = {}
        self.masters: dict[str, _Master] = {}
        self.workers: dict[str, _Worker] = {}
        self.directories: dict[str, JobDirectory] = {}
        for name in ("m", "w", "c"):
            outputs = TaskOutputs(self.clock, self.store if name == "w" else None)
            self.peers[name], self.masters[name], self.workers[name] = Peers(), _Master(), _Worker()
            self.directories[name] = JobDirectory()
            outputs.wire(
                _Node(_Info(name)),  # type: ignore[arg-type]
                self.peers[name],  # type: ignore[arg-type]
                self.masters[name],  # type: ignore[arg-type]
                self.workers[name],  # type: ignore[arg-type]
                self.directories[name],
            )
            self.nodes[name] = outputs
        for a in self.nodes:
            for b in self.nodes:
                if a != b:
                    self.peers[a].links[b] = Link(a, self.nodes[b])
        self.job = Job("job-1", [TaskSpec(id="t1", kind="sh", command=("echo",)), TaskSpec.instruction("a1")], 0.0)
        self.masters["m"].jobs["job-1"] = self.job
        for name in ("w", "c"):
            self.directories[name].learn("job-1", Ballot(1, "m"))

    def assign(self, task: str = "t1", attempt: int = 1, worker: str = "w", state: TaskState = TaskState.ASSIGNED):
        """The master's record of C{task}: attempt C{attempt} on C{worker}, in C{state}."""
        record = self.job.tasks[task]
        record.attempt, record.worker, record.state = attempt, worker, state

    def ask(self, node: str, task: str = "t1", stream: str = "stdout", offset: int = 0, limit: int = 60_000):
        """A client's TASK_OUTPUT to C{node}."""
        return self.nodes[node].answer("job-1", task, stream, offset, limit, None, None, "a client")


class AnswerTests(TestCase):
    """The three roles, and where each question goes."""

    def test_through_a_third_node(self) -> None:
        """c forwards to m (no attempt), m asks w naming the newest attempt; the bytes come back."""
        cluster = Cluster(self)
        cluster.assign(attempt=2)
        keeper = cluster.store.start("job-1", "t1", 2)  # type: ignore[union-attr]
        keeper.write(0, b"hello")
        answer = self.successResultOf(cluster.ask("c", offset=1, limit=3))
        self.assertEqual(
            answer,
            {"data": b"ell", "next_offset": 4, "size": 5, "ended": False, "cut": False, "attempt": 2, "node": "w"},
        )
        self.assertEqual(cluster.peers["c"].links["m"].sent[0].get("attempt"), None)
        self.assertEqual(cluster.peers["m"].links["w"].sent[0]["attempt"], 2)

    def test_master_that_ran_it_itself(self) -> None:
        """A master that ran the attempt answers from its own store, asking nobody."""
        cluster = Cluster(self)
        cluster.masters["w"].jobs["job-1"] = cluster.job
        cluster.assign(worker="w", state=TaskState.DONE)
        keeper = cluster.store.start("job-1", "t1", 1)  # type: ignore[union-attr]
        keeper.write(1, b"err")
        keeper.end()
        answer = self.successResultOf(cluster.ask("w", stream="stderr"))
        self.assertEqual((answer["data"], answer["ended"], answer["node"]), (b"err", True, "w"))
        self.assertEqual(cluster.peers["w"].links["m"].sent, [])

    def test_unknown_task_and_job(self) -> None:
        """UNKNOWN_TASK from the master (passed on by a forwarding node); UNKNOWN_JOB where no leader is known."""
        cluster = Cluster(self)
        self.failureResultOf(cluster.ask("c", task="nope"), commands.UnknownTask)
        failure = self.failureResultOf(
            cluster.nodes["c"].answer("job-9", "t1", "stdout", 0, 10, None, None, "a client"), commands.UnknownJob
        )
        self.assertIn("knows no node that is", failure.getErrorMessage())

    def test_peer_without_attempt_is_not_answered_by_a_non_master(self) -> None:
        """Over a peer link a node that does not lead the job never forwards again: UNKNOWN_JOB."""
        cluster = Cluster(self)
        d = cluster.nodes["c"].answer("job-1", "t1", "stdout", 0, 10, None, "w", "peer")
        self.failureResultOf(d, commands.UnknownJob)

    def test_not_started(self) -> None:
        """No attempt yet, an attempt queued on the worker, or one not there yet: NOT_STARTED."""
        cluster = Cluster(self)
        self.failureResultOf(cluster.ask("m"), commands.NotStarted)
        cluster.assign()
        self.failureResultOf(cluster.ask("m"), commands.NotStarted)
        cluster.workers["w"].states[("m", "job-1", "t1", 1)] = AttemptState.QUEUED
        failure = self.failureResultOf(cluster.ask("m"), commands.NotStarted)
        self.assertIn("queued on node w", failure.getErrorMessage())

    def test_gone(self) -> None:
        """An ended attempt the worker no longer holds, a worker not connected or that keeps none: OUTPUT_GONE."""
        cluster = Cluster(self)
        cluster.assign(state=TaskState.DONE)
        failure = self.failureResultOf(cluster.ask("m"), commands.OutputGone)
        self.assertIn("no longer holds the output of attempt 1", failure.getErrorMessage())
        cluster.peers["m"].links["w"].closed = True
        failure = self.failureResultOf(cluster.ask("c"), commands.OutputGone)
        self.assertIn("is not connected to node m", failure.getErrorMessage())
        quiet = Cluster(self, w_store=False)
        quiet.assign()
        failure = self.failureResultOf(quiet.ask("m"), commands.OutputGone)
        self.assertIn("--max-output 0", failure.getErrorMessage())

    def test_older_or_silent_worker(self) -> None:
        """A worker that does not know TASK_OUTPUT, or does not answer in time: OUTPUT_GONE saying so."""
        cluster = Cluster(self)
        cluster.assign()
        cluster.peers["m"].links["w"].target = None
        failure = self.failureResultOf(cluster.ask("m"), commands.OutputGone)
        self.assertIn("an older p2pexec", failure.getErrorMessage())
        cluster.peers["m"].links["w"].callRemote = lambda *a, **k: Deferred()  # type: ignore[method-assign]
        d = cluster.ask("m")
        cluster.clock.advance(10)
        failure = self.failureResultOf(d, commands.OutputGone)
        self.assertIn("no answer within 10s", failure.getErrorMessage())

    def test_instruction(self) -> None:
        """An instruction has no process: empty, ended once done."""
        cluster = Cluster(self)
        cluster.assign(task="a1", state=TaskState.DONE)
        answer = self.successResultOf(cluster.ask("c", task="a1"))
        self.assertEqual((answer["data"], answer["size"], answer["ended"]), (b"", 0, True))


class _Responder(OutputCommands):
    """The responder alone, over a L{Cluster}'s node c."""

    def __init__(self, cluster: Cluster) -> None:
        self._handler = attr.make_class("H", ["task_outputs"])(cluster.nodes["m"])  # type: ignore[assignment]
        self.peer_name = None

    def address(self) -> str:
        return "127.0.0.1:1"

    def describe(self) -> str:
        return "a client at 127.0.0.1:1"


class ResponderTests(TestCase):
    """TASK_OUTPUT's arguments are checked before anything is asked."""

    def test_bad_arguments(self) -> None:
        """A bad stream, a negative offset or limit, an attempt below 1: BAD_ARGUMENTS naming the fault."""
        responder = _Responder(Cluster(self))
        for arguments, fragment in (
            ({"stream": "stdin", "offset": 0}, "'stream' must be stdout or stderr"),
            ({"stream": "stdout", "offset": -1}, "'offset' and 'limit' must be 0 or more"),
            ({"stream": "stdout", "offset": 0, "limit": -5}, "'offset' and 'limit' must be 0 or more"),
            ({"stream": "stdout", "offset": 0, "attempt": 0}, "'attempt' 1 or more"),
        ):
            with self.assertRaises(commands.BadArguments) as caught:
                responder._task_output(job="job-1", task="t1", **arguments)
            self.assertIn(fragment, str(caught.exception))

    def test_limit_capped(self) -> None:
        """No limit, or one above 60,000, asks for 60,000 bytes: every answer fits one AMP value."""
        cluster = Cluster(self)
        cluster.assign()
        keeper = cluster.store.start("job-1", "t1", 1)  # type: ignore[union-attr]
        keeper.write(0, b"x" * 70_000)
        responder = _Responder(cluster)
        for limit in (None, 100_000):
            answer = self.successResultOf(
                responder._task_output(job="job-1", task="t1", stream="stdout", offset=0, limit=limit)
            )
            self.assertEqual(len(answer["data"]), commands.TASK_OUTPUT_LIMIT)
        box = commands.TaskOutput.makeResponse(answer, None)
        self.assertLess(len(box.serialize()), 65_535)


class LogsCommandTests(TestCase):
    """C{p2pexec logs}: all of it, piece by piece; following until the end."""

    def run_logs(
        self, harness: Harness, follow: bool = False, stream: str = "stdout"
    ) -> tuple[Deferred[int], io.BytesIO]:
        out = io.BytesIO()
        d = ensureDeferred(print_output(harness.context, "job-1", "t1", stream, follow, out))
        return d, out

    def test_prints_every_piece(self) -> None:
        """Pieces are asked from each next offset until the size kept; the bytes are printed as they are."""
        data = bytes(range(256)) * 500

        def answer(job: str, task: str, stream: str, offset: int, **rest: Any) -> dict[str, Any]:
            piece = data[offset : offset + 60_000]
            return dict(
                data=piece, next_offset=offset + len(piece), size=len(data), ended=True, cut=False, attempt=1, node="w"
            )

        harness = Harness({commands.TaskOutput: [answer]})
        d, out = self.run_logs(harness)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(out.getvalue(), data)
        self.assertEqual([a["offset"] for a in harness.node.sent(commands.TaskOutput)], [0, 60_000, 120_000])

    def test_follow_until_the_end(self) -> None:
        """--follow asks again every interval while nothing is new, and stops once ended and all is read."""
        state = {"written": b"one\n", "ended": False}

        def answer(job: str, task: str, stream: str, offset: int, **rest: Any) -> dict[str, Any]:
            piece = state["written"][offset:]
            size = len(state["written"])
            return dict(
                data=piece,
                next_offset=offset + len(piece),
                size=size,
                ended=state["ended"],
                cut=False,
                attempt=1,
                node="w",
            )

        harness = Harness({commands.TaskOutput: [answer]})
        d, out = self.run_logs(harness, follow=True)
        self.assertEqual(out.getvalue(), b"one\n")
        self.assertNoResult(d)
        harness.clock.advance(FOLLOW_INTERVAL)
        self.assertNoResult(d)
        state["written"] += b"two\n"
        harness.clock.advance(FOLLOW_INTERVAL)
        self.assertEqual(out.getvalue(), b"one\ntwo\n")
        state["ended"] = True
        harness.clock.advance(FOLLOW_INTERVAL)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertLessEqual(FOLLOW_INTERVAL, 0.5)

    def test_follow_waits_for_the_start(self) -> None:
        """--follow of a task not started yet waits for it; without --follow it is one line, exit 1."""
        started = dict(data=b"hi\n", next_offset=3, size=3, ended=True, cut=False, attempt=1, node="w")
        harness = Harness({commands.TaskOutput: [commands.NotStarted("not yet"), started]})
        d, out = self.run_logs(harness, follow=True)
        self.assertNoResult(d)
        harness.clock.advance(FOLLOW_INTERVAL)
        self.assertEqual((self.successResultOf(d), out.getvalue()), (0, b"hi\n"))
        harness = Harness({commands.TaskOutput: [commands.NotStarted("not yet")]})
        d, out = self.run_logs(harness)
        error = self.failureResultOf(d, CliError).value
        self.assertEqual(error.status, 1)
        self.assertIn("no output yet: not yet", error.message)

    def test_unknown_task_exits_2(self) -> None:
        """An unknown task: one line, exit 2; output that is gone: exit 1."""
        harness = Harness({commands.TaskOutput: [commands.UnknownTask("job job-1 has no task 't1'")]})
        error = self.failureResultOf(self.run_logs(harness)[0], CliError).value
        self.assertEqual((error.status, error.message), (2, "unknown task: job job-1 has no task 't1'"))
        harness = Harness({commands.TaskOutput: [commands.OutputGone("worker w is gone")]})
        error = self.failureResultOf(self.run_logs(harness)[0], CliError).value
        self.assertEqual(error.status, 1)

    def test_parser(self) -> None:
        """C{logs JOB TASK [-f] [--stderr]}."""
        args = parse_arguments(["logs", "-f", "--stderr", "job-1", "t1"])
        self.assertEqual(
            (args.command, args.job, args.task, args.follow, args.stderr), ("logs", "job-1", "t1", True, True)
        )
        args = parse_arguments(["logs", "job-1", "t1"])
        self.assertEqual((args.follow, args.stderr), (False, False))
