"""
Tests for L{p2pexec.cli}: argument parsing, the C{run} expansion and task
ids, plain output, exit statuses, and the subcommands driven through a
recording double of the node and a L{Clock}.  No network, no real reactor.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet import defer, error
from twisted.internet.testing import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import cli, commands
from p2pexec.model import TaskSpec


def parse(*argv: str) -> Any:
    """Parse C{argv} as the console script would."""
    return cli.parse_arguments(list(argv))


def summary(
    job: str = "a1-0123abcd-1",
    state: str = "running",
    total: int = 10,
    eta: float | None = None,
    elapsed: float = 1.0,
    **counts: int,
) -> dict[str, Any]:
    """A JOB_STATUS summary, as L{p2pexec.status.job_summary} makes them."""
    full = dict.fromkeys(("pending", "waiting", "running", "succeeded", "failed", "cancelled"), 0)
    full.update(counts)
    done = full["succeeded"] + full["failed"] + full["cancelled"]
    return {
        "id": job,
        "state": state,
        "total": total,
        "done": done,
        "progress": done / total,
        "counts": full,
        "started": 100.0,
        "finished": None,
        "elapsed": elapsed,
        "eta": eta,
        "stale_results_dropped": 0,
    }


def task_entry(task_id: str, state: str = "succeeded", **fields: Any) -> dict[str, Any]:
    """A JOB_TASKS entry, as L{p2pexec.status.task_entry} makes them."""
    entry = {
        "id": task_id,
        "kind": "sh",
        "state": state,
        "attempts": 1,
        "node": "a1",
        "status": state,
        "exit_code": 0,
        "duration": 0.25,
        "error": None,
    }
    entry.update(fields)
    return entry


class TtyStringIO(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        """Always true."""
        return True


class FakeNode:
    """
    A recording double of L{cli.NodeClient}: each command's answers are
    scripted by command class (a list, consumed in order; the last one is
    kept), and every call is recorded.  The arguments go through the
    command's AMP encoding, as on the wire (so a value over 65,535 bytes
    raises L{amp.TooLong}), and are recorded as the node would read them.
    """

    address = "127.0.0.1:10001"

    def __init__(self, answers: dict[type, list[Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[type, dict[str, Any]]] = []
        self.sizes: list[dict[str, int]] = []

    def call(self, command: type, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        """Encode and decode the arguments as AMP does, record them, and answer as scripted."""
        box = amp.AmpBox(command.makeArguments(arguments, None))
        self.sizes.append({key.decode(): len(value) for key, value in box.items()})
        box.serialize()
        arguments = command.parseArguments(box, None)
        self.calls.append((command, arguments))
        script = self.answers[command]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if callable(answer):
            answer = answer(**arguments)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def sent(self, command: type) -> list[dict[str, Any]]:
        """The arguments of every C{command} sent, in order."""
        return [arguments for sent, arguments in self.calls if sent is command]


class Harness:
    """A L{cli.Context} over a L{FakeNode}, a plain output into a buffer and a L{Clock}."""

    def __init__(self, answers: dict[type, list[Any]]) -> None:
        self.node = FakeNode(answers)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.clock = Clock()
        self.context = cli.Context(self.node, cli.PlainOutput(self.stdout), self.clock, self.stderr)

    def start(self, subcommand: Any, args: Any) -> defer.Deferred[int]:
        """Start a subcommand coroutine."""
        return defer.ensureDeferred(subcommand(self.context, args))

    def lines(self) -> list[str]:
        """What was printed, line by line."""
        return self.stdout.getvalue().splitlines()


class ParseArgumentsTests(SynchronousTestCase):
    """The command line: subcommands, shared options, and the checks argparse cannot make."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(cli.sys, "stderr", self.stderr)

    def assertUsageError(self, argv: list[str], *fragments: str) -> None:
        """Assert that C{argv} is refused with status 2 and a message holding each fragment."""
        with self.assertRaises(SystemExit) as raised:
            cli.parse_arguments(argv)
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
        self.assertEqual(args.run_line, cli.RunLine(("gzip", "-k", "{}"), arguments=("a", "b")))

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
        """--slots-per-task 1 is accepted; any other value is refused, saying the daemon has no such thing."""
        self.assertEqual(parse("run", "--kind", "sh", "--slots-per-task", "1", "--", "x", ":::", "a").slots_per_task, 1)
        self.assertUsageError(
            ["run", "--kind", "sh", "--slots-per-task", "2", "--", "x", ":::", "a"],
            "--slots-per-task 2",
            "no per-task slot count",
            "only 1",
        )

    def test_no_subcommand(self) -> None:
        """Without a subcommand the help goes to stderr and the status is 2."""
        self.assertUsageError([], "submit", "cancel")

    def test_main_help(self) -> None:
        """main() returns 0 after --help, for p2pexec and each subcommand, and 2 for a usage error."""
        stdout = io.StringIO()
        self.patch(cli.sys, "stdout", stdout)
        self.assertEqual(cli.main(["--help"]), 0)
        for name in cli.SUBCOMMANDS:
            self.assertEqual(cli.main([name, "--help"]), 0)
            self.assertIn(f"usage: p2pexec {name}", stdout.getvalue())
        self.assertIn("exit status", stdout.getvalue())
        self.assertEqual(cli.main(["frobnicate"]), 2)


