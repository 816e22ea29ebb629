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

A task's C{inputs} name local files, relative to the job file's folder
(L{resolve_inputs}): each is hashed (SHA-256, read in pieces) as the file
is loaded, and sent with the job (L{p2pexec.client.uploads}).

Every mistake is reported as a L{JobFileError} naming the file, the task and
the field at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import attr

from p2pexec import dependencies
from p2pexec.commands import MAX_VALUE_BYTES
from p2pexec.fairshare import parse_priority
from p2pexec.filenames import input_name
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
    "inputs",
    "outputs",
)

HASH_PIECE = 1 << 20
"""An input is hashed reading this many bytes at a time (its size does not matter to memory)."""

Hashes = dict[str, tuple[str, int]]
"""The SHA-256 and size of each local file hashed so far, by absolute path."""


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
    return parse_job(data, path, base=os.path.dirname(os.path.abspath(path)))


def hash_file(path: str) -> tuple[str, int]:
    """
    The SHA-256 (hex) and size of the file at C{path}, read in pieces of
    L{HASH_PIECE} bytes.

    @raise OSError: if it cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(HASH_PIECE):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


def resolve_inputs(value: Any, base: str, hashes: Hashes) -> tuple[list[Any], list[str | None]]:
    """
    A task's C{inputs} as a job file gives them, local paths (relative to
    C{base}, or absolute) or tables C{{path = "...", as = "NAME"}}, made
    into their wire form (L{p2pexec.model.InputFile}: name, SHA-256, size),
    with the absolute path of each; anything else is left for the task's
    checks (an entry already in wire form has no path).

    @param hashes: the files already hashed, by absolute path; updated.
    @raise ValidationError: for a table with unknown fields, or a file that
        cannot be read, naming it.
    """
    if not isinstance(value, list):
        return value, []
    wire: list[Any] = []
    sources: list[str | None] = []
    for number, entry in enumerate(value, start=1):
        given, name = entry, None
        if isinstance(entry, dict) and "path" in entry:
            unknown = entry.keys() - {"path", "as"}
            if unknown:
                raise ValidationError(
                    f"input #{number}: unknown field(s) {', '.join(sorted(unknown))} (expected path, as)"
                )
            given, name = entry["path"], entry.get("as")
            if not isinstance(given, str) or not (name is None or isinstance(name, str)):
                raise ValidationError(f"input #{number}: 'path' and 'as' must be strings")
        if not isinstance(given, str):
            wire.append(entry)
            sources.append(None)
            continue
        if given == "" or "\0" in given:
            raise ValidationError(f"input #{number}: {given!r} is not a file name")
        path = os.path.normpath(os.path.join(base, os.path.expanduser(given)))
        if path not in hashes:
            try:
                hashes[path] = hash_file(path)
            except OSError as e:
                raise ValidationError(f"input {given!r}: cannot be read: {e.strerror or e} ({path})") from None
        sha256, size = hashes[path]
        wire.append({"name": input_name(given) if name is None else name, "sha256": sha256, "size": size})
        sources.append(path)
    return wire, sources


def parse_job(
    data: dict[str, Any], source: str = "<job>", label: str | None = None, base: str | None = None
) -> list[TaskSpec]:
    """
    Validate a decoded job document (from TOML, or JSON).

    @param label: how errors name the document; by default C{job file SOURCE}.
    @param base: on the submitting side, the folder a task's C{inputs} are
        relative to: they name local files, hashed here (L{resolve_inputs});
        C{None} (a node taking a job) if they come in wire form.
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
    hashes: Hashes = {}
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
            sources: list[str | None] = []
            if base is not None and "inputs" in fields:
                fields["inputs"], sources = resolve_inputs(fields["inputs"], base, hashes)
            spec = TaskSpec.from_wire(fields)
            if any(sources):
                located = (attr.evolve(each, source=path) for each, path in zip(spec.inputs, sources))
                spec = attr.evolve(spec, inputs=tuple(located))
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
