"""``python -m xraypose.xray FILE``: see :mod:`xraypose.xray.cli`."""

from xraypose.xray.cli import _main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
