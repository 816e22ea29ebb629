"""
Tests for L{p2pexec.file_values} and L{p2pexec.filenames}: the inputs and
outputs of a task and the output files of a result, on the wire and checked.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.filenames import check_relative, input_name
from p2pexec.model import (
    Assignment,
    InputFile,
    OutputFile,
    OutputPattern,
    TaskResult,
    TaskSpec,
    ValidationError,
)

DIGEST = "ab" * 32
OTHER = "cd" * 32


def task(**fields: Any) -> dict[str, Any]:
    """A task's wire form with C{fields}."""
    return {"id": "t1", "kind": "sh", "command": ["true"], **fields}


class FilenameTests(SynchronousTestCase):
    """The rules of relative names."""

    def test_normalised(self) -> None:
        """A relative path comes back normalised."""
        self.assertEqual(check_relative("a/./b//c.txt", "x"), "a/b/c.txt")
        self.assertEqual(check_relative("out/", "x"), "out")

    def test_refused(self) -> None:
        """Empty, absolute, climbing, NUL and the directory itself are refused, each saying why."""
        for path, why in [
            ("", "non-empty relative path"),
            ("/etc/passwd", "absolute path"),
            ("../x", "climbs out"),
            ("a/../../x", "climbs out"),
            ("a\0b", "NUL"),
            (".", "directory itself"),
            ("./", "directory itself"),
        ]:
            with self.assertRaises(ValidationError) as raised:
                check_relative(path, "input name")
            self.assertIn(why, str(raised.exception))
            self.assertTrue(str(raised.exception).startswith("input name"))

    def test_input_name(self) -> None:
        """A relative path keeps its path; an absolute one or one with '..' lands as its base name."""
        self.assertEqual(input_name("data/a.csv"), "data/a.csv")
        self.assertEqual(input_name("./data//a.csv"), "data/a.csv")
        self.assertEqual(input_name("/srv/models/model.bin"), "model.bin")
        self.assertEqual(input_name("../shared/b.csv"), "b.csv")


