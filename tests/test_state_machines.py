"""
Tests for p2pexec's state machines (connection, link, attempt, task, kind):
each fed events and checked for its states and outputs, driven by random
event sequences, and the two connection decisions checked against the code
they replace.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.attempt_states import (
    ACTIVE,
    ATTEMPT,
    HOLDS_SLOT,
    KEPT,
    AttemptEvent,
    AttemptOutput,
    AttemptState,
    query_answer,
)
from p2pexec.connection_states import (
    ACCEPTED,
    DIALLED,
    Compatibility,
    ConnectionEvent,
    ConnectionOutput,
    ConnectionState,
    Duplicate,
    accepts_input,
    compatibility,
    dials,
    resolve_duplicate,
)
from p2pexec.fsm import IllegalTransition, Machine, Transitions
from p2pexec.link_states import LINK, LinkEvent, LinkOutput, LinkState
from p2pexec.task_states import (
    JOURNAL_NAMES,
    KIND,
    TASK,
    KindEvent,
    KindOutput,
    KindState,
    TaskEvent,
    TaskOutput,
    TaskState,
    from_journal,
    holds_seat,
)

ALL: list[Transitions[Any, Any, Any]] = [ACCEPTED, DIALLED, LINK, ATTEMPT, TASK, KIND]


def random_walk(table: Transitions[Any, Any, Any], events: list[Any]) -> list[tuple[Any, Any, tuple[Any, ...]]]:
    """
    Fire C{events} from the initial state, skipping the ones the table
    refuses (and checking that a refusal leaves the state alone); return
    the (state before, event, outputs) taken.
    """
    machine: Machine[Any, Any, Any] = table.machine()
    taken = []
    for event in events:
        before = machine.state
        try:
            emitted = machine.fire(event)
        except IllegalTransition:
            assert machine.state is before
            assert not table.allows(before, event)
            continue
        assert machine.state in table.used, (table.name, machine.state)
        taken.append((before, event, emitted))
    return taken


class RandomWalkTests(SynchronousTestCase):
    """Every machine is well formed, and random event sequences never lead it anywhere undeclared."""

    def test_every_machine_is_well_formed(self) -> None:
        """Every machine of p2pexec uses only its own enums' members, and every used state is reachable."""
        for table in ALL:
            self.assertEqual(table.reachable(), set(table.used), table.name)
            for state, event, target, emitted in table.transitions():
                self.assertIsInstance(state, table.states)
                self.assertIsInstance(event, table.events)
                self.assertIsInstance(target, table.states)
                for output in emitted:
                    self.assertIsInstance(output, table.outputs)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.data())
    def test_random_events(self, data: st.DataObject) -> None:
        """Any sequence of events leaves every machine in one of its declared states."""
        for table in ALL:
            events = data.draw(
                st.lists(st.sampled_from(list(table.events.__members__.values())), max_size=40), label=table.name
            )
            for before, event, emitted in random_walk(table, events):
                self.assertEqual(table.step(before, event)[1], emitted)


# -- the task on its master ----------------------------------------------------


def run_tasks(events: list[tuple[int, TaskEvent]], count: int) -> tuple[list[TaskState], int, list[TaskOutput]]:
    """
    Drive C{count} tasks of one worker with C{events} (task index, event),
    skipping refused ones, and keep the worker's seat counter by the outputs
    alone, as the master does.  Returns the states, the counter and every
    output.
    """
    states = [TaskState.PENDING] * count
    seat = 0
    seen: list[TaskOutput] = []
    for index, event in events:
        if not TASK.allows(states[index], event):
            continue
        states[index], emitted = TASK.step(states[index], event)
        for output in emitted:
            if output is TaskOutput.HOLD_SEAT:
                seat += 1
            elif output is TaskOutput.RELEASE_SEAT:
                seat -= 1
        seen.extend(emitted)
    return states, seat, seen


