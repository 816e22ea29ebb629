"""
The node's HTTP server (C{--web PORT}): the JSON API, Prometheus metrics, a
health check and the dashboard.

Every endpoint is described in C{docs/api.rst} and C{docs/openapi.json}.
The API answers with the views of L{p2pexec.status}, as the client's AMP
commands do; errors are JSON objects C{{"error": "..."}} with the fitting
status code.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client.twisted import MetricsResource
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from p2pexec import commands
from p2pexec.auth import http_token
from p2pexec.log import NodeLogger
from p2pexec.metrics import NodeMetrics
from p2pexec.model import loads_strict, shorten
from p2pexec.status import TASK_STATES

if TYPE_CHECKING:
    from p2pexec.node import Node

log = NodeLogger()

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
"""The dashboard's files, shipped with the package (no CDN)."""

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest request body accepted (a job of about 100,000 tasks)."""

MAX_PAGE = 100_000
"""The most tasks one GET /api/jobs/ID returns."""

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The dashboard loads its own script and style sheet and talks to its own node; no page may frame it."""

SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
"""Sent with every answer, errors included."""

SAFE_METHODS = (b"GET", b"HEAD")
"""Methods that change nothing; every other one is checked for a cross-site origin."""


class OwnNames:
    """
    The names and addresses by which this node's HTTP server may be asked:
    C{--interface}, on loopback also C{localhost}, C{127.0.0.1} and C{::1},
    and the machine's host names; with or without the port.  A C{Host}
    naming anything else comes from a page that had its own name resolve
    to this node (DNS rebinding), and is refused.

    @param interface: the address the server listens on.
    @param port: the port it listens on (None: any port is accepted).
    @param hostnames: the machine's names (C{socket.gethostname()} and
        C{socket.getfqdn()} by default).
    """

    def __init__(self, interface: str, port: int | None, hostnames: Iterable[str] | None = None) -> None:
        if hostnames is None:
            hostnames = _machine_names()
        names = {interface}
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            names |= {"localhost", "127.0.0.1", "::1"}
        names |= set(hostnames)
        self.names = frozenset(_canonical(name) for name in names if name)
        self.port = port

    def describe(self) -> str:
        """The accepted names, for error messages."""
        return ", ".join(sorted(self.names))

    def host_allowed(self, host: str) -> bool:
        """Whether a C{Host} header value (C{NAME}, C{NAME:PORT}, C{[V6]:PORT}) names this server."""
        split = _split_host(host)
        if split is None:
            return False
        name, port = split
        return name in self.names and (port is None or self.port is None or port == self.port)

    def origin_allowed(self, origin: str) -> bool:
        """Whether an C{Origin} header value is one of this server's own origins (C{http://NAME:PORT})."""
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme != "http" or parts.hostname is None or parts.path or parts.query or parts.username:
            return False
        if self.port is not None and (port if port is not None else 80) != self.port:
            return False
        return _canonical(parts.hostname) in self.names


def _machine_names() -> list[str]:
    """This machine's host name and fully qualified name."""
    names = [socket.gethostname()]
    try:
        names.append(socket.getfqdn())
    except OSError:
        pass
    return names


def _canonical(name: str) -> str:
    """A host name as compared: lower case, without a final dot or IPv6 brackets."""
    return name.strip().strip("[]").rstrip(".").lower()


