"""
Tests for a task's whole output in C{run} and C{submit --wait --output}:
L{p2pexec.cli.ended.whole_output} reads it with TASK_OUTPUT when the
JOB_TASKS entry's tail is not all of it, and L{p2pexec.cli.output} writes
it piece by piece (exact bytes to a pipe, tags across pieces).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from p2pexec import commands
from p2pexec.cli import ended, output
from p2pexec.client import errors as client_errors
from tests.cli_doubles import FakeNode, task_entry

JOB = "j-1"


def kept_output(data: bytes, attempt: int = 1) -> Any:
    """A TASK_OUTPUT responder for FakeNode: C{data} kept for an ended attempt."""

    def answer(job: str, task: str, stream: str, offset: int, limit: int | None = None, **_: Any) -> dict[str, Any]:
        limit = commands.TASK_OUTPUT_LIMIT if limit is None else limit
        piece = data[offset : offset + limit]
        return {
            "data": piece,
            "next_offset": offset + len(piece),
            "size": len(data),
            "ended": True,
            "cut": False,
            "attempt": attempt,
            "node": "w1",
        }

    return answer


def collect(node: FakeNode, entry: dict[str, Any], stream: str = "stdout") -> tuple[list[bytes], list[str]]:
    """Every piece L{ended.whole_output} gives for C{entry}, and the warnings it said."""
    warnings: list[str] = []

    async def read() -> list[bytes]:
        return [piece async for piece in ended.whole_output(node, JOB, entry, stream, warnings.append)]

    pieces: list[bytes] = []
    defer.ensureDeferred(read()).addCallback(pieces.extend)
    return pieces, warnings


class WholeOutputTests(SynchronousTestCase):
    """L{ended.whole_output}: the tail when it is all, else TASK_OUTPUT from offset 0."""

    def test_tail_is_all(self) -> None:
        """A tail as long as the size the entry gives is printed as it is, without asking the node."""
        node = FakeNode({})
        pieces, warnings = collect(node, task_entry("t1", stdout="héllo\n", stdout_size=7))
        self.assertEqual((pieces, warnings, node.calls), ([b"h\xc3\xa9llo\n"], [], []))

    def test_older_node_without_sizes(self) -> None:
        """An entry without a size (an older node) is taken at its tail."""
        node = FakeNode({})
        pieces, _ = collect(node, task_entry("t1", stdout="x" * 8192))
        self.assertEqual(pieces, [b"x" * 8192])

    def test_cut_tail_read_whole(self) -> None:
        """1 MB of every byte value, beyond the tail: read with TASK_OUTPUT in pieces of at most 60,000 bytes."""
        data = bytes(range(256)) * 4096
        node = FakeNode({commands.TaskOutput: [kept_output(data)]})
        entry = task_entry("t1", stdout="\ufffd" * 10, stdout_size=len(data))
        pieces, warnings = collect(node, entry)
        self.assertEqual(b"".join(pieces), data)
        self.assertEqual(warnings, [])
        self.assertTrue(all(len(piece) <= commands.TASK_OUTPUT_LIMIT for piece in pieces))
        offsets = [sent["offset"] for sent in node.sent(commands.TaskOutput)]
        self.assertEqual(offsets, list(range(0, len(data), commands.TASK_OUTPUT_LIMIT)))
        self.assertEqual({sent["task"] for sent in node.sent(commands.TaskOutput)}, {"t1"})

    def test_invalid_utf8_read_whole(self) -> None:
        """A tail with a replacement character (the bytes were not UTF-8) is read whole, even at its size."""
        node = FakeNode({commands.TaskOutput: [kept_output(b"\xff\xfe\n")]})
        pieces, _ = collect(node, task_entry("t1", stdout="\ufffd\n", stdout_size=3))
        self.assertEqual(pieces, [b"\xff\xfe\n"])

    def test_gone_falls_back_to_tail(self) -> None:
        """Output the node cannot give: one warning naming the task and the reason, then the tail."""
        gone = client_errors.OutputGone("the output is gone: worker w1 left")
        node = FakeNode({commands.TaskOutput: [gone]})
        pieces, warnings = collect(node, task_entry("t1", stderr="end\n", stderr_size=90000), "stderr")
        self.assertEqual(pieces, [b"end\n"])
        self.assertEqual(
            warnings,
            ["p2pexec: task t1: only the last 4 bytes of its stderr are shown: the output is gone: worker w1 left"],
        )

    def test_another_attempt_falls_back_to_tail(self) -> None:
        """Kept output of another attempt than the entry's is not printed as this one's."""
        node = FakeNode({commands.TaskOutput: [kept_output(b"y" * 10000, attempt=2)]})
        pieces, warnings = collect(node, task_entry("t1", stdout="x\n", stdout_size=10000))
        self.assertEqual(pieces, [b"x\n"])
        self.assertIn("attempt 2 of task t1 runs now", warnings[0])

    def test_lost_connection_raised(self) -> None:
        """A lost connection is not hidden behind the tail: it is raised."""
        node = FakeNode({commands.TaskOutput: [client_errors.ConnectionLost("lost the connection")]})
        failures: list[Any] = []

        async def read() -> None:
            async for _ in ended.whole_output(node, JOB, task_entry("t1", stdout_size=10), "stdout", print):
                pass

        defer.ensureDeferred(read()).addErrback(failures.append)
        self.assertTrue(failures[0].check(client_errors.ConnectionLost))


class SinkTests(SynchronousTestCase):
    """L{output.StreamSink}: pieces written as they come."""

    def test_pipe_gets_exact_bytes(self) -> None:
        """A stream with a binary buffer (a pipe, a file) gets the bytes as they are, after its own text."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
        stream.write("before\n")
        sink = output.StreamSink(stream, None)
        sink.write(b"\xff\x00")
        sink.write(b"\xfe\n")
        sink.close()
        self.assertEqual(raw.getvalue(), b"before\n\xff\x00\xfe\n")

    def test_tag_across_pieces(self) -> None:
        """--tag starts each line once, also when a line is split across pieces, and a UTF-8 character too."""
        out = io.StringIO()
        sink = output.StreamSink(out, "a b")
        for piece in (b"one\ntw", b"o\n", b"\xc3", b"\xa9\nlast"):
            sink.write(piece)
        sink.close()
        self.assertEqual(out.getvalue(), "a b\tone\na b\ttwo\na b\té\na b\tlast")

    def test_printer_reads_through_reader(self) -> None:
        """The printer writes each piece its reader gives, stdout then stderr, as they come."""
        out, err = io.StringIO(), io.StringIO()
        seen: list[str] = []

        async def reader(entry: dict[str, Any], stream: str) -> Any:
            for number in range(3):
                seen.append(out.getvalue() if stream == "stdout" else err.getvalue())
                yield f"{stream} {number}\n".encode()

        printer = output.TaskPrinter(out, err, keep_order=False, tag=False, read=reader)
        defer.ensureDeferred(printer.ended(output.TaskLabel(1, "x", "echo x"), task_entry("t1")))
        self.assertEqual(out.getvalue(), "stdout 0\nstdout 1\nstdout 2\n")
        self.assertEqual(err.getvalue(), "stderr 0\nstderr 1\nstderr 2\n")
        self.assertEqual(seen[:3], ["", "stdout 0\n", "stdout 0\nstdout 1\n"], "each piece written before the next")
