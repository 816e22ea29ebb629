"""
TEMPORARY SHIM of part "node" (issue 16): the three value classes of the
model part (L{p2pexec.model} on the model branch), here only so that the
node part type-checks and tests alone.  The lead keeps the model branch's
classes and deletes this module when merging.
"""

from __future__ import annotations

import attr


@attr.s(frozen=True, slots=True, auto_attribs=True)
class InputFile:
    """An input file of a task: where it lands in the sandbox, its SHA-256 and size."""

    name: str
    sha256: str
    size: int
    source: str | None = attr.ib(default=None, eq=False)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OutputPattern:
    """A declared output of a task: a glob relative to its working directory, and whether it may match nothing."""

    glob: str
    optional: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OutputFile:
    """One output file a task produced: its path (relative to its working directory), size and SHA-256."""

    path: str
    size: int
    sha256: str
