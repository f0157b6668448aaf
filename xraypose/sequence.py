"""X-ray sequences (fluoroscopy, cine, biplane video): frames of one size, one camera, optional times.

:func:`read_sequence` reads

* a **multi-frame DICOM** (XA / RF cine): every frame, with the header's
  intrinsics and C-arm angles (those of the first frame) and the frame times
  from ``FrameTimeVector`` (0018,1065: the increment before each frame, ms)
  or ``FrameTime`` (0018,1063: one interval, ms).  The standard's first ``FrameTimeVector`` entry is 0 (no
  frame before the first); one > 0 is not used (a note names it): the first frame is at 0 s and the entries
  from the second on are the increments (a writer that gave every frame its duration, ``33, 33, 33``, reads
  as the same 33 ms apart);
* a **multi-page TIFF** or an ``(F, H, W)`` NPY: every page / slice;
* a **folder of frames** (PNG, TIFF, NPY, DICOM), sorted naturally by name
  (``frame2`` before ``frame10``; hidden files and sidecar ``.json`` skipped; other files left out are named in
  the sequence's ``notes``, which ``xraypose track`` prints) — a folder of DICOM frames
  each with a distinct InstanceNumber (0020,0013) in the order of those (a note says so where it differs),
  and DICOM frames of two series (SeriesInstanceUID) refused;
* a **list of files**, one frame each, in the order given (a list in text order that is not the natural
  one, ``f1 f10 f2`` as a shell glob gives it, or that names a file twice, or DICOM frames out of their
  InstanceNumbers' order or of two series, is refused).

Every frame must have the size of the first, and every frame the same
intrinsics and pixel kind (a frame of another size, or a folder whose frames carry other
intrinsics or another kind, is a one-line :class:`~xraypose.errors.InputError` naming the
frame).  The keywords of :func:`xraypose.xray.read_xray` (``sdd``,
``delx``, ``kind``, …) apply to every frame.

Times are in seconds from the first frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.io import check_input_path
from xraypose.xray import IMAGE_EXTENSIONS, XRay, read_xray

__all__ = ["XRaySequence", "read_sequence", "natural_key", "FRAME_EXTENSIONS"]

#: The longest frame interval (ms) a cine's FrameTime / FrameTimeVector may give: a day.
MAX_FRAME_INTERVAL_MS: float = 86_400_000.0

#: File endings taken as frames in a folder (and files without an ending: DICOM).
FRAME_EXTENSIONS = IMAGE_EXTENSIONS + (".dcm", ".dicom", ".ima")


def natural_key(name: str) -> tuple:
    """Sort key comparing runs of digits as numbers: ``f2 < f10``; case-insensitive otherwise."""
    return tuple((0, int(t), t) if t.isdecimal() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t)


@dataclass
class XRaySequence:
    """Frames of one X-ray sequence.

    Attributes:
        frames: one :class:`~xraypose.xray.XRay` per frame, each ``(H, W)``, all of one size.
        camera: the intrinsics shared by every frame (None when none was found or given).
        times: (F,) float64 seconds from the first frame, or None when the files give none.
        source: the file, folder or files read.
        notes: one-line remarks (where the times came from, ...).
    """

    frames: list
    camera: Camera | None
    times: torch.Tensor | None = None
    source: str = ""
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> XRay:
        return self.frames[i]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return tuple(self.frames[0].shape[-2:])  # type: ignore[return-value]

    @property
    def images(self) -> torch.Tensor:
        """(F, H, W) float32, the frames stacked."""
        return torch.stack([f.image for f in self.frames])

    @property
    def frame_interval_s(self) -> float | None:
        """Median interval between frames (s), or None without times."""
        if self.times is None or len(self.times) < 2:
            return None
        return float(torch.diff(self.times).median())


def _split(xr: XRay) -> list[XRay]:
    """(F, H, W) XRay → F XRays (the same camera, header and notes); F = 0 is an InputError."""
    img = xr.image
    if img.ndim == 2:
        return [xr]
    if img.shape[0] == 0:  # e.g. an (0, H, W) NPY: nothing to track
        raise InputError(f"{xr.source}: holds no frames (an array of shape {tuple(img.shape)}); "
                         "a sequence needs one at least")
    return [replace(xr, image=img[i].contiguous(), source=f"{xr.source}#{i}", header=dict(xr.header),
                    notes=list(xr.notes)) for i in range(img.shape[0])]


def _dicom_times(path: Path, n: int, notes: list) -> torch.Tensor | None:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - read_xray has read it already; no times then
        return None
    where = str(path)
    if "FrameTimeVector" in ds and ds.FrameTimeVector not in (None, ""):
        raw = ds.FrameTimeVector
        vals = list(raw) if not isinstance(raw, (str, bytes, int, float)) else [raw]
        try:
            v = [float(x) for x in vals]
        except (TypeError, ValueError):
            raise InputError(f"{where}: FrameTimeVector (0018,1065) is not a list of numbers: {raw!r}") from None
        if len(v) != n:
            raise InputError(f"{where}: FrameTimeVector (0018,1065) holds {len(v)} values for {n} frames")
        bad = next((i for i, x in enumerate(v) if not (math.isfinite(x) and (x > 0 or x == 0 and i == 0))), None)
        if bad is not None and not any(v):  # (frames at one moment: the frame interval read as 0 s)
            raise InputError(f"{where}: FrameTimeVector (0018,1065) is all zeros: its {n} frames would be at one "
                             "moment; each increment after the first must be a positive number of ms")
        if bad is not None:  # (the first is 0 by the standard: one > 0 is not used, noted below)
            raise InputError(f"{where}: FrameTimeVector (0018,1065) entry {bad + 1} of {n} is {v[bad]:g} ms; "
                             + ("the first increment must be a number >= 0" if bad == 0 else
                                "each increment after the first must be a positive number of ms"))
        if max(v) > MAX_FRAME_INTERVAL_MS:  # (their sum overflowed to inf: times written as null / "inf")
            raise InputError(f"{where}: FrameTimeVector (0018,1065) holds an interval of {max(v):g} ms; a frame "
                             f"interval is at most {MAX_FRAME_INTERVAL_MS:g} ms (a day)")
        notes.append("frame times from FrameTimeVector (0018,1065), ms increments")
        if v[0] > 0:  # the standard's first entry is 0: the times start at frame 1 all the same (noted)
            notes.append(f"FrameTimeVector (0018,1065) entry 1 is {v[0]:g} ms, not 0 as the standard gives it (the "
                         "first frame has no increment before it): not used, frame 1 is at 0 s and the increments "
                         "from entry 2 on are used")
        t = torch.cumsum(torch.tensor([0.0] + v[1:], dtype=torch.float64), 0) / 1000.0
        return t
    if "FrameTime" in ds and ds.FrameTime not in (None, ""):
        try:
            ft = float(ds.FrameTime)
        except (TypeError, ValueError):
            raise InputError(f"{where}: FrameTime (0018,1063) is not a number: {ds.FrameTime!r}") from None
        if not (math.isfinite(ft) and 0 < ft <= MAX_FRAME_INTERVAL_MS):
            raise InputError(f"{where}: FrameTime (0018,1063) must be a positive number of ms, at most "
                             f"{MAX_FRAME_INTERVAL_MS:g} (a day), got {ft!r}")
        notes.append(f"frame times from FrameTime (0018,1063) = {ft:g} ms")
        return torch.arange(n, dtype=torch.float64) * ft / 1000.0
    if n > 1:
        notes.append("no FrameTime / FrameTimeVector: frame times unknown")
    return None


def _is_frame_file(p: Path) -> bool:
    if p.name.startswith(".") or not p.is_file():
        return False
    suf = p.suffix.lower()
    return suf in FRAME_EXTENSIONS or suf == ""


#: The beginnings of the sequence notes a user must see where they look (``xraypose track`` prints them), not only in
#: trajectory.json: what changed which frames were read, or their order.
LEFT_OUT = "files in the folder not read as frames"
INSTANCE_ORDER = "frames ordered by their DICOM InstanceNumber (0020,0013), not by file name"
NOTES_TO_SHOW = (INSTANCE_ORDER, LEFT_OUT)


def sequence_notes_to_show(notes) -> list:
    """The ``notes`` (:attr:`XRaySequence.notes`) to print: those beginning with one of :data:`NOTES_TO_SHOW`."""
    return [n for n in notes if n.startswith(NOTES_TO_SHOW)]


def _left_out_note(entries) -> list:
    """[a note naming the files among a frames folder's ``entries`` (its listing, Paths) that are not read as
    frames] (a README, a frame saved as .jpg), or [] — read silently, a frame stored in another format would vanish
    from the sequence unseen.  Hidden files, subfolders and ``.json`` files (sidecars, read with their frames) are
    not named."""
    other = sorted((f.name for f in entries if f.is_file() and not f.name.startswith(".")
                    and f.suffix.lower() != ".json" and not _is_frame_file(f)), key=natural_key)
    if not other:
        return []
    shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
    return [f"{LEFT_OUT} (not ending in {', '.join(FRAME_EXTENSIONS)} or without an ending): {len(other)}, {shown}"]


def read_sequence(source, **kwargs) -> XRaySequence:
    """Read an X-ray sequence (module docstring).

    Args:
        source: a multi-frame file (DICOM, multi-page TIFF, (F, H, W) NPY), a folder of
            frames, or a list of frame files.
        **kwargs: :func:`xraypose.xray.read_xray` keywords for every frame (not ``frames``).
    Returns:
        :class:`XRaySequence`.
    Raises:
        InputError: no frames, a frame of another size, other intrinsics or another pixel kind, a multi-frame file
            among several files, bad frame times, and whatever :func:`read_xray` refuses.
    """
    if "frames" in kwargs:
        raise InputError("read_sequence reads every frame; 'frames' is not an option here")
    if isinstance(source, (list, tuple)):
        paths = [Path(s).expanduser() for s in source]
        if not paths:
            raise InputError("a sequence needs at least one frame (no file given)")
        if len(paths) == 1:
            return read_sequence(paths[0], **kwargs)
        _check_file_order(paths)
        where = f"{len(paths)} files ({paths[0].name} … {paths[-1].name})"
        return _from_files(paths, where, kwargs)
    p = Path(source).expanduser()
    check_input_path(p, "sequence", f"sequence not found: {p}")
    if p.is_dir():
        entries = list(p.iterdir())  # listed once: the frames, and what is left out (named in a note)
        files = sorted((f for f in entries if _is_frame_file(f)), key=lambda f: natural_key(f.name))
        if not files:
            raise InputError(f"{p}: the folder holds no frames (files ending in {', '.join(FRAME_EXTENSIONS)} "
                             "or DICOM files without an ending)")
        files, note = _instance_order(files)
        seq = _from_files(files, str(p), kwargs)
        seq.notes += ([note] if note else []) + _left_out_note(entries)
        return seq
    xr = read_xray(p, frames="all", **kwargs)
    frames = _split(xr)
    notes: list = []
    times = None
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        times = _dicom_times(p, len(frames), notes)
    return XRaySequence(frames=frames, camera=xr.camera, times=times, source=str(p), notes=notes)


def _instance_numbers(files: list) -> list | None:
    """The DICOM InstanceNumber (0020,0013) of every frame file where each is a DICOM with a distinct one, else
    None.  DICOM frames of two series (SeriesInstanceUID: two runs exported into one folder, tracked as one) are an
    InputError."""
    import pydicom

    numbers: list | None = []
    series = None
    for f in files:
        try:
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                raise ValueError("not DICOM")
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True,
                                 specific_tags=["InstanceNumber", "SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM (read_xray says so where it is none of the frames'): names' order
            numbers = None
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if uid and series is None:
            series = (uid, f)
        elif uid and uid != series[0]:
            raise InputError(f"{f}: frame of the DICOM series {uid} among frames of the series {series[0]} "
                             f"({series[1].name}); a sequence is one series (move each run's frames "
                             "into a folder of its own)")
        try:
            numbers = None if numbers is None else numbers + [int(ds.InstanceNumber)]
        except Exception:  # noqa: BLE001 - none, or not a number: names' order
            numbers = None
    return None if numbers is None or len(set(numbers)) != len(numbers) else numbers


def _instance_order(files: list) -> tuple[list, str | None]:
    """(files, note): a folder's frames in the order of their DICOM InstanceNumber (0020,0013) where every frame is
    a DICOM with a distinct one (a PACS export names its files by UID or in an order of its own: sorted by name, the
    frames were tracked shuffled), the note saying so where that is not their names' order; else as they are."""
    numbers = _instance_numbers(files)
    if numbers is None:
        return files, None
    ordered = [f for _, f in sorted(zip(numbers, files), key=lambda nf: nf[0])]
    if ordered == files:
        return files, None
    return ordered, INSTANCE_ORDER


