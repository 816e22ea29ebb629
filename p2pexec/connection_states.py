"""
An AMP connection between two nodes as an explicit state machine (see
L{p2pexec.fsm} and docs/state-machines.rst), and the two decisions every
connection needs: whether the other node speaks our protocol in our
cluster (L{compatibility}), and which of two connections to the same peer
stays (L{resolve_duplicate}).

A connection is opened, authenticates (in a cluster with a key), is
introduced (CONNECT_REQUEST), is ready once the HANDSHAKE is done, may be
told that the peer is leaving (DISCONNECT_REQUEST), and is closed.  The
acceptor (L{ACCEPTED}) answers the challenge and the introduction; the
dialler (L{DIALLED}) sends them.  Both share the enums below.

What arrives from the peer is classified by the caller into events: an
authentication box, CONNECT_REQUEST, HANDSHAKE, DISCONNECT_REQUEST, a
command between peers (which needs the handshake), or a client's command
(which needs only authentication).  The table then says whether it is
served, refused (with the connection kept, or closed after the answer), or
ignored.  Checks on the box's content (a nonce's length, a proof, a node
description) stay with the caller, which fires the event they amount to.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pexec.fsm import Symbol, Transitions

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


class ConnectionState(Symbol):
    """Where one connection stands."""

    OPENED = "opened"
    """The transport is made; not yet counted against its address's limit."""
    AUTHENTICATING = "authenticating"
    """In a cluster with a key: it must authenticate within the deadline; only authentication is answered."""
    CHALLENGED = "challenged"
    """(Acceptor.)  AUTHENTICATE answered with our nonce and proof; AUTH_PROOF is next."""
    AUTHENTICATED = "authenticated"
    """Authenticated (or no key): client commands are served; CONNECT_REQUEST is next."""
    CLIENT = "client"
    """(Acceptor.)  A client's connection: it sent a client command and no CONNECT_REQUEST; it stays
    while it keeps asking (it is closed after C{CLIENT_IDLE_TIMEOUT} of silence)."""
    INTRODUCED = "introduced"
    """CONNECT_REQUEST answered: the peer's name and instance are known; HANDSHAKE is next."""
    READY = "ready"
    """The handshake is done: the peer's commands are served."""
    LEAVING = "leaving"
    """The peer said DISCONNECT_REQUEST; its commands are still served until it closes."""
    REFUSED = "refused"
    """Refused at once (too many connections from its address): aborted, never counted."""
    CLOSING = "closing"
    """Dropped by this node (it sent something that is not AMP, or a box too big): input is ignored."""
    CLOSED = "closed"
    """The transport is gone."""
    LEFT = "left"
    """The transport is gone after the peer said DISCONNECT_REQUEST: it left in order (its work is not lost)."""


class ConnectionEvent(Symbol):
    """What happens on one connection."""

    ADMITTED = "admitted"
    """Counted under its address, in a cluster without a key."""
    ADMITTED_WITH_KEY = "admitted-with-key"
    """Counted under its address, in a cluster with a key."""
    OVER_LIMIT = "over-limit"
    """Its address has too many connections already."""
    AUTHENTICATE = "authenticate"
    """AUTHENTICATE arrived with a well-formed nonce (a node without a key refuses it before firing)."""
    AUTHENTICATE_MALFORMED = "authenticate-malformed"
    """AUTHENTICATE arrived with a nonce that is not 32 bytes."""
    AUTH_PROOF_GOOD = "auth-proof-good"
    """AUTH_PROOF arrived and proves the key."""
    AUTH_PROOF_BAD = "auth-proof-bad"
    """AUTH_PROOF arrived and proves nothing (a wrong proof, or no challenge to prove)."""
    AUTHENTICATED_OURSELVES = "authenticated-ourselves"
    """(Dialler.)  Our challenge-response succeeded both ways."""
    AUTH_FAILED = "auth-failed"
    """(Dialler.)  Our challenge-response failed: the acceptor's proof was wrong, or it refused ours."""
    AUTH_DEADLINE = "auth-deadline"
    """The authentication deadline passed."""
    LOCAL_TOKEN_REFUSED = "local-token-refused"
    """(A node without a cluster key.)  A client's proof of the local token was out of turn, malformed or wrong."""
    INTRODUCTION_DEADLINE = "introduction-deadline"
    """(Acceptor.)  C{INTRODUCTION_TIMEOUT} passed since it opened, and it is neither ready nor a client's."""
    CLIENT_IDLE = "client-idle"
    """(Acceptor.)  A client's connection was silent for C{CLIENT_IDLE_TIMEOUT}, none of its commands pending."""
    CONNECT_REQUEST = "connect-request"
    """CONNECT_REQUEST arrived."""
    CONNECT_ACCEPTED = "connect-accepted"
    """(Acceptor.)  The node accepted the CONNECT_REQUEST."""
    CONNECT_ACKED = "connect-acked"
    """(Dialler.)  The answer to our CONNECT_REQUEST names the expected node and version."""
    HANDSHAKE = "handshake"
    """HANDSHAKE arrived."""
    HANDSHAKE_DONE = "handshake-done"
    """The handshake checked out (as its receiver, or as the dialler reading the answer)."""
    PEER_COMMAND = "peer-command"
    """A command between nodes arrived (one that needs the handshake)."""
    CLIENT_COMMAND = "client-command"
    """A client's command arrived (one that needs only authentication)."""
    DISCONNECT_REQUEST = "disconnect-request"
    """DISCONNECT_REQUEST arrived."""
    DROP = "drop"
    """It sent something that is not AMP, or a box over the limit."""
    LOST = "lost"
    """The transport closed."""


