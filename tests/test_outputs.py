"""
Tests for L{p2pexec.outputs}: a worker's store of its tasks' full output
(written as it arrives, cut at --max-output with a note, read back in
pieces, swept after --output-retention), its options, and the executor
writing into it.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import TestCase

from p2pexec.model import TaskResult
from p2pexec.outputs import (
    OutputStore,
    check_output_options,
    open_store,
    parse_duration,
    parse_size,
)
from p2pexec.tap import Options
from tests.test_executor import FakeExecutorMixin, task


class StoreMixin:
    """A store in a temporary folder."""

    def make_store(self, max_output: int = 1000, wall: float = 1000.0) -> OutputStore:
        """A store of at most C{max_output} bytes per stream, its clock at C{wall}."""
        self.folder = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        return OutputStore(os.path.join(self.folder, "output"), "w1", max_output, 3600.0, lambda: wall)


class WriteTests(StoreMixin, TestCase):
    """An attempt's output goes to its files as it arrives, up to the limit."""

    def test_written_as_it_arrives(self) -> None:
        """Each piece is in the stream's file at once; the other stream's file is made on its first byte."""
        store = self.make_store()
        keeper = store.start("job-1", "t1", 1)
        keeper.write(0, b"hello ")
        path = os.path.join(self.folder, "output", "job-1", "t1.1.stdout")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"hello ")
        self.assertFalse(os.path.exists(path[: -len("stdout")] + "stderr"))
        keeper.write(0, b"world")
        keeper.write(1, b"oops")
        keeper.end()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"hello world")
        self.assertEqual(store.read("job-1", "t1", 1, "stderr", 0, 100).data, b"oops")

    def test_cut_at_the_limit_with_a_note(self) -> None:
        """Past --max-output the rest is counted, not kept; at the end a note says how much was cut."""
        store = self.make_store(max_output=10)
        keeper = store.start("job-1", "t1", 1)
        keeper.write(0, b"0123456")
        keeper.write(0, b"789abcdef")
        keeper.write(0, b"more")
        piece = store.read("job-1", "t1", 1, "stdout", 0, 100)
        self.assertEqual((piece.data, piece.size, piece.cut, piece.ended), (b"0123456789", 10, True, False))
        keeper.end()
        piece = store.read("job-1", "t1", 1, "stdout", 0, 1000)
        self.assertTrue(piece.data.startswith(b"0123456789\n[p2pexec: output cut here"), piece.data)
        self.assertIn(b"wrote 20 bytes to this stream, 10 more than the worker's --max-output of 10 bytes", piece.data)
        self.assertEqual((piece.size, piece.ended, piece.cut), (len(piece.data), True, True))
        self.assertEqual((keeper.streams[0].written, keeper.streams[0].kept), (20, 10))
        self.assertFalse(keeper.streams[1].cut)

    def test_unsafe_names_stay_inside_the_folder(self) -> None:
        """A job or task id that is not a plain file name is stored under a digest, inside the store's folder."""
        store = self.make_store()
        keeper = store.start("../evil", "..", 1)
        keeper.write(0, b"x")
        keeper.end()
        made = os.listdir(os.path.join(self.folder, "output"))
        self.assertEqual(len(made), 1)
        self.assertTrue(made[0].startswith("x-"), made)
        self.assertEqual(store.read("../evil", "..", 1, "stdout", 0, 10).data, b"x")


class ReadTests(StoreMixin, TestCase):
    """Pieces and offsets, live and after a restart."""

    def test_pieces_and_offsets(self) -> None:
        """Pieces of at most the limit, from each offset; past the end, nothing, and next_offset stays."""
        store = self.make_store()
        keeper = store.start("job-1", "t1", 2)
        keeper.write(0, bytes(range(256)))
        got = b""
        offset = 0
        while True:
            piece = store.read("job-1", "t1", 2, "stdout", offset, 100)
            self.assertLessEqual(len(piece.data), 100)
            got += piece.data
            offset = piece.next_offset
            if offset >= piece.size:
                break
        self.assertEqual(got, bytes(range(256)))
        self.assertFalse(piece.ended)
        past = store.read("job-1", "t1", 2, "stdout", 300, 100)
        self.assertEqual((past.data, past.next_offset, past.size), (b"", 300, 256))

    def test_quiet_attempt_is_empty_not_unknown(self) -> None:
        """An attempt that wrote nothing has empty streams (no file); one never started is unknown (None)."""
        store = self.make_store()
        store.start("job-1", "t1", 1).end()
        piece = store.read("job-1", "t1", 1, "stdout", 0, 100)
        self.assertEqual((piece.data, piece.size, piece.ended), (b"", 0, True))
        self.assertIsNone(store.read("job-1", "t1", 2, "stdout", 0, 100))
        self.assertIsNone(store.read("job-2", "t1", 1, "stdout", 0, 100))

    def test_read_after_a_restart(self) -> None:
        """A new store over the same folder (the node restarted) reads the files: ended, and cut if marked."""
        store = self.make_store(max_output=4)
        keeper = store.start("job-1", "t1", 1)
        keeper.write(1, b"abcdefgh")
        keeper.end()
        again = OutputStore(store.directory, "w1", 4)
        piece = again.read("job-1", "t1", 1, "stderr", 0, 4)
        self.assertEqual((piece.data, piece.ended, piece.cut), (b"abcd", True, True))
        quiet = again.read("job-1", "t1", 1, "stdout", 0, 4)
        self.assertEqual((quiet.data, quiet.size, quiet.ended, quiet.cut), (b"", 0, True, False))


