"""
Path checks shared by the blob store and the sandboxes: a relative path
that cannot climb out of its directory, a real path that stays inside one,
and a name made safe to use as one file name.

These are the rules every input name and output pattern goes through on a
worker (issue 16, "Safety"); the job model uses the same rules when it
validates a job, so a bad path is refused at submission already.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,99}")
"""Names kept as they are in a file name; every other name is encoded (see L{safe_name})."""


class PathRefused(ValueError):
    """
    A path was refused because it could leave its directory; C{str()} is one
    sentence naming the path and why (climbs out, absolute, NUL, symlink
    leading out).
    """


def check_relative(path: str, what: str) -> str:
    """
    Return C{path} normalised (C{a/./b} becomes C{a/b}) if it is a relative
    path that stays inside its directory; otherwise raise L{PathRefused}.

    Refused: an empty path (or one that normalises to C{.}), an absolute path,
    a path with a C{..} component anywhere, and a path holding a NUL
    character.  C{what} names the path in the message ("input", "output
    pattern").
    """
    if "\0" in path:
        raise PathRefused(f"{what} {path!r} is refused: it contains a NUL character.")
    if path == "":
        raise PathRefused(f"{what} path is refused: it is empty.")
    if path.startswith("/"):
        raise PathRefused(f"{what} {path!r} is refused: it is an absolute path, and only relative paths are allowed.")
    if ".." in path.split("/"):
        raise PathRefused(f"{what} {path!r} is refused: it climbs out of its directory with '..'.")
    normal = posixpath.normpath(path)
    if normal == ".":
        raise PathRefused(f"{what} {path!r} is refused: it names the directory itself, not a file.")
    return normal


def is_inside(real_path: str, real_root: str) -> bool:
    """
    Whether C{real_path} is C{real_root} or below it.  Both must already be
    real paths (C{os.path.realpath}), so that symlinks are resolved.
    """
    try:
        return os.path.commonpath([real_path, real_root]) == real_root
    except ValueError:
        return False


def safe_name(name: str) -> str:
    """
    C{name} as one safe file name, distinct for distinct names.

    A short plain name (letters, digits and C{_.:@+=-}, not starting with a
    dot) is kept as it is, so folders stay readable; any other name becomes
    C{%} and the hex of its UTF-8 bytes (C{%} never appears in a kept name),
    or C{%%} and its SHA-256 when that would be too long for a file name.
    """
    if _SAFE_NAME.fullmatch(name):
        return name
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= 100:
        return "%" + raw.hex()
    return "%%" + hashlib.sha256(raw).hexdigest()
