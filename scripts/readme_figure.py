"""Draw docs/img/readme.png: one realistic synthetic X-ray of the bundled CT registered from a trained model.

    python scripts/readme_figure.py --model xraypose-demo/model.pt [--case 3] [--out docs/img/readme.png]

Panels: the X-ray (simulated unlike registration renders: Siddon ×2, physical μ, noise,
16 bit, collimator; then preprocessed), the DRR at the model's estimate, the DRR at the
registered pose, and the DRR's edges on the X-ray.  The caption numbers are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--case", type=int, default=3, help="case index of the demo's CaseMaker (seed 1000)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "readme.png")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from xraypose import viz
    from xraypose.camera import Camera
    from xraypose.evaluate import PictureRenderer
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray
    from xraypose.register.cases import CaseMaker
    from xraypose.register.initializers import ModelInitializer
    from xraypose.volume import load_sample_ct

    ct = load_sample_ct()
    raw = Camera(sdd=1020.0, height=256, width=256, delx=280.0 / 256)  # the demo's detector
    case = CaseMaker(ct, camera=raw, sod=612.0, seed=1000).case(args.case)
    reg = register_xray(ct, case.image, case.camera, ModelInitializer.from_checkpoint(args.model),
                        registrar=Registrar(ct, RegistrationConfig(drr_blur=1.0)), true_pose=case.true_pose,
                        fiducials=case.fiducials)[0]
    drrs = PictureRenderer(ct)(case.camera, torch.stack([reg.initial_pose, reg.camera_to_world]))
    m0, m = reg.initial_metrics["mtre"], reg.metrics["mtre"]
    x = viz.normalise(case.image)
    rgb = np.stack([x, x, x], -1)
    rgb[viz.edges(drrs[1])] = [1.0, 0.3, 0.0]
    panels = [(x, "X-ray (simulated)"), (viz.normalise(drrs[0]), f"DRR at the model's estimate\nmTRE {m0:.1f} mm"),
              (viz.normalise(drrs[1]), f"DRR after registration\nmTRE {m:.2f} mm, {reg.opt_s:.1f} s"),
              (rgb, "its edges on the X-ray")]
    fig, ax = plt.subplots(1, 4, figsize=(13, 3.7), dpi=100)
    for a, (im, t) in zip(ax, panels):
        a.imshow(im, cmap="gray")
        a.set_title(t, fontsize=11)
        a.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}: case {args.case}, start mTRE {m0:.1f} mm -> {m:.2f} mm in {reg.opt_s:.2f} s")


if __name__ == "__main__":
    main()