class TaskMachineTests(SynchronousTestCase):
    """A task on its master: L{TASK}."""

    def walk(self, *events: TaskEvent, start: TaskState = TaskState.PENDING) -> tuple[TaskState, list[TaskOutput]]:
        """Fire C{events} in turn from C{start}; the last state and all outputs."""
        state, seen = start, list[TaskOutput]()
        for event in events:
            state, emitted = TASK.step(state, event)
            seen.extend(emitted)
        return state, seen

    def test_success(self) -> None:
        """Dispatched, then its result: the seat is held then released, the result counted and reported."""
        state, seen = self.walk(TaskEvent.DISPATCH, TaskEvent.RESULT)
        self.assertIs(state, TaskState.DONE)
        Out = TaskOutput
        self.assertEqual(
            seen, [Out.HOLD_SEAT, Out.JOURNAL, Out.RELEASE_SEAT, Out.JOURNAL, Out.COUNT_RESULT, Out.REPORT_RESULT]
        )

    def test_retry(self) -> None:
        """A failure with retries left waits out of the queue, then is queued again when its timer is due."""
        state, seen = self.walk(TaskEvent.DISPATCH, TaskEvent.RESULT_RETRY)
        self.assertIs(state, TaskState.RETRY_WAIT)
        self.assertIn(TaskOutput.START_RETRY_TIMER, seen)
        self.assertNotIn(TaskOutput.ENQUEUE, seen)
        self.assertEqual(TASK.step(state, TaskEvent.RETRY_DUE), (TaskState.PENDING, (TaskOutput.ENQUEUE,)))

    def test_duplicate_while_waiting_for_retry(self) -> None:
        """The failed attempt reported again while it waits for its retry is stale."""
        self.assertEqual(
            TASK.step(TaskState.RETRY_WAIT, TaskEvent.RESULT_RETRY), (TaskState.RETRY_WAIT, (TaskOutput.COUNT_STALE,))
        )

    def test_cancel_while_waiting_for_retry(self) -> None:
        """A cancelled job's task waiting for a retry has its timer cancelled and its result counted."""
        state, seen = self.walk(TaskEvent.CANCEL, start=TaskState.RETRY_WAIT)
        self.assertIs(state, TaskState.DONE)
        self.assertEqual(seen, [TaskOutput.CANCEL_RETRY_TIMER, TaskOutput.JOURNAL, TaskOutput.COUNT_RESULT])

    def test_returned(self) -> None:
        """A task handed back by a leaving worker is queued again, and that worker gets nothing more."""
        state, seen = self.walk(TaskEvent.DISPATCH, TaskEvent.RESULT_RETURNED)
        self.assertIs(state, TaskState.PENDING)
        self.assertIn(TaskOutput.STOP_ASSIGNING, seen)
        self.assertEqual(seen[-1], TaskOutput.ENQUEUE)

    def test_returned_when_not_held(self) -> None:
        """A hand-back for a task no longer held is dropped, not counted in the job's stale figure."""
        self.assertEqual(
            TASK.step(TaskState.PENDING, TaskEvent.RESULT_RETURNED), (TaskState.PENDING, (TaskOutput.DROP_RESULT,))
        )
        self.assertEqual(
            TASK.step(TaskState.DONE, TaskEvent.RESULT_RETURNED), (TaskState.DONE, (TaskOutput.COUNT_STALE,))
        )

    def test_lost_and_quarantined(self) -> None:
        """A lost task runs again; one lost for good is done, counted, not reported as a worker's result."""
        self.assertEqual(self.walk(TaskEvent.DISPATCH, TaskEvent.LOST)[0], TaskState.PENDING)
        state, seen = self.walk(TaskEvent.DISPATCH, TaskEvent.LOST_FOR_GOOD)
        self.assertIs(state, TaskState.DONE)
        self.assertIn(TaskOutput.COUNT_RESULT, seen)
        self.assertNotIn(TaskOutput.REPORT_RESULT, seen)

    def test_late_result_of_a_put_back_task(self) -> None:
        """A task put back (its worker's connection dropped) whose result got through is done, no seat released."""
        state, seen = self.walk(TaskEvent.DISPATCH, TaskEvent.LOST, TaskEvent.RESULT)
        self.assertIs(state, TaskState.DONE)
        self.assertEqual(seen.count(TaskOutput.RELEASE_SEAT), 1)

    def test_in_doubt(self) -> None:
        """
        A task that was out on a worker before the restart holds a seat once
        its worker is asked; one the worker no longer has runs again.
        """
        self.assertIs(from_journal("assigned"), TaskState.IN_DOUBT)
        state, seen = self.walk(TaskEvent.WORKER_ASKED, TaskEvent.LOST, start=TaskState.IN_DOUBT)
        self.assertIs(state, TaskState.PENDING)
        self.assertEqual(seen, [TaskOutput.HOLD_SEAT, TaskOutput.RELEASE_SEAT, TaskOutput.JOURNAL, TaskOutput.ENQUEUE])
        state, seen = self.walk(TaskEvent.LOST, start=TaskState.IN_DOUBT)
        self.assertEqual((state, seen), (TaskState.PENDING, [TaskOutput.JOURNAL, TaskOutput.ENQUEUE]))

    def test_done_ignores_late_news(self) -> None:
        """A done task stays done: losses, take-backs, timers and cancels do nothing; results are stale."""
        for event in (TaskEvent.LOST, TaskEvent.TAKEN_BACK, TaskEvent.RETRY_DUE, TaskEvent.CANCEL):
            self.assertEqual(TASK.step(TaskState.DONE, event), (TaskState.DONE, ()))
        # The one way out of done: an operator's rerun of a finished job (issue 14).
        leaving = {
            event
            for event in TaskEvent
            if TASK.allows(TaskState.DONE, event) and TASK.step(TaskState.DONE, event)[0] is not TaskState.DONE
        }
        self.assertEqual(leaving, {TaskEvent.RERUN})
        self.assertEqual(
            TASK.step(TaskState.DONE, TaskEvent.RERUN),
            (TaskState.PENDING, (TaskOutput.UNCOUNT_RESULT, TaskOutput.JOURNAL, TaskOutput.ENQUEUE)),
        )

    def test_dispatch_only_pending(self) -> None:
        """Only a pending task can be dispatched: anything else is the dispatcher's bug."""
        for state in (TaskState.ASSIGNED, TaskState.IN_DOUBT, TaskState.RETRY_WAIT, TaskState.DONE):
            self.assertRaises(IllegalTransition, TASK.step, state, TaskEvent.DISPATCH)

    def test_journal_names(self) -> None:
        """Each state is stored under the name the journal used before the machine, and read back."""
        self.assertEqual(set(JOURNAL_NAMES.values()), {"pending", "assigned", "done"})
        for name in ("pending", "assigned", "done"):
            self.assertEqual(JOURNAL_NAMES[from_journal(name)], name)
        self.assertRaises(ValueError, from_journal, "running")

    def test_seat_outputs_follow_assigned(self) -> None:
        """Every row into ASSIGNED holds a seat and every row out of it releases one: nothing else touches it."""
        for state, event, target, emitted in TASK.transitions():
            held = emitted.count(TaskOutput.HOLD_SEAT) - emitted.count(TaskOutput.RELEASE_SEAT)
            self.assertEqual(held, int(holds_seat(target)) - int(holds_seat(state)), (state, event))

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(TaskEvent))), max_size=80))
    def test_seat_counter(self, events: list[tuple[int, TaskEvent]]) -> None:
        """Kept by the outputs alone, a worker's seat counter is always the number of its assigned tasks."""
        states, seat, _ = run_tasks(events, 4)
        self.assertEqual(seat, sum(holds_seat(state) for state in states))
        self.assertGreaterEqual(seat, 0)


