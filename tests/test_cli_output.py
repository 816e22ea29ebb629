"""
Tests for what C{run} and C{submit --wait --output/--joblog} print and log:
L{p2pexec.cli.output}, L{p2pexec.cli.ended} and L{p2pexec.cli.joblog}, and
the subcommands over a scripted node.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import commands as subcommands
from p2pexec.cli import ended, errors, joblog, output, parser
from p2pexec.model import TaskSpec
from tests.cli_doubles import FakeNode, Harness, TtyStringIO, ns, summary, task_entry


def label(sequence: int, tag: str = "") -> output.TaskLabel:
    """A task's label."""
    return output.TaskLabel(sequence, tag or f"arg{sequence}", f"echo arg{sequence}")


class JoblogTests(SynchronousTestCase):
    """L{joblog}: GNU parallel's joblog lines."""

    def test_line(self) -> None:
        """A line has parallel's nine tab-separated columns, Starttime with 3 decimals, JobRuntime as %10.3f."""
        entry = task_entry("t1", node="b1", duration=0.0034, started=1_796_679_400.5934, stdout="a\n", exit_code=0)
        self.assertEqual(
            joblog.joblog_line(1, entry, "echo a", seen_at=0.0), "1\tb1\t1796679400.593\t     0.003\t0\t2\t0\t0\techo a"
        )

    def test_exit_values(self) -> None:
        """Exitval as GNU parallel writes it: the code; 0 killed by a signal; -1 timed out or never ran."""
        self.assertEqual(joblog.exit_value(task_entry("t", "failed", exit_code=3)), 3)
        self.assertEqual(joblog.exit_value(task_entry("t", "failed", exit_code=None, signal=9)), 0)
        self.assertEqual(
            joblog.exit_value(task_entry("t", "failed", status="timed-out", exit_code=None, signal=15)), -1
        )
        self.assertEqual(joblog.exit_value(task_entry("t", "cancelled", exit_code=None)), -1)
        line = joblog.joblog_line(2, task_entry("t", "failed", exit_code=None, signal=9, started=5.0), "x", 0.0)
        self.assertEqual(line.split("\t")[6:8], ["0", "9"])

    def test_estimated_start_and_sizes(self) -> None:
        """Without a start time, seen-at minus duration; Receive counts bytes, or stdout_size when given."""
        entry = task_entry("t", duration=2.0, stdout="é\n")
        self.assertEqual(
            joblog.joblog_line(1, entry, "x", seen_at=100.0).split("\t")[2:6], ["98.000", "     2.000", "0", "3"]
        )
        entry["stdout_size"] = 10_000_000
        self.assertEqual(joblog.joblog_line(1, entry, "x", 0.0).split("\t")[5], "10000000")

    def test_command_text(self) -> None:
        """An argv is quoted as GNU parallel quotes it; a shell line is itself; newlines become NUL."""
        self.assertEqual(
            joblog.command_text(TaskSpec(id="t", kind="sh", command=("echo", "a b", "it's"))), "echo 'a b' 'it'\"'\"'s'"
        )
        self.assertEqual(joblog.command_text(TaskSpec(id="t", kind="sh", command="echo $x", shell=True)), "echo $x")
        self.assertEqual(joblog.command_text(TaskSpec.instruction("a1")), "a1")
        self.assertTrue(joblog.joblog_line(1, task_entry("t"), "a\nb", 0.0).endswith("\ta\0b"))

    def test_file(self) -> None:
        """The file gets the header at once, then each line, flushed; an unwritable one is one CliError."""
        path = self.mktemp()
        log = joblog.Joblog.open(path)
        with open(path) as f:
            self.assertEqual(f.read(), joblog.HEADER + "\n")
        log.ended(1, task_entry("t", started=1.0), "echo", 0.0)
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2, "flushed before close")
        log.close()
        with self.assertRaises(errors.CliError) as raised:
            joblog.Joblog.open(self.mktemp() + "/missing/log")
        self.assertIn("--joblog: cannot write", raised.exception.message)
        stdout = io.StringIO()
        joblog.Joblog.open("-", stdout).close()
        self.assertEqual(stdout.getvalue(), joblog.HEADER + "\n")