def _check_file_order(paths: list) -> None:
    """Refuse a list of frame files that names one file twice (``f1.png frames/*.png``: the frame was tracked twice,
    as if the C-arm had stood still), or in text order but not in natural order (``f1 f10 f11 f2``: what a shell
    glob such as ``frames/*.png`` gives; tracked in that order, frame 10 came before frame 2 without a word), or
    DICOM frames out of their InstanceNumbers' order, or of two series (:func:`_instance_numbers`)."""
    seen: dict = {}
    for i, p in enumerate(paths):
        key = p.resolve()
        if key in seen:
            raise InputError(f"{p} is given twice (frames {seen[key]} and {i}); a sequence takes each frame once")
        seen[key] = i
    numbers = _instance_numbers(paths)
    i = None if numbers is None else next((i for i in range(len(paths) - 1) if numbers[i] > numbers[i + 1]), None)
    if i is not None:  # (a glob of UID-named files: their names' order is none)
        raise InputError(f"{paths[i]} (InstanceNumber {numbers[i]}) is given before {paths[i + 1]} (InstanceNumber "
                         f"{numbers[i + 1]}): DICOM frames are tracked in the order given; give them in the order of "
                         "their InstanceNumber (0020,0013), or their folder (ordered by it)")
    texts = [str(p) for p in paths]
    if texts != sorted(texts):
        return  # an order of the user's own: kept
    i = next((i for i in range(len(paths) - 1) if natural_key(texts[i]) > natural_key(texts[i + 1])), None)
    if i is not None:
        raise InputError(f"{paths[i]} is given before {paths[i + 1]}: the frame files are in text order (a shell "
                         "glob's), not their frames' order; give their folder (sorted naturally: f2 before f10) or "
                         "the files in frame order (e.g. $(ls -v frames/*.png))")


