"""
Small table-driven state machines, free of I/O.

A machine is one transition table: for each (state, event) pair it allows, the
next state and the outputs, which are names of what the caller must do now
(send a box, start a timer, count a seat).  The table does nothing itself: the
caller fires an event, gets the outputs back and performs them.  So a machine
can be tested by feeding it events and looking at what it answers, and drawn
(L{Transitions.to_dot}) from the same table the code runs.

The table is shared and stateless; the state of each thing (a task, a
connection) is one enum member kept wherever that thing lives.  Firing an
event is two dictionary lookups and allocates nothing: the master's task
machine runs for every task, tens of thousands of times a second.  L{Machine}
wraps a table and one current state, for the things that have an object of
their own.

States, events and outputs are members of enums derived from L{Symbol}, which
hash by identity (an ordinary C{enum.Enum} hashes its name through a Python
call, twice as slow as a lookup needs to be).

A (state, event) pair that the table neither lists nor declares ignored is a
bug in the caller, and raises L{IllegalTransition} naming the machine, the
state and the event.  Input from the network never reaches a machine
unchecked: its events are what the code decided the input means, and a
peer's out-of-turn box is an event with a refusal among its outputs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar


class Symbol(enum.Enum):
    """
    The base of the enums of states, events and outputs: members hash by
    identity (they are singletons), which makes table lookups cheap.
    """

    __hash__ = object.__hash__


S = TypeVar("S", bound=Symbol)
E = TypeVar("E", bound=Symbol)
O = TypeVar("O", bound=Symbol)  # noqa: E741 (the letter O, for outputs)


class IllegalTransition(Exception):
    """An event was fired in a state whose table row does not allow it."""

    def __init__(self, machine: str, state: Symbol, event: Symbol) -> None:
        """
        @param machine: the machine's name.
        @param state: the state it was in (and stays in).
        @param event: the event it does not take in that state.
        """
        super().__init__(f"the {machine} machine takes no event {event.name} in state {state.name}")
        self.machine = machine
        self.state = state
        self.event = event


class Transitions(Generic[S, E, O]):
    """
    One machine's transition table.

    @ivar name: the machine's name, for errors and drawings.
    @ivar initial: the state a new thing starts in.
    @ivar entries: every state a thing may start in: L{initial}, and the
        states it may be restored in (from a journal, say).
    @ivar states: the enum of states.
    @ivar used: the states the table uses, in enum order (several machines
        may share one enum, each using some of its states).
    @ivar events: the enum of events.
    @ivar outputs: the enum of outputs.
    """

    __slots__ = ("name", "initial", "entries", "states", "events", "outputs", "used", "_rows", "_ignored", "_order")

    def __init__(
        self,
        name: str,
        states: type[S],
        events: type[E],
        outputs: type[O],
        initial: S,
        table: Mapping[tuple[S, E], tuple[S, Sequence[O]]],
        ignored: Iterable[tuple[S, E]] = (),
        restored: Iterable[S] = (),
    ) -> None:
        """
        Check the table and compile it.

        @param table: (state, event) to (next state, outputs in the order the
            caller performs them).
        @param ignored: (state, event) pairs that are allowed and do nothing:
            the state stays, no outputs.  Not drawn.
        @param restored: states a thing may also start in (besides
            C{initial}), when it is rebuilt from stored state.
        @raise ValueError: if a row names a member of the wrong enum, a pair
            is both in C{table} and C{ignored}, or a state that the table
            uses can be neither started in nor reached.
        """
        self.name = name
        self.states = states
        self.events = events
        self.outputs = outputs
        self.initial = initial
        self.entries: tuple[S, ...] = (initial,) + tuple(s for s in restored if s is not initial)
        self._rows: dict[S, dict[E, tuple[S, tuple[O, ...]]]] = {state: {} for state in states}
        self._order: list[tuple[S, E]] = []
        self._ignored: set[tuple[S, E]] = set()
        for (state, event), (target, emitted) in table.items():
            self._check(state, states, "state")
            self._check(event, events, "event")
            self._check(target, states, "state")
            for output in emitted:
                self._check(output, outputs, "output")
            self._rows[state][event] = (target, tuple(emitted))
            self._order.append((state, event))
        for state, event in ignored:
            self._check(state, states, "state")
            self._check(event, events, "event")
            if event in self._rows[state]:
                raise ValueError(f"{name}: ({state.name}, {event.name}) is both a transition and ignored")
            self._rows[state][event] = (state, ())
            self._ignored.add((state, event))
        for entry in self.entries:
            self._check(entry, states, "state")
        used = set(self.entries)
        for state, row in self._rows.items():
            for target, _ in row.values():
                used.update((state, target))
        self.used: tuple[S, ...] = tuple(state for state in states if state in used)
        unreachable = used - self.reachable()
        if unreachable:
            names = ", ".join(sorted(s.name for s in unreachable))
            raise ValueError(f"{name}: no transition reaches state(s) {names}")

    def _check(self, member: Symbol, kind: type[Symbol], what: str) -> None:
        if not isinstance(member, kind):
            raise ValueError(f"{self.name}: {member!r} is not a {what} of {kind.__name__}")

    def step(self, state: S, event: E) -> tuple[S, tuple[O, ...]]:
        """
        The next state and the outputs of firing C{event} in C{state}.

        @raise IllegalTransition: if the table does not take C{event} in
            C{state}.
        """
        try:
            return self._rows[state][event]
        except KeyError:
            raise IllegalTransition(self.name, state, event) from None

    def allows(self, state: S, event: E) -> bool:
        """Whether C{event} may be fired in C{state} (perhaps as an ignored one)."""
        return event in self._rows[state]

    def is_ignored(self, state: S, event: E) -> bool:
        """Whether C{event} is declared to do nothing in C{state}."""
        return (state, event) in self._ignored

    def is_final(self, state: S) -> bool:
        """Whether no event leads out of C{state} (events it takes, if any, keep it there)."""
        return all(target is state for target, _ in self._rows[state].values())

    def transitions(self) -> list[tuple[S, E, S, tuple[O, ...]]]:
        """Every listed (not ignored) row, as (state, event, next state, outputs), in table order."""
        return [(s, e, *self._rows[s][e]) for s, e in self._order]

    def reachable(self) -> set[S]:
        """The states that can be started in or reached from one."""
        seen: set[S] = set(self.entries)
        frontier = list(self.entries)
        while frontier:
            state = frontier.pop()
            for target, _ in self._rows[state].values():
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        return seen

    def machine(self, state: S | None = None) -> Machine[S, E, O]:
        """A L{Machine} on this table, in C{state} (by default L{initial})."""
        return Machine(self, self.initial if state is None else state)

    def to_dot(self) -> str:
        """
        The table as a graphviz C{digraph}: one node per state, one edge per
        (state, next state, outputs) with the events that take it, labelled
        C{EVENT / OUTPUT, OUTPUT}.  Rows that keep the state are written in
        the state's box instead of as loops, which would bury the drawing.
        Ignored pairs are listed in comments.  Deterministic (enum order),
        so a committed drawing can be compared with the code.
        """
        lines = [
            f"// The {self.name} state machine, generated from p2pexec's code: do not edit.",
            f'digraph "{self.name}" {{',
            "    rankdir=TB;",
            '    node [shape=box, style=rounded, fontname="Helvetica"];',
            '    edge [fontname="Helvetica", fontsize=10];',
            '    start [shape=point, label=""];',
        ]
        edges: dict[tuple[S, S, tuple[O, ...]], list[E]] = {}
        for state, event, target, emitted in self.transitions():
            edges.setdefault((state, target, emitted), []).append(event)
        for state in self.used:
            label = state.name
            loops = [
                (events, emitted) for (source, target, emitted), events in edges.items() if source is target is state
            ]
            if loops:
                # A blank line under the name, then one left-aligned line per row.
                label += "\\n\\n" + "".join(_label(events, emitted, ", ") + "\\l" for events, emitted in loops)
            shape = ", peripheries=2" if self.is_final(state) else ""
            lines.append(f'    {state.name} [label="{label}"{shape}];')
        lines.append(f"    start -> {self.initial.name};")
        for entry in self.entries[1:]:
            lines.append(f'    start -> {entry.name} [style=dashed, label="restored"];')
        for (state, target, emitted), events in edges.items():
            if state is not target:
                label = _label(events, emitted, "\\n")
                lines.append(f'    {state.name} -> {target.name} [label="{label}"];')
        for state in self.used:
            ignored = [event.name for event in self.events if (state, event) in self._ignored]
            if ignored:
                lines.append(f"    // {state.name} ignores {', '.join(ignored)}")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _label(events: Sequence[Symbol], emitted: Sequence[Symbol], separator: str) -> str:
    """C{EVENT, EVENT / OUTPUT, OUTPUT}: one drawn row (or merged rows) of a table."""
    text = separator.join(event.name for event in events)
    if emitted:
        text += (" / " if separator == ", " else " /" + separator) + separator.join(output.name for output in emitted)
    return text


class Machine(Generic[S, E, O]):
    """
    One thing's current state on a L{Transitions} table.

    @ivar transitions: the table.
    @ivar state: the current state.
    """

    __slots__ = ("transitions", "state")

    def __init__(self, transitions: Transitions[S, E, O], state: S) -> None:
        """Start in C{state}."""
        self.transitions = transitions
        self.state = state

    def fire(self, event: E) -> tuple[O, ...]:
        """
        Take C{event}: move to the next state and return the outputs, which
        the caller performs in order.

        @raise IllegalTransition: if the table does not take C{event} now;
            the state is unchanged.
        """
        self.state, emitted = self.transitions.step(self.state, event)
        return emitted

    def allows(self, event: E) -> bool:
        """Whether C{event} may be fired now."""
        return self.transitions.allows(self.state, event)

    def __repr__(self) -> str:
        return f"<{self.transitions.name} machine in state {self.state.name}>"
