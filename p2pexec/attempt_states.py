"""
A task attempt on a worker, as an explicit state machine (see
L{p2pexec.fsm} and docs/state-machines.rst).

Before this machine, an attempt's state was which of the worker's containers
held it: the queue, the active table, the per-master running counts, the
cancelled and stopped-while-leaving sets, the unsent batches and the result
cache.  Here it is one L{AttemptState}, and each container is what one
output fills or empties.

An attempt for this node's own master is delivered by a direct call, is
never kept, and needs no acknowledgement: it finishes with
L{AttemptEvent.ENDED_NOT_KEPT} (as does an attempt whose result is
C{returned}).  An attempt for another master is kept (bounded) until that
master acknowledges it, so that a lost confirmation is answered from the
cache instead of running the task again.

The runner's own outcome (succeeded, failed, timed out) is data, not state:
whatever ended the process, L{AttemptEvent.ENDED} says it ended.
"""

from __future__ import annotations

from p2pexec.fsm import Symbol, Transitions


class AttemptState(Symbol):
    """Where one attempt stands on the worker that was given it."""

    QUEUED = "queued"
    """Accepted, waiting for a free slot."""
    RUNNING = "running"
    """Holds a slot; its process (or instruction) runs."""
    STOPPING = "stopping"
    """Running, and stopped because the node is leaving: its result will be handed back as returned."""
    CANCELLING = "cancelling"
    """Running, and stopped because its job was cancelled: its result will be dropped."""
    FINISHED = "finished"
    """Ended; its result waits for this turn's batch, and is kept until its master acknowledges it."""
    FINISHED_NOT_KEPT = "finished-not-kept"
    """Ended; its result waits for this turn's batch and is not kept (this node's own master, or a returned result)."""
    SENT = "sent"
    """Its result went out; it is kept until the master acknowledges it."""
    RETURNED = "returned"
    """Handed back unrun (or stopped) because the node is leaving; the returned result waits for the batch."""
    ACKNOWLEDGED = "acknowledged"
    """Its master has the result for good; forgotten."""
    DELIVERED = "delivered"
    """A result that is not kept went out; forgotten."""
    CANCELLED = "cancelled"
    """Its job was cancelled; nothing of it is sent; forgotten."""
    DROPPED = "dropped"
    """Still queued when its master went away (the master runs it again); forgotten."""
    FORGOTTEN = "forgotten"
    """Its result was pushed out of the full cache before an acknowledgement; a master that asks hears unknown."""


class AttemptEvent(Symbol):
    """What happens to an attempt on its worker."""

    START = "start"
    """A slot is free and it is first in the queue."""
    ENDED = "ended"
    """Its run ended, for another master: the result is kept until acknowledged."""
    ENDED_NOT_KEPT = "ended-not-kept"
    """Its run ended, for this node's own master (or with a returned result): not kept."""
    FLUSHED = "flushed"
    """The batch its result waited in went out."""
    ACKNOWLEDGED = "acknowledged"
    """Its master answered the confirmation that carried its result."""
    RESEND = "resend"
    """Its master assigns the same attempt again, or asks about it (RESULT_QUERY): the kept result goes out again."""
    ASSIGNED_AGAIN = "assigned-again"
    """Its master assigns the same attempt again while it is still queued or running."""
    CANCEL = "cancel"
    """Its master cancelled its job."""
    STOP_ACCEPTING = "stop-accepting"
    """The node is leaving: queued attempts are handed back."""
    STOP_RUNNING = "stop-running"
    """The node is leaving and the drain timeout passed: running attempts are stopped and handed back."""
    MASTER_GONE = "master-gone"
    """Its master's connection is gone: queued attempts are dropped (the master puts them back itself)."""
    EVICTED = "evicted"
    """The full cache pushed its kept result out."""


class AttemptOutput(Symbol):
    """What the worker does when an attempt changes state."""

    UNQUEUE = "unqueue"
    """Take it out of the queue."""
    TAKE_SLOT = "take-slot"
    """Count it running (in all, and for its master)."""
    RUN = "run"
    """Run it: start its process, or finish an instruction at once."""
    STOP_PROCESS = "stop-process"
    """Terminate its process (its result still arrives, as L{AttemptEvent.ENDED})."""
    FREE_SLOT = "free-slot"
    """Count it no longer running, count it completed, start what fits next (a turn later after a process)."""
    KEEP_RESULT = "keep-result"
    """Keep its result in the bounded cache until acknowledged."""
    FORGET_RESULT = "forget-result"
    """Drop its result from the cache."""
    QUEUE_RESULT = "queue-result"
    """Add its result to its master's batch and schedule the flush."""
    QUEUE_RETURNED = "queue-returned"
    """Add a returned result (the node is leaving) to its master's batch."""
    UNQUEUE_RESULT = "unqueue-result"
    """Take its result out of the batch that has not gone out yet."""
    COUNT_FROM_CACHE = "count-from-cache"
    """Count an answer from the cache (a result not run again)."""


