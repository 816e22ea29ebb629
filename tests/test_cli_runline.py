"""
Tests for L{p2pexec.cli.runline}: the tasks of C{p2pexec run} and their
ids, made of its command and arguments (the sources themselves are tested
in L{tests.test_cli_sources}).
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.cli import errors, runline, sources
from p2pexec.model import TaskSpec


class RunExpansionTests(SynchronousTestCase):
    """run: where the arguments come from, and what each task runs."""

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

    def test_tasks_of_several_sources(self) -> None:
        """A task per combination, in order: {1} {2} and {#} replaced, the id made of the values."""
        tasks = runline.run_tasks(["echo", "{#}", "{2}-{1}"], [("a", "1"), ("a", "2"), ("b c", "1")], "sh")
        self.assertEqual(
            [(task.id, task.command) for task in tasks],
            [("a_1", ("echo", "1", "1-a")), ("a_2", ("echo", "2", "2-a")), ("t1", ("echo", "3", "1-b c"))],
        )

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
            sources.run_arguments(sources.RunLine(("echo",), (sources.Source(file="-"),)), stdin)
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

    def test_several_values_joined(self) -> None:
        """A task's values from several sources make its id, joined by _."""
        self.assertEqual(runline.task_ids([("a", "1"), ("a", "x y"), ("b.c", "2")]), ["a_1", "t1", "b.c_2"])

    def test_numbers_skip_taken_ids(self) -> None:
        """A number already used by an argument is skipped: ids stay unique."""
        ids = runline.task_ids(["no way", "t1", "t2", "also no"])
        self.assertEqual(ids, ["t3", "t1", "t2", "t4"])
        self.assertEqual(len(set(ids)), len(ids))
