"""Tests for L{p2pexec.peer}: the AMP protocol and its refusals."""

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.peer import PeerProtocol

from .test_model import node


class LeadsEverything:
    """An L{IClientFollowing} of a node that is the master of every job: it never asks another node."""

    def leads(self, job):
        """Every job is led here."""
        return True

    def replica_jobs(self):
        """No replica is held."""
        return []


class RecordingHandler:
    """An L{IPeerHandler} that records calls and can be told to refuse."""

    challenge = None
    local_challenge = None
    tls = None
    following = LeadsEverything()

    def __init__(self, info):
        self.info = info
        self.calls = []
        self.refuse_connect = None
        self.counted = 0

    def connection_opened(self, protocol):
        """Count the connection; never refuse it."""
        self.counted += 1
        return True

    def connection_released(self, protocol):
        """Count one connection fewer."""
        self.counted -= 1

    def connect_requested(self, protocol, cluster, name, instance, version):
        """Record the request; refuse it with C{refuse_connect}, if set."""
        self.calls.append(("connect", name))
        if self.refuse_connect is not None:
            raise self.refuse_connect
        return {"name": self.info.name, "instance": self.info.instance, "version": 1}

    def handshake_received(self, protocol, info):
        """Record the handshake; answer with this handler's own info."""
        self.calls.append(("handshake", info.name))
        return self.info

    def connection_ready(self, protocol, info):
        """Record that the connection is ready."""
        self.calls.append(("ready", info.name))

    def peers_offered(self, protocol, peers):
        """Record the peers offered; offer z9 in return."""
        self.calls.append(("peers", [(p.name, age) for p, age in peers]))
        return [node(name="z9", instance="i-z").to_wire()]

    def assignment_received(self, protocol, job, master, master_instance, tasks, epoch):
        """Record the assignment; accept every task."""
        self.calls.append(("assignment", job, len(tasks)))
        return len(tasks)

    def confirmation_received(self, protocol, job, results):
        """Record the confirmation; refuse job C{unknown} (L{commands.UnknownJob}), else say all were applied (at epoch 1)."""
        self.calls.append(("confirmation", job, len(results)))
        if job == "unknown":
            raise commands.UnknownJob("not mine")
        return succeed((len(results), 0, 1))

    def job_completed(self, protocol, job, succeeded, failed, elapsed):
        """Record the completion."""
        self.calls.append(("complete", job, succeeded, failed))

    def disconnect_requested(self, protocol, reason):
        """Record the request and its reason."""
        self.calls.append(("disconnect", reason))

    def connection_lost(self, protocol, reason):
        """Record the loss."""
        self.calls.append(("lost",))