class AddressTests(SynchronousTestCase):
    """--connect values, and what a failed connection says."""

    def test_forms(self) -> None:
        """HOST:PORT, HOST alone (port 10001) and [IPV6]:PORT."""
        self.assertEqual(cli.parse_address("10.0.0.5:10002"), ("10.0.0.5", 10002))
        self.assertEqual(cli.parse_address("node-7.lab"), ("node-7.lab", 10001))
        self.assertEqual(cli.parse_address("[::1]:7"), ("::1", 7))
        self.assertEqual(cli.parse_address("[::1]"), ("::1", 10001))
        self.assertEqual(cli.format_address("::1", 7), "[::1]:7")
        self.assertEqual(cli.format_address("h", 7), "h:7")

    def test_refusals(self) -> None:
        """Bad values raise ValueError saying what is wrong."""
        for text, fragment in [
            (":10001", "HOST:PORT"),
            ("h:0", "1 to 65535"),
            ("h:x", "1 to 65535"),
            ("::1", "brackets"),
            ("[::1", "closing"),
            ("[::1]x", "HOST:PORT"),
        ]:
            with self.assertRaises(ValueError) as raised:
                cli.parse_address(text)
            self.assertIn(fragment, str(raised.exception), text)

    def test_connect_failure_reasons(self) -> None:
        """Connection failures are said in a few words, not as exception reprs."""
        self.assertEqual(cli.connect_failure_reason(error.ConnectionRefusedError()), "connection refused")
        self.assertEqual(cli.connect_failure_reason(error.TimeoutError()), "timed out")
        self.assertEqual(cli.connect_failure_reason(error.DNSLookupError("x")), "host name not found")
        self.assertEqual(cli.connect_failure_reason(error.NoRouteError()), "no route to host")
        self.assertEqual(cli.connect_failure_reason(ValueError("Something odd.")), "something odd")


