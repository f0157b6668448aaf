"""How much of the radius's pose one view of the wrist fixes, from the projection's geometry alone (issue 14, item 4).

For each frame's joint result (``scripts/wrist_register.py``'s JSON) and each camera: the radius's bone voxels
(above half the volume's maximum, 4000 drawn at random) projected with the camera's calibration, and the
Jacobian ``J`` (2N × 6) of their pixel positions with respect to the bone's pose in the camera's axes —
translation across the beam (x, y) and along it (z), mm, and rotation about the bone's centre about the same
axes, radians.  With every point's position known to the same precision, the pose's covariance is
proportional to ``(JᵀJ)⁻¹``; its square roots give, per view:

* ``depth_ratio``: the standard deviation along the beam over the one across it (x), the other five
  parameters free — how many times less precisely one view places the bone in depth than across;
* ``tilt_ratio``: the same for a rotation about an axis across the beam (mean of x and y) over the one
  about the beam;
* the plain sensitivities: mean pixel motion for 1 mm across / along the beam and 1° about it / across it
  (``--size``'s pixels).

A geometric argument, not a noise model: it says how a view's in-plane precision carries into depth, e.g. a
view that places the radius to 0.3 mm across its beam and has a depth ratio of 20 places it to ~6 mm in depth.

    python scripts/wrist_depth.py benchmarks/results/wrist/radius.json [--json OUT]
    python scripts/wrist_depth.py --reference pelvis abdomen   # the same for the simulated benchmarks' views

``--reference CT…``: the benchmarks' CTs (``benchmarks/appearance.py``'s names; their bone > 300 HU) seen by a
C-arm of sdd 1020 mm, 300 mm detector, the isocenter 600 mm from the source, AP, 45° and lateral — for
comparison with the wrist's views.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

F64 = torch.float64


def view_geometry(camera, camera_to_rig: torch.Tensor, bone_to_cal: torch.Tensor, pts: torch.Tensor) -> dict:
    """Sensitivities and conditional ratios of one view (see the module's docstring).  ``pts`` (N, 3): bone
    points in the volume's world frame (mm); ``bone_to_cal`` (4, 4): volume world → calibration frame;
    ``camera_to_rig`` (4, 4): camera → calibration frame."""
    from xraypose.geometry import make_transform, so3_exp

    C = camera_to_rig.to(F64)
    axes = C[:3, :3] / C[:3, :3].norm(dim=0)  # the camera's x, y, z (beam) in the calibration frame
    centre = bone_to_cal[:3, :3] @ pts.mean(0) + bone_to_cal[:3, 3]

    def moved(p: torch.Tensor) -> torch.Tensor:  # p: (tx, ty, tz mm, rx, ry, rz rad), camera axes
        R = so3_exp(axes @ p[3:])
        return make_transform(R, centre - R @ centre + axes @ p[:3]) @ bone_to_cal

    def uv(p: torch.Tensor) -> torch.Tensor:
        return camera.project(pts, torch.linalg.inv(moved(p)) @ C)

    p0 = torch.zeros(6, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda p: uv(p).reshape(-1), p0)  # (2N, 6)
    sd = torch.linalg.inv(J.T @ J).diagonal().sqrt()
    motion = J.reshape(-1, 2, 6).norm(dim=1).mean(0)  # mean pixel motion per unit of each parameter
    return {"depth_mm": float((centre - C[:3, 3]) @ axes[:, 2]),
            "px_per_mm_across": float(motion[0]), "px_per_mm_along": float(motion[2]),
            "px_per_deg_about_beam": float(motion[5]) * math.pi / 180,
            "px_per_deg_across": float(motion[3:5].mean()) * math.pi / 180,
            "depth_ratio": float(sd[2] / sd[0]), "tilt_ratio": float(sd[3:5].mean() / sd[5])}


def reference_views(cts, n_points: int) -> int:
    """Print :func:`view_geometry` of the benchmarks' CTs in AP, 45° and lateral C-arm views (module docstring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from appearance import load_ct

    from xraypose.camera import Camera, carm_pose

    cam = Camera(sdd=1020.0, height=256, width=256, delx=300.0 / 256)
    eye = torch.eye(4, dtype=F64)
    print(f"{'CT':8s} {'view':>5s} {'depth ratio':>11s} {'tilt ratio':>10s}")
    for spec in cts:
        name, vol = load_ct(spec)
        pts = vol.voxel_to_world(torch.nonzero(vol.data > 300).to(F64))
        pts = pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))[:n_points]]
        for angle in (0, 45, 90):
            g = view_geometry(cam, carm_pose(angle, 0, 600.0, vol.get_isocenter()), eye, pts)
            print(f"{name:8s} {angle:4d}° {g['depth_ratio']:11.1f} {g['tilt_ratio']:10.1f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", help="scripts/wrist_register.py's JSON (the joint results)")
    ap.add_argument("--reference", nargs="+", default=None, metavar="CT",
                    help="instead: the benchmarks' CTs (pelvis, abdomen) in C-arm views, for comparison")
    ap.add_argument("--data", default=None, help="the autoscoper_wrist folder (default ../shared/data/autoscoper_wrist)")
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    if args.reference:
        return reference_views(args.reference, args.points)
    if not args.results:
        ap.error("give the wrist's results JSON or --reference")
    from wrist_register import above_water

    from xraypose.datasets import AutoscoperWrist

    d = json.loads(Path(args.results).read_text(encoding="utf-8"))
    ds = AutoscoperWrist(args.data, size=d["size"])
    rig = ds.rig()
    vol = above_water(ds.volume(d.get("bone", "rad")))
    idx = torch.nonzero(vol.data > 0.5 * float(vol.data.max())).to(F64)
    pts = vol.voxel_to_world(idx)
    pts = pts[torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))[:args.points]]
    rows = []
    print(f"{'frame':6s} {'view':6s} {'depth mm':>8s} {'px/mm across':>12s} {'px/mm along':>11s} "
          f"{'px/° about beam':>15s} {'px/° across':>11s} {'depth ratio':>11s} {'tilt ratio':>10s}")
    for f in d["frames"]:
        bone_to_cal = torch.linalg.inv(torch.tensor(f["joint"]["rig_to_world"], dtype=F64))
        for cam in ds.cameras:
            g = view_geometry(ds.view(f["frame"], cam).camera, rig[cam].camera_to_rig, bone_to_cal, pts)
            rows.append({"frame": f["frame"], "view": cam, **g})
            print(f"{f['frame']:6s} {cam:6s} {g['depth_mm']:8.1f} {g['px_per_mm_across']:12.3f} "
                  f"{g['px_per_mm_along']:11.4f} {g['px_per_deg_about_beam']:15.3f} {g['px_per_deg_across']:11.3f} "
                  f"{g['depth_ratio']:11.1f} {g['tilt_ratio']:10.1f}")
    if args.json:
        from xraypose.io import atomic_write_json

        atomic_write_json(args.json, {"command": " ".join([sys.executable, *sys.argv]), "results": args.results,
                                      "points": args.points, "size": d["size"], "views": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
