"""
The value types of the files that travel with a task (issue 16): its
inputs (L{InputFile}), the outputs it declares (L{OutputPattern}), and the
output files a result reports (L{OutputFile}); each with its wire form and
the checks a value from outside gets.

Nothing in this module does I/O.  L{p2pexec.model} re-exports its public
names; L{p2pexec.model.TaskSpec} and L{p2pexec.model.TaskResult} carry them.
"""

from __future__ import annotations

import re
from typing import Any

import attr

from p2pexec.filenames import check_relative
from p2pexec.wire_values import ValidationError, _require, shorten

DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest, as the wire carries it: 64 lowercase hexadecimal digits."""

MAX_INPUTS = 1_000
"""A task has at most this many inputs."""

MAX_OUTPUT_PATTERNS = 1_000
"""A task declares at most this many output patterns."""

MAX_RESULT_OUTPUTS = 1_000
"""A result reports at most this many output files."""


def _digest(value: Any, what: str) -> str:
    _require(
        isinstance(value, str) and bool(DIGEST_PATTERN.fullmatch(value)),
        f"{what}: 'sha256' must be 64 lowercase hexadecimal digits, not {shorten(repr(value), 80)}",
    )
    return str(value)


def _size(value: Any, what: str) -> int:
    _require(
        type(value) is int and value >= 0,
        f"{what}: 'size' must be a whole number of bytes, 0 or more, not {shorten(repr(value), 80)}",
    )
    return int(value)


def _object(value: Any, keys: frozenset[str], what: str, form: str) -> dict[str, Any]:
    _require(isinstance(value, dict), f"{what} must be an object {form}, not {shorten(repr(value), 80)}")
    unknown = value.keys() - keys
    _require(not unknown, f"{what}: unknown field(s) {', '.join(sorted(map(str, unknown)))} (expected {form})")
    missing = keys - value.keys() - {"optional"}
    _require(not missing, f"{what}: missing field(s) {', '.join(sorted(missing))} (expected {form})")
    return value


def _list(value: Any, limit: int, what: str, noun: str) -> list[Any]:
    _require(isinstance(value, list), f"{what} must be a list of {noun}, not {shorten(repr(value), 80)}")
    _require(len(value) <= limit, f"{what}: {len(value)} {noun} is over the limit of {limit}")
    return value


@attr.s(frozen=True, slots=True, auto_attribs=True)
class InputFile:
    """
    A file sent with a task, placed in its working directory before it runs.

    @ivar name: where it lands, relative to the task's directory.
    @ivar sha256: its content's SHA-256 (it travels and is cached by it).
    @ivar size: its size in bytes.
    @ivar source: the submitting side's local path it was read from (never
        on the wire; C{None} once it came from the wire).
    """

    name: str
    sha256: str
    size: int
    source: str | None = attr.ib(default=None, eq=False)

    _KEYS = frozenset({"name", "sha256", "size"})

    def to_wire(self) -> dict[str, Any]:
        """The wire form: C{{"name", "sha256", "size"}}."""
        return {"name": self.name, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_wire(cls, data: Any, what: str = "input") -> InputFile:
        """
        Build an L{InputFile} from its wire form.

        @raise ValidationError: naming C{what} and the field at fault.
        """
        fields = _object(data, cls._KEYS, what, '{"name", "sha256", "size"}')
        name = check_relative(fields["name"], f"{what}: name")
        where = f"{what} {name!r}"
        return cls(name=name, sha256=_digest(fields["sha256"], where), size=_size(fields["size"], where))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OutputPattern:
    """
    A glob (relative to the task's working directory) whose matching files
    are sent back once the task has run.

    @ivar glob: the pattern (C{**} matches any number of folders).
    @ivar optional: whether matching no file is fine; if not, it fails the
        attempt that succeeded.
    """

    glob: str
    optional: bool = False

    _KEYS = frozenset({"glob", "optional"})

    def to_wire(self) -> str | dict[str, Any]:
        """The wire form: the glob itself, or C{{"glob": ..., "optional": true}}."""
        return {"glob": self.glob, "optional": True} if self.optional else self.glob

    @classmethod
    def from_wire(cls, data: Any, what: str = "output") -> OutputPattern:
        """
        Build an L{OutputPattern} from its wire form.

        @raise ValidationError: naming C{what} and the field at fault.
        """
        if isinstance(data, str):
            return cls(glob=check_relative(data, f"{what}: glob"))
        fields = _object(data, cls._KEYS, what, '"GLOB" or {"glob", "optional"}')
        glob = check_relative(fields["glob"], f"{what}: glob")
        optional = fields.get("optional", False)
        _require(isinstance(optional, bool), f"{what} {glob!r}: 'optional' must be true or false, not {optional!r}")
        return cls(glob=glob, optional=optional)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OutputFile:
    """
    An output file an attempt sent back: its path relative to the task's
    working directory, its size and its SHA-256.
    """

    path: str
    size: int
    sha256: str

    _KEYS = frozenset({"path", "size", "sha256"})

    def to_wire(self) -> dict[str, Any]:
        """The wire form: C{{"path", "size", "sha256"}}."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_wire(cls, data: Any, what: str = "output file") -> OutputFile:
        """
        Build an L{OutputFile} from its wire form.

        @raise ValidationError: naming C{what} and the field at fault.
        """
        fields = _object(data, cls._KEYS, what, '{"path", "size", "sha256"}')
        path = check_relative(fields["path"], f"{what}: path")
        where = f"{what} {path!r}"
        return cls(path=path, size=_size(fields["size"], where), sha256=_digest(fields["sha256"], where))


def inputs_from_wire(value: Any, what: str) -> tuple[InputFile, ...]:
    """
    A task's C{inputs} field.

    @raise ValidationError: for a bad list or input, two inputs landing on
        the same name, or one landing inside another (C{data} and C{data/a}).
    """
    items = _list(value, MAX_INPUTS, f"{what}: 'inputs'", "inputs")
    inputs = tuple(InputFile.from_wire(item, f"{what}: input #{number}") for number, item in enumerate(items, 1))
    names = {each.name for each in inputs}
    _require(len(names) == len(inputs), f"{what}: two inputs land on the same name ({_repeated(inputs)!r})")
    for name in names:
        parts = name.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            _require(parent not in names, f"{what}: input {name!r} lands inside input {parent!r}, which is a file")
    return inputs


def _repeated(inputs: tuple[InputFile, ...]) -> str:
    seen: set[str] = set()
    for each in inputs:
        if each.name in seen:
            return each.name
        seen.add(each.name)
    return ""


def outputs_from_wire(value: Any, what: str) -> tuple[OutputPattern, ...]:
    """
    A task's C{outputs} field (the patterns it declares), without repeats.

    @raise ValidationError: for a bad list or pattern.
    """
    items = _list(value, MAX_OUTPUT_PATTERNS, f"{what}: 'outputs'", "output patterns")
    patterns = (OutputPattern.from_wire(item, f"{what}: output #{number}") for number, item in enumerate(items, 1))
    return tuple(dict.fromkeys(patterns))


def result_outputs_from_wire(value: Any, what: str) -> tuple[OutputFile, ...]:
    """
    A result's C{outputs} field (the files sent back).

    @raise ValidationError: for a bad list or file, or a path given twice.
    """
    items = _list(value, MAX_RESULT_OUTPUTS, f"{what}: 'outputs'", "output files")
    files = tuple(OutputFile.from_wire(item, f"{what}: output file #{number}") for number, item in enumerate(items, 1))
    paths = [each.path for each in files]
    if len(set(paths)) != len(paths):
        twice = next(path for number, path in enumerate(paths) if path in paths[:number])
        raise ValidationError(f"{what}: output file {twice!r} is listed twice")
    return files