class ConnectionOutput(Symbol):
    """What the connection (or its node) does."""

    START_DEADLINE = "start-deadline"
    """Start the authentication deadline."""
    CANCEL_DEADLINE = "cancel-deadline"
    """Cancel the authentication deadline, if it runs."""
    START_INTRODUCTION_DEADLINE = "start-introduction-deadline"
    """(Acceptor.)  Start watching the introduction (and, for a client's connection, its silence)."""
    CANCEL_INTRODUCTION_DEADLINE = "cancel-introduction-deadline"
    """(Acceptor.)  Stop watching the introduction: it is complete, or the connection is gone."""
    REFUSE_NOT_INTRODUCED = "refuse-not-introduced"
    """Log (a warning) that it did not complete its introduction in time."""
    CLOSE_IDLE_CLIENT = "close-idle-client"
    """Log (for information) that a client's connection went silent."""
    REFUSE_OVER_LIMIT = "refuse-over-limit"
    """Log that the address has too many connections."""
    ABORT = "abort"
    """Abort the transport (a refused or silent peer may not read what we would write)."""
    ANSWER_CHALLENGE = "answer-challenge"
    """Answer AUTHENTICATE with our nonce and proof; remember both nonces."""
    REFUSE_AUTH_REQUIRED = "refuse-auth-required"
    """Answer AUTH_REQUIRED: it sent a command before authenticating; log it."""
    REFUSE_OUT_OF_TURN = "refuse-out-of-turn"
    """Answer AUTH_FAILED: an authentication box out of turn, or malformed; log it."""
    REFUSE_WRONG_PROOF = "refuse-wrong-proof"
    """Answer (or log) AUTH_FAILED: it does not hold the cluster key."""
    REFUSE_LOCAL_TOKEN = "refuse-local-token"
    """Answer AUTH_FAILED: the client did not prove the node's local token (it may still read); log it."""
    REFUSE_TOO_SLOW = "refuse-too-slow"
    """Log that it did not authenticate within the deadline."""
    CLOSE = "close"
    """Close the connection once the answer has gone out."""
    ASK_NODE = "ask-node"
    """Let the node decide on the CONNECT_REQUEST (cluster, version, name, duplicates); it raises a refusal."""
    RECORD_PEER = "record-peer"
    """Remember the peer's name and instance."""
    REFUSE_DUPLICATE = "refuse-duplicate"
    """Answer DUPLICATE_CONNECTION: this connection is already introduced (or was dialled by us)."""
    REFUSE_CONNECT_FIRST = "refuse-connect-first"
    """Answer CONNECT_REQUIRED: CONNECT_REQUEST (and HANDSHAKE) must come first."""
    CHECK_HANDSHAKE = "check-handshake"
    """Check the HANDSHAKE's description (and let the node check it); fire L{ConnectionEvent.HANDSHAKE_DONE} if good."""
    REFUSE_HANDSHAKE_DONE = "refuse-handshake-done"
    """Answer BAD_ARGUMENTS: the handshake is already complete."""
    SERVE = "serve"
    """Answer the command."""
    NOTIFY_READY = "notify-ready"
    """Tell the node the connection is ready (it records it, or keeps another: see L{resolve_duplicate})."""
    NOTIFY_LEAVING = "notify-leaving"
    """Tell the node the peer is leaving."""
    RELEASE_ADDRESS = "release-address"
    """Count one connection fewer under its address."""
    NOTIFY_LOST = "notify-lost"
    """Tell the node, and whoever waits for the close, that it is closed."""


