#!/usr/bin/env python
"""Write layout-exact DeepFluoro and Ljubljana HDF5 files made from a real CT.

    python scripts/make_fixtures.py OUT_DIR                 # small (128² DeepFluoro, 96×124 Ljubljana)
    python scripts/make_fixtures.py OUT_DIR --full          # the real 1536² DeepFluoro detector
    python scripts/make_fixtures.py OUT_DIR --ct my_ct.nii.gz --specimens 1 2 3

Writes OUT_DIR/ipcai_2020_full_res_data.h5 and OUT_DIR/ljubljana.h5 (each with
a ``.truth.json`` beside it: the poses in xraypose's frame and the landmarks),
which DeepFluoroDataset / LjubljanaDataset read like the real files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--ct", help="CT to use (default: the bundled sample CT)")
    ap.add_argument("--full", action="store_true", help="full-size 1536² DeepFluoro detector")
    ap.add_argument("--detector", type=int, default=None, help="DeepFluoro detector size in pixels")
    ap.add_argument("--specimens", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--projections", type=int, default=3)
    ap.add_argument("--subjects", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-ljubljana", action="store_true")
    args = ap.parse_args(argv)

    from xraypose.datasets.fixtures import write_deepfluoro_fixture, write_ljubljana_fixture
    from xraypose.errors import InputError
    from xraypose.volume import read_volume

    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        vol = read_volume(args.ct) if args.ct else None
        detector = args.detector or (1536 if args.full else 128)
        t = time.time()
        write_deepfluoro_fixture(args.out_dir / "ipcai_2020_full_res_data.h5", volume=vol, detector=detector,
                                 specimens=tuple(args.specimens), n_projections=args.projections,
                                 principal_offset_px=(0.0, 0.0) if detector == 1536 else (3.0, -2.0),
                                 render_scale=max(1, detector // 384))
        print(f"wrote {args.out_dir / 'ipcai_2020_full_res_data.h5'} ({time.time() - t:.1f} s)")
        if not args.skip_ljubljana:
            t = time.time()
            write_ljubljana_fixture(args.out_dir / "ljubljana.h5", volume=vol, subjects=tuple(args.subjects))
            print(f"wrote {args.out_dir / 'ljubljana.h5'} ({time.time() - t:.1f} s)")
    except InputError as e:
        print(f"make_fixtures: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
