"""How big (and how small) an input may be.

Sizes declared in a file's header (a PNG of 10¹⁰ pixels, a CT header of
20000³ voxels, an NPY header) are checked *before* anything is allocated, so a
bad header gives an error naming the size instead of ``MemoryError``.  The
minimum sizes are what registration and training need.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["MAX_XRAY_PIXELS", "XRAY_BYTES_PER_PIXEL", "MIN_REGISTER_PIXELS", "MIN_CT_VOXELS_PER_AXIS", "memory_bytes", "human_bytes",
           "dims", "check_allocation", "check_xray_size", "check_registrable_ct", "check_registrable_xray",
           "itemsize_from_text", "DRR_BYTES_PER_PIXEL", "MAX_SAMPLES_PER_RAY", "check_drr_size", "check_drr_step",
           "check_memory"]

#: X-ray frames with more pixels (rows × columns) are refused: 10⁸, e.g. 10000 × 10000; real
#: detectors have at most a few 10⁷.  A multi-frame file's frames together need only fit this machine's memory
#: (:data:`XRAY_BYTES_PER_PIXEL` a pixel): a cine of 100 frames of 1024² holds 1.05·10⁸ pixels.
MAX_XRAY_PIXELS = 100_000_000
#: Memory (bytes) a multi-frame X-ray's pixel takes while it is read: its decoded value, its float32 copy,
#: a rescale's and its frame's own copy.
XRAY_BYTES_PER_PIXEL = 16
#: Registration needs at least this many rows and columns of X-ray (after the collimator crop).
MIN_REGISTER_PIXELS = 16
#: Registration and training need at least this many voxels along every CT axis.
MIN_CT_VOXELS_PER_AXIS = 4
#: Memory (bytes) a DRR takes per pixel while it is rendered: the fused CPU kernel's ray geometry (14
#: doubles), ray order, outputs and the pixel grid (about 150 measured on a 4096² DRR of the sample CT).
DRR_BYTES_PER_PIXEL = 160
#: Trilinear samples along one ray at most (``render --samples``' range): a smaller step is refused.
MAX_SAMPLES_PER_RAY = 100_000


def memory_bytes() -> int:
    """This machine's physical memory in bytes (2⁴⁰ when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def dims(shape) -> str:
    """``(12, 12, 3)`` → ``'12 × 12 × 3'``."""
    return " × ".join(str(int(n)) for n in shape)


def itemsize_from_text(text: str, default: int = 8) -> int:
    """Bytes per value from a type name such as '16-bit signed integer' or 'float32' (``default`` if unknown)."""
    m = re.search(r"(\d+)[- ]?bit", text) or re.search(r"(?:int|float|uint)(\d+)", text)
    return max(1, int(m.group(1)) // 8) if m else default


def check_allocation(shape, bytes_per_item: float, what: str, unit: str = "voxels") -> None:
    """Refuse a ``shape`` whose ``bytes_per_item`` copy would not fit this machine's memory.

    Args:
        shape: the sizes the header declares.
        bytes_per_item: bytes xraypose needs per element (the file's and its own copies).
        what: the file, for the message.
    """
    n = math.prod(int(s) for s in shape)
    need, have = n * bytes_per_item, memory_bytes()
    if need > have:
        raise InputError(f"{what}: the header declares {dims(shape)} {unit} ({n:.3g}), which need "
                         f"{human_bytes(need)} of memory; this machine has {human_bytes(have)}")


def check_xray_size(rows: int, cols: int, what: str, frames: int = 1) -> None:
    """Refuse an X-ray header declaring frames of more than :data:`MAX_XRAY_PIXELS` pixels, or more frames than
    this machine's memory holds (:func:`check_allocation`), before decoding."""
    n = int(rows) * int(cols)
    if n > MAX_XRAY_PIXELS:
        size = f"frames of {rows} × {cols}" if frames > 1 else f"{rows} × {cols}"
        raise InputError(f"{what}: the header declares {size} pixels ({n:.3g}); X-rays are at most "
                         f"{MAX_XRAY_PIXELS:.0e} pixels (a damaged file?)")
    if frames > 1:
        check_allocation((frames, rows, cols), XRAY_BYTES_PER_PIXEL, what, unit="pixels")


def check_registrable_ct(volume: Volume) -> None:
    """Refuse a CT too small to register to or train on (fewer than :data:`MIN_CT_VOXELS_PER_AXIS`
    voxels along an axis)."""
    if min(volume.shape) < MIN_CT_VOXELS_PER_AXIS:
        raise InputError(f"{volume.source or 'the CT'} is too small to register to: {dims(volume.shape)} voxels "
                         f"(at least {MIN_CT_VOXELS_PER_AXIS} along every axis)")


def check_registrable_xray(shape, what: str, crop: int = 0) -> None:
    """Refuse an X-ray with fewer than :data:`MIN_REGISTER_PIXELS` rows or columns left after ``crop``."""
    h, w = (int(s) - 2 * int(crop) for s in shape[-2:])
    if min(h, w) < MIN_REGISTER_PIXELS:
        left = (f" ({h} × {w} after --crop {crop})" if min(h, w) > 0 else
                f" and --crop {crop} takes {2 * int(crop)} pixels from each axis: nothing is left") if crop else ""
        raise InputError(f"{what} is too small to register: {dims(shape[-2:])} pixels{left}; "
                         f"at least {MIN_REGISTER_PIXELS} × {MIN_REGISTER_PIXELS} are needed")


def check_memory(need: float, what: str, remedy: str, purpose: str = "") -> None:
    """Refuse ``need`` bytes that this machine's memory cannot hold: ``WHAT needs about N of memory[PURPOSE]; this
    machine has M: REMEDY``."""
    have = memory_bytes()
    if need > have:
        raise InputError(f"{what} needs about {human_bytes(need)} of memory{purpose}; this machine has "
                         f"{human_bytes(have)}: {remedy}")


def check_drr_size(height: int, width: int) -> None:
    """Refuse a ``height`` × ``width`` DRR whose rendering (:data:`DRR_BYTES_PER_PIXEL` a pixel) would not fit
    this machine's memory, saying how much it would need."""
    check_memory(int(height) * int(width) * DRR_BYTES_PER_PIXEL, f"a {dims((height, width))} DRR",
                 "render fewer pixels", " to render")


def check_drr_step(step: float, volume: Volume) -> None:
    """Refuse a trilinear ``step`` (mm) that would take more than :data:`MAX_SAMPLES_PER_RAY` samples along the
    longest chord through ``volume`` (its box's longest diagonal), naming the smallest step allowed."""
    if not step > 0:
        return  # render() refuses it, naming it
    c = volume.corners
    longest = float((c[:, None] - c[None]).norm(dim=-1).max())
    if longest / step > MAX_SAMPLES_PER_RAY:
        e = 10.0 ** (math.floor(math.log10(longest / MAX_SAMPLES_PER_RAY)) - 1)  # rounded up to 2 digits
        least = math.ceil(longest / MAX_SAMPLES_PER_RAY / e) * e
        raise InputError(f"a step of {step:g} mm takes {longest / step:.3g} samples along the longest ray through the "
                         f"CT ({longest:.4g} mm); at most {MAX_SAMPLES_PER_RAY:,} are allowed: use a step of at "
                         f"least {least:.2g} mm")