class KindMachineTests(SynchronousTestCase):
    """A task kind's wait for a capable worker: L{KIND}."""

    def test_warns_once_after_grace(self) -> None:
        """The first unschedulable dispatch notes the time and starts the timer; past the grace it warns once."""
        machine = KIND.machine()
        self.assertEqual(machine.fire(KindEvent.UNSCHEDULABLE), (KindOutput.NOTE_SINCE, KindOutput.START_GRACE_TIMER))
        self.assertEqual(machine.fire(KindEvent.UNSCHEDULABLE), ())
        self.assertEqual(machine.fire(KindEvent.GRACE_OVER), (KindOutput.WARN,))
        self.assertEqual(machine.fire(KindEvent.GRACE_OVER), ())
        self.assertIs(machine.state, KindState.WARNED)

    def test_served_again(self) -> None:
        """A capable worker ends the wait, and a later wait warns again."""
        machine = KIND.machine(KindState.WARNED)
        self.assertEqual(machine.fire(KindEvent.SCHEDULABLE), (KindOutput.FORGET_SINCE,))
        self.assertEqual(machine.fire(KindEvent.SCHEDULABLE), ())
        self.assertEqual(machine.fire(KindEvent.GRACE_OVER), (KindOutput.NOTE_SINCE, KindOutput.WARN))


# -- the attempt on a worker -----------------------------------------------------


