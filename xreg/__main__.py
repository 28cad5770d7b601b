"""``python -m xreg``: the same as the ``xreg`` command."""

import sys

from .cli import main

sys.exit(main())
