"""
The AMP protocol spoken between two nodes, and its responders.

L{PeerProtocol} only translates between AMP boxes and calls on an
L{IPeerHandler} (the node).  It holds one piece of state: who is on the other
end, once CONNECT_REQUEST has been answered.  Every refusal is a declared
error, so a bad box is answered and logged and the connection stays up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from p2pexec import commands
from p2pexec.auth import ChallengeResponse, authenticate, tls_binding
from p2pexec.interfaces import IPeerHandler
from p2pexec.log import NodeLogger
from p2pexec.model import NodeInfo, ValidationError, shorten, validate_name

log = NodeLogger()


MAX_BOX_BYTES = 4 * 1024 * 1024
"""The most bytes of keys and values one AMP box may carry (AMP caps each value at 64 KiB, not the box)."""

MAX_CONNECTIONS_PER_ADDRESS = 64
"""The most connections a node keeps open from one remote address."""

AUTH_TIMEOUT = 10.0
"""Seconds a connection of a cluster with a key has to authenticate before it is closed."""

INTRODUCTION_TIMEOUT = 30.0
"""
Seconds a connection this node accepted has, from the moment it was made, to
complete its introduction (CONNECT_REQUEST and HANDSHAKE), unless it is a
client's connection (see L{CLIENT_IDLE_TIMEOUT}); the dialler's own limit is
the same (L{p2pexec.connections.Dialer}).
"""

CLIENT_IDLE_TIMEOUT = 60.0
"""
Seconds a client's connection (one that sent a client command, and no
CONNECT_REQUEST) may stay silent, while none of its commands is being
answered, before the node closes it.  C{p2pexec watch} asks every half
second, so only an abandoned client gets there.
"""

_AUTH_COMMANDS = (commands.Authenticate.commandName, commands.AuthProof.commandName)

CLIENT_COMMANDS = frozenset(
    command.commandName
    for command in (
        commands.SubmitJob,
        commands.ListJobs,
        commands.JobStatus,
        commands.JobTasks,
        commands.ClusterStatus,
        commands.CancelJob,
    )
)
"""The commands an operator's client sends without an introduction."""


class UnexpectedAnswer(Exception):
    """An answer box that answers no request still waiting on this connection: a protocol error."""


