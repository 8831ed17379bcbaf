"""``python -m fastaevb.aevb``: the ``fastaevb`` command."""

import sys

from .cli import main

sys.exit(main())
