"""Reading PNG, TIFF and NPY X-rays, with intrinsics from the caller or a sidecar JSON."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from xraypose._checks import is_numeric_dtype, one_line
from xraypose.errors import InputError
from xraypose.xray.frames import (check_fits_float32, count_not_opaque, grey_of_rgb, inverted_to_bright,
                                  note_alpha_ignored, opaque_alpha, reduce_frames)
from xraypose.xray.overrides import XRayOverrides
from xraypose.xray.record import Provenance, XRay
from xraypose.xray.resolve import finish_xray

__all__ = ["read_image_xray"]

#: Sidecar JSON keys → the names of the values they give.
_SIDECAR_KEYS = (("sdd_mm", "sdd"), ("delx_mm", "delx"), ("dely_mm", "dely"), ("x0_mm", "x0"), ("y0_mm", "y0"),
                 ("primary_deg", "primary"), ("secondary_deg", "secondary"), ("sod_mm", "sod"),
                 ("reverse_x_axis", "reverse_x_axis"), ("patient_orientation", "patient_orientation"))


def read_image_xray(p, overrides: XRayOverrides | dict | None = None, **kw) -> XRay:
    """Read a PNG, TIFF or NPY X-ray; intrinsics come from the overrides or a sidecar JSON.

    ``overrides`` (an :class:`XRayOverrides` or a dict) and the keywords are those of
    :func:`xraypose.xray.read_xray`.  The sidecar ``<file stem>.json`` (optional) may hold ``sdd_mm``,
    ``delx_mm``, ``dely_mm``, ``x0_mm``, ``y0_mm``, ``reverse_x_axis``, ``kind``, ``primary_deg``,
    ``secondary_deg``, ``sod_mm`` (the keys of ``Camera.to_dict()`` are accepted; ``height``/``width``
    must match).
    """
    ov = XRayOverrides.of(overrides, **kw)
    p = Path(p)
    hdr = Provenance()
    src = str(p)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _read_npy(p, hdr)
    else:
        arr = _read_pil(p, hdr)
    hdr.set("pixel_type", str(np.asarray(arr).dtype), "the file's pixels")  # a sequence's frames must agree
    img = reduce_frames(np.asarray(arr), ov.frames, hdr, src, "frames in the file")
    if img.ndim != (3 if str(ov.frames).lower() == "all" else 2):
        raise InputError(f"{p}: expected a 2D image, got shape {img.shape}")
    hv: dict = {}
    side = p.with_suffix(".json")
    if side.exists():
        ov = _read_sidecar(side, p, img.shape[-2:], hv, hdr, ov)  # a frame's size, for a stack (F, H, W) too
    kind = ov.kind
    if kind is None:
        kind = "attenuation"
        hdr.set("kind", kind, "default")
        hdr.note("pixel kind assumed 'attenuation' (bone bright); for raw detector counts pass --kind intensity "
                 "(in Python kind='intensity'; in a sidecar JSON \"kind\": \"intensity\")")
    elif "kind" not in hdr.values:
        hdr.set("kind", kind, "user")
    return finish_xray(img.astype(np.float32), hv, hdr, kind, src, ov)


def _read_sidecar(side: Path, p: Path, shape, hv: dict, hdr: Provenance, ov: XRayOverrides) -> XRayOverrides:
    """The sidecar's values into ``hv`` (its ``kind`` into the overrides unless one was given); its
    ``height``/``width`` must be the image's."""
    from xraypose.schema import SIDECAR, read_checked

    meta = read_checked(side, SIDECAR, "sidecar JSON")
    where = f"sidecar JSON {side.name}"
    for key, name in _SIDECAR_KEYS:
        if key in meta:
            hv[name] = (meta[key], f"{where} [{key}]")
    if "kind" in meta and ov.kind is None:
        ov = replace(ov, kind=meta["kind"])
        hdr.set("kind", meta["kind"], f"{where} [kind]")
    for key in ("height", "width"):
        if key in meta:
            expect = shape[0] if key == "height" else shape[1]
            if meta[key] != expect:
                raise InputError(
                    f"{side}: intrinsics describe a detector {key} of {meta[key]} pixels but the image "
                    f"{p.name} is {shape[0]}×{shape[1]} (sizes differ)"
                )
    if "K" in meta:
        hdr.note(f"{where}: K is not used (the camera comes from sdd_mm, delx_mm, dely_mm, x0_mm, y0_mm)")
    return ov