class PeerProtocol(amp.AMP):
    """
    One AMP connection to another node, in either direction.

    @ivar peer: the peer's description, once the handshake is done.
    @ivar peer_name: the peer's name, once CONNECT_REQUEST is done.
    @ivar dialled: whether this side opened the connection.
    @ivar leaving: whether the peer has sent DISCONNECT_REQUEST.
    @ivar last_received: when bytes last arrived (by C{clock}), for failure
        detection.
    """

    def __init__(self, handler: IPeerHandler, dialled: bool = False, clock: Any | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock
        self.last_received = clock.seconds() if clock is not None else 0.0
        self.dialled = dialled
        self.peer_name: str | None = None
        self.peer_instance: str | None = None
        self.peer: NodeInfo | None = None
        self.leaving = False
        self._lost: list[Deferred[None]] = []
        self.closed = False
        self._challenge: ChallengeResponse | None = getattr(handler, "challenge", None)
        self._local_challenge: ChallengeResponse | None = (
            getattr(handler, "local_challenge", None) if self._challenge is None else None
        )
        self.authenticated = self._challenge is None
        self.owner = self._challenge is None and self._local_challenge is None
        """Whether this side may submit and cancel: it proved the cluster key, or (without one) the local token."""
        self._nonces: tuple[bytes, bytes] | None = None
        self._auth_deadline: Any = None
        self._box_bytes = 0
        self.counted_address: str | None = None
        """The remote address this connection is counted under (see L{MAX_CONNECTIONS_PER_ADDRESS})."""
        self.client = False
        """Whether this is a client's connection: it sent a client command and no CONNECT_REQUEST."""
        self._opened_at = self.last_received
        self._answering = 0
        self._last_answered = self.last_received
        self._guard: Any = None

    # -- plumbing -----------------------------------------------------------

    def address(self) -> str:
        """HOST:PORT of the other end, or C{?}."""
        address = self.transport.getPeer() if self.transport is not None else None
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
        Find the responder for C{name}, wrapped so that a box whose arguments
        cannot be parsed is answered with BAD_ARGUMENTS instead of dropping
        the connection.
        """
        if name == b"StartTLS":
            # AMP's own STARTTLS is not part of this protocol (see --tls).
            return None
        responder = super().locateResponder(name)
        if responder is None:
            return None
        if not self.authenticated and name not in _AUTH_COMMANDS:
            return self._unauthenticated(name)

        def parsing_safely(box: amp.AmpBox) -> Any:
            if name in CLIENT_COMMANDS and self.peer_name is None and not self.dialled:
                self.client = True
            self._answering += 1
            try:
                answered = responder(box)
            except (KeyError, ValueError, TypeError, OverflowError, UnicodeDecodeError, RecursionError) as e:
                self._answer_done()
                detail = shorten(f"{name.decode('ascii', 'replace')}: malformed arguments ({_parse_error(e)})")
                log.warn("Refused a box from {peer}: {detail}", peer=self.describe(), detail=detail)
                raise amp.RemoteAmpError(b"BAD_ARGUMENTS", detail) from None
            if isinstance(answered, Deferred):
                answered.addErrback(_short_refusal)
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
        line: the node logs the events that matter, with names.  In a
        cluster with a key, the connection must authenticate within
        L{AUTH_TIMEOUT} seconds or be closed.
        """
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)
        opened = getattr(self._handler, "connection_opened", None)
        if opened is not None and not opened(self):
            log.warn(
                "Refused a connection from {address}: over {limit} connections from that address",
                address=self.address(),
                limit=MAX_CONNECTIONS_PER_ADDRESS,
            )
            self._abort()
            return
        if not self.authenticated and self._clock is not None:
            self._auth_deadline = self._clock.callLater(AUTH_TIMEOUT, self._auth_expired)
        if not self.dialled and self._clock is not None:
            # The dialler bounds its own introduction (see connections.py).
            self._opened_at = self._last_answered = self.last_received = self._clock.seconds()
            self._guard = self._clock.callLater(INTRODUCTION_TIMEOUT, self._check_silence)

    # -- connections that never introduce themselves, and idle clients ---------

    def _answer_done(self, result: Any = None) -> Any:
        """A command of the other side's has been answered (or refused): its silence counts from now."""
        self._answering -= 1
        if self._clock is not None:
            self._last_answered = self._clock.seconds()
        return result

    def _check_silence(self) -> None:
        """
        On a connection this node accepted: close it if it has not completed
        its introduction within L{INTRODUCTION_TIMEOUT} seconds of being
        made (unless it is a client's), or if it is a client's and has been
        silent for L{CLIENT_IDLE_TIMEOUT} seconds with no command of its
        being answered.  Otherwise look again when that could first be so.
        """
        self._guard = None
        if self.closed or self.peer is not None or self._clock is None:
            # A complete handshake: failure detection watches it (heartbeat.py).
            return
        now = self._clock.seconds()
        if self.client and self.peer_name is None:
            if self._answering:
                deadline = now + CLIENT_IDLE_TIMEOUT
            else:
                deadline = max(self.last_received, self._last_answered) + CLIENT_IDLE_TIMEOUT
            if now >= deadline:
                self._close_silent(
                    f"the client sent nothing for {now - max(self.last_received, self._last_answered):.0f}s "
                    f"(limit {CLIENT_IDLE_TIMEOUT:g}s)",
                    client=True,
                )
                return
        else:
            deadline = self._opened_at + INTRODUCTION_TIMEOUT
            if now >= deadline:
                if self.peer_name is not None:
                    why = (
                        f"node {self.peer_name} did not complete its introduction (HANDSHAKE) "
                        f"within {INTRODUCTION_TIMEOUT:g}s of connecting"
                    )
                else:
                    why = (
                        f"it did not introduce itself (CONNECT_REQUEST and HANDSHAKE) or send a client "
                        f"command within {INTRODUCTION_TIMEOUT:g}s of connecting"
                    )
                self._close_silent(why, client=False)
                return
        self._guard = self._clock.callLater(deadline - now, self._check_silence)

    def _close_silent(self, why: str, client: bool) -> None:
        """One line naming the address and why, then close at once (a silent peer may not read)."""
        (log.info if client else log.warn)(
            "Closed the connection from {address}: {why}", address=self.address(), why=why
        )
        self._abort()

    # -- authentication (a cluster with a key) --------------------------------

    def _unauthenticated(self, name: bytes) -> Callable[[amp.AmpBox], Any]:
        def refuse(box: amp.AmpBox) -> Any:
            self._refuse_connection(f"it sent {name.decode('ascii', 'replace')} before authenticating")
            raise amp.RemoteAmpError(b"AUTH_REQUIRED", "this node's cluster has a key: AUTHENTICATE first")

        return refuse

    def _refuse_connection(self, why: str) -> None:
        """One line naming the address and the reason, then close (after the answer goes out)."""
        if self.closed:
            return
        log.warn("Refused the connection from {address}: {why}", address=self.address(), why=why)
        if self._clock is not None:
            self._clock.callLater(0, self._close)
        else:
            self._close()

    def _auth_expired(self) -> None:
        self._auth_deadline = None
        if not self.authenticated and not self.closed:
            self._refuse_connection(f"it did not authenticate within {AUTH_TIMEOUT:g}s")

    def _authenticated(self) -> None:
        self.authenticated = True
        self.owner = True
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None

    def require_owner(self, command: str) -> None:
        """
        Without a cluster key, refuse C{command} (AUTH_REQUIRED, the
        connection kept) unless this client proved the node's local token.
        """
        if self.owner:
            return
        log.warn(
            "Refused {command} from a client at {address}: it did not prove this node's local token",
            command=command,
            address=self.address(),
        )
        raise commands.AuthRequired(
            "this node takes jobs and cancels only from its owner: AUTHENTICATE with its local token first "
            "(the p2pexec client of the user that runs the node does so by itself; see docs/security.rst)"
        )

    @commands.Authenticate.responder
    def _authenticate(self, nonce: bytes) -> dict[str, Any]:
        challenge = self._challenge or self._local_challenge
        if challenge is None:
            raise commands.AuthFailed("this node has no cluster key; it takes no AUTHENTICATE")
        if self.owner or self._nonces is not None or len(nonce) != 32:
            self._refuse_connection("its AUTHENTICATE was out of turn or malformed")
            raise commands.AuthFailed("AUTHENTICATE once, first, with a 32-byte nonce")
        mine = challenge.nonce()
        self._nonces = (nonce, mine)
        return {"nonce": mine, "proof": challenge.proof("acceptor", nonce, mine, self._own_binding())}

    def _own_binding(self) -> bytes:
        """As the acceptor: the fingerprint of the TLS certificate this node presents (empty without TLS)."""
        tls = getattr(self._handler, "tls", None)
        if tls is None or tls.identity is None or not ISSLTransport.providedBy(self.transport):
            return b""
        return tls.own_fingerprint()

    @commands.AuthProof.responder
    def _auth_proof(self, proof: bytes) -> dict[str, Any]:
        challenge = self._challenge or self._local_challenge
        if challenge is None or self._nonces is None or self.owner:
            self._refuse_connection("its AUTH_PROOF came out of turn")
            raise commands.AuthFailed("AUTH_PROOF follows AUTHENTICATE, once")
        if not challenge.check("dialler", self._nonces[0], self._nonces[1], proof, self._own_binding()):
            if self._challenge is None:
                self._refuse_connection("it does not hold this node's local token (wrong proof)")
                raise commands.AuthFailed("wrong proof: not this node's local token")
            self._refuse_connection("it does not hold the cluster key (wrong proof)")
            raise commands.AuthFailed("wrong proof: this node is in a cluster with another key")
        self._authenticated()
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
            self._refuse_connection("it does not hold the cluster key (wrong proof)")
            raise
        self._authenticated()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Dispatch one box, as AMP does, after checking that an answer
        answers a request of ours still waiting for it: AMP itself would
        fail with a bare C{KeyError} of the tag.

        @raise UnexpectedAnswer: saying what did not add up; the connection
            is then dropped (see L{dataReceived}).
        """
        key = amp.ANSWER if amp.ANSWER in box else amp.ERROR if amp.ERROR in box else None
        if key is not None:
            what = "an answer" if key == amp.ANSWER else "an error answer"
            tag = box[key].decode("ascii", "replace")
            if box[key] not in self._outstandingRequests:
                raise UnexpectedAnswer(
                    f"{what} to request {tag!r}, which this node never sent or which was answered already"
                )
            if key == amp.ERROR and (amp.ERROR_CODE not in box or amp.ERROR_DESCRIPTION not in box):
                raise UnexpectedAnswer(f"{what} to request {tag!r} without its _error_code or _error_description")
        super().ampBoxReceived(box)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse AMP framing; on bytes that are not AMP, drop the connection with
        one log line instead of a traceback.
        """
        if self.closed:
            return
        if self._clock is not None:
            self.last_received = self._clock.seconds()
        try:
            super().dataReceived(data)
        except UnexpectedAnswer as e:
            log.warn(
                "Dropped the connection with {peer}: it sent {error}",
                peer=self.describe(),
                error=shorten(str(e)),
            )
            self._close()
        except Exception as e:
            log.warn(
                "Dropped the connection with {peer}: it sent data that is not valid AMP ({error})",
                peer=self.describe(),
                error=f"{type(e).__name__}: {e}"[:200],
            )
            self._close()

    def stringReceived(self, string: bytes) -> None:
        """Count the bytes of the box being read; a box over L{MAX_BOX_BYTES} drops the connection."""
        if string:
            self._box_bytes += len(string) + 2
            if self._box_bytes > MAX_BOX_BYTES:
                log.warn(
                    "Dropped the connection with {peer}: it sent an AMP box of over {limit} bytes",
                    peer=self.describe(),
                    limit=MAX_BOX_BYTES,
                )
                self.closed = True
                self._close()
                return
        super().stringReceived(string)
        if not string:
            self._box_bytes = 0

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A key longer than AMP allows (the first bytes of HTTP or TLS, say):
        AMP closes the connection; say so in one line.
        """
        log.warn(
            "Dropped the connection with {peer}: it sent data that is not valid AMP "
            "(a key of {length} bytes; AMP keys are at most 255)",
            peer=self.describe(),
            length=length,
        )
        super().lengthLimitExceeded(length)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the handler, and anyone waiting in L{when_lost}."""
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.closed = True
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        if self._guard is not None and self._guard.active():
            self._guard.cancel()
        self._guard = None
        self._handler.connection_lost(self, reason)
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(None)

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once this connection has closed."""
        if self.closed:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._lost.append(d)
        return d

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
        if not self.authenticated:
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
        if ack["version"] != me.version:
            raise commands.VersionMismatch(
                f"node {name} answered with protocol version {ack['version']}, this node speaks {me.version}"
            )
        self.peer_name = name
        self.peer_instance = ack["instance"]
        answer = await self.callRemote(commands.Handshake, node=me.to_wire())
        info = NodeInfo.from_wire(answer["node"])
        if info.name != self.peer_name or info.instance != self.peer_instance:
            raise ValidationError(
                f"HANDSHAKE_RESPONSE describes {info.name!r}, but CONNECT_ACK came from {self.peer_name!r}"
            )
        if info.cluster != me.cluster:
            raise commands.ClusterMismatch(f"node {name} is in cluster {info.cluster!r}, not {me.cluster!r}")
        if info.version != me.version:
            raise commands.VersionMismatch(
                f"node {name} describes itself with protocol version {info.version}, not {me.version}"
            )
        self.peer = info
        self._handler.connection_ready(self, info)
        return info

    def _require_connected(self) -> str:
        if self.peer_name is None:
            raise commands.ConnectRequired("CONNECT_REQUEST must be the first command on a connection")
        return self.peer_name

    def _require_handshake(self) -> str:
        if self.peer is None:
            raise commands.ConnectRequired("CONNECT_REQUEST and HANDSHAKE must come before any other command")
        assert self.peer_name is not None
        return self.peer_name

    def _bad(self, command: str, error: Exception) -> commands.BadArguments:
        detail = shorten(f"{command}: {error}")
        log.warn(
            "Refused {command} from {peer}: {error}", command=command, peer=self.describe(), error=shorten(str(error))
        )
        return commands.BadArguments(detail)

    # -- responders ---------------------------------------------------------

    @commands.ConnectRequest.responder
    def _connect_request(self, cluster: str, name: str, instance: str, version: int) -> dict[str, Any]:
        if self.peer_name is not None or self.dialled:
            raise commands.DuplicateConnection("this connection is already introduced")
        answer = self._handler.connect_requested(self, cluster, name, instance, version)
        self.peer_name = name
        self.peer_instance = instance
        return answer

    @commands.Handshake.responder
    def _handshake(self, node: Any) -> dict[str, Any]:
        name = self._require_connected()
        if self.peer is not None:
            raise self._bad("HANDSHAKE", ValueError("the handshake is already complete"))
        try:
            info = NodeInfo.from_wire(node)
        except ValidationError as e:
            raise self._bad("HANDSHAKE", e) from None
        if info.name != name or info.instance != self.peer_instance:
            raise self._bad(
                "HANDSHAKE",
                ValueError(f"describes node {info.name!r}, but the connection is from {name!r}"),
            )
        mine = self._handler.handshake_received(self, info)
        self.peer = info
        self._handler.connection_ready(self, info)
        return {"node": mine.to_wire()}

    @commands.PeerExchange.responder
    def _peer_exchange(self, peers: Any) -> dict[str, Any]:
        self._require_handshake()
        try:
            offered = parse_peer_list(peers)
        except ValidationError as e:
            raise self._bad("PEER_EXCHANGE", e) from None
        return {"peers": self._handler.peers_offered(self, offered)}

    @commands.InstructionAssignment.responder
    def _instruction_assignment(self, job: str, master: str, master_instance: str, tasks: Any) -> dict[str, Any]:
        self._require_handshake()
        if not isinstance(tasks, list):
            raise self._bad("INSTRUCTION_ASSIGNMENT", ValueError("'tasks' must be a list"))
        try:
            accepted = self._handler.assignment_received(self, job, master, master_instance, tasks)
        except ValidationError as e:
            raise self._bad("INSTRUCTION_ASSIGNMENT", e) from None
        return {"accepted": accepted}

    @commands.ExecutionConfirmation.responder
    def _execution_confirmation(self, job: str, results: Any) -> Deferred[dict[str, Any]]:
        self._require_handshake()
        if not isinstance(results, list):
            raise self._bad("EXECUTION_CONFIRMATION", ValueError("'results' must be a list"))
        try:
            answered = self._handler.confirmation_received(self, job, results)
        except ValidationError as e:
            raise self._bad("EXECUTION_CONFIRMATION", e) from None
        return answered.addCallback(lambda counts: {"applied": counts[0], "stale": counts[1]})

    @commands.ResultQuery.responder
    def _result_query(self, job: str, tasks: Any) -> dict[str, Any]:
        self._require_handshake()
        if not isinstance(tasks, list):
            raise self._bad("RESULT_QUERY", ValueError("'tasks' must be a list"))
        try:
            return self._handler.results_queried(self, job, tasks)
        except ValidationError as e:
            raise self._bad("RESULT_QUERY", e) from None

    # Client commands: an operator's tool asks; no handshake needed.

    @commands.SubmitJob.responder
    def _submit_job(self, tasks: Any, defaults: Any, upload: str, final: bool) -> Any:
        self.require_owner("SUBMIT_JOB")
        if not isinstance(tasks, list):
            raise self._bad("SUBMIT_JOB", ValueError("'tasks' must be a list of task objects"))
        if defaults is not None and not isinstance(defaults, dict):
            raise self._bad("SUBMIT_JOB", ValueError("'defaults' must be an object"))
        return self._handler.submit_part(self, tasks, defaults, upload, final)

    @commands.ListJobs.responder
    def _list_jobs(self) -> dict[str, Any]:
        # Newest first, as many as fit in one AMP value.
        return {"jobs": next(commands.chunk(self._handler.jobs_status(), lambda job: job), [])}

    @commands.JobStatus.responder
    def _job_status(self, job: str) -> dict[str, Any]:
        return {"status": self._handler.job_status(job)}

    @commands.JobTasks.responder
    def _job_tasks(self, job: str, offset: int, limit: int) -> dict[str, Any]:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise self._bad("JOB_TASKS", ValueError("'offset' must be 0 or more and 'limit' 1 to 100000"))
        page, total = self._handler.job_tasks(job, offset=offset, limit=limit)
        for entry in page:
            for stream in ("stdout", "stderr"):
                if len(entry.get(stream) or "") > commands.CLIENT_OUTPUT_TAIL:
                    entry[stream] = entry[stream][-commands.CLIENT_OUTPUT_TAIL :]
        first: list[dict[str, Any]] = next(commands.chunk(page, lambda entry: entry), [])
        following = offset + len(first)
        return {"tasks": first, "next": following if following < total else -1}

    @commands.ClusterStatus.responder
    def _cluster_status(self) -> dict[str, Any]:
        peers = self._handler.peers_status()
        # As many peers as fit in one AMP value (the HTTP API lists them all).
        return {"node": peers[0], "peers": next(commands.chunk(peers[1:], lambda peer: peer), [])}

    @commands.NodeStatus.responder
    def _node_status(self) -> dict[str, Any]:
        self._require_handshake()
        return {"status": self._handler.node_status()}

    @commands.CancelJob.responder
    def _cancel_job(self, job: str) -> dict[str, Any]:
        # No handshake needed: an operator's client may send it.
        return {"cancelled": self._handler.cancel_requested(self, job)}

    @commands.TaskComplete.responder
    def _task_complete(self, job: str, succeeded: int, failed: int, elapsed: float) -> dict[str, Any]:
        self._require_handshake()
        self._handler.job_completed(self, job, succeeded, failed, elapsed)
        return {}

    @commands.Heartbeat.responder
    def _heartbeat(self) -> dict[str, Any]:
        self._require_handshake()
        return {}

    @commands.DisconnectRequest.responder
    def _disconnect_request(self, reason: str) -> dict[str, Any]:
        self._require_handshake()
        self.leaving = True
        self._handler.disconnect_requested(self, reason)
        return {}


def _parse_error(error: Exception) -> str:
    """Why AMP could not parse a command's arguments, in words (a missing key is a KeyError of its name)."""
    if type(error) is KeyError and error.args and isinstance(error.args[0], bytes):
        return f"the argument {error.args[0].decode('ascii', 'replace')!r} is missing"
    return f"{type(error).__name__}: {error}"