class RunExpansionTests(SynchronousTestCase):
    """run: where the arguments come from, and what each task runs."""

    def test_split(self) -> None:
        """The command ends at ::: or ::::; a leading -- is dropped; no mark means standard input."""
        self.assertEqual(
            cli.split_run_line(["--", "echo", "{}", ":::", "a", "b"]), cli.RunLine(("echo", "{}"), arguments=("a", "b"))
        )
        self.assertEqual(cli.split_run_line(["echo", "::::", "list.txt"]), cli.RunLine(("echo",), file="list.txt"))
        self.assertEqual(cli.split_run_line(["echo", "::::", "-"]), cli.RunLine(("echo",), file="-"))
        self.assertEqual(cli.split_run_line(["echo", "x"]), cli.RunLine(("echo", "x")))

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
                cli.split_run_line(words)
            self.assertIn(fragment, str(raised.exception), words)

    def test_placeholder_replaced_in_every_word(self) -> None:
        """Each {} in each word becomes the argument, inside words too."""
        self.assertEqual(
            cli.expand_command(["convert", "{}", "out/{}.png"], "cat 1.jpg"),
            ["convert", "cat 1.jpg", "out/cat 1.jpg.png"],
        )

    def test_argument_appended_without_placeholder(self) -> None:
        """Without {} the argument is the last word."""
        self.assertEqual(cli.expand_command(["gzip", "-k"], "a.log"), ["gzip", "-k", "a.log"])

    def test_shell(self) -> None:
        """With --shell the words make one command line, and the argument is shell-quoted."""
        self.assertEqual(cli.expand_command(["wc -l < {}"], "my file", shell=True), "wc -l < 'my file'")
        self.assertEqual(cli.expand_command(["echo", "$HOME"], "it's", shell=True), "echo $HOME 'it'\"'\"'s'")

    def test_lines(self) -> None:
        """One argument per line, line endings removed, blank lines skipped, spaces kept."""
        self.assertEqual(cli.read_argument_lines(io.StringIO("a\r\n\n  \n b c \nlast")), ["a", " b c ", "last"])

    def test_arguments_from_a_file_or_stdin(self) -> None:
        """:::: FILE reads the file; :::: - and no mark read standard input."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("x1\nx2\n")
        stdin = io.StringIO("s1\ns2\n")
        self.assertEqual(cli.run_arguments(cli.RunLine(("echo",), file=path), stdin), ["x1", "x2"])
        self.assertEqual(cli.run_arguments(cli.RunLine(("echo",), file="-"), stdin), ["s1", "s2"])
        self.assertEqual(cli.run_arguments(cli.RunLine(("echo",)), io.StringIO("t\n")), ["t"])
        self.assertEqual(cli.run_arguments(cli.RunLine(("echo",), arguments=("a",)), stdin), ["a"])

    def test_argument_refusals(self) -> None:
        """A missing file, an empty source, or arguments expected from a terminal: one-line errors."""
        missing = self.mktemp()
        with self.assertRaises(cli.CliError) as raised:
            cli.run_arguments(cli.RunLine(("echo",), file=missing), io.StringIO())
        self.assertEqual(raised.exception.message, f"run: cannot read {missing}: No such file or directory")
        with self.assertRaises(cli.CliError) as raised:
            cli.run_arguments(cli.RunLine(("echo",), file="-"), io.StringIO("\n\n"))
        self.assertIn("no arguments in standard input", raised.exception.message)
        with self.assertRaises(cli.CliError) as raised:
            cli.run_arguments(cli.RunLine(("echo",)), TtyStringIO())
        self.assertIn("pipe them in", raised.exception.message)

    def test_tasks(self) -> None:
        """run's tasks: the kind, the expanded commands and the options, checked as a job file."""
        tasks = cli.run_tasks(
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
        shell = cli.run_tasks(["echo", "{}"], ["x y"], "sh", shell=True)
        self.assertEqual((shell[0].command, shell[0].shell), ("echo 'x y'", True))

    def test_task_refusal(self) -> None:
        """A task the node would refuse is refused here, naming it, in one line."""
        with self.assertRaises(cli.CliError) as raised:
            cli.run_tasks(["echo"], ["a"], "sh", retries=500)
        self.assertEqual(
            raised.exception.message, "run: task #1 ('a'): 'retries' must be a whole number from 0 to 100, not 500"
        )

    def test_arguments_that_are_not_utf8(self) -> None:
        """
        Bytes that are not UTF-8 on the command line (lone surrogates to
        Python) or on standard input are refused in one line, not a traceback.
        """
        with self.assertRaises(cli.CliError) as raised:
            cli.run_tasks(["echo"], ["caf\udce9"], "sh")
        self.assertIn("holds text that is not valid UTF-8", raised.exception.message)
        stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8")
        with self.assertRaises(cli.CliError) as raised:
            cli.run_arguments(cli.RunLine(("echo",), file="-"), stdin)
        self.assertIn("run: cannot read standard input", raised.exception.message)


class TaskIdTests(SynchronousTestCase):
    """run's task ids come from the arguments when they can."""

    def test_valid_arguments_are_ids(self) -> None:
        """An argument that is a valid task id is its task's id."""
        self.assertEqual(cli.task_ids(["a.log", "b_2", "x:y@z+1"]), ["a.log", "b_2", "x:y@z+1"])

    def test_others_are_numbered(self) -> None:
        """Other arguments get t1, t2... numbered among themselves."""
        self.assertEqual(cli.task_ids(["ok", "has space", "dir/file", "", "x" * 129]), ["ok", "t1", "t2", "t3", "t4"])

    def test_repeated_arguments(self) -> None:
        """A repeated argument keeps its id the first time only."""
        self.assertEqual(cli.task_ids(["a", "a", "b", "a"]), ["a", "t1", "b", "t2"])

    def test_numbers_skip_taken_ids(self) -> None:
        """A number already used by an argument is skipped: ids stay unique."""
        ids = cli.task_ids(["no way", "t1", "t2", "also no"])
        self.assertEqual(ids, ["t3", "t1", "t2", "t4"])
        self.assertEqual(len(set(ids)), len(ids))


class ExitStatusTests(SynchronousTestCase):
    """0 only when every task succeeded."""

    def test_job(self) -> None:
        """A finished job of successes: 0; any failure or cancellation, or not finished: 1."""
        self.assertEqual(cli.job_exit_status(summary(state="finished", total=2, succeeded=2)), 0)
        self.assertEqual(cli.job_exit_status(summary(state="finished", total=2, succeeded=1, failed=1)), 1)
        self.assertEqual(cli.job_exit_status(summary(state="cancelled", total=2, succeeded=1, cancelled=1)), 1)
        self.assertEqual(cli.job_exit_status(summary(state="cancelled", total=2, succeeded=2)), 1)
        self.assertEqual(cli.job_exit_status(summary(state="running", total=2, succeeded=1, running=1)), 1)

    def test_tasks(self) -> None:
        """Every task succeeded: 0; a failed, cancelled or unfinished one: 1."""
        self.assertEqual(cli.tasks_exit_status([task_entry("a"), task_entry("b")]), 0)
        for state in ("failed", "cancelled", "running", "pending", "waiting"):
            self.assertEqual(cli.tasks_exit_status([task_entry("a"), task_entry("b", state)]), 1, state)


class PlainFormattingTests(SynchronousTestCase):
    """What plain mode prints."""

    def test_seconds(self) -> None:
        """Seconds, minutes, hours; ? when unknown."""
        self.assertEqual(
            [cli.format_seconds(s) for s in (None, 0.04, 4.25, 59.94, 185, 7620)],
            ["?", "0.0s", "4.2s", "59.9s", "3m05s", "2h07m"],
        )

    def test_progress_line(self) -> None:
        """Done, the outcomes, running, queued, waiting for a capability and the ETA, in one line."""
        line = cli.progress_line(summary(eta=12.5, succeeded=3, failed=1, running=2, pending=3, waiting=1))
        self.assertEqual(
            line,
            "a1-0123abcd-1: 4/10 done (3 succeeded, 1 failed), 2 running, 3 queued, "
            "1 waiting for a capability, ETA 12.5s",
        )
        self.assertIn("(1 succeeded, 0 failed, 2 cancelled)", cli.progress_line(summary(succeeded=1, cancelled=2)))

    def test_final_line(self) -> None:
        """How a job ended: finished in, or cancelled after."""
        self.assertEqual(
            cli.final_line(summary(state="finished", total=3, elapsed=3.21, succeeded=2, failed=1)),
            "job a1-0123abcd-1 finished: 2 succeeded, 1 failed in 3.2s",
        )
        self.assertEqual(
            cli.final_line(summary(state="cancelled", total=3, elapsed=65, succeeded=1, cancelled=2)),
            "job a1-0123abcd-1 was cancelled: 1 succeeded, 0 failed, 2 cancelled after 1m05s",
        )

    def test_a_line_per_change_at_most_one_a_second(self) -> None:
        """The first summary gives a line; the same counts again do not; a change within 1 s waits."""
        decide = cli.PlainProgress()
        first = summary(running=2, pending=8)
        self.assertIsNotNone(decide.update(first, 10.0))
        self.assertIsNone(decide.update(summary(running=2, pending=8, eta=3.0), 10.5))  # only the ETA moved
        changed = summary(running=2, pending=7, succeeded=1)
        self.assertIsNone(decide.update(changed, 10.9))
        self.assertEqual(decide.update(changed, 11.0), cli.progress_line(changed))
        self.assertIsNone(decide.update(changed, 15.0))

    def test_table(self) -> None:
        """Columns aligned two spaces apart, no trailing spaces."""
        self.assertEqual(
            cli.format_table(("name", "state"), [["a1", "self"], ["b-long", "alive"]]),
            ["name    state", "a1      self", "b-long  alive"],
        )

    def test_rows(self) -> None:
        """Job, peer and task rows: counts, ? for a load not reported yet, - for nothing."""
        self.assertEqual(
            cli.job_row(summary(eta=4.0, succeeded=2, failed=1, running=3, pending=2, waiting=2)),
            ["a1-0123abcd-1", "running", "3/10", "2", "1", "0", "3", "2", "2", "1.0s", "4.0s"],
        )
        peer = {
            "name": "b1",
            "address": "127.0.0.1:10002",
            "capabilities": ["b", "sh"],
            "slots": 4,
            "busy": None,
            "queued": None,
            "state": "known",
            "last_heard": 2.5,
        }
        self.assertEqual(cli.peer_row(peer), ["b1", "127.0.0.1:10002", "b,sh", "4", "?", "?", "?", "known", "2.5s ago"])
        self.assertEqual(cli.peer_row(dict(peer, busy=3, queued=1, last_heard=None))[4:7], ["3", "1", "1"])
        self.assertEqual(
            cli.task_row(task_entry("t1", "failed", exit_code=3, error="exit\nstatus 3")),
            ["t1", "sh", "failed", "failed", "3", "a1", "0.250s", "1", "exit status 3"],
        )
        self.assertEqual(
            cli.task_row(task_entry("t2", "waiting", status=None, exit_code=None, node=None, duration=None))[3:7],
            ["-", "-", "-", "-"],
        )

    def test_cells_and_tails(self) -> None:
        """A long cell is cut with ...; a tail keeps the last lines."""
        self.assertEqual(cli.cell("x" * 70, width=10), "xxxxxxx...")
        self.assertEqual(cli.tail_lines("1\n2\n3\n", 2), ["2", "3"])
        self.assertEqual(cli.tail_lines("1\n2\n", 0), [])
        self.assertEqual(cli.tail_lines(None, 3), [])

    def test_plain_output_has_no_escape_codes(self) -> None:
        """Plain output is text only; make_output picks it when stdout is not a terminal."""
        stream = io.StringIO()
        out = cli.make_output(stream, plain=False)
        self.assertIsInstance(out, cli.PlainOutput)
        out.table("Jobs", cli.JOB_COLUMNS, [cli.job_row(summary(state="finished", total=1, succeeded=1))])
        out.table("Peers", cli.PEER_COLUMNS, [])
        out.block("t1 stdout", ["hello"])
        self.assertNotIn("\x1b", stream.getvalue())
        self.assertEqual(stream.getvalue().splitlines()[-4:], ["Peers:", "  (none)", "t1 stdout:", "  hello"])

    def test_terminal_output(self) -> None:
        """On a terminal, unless --plain, the output is rich's."""
        self.assertIsInstance(cli.make_output(TtyStringIO(), plain=False), cli.RichOutput)
        self.assertIsInstance(cli.make_output(TtyStringIO(), plain=True), cli.PlainOutput)


def submit_answers() -> Any:
    """SUBMIT_JOB answers: an upload id per part but the last, then the job id."""
    parts = []

    def answer(tasks: Any, defaults: Any, upload: str, final: bool) -> dict[str, Any]:
        parts.append(tasks)
        if final:
            return {"upload": "", "job": "a1-0123abcd-7"}
        return {"upload": f"up-{len(parts)}", "job": ""}

    return answer


class SubcommandTests(SynchronousTestCase):
    """The subcommands, against a recording node."""

    def test_submit_in_parts(self) -> None:
        """
        A job too big for one AMP value goes in several SUBMIT_JOB parts,
        each under MAX_VALUE_BYTES, each quoting the previous part's upload
        id, only the last one final; every task goes, in order.
        """
        harness = Harness({commands.SubmitJob: [submit_answers()]})
        tasks = [TaskSpec(id=f"t{n}", kind="sh", command=("echo", "x" * 200)) for n in range(1000)]
        status = self.successResultOf(harness.start(cli.do_submit, _ns(job_tasks=tasks, wait=False)))
        self.assertEqual(status, 0)
        parts = harness.node.sent(commands.SubmitJob)
        self.assertGreater(len(parts), 2)
        sizes = [size["tasks"] for size in harness.node.sizes]
        self.assertTrue(all(size < commands.MAX_VALUE_BYTES for size in sizes), sizes)
        self.assertEqual([p["final"] for p in parts], [False] * (len(parts) - 1) + [True])
        self.assertEqual([p["upload"] for p in parts], [""] + [f"up-{n}" for n in range(1, len(parts))])
        self.assertEqual([t["id"] for p in parts for t in p["tasks"]], [t.id for t in tasks])
        self.assertEqual(harness.lines(), ["a1-0123abcd-7"])

    def test_small_job_in_one_part(self) -> None:
        """A small job is one final SUBMIT_JOB with the tasks' wire forms and no defaults."""
        harness = Harness({commands.SubmitJob: [submit_answers()]})
        tasks = [TaskSpec.instruction("a1"), TaskSpec.instruction("b1")]
        self.successResultOf(harness.start(cli.do_submit, _ns(job_tasks=tasks, wait=False)))
        self.assertEqual(
            harness.node.sent(commands.SubmitJob),
            [
                {
                    "tasks": [{"id": "a1", "kind": "a"}, {"id": "b1", "kind": "b"}],
                    "defaults": {},
                    "upload": "",
                    "final": True,
                }
            ],
        )

    def test_follow(self) -> None:
        """
        JOB_STATUS every 0.5 s until the job ends; plain lines on change, at
        most one a second; then how it ended, and a pointer to the results
        when some task failed; the job's exit status.
        """
        states = [
            summary(total=3, running=2, pending=1),  # t=0: a line
            summary(total=3, running=2, succeeded=1),  # t=0.5: a change, but too soon
            summary(total=3, running=2, succeeded=1),  # t=1.0: that change, now printed
            summary(total=3, running=1, succeeded=1, failed=1),  # t=1.5: too soon again
            summary(total=3, state="finished", succeeded=2, failed=1, elapsed=2.0),  # t=2.0: the end
        ]
        harness = Harness({commands.JobStatus: [{"status": s} for s in states]})
        d = harness.start(cli.do_watch, _ns(job="a1-0123abcd-1"))
        for _ in range(4):
            self.assertNoResult(d)
            harness.clock.advance(cli.POLL_INTERVAL)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(len(harness.node.sent(commands.JobStatus)), 5)
        self.assertEqual(
            harness.lines(),
            [
                cli.progress_line(states[0]),
                cli.progress_line(states[2]),
                "job a1-0123abcd-1 finished: 2 succeeded, 1 failed in 2.0s",
                "the results of each task: p2pexec result a1-0123abcd-1",
            ],
        )

    def test_follow_a_finished_job(self) -> None:
        """A job already finished: only the last line, and 0 if every task succeeded."""
        harness = Harness({commands.JobStatus: [{"status": summary(state="finished", total=2, succeeded=2)}]})
        self.assertEqual(self.successResultOf(harness.start(cli.do_watch, _ns(job="j"))), 0)
        self.assertEqual(harness.lines(), ["job a1-0123abcd-1 finished: 2 succeeded, 0 failed in 1.0s"])

    def test_follow_interrupted(self) -> None:
        """Cancelled (Ctrl-C), following stops with a note that the job goes on."""
        harness = Harness({commands.JobStatus: [{"status": summary(running=1)}]})
        d = harness.start(cli.do_watch, _ns(job="a1-0123abcd-1"))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertIn("it goes on (p2pexec cancel a1-0123abcd-1 stops it)", harness.stderr.getvalue())

    def test_submit_wait(self) -> None:
        """submit --wait prints the id, then follows the job, and exits with its status."""
        harness = Harness(
            {
                commands.SubmitJob: [{"upload": "", "job": "a1-0123abcd-1"}],
                commands.JobStatus: [{"status": summary(state="cancelled", total=2, cancelled=2)}],
            }
        )
        d = harness.start(cli.do_submit, _ns(job_tasks=[TaskSpec.instruction("a1")], wait=True))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            harness.lines()[:2],
            ["a1-0123abcd-1", "job a1-0123abcd-1 was cancelled: 0 succeeded, 0 failed, 2 cancelled after 1.0s"],
        )

    def test_result_pages(self) -> None:
        """result asks JOB_TASKS page after page until next is -1, then prints every task and its tails."""
        pages = [
            {"tasks": [task_entry("a", stdout="1\n2\n3\n")], "next": 1},
            {"tasks": [task_entry("b", "failed", exit_code=2, stderr="boom\n")], "next": -1},
        ]
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary(state="finished", total=2, succeeded=1, failed=1)}],
                commands.JobTasks: pages,
            }
        )
        status = self.successResultOf(harness.start(cli.do_result, _ns(job="a1-0123abcd-1", json=False, lines=2)))
        self.assertEqual(status, 1)
        self.assertEqual([c["offset"] for c in harness.node.sent(commands.JobTasks)], [0, 1])
        lines = harness.lines()
        self.assertEqual(lines[0], "Job a1-0123abcd-1 (finished: 2/2 done, 1 succeeded, 1 failed, 1.0s):")
        self.assertTrue(lines[2].startswith("a "), lines)
        self.assertTrue(lines[3].startswith("b "), lines)
        self.assertEqual(
            lines[4:], ["a stdout (last 2 line(s)):", "  2", "  3", "b stderr (last 1 line(s)):", "  boom"]
        )

    def test_result_json(self) -> None:
        """result --json prints one document: the job's summary and every task."""
        tasks = [task_entry("a", stdout="hi\n")]
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary(state="finished", total=1, succeeded=1)}],
                commands.JobTasks: [{"tasks": tasks, "next": -1}],
            }
        )
        status = self.successResultOf(harness.start(cli.do_result, _ns(job="a1-0123abcd-1", json=True, lines=5)))
        self.assertEqual(status, 0)
        document = json.loads(harness.stdout.getvalue())
        self.assertEqual(document, {"job": summary(state="finished", total=1, succeeded=1), "tasks": tasks})

    def test_result_stuck_paging(self) -> None:
        """A node whose next offset does not move on is an error, not an endless loop."""
        harness = Harness(
            {
                commands.JobStatus: [{"status": summary()}],
                commands.JobTasks: [{"tasks": [], "next": 0}],
            }
        )
        failure = self.failureResultOf(harness.start(cli.do_result, _ns(job="j", json=True, lines=5)), cli.CliError)
        self.assertIn("no progress", failure.value.message)

    def test_cancel(self) -> None:
        """cancel prints how many tasks CANCEL_JOB cancelled; 0 means the job had ended."""
        harness = Harness({commands.CancelJob: [{"cancelled": 4}, {"cancelled": 0}]})
        self.assertEqual(self.successResultOf(harness.start(cli.do_cancel, _ns(job="j1"))), 0)
        self.assertEqual(self.successResultOf(harness.start(cli.do_cancel, _ns(job="j1"))), 0)
        self.assertEqual(
            harness.lines(), ["job j1: 4 task(s) cancelled", "job j1: 0 tasks cancelled (it had already ended)"]
        )
        self.assertEqual(harness.node.sent(commands.CancelJob), [{"job": "j1"}, {"job": "j1"}])

    def test_status(self) -> None:
        """status shows every node seen, with its load, then the jobs."""
        me = {
            "name": "a1",
            "address": "127.0.0.1:10001",
            "capabilities": ["a"],
            "slots": 2,
            "busy": 1,
            "queued": 0,
            "state": "self",
            "last_heard": None,
        }
        peer = dict(
            me,
            name="b1",
            address="127.0.0.1:10002",
            capabilities=["b"],
            busy=None,
            queued=None,
            state="alive",
            last_heard=0.4,
        )
        harness = Harness(
            {
                commands.ClusterStatus: [{"node": me, "peers": [peer]}],
                commands.ListJobs: [{"jobs": [summary(state="finished", total=1, succeeded=1)]}],
            }
        )
        self.assertEqual(self.successResultOf(harness.start(cli.do_status, _ns(json=False))), 0)
        lines = harness.lines()
        self.assertEqual(lines[0], "Nodes seen by a1 (127.0.0.1:10001):")
        self.assertEqual(lines[2].split(), ["a1", "127.0.0.1:10001", "a", "2", "1", "1", "0", "self", "-"])
        self.assertEqual(lines[3].split(), ["b1", "127.0.0.1:10002", "b", "2", "?", "?", "?", "alive", "0.4s", "ago"])
        self.assertEqual(lines[4], "Jobs of a1:")
        self.assertTrue(lines[6].startswith("a1-0123abcd-1  finished"), lines)

    def test_jobs_json(self) -> None:
        """jobs --json prints LIST_JOBS' list as it is."""
        jobs = [summary()]
        harness = Harness({commands.ListJobs: [{"jobs": jobs}]})
        self.assertEqual(self.successResultOf(harness.start(cli.do_jobs, _ns(json=True))), 0)
        self.assertEqual(json.loads(harness.stdout.getvalue()), jobs)


