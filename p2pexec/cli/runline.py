"""
The tail of C{p2pexec run}, GNU-parallel style, made into tasks: a command
with replacement strings (L{p2pexec.cli.replacements}), and its arguments
from the input sources (L{p2pexec.cli.sources}); one task per combination
of arguments, with its id.  Pure functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from p2pexec.cli.errors import CliError
from p2pexec.cli.replacements import check_positions, expand_argv, expand_shell
from p2pexec.jobfile import JobFileError, parse_job
from p2pexec.model import TASK_ID_PATTERN, TaskSpec

ID_JOINER = "_"
"""Between the values of a task's arguments in its id, when there are several sources."""


def task_ids(arguments: Sequence[str | tuple[str, ...]]) -> list[str]:
    """
    A task id for each argument: the argument itself (a task's values
    joined by L{ID_JOINER}) when it is a valid task id not used by an
    earlier argument, else C{t1}, C{t2}... (numbered among those, skipping
    any id already taken).
    """
    taken: set[str] = set()
    chosen: list[str | None] = []
    for given in arguments:
        argument = given if isinstance(given, str) else ID_JOINER.join(given)
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


def expand_command(
    command: Sequence[str], arguments: str | tuple[str, ...], shell: bool = False, sequence: int = 1
) -> Any:
    """
    C{command} for one task: its replacement strings replaced (see
    L{p2pexec.cli.replacements}), or the arguments appended if it has none.

    @param arguments: the task's value from each input source (a string: one).
    @param sequence: the task's sequence number (C{{#}}), from 1.
    @return: an argv list; or, with C{shell}, one shell command line (the
        words joined by spaces) with the arguments shell-quoted.
    """
    values = (arguments,) if isinstance(arguments, str) else arguments
    if shell:
        return expand_shell(command, values, sequence)
    return expand_argv(command, values, sequence)


def run_tasks(
    command: Sequence[str],
    arguments: Sequence[str | tuple[str, ...]],
    kind: str,
    shell: bool = False,
    timeout: float | None = None,
    retries: int | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    request: dict[str, Any] | None = None,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> list[TaskSpec]:
    """
    One task per argument (a value from each input source), in order,
    checked as a job file would be.

    @param request: the C{cpus}, C{memory}, C{gpus} and C{resources} fields of every task.
    @param inputs: local files (relative to the current folder) every task
        gets in its working directory, under their base names; hashed here.
    @param outputs: the globs every task sends back.

    @raise CliError: for a replacement string naming no source, or naming
        the task and field at fault (an input that cannot be read too).
    """
    width = max((1 if isinstance(given, str) else len(given) for given in arguments), default=1)
    check_positions(command, width)
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
    if inputs:
        defaults["inputs"] = [{"path": path, "as": os.path.basename(os.path.normpath(path))} for path in inputs]
    if outputs:
        defaults["outputs"] = list(outputs)
    tasks = [
        {"id": task_id, "command": expand_command(command, argument, shell, sequence)}
        for sequence, (task_id, argument) in enumerate(zip(task_ids(arguments), arguments), start=1)
    ]
    try:
        return parse_job({"defaults": defaults, "task": tasks}, label="run", base=os.getcwd() if inputs else None)
    except JobFileError as e:
        raise CliError(str(e)) from None
