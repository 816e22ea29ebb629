"""
What is wrong with a journal, in words: the errors that say it cannot be
used, and the diagnosis of a failed write (an errno or an SQLite result
code, and a look at the file system under it) as the cause people act on:
C{disk full}, C{read-only file system}, C{I/O error} and so on.

The journal (L{p2pexec.journal.Journal}) records the cause as its
L{JournalProblem}, which the logs, C{/healthz} and the status views show.
"""

from __future__ import annotations

import errno
import os

import attr


class JournalError(Exception):
    """The journal cannot be used; the message says why and what to do."""


class JournalWriteError(JournalError):
    """
    The journal cannot be written (a full disk, a read-only file system, an
    I/O error): the file is fine, the place it lives is not.

    @ivar reason: the cause in a few words (C{disk full}, ...).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@attr.s(auto_attribs=True, frozen=True)
class JournalProblem:
    """
    Why the journal cannot be written at the moment.

    @ivar path: the journal file.
    @ivar reason: the cause in a few words: C{disk full}, C{read-only file
        system}, C{I/O error}, C{permission denied}, C{disk quota exceeded},
        or C{cannot be written} when the error says no more.
    @ivar error: the error as the system or SQLite gave it.
    @ivar since: when the first write failed (wall clock, for people).
    """

    path: str
    reason: str
    error: str
    since: float

    def describe(self) -> str:
        """One sentence for logs, errors, /healthz and the status views."""
        return f"its journal {self.path} cannot be written: {self.reason} ({self.error})"


_ERRNO_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_REASONS = {13: "disk full", 8: "read-only", 10: "I/O error", 3: "permission denied", 14: "cannot open the file"}


def write_failure_reason(error: BaseException, folder: str | None = None) -> str | None:
    """
    Why a write failed, in a few words, if C{error} is a failure to write
    (an C{OSError}, or an SQLite error about the disk): C{None} otherwise
    (a damaged or foreign file).  SQLite reports a full disk as SQLITE_FULL
    but often as a bare I/O error; C{folder}'s file system is then looked at
    (no space left, mounted read-only) to say which.
    """
    import sqlite3

    reason: str | None = None
    if isinstance(error, OSError):
        reason = _ERRNO_REASONS.get(error.errno or 0, "cannot be written")
    elif isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        text = str(error).lower()
        if code is not None:
            reason = _SQLITE_REASONS.get(code & 0xFF)
        elif "disk is full" in text:
            reason = "disk full"
        elif "readonly" in text or "read-only" in text:
            reason = "read-only"
        elif "disk i/o error" in text:
            reason = "I/O error"
        elif "unable to open" in text:
            reason = "cannot open the file"
    if reason is None or folder is None:
        return reason
    try:
        stats = os.statvfs(folder)
    except OSError:
        return reason
    if stats.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if reason in ("I/O error", "cannot be written", "cannot open the file") and stats.f_bavail == 0:
        return "disk full"
    if reason == "read-only":
        return "read-only file"
    return reason
