"""Tests for L{p2pexec.auth} and the cluster key in the node: sealing, challenge-response, limits."""

import os

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import auth, commands
from p2pexec.peer import MAX_BOX_BYTES, PeerProtocol

from .test_node import Cluster, text

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class SealerTests(SynchronousTestCase):
    """L{auth.DatagramSealer}."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.sealer = auth.DatagramSealer(KEY, self.clock.seconds)

    def test_sealed_datagram_opens_once(self):
        """A sealed datagram opens to its body once; the same bytes again are a replay."""
        sealed = self.sealer.seal(b'{"a":1}')
        self.assertEqual(self.sealer.open(sealed), b'{"a":1}')
        error = self.assertRaises(auth.DatagramError, self.sealer.open, sealed)
        self.assertEqual(error.reason, "replayed")

    def test_refusals_by_reason(self):
        """Unsealed, truncated, altered, wrong-key and out-of-window datagrams are refused, each with its reason."""
        sealed = self.sealer.seal(b'{"a":1}')
        other = auth.DatagramSealer(OTHER_KEY, self.clock.seconds)
        cases = {
            "unsealed": [b'{"a":1}', sealed[:-5], b""],
            "forged": [sealed.replace(b'"a"', b'"b"'), other.seal(b'{"a":1}'), sealed[:-1] + bytes([sealed[-1] ^ 1])],
        }
        for reason, datagrams in cases.items():
            for data in datagrams:
                error = self.assertRaises(auth.DatagramError, self.sealer.open, data)
                self.assertEqual(error.reason, reason, data)
        old = self.sealer.seal(b"{}")
        self.clock.advance(auth.DATAGRAM_WINDOW + 1)
        self.assertEqual(self.assertRaises(auth.DatagramError, self.sealer.open, old).reason, "stale")

    def test_nonces_forgotten_after_the_window(self):
        """Nonces are kept only as long as the window, and a bounded number of them."""
        for _ in range(5):
            self.sealer.open(self.sealer.seal(b"{}"))
        self.clock.advance(auth.DATAGRAM_WINDOW + 1)
        self.sealer.open(self.sealer.seal(b"{}"))
        self.assertEqual(len(self.sealer._seen), 1)
        small = auth.DatagramSealer(KEY, self.clock.seconds, max_nonces=2)
        small.open(small.seal(b"{}"))
        small.open(small.seal(b"{}"))
        self.assertEqual(self.assertRaises(auth.DatagramError, small.open, small.seal(b"{}")).reason, "replayed")


class KeyFileTests(SynchronousTestCase):
    """L{auth.load_key} and L{auth.generate_key}."""

    def write(self, text, mode=0o600):
        """A key file holding C{text}, with C{mode}."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_generated_key_loads(self):
        """A generated key is 64 hex digits, and loads back as 32 bytes."""
        key = auth.generate_key()
        self.assertEqual(len(key), 64)
        self.assertEqual(auth.load_key(self.write(key + "\n")), bytes.fromhex(key))

    def test_refusals(self):
        """A key readable by others, malformed, or missing is refused with a message naming the file."""
        loose = self.write(auth.generate_key(), 0o644)
        error = self.assertRaises(auth.KeyFileError, auth.load_key, loose)
        self.assertIn(f"chmod 600 {loose}", str(error))
        self.assertIn("0644", str(error))
        for bad in ("short", "zz" * 32, ""):
            path = self.write(bad)
            self.assertIn(path, str(self.assertRaises(auth.KeyFileError, auth.load_key, path)))
        self.assertRaises(auth.KeyFileError, auth.load_key, self.mktemp())

    def test_token_depends_on_the_key(self):
        """The HTTP token is derived from the key: the same key gives the same token, another another."""
        self.assertEqual(auth.http_token(KEY), auth.http_token(bytes(KEY)))
        self.assertNotEqual(auth.http_token(KEY), auth.http_token(OTHER_KEY))
        self.assertNotIn(KEY.hex(), auth.http_token(KEY))