def _split_host(host: str) -> tuple[str, int | None] | None:
    """C{(name, port or None)} of a C{Host} header value, or None if it is malformed."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[1:end], host[end + 1 :]
    elif host.count(":") == 1:
        name, rest = host.split(":")
        rest = ":" + rest
    elif ":" in host:
        return None
    else:
        name, rest = host, ""
    if not name:
        return None
    if not rest:
        return _canonical(name), None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    return _canonical(name), int(rest[1:])


def refusal(names: OwnNames, method: bytes, headers: Any) -> tuple[int, str] | None:
    """
    Why a request must be refused before it reaches any resource, as
    C{(status, message)}, or None if it may go on:

      - a C{Host} that is not one of L{OwnNames} (403);
      - a state-changing request (not GET or HEAD) from another origin: an
        C{Origin} that is not this server's, or a C{Sec-Fetch-Site} other
        than C{same-origin} or C{none} (403);
      - a POST whose C{Content-Type} is not C{application/json} (415): a
        page on another site can send C{text/plain} or a form without asking
        the browser first, never JSON.

    @param headers: the request's L{twisted.web.http_headers.Headers}.
    """
    host = _header(headers, b"host")
    if host is not None and not names.host_allowed(host):
        return http.FORBIDDEN, (
            f"this node does not answer to the host {host!r} (a page on another site whose name was made to "
            f"point here?); ask it by one of its own names: {names.describe()}"
        )
    if method in SAFE_METHODS:
        return None
    verb = method.decode("ascii", "replace")
    origin = _header(headers, b"origin")
    if origin is not None and not names.origin_allowed(origin):
        return (
            http.FORBIDDEN,
            f"refused a {verb} from the page of another site ({origin!r}); only this node's own dashboard may send one",
        )
    site = _header(headers, b"sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return http.FORBIDDEN, f"refused a {verb} sent by the browser from another site (Sec-Fetch-Site: {site})"
    if method == b"POST":
        kind = _header(headers, b"content-type")
        media = (kind or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            given = repr(kind) if kind is not None else "none"
            return http.UNSUPPORTED_MEDIA_TYPE, f"a POST needs Content-Type: application/json (given: {given})"
    return None


def _header(headers: Any, name: bytes) -> str | None:
    """The first value of header C{name}, decoded, or None."""
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _json(request: Request, value: Any, code: int = http.OK) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _error(request: Request, code: int, message: str) -> bytes:
    return _json(request, {"error": message}, code)


def _argument(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def _integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = _argument(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise _BadRequest(f"query parameter {name!r} must be from {low} to {high}, not {value}")
    return value


def _secret(node: Node) -> bytes | None:
    """What the HTTP token is derived from: the cluster key, or without one the local token (None: neither)."""
    key: bytes | None = node.config.key
    return key if key is not None else getattr(node.config, "local_token", None)


def _check_token(node: Node, request: Request) -> bytes | None:
    """
    In a cluster with a key, every request but a public GET (C{--web-public})
    needs C{Authorization: Bearer TOKEN} (C{p2pexec token}); without a key,
    every request but a GET or HEAD needs the token of the node's local
    token.  The answer to one without it, or None if it may go on.
    """
    secret = _secret(node)
    if secret is None:
        return None
    if node.config.key is None:
        if request.method in SAFE_METHODS:
            return None
    elif request.method == b"GET" and node.config.web_public:
        return None
    given = _given_token(request)
    if _token_matches(secret, given):
        return None
    request.setHeader(b"www-authenticate", b'Bearer realm="p2pexec"')
    log.info(
        "Refused HTTP {method} {path} from {client}: {why}",
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("utf-8", "replace"),
        client=_client(request),
        why="no token" if not given else "wrong token",
    )
    return _error(request, http.UNAUTHORIZED, _TOKEN_NEEDED if node.config.key is not None else _LOCAL_TOKEN_NEEDED)


_TOKEN_NEEDED = (
    "this node's cluster has a key: send Authorization: Bearer TOKEN (p2pexec token --key-file KEY prints it)"
)
_LOCAL_TOKEN_NEEDED = (
    "this node takes jobs and cancels only from its owner: send Authorization: Bearer TOKEN "
    "(p2pexec token, run by the user that runs the node, prints it)"
)


def _given_token(request: Request) -> str:
    """The C{Authorization} header as sent, or ''."""
    return (request.getHeader(b"authorization") or b"").decode("latin-1").strip()


def _token_matches(key: bytes, given: str) -> bool:
    """Whether C{given} is C{Bearer TOKEN} with the token of C{key} (compared in constant time)."""
    expected = "Bearer " + http_token(key)
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))


def _client(request: Request) -> str:
    """The client's address, for log lines."""
    address = request.getClientAddress()
    return getattr(address, "host", "?")