class PeerProtocolTests(SynchronousTestCase):
    """A dialling and an accepting L{PeerProtocol} over an in-memory connection."""

    def setUp(self):
        self.clock = Clock()
        self.a = RecordingHandler(node(name="a1", instance="i-a", capabilities=("a",)))
        self.b = RecordingHandler(node(name="b1", instance="i-b"))
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: PeerProtocol(self.b),
            lambda: PeerProtocol(self.a, dialled=True),
            clock=self.clock,
        )

    def _settle(self, d):
        """
        Pump until C{d} fires, and return a Deferred already holding its result.

        The outcome is captured before the answer arrives, as real callers
        must: AMP drops the connection if an error reaches a Deferred with no
        errback yet.
        """
        outcome = []
        d.addBoth(outcome.append)
        self.pump.flush()
        self.assertEqual(len(outcome), 1, "no answer")
        settled = Deferred()
        settled.callback(outcome[0])
        return settled

    def call(self, command, **arguments):
        """Call C{command} from the dialling side; return its settled outcome."""
        return self._settle(self.client.callRemote(command, **arguments))

    def raw(self, name, **strings):
        """Send a raw box with string values; return its settled outcome."""
        return self._settle(self.client.callRemoteString(name, **strings))

    def introduce(self):
        """Run the dialling side's introduction to completion."""
        d = Deferred.fromCoroutine(self.client.introduce(self.a.info))
        self.pump.flush()
        return self.successResultOf(d)

    def assertStillConnected(self):
        """Neither side has lost the connection."""
        self.assertNotIn(("lost",), self.a.calls + self.b.calls)
        self.assertFalse(self.client.closed or self.server.closed)

    def test_introduce(self):
        """CONNECT_REQUEST then HANDSHAKE: both sides know each other and say ready."""
        info = self.introduce()
        self.assertEqual(info, self.b.info)
        self.assertEqual(self.b.calls, [("connect", "a1"), ("handshake", "a1"), ("ready", "a1")])
        self.assertEqual(self.a.calls, [("ready", "b1")])
        self.assertEqual((self.client.peer_name, self.server.peer_name), ("b1", "a1"))

    def test_connect_required_first(self):
        """Any command before CONNECT_REQUEST is refused, and the connection stays up."""
        failure = self.failureResultOf(self.call(commands.PeerExchange, peers=[]))
        failure.trap(commands.ConnectRequired)
        self.assertStillConnected()
        self.introduce()

    def test_handshake_required_before_work(self):
        """After CONNECT_REQUEST but before HANDSHAKE, task commands are refused."""
        self.successResultOf(
            self.call(commands.ConnectRequest, cluster="default", name="a1", instance="i-a", version=1)
        )
        task = {"id": "b1", "kind": "b", "attempt": 1}
        failure = self.failureResultOf(
            self.call(commands.InstructionAssignment, job="j", master="a1", master_instance="i-a", tasks=[task])
        )
        failure.trap(commands.ConnectRequired)
        self.assertIn("HANDSHAKE", failure.getErrorMessage())
        self.assertNotIn(("assignment", "j", 1), self.b.calls)

    def test_second_connect_request_refused(self):
        """An introduced connection cannot be renamed by a second CONNECT_REQUEST, nor handshake twice."""
        self.introduce()
        failure = self.failureResultOf(
            self.call(commands.ConnectRequest, cluster="default", name="x9", instance="i-x", version=1)
        )
        failure.trap(commands.DuplicateConnection)
        self.assertEqual(self.server.peer_name, "a1")
        self.failureResultOf(self.call(commands.Handshake, node=self.a.info.to_wire())).trap(commands.BadArguments)

    def test_refused_handshake_is_not_a_handshake(self):
        """After a refused HANDSHAKE, task commands are still refused."""

        def refuse(protocol, info):
            raise commands.ClusterMismatch("other cluster")

        self.b.handshake_received = refuse
        self.successResultOf(
            self.call(commands.ConnectRequest, cluster="default", name="a1", instance="i-a", version=1)
        )
        self.failureResultOf(self.call(commands.Handshake, node=self.a.info.to_wire())).trap(commands.ClusterMismatch)
        task = {"id": "b1", "kind": "b", "attempt": 1}
        self.failureResultOf(
            self.call(commands.InstructionAssignment, job="j", master="a1", master_instance="i-a", tasks=[task])
        ).trap(commands.ConnectRequired)

    def test_introduce_checks_who_answers(self):
        """Dialling b1's address but finding another node is refused by the dialler."""
        from p2pexec.model import ValidationError

        d = Deferred.fromCoroutine(self.client.introduce(self.a.info, expected="c1"))
        self.pump.flush()
        failure = self.failureResultOf(d)
        failure.trap(ValidationError)
        self.assertIn("'c1'", failure.getErrorMessage())
        self.assertNotIn(("ready", "b1"), self.a.calls)

    def test_version_checked_before_cluster(self):
        """
        A HANDSHAKE answer from a node that differs in both protocol version
        and cluster is refused as VersionMismatch (WIRING divergence 8: one
        check, L{compatibility}, version first, everywhere).
        """
        self.b.info = node(name="b1", instance="i-b", cluster="other", version=2)
        d = Deferred.fromCoroutine(self.client.introduce(self.a.info))
        self.pump.flush()
        self.failureResultOf(d).trap(commands.VersionMismatch)
        self.assertNotIn(("ready", "b1"), self.a.calls)

    def test_declared_refusal_keeps_connection(self):
        """A refused CONNECT_REQUEST arrives as its declared error, and nothing is dropped."""
        self.b.refuse_connect = commands.ClusterMismatch("node b1 is in cluster 'prod'")
        failure = self.failureResultOf(
            self.call(commands.ConnectRequest, cluster="dev", name="a1", instance="i-a", version=1)
        )
        failure.trap(commands.ClusterMismatch)
        self.assertIn("prod", failure.getErrorMessage())
        self.assertStillConnected()

    def test_malformed_box_answered_not_dropped(self):
        """Missing keys, bad JSON and bad integers get BAD_ARGUMENTS; the connection lives."""
        self.introduce()
        boxes = [
            (b"INSTRUCTION_ASSIGNMENT", {"job": b"j"}),
            (
                b"INSTRUCTION_ASSIGNMENT",
                {"job": b"j", "master": b"a1", "master_instance": b"i-a", "tasks": b"{not json"},
            ),
            (b"TASK_COMPLETE", {"job": b"j", "succeeded": b"many", "failed": b"0", "elapsed": b"1.0"}),
            (b"PEER_EXCHANGE", {"peers": b"\xff\xfe"}),
        ]
        for name, strings in boxes:
            failure = self.failureResultOf(self.raw(name, **strings))
            failure.trap(amp.RemoteAmpError)
            self.assertEqual(failure.value.errorCode, b"BAD_ARGUMENTS", name)
        self.assertStillConnected()

    def test_wrong_types_refused(self):
        """Well-formed JSON of the wrong shape is refused with a clear message."""
        self.introduce()
        failure = self.failureResultOf(self.call(commands.PeerExchange, peers={"not": "a list"}))
        failure.trap(commands.BadArguments)
        failure = self.failureResultOf(self.call(commands.PeerExchange, peers=[{"name": "x"}]))
        failure.trap(commands.BadArguments)
        self.assertIn("missing field", failure.getErrorMessage())
        failure = self.failureResultOf(
            self.call(commands.InstructionAssignment, job="j", master="a1", master_instance="i-a", tasks="x")
        )
        failure.trap(commands.BadArguments)
        self.assertStillConnected()

    def test_unknown_command(self):
        """An unknown command is answered with an error; the connection lives."""
        self.introduce()
        failure = self.failureResultOf(self.raw(b"NO_SUCH_THING"))
        failure.trap(amp.UnhandledCommand, amp.RemoteAmpError)
        self.assertStillConnected()

    def test_handshake_must_match_connect(self):
        """A HANDSHAKE describing a different node than CONNECT_REQUEST named is refused."""
        self.successResultOf(
            self.call(commands.ConnectRequest, cluster="default", name="a1", instance="i-a", version=1)
        )
        impostor = node(name="x1", instance="i-x")
        failure = self.failureResultOf(self.call(commands.Handshake, node=impostor.to_wire()))
        failure.trap(commands.BadArguments)
        self.assertIn("x1", failure.getErrorMessage())

    def test_peer_exchange_both_ways(self):
        """PEER_EXCHANGE hands our list over and brings theirs back."""
        self.introduce()
        entry = dict(node(name="c1").to_wire(), age=4.5)
        answer = self.successResultOf(self.call(commands.PeerExchange, peers=[entry, node(name="d1").to_wire()]))
        self.assertEqual([p["name"] for p in answer["peers"]], ["z9"])
        self.assertIn(("peers", [("c1", 4.5), ("d1", 0.0)]), self.b.calls)
        bad = dict(node(name="e1").to_wire(), age=-1)
        self.failureResultOf(self.call(commands.PeerExchange, peers=[bad])).trap(commands.BadArguments)

    def test_task_flow_commands(self):
        """Assignment, confirmation, completion and disconnect reach the handler."""
        self.introduce()
        task = {"id": "b1", "kind": "b", "attempt": 1}
        self.assertEqual(
            self.successResultOf(
                self.call(commands.InstructionAssignment, job="j", master="a1", master_instance="i-a", tasks=[task])
            ),
            {"accepted": 1},
        )
        self.assertEqual(
            self.successResultOf(self.call(commands.ExecutionConfirmation, job="j", results=[{}])),
            {"applied": 1, "stale": 0, "epoch": 1},  # the epoch at which the master leads the job
        )
        self.failureResultOf(self.call(commands.ExecutionConfirmation, job="unknown", results=[])).trap(
            commands.UnknownJob
        )
        self.successResultOf(self.call(commands.TaskComplete, job="j", succeeded=5, failed=0, elapsed=0.5))
        self.successResultOf(self.call(commands.DisconnectRequest, reason="shutdown"))
        self.assertTrue(self.server.leaving)
        self.assertIn(("disconnect", "shutdown"), self.b.calls)


