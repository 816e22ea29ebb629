"""
Tests for L{p2pexec.cli.render}: plain formatting, the choice of output,
and what a task or a node sent shown safely on a terminal (escaped) and
exactly in a pipe and in C{--json}.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import cli, commands
from p2pexec.cli import commands as subcommands
from p2pexec.cli import errors, render
from tests.cli_doubles import FakeNode, FakeReactor, TtyStringIO, ns, summary, task_entry


class PlainFormattingTests(SynchronousTestCase):
    """What plain mode prints."""

    def test_seconds(self) -> None:
        """Seconds, minutes, hours; ? when unknown."""
        self.assertEqual(
            [render.format_seconds(s) for s in (None, 0.04, 4.25, 59.94, 185, 7620)],
            ["?", "0.0s", "4.2s", "59.9s", "3m05s", "2h07m"],
        )

    def test_progress_line(self) -> None:
        """Done, the outcomes, running, queued, waiting for a capability and the ETA, in one line."""
        line = render.progress_line(summary(eta=12.5, succeeded=3, failed=1, running=2, pending=3, waiting=1))
        self.assertEqual(
            line,
            "a1-0123abcd-1: 4/10 done (3 succeeded, 1 failed), 2 running, 3 queued, "
            "1 waiting for a capability, ETA 12.5s",
        )
        self.assertIn("(1 succeeded, 0 failed, 2 cancelled)", render.progress_line(summary(succeeded=1, cancelled=2)))

    def test_final_line(self) -> None:
        """How a job ended: finished in, or cancelled after."""
        self.assertEqual(
            render.final_line(summary(state="finished", total=3, elapsed=3.21, succeeded=2, failed=1)),
            "job a1-0123abcd-1 finished: 2 succeeded, 1 failed in 3.2s",
        )
        self.assertEqual(
            render.final_line(summary(state="cancelled", total=3, elapsed=65, succeeded=1, cancelled=2)),
            "job a1-0123abcd-1 was cancelled: 1 succeeded, 0 failed, 2 cancelled after 1m05s",
        )

    def test_a_line_per_change_at_most_one_a_second(self) -> None:
        """The first summary gives a line; the same counts again do not; a change within 1 s waits."""
        decide = render.PlainProgress()
        first = summary(running=2, pending=8)
        self.assertIsNotNone(decide.update(first, 10.0))
        self.assertIsNone(decide.update(summary(running=2, pending=8, eta=3.0), 10.5))  # only the ETA moved
        changed = summary(running=2, pending=7, succeeded=1)
        self.assertIsNone(decide.update(changed, 10.9))
        self.assertEqual(decide.update(changed, 11.0), render.progress_line(changed))
        self.assertIsNone(decide.update(changed, 15.0))

    def test_table(self) -> None:
        """Columns aligned two spaces apart, no trailing spaces."""
        self.assertEqual(
            render.format_table(("name", "state"), [["a1", "self"], ["b-long", "alive"]]),
            ["name    state", "a1      self", "b-long  alive"],
        )

    def test_rows(self) -> None:
        """Job, peer and task rows: counts, ? for a load not reported yet, - for nothing."""
        self.assertEqual(
            render.job_row(summary(eta=4.0, succeeded=2, failed=1, running=3, pending=2, waiting=2)),
            ["a1-0123abcd-1", "running", "3/10", "2", "1", "0", "0", "3", "2", "2", "1.0s", "4.0s", "a1 (epoch 1)"],
        )
        replica = dict(summary(), master="n3", epoch=2, answered_by="replica")
        self.assertEqual(render.job_row(replica)[-1], "n3 (epoch 2) (replica)")
        self.assertEqual(render.job_row(dict(summary(), master=None))[-1], "-")
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
        self.assertEqual(
            render.peer_row(peer), ["b1", "127.0.0.1:10002", "b,sh", "4", "?", "?", "?", "known", "2.5s ago"]
        )
        self.assertEqual(render.peer_row(dict(peer, busy=3, queued=1, last_heard=None))[4:7], ["3", "1", "1"])
        self.assertEqual(
            render.task_row(task_entry("t1", "failed", exit_code=3, error="exit\nstatus 3")),
            ["t1", "sh", "failed", "failed", "3", "a1", "0.250s", "1", "exit status 3"],
        )
        self.assertEqual(
            render.task_row(task_entry("t2", "waiting", status=None, exit_code=None, node=None, duration=None))[3:7],
            ["-", "-", "-", "-"],
        )

    def test_cells_and_tails(self) -> None:
        """A long cell is cut with ...; a tail keeps the last lines."""
        self.assertEqual(render.cell("x" * 70, width=10), "xxxxxxx...")
        self.assertEqual(render.tail_lines("1\n2\n3\n", 2), ["2", "3"])
        self.assertEqual(render.tail_lines("1\n2\n", 0), [])
        self.assertEqual(render.tail_lines(None, 3), [])

    def test_plain_output_has_no_escape_codes(self) -> None:
        """Plain output is text only; make_output picks it when stdout is not a terminal."""
        stream = io.StringIO()
        out = render.make_output(stream, plain=False)
        self.assertIsInstance(out, render.PlainOutput)
        out.table("Jobs", render.JOB_COLUMNS, [render.job_row(summary(state="finished", total=1, succeeded=1))])
        out.table("Peers", render.PEER_COLUMNS, [])
        out.block("t1 stdout", ["hello"])
        self.assertNotIn("\x1b", stream.getvalue())
        self.assertEqual(stream.getvalue().splitlines()[-4:], ["Peers:", "  (none)", "t1 stdout:", "  hello"])

    def test_terminal_output(self) -> None:
        """On a terminal, unless --plain, the output is rich's."""
        self.assertIsInstance(render.make_output(TtyStringIO(), plain=False), render.RichOutput)
        self.assertIsInstance(render.make_output(TtyStringIO(), plain=True), render.PlainOutput)


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
        context = subcommands.Context(node, output, Clock(), io.StringIO())
        d = defer.ensureDeferred(subcommands.do_result(context, ns(job=job, json=json_output, lines=2)))
        self.assertEqual(self.successResultOf(d), 1)
        return stream.getvalue()

    def assertNoRawControls(self, text: str) -> None:
        """No character of C{RAW_CONTROLS} in C{text}."""
        for control in RAW_CONTROLS:
            self.assertNotIn(control, text)

    def test_plain_on_a_terminal_escapes(self) -> None:
        """result --plain on a terminal shows the output's controls escaped, tab and line ends kept."""
        stream = TtyStringIO()
        printed = self.result(stream, render.make_output(stream, plain=True), error="bad\x1b[8m hidden")
        self.assertNoRawControls(printed)
        lines = printed.split("\n")
        self.assertEqual(lines[-3:-1], HOSTILE_SHOWN)
        self.assertIn("bad\\x1b[8m hidden", printed)

    def test_piped_keeps_the_data_exact(self) -> None:
        """result into a pipe writes the output as the task wrote it."""
        stream = io.StringIO()
        printed = self.result(stream, render.make_output(stream, plain=False))
        self.assertIn("  \x1b]0;owned\x07\x1b[2J\x00cleared\x9b31m\r\n  fake\rprompt $ \u202eevil\tok\r\n", printed)

    def test_json_is_exact_and_inert_on_a_terminal(self) -> None:
        """result --json on a terminal: the same data when parsed, and no raw control character, C1 included."""
        stream = TtyStringIO()
        printed = self.result(stream, render.make_output(stream, plain=True), json_output=True)
        self.assertNoRawControls(printed)
        self.assertEqual(json.loads(printed)["tasks"][0]["stdout"], HOSTILE_OUTPUT)
        piped = io.StringIO()
        self.assertEqual(
            json.loads(self.result(piped, render.make_output(piped, plain=False), json_output=True)),
            json.loads(printed),
        )

    def rich(self) -> tuple[io.StringIO, Any]:
        """A terminal stream and the rich output the client would draw on it."""
        from rich.console import Console

        stream = TtyStringIO()
        return stream, render.RichOutput(Console(file=stream, force_terminal=True, width=200, color_system=None))

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
        context = subcommands.Context(node, render.make_output(stream, plain=True), Clock(), io.StringIO())
        self.assertEqual(self.successResultOf(defer.ensureDeferred(subcommands.do_status(context, ns(json=False)))), 0)
        self.assertEqual(self.successResultOf(defer.ensureDeferred(subcommands.do_watch(context, ns(job="j1")))), 0)
        printed = stream.getvalue()
        self.assertNoRawControls(printed)
        self.assertIn("127.0.0.1:10001\\x1b[2J", printed)
        self.assertIn("job j\\x07\\x1b[2J finished", printed)

    def test_error_messages_escaped_on_a_terminal(self) -> None:
        """A CliError quoting the node is escaped on a terminal's stderr, and exact into a pipe."""

        async def work() -> int:
            raise errors.CliError("unknown job: no job '\x1b]0;owned\x07'")

        err = TtyStringIO()
        self.assertEqual(cli.run(FakeReactor(), work, err), 2)
        self.assertEqual(err.getvalue(), "p2pexec: unknown job: no job '\\x1b]0;owned\\x07'\n")
        piped = io.StringIO()
        cli.run(FakeReactor(), work, piped)
        self.assertEqual(piped.getvalue(), "p2pexec: unknown job: no job '\x1b]0;owned\x07'\n")

    def test_terminal_text(self) -> None:
        """Controls escaped, tab and newline kept, a CR that ends a line dropped, a lone CR shown."""
        self.assertEqual(render.terminal_text("a\x1b[1mb\x00\x7f\x85\u2066"), "a\\x1b[1mb\\x00\\x7f\\x85\\u2066")
        self.assertEqual(render.terminal_text("a\tb\r\nc\rd\r"), "a\tb\nc\\rd")
        self.assertEqual(render.terminal_text("déjà vu ✓"), "déjà vu ✓")