def _ns(**fields: Any) -> Any:
    """An argparse namespace with C{fields}."""
    import argparse

    return argparse.Namespace(**fields)


class FakeProtocol:
    """Stands for the AMP connection of a L{cli.NodeClient}: callRemote gives a scripted Deferred."""

    def __init__(self, result: defer.Deferred[Any]) -> None:
        self.result = result
        self.transport = None

    def callRemote(self, command: type, **arguments: Any) -> defer.Deferred[Any]:
        """The scripted result, whatever the command."""
        return self.result


class NodeClientTests(SynchronousTestCase):
    """Every failure of a command becomes one line naming the address."""

    def call(self, result: defer.Deferred[Any], clock: Clock | None = None) -> defer.Deferred[Any]:
        """Call C{JOB_STATUS} through a L{cli.NodeClient} whose connection answers with C{result}."""
        client = cli.NodeClient(clock or Clock(), "127.0.0.1", 10001, timeout=5)
        client._protocol = FakeProtocol(result)  # type: ignore[assignment]
        return defer.ensureDeferred(client.call(commands.JobStatus, job="j"))

    def message(self, result: defer.Deferred[Any], clock: Clock | None = None) -> str:
        """The message of the L{cli.CliError} the call fails with (after the timeout, given a C{clock})."""
        d = self.call(result, clock)
        if clock is not None:
            clock.advance(5)
        return str(self.failureResultOf(d, cli.CliError).value.message)

    def test_answer(self) -> None:
        """An answer comes back as it is."""
        self.assertEqual(self.successResultOf(self.call(defer.succeed({"status": {}}))), {"status": {}})

    def test_errors(self) -> None:
        """Declared errors, unknown ones and a lost connection: one line each."""
        self.assertEqual(
            self.message(defer.fail(commands.UnknownJob("node a1 is not the master of job 'j'"))),
            "unknown job: node a1 is not the master of job 'j'",
        )
        self.assertEqual(
            self.message(defer.fail(commands.BadJob("task #1: bad"))),
            "the node at 127.0.0.1:10001 refused the job: task #1: bad",
        )
        self.assertEqual(
            self.message(defer.fail(Failure(error.ConnectionLost("Connection to the other side was lost.")))),
            "lost the connection to 127.0.0.1:10001: it was reset or dropped",
        )
        self.assertEqual(
            self.message(defer.fail(Failure(error.ConnectionDone()))),
            "lost the connection to 127.0.0.1:10001: the node closed it",
        )
        self.assertIn(
            "answered JOB_STATUS with an error", self.message(defer.fail(commands.BadArguments("JOB_STATUS: bad")))
        )
        self.assertEqual(
            self.message(defer.fail(commands.ShuttingDown("node a1 is shutting down and takes no new jobs"))),
            "the node at 127.0.0.1:10001 is shutting down: node a1 is shutting down and takes no new jobs",
        )

    def test_timeout(self) -> None:
        """No answer within the timeout: one line naming the command and the timeout."""
        self.assertEqual(
            self.message(defer.Deferred(), Clock()), "no answer from 127.0.0.1:10001 to JOB_STATUS within 5s"
        )


