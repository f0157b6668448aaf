"""Check resolution benchmark: how far off must a pose be before the confidence check stops calling it
``ok``, and how often does it doubt a right one?

The confidence benchmark (``benchmarks/confidence.py``) judges the check on registrations' results,
which are mostly right (< 1 mm) or far off (tens of mm).  This one puts poses at known small
distances from the truth, where a user's trust is decided.  For each case (view 0's true pose
drawn as ``benchmarks/appearance.py`` draws it; view 1 the same C-arm turned about the isocenter's
cranio-caudal axis by 60–110°, a biplane pair, as ``benchmarks/multiview.py`` forms it; both X-rays
formed by an appearance family and preprocessed as a user would), every view is checked
(:func:`xraypose.register.confidence.assess`) at:

* ``truth``: the true pose; ``joint``: the two views registered together from 10°/40 mm
  (``Registrar.register_views``; skipped with ``--no-register``);
* ``across0±a``: the truth moved ``a`` mm across view 0's beam (camera +x, the image's u direction;
  docs/conventions.md "Camera frame"): an in-plane shift in view 0;
* ``beam0±a`` / ``beam1±a``: moved ``a`` mm along view 0's / view 1's beam: a depth error for that
  view, roughly an in-plane shift for the other;
* ``turn±d``: turned ``d`` degrees about the isocenter (about view 0's camera +y, the image's v direction);

with ``a`` in ``--shifts`` (default 1.5, 3, 6 mm) and ``d`` in ``--turns`` (0.5, 1, 2°).  Reported per
family and kind of pose: the 3D mTRE (20 bone fiducials), view 0's verdicts (one view, as
``xraypose register`` judges it) and the pair's (the least trusted view's:
:func:`xraypose.register.multiview.combine_confidences`) — ``pair``: each view checked as
``register --rig`` checks it (:func:`xraypose.register.confidence.assess_rig`: alone and on the rig's
optimum, merged), ``pair_alone``: each view checked as a single X-ray (the rule before 2026-12-04) —
``ok`` at mTRE ≥ 2 mm and ``failed`` below 1 mm.  The rows keep each view's signals (alone and the
rig's), so another confidence model can judge them again
(:class:`xraypose.register.confidence.ConfidenceModel`).

    python benchmarks/check_resolution.py --json OUT.json [--ct pelvis] [--families ours clinical]
        [--cases 6] [--seed 1]
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

from benchmarks.appearance import machine  # noqa: E402
from benchmarks.multiview import Pairs  # noqa: E402
from xraypose.geometry import make_transform, so3_exp  # noqa: E402
from xraypose.io import atomic_write_json  # noqa: E402
from xraypose.metrics import format_table, pose_errors  # noqa: E402
from xraypose.register import Registrar, RegistrationConfig  # noqa: E402

F64 = torch.float64


def moved(P0: torch.Tensor, C1: torch.Tensor, iso: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """View 0's camera_to_world ``P0`` (4, 4) moved in the world: ``amount`` mm across view 0's beam
    (``"across0"``: along its camera +x, the image's u direction), along view 0's or view 1's
    beam (``"beam0"``, ``"beam1"``: the camera z axis; view 1's camera_to_world is ``P0 @ C1``), or
    turned ``amount`` degrees about ``iso`` (3,) around view 0's camera +y (v) (``"turn"``)."""
    if kind == "turn":
        axis = P0[:3, 1] / P0[:3, 1].norm()
        R = so3_exp(math.radians(amount) * axis)
        return make_transform(R, iso - R @ iso) @ P0
    Q = P0 @ C1 if kind == "beam1" else P0
    col = {"across0": 0, "beam0": 2, "beam1": 2}[kind]
    D = torch.eye(4, dtype=F64)
    D[:3, 3] = amount * Q[:3, col] / Q[:3, col].norm()
    return D @ P0


def poses_to_check(P0, C1, iso, shifts, turns) -> dict:
    """``{name: (4, 4)}``: the truth and the truth moved (:func:`moved`) by each shift and turn."""
    out = {"truth": P0}
    for a in shifts:
        for kind in ("across0", "beam0", "beam1"):
            out[f"{kind}{a:+g}"] = moved(P0, C1, iso, kind, a)
    for d in turns:
        out[f"turn{d:+g}"] = moved(P0, C1, iso, "turn", d)
    return out


def pair_verdict(verdicts) -> str:
    """The pair's verdict from its views' (``combine_confidences``' rule: the least trusted view's)."""
    return "failed" if "failed" in verdicts else "ok" if all(v == "ok" for v in verdicts) else "uncertain"


def run_ct(spec, args, log) -> list[dict]:
    from xraypose.register.confidence import assess, assess_rig

    pairs = Pairs(spec, args.detector, args.seed)
    name, iso = pairs.name, pairs.iso
    reg = Registrar(pairs.vol, RegistrationConfig(drr_blur=1.0))
    rows = []
    for fam in args.families:
        for i in range(args.cases):
            c = pairs.case(i, fam, (60.0, 110.0), (10.0, 40.0))
            img0, cam0, P0, m0, img1, cam1, m1, C1, fid, start, ang = (
                c[k] for k in ("img0", "cam0", "P0", "m0", "img1", "cam1", "m1", "C1", "fid", "start", "angle_deg"))
            masks = [None if m is None else m[None, None] for m in (m0, m1)]
            poses = poses_to_check(P0, C1, iso, args.shifts, args.turns)
            if not args.no_register:
                res = reg.register_views([(img0[None, None], cam0, None, masks[0]),
                                          (img1[None, None], cam1, C1, masks[1])], start[None])
                poses = {"joint": res.poses[0].to(F64), **poses}
            for key, P in poses.items():
                e = float(pose_errors(P[None], P0, fid, cam0)["mtre"][0])
                t0 = time.perf_counter()
                views = ((img0, cam0, torch.eye(4, dtype=F64), masks[0]), (img1, cam1, C1, masks[1]))
                checks = [assess(reg, img[None, None], c, (P @ C)[None], starts=(start @ C)[None], masks=m)[0]
                          for img, c, C, m in views]
                verdicts = [c.verdict for c in checks]
                t1 = time.perf_counter()
                rig = assess_rig(reg, [(img[None, None], c, P @ C, start @ C, m) for img, c, C, m in views])
                rig_verdicts = [c.verdict for c in rig]
                rows.append({"ct": name, "family": fam, "case": i, "angle_deg": ang, "pose": key,
                             "mtre": e,
                             "p": [c.p_success for c in checks], "verdicts": verdicts,
                             "pair_alone": pair_verdict(verdicts), "reasons": [c.reason for c in checks],
                             "signals": [c.to_dict()["signals"] for c in checks],
                             "rig_p": [c.p_success for c in rig], "rig_verdicts": rig_verdicts,
                             "pair": pair_verdict(rig_verdicts), "rig_reasons": [c.reason for c in rig],
                             "rig_signals": [c.to_dict()["signals"] for c in rig],
                             "check_s": t1 - t0, "rig_check_s": time.perf_counter() - t1})
            log(f"  {name}/{fam} case {i}: views {ang:+.0f} deg apart; verdicts of views 0 and 1 alone / as a rig: "
                + ", ".join(f"{r['pose']} ({r['mtre']:.1f} mm) {r['verdicts'][0][0]}{r['verdicts'][1][0]}/"
                            f"{r['rig_verdicts'][0][0]}{r['rig_verdicts'][1][0]}" for r in rows[-len(poses):]))
    return rows


def summarise(rows) -> list[dict]:
    """Per CT, family and pose (as named by :func:`poses_to_check`): the verdicts of view 0 and of the
    pair against the mTRE."""
    out = []
    for key in sorted({(r["ct"], r["family"], r["pose"]) for r in rows}):
        g = [r for r in rows if (r["ct"], r["family"], r["pose"]) == key]
        out.append({"ct": key[0], "family": key[1], "pose": key[2], "n": len(g),
                    "median_mtre": statistics.median(r["mtre"] for r in g),
                    "view0_ok": sum(r["verdicts"][0] == "ok" for r in g),
                    "view0_failed": sum(r["verdicts"][0] == "failed" for r in g),
                    "view0_ok_2mm": sum(r["verdicts"][0] == "ok" and r["mtre"] >= 2 for r in g),
                    "view0_failed_below_1mm": sum(r["verdicts"][0] == "failed" and r["mtre"] < 1 for r in g)}
                   | {f"{k}_{what}": sum(r[k] == v and test(r["mtre"]) for r in g)
                      for k in ("pair_alone", "pair") for what, v, test in
                      (("ok", "ok", lambda e: True), ("failed", "failed", lambda e: True),
                       ("ok_2mm", "ok", lambda e: e >= 2), ("failed_below_1mm", "failed", lambda e: e < 1))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", action="append", help="pelvis | abdomen | a CT file (default: pelvis)")
    ap.add_argument("--families", nargs="*", default=["ours", "clinical"])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--shifts", type=float, nargs="*", default=[1.5, 3.0, 6.0], help="mm")
    ap.add_argument("--turns", type=float, nargs="*", default=[0.5, 1.0, 2.0], help="degrees")
    ap.add_argument("--seed", type=int, default=1, help="the cases' seed (the confidence model was fitted on seed 0's)")
    ap.add_argument("--no-register", action="store_true", help="check the truth and the moved poses only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"machine": machine(), "command": " ".join([sys.executable, *sys.argv]), "args": vars(args), "rows": []}
    for spec in args.ct or ["pelvis"]:
        report["rows"] += run_ct(spec, args, lambda s: print(s, flush=True))
        report["summary"] = summarise(report["rows"])
        atomic_write_json(args.json, report)
    print(format_table(report["summary"], list(report["summary"][0])))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