class PrinterTests(SynchronousTestCase):
    """L{output.TaskPrinter}: grouped, ordered, tagged, stderr apart."""

    def setUp(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()

    def ended(self, printer: output.TaskPrinter, task: output.TaskLabel, entry: dict[str, Any]) -> None:
        """Tell C{printer} the task ended, and let it print (its output is the entry's tails)."""
        self.successResultOf(_run(printer.ended(task, entry)))

    def test_completion_order(self) -> None:
        """Each task's output is printed whole, as it ends; its stderr on stderr."""
        printer = output.TaskPrinter(self.out, self.err, keep_order=False, tag=False)
        self.ended(printer, label(2), task_entry("b", stdout="b1\nb2\n", stderr="warn b\n"))
        self.ended(printer, label(1), task_entry("a", stdout="a1\n"))
        self.assertEqual((self.out.getvalue(), self.err.getvalue()), ("b1\nb2\na1\n", "warn b\n"))

    def test_keep_order(self) -> None:
        """-k holds a task until those before it are printed; flush prints what is left in order."""
        printer = output.TaskPrinter(self.out, self.err, keep_order=True, tag=False)
        self.ended(printer, label(3), task_entry("c", stdout="c\n"))
        self.ended(printer, label(2), task_entry("b", stdout="b\n"))
        self.assertEqual(self.out.getvalue(), "")
        self.ended(printer, label(1), task_entry("a", stdout="a\n"))
        self.assertEqual(self.out.getvalue(), "a\nb\nc\n")
        self.ended(printer, label(6), task_entry("f", stdout="f\n"))
        self.ended(printer, label(5), task_entry("e", stdout="e\n"))
        self.successResultOf(_run(printer.flush()))
        self.assertEqual(self.out.getvalue(), "a\nb\nc\ne\nf\n")

    def test_tag(self) -> None:
        """--tag starts every line, the last one without a newline too, with the tag and a tab."""
        printer = output.TaskPrinter(self.out, self.err, keep_order=False, tag=True)
        self.ended(printer, label(1, "a c"), task_entry("a", stdout="x\ny", stderr="e\n"))
        self.assertEqual((self.out.getvalue(), self.err.getvalue()), ("a c\tx\na c\ty", "a c\te\n"))

    def test_errors_said_on_stderr(self) -> None:
        """A task that did not succeed and has an error says it on stderr, naming the task; stdout stays clean."""
        printer = output.TaskPrinter(self.out, self.err, keep_order=False, tag=False)
        self.ended(
            printer, label(1, "x y"), task_entry("t1", "failed", status="error", error="command not found: 'nope'")
        )
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "p2pexec: task t1 (x y): command not found: 'nope'\n")

    def test_terminal_escapes(self) -> None:
        """On a terminal, control characters a task printed are shown escaped; in a pipe, exact."""
        tty = TtyStringIO()
        self.ended(output.TaskPrinter(tty, self.err, False, False), label(1), task_entry("a", stdout="\x1b[2Jx\n"))
        self.assertEqual(tty.getvalue(), "\\x1b[2Jx\n")
        self.ended(output.TaskPrinter(self.out, self.err, False, False), label(1), task_entry("a", stdout="\x1b[2Jx\n"))
        self.assertEqual(self.out.getvalue(), "\x1b[2Jx\n")


