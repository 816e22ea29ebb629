"""
A task's life on its master, and a task kind's wait for a capable worker, as
explicit state machines (see L{p2pexec.fsm} and docs/state-machines.rst).

L{TASK} is fired for every task, so its state is one L{TaskState} member kept
on the task's record and stepped with L{fsm.Transitions.step}; nothing is
allocated per transition.

A worker's seat counter (how many unconfirmed tasks it holds) is kept by the
outputs alone: every transition into L{TaskState.ASSIGNED} emits
L{TaskOutput.HOLD_SEAT} and every transition out of it emits
L{TaskOutput.RELEASE_SEAT}, so the counter is the number of the worker's
tasks in that state, maintained in the one place that performs the outputs.

"Waiting for a capable worker" is a property of a task kind, not of each
task: it changes for every task of the kind at once when a worker joins or
leaves.  It is the small L{KIND} machine, one per kind with pending tasks;
a pending task is waiting while its kind is.

The guards stay with the data: whether a result is for the latest attempt and
from the worker it was given to, whether a failed task has retries left,
whether a lost task has lost its worker too often.  The caller turns each of
those into the event it fires (L{TaskEvent.RESULT_STALE},
L{TaskEvent.RESULT_RETRY}, L{TaskEvent.LOST_FOR_GOOD}).
"""

from __future__ import annotations

from p2pexec.fsm import Symbol, Transitions


class TaskState(Symbol):
    """Where a task stands on its master."""

    PENDING = "pending"
    """In its kind's queue, for the next dispatch."""
    ASSIGNED = "assigned"
    """Its latest attempt is out on a worker, which holds a seat for it."""
    IN_DOUBT = "in-doubt"
    """Out on a worker before this master restarted: the worker is asked what became of it when it comes back."""
    RETRY_WAIT = "retry-wait"
    """Its attempt failed with retries left: it waits for its backoff delay, out of the queue."""
    DONE = "done"
    """It has its result (succeeded, failed, quarantined or cancelled)."""


class TaskEvent(Symbol):
    """What happens to a task on its master."""

    DISPATCH = "dispatch"
    """The dispatcher gives it to a worker as a new attempt."""
    TAKEN_BACK = "taken-back"
    """Its attempt did not go out after all: the worker refused the batch, or the journal could not record it."""
    RESULT = "result"
    """Its worker reports the latest attempt's result, which is final (a success, or a failure without retries left)."""
    RESULT_RETRY = "result-retry"
    """Its worker reports the latest attempt failed, and the task has retries left."""
    RESULT_RETURNED = "result-returned"
    """Its worker hands the latest attempt back unrun (the worker is leaving)."""
    RESULT_STALE = "result-stale"
    """A result that does not count: for an older attempt, from another node, or one already received."""
    RETRY_DUE = "retry-due"
    """Its retry backoff has passed."""
    LOST = "lost"
    """Its worker is gone (or no longer has it): it runs again elsewhere."""
    LOST_FOR_GOOD = "lost-for-good"
    """Its worker is gone, and it has now lost its worker too often: it is quarantined as failed."""
    WORKER_ASKED = "worker-asked"
    """The worker that held it before this master restarted came back and is asked about it (RESULT_QUERY)."""
    CANCEL = "cancel"
    """Its job is cancelled."""
    RERUN = "rerun"
    """Its job finished without it succeeding, and an operator asked to run it again (C{p2pexec rerun --failed})."""


class TaskOutput(Symbol):
    """What the master does when a task changes state."""

    HOLD_SEAT = "hold-seat"
    """Its worker's seat counts one more unconfirmed task."""
    RELEASE_SEAT = "release-seat"
    """Its worker's seat counts one fewer (no-op if the seat is gone)."""
    ENQUEUE = "enqueue"
    """Put it at the front of its kind's queue and schedule a dispatch."""
    JOURNAL = "journal"
    """Mark its record changed in the journal."""
    START_RETRY_TIMER = "start-retry-timer"
    """Schedule L{TaskEvent.RETRY_DUE} after the backoff for its failure count, and log the retry."""
    CANCEL_RETRY_TIMER = "cancel-retry-timer"
    """Cancel its pending retry timer."""
    COUNT_RESULT = "count-result"
    """It has its result: count it succeeded or failed; the job may be finished now."""
    UNCOUNT_RESULT = "uncount-result"
    """It runs again: its result no longer counts, and its retries and losses start again from none."""
    REPORT_RESULT = "report-result"
    """A worker's result was applied: tell the result listeners, fold its duration into the seat, log a failure."""
    COUNT_STALE = "count-stale"
    """Drop the result as stale, counted in the job's and the master's stale figures, and log why."""
    DROP_RESULT = "drop-result"
    """Drop a hand-back for an attempt no longer held: counted as stale by the master only (not by the job)."""
    STOP_ASSIGNING = "stop-assigning"
    """Its worker is leaving (it handed a task back): give that worker nothing more until it joins again."""


