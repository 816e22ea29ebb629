"""Tests for L{p2pexec.web}: request bodies are judged before they are read."""

from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import web
from p2pexec.auth import http_token

KEY = b"k" * 32


class FakeNode:
    """Just what the jobs endpoint reads of a node; submitting records the tasks."""

    def __init__(self, key):
        self.config = SimpleNamespace(key=key, web_public=False)
        self.info = SimpleNamespace(name="a1")
        self.stopping = False
        self.submitted = []

    def jobs_status(self):
        """No jobs."""
        return []

    def submit(self, tasks, defaults=None, label=""):
        """Record the tasks; return a job ID at once."""
        from twisted.internet.defer import succeed

        self.submitted.append(tasks)
        return succeed("a1-0001-1")


class BodyCheckTests(SynchronousTestCase):
    """L{web._BodyCheckingRequest}."""

    def connect(self, key):
        """An HTTP connection to a site around a fake node with C{key}; return the node, protocol and transport."""
        node = FakeNode(key)
        api = web._Api()
        api.putChild(b"jobs", web.JobsResource(node))
        site = web._QuietSite(web._Root({b"api": api}), requestFactory=web._BodyCheckingRequest)
        site.node_key = key
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return node, protocol, transport

    def test_huge_body_without_token_refused_on_its_headers(self):
        """
        A 100 GB Content-Length is answered 413 as soon as the headers arrive,
        and the connection closed: nothing of the body is kept.
        """
        node, protocol, transport = self.connect(KEY)
        protocol.dataReceived(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n" + b"x" * 100_000
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(node.submitted, [])

    def test_body_without_token_refused_before_it_is_read(self):
        """In a cluster with a key, a body sent without the token is answered 401 on its headers."""
        node, protocol, transport = self.connect(KEY)
        protocol.dataReceived(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:80])
        self.assertIn(b'WWW-Authenticate: Bearer realm="p2pexec"', answer)
        self.assertIn(b'{"error": "this node\'s cluster has a key', answer)
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_over_the_limit_refused_as_it_arrives(self):
        """A chunked body is counted as it arrives, and refused (413) once over the limit, not spooled whole."""
        self.patch(web, "MAX_BODY_BYTES", 1000)
        node, protocol, transport = self.connect(None)
        protocol.dataReceived(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            protocol.dataReceived(b"%x\r\n%s\r\n" % (600, b"x" * 600))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(node.submitted, [])

    def test_body_with_the_token_is_read_and_submitted(self):
        """With the token, a job body is read and submitted as usual (201)."""
        node, protocol, transport = self.connect(KEY)
        body = b'{"task": [{"id": "a1"}]}'
        protocol.dataReceived(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (http_token(KEY).encode("ascii"), len(body), body)
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 201 "), transport.value()[:200])
        self.assertEqual(len(node.submitted), 1)

    def test_public_get_with_an_empty_chunked_body_is_served(self):
        """Under --web-public, a GET with an empty chunked body is still served: no body, no token needed."""
        node, protocol, transport = self.connect(KEY)
        node.config.web_public = True
        protocol.dataReceived(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])

    def test_no_100_continue_after_a_refusal(self):
        """A refused body announced with Expect: 100-continue gets its refusal, never a 100 Continue after it."""
        node, protocol, transport = self.connect(KEY)
        protocol.dataReceived(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:80])
        self.assertNotIn(b"100 Continue", answer)