class FakeHandler:
    """Just enough of a node for L{PeerProtocol}'s authentication."""

    local_challenge = None
    tls = None

    def __init__(self, key):
        self.challenge = auth.ChallengeResponse(key) if key is not None else None
        self.lost = []

    def connection_opened(self, protocol):
        """Take every connection."""
        return True

    def connection_released(self, protocol):
        """Nothing is counted."""

    def connection_lost(self, protocol, reason):
        """Record the protocol whose connection was lost."""
        self.lost.append(protocol)

    def peers_status(self):
        """One peer, named n."""
        return [{"name": "n"}]


class ChallengeTests(SynchronousTestCase):
    """The mutual challenge-response on an AMP connection."""

    def connect(self, server_key, client_key):
        """A keyed server protocol and a client, connected in memory."""
        clock = Clock()
        server = PeerProtocol(FakeHandler(server_key), clock=clock)
        client = PeerProtocol(FakeHandler(client_key), dialled=True, clock=clock)
        client, server, pump = connectedServerAndClient(lambda: server, lambda: client)
        return server, client, pump, clock

    def test_same_key_authenticates_both_ways(self):
        """Two sides with the same key each prove it; the connection then takes commands."""
        server, client, pump, clock = self.connect(KEY, KEY)
        d = _done(client.authenticate())
        pump.flush()
        self.successResultOf(d)
        self.assertTrue(server.authenticated and client.authenticated)

    def test_wrong_key_is_refused_and_closed(self):
        """A dialler with another key is refused: one log line naming the address, and the connection closed."""
        server, client, pump, clock = self.connect(KEY, OTHER_KEY)
        with capturedLogs() as events:
            d = _done(client.authenticate())
            pump.flush()
            clock.advance(0)
            pump.flush()
        self.failureResultOf(d)
        self.assertFalse(server.authenticated)
        self.assertTrue(server.closed or client.closed)
        self.assertTrue(any("does not hold the cluster key" in text(e) for e in events))

    def test_commands_before_authentication_are_refused(self):
        """Any other command before AUTHENTICATE gets AUTH_REQUIRED, and the connection is closed."""
        clock = Clock()
        client, server, pump = connectedServerAndClient(lambda: PeerProtocol(FakeHandler(KEY), clock=clock), amp.AMP)
        answers = []
        client.callRemote(commands.ClusterStatus).addBoth(answers.append)
        pump.flush()
        clock.advance(0)
        pump.flush()
        self.assertEqual(len(answers), 1)
        answers[0].trap(commands.AuthRequired)
        self.assertTrue(server.closed)

    def test_unauthenticated_connection_closed_after_timeout(self):
        """A keyed node closes a connection that has not authenticated within the time limit."""
        server, client, pump, clock = self.connect(KEY, None)
        clock.advance(9.9)
        pump.flush()
        self.assertFalse(server.closed)
        clock.advance(0.2)
        clock.advance(0)
        pump.flush()
        self.assertTrue(server.closed)


