"""Tests for L{p2pexec.connections}: the tie-break and reconnecting links."""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.connections import Dialer, dials
from p2pexec.peer import PeerProtocol
from p2pexec.testing.network import FakeNetwork

from .test_model import node
from .test_peer import RecordingHandler


class TieBreakTests(SynchronousTestCase):
    """Who dials whom."""

    def test_lower_name_dials(self):
        """Exactly one of two nodes dials, the one whose name sorts first."""
        self.assertTrue(dials("a1", "b1"))
        self.assertFalse(dials("b1", "a1"))
        self.assertFalse(dials("a1", "a1"))


class DialerTests(SynchronousTestCase):
    """L{Dialer} against a listening peer on an in-memory network."""

    def setUp(self):
        self.network = FakeNetwork()
        self.peer = node(name="b1", instance="i-b", host="127.0.0.1", port=2002)
        self.server_handler = RecordingHandler(self.peer)
        self.network.listenTCP(
            2002, Factory.forProtocol(lambda: PeerProtocol(self.server_handler)), interface="127.0.0.1"
        )
        self.me = node(name="a1", instance="i-a")
        self.introductions = []
        self.fail_with = None

    async def introduce(self, protocol, info):
        """Introduce over the real protocol, or fail as the test says."""
        self.introductions.append(info.name if info is not None else "seed")
        if self.fail_with is not None:
            raise self.fail_with
        return await protocol.introduce(self.me, expected=info.name if info is not None else None)

    def dialer(self):
        """A dialer whose links use this test's introduction."""
        return Dialer(
            self.network,
            make_protocol=lambda: PeerProtocol(RecordingHandler(self.me), dialled=True),
            introduce=self.introduce,
        )

    def open_connections(self):
        """How many in-memory connections are still open."""
        return len([p for p in self.network.pumps if not p.clientIO.disconnected])

    def test_connects_and_introduces(self):
        """A link connects once and completes the handshake."""
        dialer = self.dialer()
        dialer.ensure(self.peer)
        self.network.run(1.0)
        self.assertIn(("ready", "a1"), self.server_handler.calls)
        self.assertEqual(self.open_connections(), 1)
        dialer.ensure(self.peer)
        self.network.run(1.0)
        self.assertEqual(self.introductions, ["b1"], "ensure() on a live link does nothing")

    def test_failed_introduction_closes_and_backs_off(self):
        """A failing introduction closes its connection, is logged once with its reason, and retries with growing delays."""
        self.fail_with = ValueError("peer spoke nonsense")
        dialer = self.dialer()
        with capturedLogs() as events:
            dialer.ensure(self.peer)
            self.network.run(10.0)
        self.assertEqual(self.open_connections(), 0)
        attempts = len(self.introductions)
        self.assertGreaterEqual(attempts, 3)
        self.assertLessEqual(attempts, 7, "retries back off")
        warnings = [e for e in events if "failed" in e.get("log_format", "") and e.get("log_level").name == "warn"]
        self.assertIn("peer spoke nonsense", warnings[0]["why"])
        self.assertEqual([e for e in events if e.get("log_failure")], [], "no tracebacks")

    def test_fatal_refusal_stops_dialling_that_instance(self):
        """A peer of another cluster is not dialled again, until it comes back as a new instance."""
        self.server_handler.refuse_connect = commands.ClusterMismatch("other cluster")
        dialer = self.dialer()
        dialer.ensure(self.peer)
        self.network.run(30.0)
        self.assertEqual(len(self.introductions), 1)
        self.assertNotIn("b1", dialer)
        dialer.ensure(self.peer)
        self.network.run(1.0)
        self.assertEqual(len(self.introductions), 1)
        self.server_handler.refuse_connect = None
        dialer.ensure(node(name="b1", instance="i-b-restarted", host="127.0.0.1", port=2002))
        self.network.run(1.0)
        self.assertEqual(len(self.introductions), 2)

    def test_reconnects_after_loss(self):
        """A lost connection is dialled again, and counted as a reconnect."""
        dialer = self.dialer()
        dialer.ensure(self.peer)
        self.network.run(1.0)
        self.network.pumps[0].serverIO.loseConnection()
        self.network.run(2.0)
        self.assertEqual(self.open_connections(), 1)
        self.assertEqual(dialer.reconnects, 1)

    def test_stop_closes(self):
        """Stopping the dialer closes its connections and schedules nothing more."""
        dialer = self.dialer()
        dialer.ensure(self.peer)
        self.network.run(1.0)
        stopped = dialer.stop_all()
        self.network.run(1.0)
        self.successResultOf(stopped)
        self.assertEqual(self.open_connections(), 0)
        self.network.run(60.0)
        self.assertEqual(len(self.introductions), 1)

    def test_stop_while_connecting(self):
        """Stopping before the connection completes cancels the attempt cleanly."""
        dialer = self.dialer()
        dialer.ensure(self.peer)
        stopped = dialer.stop("b1")
        self.network.run(5.0)
        self.assertIsInstance(stopped, Deferred)
        self.successResultOf(stopped)
        self.assertEqual(self.introductions, [])