class FakeReactor(Clock):
    """Just enough of a reactor for L{cli.run_in_reactor}: run() runs the start-up calls."""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self._starting: list[Any] = []
        self._shutdown: list[Any] = []
        self.stopped = False

    def callWhenRunning(self, f: Any) -> None:
        """Keep C{f} for L{run}."""
        self._starting.append(f)

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        """Keep C{f} for L{stop}, whatever the phase and event."""
        self._shutdown.append(f)

    def run(self) -> None:
        """Call the start-up functions, then stop unless one of them did."""
        self.running = True
        for f in self._starting:
            f()
        if self.running and not self.stopped:
            # As SIGINT would: stop, which fires the shutdown triggers.
            self.stop()

    def stop(self) -> None:
        """Stop, and call the shutdown triggers."""
        self.running = False
        self.stopped = True
        for f in self._shutdown:
            f()


class RunInReactorTests(SynchronousTestCase):
    """The status main() returns, and what reaches stderr."""

    def run_work(self, work: Any) -> tuple[int, str]:
        """Run C{work} with L{cli.run_in_reactor} on a L{FakeReactor}: its status and what it wrote to stderr."""
        err = io.StringIO()
        return cli.run_in_reactor(FakeReactor(), work, err), err.getvalue()

    def test_status(self) -> None:
        """The work's status is the exit status; nothing is printed."""

        async def work() -> int:
            return 1

        self.assertEqual(self.run_work(work), (1, ""))

    def test_cli_error(self) -> None:
        """A CliError is one line on stderr, with its status."""

        async def work() -> int:
            raise cli.CliError("cannot connect to 127.0.0.1:1: connection refused")

        self.assertEqual(self.run_work(work), (2, "p2pexec: cannot connect to 127.0.0.1:1: connection refused\n"))

    def test_interrupted(self) -> None:
        """Stopping the reactor before the work ends (Ctrl-C) cancels it: 130."""

        async def work() -> int:
            await defer.Deferred()
            return 0

        self.assertEqual(self.run_work(work), (130, "p2pexec: interrupted\n"))

    def test_bug(self) -> None:
        """Anything else is a bug, raised with its traceback."""

        async def work() -> int:
            raise ZeroDivisionError()

        self.assertRaises(ZeroDivisionError, self.run_work, work)