class BoxLimitTests(SynchronousTestCase):
    """A box bigger than the limit drops the connection (each value alone is within AMP's own limit)."""

    def test_huge_box_dropped(self):
        """Many 60 KiB values in one box, past L{MAX_BOX_BYTES}: the connection is dropped with one line."""
        client, server, pump = connectedServerAndClient(
            lambda: PeerProtocol(FakeHandler(None), clock=Clock()), lambda: amp.AMP()
        )
        value = b"x" * 60_000
        box = amp.AmpBox({b"_command": b"CLUSTER_STATUS", b"_ask": b"1"})
        for number in range(MAX_BOX_BYTES // 60_000 + 2):
            box[b"k%d" % number] = value
        with capturedLogs() as events:
            client.transport.write(box.serialize())
            pump.flush()
        self.assertTrue(server.closed)
        self.assertTrue(any("AMP box of over" in text(e) for e in events))


class KeyedClusterTests(SynchronousTestCase):
    """Nodes with the cluster key, and nodes without it, on one in-memory network."""

    def test_keyed_cluster_forms_and_outsiders_stay_out(self):
        """Nodes with the key meet and run the job; a node with another key and one with none never join."""
        cluster = Cluster()
        from p2pexec.model import parse_instructions

        tasks = tuple(parse_instructions(["a1", "b1", "c1"]))
        with capturedLogs():
            cluster.add("a1", address="127.0.0.1", port=5001, key=KEY, tasks=tasks)
            cluster.add("b1", address="127.0.0.2", port=5002, key=KEY)
            cluster.add("c1", address="127.0.0.3", port=5003, key=OTHER_KEY)
            cluster.add("c2", address="127.0.0.4", port=5004, capabilities=frozenset({"c"}))
            cluster.network.run(10.0)
        a1 = cluster.nodes["a1"]
        self.assertEqual({record.info.name for record in a1.peers}, {"b1"})
        job = a1.master.jobs[a1.startup.job_id]
        self.assertEqual(job.succeeded, 2)
        self.assertIn("c", a1.master.waiting_kinds(), "no node with the key runs kind c")
        self.assertGreater(a1.discovery.rejected.get("forged", 0), 0)
        self.assertGreater(a1.discovery.rejected.get("unsealed", 0), 0)
        self.assertEqual(cluster.runners["c1"].runs + cluster.runners["c2"].runs, [])


def _done(coroutine):
    """A Deferred of a coroutine."""
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


LOCAL_TOKEN = bytes(range(2, 34))


class LocalTokenHandler(FakeHandler):
    """A node without a cluster key but with a local token; submitting records the tasks."""

    def __init__(self):
        super().__init__(None)
        self.local_challenge = auth.ChallengeResponse(LOCAL_TOKEN)
        self.submitted = []

    def submit_part(self, protocol, tasks, defaults, upload, final, priority=None):
        """Record the tasks; answer as a node does."""
        self.submitted.append(tasks)
        return {"upload": "", "job": "n-1"}


class LocalTokenAmpTests(SynchronousTestCase):
    """Without a key, SUBMIT_JOB needs the node's local token, proved with AUTHENTICATE; reading does not."""

    def connect(self):
        """A keyless server with a local token and a plain AMP client, connected in memory."""
        clock = Clock()
        handler = LocalTokenHandler()
        client, server, pump = connectedServerAndClient(lambda: PeerProtocol(handler, clock=clock), amp.AMP)
        return handler, server, client, pump, clock

    def submit(self, client, pump):
        """Send one SUBMIT_JOB; its outcome (an answer, or a Failure)."""
        answers = []
        client.callRemote(commands.SubmitJob, tasks=[{"id": "a1"}], defaults={}, upload="", final=True).addBoth(
            answers.append
        )
        pump.flush()
        return answers[0]

    def test_submit_without_the_token_refused_connection_kept(self):
        """A client that did not prove the token gets AUTH_REQUIRED for SUBMIT_JOB, one log line, and keeps its connection for reading."""
        handler, server, client, pump, clock = self.connect()
        with capturedLogs() as events:
            answer = self.submit(client, pump)
        answer.trap(commands.AuthRequired)
        self.assertIn("local token", answer.getErrorMessage())
        self.assertEqual(handler.submitted, [])
        self.assertTrue(any("Refused SUBMIT_JOB from a client at " in text(e) for e in events))
        status = []
        client.callRemote(commands.ClusterStatus).addBoth(status.append)
        pump.flush()
        self.assertEqual(status[0]["node"], {"name": "n"})
        self.assertFalse(server.closed)

    def test_submit_after_proving_the_token(self):
        """A client that proves the local token (the p2pexec client's challenge-response) may submit."""
        handler, server, client, pump, clock = self.connect()
        from p2pexec.peer import authenticate

        d = _done(authenticate(client, auth.ChallengeResponse(LOCAL_TOKEN)))
        pump.flush()
        self.successResultOf(d)
        self.assertTrue(server.owner)
        self.assertEqual(self.submit(client, pump), {"upload": "", "job": "n-1"})
        self.assertEqual(handler.submitted, [[{"id": "a1"}]])

    def test_wrong_token_refused(self):
        """A client that sends a proof made with another token gets AUTH_FAILED, is not the owner, and cannot submit."""
        handler, server, client, pump, clock = self.connect()
        other = auth.ChallengeResponse(OTHER_KEY)
        nonce = other.nonce()
        answers = []
        client.callRemote(commands.Authenticate, nonce=nonce).addBoth(answers.append)
        pump.flush()
        proof = other.proof("dialler", nonce, answers[0]["nonce"])
        client.callRemote(commands.AuthProof, proof=proof).addBoth(answers.append)
        pump.flush()
        answers[1].trap(commands.AuthFailed)
        self.assertFalse(server.owner)
        self.submit(client, pump)
        self.assertEqual(handler.submitted, [])