class EndedTests(SynchronousTestCase):
    """L{ended.EndedTasks}: the tasks that ended since the last look."""

    def test_new_since_last_look(self) -> None:
        """
        Each look returns the tasks that ended since the last, by end time,
        and asks again only from the first task that had not ended.
        """
        pages = [
            {
                "tasks": [
                    task_entry("a", started=5.0, duration=1.0),
                    task_entry("b", "running"),
                    task_entry("c", started=1.0, duration=1.0),
                ],
                "next": -1,
            },
            {"tasks": [task_entry("b", "failed", started=0.0, duration=9.0), task_entry("c", started=1.0)], "next": -1},
            {"tasks": [], "next": -1},
        ]
        node = FakeNode({commands.JobTasks: pages})
        finder = ended.EndedTasks("j", limit=10)
        first = self.successResultOf(_run(finder.new(node)))
        self.assertEqual([entry["id"] for entry in first], ["c", "a"], "by end time")
        second = self.successResultOf(_run(finder.new(node)))
        self.assertEqual([entry["id"] for entry in second], ["b"])
        self.assertEqual([sent["offset"] for sent in node.sent(commands.JobTasks)], [0, 1])
        self.assertEqual(self.successResultOf(_run(finder.new(node))), [])
        self.assertEqual(node.sent(commands.JobTasks)[-1]["offset"], 3)

    def test_only_ended_tasks_asked_for(self) -> None:
        """
        Given the job's order, each look asks JOB_TASKS only for the ended
        tasks (state), from the first task of the order that had not ended.
        """
        pages = [
            {"tasks": [task_entry("a"), task_entry("c")], "next": -1},
            {"tasks": [task_entry("b"), task_entry("c")], "next": -1},
            {"tasks": [task_entry("d")], "next": -1},
        ]
        node = FakeNode({commands.JobTasks: pages})
        finder = ended.EndedTasks("j", limit=10, order=["a", "b", "c", "d"])
        looks = [[entry["id"] for entry in self.successResultOf(_run(finder.new(node)))] for _ in range(3)]
        self.assertEqual(looks, [["a", "c"], ["b"], ["d"]])
        sent = node.sent(commands.JobTasks)
        self.assertEqual(
            [(each["offset"], each["state"]) for each in sent],
            [(0, ended.ENDED_FILTER), (1, ended.ENDED_FILTER), (3, ended.ENDED_FILTER)],
        )

    def test_older_node_that_does_not_filter(self) -> None:
        """A node that ignores the state filter answers every task from the offset: the ended ones are kept."""
        pages = [
            {"tasks": [task_entry("a"), task_entry("b", "running"), task_entry("c")], "next": -1},
            {"tasks": [task_entry("b"), task_entry("c")], "next": -1},
        ]
        node = FakeNode({commands.JobTasks: pages})
        finder = ended.EndedTasks("j", limit=10, order=["a", "b", "c"])
        looks = [[entry["id"] for entry in self.successResultOf(_run(finder.new(node)))] for _ in range(2)]
        self.assertEqual(looks, [["a", "c"], ["b"]])
        self.assertEqual([each["offset"] for each in node.sent(commands.JobTasks)], [0, 1])

    def test_tasks_the_order_does_not_name(self) -> None:
        """A task the order does not name (all_nodes' TASK@NODE): from then on every task is paged through."""
        pages = [
            {"tasks": [task_entry("a"), task_entry("x@n1")], "next": -1},
            {"tasks": [task_entry("a"), task_entry("x@n1"), task_entry("x@n2")], "next": -1},
        ]
        node = FakeNode({commands.JobTasks: pages})
        finder = ended.EndedTasks("j", limit=10, order=["a", "x"])
        looks = [[entry["id"] for entry in self.successResultOf(_run(finder.new(node)))] for _ in range(2)]
        self.assertEqual(looks, [["a", "x@n1"], ["x@n2"]])
        second = node.sent(commands.JobTasks)[1]
        self.assertEqual((second["offset"], second.get("state")), (0, None))

    def test_job_order_without_start_times(self) -> None:
        """Entries from a node that does not say when tasks started keep the job's order."""
        node = FakeNode({commands.JobTasks: [{"tasks": [task_entry("a"), task_entry("b", started=0.0)], "next": -1}]})
        self.assertEqual([e["id"] for e in self.successResultOf(_run(ended.EndedTasks("j").new(node)))], ["a", "b"])

    def test_stuck_paging(self) -> None:
        """A node whose paging does not move on is one CliError, not a loop."""
        node = FakeNode({commands.JobTasks: [{"tasks": [task_entry("a", "running")], "next": 0}]})
        failure = self.failureResultOf(_run(ended.EndedTasks("j").new(node)), errors.CliError)
        self.assertIn("no progress", failure.value.message)


