"""``python -m fedloom``: the same as the ``fedloom`` command."""

import sys

from fedloom.cli import main

sys.exit(main())
