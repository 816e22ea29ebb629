"""
Writing a finished job's results file (C{--results}).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Any


def _dump(report: dict[str, Any], out: Any) -> None:
    """
    The report as JSON with one task per line: readable, diffable, and fast
    (the C encoder, which C{indent} would turn off, encodes each line).
    """
    out.write("{\n")
    for key, value in report.items():
        if key != "tasks":
            out.write(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
    out.write('  "tasks": [\n')
    tasks = report.get("tasks", [])
    for number, task in enumerate(tasks):
        out.write("    " + json.dumps(task, ensure_ascii=False))
        out.write(",\n" if number < len(tasks) - 1 else "\n")
    out.write("  ]\n}\n")


def write_results(path: str, report: dict[str, Any]) -> None:
    """
    Write C{report} as JSON to C{path}, atomically: readers see the old file
    or the whole new one, never half of it.

    @raise OSError: if the folder cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".p2pexec-results-", dir=folder)
    try:
        # mkstemp makes the file 0600: give it the mode a file written in
        # place would have (the old file's, or the umask's), so that its
        # readers keep reading it.
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            _dump(report, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _mode_for(path: str) -> int:
    """The permission bits of the file at C{path}, or those a new file gets under the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
