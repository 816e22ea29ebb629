"""
Reading a TOML job file (C{--job FILE}); the format is in C{docs/jobs.rst}.

A job file has an optional C{[defaults]} table, whose fields apply to every
task that does not set them, and a C{[[task]]} list::

    [defaults]
    kind = "sh"
    timeout = 30

    [[task]]
    id = "hello"
    command = ["echo", "hello"]

Every mistake is reported as a L{JobFileError} naming the file, the task and
the field at fault.
"""

from __future__ import annotations

import json
from typing import Any

from p2pexec import dependencies
from p2pexec.commands import MAX_VALUE_BYTES
from p2pexec.fairshare import parse_priority
from p2pexec.model import TaskSpec, ValidationError

MAX_TASKS = 1_000_000
"""A job holds at most this many tasks."""

MAX_TASK_BYTES = MAX_VALUE_BYTES // 2
"""A single task's wire form must stay under this size."""

_DEFAULTABLE = (
    "kind",
    "command",
    "shell",
    "cwd",
    "env",
    "timeout",
    "retries",
    "node",
    "all_nodes",
    "cpus",
    "memory",
    "gpus",
    "resources",
    "speculative",
)


class JobFileError(ValueError):
    """A job file cannot be used; the message says where and why."""


def load_job_file(path: str) -> list[TaskSpec]:
    """
    Read and validate the job file at C{path}.

    @raise JobFileError: naming the file, and the task and field at fault.
    """
    import tomllib  # only a node or client given a job file pays for the TOML parser

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise JobFileError(f"job file {path}: cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobFileError(
            f"job file {path}: not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); TOML files are UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"job file {path}: not valid TOML: {e}") from None
    except RecursionError:
        raise JobFileError(f"job file {path}: its arrays or tables are nested too deeply") from None
    return parse_job(data, path)


def parse_job(data: dict[str, Any], source: str = "<job>", label: str | None = None) -> list[TaskSpec]:
    """
    Validate a decoded job document (from TOML, or JSON).

    @param label: how errors name the document; by default C{job file SOURCE}.
    @raise JobFileError: naming the document, and the task and field at fault.
    """
    where = label if label is not None else f"job file {source}"
    unknown = set(data) - {"defaults", "task", "job"}
    if unknown:
        raise JobFileError(
            f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))} (expected [defaults] and [[task]])"
        )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise JobFileError(f"{where}: [defaults] must be a table")
    bad_defaults = set(defaults) - set(_DEFAULTABLE)
    if bad_defaults:
        raise JobFileError(
            f"{where}: [defaults] has unknown field(s) {', '.join(sorted(bad_defaults))}; "
            f"allowed: {', '.join(_DEFAULTABLE)}"
        )
    tasks = data.get("task")
    if not tasks:
        raise JobFileError(f"{where}: no [[task]] entries")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise JobFileError(f"{where}: 'task' must be a list of [[task]] tables")
    if len(tasks) > MAX_TASKS:
        raise JobFileError(f"{where}: {len(tasks)} tasks is over the limit of {MAX_TASKS}")
    specs: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(tasks, start=1):
        at = f"{where}: task #{number}"
        if "id" in raw:
            at += f" ({raw['id']!r})"
        fields = dict(raw)
        if "env" in defaults and not isinstance(defaults["env"], dict):
            raise JobFileError(f"{at}: [defaults] 'env' must be a table of strings")
        for key, value in defaults.items():
            if key == "env" and isinstance(value, dict) and isinstance(fields.get("env"), dict):
                fields["env"] = {**value, **fields["env"]}
            else:
                fields.setdefault(key, value)
        try:
            spec = TaskSpec.from_wire(fields)
        except ValidationError as e:
            detail = str(e)
            prefix = f"task {fields.get('id')!r}: "
            if detail.startswith(prefix):
                detail = detail[len(prefix) :]
            raise JobFileError(f"{at}: {detail}") from None
        if spec.id in seen:
            raise JobFileError(f"{at}: id {spec.id!r} is already used by task #{seen[spec.id]}")
        seen[spec.id] = number
        try:
            size = len(json.dumps(spec.to_wire(), ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:
            # A lone surrogate: what Python makes of bytes that are not UTF-8 in
            # a command line, a file name or an environment.
            raise JobFileError(f"{at}: holds text that is not valid UTF-8") from None
        if size > MAX_TASK_BYTES:
            raise JobFileError(f"{at}: the task is {size} bytes, over the {MAX_TASK_BYTES}-byte limit")
        specs.append(spec)
    try:
        dependencies.check(specs)
        job_priority(data, where)
    except ValidationError as e:
        raise JobFileError(f"{where}: {e}") from None
    return specs


def job_priority(data: dict[str, Any], where: str = "job") -> int:
    """
    The priority a job document's C{[job]} table sets (0 without one).

    @raise ValidationError: for a C{[job]} that is not a table, or a bad priority.
    """
    table = data.get("job", {})
    if not isinstance(table, dict):
        raise ValidationError("[job] must be a table")
    return parse_priority(table.get("priority"), "[job]")


def load_job_priority(path: str) -> int:
    """The priority set in the job file at C{path} (read after L{load_job_file} accepted it)."""
    import tomllib

    with open(path, "rb") as f:
        return job_priority(tomllib.load(f), f"job file {path}")
