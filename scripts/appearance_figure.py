"""Draw docs/img/appearance_families.png: one row per appearance family, for the bundled pelvis at one pose.

Columns: the raw image as stored; the preprocessed image (``preprocess(raw,
camera, **fx.preprocess)``, what registration sees) with the foreign pixels
(implants, displaced bone) outlined; the preprocessed image minus the "ours"
family's preprocessed image at the same camera and pose.  Also writes a
picture of the femur mask derived from the unlabelled CT (``--femur-mask``).

Run: python scripts/appearance_figure.py [-o docs/img/appearance_families.png] [--seed 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from xraypose.appearance import FAMILIES, form_xray  # noqa: E402
from xraypose.appearance.independent import diffdrr_available  # noqa: E402
from xraypose.camera import Camera, carm_pose  # noqa: E402
from xraypose.preprocess import preprocess  # noqa: E402
from xraypose.volume import load_sample_ct  # noqa: E402


def _pose(volume) -> torch.Tensor:
    """An AP view of the pelvis, slightly oblique, the field within the CT (which ends at the femoral necks)."""
    iso = volume.get_isocenter().clone()
    iso[2] = float(volume.corners[:, 2].min()) + 135.0
    return carm_pose(8.0, -5.0, sod=650.0, isocenter=iso)


def _short(fx) -> str:
    keep = ("kvp", "spr", "scatter_sigma_mm", "lut", "polarity", "gamma", "bits", "photons", "blur_px", "sod",
            "n_objects", "translation_mm", "rotation_deg", "side", "implants", "scale_per_mm", "detected_photons")
    parts = []
    for k in keep:
        if k in fx.info and not (k in ("photons", "blur_px") and fx.info["family"] not in ("lowdose", "focal",
                                                                                            "clinical")):
            v = fx.info[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return "\n".join(", ".join(parts[i:i + 3]) for i in range(0, len(parts), 3))


def draw(out: Path, seed: int, size: int) -> None:
    vol = load_sample_ct()
    cam = Camera(sdd=1020.0, height=size, width=size, delx=400.0 / size)
    T = _pose(vol)
    names = [n for n in FAMILIES if n != "diffdrr" or diffdrr_available()]
    fig, axes = plt.subplots(len(names), 3, figsize=(9.6, 3.05 * len(names)))
    for r, name in enumerate(names):
        g = torch.Generator().manual_seed(seed)
        fx = form_xray(vol, cam, T, name, generator=g)
        pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
        ours = form_xray(vol, fx.camera, fx.pose, "ours", generator=torch.Generator().manual_seed(seed))
        ref = preprocess(ours.raw, ours.camera, **ours.preprocess)
        diff = (pre.image - ref.image).numpy()
        ax = axes[r]
        ax[0].imshow(fx.raw.numpy(), cmap="gray")
        ax[0].set_title(f"{name}: raw [{fx.raw.min():.0f}, {fx.raw.max():.0f}]\n{_short(fx)}", fontsize=6.5)
        ax[1].imshow(pre.image.numpy(), cmap="gray", vmin=0, vmax=1)
        if fx.foreign is not None and bool(fx.foreign.any()):
            c = fx.preprocess["crop"]
            f = fx.foreign.numpy()[c:-c, c:-c].astype(float)
            ax[1].contour(f, levels=[0.5], colors="red", linewidths=0.6)
        ax[1].set_title("preprocessed" + (" (red: foreign)" if fx.foreign is not None else ""), fontsize=8)
        lim = max(0.05, float(np.percentile(np.abs(diff), 99)))
        ax[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax[2].set_title(f"minus 'ours' (±{lim:.2f})", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"Appearance families, bundled pelvis CT, {size}² detector (400 mm, sdd 1020, sod 650), seed {seed}",
                 fontsize=9, y=0.999)
    fig.tight_layout(rect=(0, 0, 1, 0.993))
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small(fig, out, dpi=72)


def _save_small(fig, out: Path, dpi: int) -> None:
    """Save as a 256-colour PNG (the noisy images compress poorly in full colour)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def draw_femur_mask(out: Path) -> None:
    from xraypose.appearance.femur import femur_mask

    vol = load_sample_ct()
    hu = vol.data.numpy()
    m = femur_mask(vol).numpy()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.4))
    ax[0].imshow(np.clip(hu, -200, 1500).max(1).T[::-1], cmap="gray")
    ax[0].imshow(np.ma.masked_equal(m.max(1).T[::-1], 0), cmap="autumn", alpha=0.45)
    ax[0].set_title("coronal MIP, femur mask (colour)", fontsize=8)
    j = int(np.argwhere(m > 0)[:, 1].mean())
    ax[1].imshow(np.clip(hu[:, j, :], -200, 1500).T[::-1], cmap="gray")
    ax[1].imshow(np.ma.masked_equal(m[:, j, :].T[::-1], 0), cmap="autumn", alpha=0.45)
    ax[1].set_title(f"coronal slice j={j}", fontsize=8)
    k = int(np.argwhere(m > 0)[:, 2].max()) - 3
    ax[2].imshow(np.clip(hu[:, :, k], -200, 1500).T, cmap="gray")
    ax[2].imshow(np.ma.masked_equal(m[:, :, k].T, 0), cmap="autumn", alpha=0.45)
    ax[2].set_title(f"axial slice k={k} (femoral heads in the acetabula)", fontsize=8)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    _save_small(fig, out, dpi=70)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/img/appearance_families.png"))
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="detector pixels per side")
    ap.add_argument("--femur-mask", type=Path, default=None, help="also draw the femur mask to this PNG")
    args = ap.parse_args()
    draw(args.out, args.seed, args.size)
    if args.femur_mask is not None:
        draw_femur_mask(args.femur_mask)
    print(args.out)


if __name__ == "__main__":
    main()