class SweepTests(StoreMixin, TestCase):
    """Output older than the retention is removed, job by job."""

    def test_old_jobs_removed_running_ones_kept(self) -> None:
        """A job folder last written before the retention goes; a recent one, or one still written to, stays."""
        store = self.make_store()
        for job in ("old", "new", "running"):
            keeper = store.start(job, "t1", 1)
            keeper.write(0, b"x")
            if job != "running":
                keeper.end()
        base = os.path.join(self.folder, "output")
        for job, when in (("old", 100.0), ("new", 5000.0), ("running", 100.0)):
            for path in (os.path.join(base, job), os.path.join(base, job, "t1.1.stdout")):
                os.utime(path, (when, when))
        self.assertEqual(store.sweep(now=5000.0), 1)
        self.assertEqual(sorted(os.listdir(base)), ["new", "running"])
        self.assertIsNone(store.read("old", "t1", 1, "stdout", 0, 10))
        # Written again after its folder went: made anew.
        keeper = store.start("old", "t2", 1)
        keeper.write(0, b"y")
        self.assertEqual(store.read("old", "t2", 1, "stdout", 0, 10).data, b"y")

    def test_nothing_to_sweep(self) -> None:
        """A store that never wrote has no folder: nothing removed."""
        self.assertEqual(self.make_store().sweep(), 0)


class OptionTests(TestCase):
    """--max-output and --output-retention."""

    def test_sizes(self) -> None:
        """Sizes in bytes, K, M, G (powers of 1024), with or without B/iB."""
        self.assertEqual(parse_size("100M"), 100 * 1024 * 1024)
        self.assertEqual(parse_size("1G"), 1024**3)
        self.assertEqual(parse_size("512k"), 512 * 1024)
        self.assertEqual(parse_size("2GiB"), 2 * 1024**3)
        self.assertEqual(parse_size("4096"), 4096)
        self.assertEqual(parse_size("0"), 0)

    def test_bad_sizes(self) -> None:
        """What is not a size is refused with a message saying what a size looks like."""
        for text in ("", "lots", "-1M", "1.5G", "10X", "M"):
            with self.assertRaises(ValueError) as caught:
                parse_size(text)
            self.assertIn("expected a size such as 100M", str(caught.exception))

    def test_durations(self) -> None:
        """Durations in seconds, minutes, hours, days."""
        self.assertEqual([parse_duration(t) for t in ("90", "90s", "30m", "12h", "7d")], [90, 90, 1800, 43200, 604800])
        self.assertRaises(ValueError, parse_duration, "a week")

    def test_node_options(self) -> None:
        """The node's options: defaults 100M and 7d; a bad one is a usage error naming the option."""
        options = Options()
        options.parseOptions(["--name", "n1"])
        self.assertEqual((options["max-output"], options["output-retention"]), (100 * 1024**2, 7 * 86400.0))
        for argv, fragment in (
            (["--max-output", "big"], "--max-output: expected a size such as 100M"),
            (["--output-retention", "soon"], "--output-retention: expected a duration"),
            (["--output-retention", "0"], "--output-retention: '0': keep the output for some time"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--name", "n1", *argv])
            self.assertIn(fragment, str(caught.exception))

    def test_zero_keeps_nothing(self) -> None:
        """--max-output 0: no store at all (tails only)."""
        options = {"max-output": "0", "output-retention": "1h"}
        check_output_options(options)
        self.assertIsNone(open_store(options, self.mktemp(), "n1"))
        options = {"max-output": "1K", "output-retention": "1h"}
        check_output_options(options)
        store = open_store(options, "/state", "n1")
        assert store is not None
        self.assertEqual((store.directory, store.max_output, store.retention), ("/state/output", 1024, 3600.0))


class ExecutorTests(StoreMixin, FakeExecutorMixin, TestCase):
    """The executor writes each attempt's output into the store, and the result says how much there was."""

    def test_output_kept_and_sized(self) -> None:
        """What the child writes is in the store; the result keeps the tail and gives the sizes and the cut."""
        store = self.make_store(max_output=8)
        self.executor = self.make_executor(outputs=store, tail_bytes=4)
        d, child = self.start(task("true", shell=True))
        child.output(b"0123456789")
        self.assertEqual(store.read("job-1", "t1", 1, "stdout", 0, 100).data, b"01234567")
        child.output(b"err", fd=2)
        child.exit(0)
        result: TaskResult = self.successResultOf(d)
        self.assertEqual(result.stdout, "6789")
        self.assertEqual((result.stdout_size, result.stderr_size, result.output_cut), (10, 3, True))
        piece = store.read("job-1", "t1", 1, "stdout", 0, 1000)
        self.assertTrue(piece.ended)
        self.assertIn(b"output cut here", piece.data)
        self.assertEqual(TaskResult.from_wire(result.to_wire()), result)

    def test_no_store_still_sizes(self) -> None:
        """Without a store (--max-output 0) the result still gives the sizes; whether cut is unknown."""
        self.executor = self.make_executor()
        d, child = self.start(task("true", shell=True))
        child.output(b"abc")
        child.exit(0)
        result = self.successResultOf(d)
        self.assertEqual((result.stdout_size, result.stderr_size, result.output_cut), (3, 0, None))

    def test_not_started_ends_its_output(self) -> None:
        """A task refused before it starts leaves an ended, empty attempt (not an unknown one)."""
        store = self.make_store()
        self.executor = self.make_executor(outputs=store)
        result = self.successResultOf(self.executor.run("job-1", task(["no-such-program-anywhere"])))
        self.assertEqual((result.stdout_size, result.output_cut), (0, False))
        piece = store.read("job-1", "t1", 1, "stdout", 0, 10)
        self.assertEqual((piece.data, piece.ended), (b"", True))
