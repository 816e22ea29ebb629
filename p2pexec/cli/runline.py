"""
The tail of C{p2pexec run}, GNU-parallel style: a command with C{{}}
placeholders, then its arguments after C{:::}, or one a line from a file
after C{::::} (C{-}: standard input), or from standard input; and the
tasks made of them, one per argument.  Pure functions, but for reading
the arguments' file.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import attr

from p2pexec.cli.errors import CliError
from p2pexec.jobfile import JobFileError, parse_job
from p2pexec.model import TASK_ID_PATTERN, TaskSpec

PLACEHOLDER = "{}"
"""What C{run} replaces with each argument."""

ARGUMENTS_MARK = ":::"
"""C{run CMD ::: A B C}: the arguments follow on the command line."""

FILE_MARK = "::::"
"""C{run CMD :::: FILE}: the arguments are the lines of FILE (C{-}: standard input)."""


@attr.s(auto_attribs=True, frozen=True)
class RunLine:
    """
    The tail of C{p2pexec run ...}: the command, and where the arguments
    come from.

    @ivar command: the command's words, with their C{{}} placeholders.
    @ivar arguments: the arguments given after C{:::}, or C{None}.
    @ivar file: the file named after C{::::} (C{-} for standard input), or C{None}.
    """

    command: tuple[str, ...]
    arguments: tuple[str, ...] | None = None
    file: str | None = None


def split_run_line(words: Sequence[str]) -> RunLine:
    """
    Split C{CMD ... ::: ARG ...} or C{CMD ... :::: FILE}.  Without either
    mark, the arguments come from standard input, as with GNU parallel.

    @raise ValueError: for a missing command, a missing file, or more than
        one source of arguments.
    """
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    marks = [i for i, word in enumerate(words) if word in (ARGUMENTS_MARK, FILE_MARK)]
    end = marks[0] if marks else len(words)
    command = tuple(words[:end])
    if not command:
        raise ValueError("give the command to run, as in: p2pexec run --kind sh -- echo {} ::: a b c")
    if len(marks) > 1:
        raise ValueError(
            f"give one source of arguments ({ARGUMENTS_MARK} ARG... or {FILE_MARK} FILE); "
            "combining several, as GNU parallel does, is not supported"
        )
    if not marks:
        return RunLine(command)
    rest = tuple(words[end + 1 :])
    if words[end] == ARGUMENTS_MARK:
        if not rest:
            raise ValueError(f"no arguments after {ARGUMENTS_MARK}")
        return RunLine(command, arguments=rest)
    if len(rest) != 1:
        raise ValueError(f"give exactly one file after {FILE_MARK} (- for standard input), not {len(rest)}")
    return RunLine(command, file=rest[0])


def read_argument_lines(stream: Iterable[str]) -> list[str]:
    """One argument per line, without its line ending; blank lines are skipped."""
    arguments = []
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            arguments.append(line)
    return arguments


def run_arguments(line: RunLine, stdin: TextIO) -> list[str]:
    """
    The arguments of a L{RunLine}: given, read from its file, or from
    C{stdin}.

    @raise CliError: if the file cannot be read, if there are none, or if
        they would come from a terminal.
    """
    if line.arguments is not None:
        return list(line.arguments)
    if line.file is None or line.file == "-":
        if line.file is None and stdin.isatty():
            raise CliError(
                f"run: give the arguments after {ARGUMENTS_MARK} or {FILE_MARK} FILE, or pipe them in, one a line"
            )
        try:
            arguments = read_argument_lines(stdin)
        except UnicodeDecodeError as e:
            raise CliError(f"run: cannot read standard input: {e}") from None
        where = "standard input"
    else:
        try:
            with open(line.file, encoding="utf-8") as f:
                arguments = read_argument_lines(f)
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise CliError(f"run: cannot read {line.file}: {reason}") from None
        where = line.file
    if not arguments:
        raise CliError(f"run: no arguments in {where}: nothing to run")
    return arguments


def task_ids(arguments: Sequence[str]) -> list[str]:
    """
    A task id for each argument: the argument itself when it is a valid task
    id not used by an earlier argument, else C{t1}, C{t2}... (numbered
    among those, skipping any id already taken).
    """
    taken: set[str] = set()
    chosen: list[str | None] = []
    for argument in arguments:
        if TASK_ID_PATTERN.fullmatch(argument) and argument not in taken:
            taken.add(argument)
            chosen.append(argument)
        else:
            chosen.append(None)
    number = 0
    ids = []
    for task_id in chosen:
        if task_id is None:
            while True:
                number += 1
                task_id = f"t{number}"
                if task_id not in taken:
                    break
            taken.add(task_id)
        ids.append(task_id)
    return ids


def expand_command(command: Sequence[str], argument: str, shell: bool = False) -> Any:
    """
    C{command} for one argument: each C{{}} replaced by it, or the argument
    appended if there is no C{{}}.

    @return: an argv list; or, with C{shell}, one shell command line (the
        words joined by spaces) with the argument shell-quoted.
    """
    if shell:
        line = " ".join(command)
        quoted = shlex.quote(argument)
        return line.replace(PLACEHOLDER, quoted) if PLACEHOLDER in line else f"{line} {quoted}"
    if any(PLACEHOLDER in word for word in command):
        return [word.replace(PLACEHOLDER, argument) for word in command]
    return [*command, argument]


def run_tasks(
    command: Sequence[str],
    arguments: Sequence[str],
    kind: str,
    shell: bool = False,
    timeout: float | None = None,
    retries: int | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    request: dict[str, Any] | None = None,
) -> list[TaskSpec]:
    """
    One task per argument, checked as a job file would be.

    @param request: the C{cpus}, C{memory}, C{gpus} and C{resources} fields of every task.

    @raise CliError: naming the task and field at fault.
    """
    defaults: dict[str, Any] = {"kind": kind}
    if shell:
        defaults["shell"] = True
    if timeout is not None:
        defaults["timeout"] = timeout
    if retries is not None:
        defaults["retries"] = retries
    if cwd is not None:
        defaults["cwd"] = cwd
    if env:
        defaults["env"] = dict(env)
    defaults.update(request or {})
    tasks = [
        {"id": task_id, "command": expand_command(command, argument, shell)}
        for task_id, argument in zip(task_ids(arguments), arguments)
    ]
    try:
        return parse_job({"defaults": defaults, "task": tasks}, label="run")
    except JobFileError as e:
        raise CliError(str(e)) from None