def _run(coroutine: Any) -> Any:
    from twisted.internet import defer

    return defer.ensureDeferred(coroutine)


class StatusLineTests(SynchronousTestCase):
    """L{output.StatusLine}: progress rewritten in place on a terminal."""

    def test_update_hide_show(self) -> None:
        """A line is drawn in place, cleared while output prints, and drawn again."""
        tty = TtyStringIO()
        line = output.StatusLine(tty)
        line.hide()
        self.assertEqual(tty.getvalue(), "", "nothing to hide before the first update")
        line.update(summary(total=3, succeeded=1, running=2), 0.0)
        self.assertTrue(tty.getvalue().startswith("\r\x1b[Ka1-0123abcd-1: 1/3 done"), tty.getvalue())
        line.hide()
        self.assertTrue(tty.getvalue().endswith("\r\x1b[K"))
        line.show()
        line.close()
        self.assertTrue(tty.getvalue().endswith("\r\x1b[K"))


def run_args(**fields: Any) -> Any:
    """A namespace for run with two tasks, echo a and echo b."""
    tasks = [TaskSpec(id="a", kind="sh", command=("echo", "a")), TaskSpec(id="b", kind="sh", command=("echo", "b"))]
    defaults = {"keep_order": False, "tag": False, "joblog": None}
    defaults.update(fields)
    return ns(command="run", job_tasks=tasks, task_arguments=[("a",), ("b",)], **defaults)