_Q = AttemptState.QUEUED
_RUN = AttemptState.RUNNING
_STOP = AttemptState.STOPPING
_CNL = AttemptState.CANCELLING
_FIN = AttemptState.FINISHED
_FNK = AttemptState.FINISHED_NOT_KEPT
_SENT = AttemptState.SENT
_RET = AttemptState.RETURNED
_ACK = AttemptState.ACKNOWLEDGED
_DLV = AttemptState.DELIVERED
_CAN = AttemptState.CANCELLED
_DROP = AttemptState.DROPPED
_FGT = AttemptState.FORGOTTEN
_Ev = AttemptEvent
_O = AttemptOutput

ATTEMPT: Transitions[AttemptState, AttemptEvent, AttemptOutput] = Transitions(
    "attempt",
    AttemptState,
    AttemptEvent,
    AttemptOutput,
    initial=_Q,
    table={
        (_Q, _Ev.START): (_RUN, (_O.TAKE_SLOT, _O.RUN)),
        (_Q, _Ev.CANCEL): (_CAN, (_O.UNQUEUE,)),
        (_Q, _Ev.STOP_ACCEPTING): (_RET, (_O.UNQUEUE, _O.QUEUE_RETURNED)),
        (_Q, _Ev.MASTER_GONE): (_DROP, (_O.UNQUEUE,)),
        (_RUN, _Ev.ENDED): (_FIN, (_O.FREE_SLOT, _O.KEEP_RESULT, _O.QUEUE_RESULT)),
        (_RUN, _Ev.ENDED_NOT_KEPT): (_FNK, (_O.FREE_SLOT, _O.QUEUE_RESULT)),
        (_RUN, _Ev.CANCEL): (_CNL, (_O.STOP_PROCESS,)),
        (_RUN, _Ev.STOP_RUNNING): (_STOP, (_O.STOP_PROCESS,)),
        (_STOP, _Ev.ENDED): (_RET, (_O.FREE_SLOT, _O.QUEUE_RETURNED)),
        (_STOP, _Ev.ENDED_NOT_KEPT): (_RET, (_O.FREE_SLOT, _O.QUEUE_RETURNED)),
        (_STOP, _Ev.CANCEL): (_CNL, (_O.STOP_PROCESS,)),
        (_CNL, _Ev.ENDED): (_CAN, (_O.FREE_SLOT,)),
        (_CNL, _Ev.ENDED_NOT_KEPT): (_CAN, (_O.FREE_SLOT,)),
        (_CNL, _Ev.CANCEL): (_CNL, (_O.STOP_PROCESS,)),
        (_FIN, _Ev.FLUSHED): (_SENT, ()),
        (_FIN, _Ev.RESEND): (_FIN, (_O.COUNT_FROM_CACHE, _O.QUEUE_RESULT)),
        (_FIN, _Ev.ACKNOWLEDGED): (_FNK, (_O.FORGET_RESULT,)),
        (_FIN, _Ev.EVICTED): (_FNK, ()),
        (_FIN, _Ev.CANCEL): (_CAN, (_O.FORGET_RESULT, _O.UNQUEUE_RESULT)),
        (_FNK, _Ev.FLUSHED): (_DLV, ()),
        (_FNK, _Ev.CANCEL): (_CAN, (_O.UNQUEUE_RESULT,)),
        (_SENT, _Ev.ACKNOWLEDGED): (_ACK, (_O.FORGET_RESULT,)),
        (_SENT, _Ev.RESEND): (_FIN, (_O.COUNT_FROM_CACHE, _O.QUEUE_RESULT)),
        (_SENT, _Ev.EVICTED): (_FGT, ()),
        (_SENT, _Ev.CANCEL): (_CAN, (_O.FORGET_RESULT,)),
        (_RET, _Ev.FLUSHED): (_DLV, ()),
        (_RET, _Ev.CANCEL): (_CAN, (_O.UNQUEUE_RESULT,)),
    },
    ignored=[
        # Assigned again while it is still queued or running: nothing to do.
        (_Q, _Ev.ASSIGNED_AGAIN),
        (_RUN, _Ev.ASSIGNED_AGAIN),
        (_STOP, _Ev.ASSIGNED_AGAIN),
        (_CNL, _Ev.ASSIGNED_AGAIN),
        # Already stopped (cancelled), or leaving anyway.
        (_STOP, _Ev.STOP_RUNNING),
        (_CNL, _Ev.STOP_RUNNING),
        # The second copy of a result resent before its batch went out.
        (_SENT, _Ev.FLUSHED),
        # An acknowledgement of a result not (or no longer) kept.
        (_FNK, _Ev.ACKNOWLEDGED),
        (_RET, _Ev.ACKNOWLEDGED),
    ],
)
"""The attempt machine (see the module docstring)."""


ACTIVE = frozenset({_Q, _RUN, _STOP, _CNL})
"""The states of an attempt the worker holds (queued or running): assigned again, it is not queued twice."""

HOLDS_SLOT = frozenset({_RUN, _STOP, _CNL})
"""The states of an attempt that holds a slot."""

KEPT = frozenset({_FIN, _SENT})
"""The states of an attempt whose result is in the cache."""


def query_answer(state: AttemptState) -> str:
    """
    What a worker answers a master's RESULT_QUERY about an attempt in
    C{state}: C{done} (the kept result goes out again: fire
    L{AttemptEvent.RESEND}), C{running} (queued or running), or C{unknown}
    (never here, dropped, cancelled, or no longer kept).
    """
    if state in KEPT:
        return "done"
    if state in ACTIVE:
        return "running"
    return "unknown"
