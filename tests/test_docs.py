"""
The documentation parses: every reStructuredText file of the project
(README.rst, NEWS.rst, docs/*.rst) without a docutils warning or error,
and no tracked text file holds a merge conflict marker.
"""

import glob
import io
import os
import re
import subprocess

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MARKER = re.compile(r"^(<{7}|>{7}) ", re.M)


def rst_files():
    """The project's reStructuredText files, relative to its root."""
    return [
        "README.rst",
        "NEWS.rst",
        *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.rst"))),
    ]


def problems(path):
    """docutils' warnings and errors for the file at C{path} (Sphinx's C{:doc:} role allowed)."""
    import docutils.core
    from docutils import nodes
    from docutils.parsers.rst import roles

    roles.register_generic_role("doc", nodes.emphasis)
    stream = io.StringIO()
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        docutils.core.publish_doctree(
            f.read(),
            source_path=path,
            settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5},
        )
    return [line for line in stream.getvalue().splitlines() if re.search(r"\((WARNING|ERROR|SEVERE)/\d\)", line)]


class DocsTests(SynchronousTestCase):
    """The docs a newcomer reads render as written."""

    def test_rst_files_parse(self):
        """Every .rst file parses without a docutils warning or error (a broken table, a short underline)."""
        found = {path: problems(path) for path in rst_files()}
        self.assertEqual({path: lines for path, lines in found.items() if lines}, {})

    def test_broken_table_is_reported(self):
        """The check can fail: a simple table whose text runs into a column margin is reported."""
        import docutils.core

        stream = io.StringIO()
        docutils.core.publish_doctree(
            "==  ==\na   b\nxyz  c\n==  ==\n",
            settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5},
        )
        self.assertIn("Malformed table", stream.getvalue())

    def test_no_conflict_markers(self):
        """No tracked text file holds a merge conflict marker line."""
        tracked = subprocess.run(
            ["git", "ls-files", "*.py", "*.rst", "*.toml", "*.cfg", "*.json", "*.yaml", "Makefile"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if tracked.returncode != 0:
            self.skipTest("not a git checkout")
        marked = []
        for path in tracked.stdout.split():
            with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
                if MARKER.search(f.read()):
                    marked.append(path)
        self.assertEqual(marked, [])
