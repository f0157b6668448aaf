"""Track the radius through the real wrist's three frames with the product's own command (issue 14, item 4):
``xraypose track RADIUS cam01/ cam02/ --rig rig.json --structure MASK …``, and compare every frame with
scripts/wrist_register.py's joint result (its 12 starts per frame; benchmarks/results/wrist/radius.json).

What a user of the command line does with this data, written down:

* the radius's TIFF stack as a NIfTI file (voxel size 0.39625 × 0.39625 × 0.625 mm, the box centred at
  0, as :class:`xraypose.datasets.AutoscoperWrist` reads it), its values as the attenuation it adds to an
  X-ray of the wrist, ``max(value − 1024, 0)`` (scripts/wrist_register.py's ``above_water``), rendered
  with ``--density raw``; the bone (stored value > 0) as ``--structure`` (a part of the CT: the part
  settings, the frames windowed where it projects, weighed by its footprint at each start);
* the rig from the MayaCam 2.0 calibrations (:func:`xraypose.rig.rig_from_mayacam`: K, image size,
  camera_to_rig) as rig.json;
* the frames as they are (8-bit display images, bone dark): ``--kind intensity --i0 255``;
* the start: frame 0002's joint result of scripts/wrist_register.py (``--pose-json``, a rig_to_world).

    python scripts/wrist_track.py --work /tmp/wrist_track --json benchmarks/results/wrist/track.json

Prints and writes (``--json``), per frame, the command's verdict and the radius's difference from the
joint result (its centre in the calibration frame, mm; the angle, degrees).  Needs ../shared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

F64 = torch.float64


def write_inputs(work: Path, data=None) -> dict:
    """The command's inputs in ``work``: radius.nii.gz, radius_mask.nii.gz, rig.json; paths of the frames."""
    import nibabel as nib

    from wrist_register import above_water
    from xraypose.datasets import AutoscoperWrist
    from xraypose.rig import write_rig

    ds = AutoscoperWrist(data)
    vol = ds.volume("rad")
    work.mkdir(parents=True, exist_ok=True)
    aff = vol.affine.to(F64).numpy()
    nib.save(nib.Nifti1Image(above_water(vol).data.numpy().astype("float32"), aff), str(work / "radius.nii.gz"))
    nib.save(nib.Nifti1Image((vol.data > 0).numpy().astype("uint8"), aff), str(work / "radius_mask.nii.gz"))
    write_rig(work / "rig.json", ds.rig())
    return {"ct": work / "radius.nii.gz", "mask": work / "radius_mask.nii.gz", "rig": work / "rig.json",
            "frames": [ds.root / "radiographs" / cam for cam in ds.cameras], "centre": vol.get_isocenter().to(F64)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="the autoscoper_wrist folder (default ../shared/data/autoscoper_wrist)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the command's inputs and output")
    ap.add_argument("--joint", type=Path, default=ROOT / "benchmarks/results/wrist/radius.json",
                    help="scripts/wrist_register.py's JSON: the start (frame 0002's joint result) and the comparison")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--perturb", default=None, metavar="DEG,MM,SEED",
                    help="start that far from frame 0002's joint result (a turn about a random axis through the "
                         "radius's centre, then a shift in a random direction; seeded)")
    ap.add_argument("extra", nargs="*", help="more options for xraypose track (after --)")
    a = ap.parse_args(argv)

    from wrist_register import agreement
    from xraypose.cli import main as xraypose

    inp = write_inputs(a.work, a.data)
    joint = {fr["frame"]: torch.tensor(fr["joint"]["rig_to_world"], dtype=F64)
             for fr in json.loads(a.joint.read_text(encoding="utf-8"))["frames"]}
    start = joint["0002"]
    if a.perturb:
        from xraypose.register.cases import perturb_pose

        deg, mm, seed = (float(x) for x in a.perturb.split(","))
        # the bone's pose in the calibration frame, bone_to_cal = rig_to_world⁻¹, perturbed about its centre
        b2c = torch.linalg.inv(start)
        centre_cal = b2c[:3, :3] @ inp["centre"] + b2c[:3, 3]
        b2c = perturb_pose(b2c, centre_cal, deg, mm, torch.Generator().manual_seed(int(seed)))[0]
        start = torch.linalg.inv(b2c)
    (a.work / "start.json").write_text(json.dumps({"rig_to_world": start.tolist()}))
    cmd = ["track", str(inp["ct"]), *map(str, inp["frames"]), "--rig", str(inp["rig"]), "--structure", str(inp["mask"]),
           "--density", "raw", "--kind", "intensity", "--i0", "255", "--size", str(a.size),
           "--pose-json", str(a.work / "start.json"), "--threads", str(a.threads), "-o", str(a.work / "out"), *a.extra]
    print("xraypose " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    code = xraypose(cmd)
    seconds = time.perf_counter() - t
    doc = json.loads((a.work / "out" / "trajectory.json").read_text(encoding="utf-8"))
    rows = []
    for fr, name in zip(doc["frames"], sorted(joint)):
        T = torch.tensor(fr["rig_to_world"], dtype=F64)
        agr = agreement(torch.linalg.inv(joint[name]), torch.linalg.inv(T), inp["centre"],
                        torch.tensor([0.0, 0.0, 1.0], dtype=F64))
        rows.append({"frame": name, "verdict": fr["verdict"], "p_success": fr["p_success"],
                     "similarity": fr["similarity"], "reinitialised": fr["reinitialised"], "seconds": fr["seconds"],
                     "vs_joint": {"centre_mm": agr["centre_mm"], "rotation_deg": agr["rotation_deg"]},
                     "rig_to_world": fr["rig_to_world"]})
        print(f"frame {name}: {fr['verdict']}, similarity {fr['similarity']:.3f}; vs the joint registration: "
              f"{agr['centre_mm']:.2f} mm, {agr['rotation_deg']:.2f}°", flush=True)
    if a.json:
        from xraypose.io import atomic_write_json

        atomic_write_json(a.json, {"command": "xraypose " + " ".join(cmd), "perturb": a.perturb,
                                   "exit_code": code, "seconds": seconds,
                                   "structure_windows": doc.get("structure_windows"), "frames": rows})
    return 0 if all(math.isfinite(r["vs_joint"]["centre_mm"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
