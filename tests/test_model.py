"""Tests for L{p2pexec.model}: value types and their validation."""

import json

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import (
    Assignment,
    NodeInfo,
    TaskResult,
    TaskSpec,
    ValidationError,
    kind_of,
    parse_instructions,
)


def node(**overrides):
    """A valid node description, with C{overrides}."""
    fields = dict(
        name="b1",
        instance="abcd",
        host="127.0.0.1",
        port=10002,
        capabilities=("b",),
        slots=2,
        cluster="default",
        version=1,
    )
    fields.update(overrides)
    return NodeInfo(**fields)


class KindTests(SynchronousTestCase):
    """The kind implied by a name."""

    def test_leading_letters(self):
        """A name's kind is its leading letters, as in the original system."""
        self.assertEqual(kind_of("b1"), "b")
        self.assertEqual(kind_of("render17x"), "render")

    def test_no_letters(self):
        """A name without leading letters is its own kind."""
        self.assertEqual(kind_of("42"), "42")


class NodeInfoTests(SynchronousTestCase):
    """L{NodeInfo} wire round trip and validation."""

    def test_round_trip(self):
        """A node description survives its wire form."""
        info = node()
        self.assertEqual(NodeInfo.from_wire(info.to_wire()), info)

    def test_rejects_bad_fields(self):
        """Each bad field is refused with a message naming it."""
        cases = {
            "name": ("bad name", "node name"),
            "port": (70000, "port"),
            "slots": (0, "slots"),
            "capabilities": (["ok", "not ok"], "capability"),
            "cluster": ("", "cluster"),
            "instance": ("", "instance"),
        }
        for field, (value, expected) in cases.items():
            wire = node().to_wire()
            wire[field] = value
            with self.assertRaises(ValidationError) as caught:
                NodeInfo.from_wire(wire)
            self.assertIn(expected, str(caught.exception), field)

    def test_rejects_missing_and_mistyped(self):
        """A missing field or a string where an integer belongs is refused."""
        wire = node().to_wire()
        del wire["port"]
        self.assertRaises(ValidationError, NodeInfo.from_wire, wire)
        wire = node().to_wire()
        wire["slots"] = "2"
        self.assertRaises(ValidationError, NodeInfo.from_wire, wire)
        wire["slots"] = True
        self.assertRaises(ValidationError, NodeInfo.from_wire, wire)
        self.assertRaises(ValidationError, NodeInfo.from_wire, ["not", "a", "dict"])

    def test_can_run(self):
        """A node runs exactly the kinds it advertises."""
        self.assertTrue(node().can_run("b"))
        self.assertFalse(node().can_run("a"))


class TaskSpecTests(SynchronousTestCase):
    """L{TaskSpec} validation, which job files and assignments share."""

    def test_instruction(self):
        """An original-style instruction has no command and the name's kind."""
        task = TaskSpec.instruction("c1")
        self.assertEqual((task.id, task.kind, task.command), ("c1", "c", None))

    def test_round_trip(self):
        """Every field survives the wire form."""
        task = TaskSpec(
            id="t1",
            kind="sh",
            command=("echo", "hi"),
            cwd="/tmp",
            env=(("A", "1"),),
            timeout=2.5,
        )
        self.assertEqual(TaskSpec.from_wire(task.to_wire()), task)
        shell = TaskSpec(id="t2", kind="sh", command="echo $HOME", shell=True)
        self.assertEqual(TaskSpec.from_wire(shell.to_wire()), shell)

    def test_kind_defaults_to_leading_letters(self):
        """Without a kind, a task's kind comes from its id."""
        self.assertEqual(TaskSpec.from_wire({"id": "render7"}).kind, "render")

    def test_errors_name_task_and_field(self):
        """A bad field is refused with the task id and the field named."""
        cases = [
            ({"id": "t", "command": "echo"}, "'command'"),
            ({"id": "t", "command": [], "kind": "x"}, "'command'"),
            ({"id": "t", "command": "x", "shell": "yes"}, "'shell'"),
            ({"id": "t", "shell": True}, "'shell'"),
            ({"id": "t", "timeout": -1}, "'timeout'"),
            ({"id": "t", "timeout": True}, "'timeout'"),
            ({"id": "t", "env": {"A": 1}}, "'env'"),
            ({"id": "t", "env": {"A=B": "1"}}, "'env'"),
            ({"id": "t", "cwd": ""}, "'cwd'"),
            ({"id": "t", "colour": "red"}, "colour"),
            ({"id": "t", "kind": "no spaces"}, "kind"),
        ]
        for data, expected in cases:
            with self.assertRaises(ValidationError) as caught:
                TaskSpec.from_wire(data)
            message = str(caught.exception)
            self.assertIn("task 't'", message, data)
            self.assertIn(expected, message, data)

    def test_nul_and_newline_refused(self):
        """NUL characters (which no process can take) and trailing newlines are refused."""
        for data in (
            {"id": "t", "command": ["echo", "a\0b"]},
            {"id": "t", "command": "echo \0", "shell": True},
            {"id": "t", "env": {"A": "x\0"}},
            {"id": "t", "cwd": "/tmp\0"},
            {"id": "t\n"},
            {"id": "t", "kind": "k\n"},
        ):
            self.assertRaises(ValidationError, TaskSpec.from_wire, data)

    def test_bad_id(self):
        """An id with spaces, or a missing id, is refused."""
        self.assertRaises(ValidationError, TaskSpec.from_wire, {"id": "a b"})
        self.assertRaises(ValidationError, TaskSpec.from_wire, {"kind": "a"})


