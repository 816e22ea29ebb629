"""
A L{p2pexec.connections.PeerLink} (one outgoing connection kept up to one
peer or seed) as an explicit state machine (see L{p2pexec.fsm} and
docs/state-machines.rst).

The link dials, introduces the connection, waits for it to close, and dials
again after a backoff; a refusal that will not change while the peer's
instance lives stops it for good.  Once held (the node is leaving) it
finishes what is under way, keeps a live connection for the goodbyes, and
never dials again.

The guards stay with the caller: whether the link is wanted now (a seed
already reached another way), and which refusal an introduction met
(L{LinkEvent.REFUSED_FOR_GOOD} for an instance, L{LinkEvent.SEED_REFUSED}
for a seed, L{LinkEvent.DUPLICATE} when the peer already has a connection).
Whether a failure is logged as a warning or quietly (after the third in a
row) is the caller's reading of the failure count.
"""

from __future__ import annotations

from p2pexec.fsm import Symbol, Transitions


class LinkState(Symbol):
    """Where an outgoing link stands."""

    IDLE = "idle"
    """Made, not started."""
    CONNECTING = "connecting"
    """A TCP (or TLS) connection is being made."""
    INTRODUCING = "introducing"
    """Connected; the introduction (authentication, CONNECT_REQUEST, HANDSHAKE) is under way."""
    CONNECTED = "connected"
    """Introduced; waiting for the connection to close."""
    WAITING = "waiting"
    """A retry (or a later look, while not wanted) is scheduled."""
    HELD = "held"
    """The node is leaving: no more dialling; what is under way finishes, a live connection stays."""
    STOPPED = "stopped"
    """Stopped for good (by the dialer, or refused for good)."""


class LinkEvent(Symbol):
    """What happens to a link."""

    DIAL = "dial"
    """It is started, or its retry is due, and it is wanted now."""
    UNWANTED = "unwanted"
    """It is started, or its retry is due, but it is not wanted now (a seed reached another way)."""
    TCP_CONNECTED = "tcp-connected"
    """The connection is made."""
    TCP_FAILED = "tcp-failed"
    """The connection could not be made."""
    INTRODUCED = "introduced"
    """The introduction succeeded."""
    DUPLICATE = "duplicate"
    """The peer refused the introduction because it is already connected to this node: nothing is wrong."""
    INTRODUCTION_FAILED = "introduction-failed"
    """The introduction failed or timed out (a refusal that may change, a bad answer, no answer)."""
    REFUSED_FOR_GOOD = "refused-for-good"
    """The peer's instance refused the introduction for good (another cluster, protocol version, or its name)."""
    SEED_REFUSED = "seed-refused"
    """A seed refused the introduction as for good; a seed is an address that may change, so keep trying, slowly."""
    CONNECTION_LOST = "connection-lost"
    """The introduced connection closed."""
    HOLD = "hold"
    """The node is leaving: dial nothing more; keep a live connection."""
    STOP = "stop"
    """Stop for good and close the connection."""


class LinkOutput(Symbol):
    """What the link does."""

    OPEN_CONNECTION = "open-connection"
    """Dial (through TLS when the cluster speaks it), with the connect timeout."""
    INTRODUCE = "introduce"
    """Introduce the new connection, with the introduction timeout."""
    CLOSE = "close"
    """Close the connection (of the attempt that failed, or the live one)."""
    COUNT_FAILURE = "count-failure"
    """Count one more failure in a row (the backoff grows)."""
    RESET_FAILURES = "reset-failures"
    """No failures in a row any more."""
    SLOW_DOWN = "slow-down"
    """Back off as after many failures (a refusing seed is retried slowly)."""
    SCHEDULE_RETRY = "schedule-retry"
    """Schedule the next L{LinkEvent.DIAL} after the backoff for the failure count."""
    SCHEDULE_RECHECK = "schedule-recheck"
    """Look again after the fixed recheck delay."""
    CANCEL_RETRY = "cancel-retry"
    """Cancel a scheduled retry."""
    CANCEL_ATTEMPT = "cancel-attempt"
    """Cancel the connection attempt under way."""
    LOG_FAILURE = "log-failure"
    """Log the failure and the retry delay (as a warning for the first three in a row, then quietly)."""
    LOG_FAILURE_QUIETLY = "log-failure-quietly"
    """Log the failure and the retry delay quietly (debug)."""
    LOG_REFUSED = "log-refused"
    """Log, as an error, the refusal and what follows (no more dialling, or a slow retry for a seed)."""
    REPORT_REFUSED = "report-refused"
    """Tell the dialer that this instance refused for good (it is not dialled again until it restarts)."""
    WATCH_CONNECTION = "watch-connection"
    """Count the connection, note the node reached, and fire L{LinkEvent.CONNECTION_LOST} once it closes."""
    FORGET_CONNECTION = "forget-connection"
    """Forget the closed connection."""


_I, _C, _N, _OK = LinkState.IDLE, LinkState.CONNECTING, LinkState.INTRODUCING, LinkState.CONNECTED
_W, _H, _S = LinkState.WAITING, LinkState.HELD, LinkState.STOPPED
_Ev = LinkEvent
_O = LinkOutput