class RunCommandTests(SynchronousTestCase):
    """run and submit --wait --output over a scripted node."""

    def harness(self, stderr: io.StringIO | None = None) -> Harness:
        """A harness whose node runs a two-task job: b ends first, then a fails."""
        harness = Harness(
            {
                commands.SubmitJob: [{"upload": "", "job": "j-1"}],
                commands.JobStatus: [
                    {"status": summary("j-1", total=2, running=2)},
                    {"status": summary("j-1", total=2, running=1, succeeded=1)},
                    {"status": summary("j-1", "finished", total=2, succeeded=1, failed=1)},
                ],
                commands.JobTasks: [
                    {"tasks": [task_entry("a", "running")], "next": -1},
                    {"tasks": [task_entry("a", "running"), task_entry("b", stdout="b\n", started=2.0)], "next": -1},
                    {
                        "tasks": [
                            task_entry(
                                "a", "failed", exit_code=1, stdout="a\n", stderr="bad\n", started=1.0, duration=5.0
                            )
                        ],
                        "next": -1,
                    },
                ],
            }
        )
        harness.context.stdout = io.StringIO()
        if stderr is not None:
            harness.stderr = stderr
            harness.context.err = stderr
        return harness

    def drive(self, harness: Harness, subcommand: Any, args: Any) -> int:
        """Run the subcommand to its end, the clock moved on for each poll."""
        d = harness.start(subcommand, args)
        for _ in range(10):
            harness.clock.advance(subcommands.POLL_INTERVAL)
        return self.successResultOf(d)

    def test_run_prints_tasks_output(self) -> None:
        """run prints b then a (as they ended) on stdout, a's stderr on stderr, one failure line; exit 1."""
        harness = self.harness()
        self.assertEqual(self.drive(harness, subcommands.do_run, run_args()), errors.EXIT_FAILED)
        self.assertEqual(harness.context.stdout.getvalue(), "b\na\n")
        self.assertEqual(harness.stdout.getvalue(), "", "nothing of p2pexec's own on stdout")
        err = harness.stderr.getvalue().splitlines()
        self.assertEqual(err[0], "bad")
        self.assertRegex(err[1], r"^p2pexec: job j-1 finished: 1 succeeded, 1 failed of 2 task\(s\); ")
        self.assertEqual(len(err), 2, err)

    def test_run_keep_order_tag_joblog(self) -> None:
        """-k prints a before b, --tag tags them, --joblog logs b then a (as they ended) with their sequence numbers."""
        harness = self.harness()
        path = self.mktemp()
        self.drive(harness, subcommands.do_run, run_args(keep_order=True, tag=True, joblog=path))
        self.assertEqual(harness.context.stdout.getvalue(), "a\ta\nb\tb\n")
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], joblog.HEADER)
        self.assertEqual([line.split("\t")[0] for line in lines[1:]], ["2", "1"])
        self.assertEqual(lines[2].split("\t")[2:], ["1.000", "     5.000", "0", "2", "1", "0", "echo a"])

    def test_progress_on_a_terminal_stderr(self) -> None:
        """With stderr a terminal: the submitted line, a status line, and the final line there; stdout clean."""
        tty = TtyStringIO()
        harness = self.harness(tty)
        self.drive(harness, subcommands.do_run, run_args())
        self.assertEqual(harness.context.stdout.getvalue(), "b\na\n")
        text = tty.getvalue()
        self.assertIn("job j-1: 2 task(s) submitted to 127.0.0.1:10001\n", text)
        self.assertIn("\r\x1b[Kj-1: 0/2 done", text)
        self.assertTrue(text.endswith("task(s); each task's result: p2pexec result j-1\n"), text[-80:])

    def test_submit_wait_output(self) -> None:
        """submit --wait --output prints the tasks' output (tagged by task id) and the job id on stderr."""
        harness = self.harness()
        args = ns(
            command="submit",
            job_tasks=run_args().job_tasks,
            wait=True,
            output=True,
            keep_order=True,
            tag=True,
            joblog=None,
        )
        self.assertEqual(self.drive(harness, subcommands.do_submit, args), errors.EXIT_FAILED)
        self.assertEqual(harness.context.stdout.getvalue(), "a\ta\nb\tb\n")
        self.assertEqual(harness.stderr.getvalue().splitlines()[0], "j-1")

    def test_submit_wait_joblog_only(self) -> None:
        """submit --wait --joblog without --output prints as before (job id, final lines) and writes the log."""
        harness = self.harness()
        path = self.mktemp()
        args = ns(
            command="submit",
            job_tasks=run_args().job_tasks,
            wait=True,
            output=False,
            keep_order=False,
            tag=False,
            joblog=path,
        )
        self.drive(harness, subcommands.do_submit, args)
        self.assertEqual(harness.lines()[0], "j-1")
        self.assertIn("the results of each task: p2pexec result j-1", harness.lines())
        self.assertEqual(harness.context.stdout.getvalue(), "")
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 3)


class ParserTests(SynchronousTestCase):
    """The new flags of run and submit."""

    def test_flags(self) -> None:
        """run takes -k, --tag and --joblog; submit takes them with --wait and --output."""
        args = parser.parse_arguments(["run", "--kind", "sh", "-k", "--tag", "--joblog", "l", "--", "x", ":::", "a"])
        self.assertEqual((args.keep_order, args.tag, args.joblog), (True, True, "l"))
        args = parser.parse_arguments(["submit", "--wait", "--output", "-k", "--tag", "--joblog", "l", "j.toml"])
        self.assertEqual((args.output, args.keep_order, args.tag, args.joblog), (True, True, True, "l"))

    def test_submit_refusals(self) -> None:
        """--output and --joblog need --wait; -k and --tag need --output."""
        for argv, needs in [
            (["--output"], "--output needs --wait"),
            (["--joblog", "l"], "--joblog needs --wait"),
            (["--wait", "-k"], "--keep-order needs --output"),
            (["--wait", "--tag"], "--tag needs --output"),
        ]:
            err = io.StringIO()
            import contextlib

            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
                parser.parse_arguments(["submit", *argv, "j.toml"])
            self.assertEqual(raised.exception.code, errors.EXIT_USAGE)
            self.assertIn(needs, err.getvalue())
