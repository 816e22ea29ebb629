"""
Tests for L{p2pexec.cli.parser}: the command line, its subcommands and
shared options, and the checks argparse cannot make.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import cli
from p2pexec.cli import commands as subcommands
from p2pexec.cli import parser, sources


def parse(*argv: str) -> Any:
    """Parse C{argv} as the console script would."""
    return parser.parse_arguments(list(argv))


class ParseArgumentsTests(SynchronousTestCase):
    """The command line: subcommands, shared options, and the checks argparse cannot make."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def assertUsageError(self, argv: list[str], *fragments: str) -> None:
        """Assert that C{argv} is refused with status 2 and a message holding each fragment."""
        with self.assertRaises(SystemExit) as raised:
            parser.parse_arguments(argv)
        self.assertEqual(raised.exception.code, 2)
        for fragment in fragments:
            self.assertIn(fragment, self.stderr.getvalue())

    def test_defaults(self) -> None:
        """Without options the client talks to 127.0.0.1:10001, with a 30 s timeout, in automatic mode."""
        self.patch(os, "environ", {})
        args = parse("status")
        self.assertEqual((args.command, args.host, args.port), ("status", "127.0.0.1", 10001))
        self.assertEqual(args.answer_timeout, 30.0)
        self.assertFalse(args.plain)

    def test_connect_before_or_after_the_subcommand(self) -> None:
        """--connect, --timeout and --plain work before the subcommand's name and after it."""
        before = parse("--connect", "10.0.0.5:10002", "--timeout", "3", "--plain", "jobs")
        after = parse("jobs", "--connect", "10.0.0.5:10002", "--timeout", "3", "--plain")
        for args in (before, after):
            self.assertEqual((args.host, args.port, args.answer_timeout, args.plain), ("10.0.0.5", 10002, 3.0, True))
        self.assertEqual(parse("--connect", "h1:5", "jobs", "--connect", "h2:6").host, "h2")

    def test_connect_from_environment(self) -> None:
        """$P2PEXEC_CONNECT replaces the default address; --connect still wins."""
        self.patch(os, "environ", {"P2PEXEC_CONNECT": "node-7.lab:10005"})
        self.assertEqual((parse("jobs").host, parse("jobs").port), ("node-7.lab", 10005))
        self.assertEqual(parse("--connect", "other", "jobs").host, "other")

    def test_bad_connect(self) -> None:
        """A --connect that is not HOST:PORT is a usage error naming the option."""
        self.assertUsageError(["--connect", "host:99999", "jobs"], "--connect", "65535")

    def test_bad_node_name(self) -> None:
        """A --node that no node's name can be (issue 14) is a usage error naming the option and the rule."""
        for argv in (
            ["run", "--node", "bad name!", "--kind", "sh", "--", "echo", ":::", "a"],
            ["submit", "--node", "", "j.toml"],
        ):
            self.assertUsageError(argv, "--node", "no node can have that name")

    def test_submit_needs_one_job(self) -> None:
        """submit takes a job file or --tasks, exactly one of them."""
        self.assertEqual(parse("submit", "jobs.toml").jobfile, "jobs.toml")
        self.assertEqual(parse("submit", "--wait", "--tasks", "a1,b1").tasks, "a1,b1")
        self.assertUsageError(["submit"], "JOBFILE or --tasks")
        self.assertUsageError(["submit", "jobs.toml", "--tasks", "a1"], "JOBFILE or --tasks")

    def test_run(self) -> None:
        """run takes its options, then the command after --, up to ::: and the arguments."""
        args = parse("run", "--kind", "sh", "--env", "A=1", "--env", "B=x=y", "--", "gzip", "-k", "{}", ":::", "a", "b")
        self.assertEqual(args.kind, "sh")
        self.assertEqual(args.env, {"A": "1", "B": "x=y"})
        self.assertEqual(args.run_line, sources.RunLine(("gzip", "-k", "{}"), (sources.Source(values=("a", "b")),)))

    def test_run_options_after_the_command_belong_to_it(self) -> None:
        """Once the command has started, words like --kind are the command's own."""
        args = parse("run", "--kind", "sh", "grep", "--kind", "{}", ":::", "x")
        self.assertEqual(args.run_line.command, ("grep", "--kind", "{}"))

    def test_run_refusals(self) -> None:
        """run needs --kind, a valid kind, a command, and --slots-per-task 1 if any."""
        self.assertUsageError(["run", "--", "echo", ":::", "a"], "--kind")
        self.assertUsageError(["run", "--kind", "a b", "--", "echo", ":::", "a"], "--kind", "1-64 characters")
        self.assertUsageError(["run", "--kind", "sh", "--", ":::", "a"], "give the command")
        self.assertUsageError(["run", "--kind", "sh", "--env", "NOVALUE", "--", "x", ":::", "a"], "--env")

    def test_slots_per_task(self) -> None:
        """--slots-per-task was removed: any use is refused, pointing to --cpus."""
        for value in ("1", "2"):
            self.assertUsageError(
                ["run", "--kind", "sh", "--slots-per-task", value, "--", "x", ":::", "a"],
                "--slots-per-task was removed",
                "--cpus N",
            )

    def test_run_requests(self) -> None:
        """run --cpus/--memory/--gpus/--resource are checked, a bad one named."""
        args = parse("run", "--kind", "sh", "--cpus", "2", "--gpus", "1", "--", "x", ":::", "a")
        self.assertEqual(args.request, {"cpus": 2.0, "gpus": 1})
        self.assertUsageError(["run", "--kind", "sh", "--memory", "4Q", "--", "x", ":::", "a"], "--memory")

    def test_no_subcommand(self) -> None:
        """Without a subcommand the help goes to stderr and the status is 2."""
        self.assertUsageError([], "submit", "cancel")

    def test_main_help(self) -> None:
        """main() returns 0 after --help, for p2pexec and each subcommand, and 2 for a usage error."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(cli.main(["--help"]), 0)
        for name in subcommands.SUBCOMMANDS:
            self.assertEqual(cli.main([name, "--help"]), 0)
            self.assertIn(f"usage: p2pexec {name}", stdout.getvalue())
        self.assertIn("exit status", stdout.getvalue())
        self.assertEqual(cli.main(["frobnicate"]), 2)

    def test_scheduling_options_help(self) -> None:
        """
        run --help explains each scheduling option without the job file run
        has none of (its priority defaults to 0); submit --help names the
        job file's fields and its own --node and --priority.
        """
        _, parsers = parser.build_parser()
        helps = {
            name: {option: action.help or "" for action in each._actions for option in action.option_strings}
            for name, each in parsers.items()
        }
        run = helps["run"]
        for flag in ("--cpus", "--memory", "--gpus", "--resource", "--priority", "--node", "--all-nodes"):
            self.assertIn(flag, run)
        self.assertIn("CUDA_VISIBLE_DEVICES", run["--gpus"])
        self.assertIn("(default: 0)", run["--priority"])
        self.assertNotIn("job file", run["--priority"] + run["--node"])
        submit = helps["submit"]
        self.assertIn("the job file's [job] priority, else 0", submit["--priority"])
        self.assertIn("node = ... in the job file wins", submit["--node"])
        description = parsers["submit"].description or ""
        for field in ("cpus", "memory", "gpus", "resources", "all_nodes", "after", "speculative"):
            self.assertIn(field, description)