_P, _A, _D, _R, _X = TaskState.PENDING, TaskState.ASSIGNED, TaskState.IN_DOUBT, TaskState.RETRY_WAIT, TaskState.DONE
_Ev = TaskEvent
_O = TaskOutput

TASK: Transitions[TaskState, TaskEvent, TaskOutput] = Transitions(
    "task",
    TaskState,
    TaskEvent,
    TaskOutput,
    initial=_P,
    restored=(_P, _D, _X),
    table={
        (_P, _Ev.DISPATCH): (_A, (_O.HOLD_SEAT, _O.JOURNAL)),
        (_A, _Ev.TAKEN_BACK): (_P, (_O.RELEASE_SEAT, _O.JOURNAL, _O.ENQUEUE)),
        # A result for the latest attempt, from the worker it was given to.
        (_A, _Ev.RESULT): (_X, (_O.RELEASE_SEAT, _O.JOURNAL, _O.COUNT_RESULT, _O.REPORT_RESULT)),
        (_D, _Ev.RESULT): (_X, (_O.JOURNAL, _O.COUNT_RESULT, _O.REPORT_RESULT)),
        # Put back (its worker's connection dropped), but the result got through.
        (_P, _Ev.RESULT): (_X, (_O.JOURNAL, _O.COUNT_RESULT, _O.REPORT_RESULT)),
        (_R, _Ev.RESULT): (_R, (_O.COUNT_STALE,)),
        (_X, _Ev.RESULT): (_X, (_O.COUNT_STALE,)),
        (_A, _Ev.RESULT_RETRY): (_R, (_O.RELEASE_SEAT, _O.JOURNAL, _O.START_RETRY_TIMER)),
        (_D, _Ev.RESULT_RETRY): (_R, (_O.JOURNAL, _O.START_RETRY_TIMER)),
        (_P, _Ev.RESULT_RETRY): (_R, (_O.JOURNAL, _O.START_RETRY_TIMER)),
        (_R, _Ev.RESULT_RETRY): (_R, (_O.COUNT_STALE,)),
        (_X, _Ev.RESULT_RETRY): (_X, (_O.COUNT_STALE,)),
        (_A, _Ev.RESULT_RETURNED): (_P, (_O.RELEASE_SEAT, _O.JOURNAL, _O.STOP_ASSIGNING, _O.ENQUEUE)),
        (_D, _Ev.RESULT_RETURNED): (_P, (_O.JOURNAL, _O.STOP_ASSIGNING, _O.ENQUEUE)),
        (_P, _Ev.RESULT_RETURNED): (_P, (_O.DROP_RESULT,)),
        (_R, _Ev.RESULT_RETURNED): (_R, (_O.DROP_RESULT,)),
        (_X, _Ev.RESULT_RETURNED): (_X, (_O.COUNT_STALE,)),
        (_P, _Ev.RESULT_STALE): (_P, (_O.COUNT_STALE,)),
        (_A, _Ev.RESULT_STALE): (_A, (_O.COUNT_STALE,)),
        (_D, _Ev.RESULT_STALE): (_D, (_O.COUNT_STALE,)),
        (_R, _Ev.RESULT_STALE): (_R, (_O.COUNT_STALE,)),
        (_X, _Ev.RESULT_STALE): (_X, (_O.COUNT_STALE,)),
        (_R, _Ev.RETRY_DUE): (_P, (_O.ENQUEUE,)),
        (_A, _Ev.LOST): (_P, (_O.RELEASE_SEAT, _O.JOURNAL, _O.ENQUEUE)),
        (_D, _Ev.LOST): (_P, (_O.JOURNAL, _O.ENQUEUE)),
        (_A, _Ev.LOST_FOR_GOOD): (_X, (_O.RELEASE_SEAT, _O.JOURNAL, _O.COUNT_RESULT)),
        (_D, _Ev.LOST_FOR_GOOD): (_X, (_O.JOURNAL, _O.COUNT_RESULT)),
        (_D, _Ev.WORKER_ASKED): (_A, (_O.HOLD_SEAT,)),
        (_P, _Ev.CANCEL): (_X, (_O.JOURNAL, _O.COUNT_RESULT)),
        (_A, _Ev.CANCEL): (_X, (_O.RELEASE_SEAT, _O.JOURNAL, _O.COUNT_RESULT)),
        (_D, _Ev.CANCEL): (_X, (_O.JOURNAL, _O.COUNT_RESULT)),
        (_R, _Ev.CANCEL): (_X, (_O.CANCEL_RETRY_TIMER, _O.JOURNAL, _O.COUNT_RESULT)),
        # A new attempt of a finished task (the job reopened: see p2pexec.reruns).
        (_X, _Ev.RERUN): (_P, (_O.UNCOUNT_RESULT, _O.JOURNAL, _O.ENQUEUE)),
    },
    ignored=[
        # Take-backs, losses and asks name attempts that may have moved on
        # meanwhile; a retry timer may outlive its wait; a finished task
        # stays finished.
        (_P, _Ev.TAKEN_BACK),
        (_D, _Ev.TAKEN_BACK),
        (_R, _Ev.TAKEN_BACK),
        (_X, _Ev.TAKEN_BACK),
        (_P, _Ev.RETRY_DUE),
        (_A, _Ev.RETRY_DUE),
        (_D, _Ev.RETRY_DUE),
        (_X, _Ev.RETRY_DUE),
        (_P, _Ev.LOST),
        (_R, _Ev.LOST),
        (_X, _Ev.LOST),
        (_P, _Ev.LOST_FOR_GOOD),
        (_R, _Ev.LOST_FOR_GOOD),
        (_X, _Ev.LOST_FOR_GOOD),
        (_P, _Ev.WORKER_ASKED),
        (_R, _Ev.WORKER_ASKED),
        (_X, _Ev.WORKER_ASKED),
        (_X, _Ev.CANCEL),
        # Only a finished task runs again.
        (_P, _Ev.RERUN),
        (_A, _Ev.RERUN),
        (_D, _Ev.RERUN),
        (_R, _Ev.RERUN),
    ],
)
"""The task machine.  L{TaskEvent.DISPATCH} is taken only by a pending task: the dispatcher checks first."""


