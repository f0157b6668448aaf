"""Frames of a multi-frame X-ray file: one chosen, reduced, or all kept; the pixel conventions every reader
shares (bright-is-low inverted, a grey picture saved in colour)."""

from __future__ import annotations

import numpy as np

from xraypose.errors import InputError
from xraypose.xray.record import Provenance

__all__ = ["reduce_frames", "inverted_to_bright", "grey_of_rgb", "check_fits_float32", "opaque_alpha",
           "count_not_opaque", "note_alpha_ignored"]


def _frame_choice(frames) -> int | str:
    """``frames`` as a frame index (int) or "all", "max", "sum", "mean" (lower case); anything else — another
    word, a bool, a fraction (``int()`` took True and 1.5 as frame 1) — an InputError."""
    if isinstance(frames, str) and frames.lower() in ("all", "max", "sum", "mean"):
        return frames.lower()
    if not isinstance(frames, (str, bool, np.bool_)) and not (isinstance(frames, float) and not frames.is_integer()):
        try:
            return int(frames)
        except (TypeError, ValueError):
            pass
    raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")


def reduce_frames(arr: np.ndarray, frames, hdr: Provenance, src: str, where: str) -> np.ndarray:
    """One image ``(H, W)`` from a file's ``(H, W)`` or ``(F, H, W)`` pixels: frame ``frames`` (an index), their
    "max", "sum" or "mean", or with "all" every frame ``(F, H, W)``; ``where`` names the frame count's source.
    ``frames`` is checked for an image of one frame too (frame 5 of one, a misspelt reduction: named)."""
    if arr.ndim not in (2, 3):
        raise InputError(f"{src}: expected a 2D image or a stack of frames, got an array of shape {arr.shape}")
    f = _frame_choice(frames)
    n = 1 if arr.ndim == 2 else arr.shape[0]
    if isinstance(f, int) and not -n <= f < n:
        raise InputError(f"{src}: frame {f} does not exist ({n} frame{'s' if n != 1 else ''})")
    if arr.ndim == 2:
        return arr[None] if f == "all" else arr
    if f == "all":  # every frame, (F, H, W): a sequence (xraypose.sequence)
        hdr.set("frames", f"all {n}", "user")
        return arr
    if isinstance(f, str):
        out = arr.max(axis=0) if f == "max" else getattr(arr.astype(np.float64), f)(axis=0)  # sum, mean
        hdr.set("frames", f"{f} of {n}", "user")
        return out
    hdr.set("frames", f"frame {f} of {n}", "default" if frames == 0 else "user")
    if frames == 0:
        # no command-line option picks a frame: say where one can (track reads them all)
        hdr.note(f"multi-frame image ({n} frames, {where}): frame 0 used; for 'max', 'sum' or another index set "
                 "frames= (Python read_xray, or the X-ray's settings in case.json); `xraypose track` reads every frame")
    return arr[f]


def inverted_to_bright(img: np.ndarray, stored_range: tuple[float, float] | None, range_name: str,
                       ) -> tuple[np.ndarray, str]:
    """An image stored bright-is-low (DICOM MONOCHROME1, TIFF WhiteIsZero) inverted so that high values are bright:
    ``v' = hi + lo − v`` over ``stored_range`` (the file's declared range, called ``range_name``) when known, else
    over the image's own range.  Returns the image (NumPy's result type of the arithmetic) and how, for the note."""
    if stored_range is not None:
        lo, hi = stored_range
        how = f"v' = {hi:g}{f' + {lo:g}' if lo else ''} − v (the range of {range_name})"
    else:
        lo, hi = float(img.min()), float(img.max())
        how = "v' = max + min − v (the image's range)"
    return (hi + lo) - img, how


def grey_of_rgb(a: np.ndarray, what: str, hint: str = "") -> np.ndarray:
    """The first channel of a colour picture ``(..., C)`` (C >= 3: RGB, RGBA; a channel beyond the third is not
    read) whose red, green and blue are equal — a grey X-ray saved in colour; its colour channels differing,
    ``InputError("{what}; X-rays must be greyscale{hint}")``.  The PNG/TIFF, NPY and DICOM readers take it alike."""
    c = a[..., :3]
    if not (np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(c[..., 0], c[..., 2])):
        raise InputError(f"{what}; X-rays must be greyscale{hint}")
    return np.ascontiguousarray(a[..., 0])


def opaque_alpha(dtype) -> float:
    """An alpha channel's full opacity by its type: the integer type's maximum (255 for uint8, 65535 for uint16),
    1.0 for floats (an alpha in [0, 1])."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def count_not_opaque(alpha: np.ndarray, opaque: float) -> int:
    """How many pixels of an alpha channel are not fully opaque (alpha < ``opaque``): the PNG/TIFF and NPY
    readers count alike."""
    return int(np.count_nonzero(np.asarray(alpha) < opaque))


def note_alpha_ignored(hdr: Provenance, clear: int, total: int, opaque: float = 255) -> None:
    """The note that ``clear`` of ``total`` pixels were not opaque (alpha < ``opaque``) and their grey values are
    registered all the same; no note when ``clear`` is 0 (an opaque alpha says nothing).  Every reader's one note
    (:data:`xraypose.xray.record.IGNORED_IMAGE_NOTES`: the command line prints it)."""
    if clear:
        hdr.note(f"alpha channel ignored: {clear} of {total} pixels are transparent or partly so "
                 f"(alpha < {opaque:g}); their grey values are registered as they are (xraypose takes no mask from "
                 "alpha: crop them out, or save the X-ray without alpha)")


def check_fits_float32(arr: np.ndarray, what: str) -> None:
    """Refuse a float pixel whose value does not fit float32 (an NPY's or a DICOM DoubleFloatPixelData's: it would
    turn into infinity); NaN and infinite ones are refused later, with their count."""
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 4 and arr.size:
        finite = arr[np.isfinite(arr)]
        big = float(np.abs(finite).max()) if finite.size else 0.0
        if big > float(np.finfo(np.float32).max):
            raise InputError(f"{what}: pixel value {big:g} does not fit float32 (at most "
                             f"{float(np.finfo(np.float32).max):.3g})")