_St = ConnectionState
_Ev = ConnectionEvent
_O = ConnectionOutput

_UNAUTHENTICATED = (_St.AUTHENTICATING, _St.CHALLENGED)
_AUTHENTICATED = (_St.AUTHENTICATED, _St.INTRODUCED, _St.READY, _St.LEAVING)
_COMMANDS = (_Ev.CLIENT_COMMAND, _Ev.PEER_COMMAND, _Ev.CONNECT_REQUEST, _Ev.HANDSHAKE, _Ev.DISCONNECT_REQUEST)
_AUTH_BOXES = (_Ev.AUTHENTICATE, _Ev.AUTHENTICATE_MALFORMED, _Ev.AUTH_PROOF_GOOD, _Ev.AUTH_PROOF_BAD)
_REFUSE_AND_CLOSE = (_O.REFUSE_OUT_OF_TURN, _O.CLOSE)
_GONE_STATES = (_St.CLOSED, _St.LEFT)
_GONE = (_O.CANCEL_DEADLINE, _O.RELEASE_ADDRESS, _O.NOTIFY_LOST)

_Rows = dict[tuple[ConnectionState, ConnectionEvent], tuple[ConnectionState, tuple[ConnectionOutput, ...]]]


def _stay(
    states: Iterable[ConnectionState], events: Iterable[ConnectionEvent], outputs: tuple[ConnectionOutput, ...]
) -> _Rows:
    """Rows that keep the state and emit C{outputs}, for every state and event given."""
    events = tuple(events)
    return {(state, event): (state, outputs) for state in states for event in events}


def _common() -> _Rows:
    """The rows both sides share."""
    rows: _Rows = {
        (_St.OPENED, _Ev.ADMITTED): (_St.AUTHENTICATED, ()),
        (_St.OPENED, _Ev.ADMITTED_WITH_KEY): (_St.AUTHENTICATING, (_O.START_DEADLINE,)),
        (_St.OPENED, _Ev.OVER_LIMIT): (_St.REFUSED, (_O.REFUSE_OVER_LIMIT, _O.ABORT)),
        (_St.OPENED, _Ev.LOST): (_St.CLOSED, (_O.NOTIFY_LOST,)),
        (_St.REFUSED, _Ev.LOST): (_St.CLOSED, (_O.NOTIFY_LOST,)),
        (_St.INTRODUCED, _Ev.HANDSHAKE): (_St.INTRODUCED, (_O.CHECK_HANDSHAKE,)),
        (_St.INTRODUCED, _Ev.HANDSHAKE_DONE): (_St.READY, (_O.NOTIFY_READY,)),
        (_St.AUTHENTICATED, _Ev.HANDSHAKE): (_St.AUTHENTICATED, (_O.REFUSE_CONNECT_FIRST,)),
        (_St.READY, _Ev.HANDSHAKE): (_St.READY, (_O.REFUSE_HANDSHAKE_DONE,)),
        (_St.LEAVING, _Ev.HANDSHAKE): (_St.LEAVING, (_O.REFUSE_HANDSHAKE_DONE,)),
        (_St.READY, _Ev.DISCONNECT_REQUEST): (_St.LEAVING, (_O.NOTIFY_LEAVING,)),
        (_St.LEAVING, _Ev.DISCONNECT_REQUEST): (_St.LEAVING, (_O.NOTIFY_LEAVING,)),
        (_St.CLOSING, _Ev.LOST): (_St.CLOSED, _GONE),
        (_St.LEAVING, _Ev.LOST): (_St.LEFT, _GONE),
    }
    rows.update(_stay(_UNAUTHENTICATED, _COMMANDS, (_O.REFUSE_AUTH_REQUIRED, _O.CLOSE)))
    rows.update(_stay(_UNAUTHENTICATED, [_Ev.AUTH_DEADLINE], (_O.REFUSE_TOO_SLOW, _O.CLOSE)))
    rows.update(_stay(_AUTHENTICATED, [_Ev.CLIENT_COMMAND], (_O.SERVE,)))
    rows.update(_stay((_St.READY, _St.LEAVING), [_Ev.PEER_COMMAND], (_O.SERVE,)))
    rows.update(
        _stay(
            (_St.AUTHENTICATED, _St.INTRODUCED), [_Ev.PEER_COMMAND, _Ev.DISCONNECT_REQUEST], (_O.REFUSE_CONNECT_FIRST,)
        )
    )
    rows.update(_stay((_St.INTRODUCED, _St.READY, _St.LEAVING), [_Ev.CONNECT_REQUEST], (_O.REFUSE_DUPLICATE,)))
    rows.update(_stay(_AUTHENTICATED, _AUTH_BOXES, _REFUSE_AND_CLOSE))
    # Without a cluster key, a client may prove the node's local token (to
    # submit and cancel): that privilege is data of the connection, not a
    # state; only a failed proof shows here, as a refusal that closes.
    rows.update(_stay(_AUTHENTICATED, [_Ev.LOCAL_TOKEN_REFUSED], (_O.REFUSE_LOCAL_TOKEN, _O.CLOSE)))
    for state in _UNAUTHENTICATED + _AUTHENTICATED:
        rows[(state, _Ev.DROP)] = (_St.CLOSING, (_O.CLOSE,))
        rows.setdefault((state, _Ev.LOST), (_St.CLOSED, _GONE))
    return rows