class ChunkTests(SynchronousTestCase):
    """L{commands.chunk} and L{commands.encode_result_within}."""

    def test_chunks_stay_under_limit(self):
        """Every chunk's JSON fits the limit, and together they hold every item in order."""
        items = [{"id": f"t{i}", "pad": "x" * (i % 50)} for i in range(5000)]
        chunks = list(commands.chunk(items, lambda item: item, limit=10_000))
        self.assertGreater(len(chunks), 1)
        for batch in chunks:
            self.assertLessEqual(len(batch.encoded), 10_000)
            self.assertEqual(json.loads(batch.encoded), batch.items)
            self.assertEqual(commands.JSON().toString(batch), batch.encoded)
        self.assertEqual([item for batch in chunks for item in batch.items], items)

    def test_oversized_item_refused(self):
        """An item alone over the limit raises instead of producing an unsendable box."""
        self.assertRaises(ValueError, list, commands.chunk([{"x": "y" * 200}], lambda i: i, limit=100))

    def test_result_output_shortened_to_fit(self):
        """A result with huge, escape-heavy output is cut (keeping the end) to fit one AMP value."""
        from p2pexec.model import TaskResult

        noisy = "\x01" * 30_000 + "THE END"
        result = TaskResult(task_id="t", attempt=1, status="failed", node="b1", stdout=noisy, stderr=noisy)
        encoded = commands.encode_result_within(result)
        wire = json.loads(encoded)
        self.assertLess(len(encoded), 65_535)
        self.assertTrue(wire["stdout"].endswith("THE END"))