def _from_files(paths: list, where: str, kwargs: dict) -> XRaySequence:
    frames: list[XRay] = []
    first = None
    for f in paths:
        xr = read_xray(f, frames="all", **kwargs)
        if xr.image.ndim == 3 and xr.image.shape[0] > 1:
            raise InputError(f"{f}: holds {xr.image.shape[0]} frames; a sequence of several files takes one "
                             "frame per file (give a multi-frame file alone)")
        xr = _split(xr)[0]
        xr.source = str(f)
        if first is None:
            first = xr
        else:
            if xr.shape != first.shape:
                raise InputError(f"{f}: frame {len(frames)} is {xr.shape[0]} × {xr.shape[1]} pixels but the first "
                                 f"frame {Path(first.source).name} is {first.shape[0]} × {first.shape[1]}; every "
                                 "frame of a sequence must have one size")
            if xr.kind != first.kind:  # e.g. one frame's sidecar says "attenuation": its contrast taken inverted
                raise InputError(f"{f}: frame {len(frames)} holds {xr.kind!r} pixels but the first frame "
                                 f"{Path(first.source).name} {first.kind!r} (its sidecar or header); every frame of "
                                 "a sequence has one pixel kind (--kind sets it for all)")
            _check_pixel_type(xr, first, f, len(frames))
            if xr.camera != first.camera:
                raise InputError(f"{f}: frame {len(frames)} has other intrinsics than the first frame "
                                 f"{Path(first.source).name} ({_cam_text(xr.camera)} vs {_cam_text(first.camera)}); "
                                 "a sequence has one camera")
        frames.append(xr)
    return XRaySequence(frames=frames, camera=first.camera, times=None, source=where,
                        notes=["frame times unknown (separate files)"] if len(frames) > 1 else [])


def _pixel_type(xr: XRay) -> str | None:
    v = xr.header.get("pixel_type")
    return None if v is None else str(v["value"])


def _check_pixel_type(xr: XRay, first: XRay, f, i: int) -> None:
    """Refuse a frame stored as other integers than the first frame (8-bit among 16-bit frames: its grey levels
    on a scale 257× apart, so raw intensities and their log disagree from frame to frame), or as integers beside
    floats.  Floats of another width hold the same values and are accepted."""
    a, b = _pixel_type(xr), _pixel_type(first)
    if a is None or b is None or a == b:
        return
    if np.issubdtype(np.dtype(a), np.floating) and np.issubdtype(np.dtype(b), np.floating):
        return
    raise InputError(f"{f}: frame {i} stores {a} pixels but the first frame {Path(first.source).name} {b}; every "
                     "frame of a sequence must have one bit depth (export them alike)")


def _cam_text(c: Camera | None) -> str:
    if c is None:
        return "none"
    return f"sdd {c.sdd:g} mm, pixel {c.delx:g} × {c.dely:g} mm, offset ({c.x0:g}, {c.y0:g}) mm"
