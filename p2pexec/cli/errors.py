"""
What the C{p2pexec} command ends with: its exit statuses, and L{CliError},
a one-line message for stderr with the status that goes with it.
"""

from __future__ import annotations

PROG = "p2pexec"
"""The command's name, at the start of every error line."""

EXIT_OK = 0
"""Every task succeeded, or the command did what it was asked."""

EXIT_FAILED = 1
"""Some task failed, timed out, could not run, was cancelled, or has no result yet."""

EXIT_USAGE = 2
"""A usage error, a bad job, an unknown job, or no (or a lost) connection."""

EXIT_INTERRUPTED = 130
"""Interrupted (SIGINT, Ctrl-C), as a shell reports it."""


class CliError(Exception):
    """
    Something the user must hear about, in one line on stderr, and the exit
    status that goes with it.
    """

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
