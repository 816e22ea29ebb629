"""
Tests for L{p2pexec.systemd}, the notify-socket client, and for how
L{p2pexec.service.NodeService} uses it.

Messages go through real C{AF_UNIX} datagram sockets, bound in a short
temporary folder (a socket path is limited to 108 bytes) or in the abstract
namespace; time is a L{Clock}.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskSpec
from p2pexec.node import NodeConfig, create_node
from p2pexec.service import NodeService
from p2pexec.systemd import SystemdNotifier, notify_address, without_notify_variables
from p2pexec.tap import Options, makeService
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

PID = 4242
"""The process id the notifiers under test believe they have."""


def text(event: dict[str, Any]) -> str:
    """The formatted message of a log event."""
    return event["log_format"].format(**event)


def warnings(events: list[dict[str, Any]]) -> list[str]:
    """The messages of the warnings among C{events}."""
    return [text(e) for e in events if e["log_level"].name == "warn"]


class Receiver:
    """
    The systemd end: a datagram socket bound to a path in a temporary
    folder, read without blocking.
    """

    def __init__(self, testcase: SynchronousTestCase, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.socket.close)
        if abstract:
            name = f"p2pexec-test-{os.getpid()}-{id(self)}"
            self.socket.bind(b"\0" + name.encode())
            self.notify_socket = "@" + name
        else:
            # Not testcase.mktemp(): its absolute path may pass the 108-byte limit.
            folder = tempfile.mkdtemp(prefix="p2pexec-notify-")
            testcase.addCleanup(shutil.rmtree, folder, True)
            self.notify_socket = os.path.join(folder, "notify")
            self.socket.bind(self.notify_socket)
        self.socket.setblocking(False)

    def received(self) -> list[bytes]:
        """Every datagram that arrived since the last call, in order."""
        datagrams = []
        while True:
            try:
                datagrams.append(self.socket.recv(65536))
            except BlockingIOError:
                return datagrams


def notifier(environ: dict[str, str], clock: Any = None, **kwargs: Any) -> SystemdNotifier:
    """A notifier on C{environ}, a L{Clock} unless told, believing its pid is L{PID}."""
    return SystemdNotifier(clock if clock is not None else Clock(), environ, getpid=lambda: PID, **kwargs)


def no_socket() -> socket.socket:
    """A socket factory for notifiers that must never send."""
    raise AssertionError("a socket was made")


class AddressTests(SynchronousTestCase):
    """L{notify_address} reads C{NOTIFY_SOCKET} as systemd writes it."""

    def test_path(self) -> None:
        """An absolute path is used as it is."""
        self.assertEqual(notify_address("/run/systemd/notify"), b"/run/systemd/notify")

    def test_abstract(self) -> None:
        """A leading C{@} names an abstract socket: it becomes a NUL byte."""
        self.assertEqual(
            notify_address("@/org/freedesktop/systemd1/notify/123"), b"\0/org/freedesktop/systemd1/notify/123"
        )

    def test_unset_or_unsupported(self) -> None:
        """Unset, empty, relative and C{vsock:} values name no socket."""
        for value in (None, "", "notify", "vsock:2:1234"):
            self.assertIsNone(notify_address(value), value)

    def test_unsupported_is_logged(self) -> None:
        """A value that names no socket this module speaks is reported once, and nothing is sent."""
        with capturedLogs() as events:
            n = notifier({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "400000"}, socket_factory=no_socket)
        self.assertFalse(n.enabled)
        self.assertFalse(n.ready("x"))
        self.assertEqual(len(warnings(events)), 1)
        self.assertIn("vsock:2:1234", warnings(events)[0])

    def test_variables_not_passed_on(self) -> None:
        """L{without_notify_variables} drops systemd's main-process variables and keeps the rest."""
        environ = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin", "HOME": "/h"}
        self.assertEqual(without_notify_variables(environ), {"PATH": "/bin", "HOME": "/h"})


