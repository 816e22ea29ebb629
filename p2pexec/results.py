"""
Writing a finished job's results file (C{--results}).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_results(path: str, report: dict[str, Any]) -> None:
    """
    Write C{report} as JSON to C{path}, atomically: readers see the old file
    or the whole new one, never half of it.

    @raise OSError: if the folder cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".p2pexec-results-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, ensure_ascii=False)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
