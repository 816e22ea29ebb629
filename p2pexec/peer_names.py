"""
Seeds given by name: C{--peer NAME:PORT} where NAME resolves to several
addresses (a Kubernetes headless service, a DNS round-robin).

L{PeerNames} resolves every named seed at start and again every
C{--peer-refresh} seconds, and keeps the L{Dialer} dialling each IPv4
address of the newest answer at PORT, except this node's own: its listening
interface and port, and any address that a connection has shown to be this
node itself (by its instance, see L{Dialer.dialled_self}).  An address that
leaves the answer is no longer dialled; a connection already made through it
stays until the failure detectors or the peer end it.  A failed resolution
keeps the addresses of the last answer, and is logged once per change of
state (failing, resolving again), not once per refresh.

A seed given as an IPv4 address is not resolved here: L{p2pexec.gossip}
dials it as before.

Names are resolved with C{getaddrinfo} in the reactor's thread pool
(L{threaded_resolver}), not through C{reactor.nameResolver}: Twisted's
L{GAIResolver} calls the same C{getaddrinfo} in the same pool, but swallows
its error, and the one warning line should say why a name did not resolve
("Name or service not known" is not "Temporary failure in name resolution").
Tests give a resolver of their own.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from p2pexec.log import NodeLogger

if TYPE_CHECKING:
    from p2pexec.connections import Dialer
    from p2pexec.membership import PeerTable
    from p2pexec.model import NodeInfo

__all__ = ["DEFAULT_REFRESH", "PeerNames", "Resolve", "is_address", "threaded_resolver"]

log = NodeLogger()

DEFAULT_REFRESH = 30.0
"""Seconds between two resolutions of a named seed (C{--peer-refresh})."""

Resolve = Callable[[str], "Deferred[list[str]]"]
"""Resolves a host name to its IPv4 addresses, or fails saying why."""


def is_address(host: str) -> bool:
    """Whether C{host} is an IPv4 address (dialled as it is), not a name to resolve."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def threaded_resolver(reactor: Any) -> Resolve:
    """A L{Resolve} calling C{getaddrinfo} (IPv4, TCP) in C{reactor}'s thread pool."""

    def lookup(name: str) -> list[str]:
        try:
            answers = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            raise LookupError(e.strerror or str(e)) from None
        return sorted({str(answer[4][0]) for answer in answers})

    def resolve(name: str) -> Deferred[list[str]]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), lookup, name)

    return resolve


class _Seed:
    """One named seed: what its newest answer holds, and whether resolving it fails."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.label = f"{name}:{port}"
        self.addresses: set[str] = set()
        self.answered = False
        self.failing = False
        self.pending = False


class PeerNames:
    """
    Keeps the L{Dialer} dialling every address of every named seed (see the
    module docstring).  Started with the node (L{start}), stopped when it
    leaves (L{stop}).

    @ivar resolutions: how many resolutions were asked for.
    """

    def __init__(
        self,
        seeds: tuple[tuple[str, int], ...],
        refresh: float,
        clock: IReactorTime,
        resolve: Callable[[], Resolve],
    ) -> None:
        """
        @param seeds: every C{--peer} seed; those given by address are left alone.
        @param refresh: seconds between two resolutions of each name.
        @param resolve: gives the resolver, asked for only when a seed is a name.
        """
        self._seeds = [_Seed(host, port) for host, port in dict.fromkeys(seeds) if not is_address(host)]
        self._refresh = refresh
        self._clock = clock
        self._make_resolver = resolve
        self._resolve: Resolve | None = None
        self._loop: LoopingCall | None = None
        self.resolutions = 0

    def wire(self, me: Callable[[], NodeInfo], peers: PeerTable, dialer: Dialer) -> None:
        """Connect to how this node describes itself, its peer table and its dialer."""
        self._me = me
        self._peers = peers
        self._dialer = dialer

    @property
    def names(self) -> list[str]:
        """The named seeds, as C{NAME:PORT}."""
        return [seed.label for seed in self._seeds]

    def addresses(self, label: str) -> list[str]:
        """The addresses of the newest answer for C{NAME:PORT} (dialled or not)."""
        for seed in self._seeds:
            if seed.label == label:
                return sorted(seed.addresses)
        raise KeyError(label)

    def start(self) -> None:
        """Resolve every name now, and again every refresh interval (nothing to do without names)."""
        if not self._seeds or self._loop is not None:
            return
        self._resolve = self._make_resolver()
        for seed in self._seeds:
            log.info(
                "Node {name} will dial every address of {seed}, resolving it every {refresh:g}s",
                name=self._me().name,
                seed=seed.label,
                refresh=self._refresh,
            )
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self._refresh, now=True).addErrback(lambda f: log.failure("Resolving --peer names failed", f))

    def stop(self) -> None:
        """Resolve no more (answers still on their way are ignored)."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def refresh(self) -> None:
        """Resolve every name whose previous resolution has ended."""
        assert self._resolve is not None
        for seed in self._seeds:
            if seed.pending:
                continue
            seed.pending = True
            self.resolutions += 1
            try:
                d = self._resolve(seed.name)
            except Exception:
                d = fail(Failure())
            d.addCallbacks(self._answered, self._failed, callbackArgs=(seed,), errbackArgs=(seed,))

    def _answered(self, answer: list[str], seed: _Seed) -> None:
        seed.pending = False
        if self._loop is None:
            return
        addresses = {address for address in answer if is_address(address)}
        if not addresses:
            self._fail(seed, "it has no IPv4 address")
            return
        me = self._me()
        if seed.failing:
            seed.failing = False
            log.info("Node {name}: {seed} resolves again", name=me.name, seed=seed.label)
        if not seed.answered or addresses != seed.addresses:
            log.info(
                "Node {name}: {seed} resolves to {addresses}",
                name=me.name,
                seed=seed.label,
                addresses=", ".join(sorted(addresses, key=ipaddress.IPv4Address)),
            )
        gone = seed.addresses - addresses
        seed.addresses, seed.answered = addresses, True
        for address in sorted(gone):
            if self._dialer.retire_seed(address, seed.port):
                log.info(
                    "Node {name}: {address}:{port} left the answer for {seed}; not dialling it again",
                    name=me.name,
                    address=address,
                    port=seed.port,
                    seed=seed.name,
                )
        for address in sorted(addresses):
            if (address, seed.port) == (me.host, me.port) or self._dialer.is_own(address, seed.port):
                continue
            self._dialer.ensure_seed(
                address, seed.port, is_connected=self._peers.is_connected, connected_at=self._peers.connected_at
            )

    def _failed(self, failure: Failure, seed: _Seed) -> None:
        seed.pending = False
        if self._loop is None:
            return
        error = failure.value
        reason = str(error) if isinstance(error, LookupError) else f"{error.__class__.__name__}: {error}"
        self._fail(seed, reason)

    def _fail(self, seed: _Seed, reason: str) -> None:
        if seed.failing:
            return
        seed.failing = True
        kept = len(seed.addresses)
        log.warn(
            "Node {name} could not resolve {seed}: {reason}. Trying again every {refresh:g}s; "
            "{kept} address(es) of its last answer are still dialled",
            name=self._me().name,
            seed=seed.label,
            reason=reason,
            refresh=self._refresh,
            kept=kept,
        )
