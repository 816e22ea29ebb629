"""
The node's HTTP server (C{--web PORT}): the JSON API, Prometheus metrics, a
health check and the dashboard.

Every endpoint is described in C{docs/api.rst} and C{docs/openapi.json}.
The API answers with the views of L{p2pexec.status}, as the client's AMP
commands do; errors are JSON objects C{{"error": "..."}} with the fitting
status code.  Every request passes the checks of L{p2pexec.webguard} first.
The resources read the node through L{IWebNode}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from p2pexec import commands, webguard
from p2pexec.interfaces import IWebNode
from p2pexec.log import NodeLogger
from p2pexec.metrics import NodeMetrics
from p2pexec.model import loads_strict, shorten
from p2pexec.status import TASK_STATES
from p2pexec.webguard import GuardedSite, OwnNames, error_answer, json_answer, token_refusal

log = NodeLogger()

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
"""The dashboard's files, shipped with the package (no CDN)."""

MAX_PAGE = 100_000
"""The most tasks one GET /api/jobs/ID returns."""


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


class _TokenMetrics(Resource):
    """L{MetricsResource} behind the token check."""

    isLeaf = True

    def __init__(self, node: IWebNode, metrics: IResource) -> None:
        super().__init__()
        self.node = node
        self.metrics = metrics

    def render(self, request: Request) -> Any:
        """The metrics, if the request may have them."""
        refusal = token_refusal(self.node.config, request)
        return refusal if refusal is not None else self.metrics.render(request)


class _BadRequest(Exception):
    """A request the API cannot answer; the message says why (HTTP 400)."""


class _JsonResource(Resource):
    """A leaf answering GET (and perhaps POST) with JSON; every failure is a JSON error."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET",)
    always_open = False
    """Whether it answers without the token in a cluster with a key (the health check does)."""

    def __init__(self, node: IWebNode) -> None:
        super().__init__()
        self.node = node

    def render(self, request: Request) -> Any:
        """Dispatch by method; a wrong one is 405, with an Allow header; check the token first."""
        refusal = None if self.always_open else token_refusal(self.node.config, request)
        if refusal is not None:
            return refusal
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return error_answer(
                request, http.NOT_ALLOWED, f"{request.method.decode('ascii', 'replace')} is not allowed here"
            )
        try:
            if request.method == b"POST":
                return self.post(request)
            return self.get(request)
        except _BadRequest as e:
            return error_answer(request, http.BAD_REQUEST, str(e))
        except commands.UnknownJob as e:
            return error_answer(request, http.NOT_FOUND, str(e))

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
        return json_answer(request, {"peers": self.node.views.peers_status()})


class TopologyResource(_JsonResource):
    """C{GET /api/topology}: nodes and the connections between them."""

    def get(self, request: Request) -> bytes:
        """The topology view."""
        return json_answer(request, self.node.views.topology_status())


class JobsResource(Resource):
    """C{/api/jobs}: list and submit; C{/api/jobs/ID} and C{/api/jobs/ID/cancel} below it."""

    def __init__(self, node: IWebNode) -> None:
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
        return json_answer(request, {"jobs": self.node.views.jobs_status()})

    def post(self, request: Request) -> Any:
        length = int(request.getHeader(b"content-length") or 0)
        if length > webguard.MAX_BODY_BYTES:
            return error_answer(
                request, http.REQUEST_ENTITY_TOO_LARGE, f"the job is over {webguard.MAX_BODY_BYTES} bytes"
            )
        body = request.content.read(webguard.MAX_BODY_BYTES + 1) if request.content is not None else b""
        if len(body) > webguard.MAX_BODY_BYTES:
            return error_answer(
                request, http.REQUEST_ENTITY_TOO_LARGE, f"the job is over {webguard.MAX_BODY_BYTES} bytes"
            )
        try:
            document = loads_strict(body, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise _BadRequest(str(e)) from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise _BadRequest(f"the body is not JSON: {shorten(str(e))}") from None
        if not isinstance(document, dict):
            raise _BadRequest('the body must be a job object: {"defaults": {...}, "task": [...]}')
        unknown = set(document) - {"defaults", "task", "job"}
        if unknown:
            raise _BadRequest(f"unknown key(s) {', '.join(sorted(unknown))}; a job has 'defaults', 'task' and 'job'")
        tasks = document.get("task")
        if not isinstance(tasks, list):
            raise _BadRequest("'task' must be a list of task objects")
        try:
            submitted = self.node.submit(tasks, document.get("defaults"), "submitted job", document.get("job"))
        except commands.BadJob as e:
            raise _BadRequest(str(e)) from None
        except (commands.ShuttingDown, commands.JournalUnwritable) as e:
            return error_answer(request, http.SERVICE_UNAVAILABLE, str(e))
        _finish_later(request, submitted, lambda job_id: json_answer(request, {"job": job_id}, http.CREATED))
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

    def __init__(self, node: IWebNode, job_id: str) -> None:
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
        summary = self.node.views.job_status(self.job_id)
        output = _integer(request, "output", 1, 0, 1)
        tasks, matched = self.node.views.job_tasks(
            self.job_id, offset=offset, limit=limit, state=state, node=_argument(request, "node"), output=bool(output)
        )
        return json_answer(request, {"job": summary, "tasks": tasks, "matched": matched, "offset": offset})


class _CancelResource(_JsonResource):
    methods = (b"POST",)

    def __init__(self, node: IWebNode, job_id: str) -> None:
        super().__init__(node)
        self.job_id = job_id

    def post(self, request: Request) -> bytes:
        self.node.views.job_status(self.job_id)  # raises UnknownJob, naming this node, for another master's job
        cancelled = self.node.master.cancel(self.job_id, by="asked over HTTP")
        return json_answer(request, {"cancelled": cancelled})


class HealthResource(_JsonResource):
    """
    C{GET /healthz}: 200 while the node serves, 503 once it is leaving or
    while its journal cannot be written (no token needed).
    """

    always_open = True

    def get(self, request: Request) -> bytes:
        """The node's health as JSON: 200 while it serves; 503, saying why, when it is leaving or unhealthy."""
        node = self.node
        problem = node.views.problem()
        body = {
            "status": "leaving" if node.stopping else "unhealthy" if problem is not None else "ok",
            "node": node.info.name,
            "peers_connected": len(node.views.my_load().links),
            "jobs_running": len(node.master.unfinished()),
            "problem": problem,
        }
        healthy = not node.stopping and problem is None
        return json_answer(request, body, http.OK if healthy else http.SERVICE_UNAVAILABLE)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return error_answer(request, http.NOT_FOUND, f"no such resource: {request.path.decode('utf-8', 'replace')}")


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


def site(node: IWebNode, port: int | None = None, hostnames: Iterable[str] | None = None) -> Site:
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
    return GuardedSite(root, node.config, OwnNames(node.config.interface, port, hostnames))


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
            request.write(error_answer(request, http.INTERNAL_SERVER_ERROR, failure.getErrorMessage()))
            request.finish()

    d.addCallbacks(done, failed)