class MessageTests(SynchronousTestCase):
    """Each message is one datagram with exactly the expected bytes."""

    def setUp(self) -> None:
        self.receiver = Receiver(self)
        self.notifier = notifier({"NOTIFY_SOCKET": self.receiver.notify_socket})

    def test_ready(self) -> None:
        """C{ready} sends READY=1, the status and MAINPID in one datagram."""
        self.assertTrue(self.notifier.ready("node a1 serving on 127.0.0.1:10001"))
        self.assertEqual(
            self.receiver.received(),
            [b"READY=1\nSTATUS=node a1 serving on 127.0.0.1:10001\nMAINPID=4242"],
        )

    def test_stopping(self) -> None:
        """C{stopping} sends STOPPING=1, with a status line if one is given."""
        self.notifier.stopping()
        self.notifier.stopping("node a1 leaving the cluster")
        self.assertEqual(
            self.receiver.received(),
            [b"STOPPING=1", b"STOPPING=1\nSTATUS=node a1 leaving the cluster"],
        )

    def test_status_is_one_line(self) -> None:
        """A status with line breaks is sent as one line, so it cannot smuggle in another assignment."""
        self.notifier.status("busy\nREADY=1")
        self.assertEqual(self.receiver.received(), [b"STATUS=busy READY=1"])

    def test_utf8(self) -> None:
        """Text is sent as UTF-8."""
        self.notifier.status("n\u00e9ud")
        self.assertEqual(self.receiver.received(), [b"STATUS=n\xc3\xa9ud"])

    def test_abstract_socket(self) -> None:
        """C{@name} reaches a socket bound to NUL name in the abstract namespace."""
        receiver = Receiver(self, abstract=True)
        n = notifier({"NOTIFY_SOCKET": receiver.notify_socket})
        self.assertTrue(n.stopping())
        self.assertEqual(receiver.received(), [b"STOPPING=1"])

    def test_no_notify_socket(self) -> None:
        """Without NOTIFY_SOCKET every call is a no-op: no socket, no timer, C{False}."""
        clock = Clock()
        n = notifier({"WATCHDOG_USEC": "400000"}, clock=clock, socket_factory=no_socket)
        self.assertFalse(n.enabled)
        self.assertFalse(n.ready("x"))
        self.assertFalse(n.status("x"))
        self.assertFalse(n.stopping("x"))
        self.assertFalse(n.start_watchdog())
        self.assertEqual(clock.getDelayedCalls(), [])
        n.stop_watchdog()


