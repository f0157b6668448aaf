"""``python -m xraypose.cli …`` (as ``torchrun … -m xraypose.cli -- evaluate …`` runs it): :func:`xraypose.cli.main`."""

import sys

from xraypose.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
