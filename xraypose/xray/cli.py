"""``python -m xraypose.xray FILE [--isocenter x,y,z] [--json]``: what xraypose reads from an X-ray file."""

from __future__ import annotations

import json
import sys

from xraypose.errors import XrayposeError

__all__ = ["_main"]


def _main(argv: list[str] | None = None) -> int:
    import argparse

    from xraypose.xray.read import read_xray

    ap = argparse.ArgumentParser(prog="python -m xraypose.xray",
                                 description="Print what xraypose reads from an X-ray file (every header value used).")
    ap.add_argument("file")
    ap.add_argument("--isocenter", help="x,y,z world RAS mm (for the initial pose)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--no-require-intrinsics", action="store_true", help="read even without sdd / pixel spacing")
    args = ap.parse_args(argv)
    iso = None
    try:
        if args.isocenter:
            from xraypose.cli.options import option_numbers

            iso = option_numbers("isocenter", args.isocenter)
        xr = read_xray(args.file, isocenter=iso, require_intrinsics=not args.no_require_intrinsics)
    except XrayposeError as e:
        print(f"xraypose: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(xr.to_dict(), indent=2) if args.json else xr.report())
    return 0