class GarbageTests(SynchronousTestCase):
    """Bytes that are not AMP at all."""

    def test_garbage_drops_connection_with_one_line(self):
        """Non-AMP bytes close the connection, logged as one warning, with no traceback."""
        from twisted.internet.testing import StringTransport
        from twisted.logger import capturedLogs

        handler = RecordingHandler(node(name="b1"))
        protocol = PeerProtocol(handler)
        transport = StringTransport()
        protocol.makeConnection(transport)
        with capturedLogs() as events:
            protocol.dataReceived(b"\x00\x05hello\x00\x03abc\x00\x00")
        self.assertTrue(transport.disconnecting)
        warnings = [e for e in events if "not valid AMP" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertIn("NoEmptyBoxes", warnings[0]["error"])
        self.assertEqual([e for e in events if e.get("log_failure")], [])

    def test_http_request_logged(self):
        """An HTTP request (its first bytes read as an over-long AMP key) is logged in one line."""
        from twisted.internet.testing import StringTransport
        from twisted.logger import capturedLogs

        protocol = PeerProtocol(RecordingHandler(node(name="b1")))
        transport = StringTransport()
        protocol.makeConnection(transport)
        with capturedLogs() as events:
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len([e for e in events if "not valid AMP" in e["log_format"]]), 1)


class ClientHandler(RecordingHandler):
    """A L{RecordingHandler} that also answers client commands; SUBMIT_JOB waits for C{submitted}."""

    def __init__(self, info):
        super().__init__(info)
        self.submitted = Deferred()

    def job_status(self, job_id):
        """A summary that only names the job."""
        return {"id": job_id}

    def submit_part(self, protocol, tasks, defaults, upload, final, priority=None):
        """Answer once C{submitted} fires (a journal write that takes its time)."""
        return self.submitted.addCallback(lambda _: {"upload": "", "job": "j1"})