def _read_npy(p: Path, hdr: Provenance) -> np.ndarray:
    """An NPY X-ray: its header checked (size, dtype, length) before the values are read.

    A (H, W, 3) or (H, W, 4) array is taken for an RGB(A) picture, not for H frames of
    W × 3 pixels: with equal colour channels the first is used (noted), otherwise it is refused; (H, W, 1) is
    one image, (H, W, 2) grey + alpha (its first channel used, noted).  The alpha of (H, W, 2) and (H, W, 4) is
    read as a PNG's: pixels below full opacity (the integer type's maximum, 1.0 for floats) are counted in the
    note "alpha channel ignored" (their grey values are registered; no note when all are opaque).
    """
    from xraypose.limits import MAX_XRAY_PIXELS, check_xray_size, dims, human_bytes

    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, SyntaxError...
        raise InputError(f"{p}: cannot read the .npy file ({one_line(e)})") from None
    if not is_numeric_dtype(dtype):
        raise InputError(f"{p}: .npy array is not numeric (dtype {dtype})")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{p}: .npy array holds complex values (dtype {dtype}); X-rays are real numbers")
    if dtype == np.bool_:  # a mask saved by mistake (it was read, then refused as a mask leaving < 5 %)
        raise InputError(f"{p}: .npy array holds booleans (a mask?); an X-ray is intensities or line integrals")
    n = int(np.prod(shape)) if shape else 1
    if len(shape) >= 3 and shape[-1] > 4:  # (F, H, W) frames, not an (H, W, C) picture: each frame's size
        check_xray_size(shape[-2], shape[-1], str(p), int(np.prod(shape[:-2])))
    elif n > MAX_XRAY_PIXELS:
        raise InputError(f"{p}: the header declares {dims(shape)} pixels ({n:.3g}); X-rays are at most "
                         f"{MAX_XRAY_PIXELS:.0e} pixels (a damaged file?)")
    need, have = offset + n * dtype.itemsize, p.stat().st_size
    if have < need:
        raise InputError(f"{p}: the .npy file is truncated: its header declares {dims(shape)} values of {dtype} "
                         f"({human_bytes(need)} with the header), the file holds {human_bytes(have)}")
    try:
        arr = np.load(str(p), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: cannot read the .npy file ({one_line(e)})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] <= 4 and arr.shape[0] > 4:  # (H, W, channels), not H frames of W × 1 ... 4
        if arr.shape[-1] >= 3:
            grey_of_rgb(arr, f"{p}: array of shape {tuple(arr.shape)} is a colour (RGB"
                        f"{'A' if arr.shape[-1] == 4 else ''}) picture", " (H, W), or frames (F, H, W)")
            hdr.note(f"array of shape {tuple(arr.shape)} read as a greyscale RGB picture: its first channel is used")
        elif arr.shape[-1] == 2:
            hdr.note(f"array of shape {tuple(arr.shape)} read as a grey + alpha picture: its first channel is used")
        if arr.shape[-1] in (2, 4):  # its alpha, as a PNG's: not opaque everywhere, noted (it was dropped unsaid)
            full = opaque_alpha(arr.dtype)
            note_alpha_ignored(hdr, count_not_opaque(arr[..., -1], full), arr.shape[0] * arr.shape[1], full)
        arr = arr[..., 0]
    check_fits_float32(arr, str(p))
    return arr


def _read_pil(p: Path, hdr: Provenance) -> np.ndarray:
    from xraypose.io import pil_warnings

    with pil_warnings(p):  # a damaged file: its one-line error, not PIL's warnings beside it
        return _read_pil_frames(p, hdr)