class TaskResultTests(SynchronousTestCase):
    """L{TaskResult} wire round trip and validation."""

    def test_round_trip(self):
        """Every field survives the wire form."""
        result = TaskResult(
            task_id="t1",
            attempt=2,
            status="failed",
            node="b1",
            exit_code=3,
            duration=0.25,
            stdout="out",
            stderr="err",
            error="boom",
        )
        self.assertEqual(TaskResult.from_wire(result.to_wire()), result)

    def test_started_and_signal_round_trip(self):
        """C{started} and C{signal} survive the wire form, and are absent from it when unknown."""
        result = TaskResult(task_id="t1", attempt=1, status="failed", node="b1", started=1_700_000_000.5, signal=15)
        wire = result.to_wire()
        self.assertEqual((wire["started"], wire["signal"]), (1_700_000_000.5, 15))
        self.assertEqual(TaskResult.from_wire(wire), result)
        bare = TaskResult(task_id="t1", attempt=1, status="succeeded", node="b1").to_wire()
        self.assertNotIn("started", bare)
        self.assertNotIn("signal", bare)
        self.assertEqual(TaskResult.from_wire(bare).started, None)

    def test_rejects_bad_started_and_signal(self):
        """A C{started} that is not a finite number, or a C{signal} that is not a number above 0, is refused."""
        for field, value in [
            ("started", "noon"),
            ("started", json.loads("NaN")),
            ("signal", 0),
            ("signal", "9"),
            ("signal", True),
        ]:
            wire = TaskResult(task_id="t", attempt=1, status="failed", node="b1").to_wire()
            wire[field] = value
            with self.assertRaises(ValidationError) as caught:
                TaskResult.from_wire(wire)
            self.assertIn(repr(field) if field == "started" else "'signal'", str(caught.exception))

    def test_rejects_unknown_status(self):
        """A status outside the documented ones is refused."""
        wire = TaskResult(task_id="t", attempt=1, status="succeeded", node="b1").to_wire()
        wire["status"] = "maybe"
        self.assertRaises(ValidationError, TaskResult.from_wire, wire)

    def test_rejects_durations_that_are_not_finite_seconds(self):
        """
        NaN and infinity (which JSON decodes from C{NaN}, C{1e400} and
        C{-Infinity}) and an integer too large for a float are refused as
        the duration they claim to be, naming the field.
        """
        for duration in (json.loads("NaN"), json.loads("1e400"), json.loads("-Infinity"), 10**400):
            wire = TaskResult(task_id="t", attempt=1, status="succeeded", node="b1").to_wire()
            wire["duration"] = duration
            with self.assertRaises(ValidationError) as caught:
                TaskResult.from_wire(wire)
            self.assertIn("'duration'", str(caught.exception))

    def test_negative_duration_counts_as_zero(self):
        """
        A negative duration (the worker's wall clock stepped back while the
        task ran) is accepted as 0, not refused: refusing the confirmation
        would leave its tasks assigned for ever.
        """
        wire = TaskResult(task_id="t", attempt=1, status="succeeded", node="b1").to_wire()
        wire["duration"] = -1.5
        self.assertEqual(TaskResult.from_wire(wire).duration, 0.0)

    def test_decoded_results_share_their_status_and_node(self):
        """
        Results decoded from JSON (as a master receives them) share one
        status string and one node name string, rather than each keeping
        its own decoded copy for the whole job (W4, docs/performance.rst).
        """
        wire = '[{"id": "t1", "attempt": 1, "status": "succeeded", "node": "bench1", "duration": 0.1},'
        wire += ' {"id": "t2", "attempt": 1, "status": "succeeded", "node": "bench1", "duration": 0.1}]'
        first, second = [TaskResult.from_wire(entry) for entry in json.loads(wire)]
        self.assertIs(first.status, second.status)
        self.assertIs(first.node, second.node)


class AssignmentTests(SynchronousTestCase):
    """L{Assignment}: a task plus its attempt number."""

    def test_round_trip(self):
        """The attempt number travels with the task."""
        assignment = Assignment(task=TaskSpec.instruction("a1"), attempt=3)
        self.assertEqual(Assignment.from_wire(assignment.to_wire()), assignment)

    def test_attempt_required(self):
        """An assignment without a positive attempt number is refused."""
        self.assertRaises(ValidationError, Assignment.from_wire, {"id": "a1"})
        self.assertRaises(ValidationError, Assignment.from_wire, {"id": "a1", "attempt": 0})


class ParseInstructionsTests(SynchronousTestCase):
    """Original-style instruction lists."""

    def test_example(self):
        """The original example's instructions become five tasks of three kinds."""
        tasks = parse_instructions(["a1", "a2", "b1", "c1", "a3"])
        self.assertEqual(
            [(t.id, t.kind) for t in tasks], [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c"), ("a3", "a")]
        )

    def test_duplicates_refused(self):
        """An instruction listed twice is refused, naming it."""
        with self.assertRaises(ValidationError) as caught:
            parse_instructions(["a1", "a1"])
        self.assertIn("'a1'", str(caught.exception))