class SilentConnectionTests(SynchronousTestCase):
    """
    Connections this node accepted that never introduce themselves, or
    clients that went quiet, are closed (docs/protocol.rst, "Opening a
    connection" and "Client connections").
    """

    def setUp(self):
        from twisted.logger import globalLogPublisher

        self.clock = Clock()
        self.handler = ClientHandler(node(name="b1", instance="i-b"))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def accepted(self, client=None):
        """An accepting L{PeerProtocol} with the test's clock, connected in memory to C{client}."""
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: PeerProtocol(self.handler, clock=self.clock),
            lambda: client if client is not None else amp.AMP(),
            clock=self.clock,
        )
        return self.server

    def advance(self, seconds):
        """Let C{seconds} pass, then deliver what is pending."""
        self.clock.advance(seconds)
        self.pump.flush()

    def closed_lines(self):
        """The log events that say the node closed a connection."""
        return [e for e in self.events if e.get("log_format", "").startswith("Closed the connection from")]

    def test_silent_connection_closed_at_the_introduction_limit(self):
        """
        A connection that sends nothing is closed 30 seconds after it was
        made, not before, with one warning naming its address and why.
        """
        from twisted.logger import LogLevel

        from p2pexec.peer import INTRODUCTION_TIMEOUT

        server = self.accepted()
        self.assertEqual(INTRODUCTION_TIMEOUT, 30.0)
        self.advance(29.9)
        self.assertFalse(server.closed)
        self.advance(0.1)
        self.assertTrue(server.closed)
        self.assertIn(("lost",), self.handler.calls)
        [line] = self.closed_lines()
        self.assertEqual(line["log_level"], LogLevel.warn)
        self.assertEqual(line["address"], server.address())
        self.assertIn("within 30s of connecting", line["why"])

    def test_half_introduction_closed_at_the_introduction_limit(self):
        """
        A dialler that sends CONNECT_REQUEST and never HANDSHAKE is closed 30
        seconds after connecting, the line naming the node it claimed to be.
        """
        server = self.accepted()
        self.advance(10)
        d = self.client.callRemote(commands.ConnectRequest, cluster="default", name="a1", instance="i-a", version=1)
        self.advance(0)
        self.assertEqual(self.successResultOf(d)["name"], "b1")
        self.advance(19.9)
        self.assertFalse(server.closed)
        self.advance(0.1)
        self.assertTrue(server.closed)
        [line] = self.closed_lines()
        self.assertIn("node a1 did not complete its introduction", line["why"])

    def test_unknown_and_refused_commands_do_not_count_as_an_introduction(self):
        """Commands refused for want of a handshake keep a connection from nothing: it goes at 30 s."""
        server = self.accepted()
        for _ in range(3):
            self.client.callRemote(commands.Heartbeat).addErrback(lambda f: None)
            self.client.callRemoteString(b"NO_SUCH_THING").addErrback(lambda f: None)
            self.advance(10)
        self.assertTrue(server.closed)
        self.assertEqual(len(self.closed_lines()), 1)

    def test_introduced_connection_is_left_to_failure_detection(self):
        """A connection whose handshake completed is not closed by the introduction limit, however quiet."""
        server = self.accepted(PeerProtocol(RecordingHandler(node(name="a1", instance="i-a")), dialled=True))
        d = Deferred.fromCoroutine(self.client.introduce(node(name="a1", instance="i-a")))
        self.advance(0)
        self.successResultOf(d)
        self.advance(1000)
        self.assertFalse(server.closed)
        self.assertEqual(self.closed_lines(), [])

    def test_polling_client_kept_open(self):
        """
        A client that asks JOB_STATUS every half second, as C{p2pexec watch}
        does, keeps its connection for as long as it asks.
        """
        server = self.accepted()
        for _ in range(400):
            d = self.client.callRemote(commands.JobStatus, job="j1")
            self.advance(0)
            self.assertEqual(self.successResultOf(d)["status"], {"id": "j1"})
            self.advance(0.5)
        self.assertFalse(server.closed)
        self.assertTrue(server.client)

    def test_idle_client_closed_after_the_client_limit(self):
        """
        A client that asked once and then went quiet is closed 60 seconds
        after its last answer, with one info line.
        """
        from twisted.logger import LogLevel

        from p2pexec.peer import CLIENT_IDLE_TIMEOUT

        server = self.accepted()
        self.assertEqual(CLIENT_IDLE_TIMEOUT, 60.0)
        self.advance(25)
        self.client.callRemote(commands.JobStatus, job="j1")
        self.advance(0)
        self.advance(59.9)
        self.assertFalse(server.closed)
        self.advance(0.1)
        self.assertTrue(server.closed)
        [line] = self.closed_lines()
        self.assertEqual(line["log_level"], LogLevel.info)
        self.assertIn("the client sent nothing for 60s", line["why"])

    def test_client_waiting_for_an_answer_is_not_cut(self):
        """
        While the node works on a client's command (a SUBMIT_JOB waiting for
        the journal), the client's silence does not count; it does once the
        answer is out.
        """
        server = self.accepted()
        d = self.client.callRemote(commands.SubmitJob, tasks=[], defaults=None, upload="", final=True)
        self.advance(0)
        self.advance(300)
        self.assertFalse(server.closed)
        self.handler.submitted.callback(None)
        self.advance(0)
        self.assertEqual(self.successResultOf(d)["job"], "j1")
        self.advance(59.9)
        self.assertFalse(server.closed)
        self.advance(0.1)
        self.assertTrue(server.closed)


