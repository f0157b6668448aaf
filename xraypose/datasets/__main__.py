"""python -m xraypose.datasets example OUT | check CASE [--out PNG_DIR] | fixtures OUT [--full]

* ``example OUT`` — write an example case folder made from the bundled CT.
* ``check CASE`` — read a case folder, print every value read (header reports), and the NCC
  between each X-ray and a DRR at its pose (ground truth, else the C-arm angles' pose).
* ``fixtures OUT`` — write layout-exact DeepFluoro and Ljubljana HDF5 files from a CT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraypose.errors import XrayposeError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xraypose.datasets", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("example", help="write an example case folder made from the bundled CT")
    ex.add_argument("out")
    ck = sub.add_parser("check", help="read a case folder; print what was read and DRR/X-ray NCCs")
    ck.add_argument("case")
    ck.add_argument("--out", help="folder for X-ray / DRR PNGs")
    fx = sub.add_parser("fixtures", help="write layout-exact DeepFluoro and Ljubljana HDF5 files")
    fx.add_argument("out")
    fx.add_argument("--ct", help="CT to use (default: the bundled sample)")
    fx.add_argument("--full", action="store_true", help="the real 1536² DeepFluoro detector")
    fx.add_argument("--specimens", type=int, nargs="+", default=[1, 2])
    fx.add_argument("--projections", type=int, default=3)
    fx.add_argument("--subjects", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    try:
        if args.cmd == "example":
            from xraypose.datasets.case_folder import make_example_case

            print(f"wrote {make_example_case(args.out)}")
        elif args.cmd == "check":
            from xraypose.datasets.case_folder import check_case, load_case

            case = load_case(args.case, preprocess=False)
            print(f"CT: {case.volume}")
            for xr in case.xrays:
                print(xr.report())
            print(f"fiducials: {0 if case.fiducials is None else len(case.fiducials)}; "
                  f"ground-truth poses: {', '.join(case.poses) or 'none'}")
            for row in check_case(args.case, args.out):
                n = "n/a (no pose or no camera)" if row["ncc"] is None else f"{row['ncc']:.4f}"
                print(f"{row['xray']}: DRR vs X-ray NCC at the pose from {row['pose_from']}: {n}")
        else:
            from xraypose.datasets.fixtures import write_deepfluoro_fixture, write_ljubljana_fixture
            from xraypose.volume import read_volume

            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            vol = read_volume(args.ct) if args.ct else None
            det = 1536 if args.full else 128
            write_deepfluoro_fixture(out / "ipcai_2020_full_res_data.h5", volume=vol, detector=det,
                                     specimens=tuple(args.specimens), n_projections=args.projections,
                                     principal_offset_px=(0.0, 0.0) if args.full else (3.0, -2.0),
                                     render_scale=4 if args.full else 1)
            write_ljubljana_fixture(out / "ljubljana.h5", volume=vol, subjects=tuple(args.subjects))
            print(f"wrote {out / 'ipcai_2020_full_res_data.h5'} and {out / 'ljubljana.h5'}")
    except XrayposeError as e:
        print(f"xraypose: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