class HoldAndSeedTests(DialerTests):
    """Leaving nodes stop dialling; seeds are retried even after a refusal."""

    def test_hold_keeps_connection_but_stops_redialling(self):
        """After hold(), a live connection stays until closed, and nothing is dialled again."""
        dialer = self.dialer()
        dialer.ensure(self.peer)
        self.network.run(1.0)
        dialer.hold()
        self.assertEqual(self.open_connections(), 1)
        self.network.pumps[0].serverIO.loseConnection()
        self.network.run(10.0)
        self.assertEqual(len(self.introductions), 1)
        dialer.ensure(node(name="c1", instance="i-c", host="127.0.0.1", port=2003))
        self.network.run(1.0)
        self.assertEqual(len(self.introductions), 1)

    def test_seed_retried_after_fatal_refusal(self):
        """A seed that refuses us for good is still tried again, slowly (it may be fixed)."""
        self.server_handler.refuse_connect = commands.ClusterMismatch("other cluster")
        dialer = self.dialer()
        dialer.ensure_seed("127.0.0.1", 2002, is_connected=lambda name: False)
        self.network.run(5.0)
        self.assertEqual(len(self.introductions), 1)
        self.server_handler.refuse_connect = None
        self.network.run(40.0)
        self.assertEqual(len(self.introductions), 2)
        self.assertIn(("ready", "a1"), self.server_handler.calls)


class LinkStateTests(DialerTests):
    """A L{PeerLink}'s state is its link machine's (L{p2pexec.link_states})."""

    def test_states_through_a_life(self):
        """Connecting, connected, waiting after a loss, held, then stopped."""
        from p2pexec.link_states import LinkState

        dialer = self.dialer()
        dialer.ensure(self.peer)
        link = dialer._links["b1"]
        self.assertIs(link.state, LinkState.CONNECTING)
        self.network.run(1.0)
        self.assertIs(link.state, LinkState.CONNECTED)
        self.network.pumps[0].serverIO.loseConnection()
        self.network.run(0.01)
        self.assertIs(link.state, LinkState.WAITING)
        dialer.hold()
        self.assertIs(link.state, LinkState.HELD)
        self.successResultOf(dialer.stop("b1"))
        self.assertIs(link.state, LinkState.STOPPED)

    def test_held_seed_refusal_arms_no_retry(self):
        """A seed refusing a link held meanwhile (the node leaves) logs the refusal and schedules nothing."""
        from p2pexec.link_states import LinkState

        answer = Deferred()

        async def introduce(protocol, info):
            self.introductions.append("seed")
            await answer

        self.introduce = introduce
        dialer = self.dialer()
        dialer.ensure_seed("127.0.0.1", 2002, is_connected=lambda name: False)
        link = dialer._links["seed 127.0.0.1:2002"]
        self.network.run_until(lambda: link.state is LinkState.INTRODUCING, limit=5.0)
        dialer.hold()
        with capturedLogs() as events:
            answer.errback(commands.ClusterMismatch("other cluster"))
            self.network.run(5.0)
        self.assertIs(link.state, LinkState.HELD)
        self.assertEqual(self.open_connections(), 0)
        self.assertTrue(any("this node is leaving" in e["log_format"].format(**e) for e in events if "error" in e))
        self.network.run(60.0)
        self.assertEqual(len(self.introductions), 1)