def _ignored(
    authenticated: tuple[ConnectionState, ...] = _AUTHENTICATED,
) -> list[tuple[ConnectionState, ConnectionEvent]]:
    """The pairs both sides ignore: a deadline that outlived its need; input after this node refused or dropped it."""
    pairs = [(state, _Ev.AUTH_DEADLINE) for state in authenticated + (_St.REFUSED, _St.CLOSING) + _GONE_STATES]
    for state in (_St.REFUSED, _St.CLOSING):
        pairs.extend((state, event) for event in _COMMANDS + _AUTH_BOXES + (_Ev.DROP, _Ev.LOCAL_TOKEN_REFUSED))
    pairs.extend((state, _Ev.DROP) for state in _GONE_STATES)
    return pairs


_WATCHED = _UNAUTHENTICATED + (_St.AUTHENTICATED, _St.INTRODUCED)
"""(Acceptor.)  The states the introduction deadline closes."""

INTRODUCING = frozenset(_WATCHED)
"""(Acceptor.)  The states in which a connection must complete its introduction within L{INTRODUCTION_TIMEOUT}."""


def _ignored_accepted() -> list[tuple[ConnectionState, ConnectionEvent]]:
    """The acceptor's ignored pairs: the shared ones, and its two deadlines once they no longer apply."""
    pairs = _ignored(_AUTHENTICATED + (_St.CLIENT,))
    done = (_St.CLIENT, _St.READY, _St.LEAVING, _St.REFUSED, _St.CLOSING) + _GONE_STATES
    pairs.extend((state, _Ev.INTRODUCTION_DEADLINE) for state in done)
    pairs.extend((state, _Ev.CLIENT_IDLE) for state in (_St.REFUSED, _St.CLOSING) + _GONE_STATES)
    return pairs


