"""`python -m auditing ...` runs the `evennia-audit` command line (see auditing.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
