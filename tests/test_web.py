"""Tests for L{p2pexec.web} and L{p2pexec.webguard}: requests are judged before any resource, and bodies before they are read."""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands, status, web, webguard
from p2pexec.auth import http_token
from p2pexec.config import NodeConfig
from p2pexec.interfaces import INodeViews, IWebMaster, IWebNode
from p2pexec.model import NodeInfo

KEY = b"k" * 32


class FakeViews:
    """An L{INodeViews} of a node with no peers and no jobs."""

    def my_load(self):
        """Nothing running, no links."""
        return status.Load(running=0, queued=0)

    def peers_status(self):
        """No peers."""
        return []

    def topology_status(self):
        """No nodes."""
        return {"nodes": [], "links": []}

    def jobs_status(self):
        """No jobs."""
        return []

    def job_status(self, job_id):
        """No job is known."""
        raise commands.UnknownJob(f"node a1 is not the master of job {job_id!r}")

    def job_tasks(self, job_id, **filters):
        """No job is known."""
        return self.job_status(job_id)

    def node_status(self):
        """Nothing running."""
        return {"running": 0, "queued": 0, "links": []}

    def problem(self):
        """A healthy node: nothing wrong."""
        return None

    def counters(self):
        """No figures."""
        return {}

    def datagrams_rejected(self):
        """No datagram dropped."""
        return {}

    def on_result(self, listener):
        """No result ever comes."""


class FakeMaster:
    """An L{IWebMaster} with no jobs."""

    def unfinished(self):
        """No running job."""
        return []

    def cancel(self, job_id, by):
        """No job to cancel."""
        raise KeyError(job_id)


class FakeNode:
    """An L{IWebNode}: no peers, no jobs; submitting records the tasks."""

    def __init__(self, key, local_token=None, web_public=False):
        self.config = NodeConfig(name="a1", key=key, local_token=local_token, web_public=web_public)
        self.info = NodeInfo(name="a1", instance="i1", host="127.0.0.1", port=10001, capabilities=(), slots=1)
        self.stopping = False
        self.views = FakeViews()
        self.master = FakeMaster()
        self.submitted = []

    def submit(self, tasks, defaults=None, label="submitted job", job=None):
        """Record the tasks; return a job ID at once."""
        self.submitted.append(tasks)
        return succeed("a1-0001-1")


def protocol_members(protocol):
    """The names a class must have to provide C{protocol}: its methods and properties."""
    return {name for name in vars(protocol) if not name.startswith("_")}


class FakeNodeTests(SynchronousTestCase):
    """The fakes of these tests are honest: they have everything the protocols they stand for declare."""

    def test_fakes_provide_the_protocols(self):
        """FakeNode has every member of IWebNode, its views every one of INodeViews, its master of IWebMaster."""
        node = FakeNode(None)
        for fake, protocol in ((node, IWebNode), (node.views, INodeViews), (node.master, IWebMaster)):
            missing = {name for name in protocol_members(protocol) if not hasattr(fake, name)}
            self.assertEqual(missing, set(), protocol.__name__)


def guarded_site(node, resources, names=None):
    """A L{webguard.GuardedSite} around C{resources} (name to resource), judged by C{node}'s configuration."""
    return webguard.GuardedSite(web._Root(resources), node.config, names)


class BodyCheckTests(SynchronousTestCase):
    """L{webguard.GuardedRequest}."""

    def connect(self, key, web_public=False):
        """An HTTP connection to a site around a fake node with C{key}; return the node, protocol and transport."""
        node = FakeNode(key, web_public=web_public)
        api = web._Api()
        api.putChild(b"jobs", web.JobsResource(node))
        site = guarded_site(node, {b"api": api})
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
        self.patch(webguard, "MAX_BODY_BYTES", 1000)
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
        node, protocol, transport = self.connect(KEY, web_public=True)
        protocol.dataReceived(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])

    def test_no_100_continue_after_a_refusal(self):
        """A refused body announced with Expect: 100-continue gets its refusal, never a 100 Continue after it."""
        node, protocol, transport = self.connect(KEY)
        protocol.dataReceived(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:80])
        self.assertNotIn(b"100 Continue", answer)


