"""
The rules for the file names a task's inputs and outputs travel under
(issue 16): a name is a relative path that stays inside its directory.

Pure functions, no I/O.  The worker's sandbox (L{p2pexec.sandbox}) applies
the same rules where the files land; these are the checks a value from
outside (a job file, the wire) gets on the way in.
"""

from __future__ import annotations

import posixpath

from p2pexec.wire_values import ValidationError, shorten


def check_relative(path: str, what: str) -> str:
    """
    C{path} normalised (C{a/./b//c} is C{a/b/c}), if it is a relative path
    that stays inside its directory.

    @param what: how the error names it (C{"task 't1': input name"}).
    @raise ValidationError: for an empty path, an absolute one, one with a
        C{..} component or a NUL character, or one that names the directory
        itself (C{.}), saying which.
    """
    if not isinstance(path, str) or path == "":
        raise ValidationError(f"{what} must be a non-empty relative path, not {path!r}")
    shown = shorten(repr(path), 200)
    if "\0" in path:
        raise ValidationError(f"{what} {shown} contains a NUL character")
    if path.startswith("/"):
        raise ValidationError(f"{what} {shown} is an absolute path; it must be relative to the task's directory")
    if ".." in path.split("/"):
        raise ValidationError(f"{what} {shown} climbs out of its directory (a '..' component)")
    normal = posixpath.normpath(path)
    if normal == ".":
        raise ValidationError(f"{what} {shown} names the directory itself, not a file in it")
    return normal


def input_name(submitted: str) -> str:
    """
    Where an input submitted as the local path C{submitted} lands in the
    task's directory: a relative path without C{..} keeps its relative
    path (C{data/a.csv}); an absolute one, or one with C{..}, lands as its
    base name (C{/srv/model.bin} as C{model.bin}).
    """
    if submitted.startswith("/") or ".." in submitted.split("/"):
        return posixpath.basename(posixpath.normpath(submitted))
    return posixpath.normpath(submitted)
