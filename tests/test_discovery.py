"""Tests for L{p2pexec.discovery}: DISCOVER/HELLO timing and filtering."""

import json

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import datagram
from p2pexec.discovery import DiscoveryProtocol
from p2pexec.testing.network import FakeNetwork

from .test_model import node

GROUP = ("239.255.1.2", 11111)


class Harness:
    """One discovery protocol on a fake network, recording the peers it reports."""

    def __init__(self, network, name="a1", cluster="default", instance="i-a1"):
        self.info = node(name=name, instance=instance, cluster=cluster, capabilities=(name[0],))
        self.peers = []
        self.protocol = DiscoveryProtocol(
            lambda: self.info,
            GROUP,
            "127.0.0.1",
            network,
            on_peer=self.peers.append,
            hello_interval=10.0,
            discover_max_interval=60.0,
            answer_delay=0.25,
            random_fraction=lambda: 0.5,
        )
        self.port = network.listenMulticast(GROUP[1], self.protocol, listenMultiple=True)

    def sent_types(self):
        """The types of every datagram this protocol sent, in order."""
        return [json.loads(data)["type"] for data, _ in self.port.sent]


class TimingTests(SynchronousTestCase):
    """When datagrams go out."""

    def setUp(self):
        self.network = FakeNetwork()

    def test_joins_group_on_interface(self):
        """The protocol joins the group and sends on the configured interface."""
        harness = Harness(self.network)
        self.assertEqual(harness.port.groups, {GROUP[0]})
        self.assertEqual(harness.port.outgoing, "127.0.0.1")
        self.assertEqual(harness.port.ttl, 1)

    def test_discover_at_start_then_backoff(self):
        """DISCOVER goes out at once, then after 1 s, 2 s, 4 s ... (jitter fixed at 0)."""
        harness = Harness(self.network)
        self.assertEqual(harness.sent_types(), ["DISCOVER"])
        times = []
        for _ in range(60 * 4):
            before = len([t for t in harness.sent_types() if t == "DISCOVER"])
            self.network.advance(0.25)
            if len([t for t in harness.sent_types() if t == "DISCOVER"]) > before:
                times.append(round(self.network.seconds(), 2))
            if len(times) == 5:
                break
        gaps = [round(b - a, 2) for a, b in zip([0.0] + times, times)]
        self.assertEqual(gaps, [1.0, 2.0, 4.0, 8.0, 16.0])

    def test_discover_backoff_is_capped(self):
        """After a long while DISCOVER still goes out, at most every 60 s."""
        harness = Harness(self.network)
        self.network.pump_once()
        for _ in range(400):
            self.network.advance(1.0)
        count_before = harness.sent_types().count("DISCOVER")
        for _ in range(120):
            self.network.advance(1.0)
        self.assertEqual(harness.sent_types().count("DISCOVER") - count_before, 2)

    def test_periodic_hello(self):
        """A HELLO announcement goes out every hello interval."""
        harness = Harness(self.network)
        for _ in range(305):
            self.network.advance(0.1)
        self.assertEqual(harness.sent_types().count("HELLO"), 3)

    def test_hello_answers_discover_once_per_burst(self):
        """A burst of DISCOVERs from others is answered by one HELLO, after a short delay."""
        listener = Harness(self.network, name="b1", instance="i-b1")
        for name in ("c1", "d1", "e1"):
            Harness(self.network, name=name, instance="i-" + name)
        self.network.advance(0)
        self.assertEqual(listener.sent_types(), ["DISCOVER"])
        self.network.advance(0.125)
        self.assertEqual(listener.sent_types(), ["DISCOVER", "HELLO"])
        self.network.advance(0.5)
        self.assertEqual(listener.sent_types(), ["DISCOVER", "HELLO"])

    def test_stop_cancels_everything(self):
        """A stopped protocol leaves no timer behind."""
        harness = Harness(self.network)
        self.network.advance(0)
        harness.port.stopListening()
        self.assertEqual(self.network.getDelayedCalls(), [])