def _short_refusal(failure: Failure) -> Failure:
    """A declared refusal whose description would not fit in one AMP value is cut short."""
    # AMP has turned every declared error into a RemoteAmpError by now; an
    # undeclared one is answered UNKNOWN, without its text.
    error = failure.value
    if isinstance(error, amp.RemoteAmpError) and len(getattr(error, "description", "") or "") > 1000:
        return Failure(amp.RemoteAmpError(error.errorCode, shorten(error.description, 1000)))
    return failure


def parse_peer_list(peers: Any, limit: int = 10_000) -> list[tuple[NodeInfo, float]]:
    """
    Validate a PEER_EXCHANGE list: node objects, each with an optional
    C{age} (seconds since the sender last had evidence of that node).

    @raise ValidationError: if it is not a list of node descriptions, or is
        longer than C{limit}, or an age is not a number from 0 up.
    """
    if not isinstance(peers, list):
        raise ValidationError("'peers' must be a list")
    if len(peers) > limit:
        raise ValidationError(f"'peers' lists {len(peers)} nodes, over the limit of {limit}")
    parsed = []
    for entry in peers:
        info = NodeInfo.from_wire(entry)
        age = entry.get("age", 0.0)
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9:
            raise ValidationError(f"peer {info.name!r}: 'age' must be a number of seconds from 0 up")
        parsed.append((info, float(age)))
    return parsed


def peer_entry(info: NodeInfo, age: float) -> dict[str, Any]:
    """The PEER_EXCHANGE form of a node: its description plus an C{age}."""
    entry = info.to_wire()
    entry["age"] = round(age, 3)
    return entry


async def _nothing() -> None:
    return None
