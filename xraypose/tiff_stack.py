"""Volumes from multi-page TIFF stacks (one page per slice) with a voxel size given by the user.

A TIFF stack carries no voxel size and no position (its XResolution /
YResolution tags are print resolutions, not voxel sizes): the voxel size must
be given — ``spacing=`` in Python, or, where no argument reaches the reader (the
command line: ``xraypose render rad.tif …``), a sidecar ``rad.json`` beside the
stack holding ``{"spacing_mm": [sx, sy, sz]}`` (:func:`sidecar_spacing`) — and the
placement is a documented choice.

Axis order and placement
------------------------
* Page ``k`` is slice ``k``; in a page, row ``j`` and column ``i``.  The
  volume is ``data[i, j, k] = page_k[row j, column i]``: voxel index i runs
  along the columns (x), j along the rows (y), k along the pages (z) — the
  order Autoscoper uses for its ``VoxelSize x y z``.
* ``affine = diag(sx, sy, sz)`` plus a translation: by default the centre of
  voxel (0, 0, 0) (first page, first row, first column) is the world origin,
  as :func:`~xraypose.volume.volume_from_array` places arrays (nothing is
  re-centred); ``origin="center"`` puts the centre of the volume's box at
  the origin instead; ``origin=(x, y, z)`` puts voxel (0, 0, 0) there.
* The frame (columns, rows, pages) is right-handed.  It is the patient's RAS
  only if the stack was written so; a CT exported slice by slice from DICOM
  in ascending order is LPS in it.  ``flip=(fx, fy, fz)`` reverses the voxel
  order along x / y / z (Autoscoper's ``VolumeFlip``) for a stack written
  mirrored.
* Voxel values are kept as stored (e.g. 0…4095 for 12-bit data): they are not
  HU.  Render such a volume with the ``"raw"`` density (linear in the stored
  value); the HU-based models ("hu", "linear", "physical") would misread it.

Every problem is an :class:`~xraypose.errors.InputError` of one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xraypose._checks import one_line
from xraypose.errors import InputError

__all__ = ["read_tiff_volume", "read_tiff_array", "read_tiff_pages", "TIFF_EXTENSIONS"]

#: File endings read as TIFF stacks.
TIFF_EXTENSIONS = (".tif", ".tiff")

# PIL modes of one value per pixel, and their numpy types.
_GREY_MODES = {"1": "bool", "L": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I;16S": "int16",
               "I": "int32", "I;32": "int32", "F": "float32", "F;32F": "float32"}


def read_tiff_pages(path, what: str = "TIFF stack") -> np.ndarray:
    """The pages of a multi-page greyscale TIFF as one ``(pages, rows, columns)`` array (stored dtype).

    Sizes and pixel types of all pages are checked before any page is decoded.

    Raises:
        InputError: missing file, not a TIFF, colour pages (RGB, palette, ...),
            pages of different sizes or pixel types, a stack too large for this
            machine's memory, truncated page data.
    """
    from xraypose.io import check_input_file, pil_warnings

    p = Path(path).expanduser()
    check_input_file(p, what, "a TIFF file")
    with pil_warnings(p):  # a damaged file: its one-line error, not PIL's warnings beside it
        return _read_pages(p)


def _read_pages(p: Path) -> np.ndarray:
    from xraypose.io import open_pil_image, tiff_sample_format
    from xraypose.limits import check_allocation

    im = open_pil_image(p, "not a readable TIFF file", "cannot open the TIFF file")  # memory checked below
    with im:
        if (im.format or "").upper() != "TIFF":
            raise InputError(f"{p}: a {im.format or 'non-TIFF'} image, not a TIFF stack")
        try:
            n = int(getattr(im, "n_frames", 1) or 1)
            heads = []
            for k in range(n):
                im.seek(k)
                heads.append((im.size, im.mode))
        except (OSError, EOFError, ValueError, TypeError, SyntaxError) as e:  # PIL: TypeError 'Missing dimensions'
            raise InputError(f"{p}: the TIFF page directory is damaged ({one_line(e)})") from None
        (w0, h0), m0 = heads[0]
        for k, ((w, h), m) in enumerate(heads):
            if m not in _GREY_MODES:
                kind = "colour (RGB)" if m.startswith("RGB") else f"pixel mode {m!r}"
                raise InputError(f"{p}: page {k} holds {kind} pixels; a volume needs one grey value per voxel "
                                 "(8-, 16- or 32-bit greyscale pages)")
            if (w, h) != (w0, h0):
                raise InputError(f"{p}: page {k} is {h} × {w} pixels (rows × columns) but page 0 is {h0} × {w0}; "
                                 "every page of a stack must have one size")
            if _GREY_MODES[m] != _GREY_MODES[m0]:
                raise InputError(f"{p}: page {k} holds {_GREY_MODES[m]} pixels but page 0 {_GREY_MODES[m0]}; "
                                 "every page of a stack must have one pixel type")
        check_allocation((n, h0, w0), np.dtype(_GREY_MODES[m0]).itemsize + 4, str(p))
        im.seek(0)  # signed 8-bit, unsigned 32-bit: the file's type, not Pillow's
        out = np.empty((n, h0, w0), dtype=tiff_sample_format(im, np.empty(0, _GREY_MODES[m0])).dtype)
        try:
            for k in range(n):
                im.seek(k)
                out[k] = tiff_sample_format(im, np.asarray(im))
        except (OSError, ValueError, TypeError, SyntaxError) as e:
            raise InputError(f"{p}: TIFF page {k} is truncated or corrupt ({one_line(e)})") from None
    return out


def sidecar_spacing(p: Path):
    """The voxel size (mm) in the sidecar ``NAME.json`` beside the TIFF stack ``p`` (``{"spacing_mm": [sx, sy,
    sz]}``, columns, rows, pages; :data:`xraypose.schema.TIFF_SIDECAR`: any other key is refused), or None when
    there is no sidecar."""
    from xraypose.schema import TIFF_SIDECAR, read_checked

    side = p.with_suffix(".json")
    return read_checked(side, TIFF_SIDECAR, "TIFF sidecar")["spacing_mm"] if side.is_file() else None


def _spacing(spacing, p: Path) -> np.ndarray:
    if spacing is None:
        spacing = sidecar_spacing(p)
    if spacing is None:
        raise InputError(f"TIFF stack {p} carries no voxel size: give it in {p.with_suffix('.json').name} beside it "
                         '({"spacing_mm": [sx, sy, sz]}, mm along columns, rows, pages) or, in Python, '
                         "spacing=(sx, sy, sz)")
    try:
        sp = np.asarray([float(s) for s in spacing], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{p}: spacing must be 3 voxel sizes in mm (columns, rows, pages), got {spacing!r}") from None
    if sp.shape != (3,) or isinstance(spacing, str):
        raise InputError(f"{p}: spacing must be 3 voxel sizes in mm (columns, rows, pages), got {spacing!r}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{p}: spacing must be 3 finite voxel sizes > 0 mm (columns, rows, pages), "
                         f"got {sp.tolist()}")
    return sp


def read_tiff_array(path, spacing: Sequence[float] | None, what: str = "CT",
                    origin: Sequence[float] | str = (0.0, 0.0, 0.0),
                    flip: Sequence[bool] = (False, False, False)) -> tuple[np.ndarray, np.ndarray]:
    """``(I, J, K)`` array (stored dtype) and ``(4, 4)`` affine of a TIFF stack (module docstring).

    Args:
        path: a multi-page TIFF, pages = slices.
        spacing: (sx, sy, sz) voxel size in mm along columns, rows, pages.
        what: what the file is, for messages ("CT", "Labelmap").
        origin: world mm of voxel (0, 0, 0)'s centre, or "center" (the box centre at 0).
        flip: reverse the voxel order along x (columns), y (rows), z (pages).
    """
    p = Path(path).expanduser()
    sp = _spacing(spacing, p)
    pages = read_tiff_pages(p, f"{what} TIFF stack")
    if pages.shape[0] < 2:
        raise InputError(f"{p}: the TIFF holds one page, a 2D image; a volume is a stack of pages (slices)")
    arr = np.ascontiguousarray(np.transpose(pages, (2, 1, 0)))  # (columns, rows, pages) = (i, j, k)
    try:
        fl = [bool(f) for f in flip]
    except TypeError:
        fl = []
    if len(fl) != 3 or any(not isinstance(f, (bool, np.bool_, int)) for f in flip):
        raise InputError(f"flip must be three booleans (x = columns, y = rows, z = pages), got {flip!r}")
    for ax, f in enumerate(fl):
        if f:
            arr = np.flip(arr, axis=ax)
    arr = np.ascontiguousarray(arr)
    aff = np.diag([*sp, 1.0])
    if isinstance(origin, str):
        if origin.lower() not in ("center", "centre"):
            raise InputError(f"origin must be 3 numbers (mm) or 'center', got {origin!r}")
        aff[:3, 3] = -sp * (np.asarray(arr.shape, dtype=np.float64) - 1) / 2
    else:
        try:
            org = np.asarray([float(v) for v in origin], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"origin must be 3 numbers (mm) or 'center', got {origin!r}") from None
        if org.shape != (3,) or not np.all(np.isfinite(org)):
            raise InputError(f"origin must be 3 finite numbers (mm) or 'center', got {origin!r}")
        aff[:3, 3] = org
    return arr, aff


def read_tiff_volume(path, spacing: Sequence[float] | None, *, origin: Sequence[float] | str = (0.0, 0.0, 0.0),
                     flip: Sequence[bool] = (False, False, False), isocenter=None,
                     dtype: torch.dtype = torch.float32):
    """A :class:`~xraypose.volume.Volume` from a multi-page TIFF (pages = slices).

    Args:
        path: the TIFF stack (8-, 16- or 32-bit greyscale pages of one size).
        spacing: (sx, sy, sz) voxel size in mm along columns, rows, pages (required).
        origin: world mm of voxel (0, 0, 0)'s centre (default the origin), or "center".
        flip: reverse the voxel order along x, y, z (a stack written mirrored).
        isocenter: (3,) world mm, or None (the box centre).
        dtype: floating dtype of the voxel data.
    Returns:
        The Volume: ``data[i, j, k]`` = the stored value at column i, row j, page k
        (not HU: render it with the ``"raw"`` density).
    """
    from xraypose.volume import check_voxel_values, volume_from_array

    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"TIFF stack path must be a string or path; got {type(path).__name__}")
    arr, aff = read_tiff_array(path, spacing, "CT", origin=origin, flip=flip)
    source = str(Path(path).expanduser())
    check_voxel_values(arr, source)
    return volume_from_array(arr, affine=aff, isocenter=isocenter, source=source, dtype=dtype)
