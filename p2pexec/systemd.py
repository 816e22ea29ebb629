"""
Talking to systemd's notify socket, as C{sd_notify(3)} does, without
libsystemd.

Under C{Type=notify} systemd puts the address of a datagram socket in
C{NOTIFY_SOCKET}, and each message is one C{AF_UNIX} C{SOCK_DGRAM} datagram
of newline-separated C{KEY=value} assignments: C{READY=1} once the node
serves, C{STOPPING=1} when it starts to leave, C{STATUS=...} for
C{systemctl status}, and C{WATCHDOG=1} every half C{WATCHDOG_USEC} when
C{WatchdogSec=} is set.

The watchdog pings come from a reactor timer, so they stop when the reactor
is stuck.  A ping whose timer fires more than a quarter of C{WATCHDOG_USEC}
late is skipped as well: a reactor that only barely turns then gets no more
pings, and systemd restarts the node.  Pings that are sent are therefore
never more than three quarters of C{WATCHDOG_USEC} apart.

Without C{NOTIFY_SOCKET} (not under systemd, or C{Type=simple}) every call
is a no-op.  A failed send is logged (at most once a minute) and never
raised: the node does not stop because systemd does not listen.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from p2pexec.log import NodeLogger, RateLimitedLog

log = NodeLogger()

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""The environment variables systemd sets for the main process alone."""

LATE_FRACTION = 0.25
"""A watchdog timer that fires later than this fraction of C{WATCHDOG_USEC} sends nothing."""


