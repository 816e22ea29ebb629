"""
The HTTP API of a real node (C{--web}), with every response body validated
against C{docs/openapi.json}.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from tests.integration.cluster import Cluster
from tests.integration.test_cluster import IntegrationTestCase

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENAPI = os.path.join(CHECKOUT, "docs", "openapi.json")


def load_openapi() -> dict[str, Any]:
    """The API's OpenAPI document."""
    with open(OPENAPI, encoding="utf-8") as f:
        return json.load(f)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """A tiny JSON client for one node's API, checking every answer against the OpenAPI file."""

    def __init__(self, testcase: Any, port: int, token: str | None = None) -> None:
        """
        @param token: the node's HTTP token, sent with every request that is not a GET.
        """
        self.testcase = testcase
        self.base = f"http://127.0.0.1:{port}"
        self.document = load_openapi()
        self.token = token

    def request(self, method: str, path: str, body: Any | None = None) -> tuple[int, Any, str]:
        """(status, decoded body, content type) of one request; errors are answers too."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None or method == "POST":
            request.add_header("content-type", "application/json")
        if method != "GET" and self.token is not None:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, raw, kind = answer.status, answer.read(), answer.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
        decoded = json.loads(raw) if kind.startswith("application/json") else raw.decode()
        return status, decoded, kind

    def check(self, method: str, path: str, template: str, body: Any | None = None, expect: int = 200) -> Any:
        """
        Do one request, assert its status, and validate its body against the
        schema the OpenAPI file gives for C{template} (the path as written
        there), C{method} and that status.
        """
        status, decoded, kind = self.request(method, path, body)
        self.testcase.assertEqual(status, expect, f"{method} {path}: {decoded!r}")
        operation = self.document["paths"][template][method.lower()]
        response = operation["responses"][str(status)]
        content = response["content"]
        media = "application/json" if "application/json" in content else "text/plain"
        self.testcase.assertTrue(kind.startswith(media), f"{method} {path}: content type {kind!r}, expected {media}")
        schema = dict(self.document)
        schema.update(content[media]["schema"])
        errors = sorted(Draft202012Validator(schema).iter_errors(decoded), key=lambda e: list(e.path))
        if errors:
            self.testcase.fail(
                f"{method} {path}: the answer breaks the OpenAPI schema: {errors[0].message} at {list(errors[0].path)}"
            )
        return decoded


class OpenApiFileTests(IntegrationTestCase):
    """The OpenAPI file itself."""

    def test_openapi_file_is_valid(self) -> None:
        """docs/openapi.json is a valid OpenAPI 3.1 document."""
        validate_spec(load_openapi())


class ApiTests(IntegrationTestCase):
    """Every endpoint of a real two-node cluster, validated against the OpenAPI file."""

    def setUp(self) -> None:
        cluster = Cluster(self)
        self.cluster = cluster
        self.web_port = free_port()
        self.a1 = cluster.start("a1", "--web", str(self.web_port))
        self.b1 = cluster.start("b1")
        self.a1.wait_for(r"\] Node a1 connected to peer b1 at ")
        self.a1.wait_for(r"\] Node a1 serves its dashboard, API and metrics on http://127\.0\.0\.1:\d+/$")
        self.http = Http(self, self.web_port, cluster.http_token("a1"))

    def wait_finished(self, job_id: str) -> dict[str, Any]:
        """Poll GET /api/jobs/ID until the job has ended; return its last answer."""
        return self.cluster.wait_until(
            lambda: (lambda answer: answer if answer["job"]["state"] != "running" else None)(
                self.http.check("GET", f"/api/jobs/{job_id}", "/api/jobs/{job}")
            ),
            lambda: f"job {job_id} did not end\n{self.cluster.logs()}",
        )

    def test_peers_topology_and_health(self) -> None:
        """/api/peers lists a1 first then b1 alive; /api/topology links them; /healthz is ok."""
        peers = self.http.check("GET", "/api/peers", "/api/peers")["peers"]
        self.assertEqual([(p["name"], p["state"]) for p in peers], [("a1", "self"), ("b1", "alive")])
        topology = self.http.check("GET", "/api/topology", "/api/topology")
        self.assertEqual({n["name"] for n in topology["nodes"]}, {"a1", "b1"})
        self.assertEqual(topology["links"], [{"source": "a1", "target": "b1", "state": "alive"}])
        health = self.http.check("GET", "/healthz", "/healthz")
        self.assertEqual((health["status"], health["node"], health["peers_connected"]), ("ok", "a1", 1))

    def test_submit_follow_filter_and_metrics(self) -> None:
        """A job POSTed runs on both nodes; its detail filters by state and node; /metrics counts it."""
        job = {
            "defaults": {"command": ["sh", "-c", "echo out-$P2PEXEC_TASK_ID"]},
            "task": [{"id": f"a{i}"} for i in range(3)]
            + [{"id": f"b{i}"} for i in range(3)]
            + [{"id": "bfail", "kind": "b", "command": ["false"]}],
        }
        submitted = self.http.check("POST", "/api/jobs", "/api/jobs", body=job, expect=201)
        job_id = submitted["job"]
        detail = self.wait_finished(job_id)
        self.assertEqual(detail["job"]["counts"]["succeeded"], 6)
        self.assertEqual(detail["job"]["counts"]["failed"], 1)
        self.assertEqual(detail["matched"], 7)
        by_id = {task["id"]: task for task in detail["tasks"]}
        self.assertEqual(by_id["a0"]["stdout"], "out-a0\n")
        self.assertEqual((by_id["b1"]["node"], by_id["bfail"]["exit_code"]), ("b1", 1))
        failed = self.http.check("GET", f"/api/jobs/{job_id}?state=failed", "/api/jobs/{job}")
        self.assertEqual([t["id"] for t in failed["tasks"]], ["bfail"])
        on_b1 = self.http.check("GET", f"/api/jobs/{job_id}?node=b1&limit=2&offset=1", "/api/jobs/{job}")
        self.assertEqual(([t["id"] for t in on_b1["tasks"]], on_b1["matched"]), (["b1", "b2"], 4))
        jobs = self.http.check("GET", "/api/jobs", "/api/jobs")["jobs"]
        self.assertEqual([j["id"] for j in jobs], [job_id])
        status, metrics, _ = self.http.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn('p2pexec_tasks{state="succeeded"} 6.0', metrics)
        self.assertIn("p2pexec_tasks_failed_total 1.0", metrics)
        self.assertIn("p2pexec_task_duration_seconds_count 7.0", metrics)
        self.assertIn('p2pexec_peers{state="alive"} 1.0', metrics)
        self.assertIn("p2pexec_assignments_sent_total 7.0", metrics)
        self.assertIn("p2pexec_datagrams_received_total", metrics)

    def test_cancel(self) -> None:
        """A running job cancelled over HTTP ends as cancelled; a second cancel counts 0."""
        job = {"defaults": {"command": ["sleep", "30"]}, "task": [{"id": f"b{i}"} for i in range(4)]}
        job_id = self.http.check("POST", "/api/jobs", "/api/jobs", body=job, expect=201)["job"]
        self.b1.wait_for(r"\] Node b1 executing: b\d$")
        cancelled = self.http.check("POST", f"/api/jobs/{job_id}/cancel", "/api/jobs/{job}/cancel")
        self.assertEqual(cancelled, {"cancelled": 4})
        detail = self.wait_finished(job_id)
        self.assertEqual((detail["job"]["state"], detail["job"]["counts"]["cancelled"]), ("cancelled", 4))
        again = self.http.check("POST", f"/api/jobs/{job_id}/cancel", "/api/jobs/{job}/cancel")
        self.assertEqual(again, {"cancelled": 0})
        self.b1.wait_for(
            rf"\] Node b1 cancelled job {job_id} of master a1: \d+ queued task\(s\) dropped, \d+ running task\(s\) stopped$"
        )

    def test_errors_are_json_with_the_right_status(self) -> None:
        """A bad job is 400 naming the field, an unknown job 404, a bad filter 400, a wrong method 405."""
        bad = self.http.check(
            "POST", "/api/jobs", "/api/jobs", body={"task": [{"id": "t1", "timeout": -1}]}, expect=400
        )
        self.assertIn("task #1 ('t1'): 'timeout' must be a number of seconds above 0", bad["error"])
        not_json = self.http.check("POST", "/api/jobs", "/api/jobs", body=b"{nope", expect=400)
        self.assertIn("not JSON", not_json["error"])
        unknown = self.http.check("GET", "/api/jobs/nope", "/api/jobs/{job}", expect=404)
        self.assertIn("'nope'", unknown["error"])
        self.http.check("POST", "/api/jobs/nope/cancel", "/api/jobs/{job}/cancel", expect=404)
        job_id = self.http.check("POST", "/api/jobs", "/api/jobs", body={"task": [{"id": "a1"}]}, expect=201)["job"]
        self.http.check("GET", f"/api/jobs/{job_id}?state=sleeping", "/api/jobs/{job}", expect=400)
        status, body, _ = self.http.request("DELETE", "/api/jobs")
        self.assertEqual((status, body), (405, {"error": "DELETE is not allowed here"}))
        for path in ("/api", "/api/nope", "/api/jobs/x/y/z", "/nope"):
            status, body, kind = self.http.request("GET", path)
            self.assertEqual((status, kind.split(";")[0]), (404, "application/json"), (path, body))
            self.assertEqual(body, {"error": f"no such resource: {path}"})
        for node in (self.a1, self.b1):
            self.assertLogClean(node)
