"""``xraypose track``'s partial file: the frames done so far, so that a crash (a kill, a power loss) loses none
and ``track --resume`` goes on from them.

``trajectory.partial.jsonl`` in the output folder, one JSON object a line: first the run's identity
(:func:`partial_header`: the inputs' fingerprints and the settings that change results), then one line per frame
once it stands, in order (:func:`xraypose.register.tracking.track_sequence`'s checkpoint records: the frame —
its pose, verdict, status, seconds, spread — and what the tracker holds after it).  The file is written whole
and atomically when a run begins or resumes (the header and the frames kept), then each frame's line is
appended and flushed to the disk (``fsync``): a frame costs one small write, whatever the sequence's length,
where rewriting the whole file would cost the frames done so far.  A crash while appending leaves at most
its last line cut short, and that line is dropped when the file is read.  The partial file is removed once the
final files (trajectory.csv, trajectory.json, overlay.gif) of the whole sequence are written; an interrupted
run (Ctrl-C) keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from xraypose.errors import InputError

#: The partial file's name in the output folder.
PARTIAL = "trajectory.partial.jsonl"
#: Its header's ``"xraypose"`` value (what the file is).
KIND = "track partial"


def inputs_identity(ct: str, frames) -> dict:
    """``{"ct": fingerprint, "frames": fingerprint}`` of ``track``'s CT and FRAMES arguments
    (:func:`xraypose.evaluate.input_fingerprint`: each file's size, time and SHA-256 up to 64 MiB); a folder's
    files named under the folder's name, a file by its name (the bundled ``sample`` CT: empty)."""
    from xraypose.run_record import input_fingerprint

    out = {}
    for f in frames:
        p = Path(f)
        prefix = f"{p.name}/" if p.is_dir() else ""
        out.update({f"{prefix}{k}": v for k, v in input_fingerprint(p).items()})
    return {"ct": input_fingerprint(Path(ct)), "frames": out}


def partial_header(n_frames: int, pose: str, inputs: dict, settings: dict) -> dict:
    """The partial file's first line: what it is, the sequence's ``n_frames``, the ``pose`` its frames hold (their
    ``camera_to_world``'s meaning), the ``inputs`` (:func:`inputs_identity`) and ``settings`` (the options that
    change results, as JSON: compared by a resume)."""
    return {"xraypose": KIND, "version": 1, "frames": n_frames, "pose": pose, "inputs": inputs,
            "settings": json.loads(json.dumps(settings, default=str))}


def _line(obj) -> bytes:
    """One JSON line (no NaN tokens: :func:`xraypose.io.jsonable`)."""
    from xraypose.io import jsonable

    return (json.dumps(jsonable(obj), allow_nan=False, separators=(",", ":")) + "\n").encode()


def read_partial(folder) -> tuple[dict, list] | None:
    """(header, frame records) of ``folder``'s partial file, or None when there is none.  A last line cut short
    (a crash while it was appended) is dropped; another unreadable line is refused naming the file."""
    from xraypose.io import restore_non_finite

    path = Path(folder) / PARTIAL
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"cannot resume {folder}: {path} cannot be read ({e.strerror or e})") from None
    rows = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        try:
            rows.append(restore_non_finite(json.loads(line)))
        except (ValueError, UnicodeDecodeError):
            if any(x.strip() for x in lines[i + 1:]):
                raise InputError(f"cannot resume {folder}: line {i + 1} of {path} is damaged; track again without "
                                 "--resume") from None
            break  # the last line, cut short by a crash (or the empty string after the final newline)
    if not rows or not isinstance(rows[0], dict) or rows[0].get("xraypose") != KIND:
        raise InputError(f"cannot resume {folder}: {path} is not a partial trajectory xraypose wrote; track again "
                         "without --resume")
    return rows[0], rows[1:]


def nothing_to_resume(folder) -> InputError:
    """The error of ``--resume`` into a ``folder`` without a partial file: what it holds instead."""
    doc = None
    try:
        doc = json.loads((Path(folder) / "trajectory.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if isinstance(doc, dict) and isinstance(doc.get("frames"), list):
        if doc.get("interrupted"):
            why = (f"its trajectory.json was interrupted ({len(doc['frames'])} frames) but has no {PARTIAL} beside "
                   "it (an xraypose before 2026-12-06, or the file removed) to rebuild the motion model from")
        else:
            why = f"its trajectory.json is complete ({len(doc['frames'])} frames)"
    elif not Path(folder).is_dir():
        why = "there is no such folder"
    else:
        why = "it holds no tracked frames"
    return InputError(f"nothing to resume in {folder}: {why}; track without --resume")


def check_resumable(folder, old: dict, new: dict) -> None:
    """Refuse to resume ``folder``'s partial run (header ``old``) under another identity (header ``new``): an
    input changed (the files named, :func:`xraypose.evaluate.input_changes`), or an option that changes results
    (named with both values, as ``evaluate --resume`` names them)."""
    from xraypose.run_record import input_changes, settings_differences

    for what, label in (("ct", "CT"), ("frames", "frames")):
        changes = input_changes((old.get("inputs") or {}).get(what) or {}, new["inputs"][what])
        if changes:
            raise InputError(f"cannot resume {folder}: its {label} changed since the earlier run "
                             f"({', '.join(changes)}), so its frames and the new ones would not belong together; "
                             "track without --resume (it starts again) or into another folder")
    diffs = settings_differences({"frames": old.get("frames"), **(old.get("settings") or {})},
                                  {"frames": new["frames"], **new["settings"]})
    if diffs:
        raise InputError(f"cannot resume {folder} with other settings: {'; '.join(diffs)}; resume with the earlier "
                         "settings, or track without --resume (it starts again) or into another folder")


class PartialFile:
    """The output folder's partial file of a run (module docstring): written whole (``header`` and the ``records``
    kept) when made, then :meth:`append` adds a frame's line; :meth:`remove` once the final files are written."""

    def __init__(self, folder: Path, header: dict, records: list):
        from xraypose.io import atomic_write_bytes

        self.path = Path(folder) / PARTIAL
        atomic_write_bytes(self.path, b"".join(_line(x) for x in [header, *records]))
        self.broken = False

    def append(self, record: dict) -> None:
        """Append a frame's ``record`` and flush it to the disk.  When it cannot be written (a full disk) a
        warning says so once and the run goes on without it (its final files are written as before)."""
        if self.broken:
            return
        try:
            with open(self.path, "ab") as f:
                f.write(_line(record))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.broken = True
            typer.echo(f"warning: {self.path} cannot be written ({e.strerror or e}): tracking goes on without it "
                       "(a crash now loses the frames tracked)", err=True)

    def remove(self) -> None:
        """Remove the partial file (the whole sequence's files are written)."""
        try:
            os.unlink(self.path)
        except OSError:
            pass
