"""
Tests for L{p2pexec.cli.sources} and L{p2pexec.cli.replacements}: GNU
parallel's input sources (C{:::}, C{::::}, C{:::+}, C{::::+}), how they
combine, and the replacement strings.

Where GNU parallel is installed (C{/usr/bin/parallel}), some tests check
the same inputs against it; they are skipped where it is absent.
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from p2pexec.cli import errors, replacements, runline, sources
from p2pexec.cli.sources import RunLine, Source
from tests.cli_doubles import TtyStringIO

PARALLEL = shutil.which("parallel")
"""GNU parallel, the reference, when installed."""


def parallel(*words: str, stdin: str = "") -> list[str]:
    """The lines GNU parallel prints for C{words} (skips the test where it is not installed)."""
    if PARALLEL is None:
        raise SkipTest("GNU parallel is not installed")
    done = subprocess.run(
        [PARALLEL, "--will-cite", *words],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


class SplitTests(SynchronousTestCase):
    """L{sources.split_run_line}: the command, then its sources."""

    def test_one_source(self) -> None:
        """The command ends at the first mark; a leading -- is dropped; no mark means standard input."""
        self.assertEqual(
            sources.split_run_line(["--", "echo", "{}", ":::", "a", "b"]),
            RunLine(("echo", "{}"), (Source(values=("a", "b")),)),
        )
        self.assertEqual(
            sources.split_run_line(["echo", "::::", "list.txt"]), RunLine(("echo",), (Source(file="list.txt"),))
        )
        self.assertEqual(sources.split_run_line(["echo", "::::", "-"]), RunLine(("echo",), (Source(file="-"),)))
        self.assertEqual(sources.split_run_line(["echo", "x"]), RunLine(("echo", "x")))
        self.assertEqual(sources.split_run_line(["echo", "x"]).source_count, 1)

    def test_several_sources(self) -> None:
        """Each ::: is a source, each file after :::: is one; a + links; the first source is never linked."""
        line = sources.split_run_line(
            ["echo", ":::+", "a", "b", ":::", "1", ":::+", "x", "::::", "f", "g", "::::+", "h", "i"]
        )
        self.assertEqual(
            line.sources,
            (
                Source(values=("a", "b")),
                Source(values=("1",)),
                Source(values=("x",), linked=True),
                Source(file="f"),
                Source(file="g"),
                Source(file="h", linked=True),
                Source(file="i", linked=True),
            ),
        )
        self.assertEqual(line.source_count, 7)

    def test_refusals(self) -> None:
        """No command, a mark with nothing after it, or standard input twice: ValueError naming it."""
        for words, fragment in [
            (["--"], "give the command"),
            ([":::", "a"], "give the command"),
            (["echo", ":::"], "no arguments after :::"),
            (["echo", ":::", "a", ":::+"], "no arguments after :::+"),
            (["echo", "::::"], "no file (- for standard input) after ::::"),
            (["echo", "::::", "-", ":::", "a", "::::", "-"], "standard input"),
        ]:
            with self.assertRaises(ValueError) as raised:
                sources.split_run_line(words)
            self.assertIn(fragment, str(raised.exception), words)


class ReadTests(SynchronousTestCase):
    """L{sources.run_arguments}: the values of each source, combined."""

    def test_lines(self) -> None:
        """One value per line, line endings removed, blank lines skipped, spaces kept."""
        self.assertEqual(sources.read_argument_lines(io.StringIO("a\r\n\n  \n b c \nlast")), ["a", " b c ", "last"])

    def test_files_and_stdin(self) -> None:
        """:::: FILE reads the file; :::: - and no source read standard input; given values are kept."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("x1\nx2\n")
        line = sources.split_run_line(["echo", "::::", path, "::::", "-", ":::", "a"])
        self.assertEqual(
            sources.run_arguments(line, io.StringIO("s1\ns2\n")),
            [("x1", "s1", "a"), ("x1", "s2", "a"), ("x2", "s1", "a"), ("x2", "s2", "a")],
        )
        self.assertEqual(sources.run_arguments(RunLine(("echo",)), io.StringIO("t\n")), [("t",)])

    def test_refusals(self) -> None:
        """A missing file, an empty source, or arguments expected from a terminal: one-line errors."""
        missing = self.mktemp()
        with self.assertRaises(errors.CliError) as raised:
            sources.run_arguments(RunLine(("echo",), (Source(file=missing),)), io.StringIO())
        self.assertEqual(raised.exception.message, f"run: cannot read {missing}: No such file or directory")
        with self.assertRaises(errors.CliError) as raised:
            sources.run_arguments(RunLine(("echo",), (Source(file="-"),)), io.StringIO("\n\n"))
        self.assertIn("no arguments in standard input", raised.exception.message)
        with self.assertRaises(errors.CliError) as raised:
            sources.run_arguments(RunLine(("echo",)), TtyStringIO())
        self.assertIn("pipe them in", raised.exception.message)
        stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8")
        with self.assertRaises(errors.CliError) as raised:
            sources.run_arguments(RunLine(("echo",), (Source(file="-"),)), stdin)
        self.assertIn("run: cannot read standard input", raised.exception.message)


