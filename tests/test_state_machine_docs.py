"""
docs/state-machines.rst draws what the code runs: the committed drawings are
checked against the machines' tables.
"""

from __future__ import annotations

import importlib.util
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.test_state_machines import ALL

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


class DrawingTests(SynchronousTestCase):
    """docs/state-machines.rst draws what the code runs."""

    def test_committed_drawings_match(self) -> None:
        """Every committed .dot file is what its machine's C{to_dot} renders now (run docs/make_state_machines.py)."""
        spec = importlib.util.spec_from_file_location(
            "make_state_machines", os.path.join(DOCS, "make_state_machines.py")
        )
        assert spec is not None and spec.loader is not None
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        drawn = script.machines()
        self.assertEqual(sorted(drawn.values(), key=id), sorted(ALL, key=id))
        with open(os.path.join(DOCS, "state-machines.rst"), encoding="utf-8") as f:
            page = f.read()
        for name, table in drawn.items():
            with open(os.path.join(DOCS, "state-machines", f"{name}.dot"), encoding="utf-8") as f:
                self.assertEqual(f.read(), table.to_dot(), f"docs/state-machines/{name}.dot is out of date")
            self.assertIn(f"state-machines/{name}.", page)
