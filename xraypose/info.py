"""What xraypose reads from a file: a CT, an X-ray or a trained model (``xraypose info``)."""

from __future__ import annotations

import json
from pathlib import Path

from xraypose.errors import InputError
from xraypose.io import check_input_path

CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
XRAY_SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff", ".npy")
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt")


def kind_of(path: str) -> str:
    """'ct', 'xray' or 'model' from the path (a folder is a DICOM CT series; 'sample' the bundled CT)."""
    if path == "sample":
        return "ct"
    p = Path(path)
    check_input_path(p, "input", f"file not found: {path}")  # a FIFO, a device, a link loop: refused here
    name = p.name.lower()
    if p.is_dir() or name.endswith(CT_SUFFIXES):
        return "ct"
    if name.endswith(MODEL_SUFFIXES):
        return "model"
    if name.endswith((".tif", ".tiff")) and _tiff_ct_sidecar(p):
        return "ct"  # a TIFF stack whose sidecar gives a voxel size is a CT (xraypose.tiff_stack)
    if name.endswith(XRAY_SUFFIXES) or "." not in name:
        return "xray"
    raise InputError(
        f"cannot tell what {p.name!r} is; CTs end in {', '.join(CT_SUFFIXES)} (or are DICOM folders), "
        f"X-rays in {', '.join(XRAY_SUFFIXES)}, models in {', '.join(MODEL_SUFFIXES)}"
    )


def _tiff_ct_sidecar(p: Path) -> bool:
    """Whether the TIFF ``p`` has a CT stack's sidecar beside it (``NAME.json`` holding ``spacing_mm``; an X-ray's
    sidecar holds intrinsics instead)."""
    side = p.with_suffix(".json")
    if not side.is_file():
        return False
    try:
        d = json.loads(side.read_text(encoding="utf-8-sig"))  # as read_json reads it (a BOM too)
    except (OSError, ValueError):
        return False  # read, and its problem named, as whatever the file turns out to be
    return isinstance(d, dict) and "spacing_mm" in d


def ct_info(path: str) -> dict:
    from xraypose.volume import load_ct

    vol = load_ct(path)
    d = vol.data
    return {
        "what": "CT",
        "source": vol.source or path,
        "shape": list(vol.shape),
        "spacing_mm": [round(float(s), 6) for s in vol.spacing],
        "extent_mm": [round(float(s), 3) for s in vol.extent_mm],
        "affine_voxel_to_world_RAS_mm": [[round(float(x), 6) for x in r] for r in vol.affine],
        "isocenter_mm": [round(float(x), 3) for x in vol.get_isocenter()],
        "value_range": [float(d.min()), float(d.max())],
        "labels": None if vol.labels is None else sorted(int(x) for x in vol.labels.unique()),
        "label_names": vol.label_names,
    }


def xray_info(path: str, **overrides) -> dict:
    """What :func:`~xraypose.xray.read_xray` reads from the X-ray ``path``, with ``overrides`` (its header
    keywords: sdd, delx, dely, x0, y0, kind) as ``register`` and ``track`` pass them."""
    from xraypose.xray import read_xray

    return {"what": "X-ray", **read_xray(path, require_intrinsics=False, **overrides).to_dict()}


def model_info(path: str) -> dict:
    from xraypose.model import load_checkpoint

    _, meta = load_checkpoint(path)
    keep = ("architecture", "parameterization", "convention", "image_size", "camera", "sod_mm", "isocenter",
            "normalization", "density", "volume", "training")
    return {"what": "pose-regression model", "source": str(path), **{k: meta.get(k) for k in keep if k in meta}}


#: The command-line spelling of :func:`xray_info`'s overrides (for the message that refuses them elsewhere).
_OVERRIDE_OPTIONS = {"sdd": "--sdd", "delx": "--delx", "dely": "--dely", "x0": "--x0", "y0": "--y0", "kind": "--kind"}


def info(path: str, **xray_overrides) -> dict:
    """What xraypose reads from ``path`` (a CT, an X-ray or a model); ``xray_overrides`` (an X-ray's header
    keywords, :func:`xray_info`) are refused for a CT or a model, naming them."""
    kind = kind_of(path)
    if kind != "xray" and xray_overrides:
        given = ", ".join(_OVERRIDE_OPTIONS.get(k, k) for k in xray_overrides)
        raise InputError(f"{given} appl{'ies' if len(xray_overrides) == 1 else 'y'} to an X-ray; {path} is a "
                         f"{'CT' if kind == 'ct' else 'model'}")
    if kind == "xray":
        return xray_info(path, **xray_overrides)
    return {"ct": ct_info, "model": model_info}[kind](path)


def format_info(d: dict) -> str:
    lines = [f"{d['what']}: {d.get('source', '')}"]
    for k, v in d.items():
        if k in ("what", "source"):
            continue
        if k == "header" and isinstance(v, dict):
            lines.append("  header values used:")
            for hk, hv in v.items():
                lines.append(f"    {hk:<30} = {json.dumps(hv['value'])}  (from {hv['from']})")
            continue
        lines.append(f"  {k}: {json.dumps(v, default=str)}")
    return "\n".join(lines)
