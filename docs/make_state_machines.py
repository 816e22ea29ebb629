"""
Draw p2pexec's state machines from the code: write
docs/state-machines/<name>.dot from each table's C{to_dot()}, and, with
C{--svg} and graphviz's C{dot} installed, render <name>.svg beside it.

Run from the checkout root after changing a machine:

    python docs/make_state_machines.py --svg

tests/test_state_machines.py checks that the committed .dot files are what
the code draws, so a drawing cannot drift from its machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "state-machines")


def machines() -> dict[str, Any]:
    """File name (without extension) to transition table, in the order the docs show them."""
    sys.path.insert(0, os.path.dirname(HERE))
    from p2pexec.attempt_states import ATTEMPT
    from p2pexec.connection_states import ACCEPTED, DIALLED
    from p2pexec.link_states import LINK
    from p2pexec.task_states import KIND, TASK

    return {
        "accepted-connection": ACCEPTED,
        "dialled-connection": DIALLED,
        "link": LINK,
        "attempt": ATTEMPT,
        "task": TASK,
        "kind": KIND,
    }


def main(argv: list[str]) -> int:
    """Write the .dot files (and the .svg files with C{--svg})."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svg", action="store_true", help="also render SVG with graphviz's dot")
    options = parser.parse_args(argv)
    dot = shutil.which("dot")
    if options.svg and dot is None:
        print("graphviz's dot is not installed: writing the .dot files only", file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    for name, table in machines().items():
        path = os.path.join(OUT, f"{name}.dot")
        with open(path, "w", encoding="utf-8") as f:
            f.write(table.to_dot())
        print(f"wrote {os.path.relpath(path)}")
        if options.svg and dot is not None:
            svg = os.path.join(OUT, f"{name}.svg")
            subprocess.run([dot, "-Tsvg", path, "-o", svg], check=True)
            print(f"wrote {os.path.relpath(svg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
