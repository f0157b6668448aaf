"""Several views benchmark: biplane and two C-arm shots against one view.

For each CT and case, the true pose ``T0`` of view 0 is drawn as in ``benchmarks/appearance.py``;
view 1 is the same C-arm turned about the CT isocenter's cranio-caudal (world S) axis by an angle
drawn in ``--biplane`` (a biplane rig, default 60–110°) or ``--two-shot`` (a second shot of one C-arm,
default 20–40°).  Both X-rays are formed by an appearance family (default ``ours``: the simulator's
realistic X-rays; Poisson noise, blur, collimator), preprocessed as a user would.  The rig frame is
view 0's camera frame (``camera_to_rig_0 = I``, ``camera_to_rig_1 = T0⁻¹·T1``), so the unknown
``rig_to_world`` is ``T0``.  From a start ``--start`` (default 10°/40 mm) off ``T0`` it registers:

* ``single``: view 0 alone (``Registrar.register``),
* ``joint``: both views tied by the rig (``Registrar.register_views``),
* with ``--checked``, also as the commands run them (the confidence check, and the hypotheses when
  the verdict is not ``ok``): ``single-checked`` (``register_xray``, as ``xraypose register``) and
  ``joint-checked`` (``register_rig``, as ``xraypose register --rig``), with their verdicts,

and reports per setting and CT: success (3D mTRE < 1 mm, 20 bone fiducials in view 0) and < 2 mm,
median and p90 mTRE, median time, and the ratio single / joint of the medians.

    python benchmarks/multiview.py --json OUT.json [--ct pelvis --ct abdomen] [--cases 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.appearance import json_sets, load_ct, machine  # noqa: E402
from xraypose.camera import Camera  # noqa: E402
from xraypose.io import atomic_write_json  # noqa: E402
from xraypose.metrics import format_table, pose_errors  # noqa: E402
from xraypose.register import Registrar, RegistrationConfig  # noqa: E402

F64 = torch.float64


def turn_about_axis(T: torch.Tensor, iso: torch.Tensor, deg: float) -> torch.Tensor:
    """``T`` (4, 4) turned by ``deg`` about the world S axis through ``iso`` (a C-arm's LAO/RAO turn)."""
    from xraypose.geometry import make_transform, so3_exp

    R = so3_exp(torch.tensor([0.0, 0.0, math.radians(deg)], dtype=F64))
    return make_transform(R, iso - R @ iso) @ T


def form(volume, camera, T, family, seed):
    from xraypose.appearance import form_xray
    from xraypose.preprocess import preprocess

    fx = form_xray(volume, camera, T, family=family, generator=torch.Generator().manual_seed(seed))
    pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
    return pre.image.to(torch.float32), pre.camera, pre.transform_pose(fx.pose).to(F64), pre.mask


class Pairs:
    """The pairs of X-rays of one CT: view 0's true pose drawn as ``benchmarks/appearance.py`` draws it
    (``detector``² pixels over 280 mm), view 1 the same C-arm turned about the isocenter
    (:func:`turn_about_axis`), both formed by an appearance family and preprocessed."""

    def __init__(self, spec, detector: int, seed: int):
        from xraypose.fiducials import bone_points
        from xraypose.register.cases import CaseMaker

        self.name, self.vol = load_ct(spec)
        self.cam = Camera(sdd=1020.0, height=detector, width=detector, delx=280.0 / detector)
        self.maker = CaseMaker(self.vol, camera=self.cam, collimator_px=max(2, detector // 32), seed=seed)
        self.iso = self.vol.get_isocenter().to(F64)
        self.points = bone_points(self.vol)
        self.seed = seed

    def case(self, i: int, family: str, angles, start, salt: int = 0) -> dict:
        """Pair ``i``: the angle between the views drawn in ``angles`` (lo, hi) degrees (sign
        alternating with ``i``), a start ``start`` (deg, mm) off view 0's truth; ``salt`` separates
        the draws of settings.  Keys: img0/cam0/P0/m0 and img1/cam1/P1/m1 (image (H, W), camera,
        true camera_to_world, preprocessing mask), C1 (view 1's camera_to_rig; the rig is view 0's
        camera), angle_deg, fid (20 bone fiducials seen by view 0), start (4, 4)."""
        from xraypose.fiducials import select_fiducials
        from xraypose.register.cases import perturb_pose

        (lo, hi), seed = angles, self.seed
        T0, _ = self.maker.true_pose(i)
        g = torch.Generator().manual_seed(seed * 7919 + i * 31 + salt)
        ang = (lo + (hi - lo) * float(torch.rand((), generator=g, dtype=F64))) * (1 if i % 2 else -1)
        T1 = turn_about_axis(T0, self.iso, ang)
        c = dict(zip(("img0", "cam0", "P0", "m0"), form(self.vol, self.cam, T0, family, seed * 1000 + i)))
        c.update(zip(("img1", "cam1", "P1", "m1"), form(self.vol, self.cam, T1, family, seed * 1000 + i + 500)))
        c["C1"] = torch.linalg.inv(c["P0"]) @ c["P1"]
        c["angle_deg"] = ang
        c["fid"] = select_fiducials(self.points, n=20, seed=seed + i, camera=c["cam0"], poses=c["P0"], margin_px=4)
        c["start"] = perturb_pose(c["P0"], self.iso, start[0], start[1], g)[0]
        return c


def run_ct(spec, args, log) -> list[dict]:
    pairs = Pairs(spec, args.detector, args.seed)
    name, vol = pairs.name, pairs.vol
    reg = Registrar(vol, RegistrationConfig(**{"drr_blur": 1.0, **json_sets(args.set)}))
    rows = []
    settings = {"biplane": args.biplane, "two-shot": args.two_shot}
    a_deg, t_mm = (float(x) for x in args.start.split(","))
    for setting, angles in settings.items():
        for i in range(args.cases):
            c = pairs.case(i, args.family, angles, (a_deg, t_mm), salt=0 if setting == "biplane" else 17)
            img0, cam0, P0, m0, img1, cam1, m1, C1, fid, start, ang = (
                c[k] for k in ("img0", "cam0", "P0", "m0", "img1", "cam1", "m1", "C1", "fid", "start", "angle_deg"))
            modes = args.modes or (("single", "joint") + (("single-checked", "joint-checked") if args.checked else ()))
            for mode in modes:
                t0 = time.perf_counter()
                verdict = kept = None
                if mode.endswith("-checked"):
                    pose, verdict, kept = checked(vol, reg, mode, img0, cam0, m0, img1, cam1, m1, C1, start)
                    res = None
                elif mode == "single":
                    res = reg.register(img0[None, None], cam0, start[None],
                                       masks=None if m0 is None else m0[None, None])
                else:
                    res = reg.register_views([(img0[None, None], cam0, None, None if m0 is None else m0[None, None]),
                                              (img1[None, None], cam1, C1, None if m1 is None else m1[None, None])],
                                             start[None])
                dt = time.perf_counter() - t0
                e = float(pose_errors(pose[None] if res is None else res.poses, P0, fid, cam0)["mtre"][0])
                status = res.status[0] if res is not None else verdict
                rows.append({"ct": name, "setting": setting, "mode": mode, "case": i, "angle_deg": ang,
                             "mtre": e, "status": status, "seconds": dt, "verdict": verdict, "kept": kept})
                log(f"  {name}/{setting}/{mode} case {i}: views {ang:+.0f} deg apart, mTRE {e:.3f} mm, {dt:.1f} s, "
                    f"{status}{'' if kept in (None, 'given start') else ' (kept ' + kept + ')'}")
    return rows


def checked(vol, reg, mode, img0, cam0, m0, img1, cam1, m1, C1, start):
    """(pose of view 0 (4, 4), verdict, start kept) registered as the commands do: checked, with hypotheses."""
    from xraypose.register.api import register_xray
    from xraypose.register.multiview import ViewImage, register_rig

    if mode == "single-checked":
        out = register_xray(vol, img0[None, None], cam0, start[None], registrar=reg,
                            masks=None if m0 is None else m0[None, None])[0]
        c = out.confidence or {}
        return out.camera_to_world, out.verdict, c.get("kept", "given start")
    views = [ViewImage("view0", img0, cam0, torch.eye(4, dtype=F64), mask=m0), ViewImage("view1", img1, cam1, C1, mask=m1)]
    out = register_rig(vol, views, start, registrar=reg)
    return out.rig_to_world, out.verdict, out.kept or "given start"


def summarise(rows) -> list[dict]:
    out = []
    keys = sorted({(r["ct"], r["setting"], r["mode"]) for r in rows})
    for ct, setting, mode in keys:
        g = [r for r in rows if (r["ct"], r["setting"], r["mode"]) == (ct, setting, mode)]
        e = sorted(r["mtre"] for r in g)
        out.append({"ct": ct, "setting": setting, "mode": mode, "n": len(g),
                    "success_1mm": sum(x < 1 for x in e) / len(e), "success_2mm": sum(x < 2 for x in e) / len(e),
                    "median_mm": statistics.median(e), "p90_mm": e[min(len(e) - 1, math.ceil(0.9 * len(e)) - 1)],
                    "median_s": statistics.median(r["seconds"] for r in g),
                    "verdicts": None if g[0].get("verdict") is None else
                    {v: sum(r.get("verdict") == v for r in g) for v in ("ok", "uncertain", "failed")},
                    "ok_but_2mm": sum(r.get("verdict") == "ok" and r["mtre"] >= 2 for r in g)})
    for s in out:
        single = next((x for x in out if (x["ct"], x["setting"], x["mode"]) == (s["ct"], s["setting"], "single")), None)
        s["single_over_joint"] = (single["median_mm"] / s["median_mm"]) if single and s["mode"] == "joint" else None
        if s["mode"] == "joint-checked":
            sc = next((x for x in out if (x["ct"], x["setting"], x["mode"]) == (s["ct"], s["setting"], "single-checked")),
                      None)
            s["single_over_joint"] = sc["median_mm"] / s["median_mm"] if sc else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", action="append", help="pelvis | abdomen | a CT file (default: both)")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--family", default="ours")
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--start", default="10,40", help="DEG,MM off the truth")
    ap.add_argument("--biplane", type=float, nargs=2, default=(60.0, 110.0))
    ap.add_argument("--two-shot", type=float, nargs=2, default=(20.0, 40.0))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checked", action="store_true", help="also register as the commands do (check + hypotheses)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RegistrationConfig field (JSON value), e.g. --set shift_search=null")
    ap.add_argument("--modes", nargs="+", choices=["single", "joint", "single-checked", "joint-checked"],
                    help="only these modes (default: single and joint, and the checked ones with --checked)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    report = {"machine": machine(), "args": vars(args), "rows": []}
    for spec in args.ct or ["pelvis", "abdomen"]:
        report["rows"] += run_ct(spec, args, lambda s: print(s, flush=True))
        report["summary"] = summarise(report["rows"])
        atomic_write_json(args.json, report)
    cols = ["ct", "setting", "mode", "n", "success_1mm", "success_2mm", "median_mm", "p90_mm", "median_s",
            "single_over_joint", "ok_but_2mm"]
    print(format_table(report["summary"], cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