class AttemptMachineTests(SynchronousTestCase):
    """A task attempt on its worker: L{ATTEMPT}."""

    def walk(
        self, *events: AttemptEvent, start: AttemptState = AttemptState.QUEUED
    ) -> tuple[AttemptState, list[AttemptOutput]]:
        """Fire C{events} in turn; the last state and all outputs."""
        state, seen = start, list[AttemptOutput]()
        for event in events:
            state, emitted = ATTEMPT.step(state, event)
            seen.extend(emitted)
        return state, seen

    def test_life_for_another_master(self) -> None:
        """Queued, run, finished, sent, acknowledged: the result is kept until the acknowledgement."""
        Out = AttemptOutput
        state, seen = self.walk(AttemptEvent.START, AttemptEvent.ENDED, AttemptEvent.FLUSHED, AttemptEvent.ACKNOWLEDGED)
        self.assertIs(state, AttemptState.ACKNOWLEDGED)
        self.assertEqual(
            seen, [Out.TAKE_SLOT, Out.RUN, Out.FREE_SLOT, Out.KEEP_RESULT, Out.QUEUE_RESULT, Out.FORGET_RESULT]
        )

    def test_life_for_own_master(self) -> None:
        """An attempt of this node's own master is delivered and forgotten, never kept."""
        state, seen = self.walk(AttemptEvent.START, AttemptEvent.ENDED_NOT_KEPT, AttemptEvent.FLUSHED)
        self.assertIs(state, AttemptState.DELIVERED)
        self.assertNotIn(AttemptOutput.KEEP_RESULT, seen)

    def test_resend_from_cache(self) -> None:
        """Asked about (or assigned again) after sending, the kept result goes out again, counted."""
        state, seen = self.walk(AttemptEvent.RESEND, start=AttemptState.SENT)
        self.assertIs(state, AttemptState.FINISHED)
        self.assertEqual(seen, [AttemptOutput.COUNT_FROM_CACHE, AttemptOutput.QUEUE_RESULT])
        self.assertEqual(query_answer(AttemptState.SENT), "done")

    def test_resent_before_the_flush(self) -> None:
        """A result resent before its batch went out is in the batch twice: the second flush changes nothing."""
        state, seen = self.walk(
            AttemptEvent.RESEND, AttemptEvent.FLUSHED, AttemptEvent.FLUSHED, start=AttemptState.FINISHED
        )
        self.assertIs(state, AttemptState.SENT)
        self.assertEqual(seen, [AttemptOutput.COUNT_FROM_CACHE, AttemptOutput.QUEUE_RESULT])

    def test_cancel_everywhere(self) -> None:
        """A cancel drops a queued attempt, stops a running one, and forgets a finished one's result."""
        self.assertEqual(self.walk(AttemptEvent.CANCEL), (AttemptState.CANCELLED, [AttemptOutput.UNQUEUE]))
        state, seen = self.walk(AttemptEvent.START, AttemptEvent.CANCEL, AttemptEvent.ENDED)
        self.assertIs(state, AttemptState.CANCELLED)
        self.assertIn(AttemptOutput.STOP_PROCESS, seen)
        self.assertNotIn(AttemptOutput.QUEUE_RESULT, seen)
        self.assertEqual(
            self.walk(AttemptEvent.CANCEL, start=AttemptState.FINISHED),
            (AttemptState.CANCELLED, [AttemptOutput.FORGET_RESULT, AttemptOutput.UNQUEUE_RESULT]),
        )

    def test_leaving(self) -> None:
        """A leaving node hands its queued attempts back, and stopped running ones come back as returned."""
        self.assertEqual(
            self.walk(AttemptEvent.STOP_ACCEPTING),
            (AttemptState.RETURNED, [AttemptOutput.UNQUEUE, AttemptOutput.QUEUE_RETURNED]),
        )
        state, seen = self.walk(AttemptEvent.START, AttemptEvent.STOP_RUNNING, AttemptEvent.ENDED)
        self.assertIs(state, AttemptState.RETURNED)
        self.assertEqual(seen[-1], AttemptOutput.QUEUE_RETURNED)
        self.assertNotIn(AttemptOutput.KEEP_RESULT, seen)

    def test_cancelled_while_stopping(self) -> None:
        """Cancelled after it was stopped for leaving, its result is dropped, not returned."""
        state, seen = self.walk(AttemptEvent.START, AttemptEvent.STOP_RUNNING, AttemptEvent.CANCEL, AttemptEvent.ENDED)
        self.assertIs(state, AttemptState.CANCELLED)
        self.assertNotIn(AttemptOutput.QUEUE_RETURNED, seen)

    def test_evicted(self) -> None:
        """A result pushed out of the full cache is still sent if unsent; once sent, the attempt is forgotten."""
        self.assertEqual(
            self.walk(AttemptEvent.EVICTED, start=AttemptState.FINISHED)[0], AttemptState.FINISHED_NOT_KEPT
        )
        self.assertEqual(self.walk(AttemptEvent.EVICTED, start=AttemptState.SENT)[0], AttemptState.FORGOTTEN)
        self.assertEqual(query_answer(AttemptState.FORGOTTEN), "unknown")

    def test_master_gone(self) -> None:
        """A queued attempt of a master that went away is dropped; a master asking later hears unknown."""
        self.assertEqual(self.walk(AttemptEvent.MASTER_GONE), (AttemptState.DROPPED, [AttemptOutput.UNQUEUE]))
        self.assertEqual(query_answer(AttemptState.DROPPED), "unknown")
        self.assertRaises(IllegalTransition, ATTEMPT.step, AttemptState.RUNNING, AttemptEvent.MASTER_GONE)

    def test_query_answers(self) -> None:
        """RESULT_QUERY answers running for what is held, done for what is kept, unknown for the rest."""
        for state in ATTEMPT.used:
            expected = "done" if state in KEPT else "running" if state in ACTIVE else "unknown"
            self.assertEqual(query_answer(state), expected, state)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.sampled_from(list(AttemptEvent)), max_size=30))
    def test_containers_follow_state(self, events: list[AttemptEvent]) -> None:
        """
        Kept by the outputs alone, the slot count and the cache follow the
        state: a slot while running, a kept result while finished or sent.
        """
        state = AttemptState.QUEUED
        slots = kept = 0
        for event in events:
            if not ATTEMPT.allows(state, event):
                continue
            state, emitted = ATTEMPT.step(state, event)
            slots += emitted.count(AttemptOutput.TAKE_SLOT) - emitted.count(AttemptOutput.FREE_SLOT)
            kept += emitted.count(AttemptOutput.KEEP_RESULT) - emitted.count(AttemptOutput.FORGET_RESULT)
            if event is AttemptEvent.EVICTED:
                kept -= 1  # the cache itself dropped it
            self.assertEqual(slots, int(state in HOLDS_SLOT))
            self.assertEqual(kept, int(state in KEPT))