def request_bytes(method, path="/api/jobs", headers=(), body=b""):
    """One HTTP/1.1 request as sent on the wire (a Content-Length when there is a body or it is a POST)."""
    lines = [b"%s %s HTTP/1.1" % (method, path.encode("ascii"))]
    lines += [b"%s: %s" % (name, value) for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


JOB = b'{"task": [{"id": "a1", "command": ["touch", "/tmp/p2pexec-pwned"]}]}'
JSON = (b"Content-Type", b"application/json")
OWN_HOST = (b"Host", b"127.0.0.1:8080")


class SiteMixin:
    """A site around a fake node, spoken to over StringTransport."""

    def connect(self, key=None, local_token=None):
        """An HTTP connection to a site on 127.0.0.1:8080 around a fake node; return the node and a function that sends one request and returns the answer."""
        node = FakeNode(key, local_token)
        api = web._Api()
        api.putChild(b"jobs", web.JobsResource(node))
        names = webguard.OwnNames("127.0.0.1", 8080, ["box", "box.example.org"])
        site = guarded_site(node, {b"api": api, b"healthz": web.HealthResource(node)}, names)

        def send(data):
            protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.addCleanup(protocol.connectionLost, None)
            protocol.dataReceived(data)
            return transport.value()

        return node, send

    def status(self, answer):
        """The status code of an HTTP answer."""
        return int(answer.split(b" ", 2)[1])


class CrossSiteTests(SiteMixin, SynchronousTestCase):
    """L{webguard.refusal} as a real site applies it: Host, Origin, Sec-Fetch-Site, Content-Type, and the security headers."""

    def test_cross_origin_text_plain_post_refused(self):
        """The attack of the issue: a text/plain POST from http://evil.example is refused (403) and submits nothing."""
        node, send = self.connect()
        answer = send(
            request_bytes(
                b"POST",
                headers=[OWN_HOST, (b"Origin", b"http://evil.example"), (b"Content-Type", b"text/plain")],
                body=JOB,
            )
        )
        self.assertEqual(self.status(answer), 403, answer)
        self.assertIn(b"http://evil.example", answer)
        self.assertEqual(node.submitted, [])

    def test_cross_origin_json_post_refused(self):
        """Even as JSON, a POST whose Origin is another site (or another port of this host) is refused."""
        node, send = self.connect()
        for origin in (b"http://evil.example", b"http://127.0.0.1:9999", b"null", b"https://127.0.0.1:8080"):
            answer = send(request_bytes(b"POST", headers=[OWN_HOST, (b"Origin", origin), JSON], body=JOB))
            self.assertEqual(self.status(answer), 403, (origin, answer))
        self.assertEqual(node.submitted, [])

    def test_sec_fetch_site_cross_site_refused(self):
        """A POST the browser marks cross-site or same-site (another port, say) is refused, without an Origin too."""
        node, send = self.connect()
        for value in (b"cross-site", b"same-site"):
            answer = send(request_bytes(b"POST", headers=[OWN_HOST, (b"Sec-Fetch-Site", value), JSON], body=JOB))
            self.assertEqual(self.status(answer), 403, answer)
            self.assertIn(b"Sec-Fetch-Site: " + value, answer)
        self.assertEqual(node.submitted, [])

    def test_own_origin_json_post_accepted(self):
        """The dashboard's own POST (its own origin, same-origin, JSON) is accepted; so is one without Origin (curl)."""
        node, send = self.connect()
        for extra in (
            [(b"Origin", b"http://127.0.0.1:8080"), (b"Sec-Fetch-Site", b"same-origin")],
            [(b"Origin", b"http://localhost:8080")],
            [],
        ):
            answer = send(request_bytes(b"POST", headers=[OWN_HOST, JSON, *extra], body=JOB))
            self.assertEqual(self.status(answer), 201, answer)
        self.assertEqual(len(node.submitted), 3)

    def test_post_needs_json_content_type(self):
        """A POST without Content-Type: application/json is answered 415 and submits nothing; a charset parameter is fine."""
        node, send = self.connect()
        for kind in ([(b"Content-Type", b"text/plain")], [(b"Content-Type", b"application/x-www-form-urlencoded")], []):
            answer = send(request_bytes(b"POST", headers=[OWN_HOST, *kind], body=JOB))
            self.assertEqual(self.status(answer), 415, answer)
            self.assertIn(b"application/json", answer)
        self.assertEqual(node.submitted, [])
        answer = send(
            request_bytes(b"POST", headers=[OWN_HOST, (b"Content-Type", b"Application/JSON; charset=utf-8")], body=JOB)
        )
        self.assertEqual(self.status(answer), 201, answer)

    def test_foreign_host_refused(self):
        """A Host that is not one of the node's names (DNS rebinding) is refused, for a GET too, naming the host."""
        node, send = self.connect()
        for host in (b"evil.example:8080", b"evil.example", b"127.0.0.1:9999", b"127.0.0.1.evil.example", b"a:b:c"):
            answer = send(request_bytes(b"GET", headers=[(b"Host", host)]))
            self.assertEqual(self.status(answer), 403, (host, answer))
            self.assertIn(host, answer)
            self.assertNotIn(b'"jobs"', answer)

    def test_own_hosts_accepted(self):
        """Every own name is accepted, with or without the port: the address, localhost, ::1 and the machine's names."""
        node, send = self.connect()
        for host in (
            b"127.0.0.1:8080",
            b"127.0.0.1",
            b"localhost:8080",
            b"LOCALHOST.",
            b"[::1]:8080",
            b"box:8080",
            b"box.example.org",
        ):
            answer = send(request_bytes(b"GET", headers=[(b"Host", host)]))
            self.assertEqual(self.status(answer), 200, (host, answer))

    def test_security_headers_on_every_answer(self):
        """A CSP with frame-ancestors 'none', X-Frame-Options DENY and nosniff come with answers and refusals alike."""
        node, send = self.connect(KEY)
        answers = [
            send(request_bytes(b"GET", "/healthz", headers=[OWN_HOST])),
            send(request_bytes(b"GET", headers=[(b"Host", b"evil.example")])),
            send(request_bytes(b"POST", headers=[OWN_HOST, JSON], body=JOB)),  # 401, refused on its headers
        ]
        self.assertEqual([self.status(answer) for answer in answers], [200, 403, 401])
        for answer in answers:
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            self.assertIn(b"content-security-policy: default-src 'none';", head)
            self.assertIn(b"frame-ancestors 'none'", head)
            self.assertIn(b"x-frame-options: deny", head)
            self.assertIn(b"x-content-type-options: nosniff", head)

    def test_duplicate_keys_refused(self):
        """A job body naming a key twice (at any depth) is refused (400), naming the key, and submits nothing."""
        node, send = self.connect()
        for body, key in (
            (b'{"task": [{"id": "a1"}], "task": [{"id": "a2"}]}', b"'task'"),
            (b'{"task": [{"id": "a1", "command": ["true"], "command": ["rm"]}]}', b"'command'"),
        ):
            answer = send(request_bytes(b"POST", headers=[OWN_HOST, JSON], body=body))
            self.assertEqual(self.status(answer), 400, answer)
            self.assertIn(b"names the key " + key + b" twice", answer)
        self.assertEqual(node.submitted, [])


class OwnNamesTests(SynchronousTestCase):
    """L{webguard.OwnNames}."""

    def test_loopback_names(self):
        """On loopback, localhost, 127.0.0.1 and ::1 are own names besides the interface; elsewhere only the interface and the machine's names."""
        loopback = webguard.OwnNames("127.0.0.2", 80, [])
        self.assertEqual(loopback.names, {"127.0.0.2", "127.0.0.1", "localhost", "::1"})
        self.assertTrue(loopback.origin_allowed("http://localhost"))
        lan = webguard.OwnNames("10.0.0.5", 8080, ["box"])
        self.assertEqual(lan.names, {"10.0.0.5", "box"})
        self.assertFalse(lan.host_allowed("localhost:8080"))
        self.assertTrue(lan.origin_allowed("http://box:8080"))
        self.assertFalse(lan.origin_allowed("http://box:8080/path"))


LOCAL = b"L" * 32


class LocalTokenHttpTests(SiteMixin, SynchronousTestCase):
    """Without a key, the node's local token guards submitting and cancelling over HTTP; reading stays open."""

    def test_submit_without_the_local_token_refused(self):
        """A JSON POST from curl or another local user, without the token, is answered 401 and submits nothing."""
        node, send = self.connect(local_token=LOCAL)
        answer = send(request_bytes(b"POST", headers=[OWN_HOST, JSON], body=JOB))
        self.assertEqual(self.status(answer), 401, answer)
        self.assertIn(b"only from its owner", answer)
        answer = send(
            request_bytes(
                b"POST", headers=[OWN_HOST, JSON, (b"Authorization", b"Bearer " + http_token(KEY).encode())], body=JOB
            )
        )
        self.assertEqual(self.status(answer), 401, answer)
        self.assertEqual(node.submitted, [])

    def test_cancel_without_the_local_token_refused(self):
        """POST .../cancel (no body) needs the token as well (401)."""
        node, send = self.connect(local_token=LOCAL)
        answer = send(request_bytes(b"POST", "/api/jobs/a1-0001-1/cancel", headers=[OWN_HOST, JSON]))
        self.assertEqual(self.status(answer), 401, answer)

    def test_submit_with_the_local_token_accepted(self):
        """With Authorization: Bearer and the local token's HTTP token, the job is submitted (201)."""
        node, send = self.connect(local_token=LOCAL)
        token = http_token(LOCAL).encode("ascii")
        answer = send(
            request_bytes(b"POST", headers=[OWN_HOST, JSON, (b"Authorization", b"Bearer " + token)], body=JOB)
        )
        self.assertEqual(self.status(answer), 201, answer)
        self.assertEqual(len(node.submitted), 1)

    def test_reading_stays_open(self):
        """Without a key, GET needs no token (loopback readers; see docs/security.rst)."""
        node, send = self.connect(local_token=LOCAL)
        answer = send(request_bytes(b"GET", headers=[OWN_HOST]))
        self.assertEqual(self.status(answer), 200, answer)
