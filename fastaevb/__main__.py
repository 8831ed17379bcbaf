"""``python -m fastaevb`` / ``torchrun -m fastaevb``: the ``fastaevb`` command (train, eval, sample)."""

import sys

from fastaevb.aevb.cli import main

if __name__ == "__main__":
    sys.exit(main())
