"""
Outgoing connections: which peers this node dials, and keeping those
connections up.

There is one connection per pair of nodes.  The tie-break is by name: the
node whose name sorts first dials, the other waits to be dialled.  Each
dialled peer gets a L{PeerLink}, which connects, introduces the connection
(CONNECT_REQUEST, then HANDSHAKE) before it is used, and reconnects with
exponential backoff after a failure or a lost connection.

(Twisted's C{ClientService} is not used: when its C{prepareConnection} step
fails it leaves the new connection open, and closing it ourselves trips its
state machine.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.connection_states import dials
from p2pexec.link_states import LINK, LinkEvent, LinkOutput, LinkState
from p2pexec.log import NodeLogger
from p2pexec.model import NodeInfo, ValidationError
from p2pexec.peer import PeerProtocol

log = NodeLogger()

UNWANTED_RECHECK = 5.0
"""Seconds before a link that is not wanted now (see L{PeerLink}) looks again."""

__all__ = ["FATAL_REFUSALS", "UNWANTED_RECHECK", "Dialer", "PeerLink", "backoff", "dials"]

Introduce = Callable[[PeerProtocol, NodeInfo | None], Coroutine[Any, Any, Any]]
"""Introduces a new connection to the peer it is meant to reach (C{None}: a seed)."""

FATAL_REFUSALS = (commands.ClusterMismatch, commands.VersionMismatch, commands.NameConflict)
"""Refusals that will not change while the peer's instance lives: stop dialling it."""


