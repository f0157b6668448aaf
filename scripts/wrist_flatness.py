"""How sharply each view of the real wrist tells the radius's pose (issue 14, item 4; docs/wrist.md, stop 61).

From the joint results of ``scripts/wrist_register.py``'s JSON, three measurements, each with the last level's
own similarity (:data:`wrist_register.WRIST_LEVELS`' 256-row level scored without iterating, on the views
windowed and weighted at the joint result, as the script registers them):

* ``depth``: each view's similarity with the radius moved along that view's ray through its centre
  (``--depths``, mm; + away from the source), everything else at the joint result;
* ``focal``: one camera's focal length (its sdd, the principal point kept) scaled by each ``--scales`` factor,
  the frame registered jointly again from the joint result, the two views' similarities there, and that view
  registered alone from the new joint result — does the calibration's scale make the views disagree?
* ``valley``: each view registered alone from the joint result, and both views' similarity along the
  geodesic from the joint pose (t = 0) to that view's own result (t = 1), extended both ways (``--ts``);
* ``voxel``: the volume's voxel size along some of its axes (``--voxel-axes``, default 2: the slices, along the
  radius's shaft; ``0 1``: across it) scaled by each ``--voxel-scales`` factor about the volume's centre, the
  frame registered jointly again from the joint result, and each view registered alone from that joint result —
  does a bone a little longer (or wider) than the stored voxel size says make the views agree?
* ``preference``: each view's similarity at the joint pose and at its own result (registered alone from the
  joint result) under variants of the last level's measure (:data:`VARIANTS`: the similarity, the robust
  weights, the DRR's blur, a fitted blur) — does the view's preference for its own result survive them?

    python scripts/wrist_flatness.py benchmarks/results/wrist/radius-two-captures-2026-12-06.json \\
        --json benchmarks/results/wrist/flatness-2026-12-06.json [--only depth focal valley preference]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

F64 = torch.float64
DEPTHS_MM = (-150, -120, -100, -80, -60, -40, -30, -20, -15, -10, -5, -2, 0, 2, 5, 10, 15, 20, 30, 40, 60)
SCALES = (0.97, 0.985, 1.0, 1.015, 1.03, 1.05)
VOXEL_SCALES = (0.99, 1.0, 1.01, 1.015, 1.02, 1.03)
TS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
#: (name, the last level's fields, the config's fields) of ``preference``: the registered measure first.
VARIANTS = (("as registered", {}, {}), ("NCC", {"similarity": "ncc"}, {}), ("mNCC", {"similarity": "mncc"}, {}),
            ("no robust weights", {"robust": False}, {}), ("DRR blur 0.5 px", {}, {"drr_blur": 0.5}),
            ("DRR blur 2 px", {}, {"drr_blur": 2.0}), ("blur fitted", {"fit_blur": True}, {}))


def focal_scaled(camera, k: float):
    """``camera`` with its focal length ×k: the sdd scaled, pixel spacing and principal point (in pixels)
    kept — a calibration whose magnification is off by k."""
    return dataclasses.replace(camera, sdd=camera.sdd * k)


def scaled_volume(volume, axes, k: float):
    """``volume`` with its voxel size along the index ``axes`` (an int or several) scaled by ``k`` about its centre
    (those affine columns ×k, its origin moved so that the centre voxel stays where it was): a volume whose stored
    spacing is off by k."""
    from xraypose.volume import Volume

    A = volume.affine.to(F64).clone()
    c = (torch.tensor(volume.data.shape, dtype=F64) - 1) / 2
    centre = A[:3, :3] @ c + A[:3, 3]
    for axis in ([axes] if isinstance(axes, int) else axes):
        A[:3, axis] *= k
    A[:3, 3] = centre - A[:3, :3] @ c
    return Volume(data=volume.data, affine=A)


def geodesic(B0: torch.Tensor, B1: torch.Tensor, t: float) -> torch.Tensor:
    """(4, 4) pose a fraction ``t`` of the way from ``B0`` to ``B1`` (both (4, 4) bone_to_cal) along the
    SE(3) geodesic ``exp(t · log(B1 · B0⁻¹)) · B0``; t outside [0, 1] extends it."""
    from xraypose.geometry.se3 import se3_exp, se3_log

    xi = se3_log((B1 @ torch.linalg.inv(B0))[None])[0]
    return se3_exp((t * xi)[None])[0] @ B0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="scripts/wrist_register.py's JSON (its joint results are the reference)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--data", default=None, help="the autoscoper_wrist folder (default ../shared/data/autoscoper_wrist)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", nargs="*", default=None)
    modes = ["depth", "focal", "valley", "voxel", "preference"]
    ap.add_argument("--only", nargs="*", default=modes, choices=modes)
    ap.add_argument("--depths", type=float, nargs="*", default=DEPTHS_MM)
    ap.add_argument("--scales", type=float, nargs="*", default=SCALES)
    ap.add_argument("--scale-camera", default="cam01")
    ap.add_argument("--voxel-scales", type=float, nargs="*", default=VOXEL_SCALES)
    ap.add_argument("--voxel-axes", type=int, nargs="+", default=[2], choices=[0, 1, 2])
    ap.add_argument("--ts", type=float, nargs="*", default=TS)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import wrist_register as W
    from xraypose.datasets import AutoscoperWrist
    from xraypose.io import atomic_write_json
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray
    from xraypose.register.multiview import ViewImage, register_rig

    given = json.loads(Path(args.results).read_text(encoding="utf-8"))
    if given.get("bone", "rad") != "rad" or given.get("transfer", "log") != "log":
        raise SystemExit(f"{args.results}: this script reads the radius under the log transfer")
    joints = {r["frame"]: torch.tensor(r["joint"]["rig_to_world"], dtype=F64) for r in given["frames"]}
    frames = [f for f in (args.frames or joints) if f in joints]
    ds = AutoscoperWrist(args.data, size=args.size)
    rig = ds.rig()
    vol = W.above_water(ds.volume("rad"))
    cfg = W.wrist_config(args.threads)
    reg = Registrar(vol, RegistrationConfig(**cfg))
    last = dataclasses.replace(W.WRIST_LEVELS[-1], iterations=0)

    def scorer_for(level_fields: dict, config_fields: dict) -> Registrar:
        lv = dataclasses.replace(last, **level_fields)
        return Registrar(vol, RegistrationConfig(**{**cfg, "levels": (lv,), "shift_search": None, "capture_starts": 1,
                                                    "revisit": False, **config_fields}))

    scorer = scorer_for({}, {})
    centre = vol.get_isocenter().to(F64)

    def score(view, rig_to_world, by=None) -> float:
        r = register_xray(vol, view["image"], view["camera"], (rig_to_world @ view["camera_to_rig"])[None],
                          registrar=by or scorer, hypotheses=False, masks=view["weights"], confidence=False)[0]
        return float(r.similarity)

    out = {"command": " ".join([sys.executable, *sys.argv]), "results": args.results, "size": args.size,
           "depth": [], "focal": [], "valley": [], "voxel": [], "preference": []}
    variants = [(name, scorer_for(lf, cf)) for name, lf, cf in VARIANTS] if "preference" in args.only else []
    for f in frames:
        S = joints[f]
        B = torch.linalg.inv(S)  # the radius's pose in the calibration frame
        views = W.prepare_views(ds, f, rig, S, vol)
        if "depth" in args.only:
            for v in views:
                src = v["camera_to_rig"][:3, 3]
                pc = B[:3, :3] @ centre + B[:3, 3]
                u = (pc - src) / (pc - src).norm()
                prof = []
                for d in args.depths:
                    Bd = B.clone()
                    Bd[:3, 3] += d * u
                    prof.append([float(d), score(v, torch.linalg.inv(Bd))])
                best = max(prof, key=lambda p: p[1])
                out["depth"].append({"frame": f, "view": v["name"], "source_to_centre_mm": float((pc - src).norm()),
                                     "profile": prof, "best_mm": best[0]})
                print(f"{f} {v['name']} depth: best {best[0]:+.0f} mm ({best[1]:.4f}); "
                      + " ".join(f"{d:+.0f}:{s:.4f}" for d, s in prof), flush=True)
        if "focal" in args.only:
            i = [v["name"] for v in views].index(args.scale_camera)
            for k in args.scales:
                vk = [dict(v) for v in views]
                vk[i]["camera"] = focal_scaled(vk[i]["camera"], k)
                t0 = time.perf_counter()
                j = register_rig(vol, [ViewImage(v["name"], v["image"], v["camera"], v["camera_to_rig"],
                                                 mask=v["weights"]) for v in vk], S[None], registrar=reg,
                                 hypotheses=False)
                Sj = j.rig_to_world.to(F64)
                moved = W.agreement(B, torch.linalg.inv(Sj), centre, torch.tensor([0.0, 0.0, 1.0], dtype=F64))
                alone = W.register_alone(vol, vk[i], Sj, reg)
                agr = W.view_agreement(torch.linalg.inv(Sj), vk[i], alone.camera_to_world.to(F64), centre)
                row = {"frame": f, "camera": args.scale_camera, "k": k, "joint_similarity": float(j.similarity),
                       "view_similarity": {v["name"]: score(v, Sj) for v in vk}, "joint_moved": moved,
                       "alone_vs_joint": agr, "alone_similarity": float(alone.similarity),
                       "s": time.perf_counter() - t0}
                out["focal"].append(row)
                print(f"{f} {args.scale_camera} focal ×{k:.3f}: joint {j.similarity:.4f} "
                      + " ".join(f"{n} {s:.4f}" for n, s in row["view_similarity"].items())
                      + f"; joint moved {moved['centre_mm']:.2f} mm {moved['rotation_deg']:.2f}°; alone vs joint "
                      f"{agr['centre_mm']:.2f} mm (along {agr['along_beam_mm']:+.2f}) {agr['rotation_deg']:.2f}°",
                      flush=True)
        if "voxel" in args.only:
            for k in args.voxel_scales:
                vk = scaled_volume(vol, args.voxel_axes, k)
                rk = Registrar(vk, RegistrationConfig(**cfg))
                ck = vk.get_isocenter().to(F64)
                t0 = time.perf_counter()
                wk = W.prepare_views(ds, f, rig, S, vk)
                j = register_rig(vk, [ViewImage(v["name"], v["image"], v["camera"], v["camera_to_rig"],
                                                mask=v["weights"]) for v in wk], S[None], registrar=rk, hypotheses=False)
                Sj = j.rig_to_world.to(F64)
                Bj = torch.linalg.inv(Sj)
                row = {"frame": f, "axes": args.voxel_axes, "k": k, "joint_similarity": float(j.similarity),
                       "joint_moved": W.agreement(B, Bj, ck, torch.tensor([0.0, 0.0, 1.0], dtype=F64)), "alone": {}}
                for v in W.prepare_views(ds, f, rig, Sj, vk):
                    a = W.register_alone(vk, v, Sj, rk)
                    row["alone"][v["name"]] = {"vs_joint": W.view_agreement(Bj, v, a.camera_to_world.to(F64), ck),
                                               "similarity": float(a.similarity)}
                row["s"] = time.perf_counter() - t0
                out["voxel"].append(row)
                print(f"{f} voxel ×{k:.3f} along axes {args.voxel_axes}: joint {j.similarity:.4f}; alone vs joint "
                      + "; ".join(f"{n} {x['vs_joint']['centre_mm']:.2f} mm (along {x['vs_joint']['along_beam_mm']:+.2f}) "
                                  f"{x['vs_joint']['rotation_deg']:.2f}°" for n, x in row["alone"].items()), flush=True)
        if "valley" in args.only:
            for v in views:
                alone = W.register_alone(vol, v, S, reg)
                Ba = v["camera_to_rig"] @ torch.linalg.inv(alone.camera_to_world.to(F64))
                beam = v["camera_to_rig"][:3, 2] / v["camera_to_rig"][:3, 2].norm()
                path = []
                for t in args.ts:
                    Bt = geodesic(B, Ba, t)
                    agr = W.agreement(B, Bt, centre, beam)
                    path.append({"t": t, "along_beam_mm": agr["along_beam_mm"], "centre_mm": agr["centre_mm"],
                                 "rotation_deg": agr["rotation_deg"],
                                 **{w["name"]: score(w, torch.linalg.inv(Bt)) for w in views}})
                out["valley"].append({"frame": f, "view": v["name"], "alone_similarity": float(alone.similarity),
                                      "path": path})
                print(f"{f} {v['name']} alone (similarity {alone.similarity:.4f}); the path: " + " | ".join(
                    f"t {p['t']:+.2f} {p['along_beam_mm']:+.1f} mm {p['rotation_deg']:.1f}° "
                    + " ".join(f"{w['name']} {p[w['name']]:.4f}" for w in views) for p in path), flush=True)
        if "preference" in args.only:
            for v in views:
                alone = W.register_alone(vol, v, S, reg)
                Sa = torch.linalg.inv(v["camera_to_rig"] @ torch.linalg.inv(alone.camera_to_world.to(F64)))
                agr = W.view_agreement(B, v, alone.camera_to_world.to(F64), centre)
                row = {"frame": f, "view": v["name"], "alone_vs_joint": agr, "variants": {}}
                for name, by in variants:
                    row["variants"][name] = {"joint": score(v, S, by), "alone": score(v, Sa, by)}
                out["preference"].append(row)
                print(f"{f} {v['name']} alone {agr['along_beam_mm']:+.1f} mm along its beam, {agr['rotation_deg']:.1f}°; "
                      "its similarity there minus at the joint pose: " + ", ".join(
                          f"{n} {x['alone'] - x['joint']:+.4f}" for n, x in row["variants"].items()), flush=True)
    atomic_write_json(args.json, out)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
