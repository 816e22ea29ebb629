"""
What the connection machine's refusals say: the one log line for each
(naming the address and why), and the declared error that answers the box.
L{p2pexec.peer.PeerProtocol} performs a machine's REFUSE_* outputs (and its
closes for silence) through L{refusal}.
"""

from __future__ import annotations

from p2pexec import commands
from p2pexec.connection_states import (
    AUTH_TIMEOUT,
    INTRODUCTION_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    ConnectionEvent,
    ConnectionOutput,
)
from p2pexec.framing import bad_arguments
from p2pexec.log import NodeLogger

log = NodeLogger()

_Ev = ConnectionEvent
_Out = ConnectionOutput

CODES: dict[type[Exception], bytes] = {
    commands.AuthRequired: b"AUTH_REQUIRED",
    commands.AuthFailed: b"AUTH_FAILED",
    commands.DuplicateConnection: b"DUPLICATE_CONNECTION",
    commands.ConnectRequired: b"CONNECT_REQUIRED",
    commands.BadArguments: b"BAD_ARGUMENTS",
}
"""The declared error code of each refusal the connection machine makes."""

LOCAL_TOKEN_OUT_OF_TURN = "its AUTHENTICATE was out of turn or malformed"
PROOF_OUT_OF_TURN = "its AUTH_PROOF came out of turn"
LOCAL_TOKEN_NOT_PROVED = "it does not hold this node's local token (wrong proof)"
_LOCAL_TOKEN_ANSWERS = {
    LOCAL_TOKEN_OUT_OF_TURN: "AUTHENTICATE once, first, with a 32-byte nonce",
    PROOF_OUT_OF_TURN: "AUTH_PROOF follows AUTHENTICATE, once",
    LOCAL_TOKEN_NOT_PROVED: "wrong proof: not this node's local token",
}
"""Why a client's proof of the local token was refused (logged), and the answer it gets."""


def refusal(
    output: ConnectionOutput, event: ConnectionEvent, why: str, address: str, peer_name: str | None
) -> Exception | None:
    """
    Log the refusal C{output} of the connection machine (one line naming the
    address and why); return the error that answers the box, if any.

    @param event: the event whose outputs these are.
    @param why: what the peer did, as the caller put it.
    @param address: the other end's HOST:PORT.
    @param peer_name: the peer's name, once CONNECT_REQUEST named it.
    """
    if output is _Out.REFUSE_AUTH_REQUIRED:
        _log(address, f"it sent {why} before authenticating")
        return commands.AuthRequired("this node's cluster has a key: AUTHENTICATE first")
    if output is _Out.REFUSE_OUT_OF_TURN:
        if event in (_Ev.AUTHENTICATE, _Ev.AUTHENTICATE_MALFORMED):
            _log(address, "its AUTHENTICATE was out of turn or malformed")
            return commands.AuthFailed("AUTHENTICATE once, first, with a 32-byte nonce")
        _log(address, "its AUTH_PROOF came out of turn")
        return commands.AuthFailed("AUTH_PROOF follows AUTHENTICATE, once")
    if output is _Out.REFUSE_WRONG_PROOF:
        _log(address, "it does not hold the cluster key (wrong proof)")
        # The dialler's own failure is raised by authenticate().
        return None if event is _Ev.AUTH_FAILED else commands.AuthFailed(why)
    if output is _Out.REFUSE_LOCAL_TOKEN:
        _log(address, why)
        return commands.AuthFailed(_LOCAL_TOKEN_ANSWERS[why])
    if output is _Out.REFUSE_TOO_SLOW:
        _log(address, f"it did not authenticate within {AUTH_TIMEOUT:g}s")
    elif output is _Out.REFUSE_OVER_LIMIT:
        log.warn(
            "Refused a connection from {address}: over {limit} connections from that address",
            address=address,
            limit=MAX_CONNECTIONS_PER_ADDRESS,
        )
    elif output is _Out.REFUSE_NOT_INTRODUCED:
        if peer_name is not None:
            text = (
                f"node {peer_name} did not complete its introduction (HANDSHAKE) "
                f"within {INTRODUCTION_TIMEOUT:g}s of connecting"
            )
        else:
            text = (
                "it did not introduce itself (CONNECT_REQUEST and HANDSHAKE) or send a client "
                f"command within {INTRODUCTION_TIMEOUT:g}s of connecting"
            )
        log.warn("Closed the connection from {address}: {why}", address=address, why=text)
    elif output is _Out.CLOSE_IDLE_CLIENT:
        log.info("Closed the connection from {address}: {why}", address=address, why=why)
    elif output is _Out.REFUSE_DUPLICATE:
        return commands.DuplicateConnection("this connection is already introduced")
    elif output is _Out.REFUSE_CONNECT_FIRST:
        if event is _Ev.HANDSHAKE:
            return commands.ConnectRequired("CONNECT_REQUEST must be the first command on a connection")
        return commands.ConnectRequired("CONNECT_REQUEST and HANDSHAKE must come before any other command")
    elif output is _Out.REFUSE_HANDSHAKE_DONE:
        return bad_arguments(
            f"{peer_name or 'unknown node'} at {address}", "HANDSHAKE", ValueError("the handshake is already complete")
        )
    else:  # pragma: no cover - every output is handled above
        raise AssertionError(f"no way to perform {output.name}")
    return None


def _log(address: str, why: str) -> None:
    log.warn("Refused the connection from {address}: {why}", address=address, why=why)