def backoff(
    initial: float, maximum: float, random_fraction: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """
    The delay before attempt number C{n}: C{min(initial * 2**n, maximum)}
    seconds, plus up to C{initial} seconds of random jitter (C{initial}
    times what C{random_fraction} returns, in [0, 1)).
    """

    def delay(failures: int) -> float:
        return min(initial * 2 ** min(failures, 64), maximum) + random_fraction() * initial

    return delay


class PeerLink:
    """
    Keeps one introduced outgoing connection to one peer instance.

    Its state is a L{LINK} machine (see L{p2pexec.link_states}): idle,
    connecting, introducing, connected (waiting for the connection to
    close), waiting (a retry or a recheck is scheduled), held (the node is
    leaving) and stopped.  Every event is fired through L{_fire}, and what
    the machine answers is done in one place, L{_perform}; the failure
    count, the attempt under way, the retry timer and the protocol are the
    data those outputs act on.
    """

    def __init__(
        self,
        reactor: Any,
        info: NodeInfo | None,
        make_protocol: Callable[[], PeerProtocol],
        introduce: Introduce,
        retry_delay: Callable[[int], float],
        connect_timeout: float,
        introduce_timeout: float,
        on_fatal: Callable[[NodeInfo | None], None],
        address: tuple[str, int] | None = None,
        wanted: Callable[[], bool] = lambda: True,
        tls_options: Any = None,
    ) -> None:
        """
        @param info: the peer to reach; C{None} for a seed address, whose
            node is not known yet.
        @param address: (host, port) to dial, when C{info} is C{None}.
        @param wanted: checked before each attempt; a link that is not
            wanted now (a seed already reached some other way) checks again
            later instead of dialling.
        """
        self._reactor = reactor
        self.info = info
        if info is not None:
            address = (info.host, info.port)
        assert address is not None
        self.host, self.port = address
        self.label = f"node {info.name}" if info is not None else "seed"
        self._wanted = wanted
        self._tls_options = tls_options
        self._make_protocol = make_protocol
        self._introduce = introduce
        self._retry_delay = retry_delay
        self._connect_timeout = connect_timeout
        self._introduce_timeout = introduce_timeout
        self._on_fatal = on_fatal
        self._machine = LINK.machine()
        self._failures = 0
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._delay = 0.0
        self._why = ""
        self._closing: Deferred[Any] | None = None
        self.protocol: PeerProtocol | None = None
        self.reached: str | None = None
        self.connections = 0

    @property
    def state(self) -> LinkState:
        """Where the link stands."""
        return self._machine.state

    def start(self) -> None:
        """Connect now (or look again later, if not wanted now)."""
        self._dial()

    def _dial(self) -> None:
        """Started, or the retry (recheck) timer fired."""
        self._retry = None
        self._fire(LinkEvent.DIAL if self._wanted() else LinkEvent.UNWANTED)

    def _fire(self, event: LinkEvent, protocol: PeerProtocol | None = None) -> None:
        """Step the machine with C{event} and do what it answers."""
        self._perform(self._machine.fire(event), protocol)

    def _perform(self, outputs: tuple[LinkOutput, ...], protocol: PeerProtocol | None) -> None:
        """Do, in order, what the link machine answered (the one place that does)."""
        for output in outputs:
            if output is LinkOutput.OPEN_CONNECTION:
                self._open_connection()
            elif output is LinkOutput.INTRODUCE:
                pass  # the attempt under way goes on with the introduction
            elif output is LinkOutput.CLOSE:
                self._close()
            elif output is LinkOutput.COUNT_FAILURE:
                self._failures += 1
            elif output is LinkOutput.RESET_FAILURES:
                self._failures = 0
            elif output is LinkOutput.SLOW_DOWN:
                # A seed is an address, not an instance: it may be fixed or
                # restarted any time, so keep trying, slowly.
                self._failures = max(self._failures, 32)
            elif output is LinkOutput.SCHEDULE_RETRY:
                self._delay = self._retry_delay(self._failures)
                self._retry = self._reactor.callLater(self._delay, self._dial)
            elif output is LinkOutput.SCHEDULE_RECHECK:
                self._retry = self._reactor.callLater(UNWANTED_RECHECK, self._dial)
            elif output is LinkOutput.CANCEL_RETRY:
                if self._retry is not None and self._retry.active():
                    self._retry.cancel()
                self._retry = None
            elif output is LinkOutput.CANCEL_ATTEMPT:
                if self._attempt is not None and not self._attempt.called:
                    self._attempt.cancel()
            elif output is LinkOutput.LOG_FAILURE or output is LinkOutput.LOG_FAILURE_QUIETLY:
                quiet = output is LinkOutput.LOG_FAILURE_QUIETLY or self._failures > 3
                (log.debug if quiet else log.warn)(
                    "Connecting to the {peer} at {address} failed ({why}); retrying in {delay:.1f}s",
                    peer=self.label,
                    address=f"{self.host}:{self.port}",
                    why=self._why,
                    delay=self._delay,
                )
            elif output is LinkOutput.LOG_REFUSED:
                self._log_refused()
            elif output is LinkOutput.REPORT_REFUSED:
                self._on_fatal(self.info)
            elif output is LinkOutput.WATCH_CONNECTION:
                assert protocol is not None
                self.connections += 1
                self.reached = protocol.peer_name
                protocol.when_lost().addCallback(self._lost, protocol)
            elif output is LinkOutput.FORGET_CONNECTION:
                if self.protocol is protocol:
                    self.protocol = None
            else:  # pragma: no cover (every output is handled above)
                raise AssertionError(output)

    def _open_connection(self) -> None:
        endpoint: Any = TCP4ClientEndpoint(self._reactor, self.host, self.port, timeout=self._connect_timeout)
        if self._tls_options is not None:
            from twisted.internet.endpoints import wrapClientTLS

            endpoint = wrapClientTLS(self._tls_options, endpoint)
        factory = Factory.forProtocol(self._make_protocol)
        factory.noisy = False
        self._attempt = Deferred.fromCoroutine(self._connect_and_introduce(endpoint, factory))
        self._attempt.addErrback(lambda f: f.trap(CancelledError))

    def _close(self) -> None:
        """Close the connection of the attempt that failed, or the live one."""
        protocol, self.protocol = self.protocol, None
        if protocol is not None and not protocol.closed and protocol.transport is not None:
            protocol.transport.loseConnection()
            self._closing = protocol.when_lost()

    def _log_refused(self) -> None:
        error = self._why
        address = f"{self.host}:{self.port}"
        if self.info is not None:
            log.error(
                "The {peer} at {address} refused our connection: {error}. Not dialling it again until it restarts.",
                peer=self.label,
                address=address,
                error=error,
            )
        elif self.state is LinkState.WAITING:
            log.error(
                "The seed at {address} refused our connection: {error}. Trying again in {delay:.0f}s.",
                address=address,
                error=error,
                delay=self._delay,
            )
        else:
            log.error(
                "The seed at {address} refused our connection: {error}. Not dialling it again: this node is leaving.",
                address=address,
                error=error,
            )

    async def _connect_and_introduce(self, endpoint: Any, factory: Any) -> None:
        try:
            protocol = await endpoint.connect(factory)
        except (CancelledError, ConnectingCancelledError):
            return
        except ConnectError as e:
            self._why = f"could not connect: {e.__class__.__name__}"
            self._fire(LinkEvent.TCP_FAILED)
            return
        self.protocol = protocol
        self._fire(LinkEvent.TCP_CONNECTED)
        if self.state is not LinkState.INTRODUCING:
            return
        introduced: Deferred[Any] = ensureDeferred(self._introduce(protocol, self.info))
        introduced.addTimeout(self._introduce_timeout, self._reactor)
        try:
            await introduced
        except FATAL_REFUSALS as e:
            self._why = str(e)
            self._fire(LinkEvent.SEED_REFUSED if self.info is None else LinkEvent.REFUSED_FOR_GOOD)
            return
        except (CancelledError, TimeoutError):
            self._why = f"no answer to the handshake within {self._introduce_timeout:g}s"
            self._fire(LinkEvent.INTRODUCTION_FAILED)
            return
        except commands.DuplicateConnection as e:
            # Already connected the other way: nothing is wrong.
            self._why = str(e)
            self._fire(LinkEvent.DUPLICATE)
            return
        except (
            amp.RemoteAmpError,
            ValidationError,
            commands.BadArguments,
            commands.ConnectRequired,
            commands.ShuttingDown,
        ) as e:
            self._why = str(e)
            self._fire(LinkEvent.INTRODUCTION_FAILED)
            return
        except Exception as e:
            self._why = f"{e.__class__.__name__}: {e}"
            self._fire(LinkEvent.INTRODUCTION_FAILED)
            return
        self._fire(LinkEvent.INTRODUCED, protocol)

    def _lost(self, _: Any, protocol: PeerProtocol) -> None:
        self._fire(LinkEvent.CONNECTION_LOST, protocol)

    def hold(self) -> None:
        """Stop reconnecting and cancel a connection attempt under way; keep a live connection."""
        self._fire(LinkEvent.HOLD)

    def stop(self) -> Deferred[None]:
        """Stop reconnecting; close the connection; fire once it is closed."""
        self._closing = None
        self._fire(LinkEvent.STOP)
        closing, self._closing = self._closing, None
        return closing if closing is not None else succeed(None)


class Dialer:
    """
    Keeps one outgoing connection to each peer this node is meant to dial.

    @param introduce: called with each new connection and the peer it is
        meant to reach; it must succeed for the connection to be used.
    @param random_fraction: the jitter of the backoff (see L{backoff}).
    @ivar reconnects: how many connections were made again after a first one.
    """

    def __init__(
        self,
        reactor: Any,
        make_protocol: Callable[[], PeerProtocol],
        introduce: Introduce,
        initial_delay: float = 0.25,
        max_delay: float = 30.0,
        connect_timeout: float = 5.0,
        introduce_timeout: float = 30.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._reactor = reactor
        self._make_protocol = make_protocol
        self._introduce = introduce
        self._policy = backoff(initial_delay, max_delay, random_fraction)
        self._connect_timeout = connect_timeout
        self._introduce_timeout = introduce_timeout
        self.tls_options: Any = None
        """Client TLS options when the cluster speaks TLS (set by the node); None for plain TCP."""
        self._links: dict[str, PeerLink] = {}
        self._refused: dict[str, str] = {}
        self._retired_reconnects = 0
        self._holding = False
        self._own: set[tuple[str, int]] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._links

    @property
    def reconnects(self) -> int:
        """How many connections were made again after a peer's first one."""
        live = sum(max(0, link.connections - 1) for link in self._links.values())
        return self._retired_reconnects + live

    def ensure(self, info: NodeInfo) -> None:
        """
        Dial C{info} unless a link to that instance runs already, or that
        instance refused us for good (another cluster or protocol version).
        """
        if self._holding or self._refused.get(info.name) == info.instance:
            return
        current = self._links.get(info.name)
        if current is not None:
            known = current.info  # links by name are to a known node; seeds are keyed "seed host:port"
            if known is not None and known.instance == info.instance and known.address == info.address:
                return
            self.stop(info.name)
        link = PeerLink(
            self._reactor,
            info,
            self._make_protocol,
            self._introduce,
            self._policy,
            self._connect_timeout,
            self._introduce_timeout,
            on_fatal=self._refused_for_good,
            tls_options=self.tls_options,
        )
        self._links[info.name] = link
        link.start()

    def ensure_seed(
        self,
        host: str,
        port: int,
        is_connected: Callable[[str], bool],
        connected_at: Callable[[str, int], bool] = lambda host, port: False,
    ) -> None:
        """
        Keep a connection to the seed address C{host:port}: dial it (with
        backoff) whenever no connection reaches the node there, as told by
        C{is_connected(name)} for the node found there before, and by
        C{connected_at(host, port)} for a node connected the other way.
        """
        key = f"seed {host}:{port}"
        if self._holding or key in self._links or (host, port) in self._own:
            return
        link: PeerLink

        def wanted() -> bool:
            if connected_at(host, port):
                return False
            return link.reached is None or not is_connected(link.reached)

        link = PeerLink(
            self._reactor,
            None,
            self._make_protocol,
            self._introduce,
            self._policy,
            self._connect_timeout,
            self._introduce_timeout,
            on_fatal=lambda info: None,
            address=(host, port),
            wanted=wanted,
            tls_options=self.tls_options,
        )
        self._links[key] = link
        link.start()

    def retire_seed(self, host: str, port: int) -> bool:
        """
        Dial the seed address C{host:port} no more, but keep a connection
        made through it (the failure detectors judge it like any other).

        @return: whether that address was dialled.
        """
        link = self._links.pop(f"seed {host}:{port}", None)
        if link is None:
            return False
        self._retired_reconnects += max(0, link.connections - 1)
        link.hold()
        return True

    def is_own(self, host: str, port: int) -> bool:
        """Whether a connection to C{host:port} was found to reach this node itself."""
        return (host, port) in self._own

    def dialled_self(self, local: tuple[str, int]) -> bool:
        """
        A CONNECT_REQUEST came from this very node (its name and instance):
        the seed link whose connection leaves from C{local} reached this node
        itself.  Stop it, and never dial that address again.

        @return: whether a seed link was found (and stopped).
        """
        for key, link in list(self._links.items()):
            protocol = link.protocol
            if link.info is not None or protocol is None or protocol.transport is None:
                continue
            here = protocol.transport.getHost()
            if (getattr(here, "host", None), getattr(here, "port", None)) != local:
                continue
            self._own.add((link.host, link.port))
            log.info(
                "The seed address {address} is this node itself (its own name and instance answered); not dialling it",
                address=f"{link.host}:{link.port}",
            )
            self.stop(key)
            return True
        return False

    def _refused_for_good(self, info: NodeInfo | None) -> None:
        if info is None:
            return
        self._refused[info.name] = info.instance
        link = self._links.get(info.name)
        if link is not None and link.info is not None and link.info.instance == info.instance:
            self.stop(info.name)

    def stop(self, name: str) -> Deferred[None]:
        """Stop dialling C{name} and close its outgoing connection."""
        link = self._links.pop(name, None)
        if link is None:
            return succeed(None)
        self._retired_reconnects += max(0, link.connections - 1)
        return link.stop()

    def hold(self) -> None:
        """
        Dial nothing more (the node is leaving): cancel retries and attempts
        under way, but keep the live connections for the goodbyes.
        """
        self._holding = True
        for link in self._links.values():
            link.hold()

    def stop_all(self) -> Deferred[list[Any]]:
        """Stop every link."""
        return gatherResults([self.stop(name) for name in list(self._links)])
