"""``python -m xraypose.cli …``: :func:`~xraypose.cli.main`.

``torchrun --nproc_per_node 2 -m xraypose.cli -- evaluate …`` runs it so.
"""

import sys

from xraypose.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
