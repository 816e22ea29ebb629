"""Tests for L{p2pexec.datagram}: the discovery datagram codec."""

import json

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import datagram
from p2pexec.model import NodeInfo

from .test_model import node


def wire(**envelope):
    """A valid HELLO as a dict, with C{envelope} fields replaced."""
    body = {"proto": "p2pexec", "v": 1, "type": "HELLO", "node": node().to_wire()}
    body.update(envelope)
    return body


class CodecTests(SynchronousTestCase):
    """Encoding and decoding."""

    def test_round_trip(self):
        """Both datagram types survive encoding."""
        for kind in (datagram.DISCOVER, datagram.HELLO):
            sent = datagram.Datagram(type=kind, node=node())
            self.assertEqual(datagram.decode(datagram.encode(sent)), sent)

    def test_compact(self):
        """A typical datagram is a few hundred bytes, far under one packet."""
        data = datagram.encode(datagram.Datagram(type="HELLO", node=node()))
        self.assertLess(len(data), 300)

    def test_encode_refuses_oversized(self):
        """A node whose HELLO would not fit is told so, not truncated."""
        big = node(capabilities=tuple(f"{'k' * 60}{i:02d}" for i in range(32)))
        with self.assertRaises(datagram.DatagramError) as caught:
            datagram.encode(datagram.Datagram(type="HELLO", node=big))
        self.assertEqual(caught.exception.reason, "too-large")


class RejectionTests(SynchronousTestCase):
    """Every kind of bad datagram is refused with its reason."""

    def assertReason(self, data, reason):
        """Decoding C{data} fails with C{reason}."""
        with self.assertRaises(datagram.DatagramError) as caught:
            datagram.decode(data)
        self.assertEqual(caught.exception.reason, reason)
        return caught.exception

    def test_too_large(self):
        """Anything over the size limit is refused before parsing."""
        self.assertReason(b"{" + b" " * 2000 + b"}", "too-large")

    def test_not_json(self):
        """Random bytes, invalid UTF-8 and deep nesting are not JSON we accept."""
        self.assertReason(b"\xff\xfe\x00garbage", "not-json")
        self.assertReason(b"hello", "not-json")
        self.assertReason(b"[" * 1100, "not-json")

    def test_not_ours(self):
        """JSON without our marker is someone else's traffic."""
        self.assertReason(b'{"hello": 1}', "not-p2pexec")
        self.assertReason(b"[1, 2]", "not-p2pexec")

    def test_unknown_version(self):
        """A future protocol version is refused, and the message says which."""
        error = self.assertReason(json.dumps(wire(v=99)).encode(), "version")
        self.assertIn("99", error.detail)
        self.assertReason(json.dumps(wire(v=True)).encode(), "version")
        self.assertReason(json.dumps(wire(v=1.0)).encode(), "version")

    def test_bad_type(self):
        """Only DISCOVER and HELLO exist."""
        self.assertReason(json.dumps(wire(type="GOODBYE")).encode(), "bad-type")

    def test_bad_field(self):
        """A bad node field is refused, and the message names the field."""
        body = wire()
        body["node"]["port"] = "10002"
        error = self.assertReason(json.dumps(body).encode(), "bad-field")
        self.assertIn("port", error.detail)
        body = wire()
        del body["node"]
        self.assertReason(json.dumps(body).encode(), "bad-field")

    def test_every_truncation_refused(self):
        """No prefix of a valid datagram decodes, and none raises anything else."""
        data = datagram.encode(datagram.Datagram(type="HELLO", node=node()))
        for length in range(len(data)):
            self.assertRaises(datagram.DatagramError, datagram.decode, data[:length])


class NodeInfoInDatagramTests(SynchronousTestCase):
    """What a datagram carries."""

    def test_carries_everything(self):
        """Name, instance, address, capabilities, slots, cluster and version travel."""
        sent = node(
            name="x9", instance="i-1", host="127.0.0.5", port=4242, capabilities=("x", "y"), slots=7, cluster="lab"
        )
        body = json.loads(datagram.encode(datagram.Datagram(type="DISCOVER", node=sent)))
        self.assertEqual(NodeInfo.from_wire(body["node"]), sent)
        self.assertEqual((body["proto"], body["v"], body["type"]), ("p2pexec", 1, "DISCOVER"))