_RETRY = (_O.COUNT_FAILURE, _O.SCHEDULE_RETRY, _O.LOG_FAILURE)
_STOP = (_O.CANCEL_RETRY, _O.CANCEL_ATTEMPT, _O.CLOSE)

LINK: Transitions[LinkState, LinkEvent, LinkOutput] = Transitions(
    "link",
    LinkState,
    LinkEvent,
    LinkOutput,
    initial=_I,
    table={
        (_I, _Ev.DIAL): (_C, (_O.OPEN_CONNECTION,)),
        (_I, _Ev.UNWANTED): (_W, (_O.SCHEDULE_RECHECK,)),
        (_W, _Ev.DIAL): (_C, (_O.OPEN_CONNECTION,)),
        (_W, _Ev.UNWANTED): (_W, (_O.SCHEDULE_RECHECK,)),
        (_C, _Ev.TCP_CONNECTED): (_N, (_O.INTRODUCE,)),
        (_C, _Ev.TCP_FAILED): (_W, (_O.COUNT_FAILURE, _O.SCHEDULE_RETRY, _O.LOG_FAILURE_QUIETLY)),
        (_N, _Ev.INTRODUCED): (_OK, (_O.RESET_FAILURES, _O.WATCH_CONNECTION)),
        (_N, _Ev.DUPLICATE): (_W, (_O.CLOSE, _O.COUNT_FAILURE, _O.SCHEDULE_RETRY, _O.LOG_FAILURE_QUIETLY)),
        (_N, _Ev.INTRODUCTION_FAILED): (_W, (_O.CLOSE,) + _RETRY),
        (_N, _Ev.REFUSED_FOR_GOOD): (_S, (_O.CLOSE, _O.LOG_REFUSED, _O.REPORT_REFUSED)),
        (_N, _Ev.SEED_REFUSED): (_W, (_O.CLOSE, _O.SLOW_DOWN, _O.SCHEDULE_RETRY, _O.LOG_REFUSED)),
        (_OK, _Ev.CONNECTION_LOST): (_W, (_O.FORGET_CONNECTION, _O.SCHEDULE_RETRY)),
        # Holding: nothing more is dialled, what is under way finishes.
        (_I, _Ev.HOLD): (_H, ()),
        (_W, _Ev.HOLD): (_H, (_O.CANCEL_RETRY,)),
        (_C, _Ev.HOLD): (_H, (_O.CANCEL_ATTEMPT,)),
        (_N, _Ev.HOLD): (_H, ()),
        (_OK, _Ev.HOLD): (_H, ()),
        (_H, _Ev.TCP_CONNECTED): (_H, (_O.CLOSE,)),
        (_H, _Ev.INTRODUCED): (_H, (_O.RESET_FAILURES, _O.WATCH_CONNECTION)),
        (_H, _Ev.DUPLICATE): (_H, (_O.CLOSE, _O.COUNT_FAILURE)),
        (_H, _Ev.INTRODUCTION_FAILED): (_H, (_O.CLOSE, _O.COUNT_FAILURE)),
        (_H, _Ev.REFUSED_FOR_GOOD): (_S, (_O.CLOSE, _O.LOG_REFUSED, _O.REPORT_REFUSED)),
        (_H, _Ev.SEED_REFUSED): (_H, (_O.CLOSE, _O.SLOW_DOWN, _O.LOG_REFUSED)),
        (_H, _Ev.TCP_FAILED): (_H, (_O.COUNT_FAILURE,)),
        (_H, _Ev.CONNECTION_LOST): (_H, (_O.FORGET_CONNECTION,)),
        # Stopping: everything ends; late news of a cancelled attempt only closes.
        (_I, _Ev.STOP): (_S, ()),
        (_C, _Ev.STOP): (_S, _STOP),
        (_N, _Ev.STOP): (_S, _STOP),
        (_OK, _Ev.STOP): (_S, _STOP),
        (_W, _Ev.STOP): (_S, _STOP),
        (_H, _Ev.STOP): (_S, _STOP),
        (_S, _Ev.TCP_CONNECTED): (_S, (_O.CLOSE,)),
        (_S, _Ev.INTRODUCED): (_S, (_O.CLOSE,)),
        (_S, _Ev.DUPLICATE): (_S, (_O.CLOSE,)),
        (_S, _Ev.INTRODUCTION_FAILED): (_S, (_O.CLOSE,)),
        (_S, _Ev.SEED_REFUSED): (_S, (_O.CLOSE,)),
        (_S, _Ev.REFUSED_FOR_GOOD): (_S, (_O.CLOSE,)),
        (_S, _Ev.CONNECTION_LOST): (_S, (_O.FORGET_CONNECTION,)),
    },
    ignored=[
        # A timer or an attempt that was cancelled may still report.
        (_H, _Ev.DIAL),
        (_H, _Ev.UNWANTED),
        (_H, _Ev.HOLD),
        (_S, _Ev.DIAL),
        (_S, _Ev.UNWANTED),
        (_S, _Ev.TCP_FAILED),
        (_S, _Ev.HOLD),
        (_S, _Ev.STOP),
    ],
)
"""The link machine (see the module docstring)."""