class TaskFilesTests(SynchronousTestCase):
    """A task's inputs and outputs, through its wire form."""

    def test_round_trip(self) -> None:
        """Inputs and outputs survive to_wire and from_wire, an assignment's too; the source stays local."""
        spec = TaskSpec(
            id="t1",
            kind="sh",
            command=("true",),
            inputs=(InputFile("data/a.csv", DIGEST, 10, source="/home/u/data/a.csv"), InputFile("m.bin", OTHER, 0)),
            outputs=(OutputPattern("out/*.png"), OutputPattern("x.log", optional=True)),
        )
        wire = spec.to_wire()
        self.assertEqual(
            wire["inputs"],
            [{"name": "data/a.csv", "sha256": DIGEST, "size": 10}, {"name": "m.bin", "sha256": OTHER, "size": 0}],
        )
        self.assertEqual(wire["outputs"], ["out/*.png", {"glob": "x.log", "optional": True}])
        back = TaskSpec.from_wire(wire)
        self.assertEqual(back, spec)
        self.assertIsNone(back.inputs[0].source)
        self.assertEqual(Assignment.from_wire(Assignment(spec, 2).to_wire()).task, spec)

    def test_without_files_no_fields(self) -> None:
        """A task without files has neither field on the wire."""
        wire = TaskSpec(id="t1", kind="sh", command=("true",)).to_wire()
        self.assertNotIn("inputs", wire)
        self.assertNotIn("outputs", wire)

    def test_repeated_patterns_kept_once(self) -> None:
        """A pattern given twice is kept once."""
        spec = TaskSpec.from_wire(task(outputs=["a", "a", {"glob": "a"}]))
        self.assertEqual(spec.outputs, (OutputPattern("a"),))

    def assertRefused(self, fields: dict[str, Any], *fragments: str) -> None:
        """Assert that a task with C{fields} is refused with a message naming the task and holding C{fragments}."""
        with self.assertRaises(ValidationError) as raised:
            TaskSpec.from_wire(task(**fields))
        message = str(raised.exception)
        self.assertTrue(message.startswith("task 't1'"), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_bad_inputs(self) -> None:
        """Each bad input is refused with one clear message."""
        good = {"name": "a", "sha256": DIGEST, "size": 1}
        cases = [
            ("a.csv", ["'inputs' must be a list"]),
            (["a.csv"], ["input #1 must be an object"]),
            ([{"name": "a", "sha256": DIGEST}], ["missing field(s) size"]),
            ([{**good, "mode": 7}], ["unknown field(s) mode"]),
            ([{**good, "name": "../a"}], ["input #1: name", "climbs out"]),
            ([{**good, "name": "/a"}], ["absolute path"]),
            ([{**good, "sha256": DIGEST.upper()}], ["'sha256' must be 64 lowercase hexadecimal digits"]),
            ([{**good, "sha256": "ab"}], ["'sha256'"]),
            ([{**good, "size": -1}], ["'size' must be a whole number of bytes"]),
            ([{**good, "size": True}], ["'size'"]),
            ([{**good, "size": 1.5}], ["'size'"]),
            ([good, {**good, "sha256": OTHER}], ["two inputs land on the same name ('a')"]),
            ([good, {**good, "name": "a/b"}], ["input 'a/b' lands inside input 'a'"]),
            ([good] * 1001, ["1001 inputs is over the limit of 1000"]),
        ]
        for value, fragments in cases:
            self.assertRefused({"inputs": value}, *fragments)

    def test_bad_outputs(self) -> None:
        """Each bad output pattern is refused with one clear message."""
        cases = [
            ("*.png", ["'outputs' must be a list"]),
            ([7], ["output #1 must be an object"]),
            (["../x"], ["output #1: glob", "climbs out"]),
            (["/tmp/*"], ["absolute path"]),
            ([{"glob": "x", "optional": "yes"}], ["'optional' must be true or false"]),
            ([{"glob": "x", "maybe": True}], ["unknown field(s) maybe"]),
            ([{"optional": True}], ["missing field(s) glob"]),
            ([""], ["non-empty relative path"]),
            (["x"] * 1001, ["1001 output patterns is over the limit of 1000"]),
        ]
        for value, fragments in cases:
            self.assertRefused({"outputs": value}, *fragments)


class ResultOutputsTests(SynchronousTestCase):
    """A result's output files, through its wire form."""

    def result(self, **fields: Any) -> dict[str, Any]:
        """A result's wire form with C{fields}."""
        return {"id": "t1", "attempt": 1, "status": "succeeded", "node": "w1", "duration": 1.0, **fields}

    def test_round_trip(self) -> None:
        """Output files survive to_wire and from_wire; none means no field."""
        result = TaskResult("t1", 1, "succeeded", "w1", outputs=(OutputFile("out/a.png", 5, DIGEST),))
        wire = result.to_wire()
        self.assertEqual(wire["outputs"], [{"path": "out/a.png", "size": 5, "sha256": DIGEST}])
        self.assertEqual(TaskResult.from_wire(wire), result)
        self.assertNotIn("outputs", TaskResult("t1", 1, "succeeded", "w1").to_wire())

    def test_bad_outputs(self) -> None:
        """Each bad output file is refused with one clear message naming the result."""
        good = {"path": "a", "size": 1, "sha256": DIGEST}
        cases = [
            ({}, ["'outputs' must be a list"]),
            ([{**good, "path": "../a"}], ["climbs out"]),
            ([{**good, "size": -3}], ["'size'"]),
            ([{**good, "sha256": "x"}], ["'sha256'"]),
            ([{"path": "a"}], ["missing field(s) sha256, size"]),
            ([good, good], ["output file 'a' is listed twice"]),
            ([good] * 1001, ["over the limit of 1000"]),
        ]
        for value, fragments in cases:
            with self.assertRaises(ValidationError) as raised:
                TaskResult.from_wire(self.result(outputs=value))
            self.assertTrue(str(raised.exception).startswith("result for task 't1'"))
            for fragment in fragments:
                self.assertIn(fragment, str(raised.exception))
