"""Offline: a tracking run's counts-refined poses pooled by the motion model, with their Fisher covariances.

``benchmarks/tracking.py --counts …`` refines every frame alone on its counts and reports them pooled with
the default motion model (what ``xraypose track --counts`` ships).  This reads such a run's JSON (every frame
refined: ``--counts-every 1``) and pools the refined poses again (:func:`~xraypose.register.counts.pool_fits`,
the smoother), each with its ``CountsFit.covariance`` (the inverse Fisher information, world-axes chart)
times ``k²``, for a few ``k`` and process noises: how much the pooled figure depends on them.  Prints the
share of frames below 1 mm and the median mTRE.

    python benchmarks/counts_pool.py RUN.json
"""

from __future__ import annotations

import json
import sys

import torch

F64 = torch.float64


def main(argv=None) -> int:
    from xraypose.camera import Camera
    from xraypose.metrics import pose_errors
    from types import SimpleNamespace

    from xraypose.register.counts import pool_fits
    from xraypose.register.motion import MotionModel

    path = (argv or sys.argv[1:])[0]
    d = json.load(open(path))
    c = d["counts"]
    fid, cam = torch.tensor(c["fiducials"], dtype=F64), Camera.from_dict(c["camera"])
    iso = torch.tensor(c["isocenter"], dtype=F64)
    rows = [r for r in d["frames"] if "counts" in r and "camera_to_world" in r["counts"]]
    Ps = [torch.tensor(r["counts"]["camera_to_world"], dtype=F64) for r in rows]
    Ts = [torch.tensor(r["counts"]["true_camera_to_world"], dtype=F64) for r in rows]

    def share(poses):
        e = torch.tensor([float(pose_errors(P, T, fid, cam)["mtre"]) for P, T in zip(poses, Ts)])
        return f"{float((e < 1).double().mean()):.0%} below 1 mm, median {float(e.median()):.2f} mm"

    print(f"{len(rows)} frames refined alone: {share(Ps)}")
    for k in (1.0, 2.0, 4.0):
        fits = [SimpleNamespace(pose=P, covariance=k * k * torch.tensor(r["counts"]["covariance"], dtype=F64))
                for P, r in zip(Ps, rows)]
        for accel in (0.3, 1.0):
            pooled = pool_fits(fits, iso, "smooth", MotionModel(accel_mm=accel, accel_deg=accel * 2 / 3))
            print(f"pooled, covariance x {k:g}^2, acceleration {accel:g} mm/frame^2: {share(pooled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