class FilteringTests(SynchronousTestCase):
    """What is passed on as a peer and what is dropped."""

    def setUp(self):
        self.network = FakeNetwork()

    def test_peers_reported(self):
        """Two nodes each report the other, and never themselves."""
        a = Harness(self.network, name="a1", instance="i-a")
        b = Harness(self.network, name="b1", instance="i-b")
        self.network.advance(0)
        self.assertEqual([p.name for p in a.peers], ["b1"])
        self.assertEqual(b.peers, [], "a1's DISCOVER went out before b1 listened")
        self.network.advance(0.25)
        self.assertEqual([p.name for p in b.peers], ["a1"])

    def test_same_name_other_instance_reported(self):
        """A restarted node of the same name (new instance) is not mistaken for self."""
        a = Harness(self.network, name="a1", instance="i-old")
        Harness(self.network, name="a1", instance="i-new")
        self.network.advance(0)
        self.assertEqual([p.instance for p in a.peers], ["i-new"])

    def test_foreign_cluster_ignored(self):
        """A node of another cluster is never reported, and that is logged once."""
        with capturedLogs() as events:
            a = Harness(self.network, name="a1", cluster="prod")
            Harness(self.network, name="b1", cluster="dev")
            self.network.advance(0)
            for _ in range(3):
                self.network.advance(10)
        self.assertEqual(a.peers, [])
        self.assertEqual(a.protocol.rejected.get("foreign-cluster", 0) > 1, True)
        warnings = [e for e in events if e.get("reason") == "foreign-cluster" and e.get("mine") == "prod"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["cluster"], "dev")

    def test_garbage_dropped_and_counted(self):
        """Garbage is dropped with a reason, rate-limited in the log, and the node keeps working."""
        with capturedLogs() as events:
            a = Harness(self.network, name="a1")
            for data in [b"\x00\x01", b"{}", json.dumps({"proto": "p2pexec", "v": 7}).encode()] * 5:
                self.network.inject_datagram(data, GROUP, ("127.0.0.1", 5555))
            self.network.advance(0)
            Harness(self.network, name="b1", instance="i-b")
            self.network.advance(0)
        self.assertEqual(a.protocol.rejected, {"not-json": 5, "not-p2pexec": 5, "version": 5})
        self.assertEqual([p.name for p in a.peers], ["b1"])
        dropped = [e for e in events if e.get("log_format", "").startswith("Dropped a datagram")]
        self.assertEqual(sorted(e["reason"] for e in dropped), ["not-json", "not-p2pexec", "version"])
        self.assertTrue(all(e["source"] == "127.0.0.1:5555" for e in dropped))

    def test_drop_token_in_the_log_line(self):
        """
        The text of each drop line ends with its reason's token, as
        docs/protocol.rst says (and the token is the C{reason} field too).
        """
        from twisted.logger import formatEvent

        with capturedLogs() as events:
            a = Harness(self.network, name="a1", cluster="prod")
            self.network.inject_datagram(b"\x00\x01", GROUP, ("127.0.0.1", 5555))
            Harness(self.network, name="b1", cluster="dev")
            self.network.advance(0)
        self.assertEqual(a.peers, [])
        texts = {e["reason"]: formatEvent(e) for e in events if e.get("reason") in ("not-json", "foreign-cluster")}
        self.assertEqual(
            texts["not-json"],
            "Dropped a datagram from 127.0.0.1:5555: the datagram is not a UTF-8 JSON object [not-json]",
        )
        self.assertTrue(texts["foreign-cluster"].endswith("this node is in cluster 'prod' [foreign-cluster]"))

    def test_counts(self):
        """Sent and received datagrams are counted; once answered, DISCOVER is not repeated."""
        a = Harness(self.network, name="a1")
        Harness(self.network, name="b1", instance="i-b")
        self.network.run(1.25, step=0.05)
        # b1's DISCOVER reached a1, which answered; neither repeats DISCOVER.
        self.assertEqual(a.protocol.received, 1)
        self.assertEqual(a.protocol.sent[datagram.DISCOVER], 1)
        self.assertEqual(a.protocol.sent[datagram.HELLO], 1)

    def test_known_senders_not_answered(self):
        """A DISCOVER from a node already heard from is not answered; one from a restarted node is."""
        a = Harness(self.network, name="a1")
        b = Harness(self.network, name="b1", instance="i-b")
        self.network.run(1.0, step=0.05)
        self.assertEqual(a.sent_types(), ["DISCOVER", "HELLO"])
        b.protocol._send(datagram.DISCOVER)
        self.network.run(1.0, step=0.05)
        self.assertEqual(a.sent_types(), ["DISCOVER", "HELLO"])
        Harness(self.network, name="b1", instance="i-b-restarted")
        self.network.run(1.0, step=0.05)
        self.assertEqual(a.sent_types(), ["DISCOVER", "HELLO", "HELLO"])
