"""Frames of a multi-frame X-ray file: one chosen, reduced, or all kept."""

from __future__ import annotations

import numpy as np

from xraypose.errors import InputError
from xraypose.xray.record import Provenance

__all__ = ["reduce_frames"]


def _check_frames_of_one(frames, src: str) -> None:
    """Refuse ``frames`` for an image of one frame unless it names that frame (0 or -1) or a reduction."""
    if isinstance(frames, str):
        if frames.lower() not in ("max", "sum", "mean"):
            raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")
        return
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)):
        raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")
    if not -1 <= int(frames) < 1:
        raise InputError(f"{src}: frame {int(frames)} does not exist (1 frame)")


def reduce_frames(arr: np.ndarray, frames, hdr: Provenance, src: str, where: str) -> np.ndarray:
    """One image ``(H, W)`` from a file's ``(H, W)`` or ``(F, H, W)`` pixels: frame ``frames`` (an index), their
    "max", "sum" or "mean", or with "all" every frame ``(F, H, W)``; ``where`` names the frame count's source."""
    all_frames = isinstance(frames, str) and frames.lower() == "all"
    if arr.ndim == 2:  # one frame: frames is still checked (frame 5 of one, a misspelt reduction: named, not passed over)
        if not all_frames:
            _check_frames_of_one(frames, src)
        return arr[None] if all_frames else arr
    if arr.ndim != 3:
        raise InputError(f"{src}: expected a 2D image or a stack of frames, got an array of shape {arr.shape}")
    n = arr.shape[0]
    if isinstance(frames, str):
        f = frames.lower()
        if f == "all":  # every frame, (F, H, W): a sequence (xraypose.sequence)
            hdr.set("frames", f"all {n}", "user")
            return arr
        if f == "max":
            out = arr.max(axis=0)
        elif f == "sum":
            out = arr.astype(np.float64).sum(axis=0)
        elif f == "mean":
            out = arr.astype(np.float64).mean(axis=0)
        else:
            raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")
        hdr.set("frames", f"{f} of {n}", "user" if frames != 0 else "default")
        return out
    if isinstance(frames, bool) or (isinstance(frames, float) and not frames.is_integer()):  # int() took them
        raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")
    try:
        i = int(frames)
    except (TypeError, ValueError):
        raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}") from None
    if not -n <= i < n:
        raise InputError(f"{src}: frame {i} does not exist ({n} frames)")
    hdr.set("frames", f"frame {i} of {n}", "default" if frames == 0 else "user")
    if frames == 0:
        # no command-line option picks a frame: say where one can (track reads them all)
        hdr.note(f"multi-frame image ({n} frames, {where}): frame 0 used; for 'max', 'sum' or another index set "
                 "frames= (Python read_xray, or the X-ray's settings in case.json); `xraypose track` reads every frame")
    return arr[i]