# -- the outgoing link -------------------------------------------------------------


class LinkMachineTests(SynchronousTestCase):
    """A L{p2pexec.connections.PeerLink}: L{LINK}."""

    def test_connect_lose_retry(self) -> None:
        """Dial, introduce, watch; a lost connection schedules a retry without counting a failure."""
        machine = LINK.machine()
        self.assertEqual(machine.fire(LinkEvent.DIAL), (LinkOutput.OPEN_CONNECTION,))
        self.assertEqual(machine.fire(LinkEvent.TCP_CONNECTED), (LinkOutput.INTRODUCE,))
        self.assertEqual(machine.fire(LinkEvent.INTRODUCED), (LinkOutput.RESET_FAILURES, LinkOutput.WATCH_CONNECTION))
        self.assertIs(machine.state, LinkState.CONNECTED)
        self.assertEqual(
            machine.fire(LinkEvent.CONNECTION_LOST), (LinkOutput.FORGET_CONNECTION, LinkOutput.SCHEDULE_RETRY)
        )
        self.assertIs(machine.state, LinkState.WAITING)

    def test_failures(self) -> None:
        """A failed connect is retried quietly; a failed introduction closes, counts, retries and warns."""
        self.assertEqual(
            LINK.step(LinkState.CONNECTING, LinkEvent.TCP_FAILED)[1],
            (LinkOutput.COUNT_FAILURE, LinkOutput.SCHEDULE_RETRY, LinkOutput.LOG_FAILURE_QUIETLY),
        )
        self.assertEqual(
            LINK.step(LinkState.INTRODUCING, LinkEvent.INTRODUCTION_FAILED),
            (
                LinkState.WAITING,
                (LinkOutput.CLOSE, LinkOutput.COUNT_FAILURE, LinkOutput.SCHEDULE_RETRY, LinkOutput.LOG_FAILURE),
            ),
        )

    def test_refused_for_good(self) -> None:
        """An instance that refuses for good stops the link; a seed that does is retried slowly."""
        self.assertEqual(LINK.step(LinkState.INTRODUCING, LinkEvent.REFUSED_FOR_GOOD)[0], LinkState.STOPPED)
        state, emitted = LINK.step(LinkState.INTRODUCING, LinkEvent.SEED_REFUSED)
        self.assertIs(state, LinkState.WAITING)
        self.assertIn(LinkOutput.SLOW_DOWN, emitted)

    def test_unwanted(self) -> None:
        """A link not wanted now looks again later instead of dialling."""
        self.assertEqual(
            LINK.step(LinkState.IDLE, LinkEvent.UNWANTED), (LinkState.WAITING, (LinkOutput.SCHEDULE_RECHECK,))
        )

    def test_hold(self) -> None:
        """Held, a link cancels a retry or a TCP attempt, lets an introduction finish, and never dials again."""
        self.assertEqual(LINK.step(LinkState.WAITING, LinkEvent.HOLD), (LinkState.HELD, (LinkOutput.CANCEL_RETRY,)))
        self.assertEqual(
            LINK.step(LinkState.CONNECTING, LinkEvent.HOLD), (LinkState.HELD, (LinkOutput.CANCEL_ATTEMPT,))
        )
        self.assertEqual(LINK.step(LinkState.INTRODUCING, LinkEvent.HOLD), (LinkState.HELD, ()))
        self.assertEqual(LINK.step(LinkState.HELD, LinkEvent.INTRODUCED)[0], LinkState.HELD)
        self.assertEqual(LINK.step(LinkState.HELD, LinkEvent.DIAL), (LinkState.HELD, ()))
        for event in LinkEvent:
            if LINK.allows(LinkState.HELD, event):
                self.assertNotIn(LinkOutput.SCHEDULE_RETRY, LINK.step(LinkState.HELD, event)[1], event)

    def test_stop(self) -> None:
        """Stopped from anywhere, a link cancels what runs and closes; late news only closes."""
        for state in LINK.used:
            if state not in (LinkState.IDLE, LinkState.STOPPED):
                self.assertEqual(
                    LINK.step(state, LinkEvent.STOP),
                    (LinkState.STOPPED, (LinkOutput.CANCEL_RETRY, LinkOutput.CANCEL_ATTEMPT, LinkOutput.CLOSE)),
                )
        self.assertEqual(LINK.step(LinkState.STOPPED, LinkEvent.INTRODUCED), (LinkState.STOPPED, (LinkOutput.CLOSE,)))
        self.assertTrue(LINK.is_final(LinkState.STOPPED))


# -- the connection ----------------------------------------------------------------


