"""
A real browser page on another origin attacks a real node's HTTP API
(issue 11, item 0): it must not be able to make the node run anything.

A node runs with C{--web} on loopback and no cluster key.  A second HTTP
server, in this test, serves an attacker's page on another origin (another
loopback address, and another port of the node's own address).  Headless
Chromium (L{tests.integration.browser}) loads it; the page sends the node a
job with C{fetch} as C{text/plain} (no CORS preflight), and the same job as
a form POST, as any web page can.  The job would create a side file.  Also:
a request with a foreign C{Host} (DNS rebinding), and clients without the
node's local token (a CLI of another user, a raw AMP client).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

from twisted.trial import unittest

from tests.integration import browser
from tests.integration.cluster import Cluster, free_tcp_port

BUDGET = 60.0
"""Seconds all the test's waits may take together."""

_ATTACK = """<!doctype html>
<html><head><meta charset="utf-8"><title>attacker</title></head>
<body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="{target}/api/jobs" enctype="text/plain" target="sink">
<input type="hidden" name='{form_name}' value='{form_value}'>
</form>
<script>
window.outcome = {{}};
const job = {job};
async function attack() {{
  try {{
    await fetch("{target}/api/jobs", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify(job)}});
    window.outcome.noCors = "sent";
  }} catch (e) {{
    window.outcome.noCors = "error: " + e;
  }}
  try {{
    const answer = await fetch("{target}/api/jobs", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify(job)}});
    window.outcome.cors = "read " + answer.status;
  }} catch (e) {{
    window.outcome.cors = "error: " + e;
  }}
  document.getElementById("form").submit();
  window.outcome.form = "submitted";
}}
attack();
</script>
</body></html>
"""


