"""
Tests for L{p2pexec.cli.runline}: the tail of C{p2pexec run} (C{{}},
C{:::}, C{::::}), its arguments, and the tasks and task ids made of them.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.cli import errors, runline
from p2pexec.model import TaskSpec
from tests.cli_doubles import TtyStringIO


class RunExpansionTests(SynchronousTestCase):
    """run: where the arguments come from, and what each task runs."""

    def test_split(self) -> None:
        """The command ends at ::: or ::::; a leading -- is dropped; no mark means standard input."""
        self.assertEqual(
            runline.split_run_line(["--", "echo", "{}", ":::", "a", "b"]),
            runline.RunLine(("echo", "{}"), arguments=("a", "b")),
        )
        self.assertEqual(
            runline.split_run_line(["echo", "::::", "list.txt"]), runline.RunLine(("echo",), file="list.txt")
        )
        self.assertEqual(runline.split_run_line(["echo", "::::", "-"]), runline.RunLine(("echo",), file="-"))
        self.assertEqual(runline.split_run_line(["echo", "x"]), runline.RunLine(("echo", "x")))

    def test_split_refusals(self) -> None:
        """No command, no arguments after :::, not one file after ::::, or two sources: ValueError."""
        for words, fragment in [
            (["--"], "give the command"),
            ([":::", "a"], "give the command"),
            (["echo", ":::"], "no arguments"),
            (["echo", "::::"], "exactly one file"),
            (["echo", "::::", "f", "g"], "exactly one file"),
            (["echo", ":::", "a", ":::", "b"], "one source"),
            (["echo", ":::", "a", "::::", "f"], "one source"),
        ]:
            with self.assertRaises(ValueError) as raised:
                runline.split_run_line(words)
            self.assertIn(fragment, str(raised.exception), words)

    def test_placeholder_replaced_in_every_word(self) -> None:
        """Each {} in each word becomes the argument, inside words too."""
        self.assertEqual(
            runline.expand_command(["convert", "{}", "out/{}.png"], "cat 1.jpg"),
            ["convert", "cat 1.jpg", "out/cat 1.jpg.png"],
        )

    def test_argument_appended_without_placeholder(self) -> None:
        """Without {} the argument is the last word."""
        self.assertEqual(runline.expand_command(["gzip", "-k"], "a.log"), ["gzip", "-k", "a.log"])

    def test_shell(self) -> None:
        """With --shell the words make one command line, and the argument is shell-quoted."""
        self.assertEqual(runline.expand_command(["wc -l < {}"], "my file", shell=True), "wc -l < 'my file'")
        self.assertEqual(runline.expand_command(["echo", "$HOME"], "it's", shell=True), "echo $HOME 'it'\"'\"'s'")

    def test_lines(self) -> None:
        """One argument per line, line endings removed, blank lines skipped, spaces kept."""
        self.assertEqual(runline.read_argument_lines(io.StringIO("a\r\n\n  \n b c \nlast")), ["a", " b c ", "last"])

    def test_arguments_from_a_file_or_stdin(self) -> None:
        """:::: FILE reads the file; :::: - and no mark read standard input."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("x1\nx2\n")
        stdin = io.StringIO("s1\ns2\n")
        self.assertEqual(runline.run_arguments(runline.RunLine(("echo",), file=path), stdin), ["x1", "x2"])
        self.assertEqual(runline.run_arguments(runline.RunLine(("echo",), file="-"), stdin), ["s1", "s2"])
        self.assertEqual(runline.run_arguments(runline.RunLine(("echo",)), io.StringIO("t\n")), ["t"])
        self.assertEqual(runline.run_arguments(runline.RunLine(("echo",), arguments=("a",)), stdin), ["a"])

    def test_argument_refusals(self) -> None:
        """A missing file, an empty source, or arguments expected from a terminal: one-line errors."""
        missing = self.mktemp()
        with self.assertRaises(errors.CliError) as raised:
            runline.run_arguments(runline.RunLine(("echo",), file=missing), io.StringIO())
        self.assertEqual(raised.exception.message, f"run: cannot read {missing}: No such file or directory")
        with self.assertRaises(errors.CliError) as raised:
            runline.run_arguments(runline.RunLine(("echo",), file="-"), io.StringIO("\n\n"))
        self.assertIn("no arguments in standard input", raised.exception.message)
        with self.assertRaises(errors.CliError) as raised:
            runline.run_arguments(runline.RunLine(("echo",)), TtyStringIO())
        self.assertIn("pipe them in", raised.exception.message)

    def test_tasks(self) -> None:
        """run's tasks: the kind, the expanded commands and the options, checked as a job file."""
        tasks = runline.run_tasks(
            ["sh", "-c", "work {}"], ["a1", "b 2"], "render", timeout=5.0, retries=2, cwd="/srv", env={"X": "1"}
        )
        self.assertEqual(
            tasks,
            [
                TaskSpec(
                    id="a1",
                    kind="render",
                    command=("sh", "-c", "work a1"),
                    cwd="/srv",
                    env=(("X", "1"),),
                    timeout=5.0,
                    retries=2,
                ),
                TaskSpec(
                    id="t1",
                    kind="render",
                    command=("sh", "-c", "work b 2"),
                    cwd="/srv",
                    env=(("X", "1"),),
                    timeout=5.0,
                    retries=2,
                ),
            ],
        )
        shell = runline.run_tasks(["echo", "{}"], ["x y"], "sh", shell=True)
        self.assertEqual((shell[0].command, shell[0].shell), ("echo 'x y'", True))

    def test_task_refusal(self) -> None:
        """A task the node would refuse is refused here, naming it, in one line."""
        with self.assertRaises(errors.CliError) as raised:
            runline.run_tasks(["echo"], ["a"], "sh", retries=500)
        self.assertEqual(
            raised.exception.message, "run: task #1 ('a'): 'retries' must be a whole number from 0 to 100, not 500"
        )

    def test_arguments_that_are_not_utf8(self) -> None:
        """
        Bytes that are not UTF-8 on the command line (lone surrogates to
        Python) or on standard input are refused in one line, not a traceback.
        """
        with self.assertRaises(errors.CliError) as raised:
            runline.run_tasks(["echo"], ["caf\udce9"], "sh")
        self.assertIn("holds text that is not valid UTF-8", raised.exception.message)
        stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8")
        with self.assertRaises(errors.CliError) as raised:
            runline.run_arguments(runline.RunLine(("echo",), file="-"), stdin)
        self.assertIn("run: cannot read standard input", raised.exception.message)


class TaskIdTests(SynchronousTestCase):
    """run's task ids come from the arguments when they can."""

    def test_valid_arguments_are_ids(self) -> None:
        """An argument that is a valid task id is its task's id."""
        self.assertEqual(runline.task_ids(["a.log", "b_2", "x:y@z+1"]), ["a.log", "b_2", "x:y@z+1"])

    def test_others_are_numbered(self) -> None:
        """Other arguments get t1, t2... numbered among themselves."""
        self.assertEqual(
            runline.task_ids(["ok", "has space", "dir/file", "", "x" * 129]), ["ok", "t1", "t2", "t3", "t4"]
        )

    def test_repeated_arguments(self) -> None:
        """A repeated argument keeps its id the first time only."""
        self.assertEqual(runline.task_ids(["a", "a", "b", "a"]), ["a", "t1", "b", "t2"])

    def test_numbers_skip_taken_ids(self) -> None:
        """A number already used by an argument is skipped: ids stay unique."""
        ids = runline.task_ids(["no way", "t1", "t2", "also no"])
        self.assertEqual(ids, ["t3", "t1", "t2", "t4"])
        self.assertEqual(len(set(ids)), len(ids))