def _accepted() -> _Rows:
    """
    The acceptor's rows: it answers the challenge and the CONNECT_REQUEST,
    tells a client's connection from a peer's, and closes a connection that
    does not introduce itself in time, or a client's that goes silent.
    """
    gone = (_O.CANCEL_DEADLINE, _O.CANCEL_INTRODUCTION_DEADLINE, _O.RELEASE_ADDRESS, _O.NOTIFY_LOST)
    rows = _common()
    for (state, event), (target, emitted) in list(rows.items()):
        if event is _Ev.LOST and _O.RELEASE_ADDRESS in emitted:
            rows[(state, event)] = (target, gone)
    rows.update(
        {
            (_St.OPENED, _Ev.ADMITTED): (_St.AUTHENTICATED, (_O.START_INTRODUCTION_DEADLINE,)),
            (_St.OPENED, _Ev.ADMITTED_WITH_KEY): (
                _St.AUTHENTICATING,
                (_O.START_DEADLINE, _O.START_INTRODUCTION_DEADLINE),
            ),
            (_St.INTRODUCED, _Ev.HANDSHAKE_DONE): (_St.READY, (_O.CANCEL_INTRODUCTION_DEADLINE, _O.NOTIFY_READY)),
            (_St.AUTHENTICATED, _Ev.CLIENT_COMMAND): (_St.CLIENT, (_O.SERVE,)),
            (_St.CLIENT, _Ev.CLIENT_COMMAND): (_St.CLIENT, (_O.SERVE,)),
            (_St.CLIENT, _Ev.CONNECT_REQUEST): (_St.CLIENT, (_O.ASK_NODE,)),
            (_St.CLIENT, _Ev.CONNECT_ACCEPTED): (_St.INTRODUCED, (_O.RECORD_PEER,)),
            (_St.CLIENT, _Ev.CLIENT_IDLE): (_St.CLOSING, (_O.CLOSE_IDLE_CLIENT, _O.ABORT)),
            (_St.CLIENT, _Ev.DROP): (_St.CLOSING, (_O.CLOSE,)),
            (_St.CLIENT, _Ev.LOST): (_St.CLOSED, gone),
            (_St.AUTHENTICATING, _Ev.AUTHENTICATE): (_St.CHALLENGED, (_O.ANSWER_CHALLENGE,)),
            (_St.CHALLENGED, _Ev.AUTH_PROOF_GOOD): (_St.AUTHENTICATED, (_O.CANCEL_DEADLINE,)),
            (_St.CHALLENGED, _Ev.AUTH_PROOF_BAD): (_St.CHALLENGED, (_O.REFUSE_WRONG_PROOF, _O.CLOSE)),
            (_St.AUTHENTICATED, _Ev.CONNECT_REQUEST): (_St.AUTHENTICATED, (_O.ASK_NODE,)),
            (_St.AUTHENTICATED, _Ev.CONNECT_ACCEPTED): (_St.INTRODUCED, (_O.RECORD_PEER,)),
        }
    )
    rows.update(
        _stay(
            [_St.AUTHENTICATING],
            [_Ev.AUTHENTICATE_MALFORMED, _Ev.AUTH_PROOF_GOOD, _Ev.AUTH_PROOF_BAD],
            _REFUSE_AND_CLOSE,
        )
    )
    rows.update(_stay([_St.CHALLENGED], [_Ev.AUTHENTICATE, _Ev.AUTHENTICATE_MALFORMED], _REFUSE_AND_CLOSE))
    rows.update(
        _stay([_St.CLIENT], [_Ev.PEER_COMMAND, _Ev.HANDSHAKE, _Ev.DISCONNECT_REQUEST], (_O.REFUSE_CONNECT_FIRST,))
    )
    rows.update(_stay([_St.CLIENT], _AUTH_BOXES, _REFUSE_AND_CLOSE))
    rows.update(_stay([_St.CLIENT], [_Ev.LOCAL_TOKEN_REFUSED], (_O.REFUSE_LOCAL_TOKEN, _O.CLOSE)))
    for state in _WATCHED:
        rows[(state, _Ev.INTRODUCTION_DEADLINE)] = (_St.CLOSING, (_O.REFUSE_NOT_INTRODUCED, _O.ABORT))
    return rows


def _dialled() -> _Rows:
    """The dialler's rows: it sends the challenge and the CONNECT_REQUEST."""
    # The acceptor does not challenge the dialler: no CHALLENGED state here;
    # and the dialler bounds its own introduction (see p2pexec.connections).
    rows = {pair: row for pair, row in _common().items() if pair[0] is not _St.CHALLENGED}
    rows.update(
        {
            (_St.AUTHENTICATING, _Ev.AUTHENTICATED_OURSELVES): (_St.AUTHENTICATED, (_O.CANCEL_DEADLINE,)),
            (_St.AUTHENTICATING, _Ev.AUTH_FAILED): (_St.AUTHENTICATING, (_O.REFUSE_WRONG_PROOF, _O.CLOSE)),
            (_St.AUTHENTICATED, _Ev.CONNECT_REQUEST): (_St.AUTHENTICATED, (_O.REFUSE_DUPLICATE,)),
            (_St.AUTHENTICATED, _Ev.CONNECT_ACKED): (_St.INTRODUCED, (_O.RECORD_PEER,)),
        }
    )
    rows.update(_stay([_St.AUTHENTICATING], _AUTH_BOXES, _REFUSE_AND_CLOSE))
    return rows