class _BodyCheckingRequest(Request):
    """
    A request whose body is judged as its headers arrive, not once it has
    all been read (Twisted spools a large one to a temporary file): a body
    over L{MAX_BODY_BYTES} (by its C{Content-Length}, or as its chunks
    arrive) is answered 413, and a body sent without the token (of the
    cluster key, or without one of the local token) is answered 401; a
    request whose headers L{refusal} refuses is answered at once too.  The
    connection is then closed.
    """

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        """
        The headers are in: refuse the request now if its headers are
        refused (L{refusal}: a foreign Host, a cross-site change, a POST that
        is not JSON), and its body if it will be (None: a chunked body).
        """
        names = getattr(getattr(self.channel, "site", None), "names", None)
        command = getattr(self.channel, "_command", None)  # the request line is in; self.method is set later
        if names is not None and isinstance(command, bytes):
            refused = refusal(names, command, self.requestHeaders)
            if refused is not None:
                self._refuse(*refused)
                return
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return
        if length and not self._token_given():
            self._refuse(http.UNAUTHORIZED, self._token_needed())
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk, unless the body is refused, or this one takes it over the limit or is sent without the token."""
        if self._refused:
            return
        if data and self._received == 0 and not self._token_given():
            self._refuse(http.UNAUTHORIZED, self._token_needed())
            return
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return
        super().handleContentChunk(data)

    def _token_given(self) -> bool:
        """Whether this request may send a body: no key nor local token, or the token in its headers."""
        secret = getattr(getattr(self.channel, "site", None), "node_secret", None)
        return secret is None or _token_matches(secret, _given_token(self))

    def _token_needed(self) -> str:
        """The refusal's message: the cluster key's, or the local token's."""
        local = getattr(getattr(self.channel, "site", None), "node_key", None) is None
        return _LOCAL_TOKEN_NEEDED if local else _TOKEN_NEEDED

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request, unless it was refused already."""
        if not self._refused:
            super().requestReceived(command, path, version)

    def process(self) -> None:
        """
        Send L{SECURITY_HEADERS} with whatever the answer is; refuse a
        foreign C{Host}, a cross-site change or a POST that is not JSON
        (L{refusal}) before any resource sees the request.
        """
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        names = getattr(getattr(self.channel, "site", None), "names", None)
        refused = refusal(names, self.method, self.requestHeaders) if names is not None else None
        if refused is None:
            super().process()
            return
        code, message = refused
        log.info(
            "Refused HTTP {method} {path} from {client}: {why}",
            method=self.method.decode("ascii", "replace"),
            path=self.path.decode("utf-8", "replace"),
            client=_client(self),
            why=message,
        )
        self.site = getattr(self.channel, "site", None)
        self.write(_error(self, code, message))
        self.finish()

    def _refuse(self, code: int, message: str) -> None:
        """Answer C{code} with a JSON error at once, and close the connection (the rest of the body is not read)."""
        self._refused = True
        self.content = BytesIO()
        # No "100 Continue" after this answer: the body is not wanted.
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": message}).encode("utf-8")
        log.info(
            "Refused HTTP {method} {path} from {client}: {error}",
            method=getattr(self.channel, "_command", b"?").decode("ascii", "replace"),
            path=getattr(self.channel, "_path", b"?").decode("utf-8", "replace"),
            client=_client(self),
            error=message,
        )
        head = (
            f"HTTP/1.1 {code} {http.RESPONSES.get(code, b'Error').decode('ascii')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        )
        head += "".join(f"{name.decode('ascii')}: {value.decode('ascii')}\r\n" for name, value in SECURITY_HEADERS)
        if code == http.UNAUTHORIZED:
            head += 'WWW-Authenticate: Bearer realm="p2pexec"\r\n'
        transport = self.channel.transport
        if transport is None:
            return  # The client is gone already: there is no one to answer.
        transport.write(head.encode("ascii") + b"\r\n" + body)
        self.channel.loseConnection()


class _TokenMetrics(Resource):
    """L{MetricsResource} behind the token check."""

    isLeaf = True

    def __init__(self, node: Node, metrics: IResource) -> None:
        super().__init__()
        self.node = node
        self.metrics = metrics

    def render(self, request: Request) -> Any:
        """The metrics, if the request may have them."""
        refusal = _check_token(self.node, request)
        return refusal if refusal is not None else self.metrics.render(request)


class _BadRequest(Exception):
    """A request the API cannot answer; the message says why (HTTP 400)."""


class _JsonResource(Resource):
    """A leaf answering GET (and perhaps POST) with JSON; every failure is a JSON error."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET",)
    always_open = False
    """Whether it answers without the token in a cluster with a key (the health check does)."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def render(self, request: Request) -> Any:
        """Dispatch by method; a wrong one is 405, with an Allow header; check the token first."""
        refusal = None if self.always_open else _check_token(self.node, request)
        if refusal is not None:
            return refusal
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return _error(request, http.NOT_ALLOWED, f"{request.method.decode('ascii', 'replace')} is not allowed here")
        try:
            if request.method == b"POST":
                return self.post(request)
            return self.get(request)
        except _BadRequest as e:
            return _error(request, http.BAD_REQUEST, str(e))
        except commands.UnknownJob as e:
            return _error(request, http.NOT_FOUND, str(e))

    def get(self, request: Request) -> Any:
        """Answer a GET."""
        raise NotImplementedError

    def post(self, request: Request) -> Any:
        """Answer a POST."""
        raise NotImplementedError


class PeersResource(_JsonResource):
    """C{GET /api/peers}: this node, then its peers."""

    def get(self, request: Request) -> bytes:
        """The peers view."""
        return _json(request, {"peers": self.node.peers_status()})


class TopologyResource(_JsonResource):
    """C{GET /api/topology}: nodes and the connections between them."""

    def get(self, request: Request) -> bytes:
        """The topology view."""
        return _json(request, self.node.topology_status())


class JobsResource(Resource):
    """C{/api/jobs}: list and submit; C{/api/jobs/ID} and C{/api/jobs/ID/cancel} below it."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self._collection = _JobCollection(node)

    def getChild(self, path: bytes, request: Request) -> Resource:
        """C{""} is the collection itself; anything else names a job."""
        if path == b"":
            return self._collection
        return _JobResource(self.node, path.decode("utf-8", "replace"))

    def render(self, request: Request) -> Any:
        """C{/api/jobs} without a trailing slash."""
        return self._collection.render(request)