def reference_combine(values: Sequence[Sequence[str]], linked: Sequence[bool]) -> list[tuple[str, ...]]:
    """The combinations as GNU parallel's manual describes them, written another way (index arithmetic)."""
    groups: list[list[int]] = []  # the sources of each group
    for index, link in enumerate(linked):
        if link and groups:
            groups[-1].append(index)
        else:
            groups.append([index])
    lengths = [min(len(values[i]) for i in group) for group in groups]
    rows = []
    for picks in itertools.product(*(range(length) for length in lengths)):
        row: list[str] = []
        for group, pick in zip(groups, picks):
            row.extend(values[i][pick] for i in group)
        rows.append(tuple(row))
    return rows


_VALUE = st.text(alphabet="abcxyz0189", min_size=1, max_size=3)
_SOURCES = st.lists(st.tuples(st.lists(_VALUE, min_size=1, max_size=4), st.booleans()), min_size=1, max_size=4)


class CombineTests(SynchronousTestCase):
    """L{sources.combine}: every combination, linked sources paired off."""

    def test_product_first_source_slowest(self) -> None:
        """Two sources: every pair, the first source varying slowest."""
        self.assertEqual(
            sources.combine([["a", "b"], ["1", "2"]], [False, False]), [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
        )

    def test_linked_shortest(self) -> None:
        """A linked source pairs off with the one before, as many as the shorter has, then combines."""
        self.assertEqual(sources.combine([["a", "b", "c"], ["1", "2"]], [False, True]), [("a", "1"), ("b", "2")])
        self.assertEqual(
            sources.combine([["a", "b"], ["1", "2"], ["x", "y", "z"]], [False, False, True]),
            [("a", "1", "x"), ("a", "2", "y"), ("b", "1", "x"), ("b", "2", "y")],
        )

    @settings(deadline=None)
    @given(_SOURCES)
    def test_matches_the_reference(self, given_sources: list[tuple[list[str], bool]]) -> None:
        """Any sources and links combine as the reference does."""
        values = [these for these, _ in given_sources]
        linked = [False] + [link for _, link in given_sources[1:]]
        self.assertEqual(sources.combine(values, linked), reference_combine(values, linked))

    @settings(max_examples=12, deadline=None)
    @given(_SOURCES)
    def test_matches_gnu_parallel(self, given_sources: list[tuple[list[str], bool]]) -> None:
        """Any sources and links give the lines GNU parallel gives, in its order (-k)."""
        words = ["-k", "echo"]
        for index, (these, link) in enumerate(given_sources):
            words += [":::+" if link and index else ":::", *these]
        line = sources.split_run_line(words[1:])
        expected = [" ".join(row) for row in sources.run_arguments(line, io.StringIO())]
        self.assertEqual(parallel(*words), expected)

    def test_files_linked_as_gnu_parallel_links_them(self) -> None:
        """::::+ FILE FILE links every file after it; checked against GNU parallel."""
        one, two = self.mktemp(), self.mktemp()
        with open(one, "w") as f:
            f.write("1\n2\n")
        with open(two, "w") as f:
            f.write("x\ny\nz\n")
        line = sources.split_run_line(["echo", ":::", "a", "b", "::::+", one, two])
        ours = [" ".join(row) for row in sources.run_arguments(line, io.StringIO())]
        self.assertEqual(ours, ["a 1 x", "b 2 y"])
        self.assertEqual(parallel("-k", "echo", ":::", "a", "b", "::::+", one, two), ours)


TRICKY_NAMES = ["y", "a.b/c", ".bashrc", "dir/", "/x", "a/.b.c", "/", "a.", "//a//b//", "a//", "x.tar.gz", "d i r/f.c"]
"""Names whose {.} {/} {//} {/.} are easy to get wrong."""


class ReplacementTests(SynchronousTestCase):
    """L{replacements}: the replacement strings."""

    def test_modifiers(self) -> None:
        """{.} {/} {//} {/.} of a few names, as GNU parallel 20221122 gives them."""
        cases = {
            "dir/x.tar.gz": ("dir/x.tar", "x.tar.gz", "dir", "x.tar"),
            ".bashrc": ("", ".bashrc", ".", ""),
            "dir/": ("dir/", "", ".", ""),
            "/": ("/", "", "/", ""),
            "/x": ("/x", "x", "/", "x"),
            "a.": ("a", "a.", ".", "a"),
            "": ("", "", ".", ""),
            "//a//b//": ("//a//b//", "", "//a", ""),
        }
        for name, expected in cases.items():
            got = tuple(replacements.MODIFIERS[how](name) for how in (".", "/", "//", "/."))
            self.assertEqual(got, expected, name)

    def test_modifiers_match_gnu_parallel(self) -> None:
        """{.} {/} {//} {/.} of tricky names: the same as GNU parallel's."""
        expected = parallel("-k", "printf '[%s]' {.} {/} {//} {/.}; echo", ":::", *TRICKY_NAMES)
        ours = [
            "".join(f"[{replacements.MODIFIERS[how](name)}]" for how in (".", "/", "//", "/.")) for name in TRICKY_NAMES
        ]
        self.assertEqual(expected, ours)

    @settings(deadline=None)
    @given(st.text(alphabet="ab./", max_size=8))
    def test_modifier_shapes(self, name: str) -> None:
        """{/} holds no slash; {.} is a prefix; {//} is never empty; {/.} is a prefix of {/}."""
        self.assertNotIn("/", replacements.base_name(name))
        self.assertTrue(name.startswith(replacements.without_extension(name)))
        self.assertNotEqual(replacements.dir_name(name), "")
        self.assertTrue(replacements.base_name(name).startswith(replacements.base_without_extension(name)))

    def test_argv(self) -> None:
        """Without a shell: a word that is one {} becomes a word per value; inside a word values join with a space."""
        self.assertEqual(
            replacements.expand_argv(["echo", "{}", "x{}y", "{#}", "{2/.}", "{1//}"], ("a/b.c", "d/e.f"), 3),
            ["echo", "a/b.c", "d/e.f", "xa/b.c d/e.fy", "3", "e", "a"],
        )
        self.assertEqual(replacements.expand_argv(["gzip", "-k"], ("a", "b"), 1), ["gzip", "-k", "a", "b"])
        self.assertEqual(replacements.expand_argv(["echo", "{#}"], ("a",), 7), ["echo", "7"], "{#} is a replacement")
        self.assertEqual(
            replacements.expand_argv(["awk", "{print $1}", "{%}", "{x}"], ("f",), 1),
            ["awk", "{print $1}", "{%}", "{x}", "f"],
        )

    def test_shell(self) -> None:
        """With a shell: the words make one line, each value shell-quoted; appended when no string is given."""
        self.assertEqual(replacements.expand_shell(["wc -l < {}"], ("my file",), 1), "wc -l < 'my file'")
        self.assertEqual(replacements.expand_shell(["echo", "$HOME"], ("it's",), 1), "echo $HOME 'it'\"'\"'s'")
        self.assertEqual(replacements.expand_shell(["echo {2} {} {#}"], ("a b", "c"), 2), "echo c 'a b' c 2")

    def test_shell_lines_run_as_gnu_parallel_runs_them(self) -> None:
        """Shell commands with every replacement string print what GNU parallel's print, in order."""
        command = "echo {#}: {} / {1.} {2/} {2//} {2/.} {.}"
        values = [["a b", "it's", "x.y"], ["/p/q.c", "r"]]
        arguments = sources.combine(values, [False, False])
        ours = []
        for sequence, row in enumerate(arguments, start=1):
            line = replacements.expand_shell([command], row, sequence)
            ours.append(subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True).stdout.rstrip("\n"))
        self.assertEqual(parallel("-k", command, ":::", *values[0], ":::", *values[1]), ours)

    def test_positions_checked(self) -> None:
        """{3} with two sources, or {0}, is refused in one line naming it; {2} is fine."""
        replacements.check_positions(["echo", "{2}", "{1.}"], 2)
        for command, sources_given, fragment in [
            (["echo", "x{3}"], 2, "run: {3} names input source 3, but there are 2 input sources (numbered from 1)"),
            (["echo", "{0/}"], 1, "run: {0/} names input source 0, but there is 1 input source (numbered from 1)"),
        ]:
            with self.assertRaises(errors.CliError) as raised:
                replacements.check_positions(command, sources_given)
            self.assertEqual(raised.exception.message, fragment)
            self.assertEqual(raised.exception.status, errors.EXIT_USAGE)

    def test_run_tasks_checks_positions(self) -> None:
        """run's tasks are refused, before any is made, for a {3} with two sources."""
        with self.assertRaises(errors.CliError) as raised:
            runline.run_tasks(["echo", "{3}"], [("a", "b")], "sh")
        self.assertIn("{3} names input source 3", raised.exception.message)