class ProtocolErrorWordingTests(SynchronousTestCase):
    """Protocol errors are logged and answered in words, not as a Python exception's repr."""

    def connected(self):
        """An accepting L{PeerProtocol} on a L{StringTransport}, and the log events it writes."""
        from twisted.internet.testing import StringTransport
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol = PeerProtocol(RecordingHandler(node(name="b1")))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, events

    def test_answer_with_an_unknown_tag(self):
        """
        An answer to a request never sent drops the connection, logged as
        one line that says so in words (not C{KeyError: b'77'}).
        """
        protocol, transport, events = self.connected()
        protocol.dataReceived(amp.AmpBox(_answer=b"77").serialize())
        self.assertTrue(transport.disconnecting)
        [line] = [e for e in events if e.get("log_format", "").startswith("Dropped the connection")]
        self.assertEqual(
            line["error"], "an answer to request '77', which this node never sent or which was answered already"
        )
        self.assertNotIn("KeyError", line["error"])

    def test_error_answer_with_an_unknown_tag(self):
        """An error answer to a request never sent is described the same way."""
        protocol, transport, events = self.connected()
        protocol.dataReceived(amp.AmpBox(_error=b"9", _error_code=b"X", _error_description=b"no").serialize())
        self.assertTrue(transport.disconnecting)
        [line] = [e for e in events if e.get("log_format", "").startswith("Dropped the connection")]
        self.assertIn("an error answer to request '9', which this node never sent", line["error"])

    def test_error_answer_without_its_code(self):
        """
        An error answer to a real request but without C{_error_code} drops the
        connection, and the request fails with it instead of waiting for ever.
        """
        protocol, transport, events = self.connected()
        d = protocol.callRemote(commands.Heartbeat)
        protocol.dataReceived(amp.AmpBox(_error=b"1", _error_description=b"no").serialize())
        self.assertTrue(transport.disconnecting)
        [line] = [e for e in events if e.get("log_format", "").startswith("Dropped the connection")]
        self.assertIn("without its _error_code", line["error"])
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d)

    def test_missing_argument_named(self):
        """A missing argument is refused with BAD_ARGUMENTS naming it, and the connection is kept."""
        protocol, transport, events = self.connected()
        protocol.dataReceived(amp.AmpBox(_command=b"JOB_STATUS", _ask=b"1").serialize())
        self.assertFalse(transport.disconnecting)
        answer = transport.value()
        self.assertIn(b"BAD_ARGUMENTS", answer)
        self.assertIn(b"JOB_STATUS: malformed arguments (the argument 'job' is missing)", answer)