JOURNAL_NAMES: dict[TaskState, str] = {
    TaskState.PENDING: "pending",
    TaskState.ASSIGNED: "assigned",
    TaskState.IN_DOUBT: "assigned",
    TaskState.RETRY_WAIT: "pending",
    TaskState.DONE: "done",
}
"""
The name each state is stored under in the journal (unchanged from before
the machine): a task waiting for its retry is stored as pending, and runs at
once after a restart; one in doubt is stored as assigned.
"""


def from_journal(name: str) -> TaskState:
    """
    The state a task restored from the journal starts in: an assigned task
    is in doubt until its worker is asked.

    @raise ValueError: for a name the journal does not write.
    """
    if name == "pending":
        return TaskState.PENDING
    if name == "assigned":
        return TaskState.IN_DOUBT
    if name == "done":
        return TaskState.DONE
    raise ValueError(f"the journal has no task state {name!r}")


def holds_seat(state: TaskState) -> bool:
    """Whether a task in C{state} is counted in its worker's seat."""
    return state is TaskState.ASSIGNED


class KindState(Symbol):
    """Whether the pending tasks of one kind have a capable worker."""

    SERVED = "served"
    """A connected worker runs the kind (or none of its tasks is pending)."""
    WAITING = "waiting"
    """Pending tasks, and no connected worker runs the kind: within the grace period, nothing is said yet."""
    WARNED = "warned"
    """Still waiting after the grace period; the warning has been logged, once."""


class KindEvent(Symbol):
    """What one dispatch found about a kind."""

    SCHEDULABLE = "schedulable"
    """A connected worker runs it (or it has nothing pending)."""
    UNSCHEDULABLE = "unschedulable"
    """Pending tasks and no capable worker, within the grace period since it began waiting."""
    GRACE_OVER = "grace-over"
    """Pending tasks and no capable worker, the grace period over."""


class KindOutput(Symbol):
    """What the master does about a kind's wait."""

    NOTE_SINCE = "note-since"
    """Remember now as the time the kind began waiting."""
    START_GRACE_TIMER = "start-grace-timer"
    """Schedule a dispatch after the grace period, to look again."""
    WARN = "warn"
    """Log, once, that tasks of this kind wait for a capable node."""
    FORGET_SINCE = "forget-since"
    """Forget when it began waiting."""


_S, _W, _N = KindState.SERVED, KindState.WAITING, KindState.WARNED

KIND: Transitions[KindState, KindEvent, KindOutput] = Transitions(
    "kind",
    KindState,
    KindEvent,
    KindOutput,
    initial=_S,
    table={
        (_S, KindEvent.UNSCHEDULABLE): (_W, (KindOutput.NOTE_SINCE, KindOutput.START_GRACE_TIMER)),
        # Only with a grace period of zero.
        (_S, KindEvent.GRACE_OVER): (_N, (KindOutput.NOTE_SINCE, KindOutput.WARN)),
        (_W, KindEvent.GRACE_OVER): (_N, (KindOutput.WARN,)),
        (_W, KindEvent.SCHEDULABLE): (_S, (KindOutput.FORGET_SINCE,)),
        (_N, KindEvent.SCHEDULABLE): (_S, (KindOutput.FORGET_SINCE,)),
    },
    ignored=[
        (_S, KindEvent.SCHEDULABLE),
        (_W, KindEvent.UNSCHEDULABLE),
        (_N, KindEvent.UNSCHEDULABLE),
        (_N, KindEvent.GRACE_OVER),
    ],
)
"""A task kind's wait for a capable worker (one per kind, stepped at each dispatch)."""
