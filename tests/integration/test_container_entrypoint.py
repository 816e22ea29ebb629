"""
The image's entry point, C{contrib/docker/p2pexec-container}, run for real
with a stand-in C{twistd} on C{PATH}: it replaces itself with twistd (same
process, so twistd is the container's PID 1 and gets its signals), giving
the host name and its address as C{--name} and C{--interface} ahead of the
container's arguments.  No container runtime is needed.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

ENTRYPOINT = FilePath(__file__).parent().parent().parent().child("contrib").child("docker").child("p2pexec-container")

FAKE_TWISTD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_TWISTD_RECORD"], "w") as f:
    json.dump({{"pid": os.getpid(), "argv": sys.argv[1:]}}, f)
"""


class _Ended(ProcessProtocol):
    """Fires C{ended} with the exit status and what the process wrote on stderr."""

    def __init__(self) -> None:
        self.ended: Deferred[tuple[int | None, bytes]] = Deferred()
        self.err = b""

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((reason.value.exitCode, self.err))


class EntrypointTests(TestCase):
    """C{p2pexec-container} execs twistd with the container's identity and its arguments."""

    timeout = 30

    def test_execs_twistd(self) -> Deferred[None]:
        """
        twistd runs in the entry point's own process, in the foreground
        without a pid file, with --name and --interface from the host name
        ahead of the arguments given.
        """
        folder = FilePath(self.mktemp())
        folder.makedirs()
        fake = folder.child("twistd")
        fake.setContent(FAKE_TWISTD.encode("utf-8"))
        fake.chmod(0o755)
        record = folder.child("record.json")
        environment = dict(os.environ, PATH=f"{folder.path}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        environment["FAKE_TWISTD_RECORD"] = record.path
        protocol = _Ended()
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol, "/bin/sh", ["/bin/sh", ENTRYPOINT.path, "--port", "10001", "--web", "8080"], env=environment
        )
        spawned = process.pid
        name = socket.gethostname()
        address = socket.gethostbyname(name)

        def check(result: tuple[int | None, bytes]) -> None:
            status, err = result
            self.assertEqual(status, 0, err.decode("utf-8", "replace"))
            seen = json.loads(record.getContent())
            self.assertEqual(seen["pid"], spawned, "twistd did not replace the entry point's shell (no exec)")
            self.assertEqual(
                seen["argv"],
                ["--nodaemon", "--pidfile=", "--logger=p2pexec.log.observer", "p2pexec"]
                + ["--name", name, "--interface", address, "--state-dir", "/var/lib/p2pexec"]
                + ["--port", "10001", "--web", "8080"],
            )

        return protocol.ended.addCallback(check)