class WatchdogTests(SynchronousTestCase):
    """
    WATCHDOG=1 every half WATCHDOG_USEC, from the reactor's clock, while it is
    on time.  WATCHDOG_USEC is 500 ms (a ping every 0.25 s, late after
    0.125 s) unless a test says otherwise: binary fractions keep the clock's
    sums exact.
    """

    def setUp(self) -> None:
        self.receiver = Receiver(self)
        self.clock = Clock()

    def watchdog(self, **environ: str) -> SystemdNotifier:
        """A notifier with C{environ} added to NOTIFY_SOCKET (WATCHDOG_USEC 500 ms unless given)."""
        environ.setdefault("WATCHDOG_USEC", "500000")
        return notifier(dict(environ, NOTIFY_SOCKET=self.receiver.notify_socket), clock=self.clock)

    def test_interval(self) -> None:
        """WATCHDOG_USEC=400000 means a ping every 0.2 s, the first one 0.2 s after the start."""
        n = self.watchdog(WATCHDOG_USEC="400000")
        self.assertEqual(n.watchdog_interval, 0.2)
        self.assertEqual(n.late_after, 0.1)
        self.assertTrue(n.start_watchdog())
        self.clock.advance(0.19)
        self.assertEqual(self.receiver.received(), [])
        self.clock.advance(0.01)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])
        self.clock.pump([0.2] * 4)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"] * 4)

    def test_stop(self) -> None:
        """Stopped, the watchdog leaves no timer behind and sends nothing more."""
        n = self.watchdog()
        n.start_watchdog()
        self.assertTrue(n.watchdog_running)
        n.stop_watchdog()
        self.assertFalse(n.watchdog_running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1.0)
        self.assertEqual(self.receiver.received(), [])

    def test_start_twice(self) -> None:
        """Starting a running watchdog changes nothing: one timer, one ping per interval."""
        n = self.watchdog()
        self.assertTrue(n.start_watchdog())
        self.assertTrue(n.start_watchdog())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_without_watchdog_usec(self) -> None:
        """Without WATCHDOG_USEC there is no watchdog, though other messages go out."""
        n = notifier({"NOTIFY_SOCKET": self.receiver.notify_socket}, clock=self.clock)
        self.assertIsNone(n.watchdog_interval)
        self.assertFalse(n.start_watchdog())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_watchdog_usec(self) -> None:
        """A WATCHDOG_USEC that is not a positive whole number is logged, and there is no watchdog."""
        for value in ("soon", "0", "-5"):
            with capturedLogs() as events:
                n = self.watchdog(WATCHDOG_USEC=value)
            self.assertFalse(n.start_watchdog(), value)
            self.assertEqual(len(warnings(events)), 1, value)
            self.assertIn(repr(value), warnings(events)[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watchdog_pid_of_another_process(self) -> None:
        """WATCHDOG_PID naming another process turns the watchdog off (it is that process's)."""
        n = self.watchdog(WATCHDOG_PID=str(PID + 1))
        self.assertFalse(n.start_watchdog())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1.0)
        self.assertEqual(self.receiver.received(), [])

    def test_watchdog_pid_of_this_process(self) -> None:
        """WATCHDOG_PID naming this process leaves the watchdog on."""
        n = self.watchdog(WATCHDOG_PID=str(PID))
        self.assertTrue(n.start_watchdog())
        self.clock.advance(0.25)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])

    def test_a_little_late_still_pings(self) -> None:
        """A timer up to a quarter of WATCHDOG_USEC late still pings."""
        n = self.watchdog()
        n.start_watchdog()
        self.clock.advance(0.25 + 0.125)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])
        # Back on the grid: the next tick is due at 0.5 s.
        self.clock.advance(0.125)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])

    def test_too_late_skips(self) -> None:
        """
        A timer more than a quarter of WATCHDOG_USEC late sends nothing and
        logs a warning; the next tick on time pings again.
        """
        n = self.watchdog()
        n.start_watchdog()
        with capturedLogs() as events:
            self.clock.advance(0.25 + 0.1875)
        self.assertEqual(self.receiver.received(), [])
        self.assertEqual(len(warnings(events)), 1)
        self.assertIn("0.188s late", warnings(events)[0])
        self.assertIn("no WATCHDOG=1", warnings(events)[0])
        self.clock.advance(0.0625)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])

    def test_missed_intervals_skip(self) -> None:
        """A reactor stuck for several intervals sends nothing for the one late tick, then pings on time."""
        n = self.watchdog()
        n.start_watchdog()
        self.clock.advance(0.875)
        self.assertEqual(self.receiver.received(), [])
        self.clock.advance(0.125)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])

    def test_late_warnings_rate_limited(self) -> None:
        """Repeated late ticks log one warning a minute, then say how many were suppressed."""
        n = self.watchdog()
        n.start_watchdog()
        with capturedLogs() as events:
            for _ in range(3):
                self.clock.advance(0.25 + 0.1875)
                self.clock.advance(0.0625)
            self.assertEqual(len(warnings(events)), 1)
            self.clock.advance(60.0)
            self.clock.advance(0.25 + 0.1875)
        self.assertEqual(len(warnings(events)), 2)
        self.assertIn("2 more like it suppressed", warnings(events)[1])


class SendErrorTests(SynchronousTestCase):
    """A failed send is logged, at most once a minute, and never raised."""

    def test_nobody_listening(self) -> None:
        """A NOTIFY_SOCKET path with no socket behind it: C{False}, one warning, no exception."""
        folder = tempfile.mkdtemp(prefix="p2pexec-notify-")
        self.addCleanup(shutil.rmtree, folder, True)
        clock = Clock()
        n = notifier({"NOTIFY_SOCKET": os.path.join(folder, "gone")}, clock=clock)
        with capturedLogs() as events:
            self.assertFalse(n.ready("x"))
            self.assertFalse(n.stopping())
        self.assertEqual(len(warnings(events)), 1)
        self.assertIn("Could not notify systemd", warnings(events)[0])
        self.assertIn("FileNotFoundError", warnings(events)[0])

    def test_watchdog_survives_errors(self) -> None:
        """The watchdog timer keeps running when its pings cannot be sent."""
        folder = tempfile.mkdtemp(prefix="p2pexec-notify-")
        self.addCleanup(shutil.rmtree, folder, True)
        clock = Clock()
        n = notifier({"NOTIFY_SOCKET": os.path.join(folder, "gone"), "WATCHDOG_USEC": "400000"}, clock=clock)
        n.start_watchdog()
        with capturedLogs() as events:
            clock.pump([0.2] * 5)
        self.assertTrue(n.watchdog_running)
        self.assertEqual(len(warnings(events)), 1)

    def test_socket_factory_fails(self) -> None:
        """No socket to be had (out of file descriptors) is a failed send, not an exception."""

        def exhausted() -> socket.socket:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        n = notifier({"NOTIFY_SOCKET": "/run/systemd/notify"}, socket_factory=exhausted)
        with capturedLogs() as events:
            self.assertFalse(n.status("x"))
        self.assertEqual(len(warnings(events)), 1)

    def test_full_receiver_does_not_block(self) -> None:
        """A receiver that reads nothing fills up; sends then fail at once instead of blocking the reactor."""
        receiver = Receiver(self)
        n = notifier({"NOTIFY_SOCKET": receiver.notify_socket})
        for _ in range(100_000):
            if not n.status("x" * 1000):
                break
        else:
            self.fail("every send succeeded into a receiver that reads nothing")


