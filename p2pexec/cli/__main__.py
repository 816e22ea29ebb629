"""C{python -m p2pexec.cli}: the C{p2pexec} command."""

import sys

from p2pexec.cli import main

if __name__ == "__main__":
    sys.exit(main())