def unix_datagram_socket() -> socket.socket:
    """A new C{AF_UNIX} C{SOCK_DGRAM} socket (close-on-exec, as Python makes every socket)."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


def notify_address(value: str | None) -> bytes | None:
    """
    The socket address named by a C{NOTIFY_SOCKET} value.

    @param value: an absolute path, or C{@name} for the abstract socket
        C{NUL name}; C{None} or empty when there is no notify socket.
    @return: the address as bytes for C{sendto}, or C{None} if C{value} is
        unset, empty or of a kind this module does not speak (such as
        systemd's C{vsock:} addresses).
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def without_notify_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """
    A copy of C{environ} without L{NOTIFY_VARIABLES}, for the processes the
    node starts: they are meant for the main process only, as
    C{sd_notify(unset_environment=1)} has it.
    """
    return {key: value for key, value in environ.items() if key not in NOTIFY_VARIABLES}


def _one_line(text: str) -> str:
    """C{text} with line breaks made spaces, so that it stays one assignment."""
    return " ".join(text.splitlines())


class SystemdNotifier:
    """
    Sends C{sd_notify} messages to the socket named in the environment, and
    keeps systemd's watchdog fed while the reactor turns.

    @ivar address: the notify socket's address (a leading NUL byte for an
        abstract socket), or C{None}: then every call is a no-op.
    @ivar watchdog_interval: seconds between two C{WATCHDOG=1}, half of
        C{WATCHDOG_USEC}; C{None} without a usable C{WATCHDOG_USEC}.
    @ivar late_after: seconds a watchdog timer may fire late and still ping,
        a quarter of C{WATCHDOG_USEC}; C{None} without a watchdog.
    """

    def __init__(
        self,
        clock: IReactorTime,
        environ: Mapping[str, str],
        socket_factory: Callable[[], socket.socket] = unix_datagram_socket,
        getpid: Callable[[], int] = os.getpid,
    ) -> None:
        """
        @param clock: the reactor's clock; the watchdog timer runs on it.
        @param environ: the process environment (C{os.environ}), read once here.
        @param socket_factory: makes the datagram socket each message goes out on.
        @param getpid: this process's id, asked when it is needed (twistd
            may fork between building the service and starting it).
        """
        self._clock = clock
        self._socket_factory = socket_factory
        self._getpid = getpid
        self._complaints = RateLimitedLog(log, clock)
        self._loop: LoopingCall | None = None
        self._due = 0.0
        raw_address = environ.get("NOTIFY_SOCKET")
        self.address = notify_address(raw_address)
        if raw_address and self.address is None:
            log.warn(
                "NOTIFY_SOCKET={address!r} is neither a path nor an @abstract name: not notifying systemd",
                address=raw_address,
            )
        self._watchdog_pid = environ.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        self.late_after: float | None = None
        usec = environ.get("WATCHDOG_USEC")
        if usec and self.address is not None:
            try:
                microseconds = int(usec)
            except ValueError:
                microseconds = 0
            if microseconds > 0:
                self.watchdog_interval = microseconds / 2e6
                self.late_after = microseconds * LATE_FRACTION / 1e6
            else:
                log.warn("WATCHDOG_USEC={value!r} is not a positive whole number: no watchdog pings", value=usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to."""
        return self.address is not None

    @property
    def watchdog_running(self) -> bool:
        """Whether the watchdog timer runs."""
        return self._loop is not None and self._loop.running

    def send(self, *assignments: str) -> bool:
        """
        Send C{KEY=value} assignments as one datagram, one per line.

        @return: whether the datagram went out; C{False} without a notify
            socket or when sending failed (which is logged, at most once a
            minute, and never raised).
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with self._socket_factory() as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as e:
            self._complaints.warn(
                "notify-failed",
                "systemd",
                "Could not notify systemd on NOTIFY_SOCKET ({error}); carrying on",
                error=f"{type(e).__name__}: {e}",
                message=message,
            )
            return False
        return True

    def ready(self, status: str) -> bool:
        """
        Tell systemd that start-up has finished: C{READY=1}, C{STATUS=status}
        and C{MAINPID=} this process.
        """
        return self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={self._getpid()}")

    def status(self, text: str) -> bool:
        """Set the one-line status that C{systemctl status} shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd that the node is stopping: C{STOPPING=1}, with a C{STATUS=} if given."""
        if status is None:
            return self.send("STOPPING=1")
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def start_watchdog(self) -> bool:
        """
        Send C{WATCHDOG=1} every L{watchdog_interval} seconds from a reactor
        timer, skipping a ping whose timer fires more than L{late_after} late.

        Does nothing without a notify socket or C{WATCHDOG_USEC}, when
        C{WATCHDOG_PID} names another process, or when the timer runs already.

        @return: whether the watchdog timer runs now.
        """
        interval = self.watchdog_interval
        if interval is None or self.watchdog_running:
            return self.watchdog_running
        pid = self._getpid()
        if self._watchdog_pid and self._watchdog_pid != str(pid):
            log.info(
                "WATCHDOG_PID={watchdog_pid} is not this process ({pid}): no watchdog pings",
                watchdog_pid=self._watchdog_pid,
                pid=pid,
            )
            return False
        loop = LoopingCall(self._ping)
        loop.clock = self._clock
        self._loop = loop
        loop.start(interval, now=False).addErrback(lambda f: log.failure("systemd watchdog timer failed", f))
        assert loop.starttime is not None
        self._due = loop.starttime + interval
        log.info(
            "systemd watchdog: WATCHDOG=1 every {interval:g}s while the reactor is on time",
            interval=interval,
        )
        return True

    def stop_watchdog(self) -> None:
        """Stop the watchdog timer, if it runs."""
        if self.watchdog_running:
            assert self._loop is not None
            self._loop.stop()
        self._loop = None

    def _ping(self) -> None:
        """One watchdog tick: C{WATCHDOG=1}, unless the timer fired too late."""
        now = self._clock.seconds()
        late = now - self._due
        self._due = self._next_tick(now)
        assert self.late_after is not None
        if late > self.late_after:
            self._complaints.warn(
                "watchdog-late",
                "systemd",
                "The reactor ran {late:.3f}s late (more than {limit:g}s): no WATCHDOG=1 this time; "
                "systemd restarts the node if this goes on",
                late=late,
                limit=self.late_after,
            )
            return
        self.send("WATCHDOG=1")

    def _next_tick(self, now: float) -> float:
        """
        When the L{LoopingCall} will run next, called at C{now}: it keeps to
        the grid of whole intervals from its start, skipping missed ones
        (this mirrors C{LoopingCall._scheduleFrom}).
        """
        assert self._loop is not None and self._loop.starttime is not None
        interval = self._loop.interval
        assert interval is not None
        until = interval - ((now - self._loop.starttime) % interval)
        if now == now + until:
            until = interval
        return now + until