HOSTILE_OUTPUT = "\x1b]0;owned\x07\x1b[2J\x00cleared\x9b31m\r\nfake\rprompt $ \u202eevil\tok\r\n"
"""A task's stdout that sets the terminal title, clears the screen, has a NUL, a C1 CSI, a lone CR and a bidi override."""

HOSTILE_SHOWN = ["  \\x1b]0;owned\\x07\\x1b[2J\\x00cleared\\x9b31m", "  fake\\rprompt $ \\u202eevil\tok"]
"""How its last two lines are shown on a terminal."""

RAW_CONTROLS = ("\x1b", "\x00", "\x07", "\x9b", "\r", "\u202e")


class TerminalSafetyTests(SynchronousTestCase):
    """
    What a task, or a node, sent is shown with its control characters
    escaped on a terminal (with or without --plain), and kept exact in a
    pipe and in --json.
    """

    def result(
        self,
        stream: io.StringIO,
        output: Any,
        json_output: bool = False,
        job: str = "a1-0123abcd-1",
        error: str | None = None,
    ) -> str:
        """Run C{result} for a job of one task with C{HOSTILE_OUTPUT} as its stdout; what it printed."""
        node = FakeNode(
            {
                commands.JobStatus: [{"status": summary(job=job, state="finished", total=1, failed=1)}],
                commands.JobTasks: [
                    {"tasks": [task_entry("t1", "failed", stdout=HOSTILE_OUTPUT, error=error)], "next": -1}
                ],
            }
        )
        context = cli.Context(node, output, Clock(), io.StringIO())
        d = defer.ensureDeferred(cli.do_result(context, _ns(job=job, json=json_output, lines=2)))
        self.assertEqual(self.successResultOf(d), 1)
        return stream.getvalue()

    def assertNoRawControls(self, text: str) -> None:
        """No character of C{RAW_CONTROLS} in C{text}."""
        for control in RAW_CONTROLS:
            self.assertNotIn(control, text)

    def test_plain_on_a_terminal_escapes(self) -> None:
        """result --plain on a terminal shows the output's controls escaped, tab and line ends kept."""
        stream = TtyStringIO()
        printed = self.result(stream, cli.make_output(stream, plain=True), error="bad\x1b[8m hidden")
        self.assertNoRawControls(printed)
        lines = printed.split("\n")
        self.assertEqual(lines[-3:-1], HOSTILE_SHOWN)
        self.assertIn("bad\\x1b[8m hidden", printed)

    def test_piped_keeps_the_data_exact(self) -> None:
        """result into a pipe writes the output as the task wrote it."""
        stream = io.StringIO()
        printed = self.result(stream, cli.make_output(stream, plain=False))
        self.assertIn("  \x1b]0;owned\x07\x1b[2J\x00cleared\x9b31m\r\n  fake\rprompt $ \u202eevil\tok\r\n", printed)

    def test_json_is_exact_and_inert_on_a_terminal(self) -> None:
        """result --json on a terminal: the same data when parsed, and no raw control character, C1 included."""
        stream = TtyStringIO()
        printed = self.result(stream, cli.make_output(stream, plain=True), json_output=True)
        self.assertNoRawControls(printed)
        self.assertEqual(json.loads(printed)["tasks"][0]["stdout"], HOSTILE_OUTPUT)
        piped = io.StringIO()
        self.assertEqual(
            json.loads(self.result(piped, cli.make_output(piped, plain=False), json_output=True)), json.loads(printed)
        )

    def rich(self) -> tuple[io.StringIO, Any]:
        """A terminal stream and the rich output the client would draw on it."""
        from rich.console import Console

        stream = TtyStringIO()
        return stream, cli.RichOutput(Console(file=stream, force_terminal=True, width=200, color_system=None))

    def test_rich_escapes_and_reads_no_markup(self) -> None:
        """
        On a terminal without --plain, the output's controls are escaped too,
        and markup in a job id, an error or the output is shown as text
        (C{[/]} used to be read as markup, which raised).
        """
        stream, output = self.rich()
        printed = self.result(stream, output, job="[/]j[bold]1", error="[red]boom[/red]")
        self.assertNoRawControls(printed)
        self.assertIn("\\x1b]0;owned\\x07\\x1b[2J\\x00cleared\\x9b31m", printed)
        self.assertIn("[/]j[bold]1", printed)
        self.assertIn("[red]boom[/red]", printed)

    def test_rich_progress_shows_the_job_id_as_text(self) -> None:
        """The live progress bar shows a job id with markup in it as it is, and one with ESC escaped."""
        stream, output = self.rich()
        display = output.progress("[/]\x1b[2Jj1")
        display.update(summary(job="[/]\x1b[2Jj1", running=1), 0.0)
        display.close(summary(job="[/]\x1b[2Jj1", state="finished", total=1, succeeded=1))
        self.assertIn("[/]\\x1b[2Jj1", stream.getvalue())
        self.assertNotIn("\x1b[2J", stream.getvalue())

    def test_status_and_watch_lines_escaped(self) -> None:
        """A peer's address and a job id from the node are escaped on a terminal, in tables and progress lines."""
        me = {
            "name": "a1",
            "address": "127.0.0.1:10001\x1b[2J",
            "capabilities": ["a"],
            "slots": 2,
            "busy": 1,
            "queued": 0,
            "state": "self",
            "last_heard": None,
        }
        stream = TtyStringIO()
        node = FakeNode(
            {
                commands.ClusterStatus: [{"node": me, "peers": []}],
                commands.ListJobs: [{"jobs": [summary(job="j\x07\x1b[2J", state="finished", total=1, succeeded=1)]}],
                commands.JobStatus: [{"status": summary(job="j\x07\x1b[2J", state="finished", total=1, succeeded=1)}],
            }
        )
        context = cli.Context(node, cli.make_output(stream, plain=True), Clock(), io.StringIO())
        self.assertEqual(self.successResultOf(defer.ensureDeferred(cli.do_status(context, _ns(json=False)))), 0)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(cli.do_watch(context, _ns(job="j1")))), 0)
        printed = stream.getvalue()
        self.assertNoRawControls(printed)
        self.assertIn("127.0.0.1:10001\\x1b[2J", printed)
        self.assertIn("job j\\x07\\x1b[2J finished", printed)

    def test_error_messages_escaped_on_a_terminal(self) -> None:
        """A CliError quoting the node is escaped on a terminal's stderr, and exact into a pipe."""

        async def work() -> int:
            raise cli.CliError("unknown job: no job '\x1b]0;owned\x07'")

        err = TtyStringIO()
        self.assertEqual(cli.run_in_reactor(FakeReactor(), work, err), 2)
        self.assertEqual(err.getvalue(), "p2pexec: unknown job: no job '\\x1b]0;owned\\x07'\n")
        piped = io.StringIO()
        cli.run_in_reactor(FakeReactor(), work, piped)
        self.assertEqual(piped.getvalue(), "p2pexec: unknown job: no job '\x1b]0;owned\x07'\n")

    def test_terminal_text(self) -> None:
        """Controls escaped, tab and newline kept, a CR that ends a line dropped, a lone CR shown."""
        self.assertEqual(cli.terminal_text("a\x1b[1mb\x00\x7f\x85\u2066"), "a\\x1b[1mb\\x00\\x7f\\x85\\u2066")
        self.assertEqual(cli.terminal_text("a\tb\r\nc\rd\r"), "a\tb\nc\\rd")
        self.assertEqual(cli.terminal_text("déjà vu ✓"), "déjà vu ✓")
