"""Tests for L{p2pexec.membership}: the peer table."""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.membership import Change, PeerState, PeerTable

from .test_model import node


class PeerTableTests(SynchronousTestCase):
    """L{PeerTable}."""

    def setUp(self):
        self.table = PeerTable("a1")

    def test_new_then_nothing(self):
        """A peer is new once; hearing it again changes nothing but its time."""
        self.assertEqual(self.table.observe(node(name="b1"), 10.0), Change.NEW)
        self.assertEqual(self.table.observe(node(name="b1"), 12.0), Change.NOTHING)
        self.assertEqual(self.table.get("b1").last_heard, 12.0)

    def test_self_ignored(self):
        """The table never holds its own node."""
        self.assertEqual(self.table.observe(node(name="a1"), 1.0), Change.NOTHING)
        self.assertEqual(len(self.table), 0)

    def test_older_evidence_never_wins(self):
        """Second-hand news older than what is known does not move the time back."""
        self.table.observe(node(name="b1"), 10.0)
        self.table.observe(node(name="b1"), 4.0)
        self.assertEqual(self.table.get("b1").last_heard, 10.0)

    def test_restart_needs_newer_evidence(self):
        """A new instance replaces the known one only when heard of more recently."""
        self.table.observe(node(name="b1", instance="old"), 10.0)
        self.assertEqual(self.table.observe(node(name="b1", instance="new"), 9.0), Change.NOTHING)
        self.assertEqual(self.table.observe(node(name="b1", instance="new"), 11.0), Change.RESTARTED)
        self.assertEqual(self.table.get("b1").info.instance, "new")

    def test_connected_instance_is_not_replaced(self):
        """While a peer is connected, another instance of its name is a conflict."""
        self.table.connected(node(name="b1", instance="live"), object(), 10.0)
        self.assertEqual(self.table.observe(node(name="b1", instance="other"), 20.0), Change.CONFLICT)
        self.assertEqual(self.table.get("b1").info.instance, "live")

    def test_shareable_ages(self):
        """Shared peers carry their age; connected ones are fresh; old and departed ones are not shared."""
        self.table.observe(node(name="b1"), 90.0)
        self.table.connected(node(name="c1"), object(), 50.0)
        self.table.observe(node(name="d1"), 10.0)
        self.table.observe(node(name="e1"), 95.0)
        self.table.left("e1")
        shared = {info.name: age for info, age in self.table.shareable(now=100.0, max_age=35.0)}
        self.assertEqual(shared, {"b1": 10.0, "c1": 0.0})

    def test_expiry(self):
        """Unconnected peers not heard of in time expire; connected ones never do."""
        self.table.observe(node(name="b1"), 0.0)
        self.table.connected(node(name="c1"), object(), 0.0)
        self.assertEqual(self.table.expired(now=100.0, after=35.0), ["b1"])

    def test_disconnect_only_current_connection(self):
        """Losing an old connection does not disconnect the peer's current one."""
        old, new = object(), object()
        self.table.connected(node(name="b1"), old, 1.0)
        self.table.connected(node(name="b1"), new, 2.0)
        self.assertFalse(self.table.disconnected("b1", old, 3.0))
        self.assertEqual(self.table.get("b1").state, PeerState.CONNECTED)
        self.assertTrue(self.table.disconnected("b1", new, 3.0))
        self.assertEqual(self.table.get("b1").state, PeerState.KNOWN)
