"""
Tests for L{p2pexec.fsm}: the generic transition table, on a toy machine.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.fsm import IllegalTransition, Symbol, Transitions


class Light(Symbol):
    """States of a toy machine."""

    OFF = "off"
    ON = "on"
    BROKEN = "broken"


class Press(Symbol):
    """Events of the toy machine."""

    SWITCH = "switch"
    HIT = "hit"


class Lamp(Symbol):
    """Outputs of the toy machine."""

    GLOW = "glow"
    DARKEN = "darken"


def toy(**overrides: Any) -> Transitions[Light, Press, Lamp]:
    """A small table: a light that switches, and breaks when hit while on."""
    arguments: dict[str, Any] = dict(
        name="lamp",
        states=Light,
        events=Press,
        outputs=Lamp,
        initial=Light.OFF,
        table={
            (Light.OFF, Press.SWITCH): (Light.ON, (Lamp.GLOW,)),
            (Light.ON, Press.SWITCH): (Light.OFF, (Lamp.DARKEN,)),
            (Light.ON, Press.HIT): (Light.BROKEN, (Lamp.DARKEN,)),
        },
        ignored=[(Light.OFF, Press.HIT), (Light.BROKEN, Press.HIT)],
    )
    arguments.update(overrides)
    return Transitions(**arguments)


class TransitionsTests(SynchronousTestCase):
    """The generic table: stepping, refusing, checking and drawing."""

    def test_step(self) -> None:
        """C{step} gives the next state and the outputs, in table order."""
        self.assertEqual(toy().step(Light.OFF, Press.SWITCH), (Light.ON, (Lamp.GLOW,)))

    def test_machine_fires(self) -> None:
        """A L{Machine} moves with each event and returns its outputs."""
        machine = toy().machine()
        self.assertIs(machine.state, Light.OFF)
        self.assertEqual(machine.fire(Press.SWITCH), (Lamp.GLOW,))
        self.assertEqual(machine.fire(Press.HIT), (Lamp.DARKEN,))
        self.assertIs(machine.state, Light.BROKEN)
        self.assertIn("BROKEN", repr(machine))

    def test_illegal(self) -> None:
        """
        An event the table does not take raises L{IllegalTransition} naming
        the machine, the state and the event; the state stays.
        """
        machine = toy().machine(Light.BROKEN)
        with self.assertRaises(IllegalTransition) as caught:
            machine.fire(Press.SWITCH)
        self.assertEqual(str(caught.exception), "the lamp machine takes no event SWITCH in state BROKEN")
        self.assertEqual(
            (caught.exception.machine, caught.exception.state, caught.exception.event),
            ("lamp", Light.BROKEN, Press.SWITCH),
        )
        self.assertIs(machine.state, Light.BROKEN)
        self.assertFalse(machine.allows(Press.SWITCH))

    def test_ignored(self) -> None:
        """A declared ignored pair keeps the state and has no outputs."""
        table = toy()
        machine = table.machine()
        self.assertEqual(machine.fire(Press.HIT), ())
        self.assertIs(machine.state, Light.OFF)
        self.assertTrue(table.is_ignored(Light.OFF, Press.HIT))
        self.assertFalse(table.is_ignored(Light.ON, Press.HIT))
        self.assertTrue(machine.allows(Press.HIT))

    def test_final(self) -> None:
        """A state that no event leads out of is final."""
        table = toy()
        self.assertEqual([s for s in Light if table.is_final(s)], [Light.BROKEN])

    def test_wrong_enum(self) -> None:
        """A row naming a member of another enum is refused when the table is made."""
        with self.assertRaises(ValueError) as caught:
            toy(table={(Light.OFF, Lamp.GLOW): (Light.ON, ())})
        self.assertIn("is not a event of Press", str(caught.exception))

    def test_ignored_and_listed(self) -> None:
        """A pair may not be both a transition and ignored."""
        with self.assertRaises(ValueError) as caught:
            toy(ignored=[(Light.OFF, Press.SWITCH)])
        self.assertIn("(OFF, SWITCH) is both a transition and ignored", str(caught.exception))

    def test_unreachable(self) -> None:
        """A state the table uses but nothing reaches is refused when the table is made."""
        with self.assertRaises(ValueError) as caught:
            toy(table={(Light.BROKEN, Press.SWITCH): (Light.OFF, ())}, ignored=[])
        self.assertEqual(str(caught.exception), "lamp: no transition reaches state(s) BROKEN")

    def test_restored_entries(self) -> None:
        """A state entered only by restoring is reachable, and drawn with a dashed start edge."""
        table = toy(table={(Light.BROKEN, Press.SWITCH): (Light.OFF, ())}, ignored=[], restored=[Light.BROKEN])
        self.assertEqual(table.entries, (Light.OFF, Light.BROKEN))
        self.assertIn('start -> BROKEN [style=dashed, label="restored"];', table.to_dot())

    def test_to_dot(self) -> None:
        """The drawing has every state, every edge with its events and outputs, and the ignored pairs."""
        dot = toy().to_dot()
        self.assertIn('digraph "lamp" {', dot)
        self.assertIn("start -> OFF;", dot)
        self.assertIn('OFF -> ON [label="SWITCH /\\nGLOW"];', dot)
        self.assertIn('ON -> BROKEN [label="HIT /\\nDARKEN"];', dot)
        self.assertIn('BROKEN [label="BROKEN", peripheries=2];', dot)
        self.assertIn("// OFF ignores HIT", dot)
        self.assertEqual(dot, toy().to_dot())

    def test_self_loops_in_the_box(self) -> None:
        """Rows that keep the state are written inside the state's box, not drawn as loops."""
        table = toy(table={(Light.OFF, Press.SWITCH): (Light.OFF, (Lamp.GLOW,))}, ignored=[])
        dot = table.to_dot()
        self.assertIn('OFF [label="OFF\\n\\nSWITCH / GLOW\\l", peripheries=2];', dot)
        self.assertNotIn("OFF -> OFF", dot)

    def test_identity_hash(self) -> None:
        """Symbols hash by identity, and still compare and look up as enum members."""
        self.assertEqual(hash(Light.ON), object.__hash__(Light.ON))
        self.assertEqual({Light.ON: 1}[Light.ON], 1)
        self.assertIs(Light("on"), Light.ON)