class TracingProtocol(PeerProtocol):
    """A L{PeerProtocol} that records every state its connection machine enters."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.states = [self.connection_state]

    def _fire(self, event, why="", reason=None):
        """Fire as usual; record the state reached (a refusal raises after the state is taken)."""
        try:
            super()._fire(event, why, reason)
        finally:
            if self.connection_state is not self.states[-1]:
                self.states.append(self.connection_state)


class KeyedHandler(RecordingHandler):
    """A L{RecordingHandler} in a cluster with a key."""

    def __init__(self, info):
        from p2pexec.auth import ChallengeResponse

        super().__init__(info)
        self.challenge = ChallengeResponse(bytes(range(32)))


class ConnectionStateTests(SynchronousTestCase):
    """The protocol's C{connection_state} follows the connection machine, on in-memory connections."""

    def test_accepted_and_dialled_with_a_key(self):
        """
        Both sides go opened, authenticating, (challenged,) authenticated,
        introduced, ready; the acceptor then leaving on DISCONNECT_REQUEST
        and, once closed, left (still C{leaving}, which tells the node the
        peer left in order); the dialler closed; each address counted once
        and released once.
        """
        from p2pexec.connection_states import ConnectionState as St

        clock = Clock()
        b = KeyedHandler(node(name="b1", instance="i-b"))
        a = KeyedHandler(node(name="a1", instance="i-a"))
        dialler, acceptor, pump = connectedServerAndClient(
            lambda: TracingProtocol(b, clock=clock), lambda: TracingProtocol(a, dialled=True, clock=clock), clock=clock
        )
        self.assertEqual(acceptor.connection_state, St.AUTHENTICATING)
        d = Deferred.fromCoroutine(dialler.introduce(a.info))
        pump.flush()
        self.successResultOf(d)
        self.assertIs(acceptor.connection_state, St.READY)
        self.assertIs(dialler.connection_state, St.READY)
        outcome = []
        dialler.callRemote(commands.DisconnectRequest, reason="bye").addBoth(outcome.append)
        pump.flush()
        self.assertEqual(outcome, [{}])
        self.assertTrue(acceptor.leaving)
        dialler.transport.loseConnection()
        pump.flush()
        self.assertEqual(
            acceptor.states,
            [
                St.OPENED,
                St.AUTHENTICATING,
                St.CHALLENGED,
                St.AUTHENTICATED,
                St.INTRODUCED,
                St.READY,
                St.LEAVING,
                St.LEFT,
            ],
        )
        self.assertEqual(
            dialler.states, [St.OPENED, St.AUTHENTICATING, St.AUTHENTICATED, St.INTRODUCED, St.READY, St.CLOSED]
        )
        self.assertEqual((a.counted, b.counted), (0, 0))
        self.assertTrue(acceptor.closed and dialler.closed)
        self.assertTrue(acceptor.leaving)
        self.assertNotIn(("disconnect", "bye"), a.calls)
        self.assertIn(("disconnect", "bye"), b.calls)

    def test_client_then_idle(self):
        """A client's first command makes its connection a client's; silence then closes it (closing, closed)."""
        from p2pexec.connection_states import ConnectionState as St

        clock = Clock()
        handler = ClientHandler(node(name="b1", instance="i-b"))
        client, server, pump = connectedServerAndClient(
            lambda: TracingProtocol(handler, clock=clock), amp.AMP, clock=clock
        )
        client.callRemote(commands.JobStatus, job="j1")
        pump.flush()
        self.assertIs(server.connection_state, St.CLIENT)
        clock.advance(60)
        pump.flush()
        self.assertEqual(server.states, [St.OPENED, St.AUTHENTICATED, St.CLIENT, St.CLOSING, St.CLOSED])
        self.assertEqual(handler.counted, 0)

    def test_over_the_limit_is_refused_and_not_released(self):
        """A connection the node refuses to count is aborted (refused, closed) and never released."""
        from twisted.internet.testing import StringTransport

        from p2pexec.connection_states import ConnectionState as St

        handler = RecordingHandler(node(name="b1"))
        handler.connection_opened = lambda protocol: False
        released = []
        handler.connection_released = released.append
        protocol = TracingProtocol(handler)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(protocol.states, [St.OPENED, St.REFUSED, St.CLOSED])
        self.assertEqual(released, [])
        self.assertIn(("lost",), handler.calls)

    def test_dialled_connection_refuses_authenticate(self):
        """
        A dialled connection is never challenged (WIRING divergence 6): an
        AUTHENTICATE from the acceptor is refused with AUTH_FAILED and the
        connection closed.
        """
        clock = Clock()
        handler = KeyedHandler(node(name="a1"))
        acceptor, dialler, pump = connectedServerAndClient(
            lambda: PeerProtocol(handler, dialled=True, clock=clock), amp.AMP, clock=clock
        )
        answers = []
        acceptor.callRemote(commands.Authenticate, nonce=b"\x01" * 32).addBoth(answers.append)
        pump.flush()
        clock.advance(0)
        pump.flush()
        answers[0].trap(commands.AuthFailed)
        self.assertTrue(dialler.closed)

    def test_input_after_a_drop_is_ignored(self):
        """
        Once the node dropped a connection for bytes that are not AMP
        (WIRING divergence 7), a well-formed box that follows in the same
        read is not answered.
        """
        from twisted.internet.testing import StringTransport

        protocol = PeerProtocol(RecordingHandler(node(name="b1")))
        transport = StringTransport()
        protocol.makeConnection(transport)
        box = amp.AmpBox(_command=b"CLUSTER_STATUS", _ask=b"1").serialize()
        protocol.dataReceived(b"\x01\x00" + b"x" * 256 + box)
        self.assertTrue(protocol.closed)
        protocol.dataReceived(box)
        self.assertEqual(transport.value(), b"")
