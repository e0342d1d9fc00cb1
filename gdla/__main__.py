"""``python -m gdla``: the same as the ``gdla`` command."""

from __future__ import annotations

import sys

from gdla.cli import main

if __name__ == "__main__":
    sys.exit(main())