class _JobCollection(_JsonResource):
    methods = (b"GET", b"POST")

    def get(self, request: Request) -> bytes:
        return _json(request, {"jobs": self.node.jobs_status()})

    def post(self, request: Request) -> Any:
        length = int(request.getHeader(b"content-length") or 0)
        if length > MAX_BODY_BYTES:
            return _error(request, http.REQUEST_ENTITY_TOO_LARGE, f"the job is over {MAX_BODY_BYTES} bytes")
        body = request.content.read(MAX_BODY_BYTES + 1) if request.content is not None else b""
        if len(body) > MAX_BODY_BYTES:
            return _error(request, http.REQUEST_ENTITY_TOO_LARGE, f"the job is over {MAX_BODY_BYTES} bytes")
        try:
            document = loads_strict(body, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise _BadRequest(str(e)) from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise _BadRequest(f"the body is not JSON: {shorten(str(e))}") from None
        if not isinstance(document, dict):
            raise _BadRequest('the body must be a job object: {"defaults": {...}, "task": [...]}')
        unknown = set(document) - {"defaults", "task"}
        if unknown:
            raise _BadRequest(f"unknown key(s) {', '.join(sorted(unknown))}; a job has 'defaults' and 'task'")
        tasks = document.get("task")
        if not isinstance(tasks, list):
            raise _BadRequest("'task' must be a list of task objects")
        try:
            submitted = self.node.submit(tasks, document.get("defaults"), label="submitted job")
        except commands.BadJob as e:
            raise _BadRequest(str(e)) from None
        except (commands.ShuttingDown, commands.JournalUnwritable) as e:
            return _error(request, http.SERVICE_UNAVAILABLE, str(e))
        _finish_later(request, submitted, lambda job_id: _json(request, {"job": job_id}, http.CREATED))
        return NOT_DONE_YET


class _DuplicateKey(ValueError):
    """A JSON object of a request body names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs as a dict; a key given twice is refused (JSON leaves it undefined which one counts)."""
    made: dict[str, Any] = {}
    for key, value in pairs:
        if key in made:
            raise _DuplicateKey(f"the body names the key {shorten(key, 100)!r} twice in one object; give each key once")
        made[key] = value
    return made


class _JobResource(_JsonResource):
    """C{GET /api/jobs/ID} (with C{state}, C{node}, C{offset}, C{limit}); C{POST .../cancel}."""

    isLeaf = False

    def __init__(self, node: Node, job_id: str) -> None:
        super().__init__(node)
        self.job_id = job_id

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"cancel":
            return _CancelResource(self.node, self.job_id)
        if path == b"":
            return self
        return _NotFound()

    def get(self, request: Request) -> bytes:
        state = _argument(request, "state")
        if state is not None and state not in TASK_STATES:
            raise _BadRequest(f"query parameter 'state' must be one of {', '.join(TASK_STATES)}, not {state!r}")
        offset = _integer(request, "offset", 0, 0, 10**9)
        limit = _integer(request, "limit", MAX_PAGE, 1, MAX_PAGE)
        summary = self.node.job_status(self.job_id)
        output = _integer(request, "output", 1, 0, 1)
        tasks, matched = self.node.job_tasks(
            self.job_id, offset=offset, limit=limit, state=state, node=_argument(request, "node"), output=bool(output)
        )
        return _json(request, {"job": summary, "tasks": tasks, "matched": matched, "offset": offset})


class _CancelResource(_JsonResource):
    methods = (b"POST",)

    def __init__(self, node: Node, job_id: str) -> None:
        super().__init__(node)
        self.job_id = job_id

    def post(self, request: Request) -> bytes:
        if self.job_id not in self.node.master.jobs:
            raise commands.UnknownJob(f"node {self.node.info.name} is not the master of job {self.job_id!r}")
        cancelled = self.node.master.cancel(self.job_id, by="asked over HTTP")
        return _json(request, {"cancelled": cancelled})


class HealthResource(_JsonResource):
    """
    C{GET /healthz}: 200 while the node serves, 503 once it is leaving or
    while its journal cannot be written (no token needed).
    """

    always_open = True

    def get(self, request: Request) -> bytes:
        """The node's health as JSON: 200 while it serves; 503, saying why, when it is leaving or unhealthy."""
        node = self.node
        problem = node.problem()
        body = {
            "status": "leaving" if node.stopping else "unhealthy" if problem is not None else "ok",
            "node": node.info.name,
            "peers_connected": len(node.peers.connected_peers()),
            "jobs_running": sum(1 for job in node.master.jobs.values() if job.finished is None),
            "problem": problem,
        }
        healthy = not node.stopping and problem is None
        return _json(request, body, http.OK if healthy else http.SERVICE_UNAVAILABLE)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _error(request, http.NOT_FOUND, f"no such resource: {request.path.decode('utf-8', 'replace')}")


class _Api(Resource):
    """C{/api}: its endpoints below; anything else under it is a JSON 404, as its own errors are."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


class _Root(Resource):
    """C{/}: the dashboard; C{/api}, C{/metrics}, C{/healthz}, C{/static} below."""

    def __init__(self, children: dict[bytes, Resource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return File(os.path.join(DASHBOARD, "index.html"), defaultType="text/html")
        return _NotFound()


class _QuietSite(Site):
    """A L{Site} whose access log goes to the debug level (a dashboard polls four times a second)."""

    node_key: bytes | None = None
    """The cluster key, for L{_BodyCheckingRequest}; None without one."""

    node_secret: bytes | None = None
    """What the token is derived from (the key, or without one the local token); None: no token is needed."""

    names: OwnNames | None = None
    """The names this server answers to (see L{refusal}); None: any."""

    def log(self, request: http.Request) -> None:
        """Log one request at debug level."""
        log.debug(
            "HTTP {method} {path} -> {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("utf-8", "replace"),
            code=request.code,
        )


def site(node: Node, port: int | None = None, hostnames: Iterable[str] | None = None) -> Site:
    """
    The node's HTTP site: API, metrics, health check and dashboard.

    @param port: the port it is served on (None: any C{Host} port is accepted).
    @param hostnames: the machine's names (found by L{OwnNames} when None).
    """
    api = _Api()
    api.putChild(b"peers", PeersResource(node))
    api.putChild(b"topology", TopologyResource(node))
    api.putChild(b"jobs", JobsResource(node))
    metrics = NodeMetrics(node.views)
    root = _Root(
        {
            b"api": api,
            b"metrics": _TokenMetrics(node, MetricsResource(registry=metrics.registry)),
            b"healthz": HealthResource(node),
            b"static": File(DASHBOARD),
        }
    )
    made = _QuietSite(root, requestFactory=_BodyCheckingRequest)
    made.node_key = node.config.key
    made.node_secret = _secret(node)
    made.names = OwnNames(node.config.interface, port, hostnames)
    made.noisy = False
    made.displayTracebacks = False
    return made


def _finish_later(request: Request, d: Any, render: Callable[[Any], bytes]) -> None:
    """Write C{render(result)} when C{d} fires, unless the client has gone."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def done(result: Any) -> None:
        if not gone:
            request.write(render(result))
            request.finish()

    def failed(failure: Failure) -> None:
        log.failure("Answering {path} failed", failure, path=request.path)
        if not gone:
            request.write(_error(request, http.INTERNAL_SERVER_ERROR, failure.getErrorMessage()))
            request.finish()

    d.addCallbacks(done, failed)