class NodeServiceTests(SynchronousTestCase):
    """L{NodeService} tells systemd when the node serves and when it leaves, and feeds the watchdog."""

    def setUp(self) -> None:
        self.receiver = Receiver(self)
        self.network = FakeNetwork()
        host = self.network.host()
        self.node = create_node(
            NodeConfig(
                name="a1",
                port=10001,
                capabilities=frozenset({"w"}),
                tasks=(TaskSpec(id="w1", kind="w", command=("true",)),),
            ),
            host,
            FakeRunner(host, "a1", duration=5.0),
        )
        environ = {"NOTIFY_SOCKET": self.receiver.notify_socket, "WATCHDOG_USEC": "2000000"}
        self.notifier = notifier(environ, clock=host)
        self.service = NodeService(self.node, self.notifier)

    def test_ready_then_watchdog(self) -> None:
        """Once the node serves, READY=1 names it and its address; WATCHDOG=1 follows every second."""
        self.service.privilegedStartService()
        self.service.startService()
        self.network.run(0.0)
        self.assertEqual(
            self.receiver.received(),
            [b"READY=1\nSTATUS=node a1 serving on 127.0.0.1:10001\nMAINPID=4242"],
        )
        self.network.run(1.0)
        self.assertEqual(self.receiver.received(), [b"WATCHDOG=1"])

    def test_stop_order(self) -> None:
        """
        Stopping sends STOPPING=1 at once; the watchdog keeps pinging while
        the node drains its running task, and stops once it has left.
        """
        self.service.privilegedStartService()
        self.service.startService()
        self.network.run(0.5)
        self.assertEqual(self.node.worker.running, 1)
        self.receiver.received()
        stopped = self.service.stopService()
        self.assertEqual(self.receiver.received(), [b"STOPPING=1\nSTATUS=node a1 leaving the cluster"])
        self.network.run(2.0)
        self.assertNoResult(stopped)
        self.assertTrue(self.notifier.watchdog_running)
        self.assertIn(b"WATCHDOG=1", self.receiver.received())
        self.network.run(10.0)
        self.successResultOf(stopped)
        self.assertFalse(self.notifier.watchdog_running)
        self.receiver.received()
        self.network.run(5.0)
        self.assertEqual(self.receiver.received(), [])

    def test_no_ready_once_leaving(self) -> None:
        """A node told to stop before it serves never says READY=1."""
        self.service.privilegedStartService()
        self.node.stopping = True
        self.service._serving(None)
        self.assertEqual(self.receiver.received(), [])

    def test_without_notifier(self) -> None:
        """A NodeService without a notifier starts and stops as before."""
        service = NodeService(self.node)
        service.privilegedStartService()
        service.startService()
        stopped = service.stopService()
        self.network.run(10.0)
        self.successResultOf(stopped)
        self.assertEqual(self.receiver.received(), [])


class MakeServiceTests(SynchronousTestCase):
    """L{makeService} reads the notify variables only when it runs for real."""

    def test_test_reactor_ignores_environment(self) -> None:
        """Given a reactor (a test), the service's notifier ignores a NOTIFY_SOCKET in the environment."""
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET="/run/systemd/notify", WATCHDOG_USEC="1000000"))
        options = Options()
        options.parseOptions(["--name", "a1", "--port", "0", "--state-dir", self.mktemp()])
        service = makeService(options, reactor=FakeNetwork().host())
        self.assertIsInstance(service, NodeService)
        assert isinstance(service, NodeService)
        self.assertIsNotNone(service.notifier)
        assert service.notifier is not None
        self.assertFalse(service.notifier.enabled)
