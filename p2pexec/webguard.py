"""
The checks every request to the node's HTTP server passes before any
resource sees it (see C{docs/security.rst}): the C{Host} must name this node
(DNS rebinding), a change must come from the node's own origin
(C{Origin}, C{Sec-Fetch-Site}) as JSON (C{Content-Type}), a body is judged
on its headers (size, token) before it is read, the token of the cluster key
or of the local token guards what needs it, and every answer carries the
security headers.

L{GuardedSite} applies them; L{p2pexec.web} builds the resources behind it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from p2pexec.auth import http_token
from p2pexec.config import NodeConfig
from p2pexec.log import NodeLogger

# The namespace these lines always had, when they were written by p2pexec.web.
log = NodeLogger(namespace="p2pexec.web")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The largest request body accepted (a job of about 100,000 tasks)."""


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


def json_answer(request: Request, value: Any, code: int = http.OK) -> bytes:
    """Set the status and JSON headers of C{request}; return C{value} as its JSON body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_answer(request: Request, code: int, message: str) -> bytes:
    """A JSON error C{{"error": message}} with status C{code}."""
    return json_answer(request, {"error": message}, code)


def token_secret(config: NodeConfig) -> bytes | None:
    """What the HTTP token is derived from: the cluster key, or without one the local token (None: neither)."""
    return config.key if config.key is not None else config.local_token


def token_refusal(config: NodeConfig, request: Request) -> bytes | None:
    """
    In a cluster with a key, every request but a public GET (C{--web-public})
    needs C{Authorization: Bearer TOKEN} (C{p2pexec token}); without a key,
    every request but a GET or HEAD needs the token of the node's local
    token.  The answer to one without it, or None if it may go on.
    """
    secret = token_secret(config)
    if secret is None:
        return None
    if config.key is None:
        if request.method in SAFE_METHODS:
            return None
    elif request.method == b"GET" and config.web_public:
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
    return error_answer(request, http.UNAUTHORIZED, _token_needed(config))


_TOKEN_NEEDED = (
    "this node's cluster has a key: send Authorization: Bearer TOKEN (p2pexec token --key-file KEY prints it)"
)
_LOCAL_TOKEN_NEEDED = (
    "this node takes jobs and cancels only from its owner: send Authorization: Bearer TOKEN "
    "(p2pexec token, run by the user that runs the node, prints it)"
)


def _token_needed(config: NodeConfig) -> str:
    """A refusal's message: the cluster key's, or the local token's."""
    return _TOKEN_NEEDED if config.key is not None else _LOCAL_TOKEN_NEEDED


def _given_token(request: Request) -> str:
    """The C{Authorization} header as sent, or ''."""
    return (request.getHeader(b"authorization") or b"").decode("latin-1").strip()


def _token_matches(key: bytes, given: str) -> bool:
    """Whether C{given} is C{Bearer TOKEN} with the token of C{key} (compared in constant time)."""
    expected = "Bearer " + http_token(key)
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))


def _client(request: Request) -> str:
    """The client's address, for log lines (Twisted's address types: a UNIX one has no host)."""
    address = request.getClientAddress()
    return getattr(address, "host", "?")


class GuardedSite(Site):
    """
    The node's L{Site}: its requests are L{GuardedRequest}s, judged by the
    node's configuration and names; its access log goes to the debug level
    (a dashboard polls four times a second).

    @ivar config: the node's configuration (its key, local token and C{--web-public}).
    @ivar names: the names this server answers to (see L{refusal}); None: any.
    """

    def __init__(self, resource: IResource, config: NodeConfig, names: OwnNames | None) -> None:
        super().__init__(resource, requestFactory=self._request)
        self.config = config
        self.names = names
        self.secret = token_secret(config)
        """What the token is derived from (the key, or without one the local token); None: no token is needed."""
        self.noisy = False
        self.displayTracebacks = False

    def _request(self, channel: http.HTTPChannel, *args: Any) -> GuardedRequest:
        """A request of this site, knowing it from the start (Twisted's Request learns its site only in process)."""
        return GuardedRequest(channel, *args, guarded_site=self)

    def log(self, request: http.Request) -> None:
        """Log one request at debug level."""
        log.debug(
            "HTTP {method} {path} -> {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("utf-8", "replace"),
            code=request.code,
        )


class GuardedRequest(Request):
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

    def __init__(self, channel: http.HTTPChannel, *args: Any, guarded_site: GuardedSite, **kwargs: Any) -> None:
        """
        @param guarded_site: the site the request came to, whose
            configuration and names judge it.
        """
        super().__init__(channel, *args, **kwargs)
        self.guarded_site = guarded_site

    def gotLength(self, length: int | None) -> None:
        """
        The headers are in: refuse the request now if its headers are
        refused (L{refusal}: a foreign Host, a cross-site change, a POST that
        is not JSON), and its body if it will be (None: a chunked body).
        """
        names = self.guarded_site.names
        # The request line is in, but self.method is set only later (in
        # requestReceived): Twisted has no public way to read it before.
        command = getattr(self.channel, "_command", None)
        if names is not None and isinstance(command, bytes):
            refused = refusal(names, command, self.requestHeaders)
            if refused is not None:
                self._refuse(*refused)
                return
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return
        if length and not self._token_given():
            self._refuse(http.UNAUTHORIZED, _token_needed(self.guarded_site.config))
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk, unless the body is refused, or this one takes it over the limit or is sent without the token."""
        if self._refused:
            return
        if data and self._received == 0 and not self._token_given():
            self._refuse(http.UNAUTHORIZED, _token_needed(self.guarded_site.config))
            return
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._refuse(http.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return
        super().handleContentChunk(data)

    def _token_given(self) -> bool:
        """Whether this request may send a body: no key nor local token, or the token in its headers."""
        secret = self.guarded_site.secret
        return secret is None or _token_matches(secret, _given_token(self))

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
        names = self.guarded_site.names
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
        self.site = self.guarded_site
        self.write(error_answer(self, code, message))
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
            # As in gotLength: before requestReceived, only the channel's private attributes have the request line.
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