ACCEPTED: Transitions[ConnectionState, ConnectionEvent, ConnectionOutput] = Transitions(
    "accepted connection",
    ConnectionState,
    ConnectionEvent,
    ConnectionOutput,
    initial=_St.OPENED,
    table=_accepted(),
    ignored=_ignored_accepted(),
)
"""A connection another node (or a client) opened to this one."""

DIALLED: Transitions[ConnectionState, ConnectionEvent, ConnectionOutput] = Transitions(
    "dialled connection",
    ConnectionState,
    ConnectionEvent,
    ConnectionOutput,
    initial=_St.OPENED,
    table=_dialled(),
    ignored=_ignored(),
)
"""A connection this node opened to another."""


_PAST_AUTHENTICATION = frozenset(_AUTHENTICATED + (_St.CLIENT,))


def is_authenticated(state: ConnectionState) -> bool:
    """Whether a connection in C{state} has authenticated (or needed not) and is still open."""
    return state in _PAST_AUTHENTICATION


def accepts_input(state: ConnectionState) -> bool:
    """Whether bytes arriving in C{state} are parsed (not after this node refused or dropped the connection)."""
    return state not in (_St.REFUSED, _St.CLOSING, _St.CLOSED, _St.LEFT)


def is_gone(state: ConnectionState) -> bool:
    """Whether the transport of a connection in C{state} is gone."""
    return state in _GONE_STATES


# -- the two decisions --------------------------------------------------------


class Compatibility(Symbol):
    """Whether another node can join this one's cluster."""

    COMPATIBLE = "compatible"
    """Same protocol version, same cluster."""
    OTHER_VERSION = "other-version"
    """It speaks another protocol version (checked first: the rest may mean something else there)."""
    OTHER_CLUSTER = "other-cluster"
    """Same version, another cluster."""


def compatibility(my_cluster: str, my_version: int, cluster: str, version: int) -> Compatibility:
    """
    The one cluster and version check, for a discovery datagram, a
    CONNECT_REQUEST, a CONNECT_ACK, a HANDSHAKE and its answer alike.
    """
    if version != my_version:
        return Compatibility.OTHER_VERSION
    if cluster != my_cluster:
        return Compatibility.OTHER_CLUSTER
    return Compatibility.COMPATIBLE


def dials(me: str, peer: str) -> bool:
    """Whether the node called C{me} is the one that dials C{peer} (the lower name dials)."""
    return me < peer


class Duplicate(Symbol):
    """What becomes of a new connection to a peer that has one already."""

    KEEP_OLD = "keep-old"
    """Both sides dialled at once: the connection dialled by the lower name stays, on both sides; the new one goes."""
    REPLACE_MOVED = "replace-moved"
    """The same process dialled again (it lost the old one): the new one stays; what was in flight on the
    old one is handed out again, not counted as a loss."""
    REPLACE_RESTARTED = "replace-restarted"
    """Another process of that name (it restarted): the new one stays; the old one's tasks count as lost."""


def resolve_duplicate(me: str, peer: str, same_process: bool, old_dialled: bool, new_dialled: bool) -> Duplicate:
    """
    The one tie-break between two connections to the same peer, decided the
    same way on both sides: when both belong to the same process of the
    peer, and the old one was dialled by the lower name and the new one by
    the higher, the old one stays; otherwise the new one (whoever dials
    again while the old connection seems alive knows better: it lost it).

    The acceptor asks it when CONNECT_REQUEST arrives (C{new_dialled} is
    false), to refuse a new connection early with DUPLICATE_CONNECTION; both
    sides ask it when a handshake completes, to close the loser.

    @param same_process: whether the old connection's peer instance is the
        new one's.
    @param old_dialled: whether this node dialled the old connection.
    @param new_dialled: whether this node dialled the new one.
    """
    lower_dials = dials(me, peer)
    if same_process and old_dialled == lower_dials and new_dialled != lower_dials:
        return Duplicate.KEEP_OLD
    return Duplicate.REPLACE_MOVED if same_process else Duplicate.REPLACE_RESTARTED