class ConnectionMachineTests(SynchronousTestCase):
    """A connection, accepted (L{ACCEPTED}) or dialled (L{DIALLED})."""

    def test_accepted_with_key(self) -> None:
        """An accepted connection in a keyed cluster authenticates, is introduced, and becomes ready."""
        E, Out = ConnectionEvent, ConnectionOutput
        machine = ACCEPTED.machine()
        self.assertEqual(machine.fire(E.ADMITTED_WITH_KEY), (Out.START_DEADLINE, Out.START_INTRODUCTION_DEADLINE))
        self.assertEqual(machine.fire(E.AUTHENTICATE), (Out.ANSWER_CHALLENGE,))
        self.assertEqual(machine.fire(E.AUTH_PROOF_GOOD), (Out.CANCEL_DEADLINE,))
        self.assertEqual(machine.fire(E.CONNECT_REQUEST), (Out.ASK_NODE,))
        self.assertEqual(machine.fire(E.CONNECT_ACCEPTED), (Out.RECORD_PEER,))
        self.assertEqual(machine.fire(E.HANDSHAKE), (Out.CHECK_HANDSHAKE,))
        self.assertEqual(machine.fire(E.HANDSHAKE_DONE), (Out.CANCEL_INTRODUCTION_DEADLINE, Out.NOTIFY_READY))
        self.assertEqual(machine.fire(E.PEER_COMMAND), (Out.SERVE,))
        self.assertEqual(machine.fire(E.DISCONNECT_REQUEST), (Out.NOTIFY_LEAVING,))
        self.assertIs(machine.state, ConnectionState.LEAVING)
        self.assertEqual(
            machine.fire(E.LOST),
            (Out.CANCEL_DEADLINE, Out.CANCEL_INTRODUCTION_DEADLINE, Out.RELEASE_ADDRESS, Out.NOTIFY_LOST),
        )
        # Closed after DISCONNECT_REQUEST: it left in order (its work is not counted as lost).
        self.assertIs(machine.state, ConnectionState.LEFT)
        self.assertTrue(ACCEPTED.is_final(ConnectionState.LEFT))
        self.assertIs(ACCEPTED.step(ConnectionState.READY, E.LOST)[0], ConnectionState.CLOSED)

    def test_client(self) -> None:
        """
        An accepted connection's first client command makes it a client's:
        served, closed when idle, never by the introduction deadline; one
        that then sends CONNECT_REQUEST is introduced as a peer's.
        """
        E, Out, St = ConnectionEvent, ConnectionOutput, ConnectionState
        machine = ACCEPTED.machine()
        self.assertEqual(machine.fire(E.ADMITTED), (Out.START_INTRODUCTION_DEADLINE,))
        self.assertEqual(machine.fire(E.CLIENT_COMMAND), (Out.SERVE,))
        self.assertIs(machine.state, St.CLIENT)
        self.assertEqual(machine.fire(E.INTRODUCTION_DEADLINE), ())
        self.assertEqual(machine.fire(E.PEER_COMMAND), (Out.REFUSE_CONNECT_FIRST,))
        self.assertEqual(ACCEPTED.step(St.CLIENT, E.CLIENT_IDLE), (St.CLOSING, (Out.CLOSE_IDLE_CLIENT, Out.ABORT)))
        self.assertEqual(machine.fire(E.CONNECT_REQUEST), (Out.ASK_NODE,))
        self.assertEqual(machine.fire(E.CONNECT_ACCEPTED), (Out.RECORD_PEER,))
        self.assertIs(machine.state, St.INTRODUCED)
        # The dialler's side has no client state: a client command is served and changes nothing.
        self.assertEqual(DIALLED.step(St.AUTHENTICATED, E.CLIENT_COMMAND), (St.AUTHENTICATED, (Out.SERVE,)))
        self.assertNotIn(St.CLIENT, DIALLED.used)

    def test_introduction_deadline(self) -> None:
        """
        An accepted connection not ready when the introduction deadline
        passes is closed at once (and its input ignored); a ready one, or a
        closing one, ignores it.  The dialler bounds its own introduction.
        """
        E, Out, St = ConnectionEvent, ConnectionOutput, ConnectionState
        for state in (St.AUTHENTICATING, St.CHALLENGED, St.AUTHENTICATED, St.INTRODUCED):
            self.assertEqual(
                ACCEPTED.step(state, E.INTRODUCTION_DEADLINE), (St.CLOSING, (Out.REFUSE_NOT_INTRODUCED, Out.ABORT))
            )
        for state in (St.CLIENT, St.READY, St.LEAVING, St.REFUSED, St.CLOSING, St.CLOSED):
            self.assertTrue(ACCEPTED.is_ignored(state, E.INTRODUCTION_DEADLINE), state)
        for state in DIALLED.used:
            self.assertFalse(DIALLED.allows(state, E.INTRODUCTION_DEADLINE), state)
            self.assertFalse(DIALLED.allows(state, E.CLIENT_IDLE), state)
        self.assertIn(Out.CANCEL_INTRODUCTION_DEADLINE, ACCEPTED.step(St.CLIENT, E.LOST)[1])

    def test_local_token_refused(self) -> None:
        """A failed proof of the local token (no cluster key) is refused and closes the connection, in any open state."""
        refused = (ConnectionOutput.REFUSE_LOCAL_TOKEN, ConnectionOutput.CLOSE)
        for state in (ConnectionState.AUTHENTICATED, ConnectionState.CLIENT, ConnectionState.READY):
            self.assertEqual(ACCEPTED.step(state, ConnectionEvent.LOCAL_TOKEN_REFUSED), (state, refused))

    def test_dialled_without_key(self) -> None:
        """A dialled connection without a key is introduced by its CONNECT_ACK and its HANDSHAKE answer."""
        machine = DIALLED.machine()
        machine.fire(ConnectionEvent.ADMITTED)
        self.assertEqual(machine.fire(ConnectionEvent.CONNECT_ACKED), (ConnectionOutput.RECORD_PEER,))
        self.assertEqual(machine.fire(ConnectionEvent.HANDSHAKE_DONE), (ConnectionOutput.NOTIFY_READY,))
        self.assertIs(machine.state, ConnectionState.READY)

    def test_dialled_authentication(self) -> None:
        """The dialler authenticates itself; a failure refuses and closes; it is never challenged."""
        self.assertEqual(
            DIALLED.step(ConnectionState.AUTHENTICATING, ConnectionEvent.AUTHENTICATED_OURSELVES),
            (ConnectionState.AUTHENTICATED, (ConnectionOutput.CANCEL_DEADLINE,)),
        )
        self.assertEqual(
            DIALLED.step(ConnectionState.AUTHENTICATING, ConnectionEvent.AUTH_FAILED)[1],
            (ConnectionOutput.REFUSE_WRONG_PROOF, ConnectionOutput.CLOSE),
        )
        self.assertNotIn(ConnectionState.CHALLENGED, DIALLED.used)

    def test_unauthenticated_commands(self) -> None:
        """Before authenticating, every command is refused with AUTH_REQUIRED and the connection closed."""
        for table, state in itertools.product((ACCEPTED, DIALLED), (ConnectionState.AUTHENTICATING,)):
            for event in (ConnectionEvent.CLIENT_COMMAND, ConnectionEvent.PEER_COMMAND, ConnectionEvent.HANDSHAKE):
                self.assertEqual(
                    table.step(state, event),
                    (state, (ConnectionOutput.REFUSE_AUTH_REQUIRED, ConnectionOutput.CLOSE)),
                )

    def test_auth_out_of_turn(self) -> None:
        """AUTHENTICATE twice, or AUTH_PROOF before AUTHENTICATE, is refused and closes the connection."""
        refused = (ConnectionOutput.REFUSE_OUT_OF_TURN, ConnectionOutput.CLOSE)
        self.assertEqual(ACCEPTED.step(ConnectionState.CHALLENGED, ConnectionEvent.AUTHENTICATE)[1], refused)
        self.assertEqual(ACCEPTED.step(ConnectionState.AUTHENTICATING, ConnectionEvent.AUTH_PROOF_GOOD)[1], refused)
        self.assertEqual(ACCEPTED.step(ConnectionState.READY, ConnectionEvent.AUTHENTICATE)[1], refused)
        self.assertEqual(
            ACCEPTED.step(ConnectionState.CHALLENGED, ConnectionEvent.AUTH_PROOF_BAD)[1],
            (ConnectionOutput.REFUSE_WRONG_PROOF, ConnectionOutput.CLOSE),
        )

    def test_deadline(self) -> None:
        """The deadline refuses a connection still authenticating, and is ignored once authenticated."""
        self.assertEqual(
            ACCEPTED.step(ConnectionState.CHALLENGED, ConnectionEvent.AUTH_DEADLINE)[1],
            (ConnectionOutput.REFUSE_TOO_SLOW, ConnectionOutput.CLOSE),
        )
        self.assertEqual(
            ACCEPTED.step(ConnectionState.READY, ConnectionEvent.AUTH_DEADLINE), (ConnectionState.READY, ())
        )

    def test_order_of_introduction(self) -> None:
        """Peer commands need the handshake; a client's need only authentication; CONNECT_REQUEST comes once."""
        Out = ConnectionOutput
        self.assertEqual(ACCEPTED.step(ConnectionState.AUTHENTICATED, ConnectionEvent.CLIENT_COMMAND)[1], (Out.SERVE,))
        self.assertEqual(
            ACCEPTED.step(ConnectionState.AUTHENTICATED, ConnectionEvent.PEER_COMMAND)[1], (Out.REFUSE_CONNECT_FIRST,)
        )
        self.assertEqual(
            ACCEPTED.step(ConnectionState.INTRODUCED, ConnectionEvent.PEER_COMMAND)[1], (Out.REFUSE_CONNECT_FIRST,)
        )
        self.assertEqual(
            ACCEPTED.step(ConnectionState.INTRODUCED, ConnectionEvent.CONNECT_REQUEST)[1], (Out.REFUSE_DUPLICATE,)
        )
        self.assertEqual(
            ACCEPTED.step(ConnectionState.READY, ConnectionEvent.HANDSHAKE)[1], (Out.REFUSE_HANDSHAKE_DONE,)
        )
        self.assertEqual(
            DIALLED.step(ConnectionState.AUTHENTICATED, ConnectionEvent.CONNECT_REQUEST)[1], (Out.REFUSE_DUPLICATE,)
        )

    def test_over_limit(self) -> None:
        """A connection over its address's limit is aborted and, never counted, not released when lost."""
        machine = ACCEPTED.machine()
        self.assertEqual(
            machine.fire(ConnectionEvent.OVER_LIMIT), (ConnectionOutput.REFUSE_OVER_LIMIT, ConnectionOutput.ABORT)
        )
        self.assertFalse(accepts_input(machine.state))
        self.assertEqual(machine.fire(ConnectionEvent.PEER_COMMAND), ())
        self.assertEqual(machine.fire(ConnectionEvent.LOST), (ConnectionOutput.NOTIFY_LOST,))

    def test_dropped(self) -> None:
        """A connection dropped for bad input ignores what follows, and is released once lost."""
        machine = ACCEPTED.machine(ConnectionState.READY)
        self.assertEqual(machine.fire(ConnectionEvent.DROP), (ConnectionOutput.CLOSE,))
        self.assertFalse(accepts_input(machine.state))
        self.assertEqual(machine.fire(ConnectionEvent.PEER_COMMAND), ())
        self.assertIn(ConnectionOutput.RELEASE_ADDRESS, machine.fire(ConnectionEvent.LOST))
        self.assertTrue(ACCEPTED.is_final(ConnectionState.CLOSED))

    def test_lost_releases_counted_address(self) -> None:
        """Every admitted connection releases its address once lost; a refused one does not."""
        for table in (ACCEPTED, DIALLED):
            for state in table.used:
                if table.allows(state, ConnectionEvent.LOST):
                    counted = state not in (ConnectionState.OPENED, ConnectionState.REFUSED)
                    emitted = table.step(state, ConnectionEvent.LOST)[1]
                    self.assertEqual(ConnectionOutput.RELEASE_ADDRESS in emitted, counted, (table.name, state))
                    self.assertIn(ConnectionOutput.NOTIFY_LOST, emitted)


