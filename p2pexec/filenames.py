"""
The rules for the file names a task's inputs and outputs travel under
(issue 16), as a job's validation applies them: the path rules of
L{p2pexec.safepaths} (which the worker's sandbox applies again where the
files land), raising L{ValidationError} as every check of a job does.

Pure functions, no I/O.
"""

from __future__ import annotations

from p2pexec import safepaths
from p2pexec.sandbox import input_name as _input_name
from p2pexec.wire_values import ValidationError


def check_relative(path: str, what: str) -> str:
    """
    C{path} normalised (C{a/./b//c} is C{a/b/c}), if it is a relative path
    that stays inside its directory (L{safepaths.check_relative}).

    @param what: how the error names it (C{"task 't1': input name"}).
    @raise ValidationError: for a value that is not a string, an empty
        path, an absolute one, one with a C{..} component or a NUL
        character, or one that names the directory itself, saying which.
    """
    if not isinstance(path, str) or path == "":
        raise ValidationError(f"{what} must be a non-empty relative path, not {path!r}")
    try:
        return safepaths.check_relative(path, what)
    except safepaths.PathRefused as e:
        raise ValidationError(str(e).rstrip(".")) from None


def input_name(submitted: str) -> str:
    """
    Where an input submitted as the local path C{submitted} lands in the
    task's directory (L{p2pexec.sandbox.input_name}): a relative path
    without C{..} keeps its relative path (C{data/a.csv}); an absolute one,
    or one with C{..}, lands as its base name (C{/srv/model.bin} as
    C{model.bin}).

    @raise ValidationError: when no usable name is left (C{/}, C{..}).
    """
    try:
        return _input_name(submitted)
    except safepaths.PathRefused as e:
        raise ValidationError(str(e).rstrip(".")) from None