def _serve(address: str, page: bytes) -> tuple[http.server.HTTPServer, int]:
    """Serve C{page} at C{/} on C{address} (a free port) from a thread; return the server and its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer((address, 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server, server.server_address[1]


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON) of one request to the node's API on 127.0.0.1."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with browser.loopback_opener().open(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class CrossOriginTests(unittest.TestCase):
    """A page of another origin, in a real browser, against a node without a key."""

    def setUp(self) -> None:
        why = browser.missing()
        if why:
            raise unittest.SkipTest(f"the cross-origin test needs a browser: {why}")

    def test_pages_of_other_origins_cannot_submit(self) -> None:
        """
        fetch (text/plain, no-cors and cors) and a form POST to /api/jobs
        from pages on http://evil.example:P (127.0.0.2) and
        http://127.0.0.1:Q are all
        refused by the node, each logged with its reason; no job is created
        and the command never runs (its side file stays absent).  The same
        job, sent by the node's owner with its token as JSON, runs: the
        refusals, not the job, kept the file away.  A page loaded by a name
        that resolves to the node (DNS rebinding) is refused by its Host.
        """
        cluster = Cluster(self, budget=BUDGET)
        web = free_tcp_port()
        node = cluster.start("m", "--capabilities", "w", "--web", str(web))
        node.wait_for(rf"serves its dashboard, API and metrics on http://127\.0\.0\.1:{web}/$")
        side = cluster.path("pwned")
        job = {"task": [{"id": "evil", "kind": "w", "command": ["touch", side]}]}
        form_text = json.dumps(job)[:-1] + ', "x": "'
        page = _ATTACK.format(
            target=f"http://127.0.0.1:{web}",
            job=json.dumps(job),
            form_name=form_text.replace("'", "&#39;"),
            form_value='"}',
        ).encode("utf-8")

        driver = browser.start_chromium(
            cluster.path("browser"), names={"evil.example": "127.0.0.2", "rebind.example": "127.0.0.1"}
        )
        self.addCleanup(driver.quit)
        for address, name in (("127.0.0.2", "evil.example"), ("127.0.0.1", "127.0.0.1")):
            server, port = _serve(address, page)
            self.addCleanup(server.server_close)
            self.addCleanup(server.shutdown)
            before = len(node.find_all(r"\] Refused HTTP POST /api/jobs from "))
            driver.get(f"http://{name}:{port}/")
            outcome = cluster.wait_until(
                lambda: (lambda shown: shown if shown and "form" in shown else None)(
                    driver.execute_script("return window.outcome")
                ),
                lambda: f"the page did not finish its attack: {driver.execute_script('return window.outcome')}",
            )
            # The cors fetch cannot even read the refusal (no CORS headers).
            self.assertTrue(outcome["cors"].startswith("error"), outcome)
            # Three POSTs reached the node and were refused as coming from another origin.
            refusals = cluster.wait_until(
                lambda: (lambda found: found if len(found) >= before + 3 else None)(
                    node.find_all(r"\] Refused HTTP POST /api/jobs from 127\.0\.0\.\d+: (.*)$")
                ),
                lambda: f"the node did not log three refusals for {address}:{port}:\n{node.log_tail()}",
            )
            for refusal in refusals[before:]:
                self.assertIn(f"page of another site ('http://{name}:{port}')", refusal.group(1))

        status, jobs = _request(web, "GET", "/api/jobs")
        self.assertEqual((status, jobs), (200, {"jobs": []}))
        self.assertFalse(node.has(r"\] Node m is master of job "), node.log_tail())
        self.assertFalse(os.path.exists(side), "the attacker's command ran")

        # A name that resolves to the node (DNS rebinding): the browser sends that name as Host, and is refused.
        driver.get(f"http://rebind.example:{web}/api/jobs")
        shown = driver.execute_script("return document.body.innerText")
        self.assertIn("this node does not answer to the host 'rebind.example:", shown)
        self.assertNotIn('"jobs"', shown)
        status, answer = _request(web, "GET", "/api/jobs", headers={"Host": f"evil.example:{web}"})
        self.assertEqual(status, 403, answer)
        self.assertIn("evil.example", answer["error"])

        # The owner's request, with the token, as JSON: the same job runs.
        token = cluster.http_token("m")
        status, answer = _request(
            web,
            "POST",
            "/api/jobs",
            json.dumps(job).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        self.assertEqual(status, 201, answer)
        cluster.wait_until(
            lambda: os.path.exists(side) or None, lambda: f"the owner's job did not run:\n{node.log_tail()}"
        )


class OtherUserTests(unittest.TestCase):
    """Clients without the node's local token: another user's CLI, a raw AMP client, curl."""

    def test_clients_without_the_token_are_refused(self) -> None:
        """
        The p2pexec client of another user (another $XDG_STATE_HOME, so no
        runtime record and no token) cannot submit or cancel (status 2, one
        line saying why), though it can read; a raw AMP client gets
        AUTH_REQUIRED for SUBMIT_JOB and CANCEL_JOB; curl without the token
        gets 401.  Nothing runs.  The owner's client, which finds the token
        by itself, submits and cancels as before.
        """
        cluster = Cluster(self, budget=BUDGET)
        web = free_tcp_port()
        node = cluster.start("m", "--capabilities", "w", "--web", str(web))
        node.wait_for(r"\] Node m takes jobs and cancels only from its owner, who proves the local token in ")
        side = cluster.path("pwned")
        job_file = cluster.path("job.toml")
        with open(job_file, "w", encoding="utf-8") as f:
            f.write(f'[[task]]\nid = "evil"\nkind = "w"\ncommand = ["touch", {json.dumps(side)}]\n')

        def cli(environment: dict[str, str], *argv: str) -> tuple[int, str]:
            done = subprocess.run(
                [sys.executable, "-m", "p2pexec.cli", "--connect", f"127.0.0.1:{node.port}", *argv],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=cluster.folder,
                env=environment,
                timeout=cluster.deadline.bound(20),
            )
            return done.returncode, done.stdout + done.stderr

        other = dict(cluster.environment(), XDG_STATE_HOME=cluster.path("other-user-state"))
        status, output = cli(other, "submit", job_file)
        self.assertEqual(status, 2, output)
        self.assertIn(f"the node at 127.0.0.1:{node.port} refused SUBMIT_JOB: it takes it only from the user", output)
        status, output = cli(other, "jobs")
        self.assertEqual(status, 0, output)

        answer = cluster.call_remote(
            node.port,
            "SubmitJob",
            owner=False,
            tasks=[{"id": "evil", "kind": "w", "command": ["touch", side]}],
            defaults={},
            upload="",
            final=True,
        )
        self.assertEqual(answer.get("error"), "AuthRequired", answer)
        status, answer = _request(
            web,
            "POST",
            "/api/jobs",
            json.dumps({"task": [{"id": "evil", "kind": "w", "command": ["touch", side]}]}).encode(),
            {"Content-Type": "application/json"},
        )
        self.assertEqual(status, 401, answer)

        # The owner's client finds the token by itself.
        slow_file = cluster.path("slow.toml")
        with open(slow_file, "w", encoding="utf-8") as f:
            f.write('[[task]]\nid = "s1"\nkind = "w"\ncommand = ["sleep", "30"]\n')
        status, output = cli(cluster.environment(), "submit", slow_file)
        self.assertEqual(status, 0, output)
        job = output.strip().splitlines()[0]
        answer = cluster.call_remote(node.port, "CancelJob", owner=False, job=job)
        self.assertEqual(answer.get("error"), "AuthRequired", answer)
        status, output = cli(other, "cancel", job)
        self.assertEqual(status, 2, output)
        status, output = cli(cluster.environment(), "cancel", job)
        self.assertEqual(status, 0, output)
        self.assertEqual(
            len(node.find_all(r"\] Refused (SUBMIT_JOB|CANCEL_JOB) from a client at 127\.0\.0\.1:\d+: ")), 4
        )
        self.assertFalse(os.path.exists(side), "a client without the token made the node run its command")
