"""
Outgoing connections: which peers this node dials, and keeping those
connections up.

There is one connection per pair of nodes.  The tie-break is by name: the
node whose name sorts first dials, the other waits to be dialled.  Each
dialled peer gets a L{ClientService}, which reconnects with exponential
backoff; the new connection is introduced (CONNECT_REQUEST, HANDSHAKE,
PEER_EXCHANGE) before it is used.
"""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from p2pexec import commands
from p2pexec.log import DemotingLogger, NodeLogger
from p2pexec.model import NodeInfo, ValidationError
from p2pexec.peer import PeerProtocol

log = NodeLogger()

_FATAL = (commands.ClusterMismatch, commands.VersionMismatch, commands.NameConflict)


class _QuietClientService(ClientService):
    """A L{ClientService} whose routine retry messages are debug lines."""

    _log = DemotingLogger()


def dials(me: str, peer: str) -> bool:
    """Whether the node called C{me} is the one that dials C{peer}."""
    return me < peer


class Dialer:
    """
    Keeps one outgoing connection to each peer this node is meant to dial.

    @param introduce: called with each new connection; its result (a
        Deferred or coroutine) must succeed for the connection to be used.
    """

    def __init__(
        self,
        reactor: Any,
        make_protocol: Callable[[], PeerProtocol],
        introduce: Callable[[PeerProtocol, NodeInfo], Awaitable[Any]],
        initial_delay: float = 0.25,
        max_delay: float = 30.0,
        connect_timeout: float = 5.0,
        introduce_timeout: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self._make_protocol = make_protocol
        self._introduce = introduce
        self._policy = backoffPolicy(
            initialDelay=initial_delay,
            maxDelay=max_delay,
            factor=2.0,
            jitter=lambda: random.random() * initial_delay,
        )
        self._connect_timeout = connect_timeout
        self._introduce_timeout = introduce_timeout
        self._services: dict[str, tuple[NodeInfo, ClientService]] = {}
        self._refused: dict[str, str] = {}
        self.reconnects = 0

    def __contains__(self, name: str) -> bool:
        return name in self._services

    def ensure(self, info: NodeInfo) -> None:
        """
        Dial C{info} unless a dialler for that instance runs already, or that
        instance refused us for good (another cluster or protocol version).
        """
        if self._refused.get(info.name) == info.instance:
            return
        current = self._services.get(info.name)
        if current is not None:
            if current[0].instance == info.instance and current[0].address == info.address:
                return
            self.stop(info.name)
        endpoint = TCP4ClientEndpoint(self._reactor, info.host, info.port, timeout=self._connect_timeout)
        factory = Factory.forProtocol(self._make_protocol)
        factory.noisy = False
        attempts = [0]

        def prepare(protocol: PeerProtocol) -> Deferred[None]:
            attempts[0] += 1
            if attempts[0] > 1:
                self.reconnects += 1
            introduced = Deferred.fromCoroutine(self._checked_introduce(info, protocol))
            return introduced.addTimeout(self._introduce_timeout, self._reactor, onTimeoutCancel=self._timed_out(info, protocol))

        service = _QuietClientService(
            endpoint,
            factory,
            retryPolicy=self._policy,
            clock=self._reactor,
            prepareConnection=prepare,
        )
        self._services[info.name] = (info, service)
        service.startService()

    def _timed_out(self, info: NodeInfo, protocol: PeerProtocol) -> Callable[[Any, float], Any]:
        def on_timeout(result: Any, timeout: float) -> Any:
            log.warn(
                "Node {peer} at {address} did not complete the handshake within {timeout:g}s; "
                "closing the connection and retrying",
                peer=info.name,
                address=info.address,
                timeout=timeout,
            )
            protocol.transport.loseConnection()
            return result

        return on_timeout

    async def _checked_introduce(self, info: NodeInfo, protocol: PeerProtocol) -> None:
        try:
            await self._introduce(protocol, info)
        except _FATAL as e:
            log.error(
                "Node {peer} at {address} refused our connection: {error}. Not dialling this "
                "instance of it again.",
                peer=info.name,
                address=info.address,
                error=e,
            )
            self._refused[info.name] = info.instance
            self._reactor.callLater(0, self.stop, info.name)
            protocol.transport.loseConnection()
            raise
        except (amp.RemoteAmpError, ValidationError) as e:
            log.warn(
                "Connecting to node {peer} at {address} failed: {error}; will retry",
                peer=info.name,
                address=info.address,
                error=e,
            )
            protocol.transport.loseConnection()
            raise
        except Exception:
            protocol.transport.loseConnection()
            raise

    def stop(self, name: str) -> Optional[Deferred[None]]:
        """Stop dialling C{name} and close its outgoing connection."""
        entry = self._services.pop(name, None)
        if entry is None:
            return None
        return entry[1].stopService()

    def stop_all(self) -> Deferred[list[Any]]:
        """Stop every dialler."""
        return gatherResults([self.stop(name) for name in list(self._services)])
