"""
GNU parallel's input sources, for C{p2pexec run}: where the arguments come
from and how several sources combine.

After the command, each C{::: A B C} is a source of the values given, and
each C{:::: FILE...} one source per file, one value a line (C{-}: standard
input).  Several sources make every combination, the first source varying
slowest, as GNU parallel does.  A source given with C{:::+} or C{::::+} is
linked to the one before it: their values are paired off (the first with
the first, ...), as many pairs as the shorter has values, and the pairs
combine with the other sources as one source would (GNU parallel 20221122
does the same).  Without any source the values come from standard input.

Pure functions, but for reading the files (L{read_values}).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TextIO

import attr

from p2pexec.cli.errors import CliError

ARGUMENTS_MARK = ":::"
"""C{::: A B C}: a source of the values given on the command line."""

FILE_MARK = "::::"
"""C{:::: FILE...}: a source per file, one value a line (C{-}: standard input)."""

LINK_SUFFIX = "+"
"""C{:::+} and C{::::+}: the source is linked to the one before it."""

MARKS = frozenset({ARGUMENTS_MARK, FILE_MARK, ARGUMENTS_MARK + LINK_SUFFIX, FILE_MARK + LINK_SUFFIX})

STDIN = "-"
"""The file name that stands for standard input."""

EXAMPLE = "p2pexec run --kind sh -- echo {} ::: a b c"


@attr.s(auto_attribs=True, frozen=True)
class Source:
    """
    One input source.

    @ivar values: the values given after C{:::}, or C{None} for a file.
    @ivar file: the file named after C{::::} (C{-}: standard input), or C{None}.
    @ivar linked: whether it is linked to the source before it (C{:::+}, C{::::+}).
    """

    values: tuple[str, ...] | None = None
    file: str | None = None
    linked: bool = False


@attr.s(auto_attribs=True, frozen=True)
class RunLine:
    """
    The tail of C{p2pexec run ...}: the command, and its input sources.

    @ivar command: the command's words, with their replacement strings.
    @ivar sources: the input sources in order; none: the values come from
        standard input.
    """

    command: tuple[str, ...]
    sources: tuple[Source, ...] = ()

    @property
    def source_count(self) -> int:
        """How many sources the values come from (standard input alone counts as one)."""
        return max(1, len(self.sources))


def split_run_line(words: Sequence[str]) -> RunLine:
    """
    Split C{CMD ... ::: A B :::: FILE ...} into the command and its sources.
    A leading C{--} is dropped.

    @raise ValueError: for a missing command, or a mark with nothing after it.
    """
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    marks = [i for i, word in enumerate(words) if word in MARKS]
    end = marks[0] if marks else len(words)
    command = tuple(words[:end])
    if not command:
        raise ValueError(f"give the command to run, as in: {EXAMPLE}")
    sources: list[Source] = []
    for at, following in zip(marks, [*marks[1:], len(words)]):
        mark = words[at]
        linked = mark.endswith(LINK_SUFFIX)
        rest = tuple(words[at + 1 : following])
        if not rest:
            what = "file (- for standard input)" if mark.startswith(FILE_MARK) else "arguments"
            raise ValueError(f"no {what} after {mark}")
        if mark.startswith(FILE_MARK):
            # Every file is a source of its own; after ::::+ every one is linked.
            sources.extend(Source(file=name, linked=linked) for name in rest)
        else:
            sources.append(Source(values=rest, linked=linked))
    if sources:
        # The first source has nothing before it to be linked to (GNU parallel ignores the +).
        sources[0] = attr.evolve(sources[0], linked=False)
    if sum(1 for source in sources if source.file == STDIN) > 1:
        raise ValueError(f"standard input ({FILE_MARK} {STDIN}) can be one source only")
    return RunLine(command, tuple(sources))


def read_argument_lines(stream: Iterable[str]) -> list[str]:
    """One value per line, without its line ending; blank lines are skipped."""
    values = []
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            values.append(line)
    return values


def _read_stdin(stdin: TextIO, told: bool) -> list[str]:
    if not told and stdin.isatty():
        raise CliError(
            f"run: give the arguments after {ARGUMENTS_MARK} or {FILE_MARK} FILE, or pipe them in, one a line"
        )
    try:
        return read_argument_lines(stdin)
    except UnicodeDecodeError as e:
        raise CliError(f"run: cannot read standard input: {e}") from None


def read_values(source: Source | None, stdin: TextIO) -> list[str]:
    """
    The values of one source: given, read from its file, or (C{None}: no
    source given) from C{stdin}.

    @raise CliError: if the file cannot be read, if there are none, or if
        they would come from a terminal without being asked for.
    """
    if source is not None and source.values is not None:
        return list(source.values)
    if source is None or source.file == STDIN:
        values = _read_stdin(stdin, told=source is not None)
        where = "standard input"
    else:
        assert source.file is not None
        try:
            with open(source.file, encoding="utf-8") as f:
                values = read_argument_lines(f)
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise CliError(f"run: cannot read {source.file}: {reason}") from None
        where = source.file
    if not values:
        raise CliError(f"run: no arguments in {where}: nothing to run")
    return values


def combine(values: Sequence[Sequence[str]], linked: Sequence[bool]) -> list[tuple[str, ...]]:
    """
    Every combination of the sources' C{values}, in GNU parallel's order:
    the first source varies slowest.  A source whose C{linked} is true is
    paired off with the one before it (as many as the shorter has).

    @return: one tuple per task, a value from each source, in source order.
    """
    groups: list[list[tuple[str, ...]]] = []
    for these, link in zip(values, linked):
        column: list[tuple[str, ...]] = [(value,) for value in these]
        if link and groups:
            groups[-1] = [before + after for before, after in zip(groups[-1], column)]
        else:
            groups.append(column)
    return [tuple(itertools.chain.from_iterable(parts)) for parts in itertools.product(*groups)]


def run_arguments(line: RunLine, stdin: TextIO) -> list[tuple[str, ...]]:
    """
    The arguments of each task of a L{RunLine}: one value from each source.

    @raise CliError: as L{read_values} does, or if the links leave nothing to run.
    """
    if not line.sources:
        return [(value,) for value in read_values(None, stdin)]
    values = [read_values(source, stdin) for source in line.sources]
    combined = combine(values, [source.linked for source in line.sources])
    if not combined:  # pragma: no cover (every source has a value, so every link leaves one)
        raise CliError("run: the input sources make no argument: nothing to run")
    return combined