def connect_request_refuses(me: str, name: str, old_dialled: bool, is_connected: bool) -> bool:
    """Today's acceptor check at CONNECT_REQUEST (node.py at 6778000, 553-575's twin at 748-757)."""
    return is_connected and old_dialled and dials(me, name)


def connection_ready_keeps_old(me: str, name: str, same: bool, old_dialled: bool, new_dialled: bool) -> bool:
    """Today's check when a handshake completes (node.py at 6778000, 556-565)."""
    lower_dials = dials(me, name)
    return same and old_dialled == lower_dials and new_dialled != lower_dials


class DecisionTests(SynchronousTestCase):
    """The one cluster/version check and the one duplicate-connection tie-break."""

    def test_compatibility(self) -> None:
        """The version is checked first, then the cluster."""
        self.assertIs(compatibility("c", 1, "c", 1), Compatibility.COMPATIBLE)
        self.assertIs(compatibility("c", 1, "d", 1), Compatibility.OTHER_CLUSTER)
        self.assertIs(compatibility("c", 1, "c", 2), Compatibility.OTHER_VERSION)
        self.assertIs(compatibility("c", 1, "d", 2), Compatibility.OTHER_VERSION)

    def test_same_as_both_old_places(self) -> None:
        """
        L{resolve_duplicate} decides exactly as both places did before it:
        the acceptor's early refusal, and the choice once a handshake
        completes (for every name order and every combination).
        """
        for me, name in (("a", "b"), ("b", "a")):
            for same, old_dialled, new_dialled in itertools.product((False, True), repeat=3):
                decided = resolve_duplicate(me, name, same, old_dialled, new_dialled)
                self.assertEqual(
                    decided is Duplicate.KEEP_OLD,
                    connection_ready_keeps_old(me, name, same, old_dialled, new_dialled),
                    (me, name, same, old_dialled, new_dialled),
                )
                if decided is not Duplicate.KEEP_OLD:
                    self.assertIs(decided, Duplicate.REPLACE_MOVED if same else Duplicate.REPLACE_RESTARTED)
                if not new_dialled:
                    self.assertEqual(
                        decided is Duplicate.KEEP_OLD, connect_request_refuses(me, name, old_dialled, same)
                    )

    def test_both_sides_agree(self) -> None:
        """When both sides dialled at once, both keep the same connection: the one the lower name dialled."""
        # a < b: a dialled connection 1, b dialled connection 2; each side sees the other as new.
        a_keeps = resolve_duplicate("a", "b", True, old_dialled=True, new_dialled=False)
        b_keeps = resolve_duplicate("b", "a", True, old_dialled=True, new_dialled=False)
        self.assertIs(a_keeps, Duplicate.KEEP_OLD)  # a keeps its own (connection 1)
        self.assertIs(b_keeps, Duplicate.REPLACE_MOVED)  # b drops its own (connection 2) for 1
