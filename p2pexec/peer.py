"""
The AMP protocol spoken between two nodes, and its responders.

L{PeerProtocol} translates between AMP boxes and calls on an
L{IPeerHandler} (the node).  Where the connection stands (opened,
authenticating, introduced, ready, leaving, closed...) is one field,
C{connection_state}, moved only by the connection machine
(L{p2pexec.connection_states}): each box is classified into an event, and
the machine says whether it is served, refused with the connection kept,
or refused and the connection closed.  Every refusal is a declared error,
so a bad box is answered and logged.  A client's commands are answered by
L{p2pexec.client_commands.ClientCommands}, the file commands by
L{p2pexec.file_commands.FileCommands}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.auth import ChallengeResponse, authenticate, tls_binding
from p2pexec.client_commands import CLIENT_COMMANDS, ClientCommands
from p2pexec.connection_states import (
    ACCEPTED,
    AUTH_TIMEOUT,
    CLIENT_IDLE_TIMEOUT,
    DIALLED,
    INTRODUCING,
    INTRODUCTION_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    Compatibility,
    ConnectionEvent,
    ConnectionOutput,
    ConnectionState,
    accepts_input,
    compatibility,
    is_authenticated,
    is_gone,
)
from p2pexec.file_commands import FileCommands
from p2pexec.file_service import FILE_COMMANDS
from p2pexec.framing import MAX_BOX_BYTES, CheckedAMP, bad_arguments, parse_error, short_refusal
from p2pexec.interfaces import IPeerHandler
from p2pexec.log import NodeLogger
from p2pexec.model import NodeInfo, ValidationError, shorten, validate_name
from p2pexec.peer_commands import PEER_COMMANDS, PeerCommands, parse_peer_list, peer_entry
from p2pexec.refusals import CODES, LOCAL_TOKEN_NOT_PROVED, LOCAL_TOKEN_OUT_OF_TURN, PROOF_OUT_OF_TURN, refusal
from p2pexec.task_output import OutputCommands
from p2pexec.wide_io import widen

__all__ = [
    "AUTH_TIMEOUT",
    "CLIENT_IDLE_TIMEOUT",
    "INTRODUCTION_TIMEOUT",
    "MAX_BOX_BYTES",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "PeerProtocol",
    "authenticate",
    "parse_peer_list",
    "peer_entry",
]

log = NodeLogger()


_Ev = ConnectionEvent
_Out = ConnectionOutput
_St = ConnectionState

_EVENTS: dict[bytes, ConnectionEvent] = {
    commands.ConnectRequest.commandName: _Ev.CONNECT_REQUEST,
    commands.Handshake.commandName: _Ev.HANDSHAKE,
    commands.DisconnectRequest.commandName: _Ev.DISCONNECT_REQUEST,
    **{name: _Ev.CLIENT_COMMAND for name in CLIENT_COMMANDS},
    **{name: _Ev.PEER_COMMAND for name in PEER_COMMANDS},
    # A client's connection and a peer's both move files (issue 16).
    **{name: _Ev.CLIENT_COMMAND for name in FILE_COMMANDS},
}
"""The event each command is, as it arrives; AUTHENTICATE and AUTH_PROOF fire theirs once read."""

_SERVED = frozenset((_Out.SERVE, _Out.ASK_NODE, _Out.CHECK_HANDSHAKE, _Out.ANSWER_CHALLENGE, _Out.NOTIFY_LEAVING))
"""Outputs performed by the responder of the box that fired the event (they need its arguments)."""


class PeerProtocol(ClientCommands, OutputCommands, FileCommands, PeerCommands, CheckedAMP):
    """
    One AMP connection to another node (or from a client), in either direction.

    @ivar connection_state: where the connection stands (see L{ConnectionState}); only
        L{_fire} changes it.
    @ivar peer: the peer's description, once the handshake is done.
    @ivar peer_name: the peer's name, once CONNECT_REQUEST is done.
    @ivar peer_instance: the peer's instance, once CONNECT_REQUEST is done.
    @ivar dialled: whether this side opened the connection.
    @ivar owner: whether this side may submit and cancel: it proved the
        cluster key, or (without one) the node's local token.
    @ivar last_received: when bytes last arrived (by C{clock}), for failure
        detection.
    """

    def __init__(self, handler: IPeerHandler, dialled: bool = False, clock: Any | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock
        self.last_received = clock.seconds() if clock is not None else 0.0
        self.dialled = dialled
        self._table = DIALLED if dialled else ACCEPTED
        self.connection_state = self._table.initial
        self.peer_name: str | None = None
        self.peer_instance: str | None = None
        self.peer: NodeInfo | None = None
        self._lost: list[Deferred[None]] = []
        self._challenge = handler.challenge
        self._local_challenge = handler.local_challenge if self._challenge is None else None
        self.owner = self._challenge is None and self._local_challenge is None
        self._nonces: tuple[bytes, bytes] | None = None
        self._auth_deadline: IDelayedCall | None = None
        self._guard: IDelayedCall | None = None
        self._box_bytes = 0
        self._opened_at = self.last_received
        self._answering = 0
        self._last_answered = self.last_received
        self._peer_address: Any = None
        self._introducing: tuple[str, str] = ("", "")
        """(name, instance) of the peer being introduced, for L{ConnectionOutput.RECORD_PEER}."""

    # -- the state, as read by others -------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the connection has authenticated (or needed not), and is still open."""
        return is_authenticated(self.connection_state)

    @property
    def leaving(self) -> bool:
        """Whether the peer has sent DISCONNECT_REQUEST (also once the connection it left has closed)."""
        return self.connection_state is _St.LEAVING or self.connection_state is _St.LEFT

    @property
    def closed(self) -> bool:
        """Whether the connection is closed, or being closed by this node (its input is no longer read)."""
        return not accepts_input(self.connection_state)

    @property
    def client(self) -> bool:
        """Whether this is a client's connection: it sent a client command and no CONNECT_REQUEST."""
        return self.connection_state is _St.CLIENT

    # -- the machine ---------------------------------------------------------------

    def _fire(self, event: ConnectionEvent, why: str = "", reason: Failure | None = None) -> None:
        """
        Take C{event}, then perform the machine's outputs in order.  A
        refusal among them is raised last, as the declared error that
        answers the box (after a CLOSE is scheduled).

        @param why: for refusals, what the peer did (for the log line and the answer).
        @param reason: for L{ConnectionEvent.LOST}, why the connection closed.
        """
        self.connection_state, outputs = self._table.step(self.connection_state, event)
        refused_with: Exception | None = None
        for output in outputs:
            if output in _SERVED:
                continue
            refused = self._perform(output, event, why, reason)
            if refused is not None:
                refused_with = refused
        if refused_with is not None:
            # As its declared error code: it may be raised before AMP's own
            # responder wrapper (which would translate it) is reached.
            raise amp.RemoteAmpError(CODES[type(refused_with)], str(refused_with))

    def _perform(
        self, output: ConnectionOutput, event: ConnectionEvent, why: str, reason: Failure | None
    ) -> Exception | None:
        """Perform one output of the machine; return the refusal to answer with, if it is one."""
        if output is _Out.CLOSE:
            if event is _Ev.DROP or self._clock is None:
                self._close()
            else:
                # Once the answer (if any) has gone out.
                self._clock.callLater(0, self._close)
        elif output is _Out.ABORT:
            self._abort()
        elif output is _Out.START_DEADLINE:
            if self._clock is not None:
                self._auth_deadline = self._clock.callLater(AUTH_TIMEOUT, self._fire, _Ev.AUTH_DEADLINE)
        elif output is _Out.CANCEL_DEADLINE:
            _cancel(self._auth_deadline)
            self._auth_deadline = None
        elif output is _Out.START_INTRODUCTION_DEADLINE:
            if self._clock is not None:
                self._opened_at = self._last_answered = self.last_received = self._clock.seconds()
                self._guard = self._clock.callLater(INTRODUCTION_TIMEOUT, self._check_silence)
        elif output is _Out.CANCEL_INTRODUCTION_DEADLINE:
            _cancel(self._guard)
            self._guard = None
        elif output is _Out.RECORD_PEER:
            self.peer_name, self.peer_instance = self._introducing
        elif output is _Out.NOTIFY_READY:
            assert self.peer is not None
            self._handler.connection_ready(self, self.peer)
        elif output is _Out.RELEASE_ADDRESS:
            self._handler.connection_released(self)
        elif output is _Out.NOTIFY_LOST:
            self._handler.connection_lost(self, reason if reason is not None else Failure(connectionDone))
            waiting, self._lost = self._lost, []
            for d in waiting:
                d.callback(None)
        else:
            return refusal(output, event, why, self.address(), self.peer_name)
        return None

    # -- plumbing -----------------------------------------------------------

    def address(self) -> str:
        """HOST:PORT of the other end, or C{?} (known after the transport is gone, too)."""
        address = self.transport.getPeer() if self.transport is not None else self._peer_address
        if isinstance(address, (IPv4Address, IPv6Address)):
            return f"{address.host}:{address.port}"
        return "?"

    def _close(self) -> None:
        """Close the connection once what was written has gone out (nothing if it is gone already)."""
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        """Drop the connection at once, unsent data and all (nothing if it is gone already)."""
        transport = self.transport
        if transport is not None:
            cast(ITCPTransport, transport).abortConnection()

    def describe(self) -> str:
        """The peer's name and address, for log lines."""
        return f"{self.peer_name or 'unknown node'} at {self.address()}"

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Deferred] | None:
        """
        Find the responder for C{name}, after the connection machine has
        taken the command's event (which may refuse it), wrapped so that a
        box whose arguments cannot be parsed is answered with BAD_ARGUMENTS
        instead of dropping the connection.
        """
        if name == b"StartTLS":
            # AMP's own STARTTLS is not part of this protocol (see --tls).
            return None
        responder = super().locateResponder(name)
        if responder is None:
            return None
        event = _EVENTS.get(name)

        def parsing_safely(box: amp.AmpBox) -> Any:
            if event is not None:
                self._fire(event, why=name.decode("ascii", "replace"))
            self._answering += 1
            try:
                answered = responder(box)
            except (KeyError, ValueError, TypeError, OverflowError, UnicodeDecodeError, RecursionError) as e:
                self._answer_done()
                detail = shorten(f"{name.decode('ascii', 'replace')}: malformed arguments ({parse_error(e)})")
                log.warn("Refused a box from {peer}: {detail}", peer=self.describe(), detail=detail)
                raise amp.RemoteAmpError(b"BAD_ARGUMENTS", detail) from None
            if isinstance(answered, Deferred):
                answered.addErrback(short_refusal)
                answered.addBoth(self._answer_done)
            else:
                self._answer_done()
            return answered

        return parsing_safely

    def unhandledError(self, failure: Failure) -> None:
        """
        A box AMP could not answer (a refused command sent without C{_ask},
        say): one line, not a critical traceback per box.
        """
        log.warn(
            "Could not answer a box from {peer}: {error}",
            peer=self.describe(),
            error=shorten(failure.getErrorMessage() or (failure.type.__name__ if failure.type else "an error")),
        )

    def makeConnection(self, transport: Any) -> None:
        """
        Start the connection without AMP's own "connection established" info
        line: the node logs the events that matter, with names.  The node
        counts it under its address (or refuses it); in a cluster with a
        key, it must authenticate within L{AUTH_TIMEOUT} seconds or be
        closed.
        """
        self._transportPeer = self._peer_address = transport.getPeer()
        self._transportHost = transport.getHost()
        widen(transport)
        amp.BinaryBoxProtocol.makeConnection(self, transport)
        if not self._handler.connection_opened(self):
            self._fire(_Ev.OVER_LIMIT)
        elif self._challenge is not None:
            self._fire(_Ev.ADMITTED_WITH_KEY)
        else:
            self._fire(_Ev.ADMITTED)

    # -- connections that never introduce themselves, and idle clients ---------

    def _answer_done(self, result: Any = None) -> Any:
        """A command of the other side's has been answered (or refused): its silence counts from now."""
        self._answering -= 1
        if self._clock is not None:
            self._last_answered = self._clock.seconds()
        return result

    def _check_silence(self) -> None:
        """
        On a connection this node accepted: if it has not completed its
        introduction within L{INTRODUCTION_TIMEOUT} seconds of being made
        (unless it is a client's), fire L{ConnectionEvent.INTRODUCTION_DEADLINE};
        if it is a client's and has been silent for L{CLIENT_IDLE_TIMEOUT}
        seconds with no command of its being answered, fire
        L{ConnectionEvent.CLIENT_IDLE}.  Otherwise look again when that
        could first be so.
        """
        self._guard = None
        if self._clock is None or (
            self.connection_state is not _St.CLIENT and self.connection_state not in INTRODUCING
        ):
            # Ready (failure detection watches it, heartbeat.py), or closing.
            return
        now = self._clock.seconds()
        if self.connection_state is _St.CLIENT:
            quiet_since = max(self.last_received, self._last_answered)
            deadline = now + CLIENT_IDLE_TIMEOUT if self._answering else quiet_since + CLIENT_IDLE_TIMEOUT
            if now >= deadline:
                why = f"the client sent nothing for {now - quiet_since:.0f}s (limit {CLIENT_IDLE_TIMEOUT:g}s)"
                self._fire(_Ev.CLIENT_IDLE, why=why)
                return
        else:
            deadline = self._opened_at + INTRODUCTION_TIMEOUT
            if now >= deadline:
                self._fire(_Ev.INTRODUCTION_DEADLINE)
                return
        self._guard = self._clock.callLater(deadline - now, self._check_silence)

    # -- authentication ----------------------------------------------------------

    @commands.Authenticate.responder
    def _authenticate(self, nonce: bytes) -> dict[str, Any]:
        if self._challenge is None:
            if self._local_challenge is None:
                raise commands.AuthFailed("this node has no cluster key; it takes no AUTHENTICATE")
            if self.owner or self._nonces is not None or len(nonce) != 32:
                self._fire(_Ev.LOCAL_TOKEN_REFUSED, why=LOCAL_TOKEN_OUT_OF_TURN)
            challenge = self._local_challenge
        else:
            self._fire(_Ev.AUTHENTICATE if len(nonce) == 32 else _Ev.AUTHENTICATE_MALFORMED)
            challenge = self._challenge
        mine = challenge.nonce()
        self._nonces = (nonce, mine)
        return {"nonce": mine, "proof": challenge.proof("acceptor", nonce, mine, self._own_binding())}

    def _own_binding(self) -> bytes:
        """As the acceptor: the fingerprint of the TLS certificate this node presents (empty without TLS)."""
        tls = self._handler.tls
        if tls is None or tls.identity is None or not ISSLTransport.providedBy(self.transport):
            return b""
        return tls.own_fingerprint()

    def _proves(self, challenge: ChallengeResponse | None, proof: bytes) -> bool:
        """Whether C{proof} answers the nonces exchanged by AUTHENTICATE, by C{challenge}."""
        return (
            challenge is not None
            and self._nonces is not None
            and challenge.check("dialler", self._nonces[0], self._nonces[1], proof, self._own_binding())
        )

    @commands.AuthProof.responder
    def _auth_proof(self, proof: bytes) -> dict[str, Any]:
        if self._challenge is None:
            # Without a cluster key: the local token (see docs/security.rst).
            if self._local_challenge is None or self._nonces is None or self.owner:
                self._fire(_Ev.LOCAL_TOKEN_REFUSED, why=PROOF_OUT_OF_TURN)
            if not self._proves(self._local_challenge, proof):
                self._fire(_Ev.LOCAL_TOKEN_REFUSED, why=LOCAL_TOKEN_NOT_PROVED)
            self.owner = True
            return {}
        good = self._proves(self._challenge, proof)
        self._fire(
            _Ev.AUTH_PROOF_GOOD if good else _Ev.AUTH_PROOF_BAD,
            why="wrong proof: this node is in a cluster with another key",
        )
        self.owner = True
        return {}

    async def authenticate(self) -> None:
        """
        As the dialler: prove that this side holds the cluster key, and check
        that the other side does (see L{authenticate}).  A wrong proof
        closes the connection with one log line.
        """
        assert self._challenge is not None
        try:
            await authenticate(self, self._challenge, lambda: tls_binding(self.transport))
        except commands.AuthFailed:
            self._fire(_Ev.AUTH_FAILED)
            raise
        self._fire(_Ev.AUTHENTICATED_OURSELVES)
        self.owner = True

    # -- input ---------------------------------------------------------------------

    def reading(self) -> bool:
        """Whether input is read: not once this node refused or dropped the connection."""
        return accepts_input(self.connection_state)

    def drop(self) -> None:
        """It sent something that is not AMP, or a box over the limit (logged already)."""
        self._fire(_Ev.DROP)

    def dataReceived(self, data: bytes) -> None:
        """Note when bytes last arrived (for failure detection), then read them (see L{CheckedAMP})."""
        if self._clock is not None and self.reading():
            self.last_received = self._clock.seconds()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the handler, and anyone waiting in L{when_lost}."""
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self._fire(_Ev.LOST, reason=reason)

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once this connection has closed."""
        if is_gone(self.connection_state):
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._lost.append(d)
        return d

    # -- the introduction --------------------------------------------------------

    async def introduce(self, me: NodeInfo, expected: str | None = None) -> NodeInfo:
        """
        Introduce C{me} on a connection this side dialled: CONNECT_REQUEST,
        then HANDSHAKE.  On success the handler hears L{IPeerHandler.connection_ready}.

        @param expected: the name of the node we meant to dial, if known; a
            different node at that address is refused.
        @return: the peer's description.
        @raise Exception: the peer's refusal (a declared error), or
            L{ValidationError} / L{commands.VersionMismatch} /
            L{commands.ClusterMismatch} if its answers do not add up.
        """
        if self.connection_state is _St.AUTHENTICATING:
            await self.authenticate()
        ack = await self.callRemote(
            commands.ConnectRequest,
            cluster=me.cluster,
            name=me.name,
            instance=me.instance,
            version=me.version,
        )
        name = validate_name(ack["name"], "CONNECT_ACK name")
        if expected is not None and name != expected:
            raise ValidationError(f"expected node {expected!r} at this address, found {name!r}")
        if compatibility(me.cluster, me.version, me.cluster, ack["version"]) is not Compatibility.COMPATIBLE:
            raise commands.VersionMismatch(
                f"node {name} answered with protocol version {ack['version']}, this node speaks {me.version}"
            )
        self._introducing = (name, ack["instance"])
        self._fire_introducing(_Ev.CONNECT_ACKED)
        answer = await self.callRemote(commands.Handshake, node=me.to_wire())
        info = NodeInfo.from_wire(answer["node"])
        if info.name != self.peer_name or info.instance != self.peer_instance:
            raise ValidationError(
                f"HANDSHAKE_RESPONSE describes {info.name!r}, but CONNECT_ACK came from {self.peer_name!r}"
            )
        verdict = compatibility(me.cluster, me.version, info.cluster, info.version)
        if verdict is Compatibility.OTHER_VERSION:
            raise commands.VersionMismatch(
                f"node {name} describes itself with protocol version {info.version}, not {me.version}"
            )
        if verdict is Compatibility.OTHER_CLUSTER:
            raise commands.ClusterMismatch(f"node {name} is in cluster {info.cluster!r}, not {me.cluster!r}")
        self.peer = info
        self._fire_introducing(_Ev.HANDSHAKE_DONE)
        return info

    def _fire_introducing(self, event: ConnectionEvent) -> None:
        """As the dialler: take a step of the introduction, unless the connection closed meanwhile."""
        if not accepts_input(self.connection_state):
            raise ConnectionClosed("the connection closed during the introduction")
        self._fire(event)

    @commands.ConnectRequest.responder
    def _connect_request(self, cluster: str, name: str, instance: str, version: int) -> dict[str, Any]:
        # The machine has let it through (ASK_NODE): the node decides.
        answer = self._handler.connect_requested(self, cluster, name, instance, version)
        self._introducing = (name, instance)
        self._fire(_Ev.CONNECT_ACCEPTED)
        return answer

    @commands.Handshake.responder
    def _handshake(self, node: Any) -> dict[str, Any]:
        # The machine has let it through (CHECK_HANDSHAKE): CONNECT_REQUEST came first.
        try:
            info = NodeInfo.from_wire(node)
        except ValidationError as e:
            raise bad_arguments(self.describe(), "HANDSHAKE", e) from None
        if info.name != self.peer_name or info.instance != self.peer_instance:
            raise bad_arguments(
                self.describe(),
                "HANDSHAKE",
                ValueError(f"describes node {info.name!r}, but the connection is from {self.peer_name!r}"),
            )
        mine = self._handler.handshake_received(self, info)
        self.peer = info
        self._fire(_Ev.HANDSHAKE_DONE)
        return {"node": mine.to_wire()}

    @commands.DisconnectRequest.responder
    def _disconnect_request(self, reason: str) -> dict[str, Any]:
        # The machine moved to LEAVING; this is its NOTIFY_LEAVING.
        self._handler.disconnect_requested(self, reason)
        return {}


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel C{call} if it is still pending."""
    if call is not None and call.active():
        call.cancel()


async def _nothing() -> None:
    return None
