"""python -m xraypose.datasets example OUT | check CASE [--out PNG_DIR] | fixtures OUT [--full]

The same as ``xraypose datasets …`` (:mod:`xraypose.cli.datasets`), which it runs:

* ``example OUT`` — write an example case folder made from the bundled CT.
* ``check CASE`` — read a case folder, print every value read (header reports), and the NCC
  between each X-ray and a DRR at its pose (ground truth, else the C-arm angles' pose).
* ``fixtures OUT`` — write layout-exact DeepFluoro and Ljubljana HDF5 files from a CT.

``--specimens`` and ``--subjects`` take comma-separated numbers (``--specimens 1,2,3``); the
space-separated form of the earlier parser (``--specimens 1 2 3``) is still read.
"""

from __future__ import annotations

import re
import sys

_LIST_OPTIONS = ("--specimens", "--subjects")


def _comma_lists(argv: list[str]) -> list[str]:
    """``--specimens 1 2 3`` (the earlier parser's form) as ``--specimens 1,2,3``; anything else unchanged."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        i += 1
        if out[-1] in _LIST_OPTIONS:
            values = []
            while i < len(argv) and re.fullmatch(r"[+-]?\d+(,[+-]?\d+)*", argv[i]):
                values.append(argv[i])
                i += 1
            if values:
                out.append(",".join(values))
    return out


def main(argv=None) -> int:
    """Run ``xraypose datasets`` with ``argv`` (default: the command line); returns the exit code."""
    from xraypose.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["datasets", *_comma_lists(argv)])


if __name__ == "__main__":
    raise SystemExit(main())