def _read_pil_frames(p: Path, hdr: Provenance) -> np.ndarray:
    from PIL import ImageSequence

    from xraypose.io import open_pil_image, tiff_sample_format
    from xraypose.limits import check_xray_size

    im = open_pil_image(p, f"not a readable {p.suffix.upper().lstrip('.')} image", "cannot open the image")
    with im:  # closed once read (also when refused)
        w, h = im.size  # xraypose's own size limit, before decoding
        frames = []
        clear = 0  # pixels not fully opaque (alpha < 255), over the frames
        try:  # a cut multi-page TIFF: PIL raises TypeError ('Missing dimensions'), ValueError, EOFError ...
            check_xray_size(h, w, str(p), int(getattr(im, "n_frames", 1) or 1))  # before decoding the pixels
            for fr in ImageSequence.Iterator(im):
                if fr.size != (w, h):
                    raise InputError(f"{p}: frame {len(frames)} is {fr.size[1]} × {fr.size[0]} pixels (rows × "
                                     f"columns) but frame 0 is {h} × {w}; every frame of a file must have one size")
                raw = _raw_mode(fr)  # before decoding
                page = tiff_sample_format(fr, _pil_to_gray(fr, p))
                clear += _not_opaque(fr)
                frames.append(_white_is_zero(fr, raw, page, hdr, not frames))
                if frames[-1].dtype != frames[0].dtype:  # another bit depth: its values on another scale (max, sum)
                    raise InputError(f"{p}: frame {len(frames) - 1} holds {frames[-1].dtype} pixels but frame 0 "
                                     f"{frames[0].dtype}; every frame of a file must have one pixel type")
        except InputError:  # a ValueError too: already one line naming the problem
            raise
        except (OSError, EOFError, ValueError, TypeError, SyntaxError) as e:
            raise InputError(f"{p}: image data is truncated or corrupt ({one_line(e)})") from None
        if not frames:
            raise InputError(f"{p}: the image holds no frame")
        note_alpha_ignored(hdr, clear, len(frames) * h * w)  # a transparent alpha was dropped without a word
        if len(frames) == 1:
            return frames[0]
        return np.stack(frames)


def _pil_to_gray(fr, p: Path) -> np.ndarray:
    mode = fr.mode
    raw = _raw_mode(fr)
    if mode in ("LA", "RGB", "RGBA") and ";16" in raw:  # 16-bit grey+alpha or colour: Pillow decodes 8 bits of each
        kind = "grey with alpha" if raw.startswith("LA") else "colour"
        raise InputError(f"{p}: 16-bit {kind} image ({raw}); Pillow reads only its high 8 bits (the low 8 bits "
                         "would be lost): save the X-ray as 16-bit greyscale without alpha")
    if mode in ("RGB", "RGBA"):
        return grey_of_rgb(np.asarray(fr.convert("RGB")), f"{p}: colour image")
    if mode == "LA":
        return np.asarray(fr.convert("L")).copy()
    if mode == "P":
        return _pil_to_gray(fr.convert("RGB"), p)
    if mode == "1":
        return np.asarray(fr.convert("L")).copy()
    a = np.asarray(fr)
    if a.ndim != 2:
        raise InputError(f"{p}: expected a greyscale image, got mode {mode} with shape {a.shape}")
    return a.copy()


def _not_opaque(fr) -> int:
    """How many pixels of an 8-bit picture with alpha (LA, RGBA, PA, or a palette or grey with a transparent
    entry) are not fully opaque; 0 without alpha.  (:func:`_pil_to_gray` refused 16-bit alpha already.)"""
    if fr.mode in ("LA", "RGBA", "PA"):
        alpha = fr.getchannel("A")
    elif "transparency" in fr.info and fr.mode in ("P", "L"):
        alpha = fr.convert("RGBA" if fr.mode == "P" else "LA").getchannel("A")
    else:
        return 0
    return count_not_opaque(np.asarray(alpha), 255)


def _white_is_zero(fr, raw: str, a: np.ndarray, hdr: Provenance, first: bool) -> np.ndarray:
    """A TIFF page whose PhotometricInterpretation (262) is 0, WhiteIsZero (DICOM's MONOCHROME1), inverted so that
    high values are bright: Pillow inverts 1- and 8-bit pages (their raw mode ends in ";I") but gives 16-bit, 32-bit
    and float pages as stored.  Unsigned pages over BitsPerSample's range, the others over the page's (as
    MONOCHROME1 in :func:`xraypose.xray.dicom._photometric`); the page's pixel type is kept."""
    tags = getattr(fr, "tag_v2", None)
    if tags is None or tags.get(262) != 0 or raw.split(";")[-1] == "I":
        return a
    bits = tags.get(258, (0,))
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    declared = np.issubdtype(a.dtype, np.unsignedinteger) and 0 < bits <= 8 * a.dtype.itemsize
    out, how = inverted_to_bright(a.astype(np.float64), (0.0, float(2 ** bits - 1)) if declared else None,
                                  "BitsPerSample")
    if first:
        hdr.note(f"TIFF PhotometricInterpretation 0 (WhiteIsZero) inverted so that high values are bright: {how}")
    return out.astype(a.dtype)  # within the range it was inverted over: the page's type holds it


def _raw_mode(fr) -> str:
    """The pixel layout of the file's data as Pillow decodes it (``"LA;16B"``, ``"RGB;16L"``, ``"I;16"``), before
    Pillow converts it to the image's mode; "" once decoded."""
    tile = getattr(fr, "tile", None)  # a converted image has none
    args = tile[0].args if tile else ""
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""
