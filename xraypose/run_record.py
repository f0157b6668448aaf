"""What a run was made from and with, and what changed since: the record a resume compares.

``xraypose evaluate`` writes it into run.json and ``xraypose track`` into its partial file
(:mod:`xraypose.cli.track_partial`); ``--resume`` goes on only when the inputs and the settings are those recorded,
and otherwise refuses, naming what changed.

* :func:`input_fingerprint` — each input file's size, modification time and (up to :data:`HASH_LIMIT` bytes) SHA-256;
  :func:`input_changes` names the files modified, added or removed between two fingerprints;
* :func:`settings_differences` — the settings that differ between two records, registration's named by their
  command-line options, those recorded before they existed taken at the value that reproduces the old run.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["input_fingerprint", "input_changes", "settings_differences", "HASH_LIMIT", "INPUTS", "PREPROCESSING"]


def _input_files(root: Path) -> list[Path]:
    """The files an evaluation may read from ``root``: the file itself (HDF5), or a case folder's top-level
    files (the CT, its .raw, labels, case.json, fiducials.csv, poses.json, rig.json), ``xrays/``'s files
    (X-rays and sidecars) and everything under a DICOM ``ct/`` folder; hidden files left out."""
    if not root.is_dir():
        return [root]
    files = [p for p in root.iterdir() if p.is_file()]
    if (root / "xrays").is_dir():
        files += [p for p in (root / "xrays").iterdir() if p.is_file()]
    if (root / "ct").is_dir():
        files += [p for p in (root / "ct").rglob("*") if p.is_file()]
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts))


#: Files up to this size (bytes) are fingerprinted by their content as well (:func:`input_fingerprint`).
HASH_LIMIT = 64 * 2**20


def input_fingerprint(source) -> dict:
    """``{path relative to the source: [size in bytes, modification time in ns, SHA-256 or None]}`` of the files an
    evaluation reads from ``source`` (a case folder or a dataset file; the file's own name for a file).  The
    SHA-256 (hex) of files up to :data:`HASH_LIMIT` bytes (X-rays, sidecars, a case's CT); a larger file (a
    multi-GB HDF5) costs one ``stat``.  Recorded in run.json and compared by a resume: an X-ray replaced, added
    or removed is named (:func:`input_changes`).  A file whose content is known is compared by it (touched,
    or copied back without its times: the same); one too large, by its size and time (touched: changed, a
    resume refused when in doubt, never mixed)."""
    import hashlib

    root = Path(source)
    out = {}
    for p in _input_files(root):
        try:
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size <= HASH_LIMIT else None
        except OSError:  # gone between the listing and now: read as removed
            continue
        out[p.name if p == root else p.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns, digest]
    return out


def _same_file(a, b) -> bool:
    """Whether two :func:`input_fingerprint` entries are one file: the same size and, where both know it,
    the same content; else the same modification time (entries of run.json files from before the content
    was recorded hold [size, time] only)."""
    if not (isinstance(a, list) and isinstance(b, list) and len(a) >= 2 and len(b) >= 2):
        return a == b
    if a[0] != b[0]:
        return False
    if len(a) >= 3 and len(b) >= 3 and a[2] is not None and b[2] is not None:
        return a[2] == b[2]
    return a[1] == b[1]


def input_changes(old: dict, new: dict, limit: int = 3) -> list[str]:
    """What differs between two :func:`input_fingerprint` s: ``"xrays/a.png modified"``, ``"... added"``,
    ``"... removed"`` (at most ``limit``, then ``"N more"``)."""
    changes = ([f"{k} modified" for k in sorted(old.keys() & new.keys()) if not _same_file(old[k], new[k])]
               + [f"{k} added" for k in sorted(new.keys() - old.keys())]
               + [f"{k} removed" for k in sorted(old.keys() - new.keys())])
    return changes[:limit] + ([f"{len(changes) - limit} more"] if len(changes) > limit else [])


#: run.json's key of the inputs' fingerprint (:func:`input_fingerprint`).
INPUTS = "inputs"
#: run.json's key of each case folder X-ray's preprocessing order (:func:`preprocessing_recipe`).
PREPROCESSING = "preprocessing"


# Names of the registration settings in messages (the CLI's options where there is one).
_SETTING_NAMES = {"similarity": "--similarity", "lr_rot": "--lr-rot", "lr_trans": "--lr-trans",
                  "schedule": "--schedule", "density": "--density", "bone_multiplier": "--bone-multiplier",
                  "levels": "--levels/--fast/--metal", "seed": "--seed", "parameterization": "--parameterization",
                  "foreign_steps": "--metal-steps/--no-metal-steps", "capture_starts": "--capture-starts",
                  "match_intensity": "--match-intensity", "match_capture": "--match-intensity",
                  "shift_search": "--shift-search/--no-shift-search"}
_NOT_COMPARED = {"num_threads"}  # speed only: may change between a run and its resume
#: Registration settings added after runs were recorded, with the value that reproduces how a run
#: recorded without them registered (a resume compares against these).
_ADDED_SETTINGS = {"foreign_steps": None, "capture_starts": 1, "match_intensity": None, "match_capture": False,
                   "shift_search": None}


def _short(v) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _with_level_defaults(levels):
    """Recorded levels with the fields a level had by default filled in: a run.json written before a
    field existed (e.g. ``robust_c``) compares equal when the run used what is now that default."""
    from dataclasses import fields

    from xraypose.register import Level

    if not isinstance(levels, list):
        return levels
    defaults = {f.name: f.default for f in fields(Level) if f.name != "size"}
    return [{**defaults, **lv} if isinstance(lv, dict) else lv for lv in levels]


#: At most this many level fields named in a resume's refusal (the rest counted).
_LEVEL_FIELDS_SHOWN = 8


def _full(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _level_differences(a, b) -> str:
    """Two recorded schedules (lists of level dicts, defaults filled in) compared field by field: ``levels[2].iterations
    (40 then, 60 now)``, a level only one has named whole (``levels[3] (none then, {...} now)``), at most
    :data:`_LEVEL_FIELDS_SHOWN` named and the rest counted; values in full.  Not lists of dicts (a damaged record):
    the two whole."""
    if not (isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) for x in a + b)):
        return f"{_full(a)} then, {_full(b)} now"
    from dataclasses import fields

    from xraypose.register import Level

    order = [f.name for f in fields(Level)]  # the fields named in the Level's order (the records' keys are sorted)
    out = [f"{len(a)} level{'s' if len(a) != 1 else ''} then, {len(b)} now"] if len(a) != len(b) else []
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            out.append(f"levels[{i}] ({'none' if i >= len(a) else _full(a[i])} then, "
                       f"{'none' if i >= len(b) else _full(b[i])} now)")
            continue
        out += [f"levels[{i}].{f} ({_full(a[i].get(f))} then, {_full(b[i].get(f))} now)"
                for f in dict.fromkeys([*order, *b[i], *a[i]]) if a[i].get(f) != b[i].get(f)]
    more = len(out) - _LEVEL_FIELDS_SHOWN
    return ", ".join(out[:_LEVEL_FIELDS_SHOWN]) + (f" and {more} more level field(s)" if more > 0 else "")


def settings_differences(old: dict, new: dict) -> list[str]:
    """The settings that differ between a run's record ``old`` and a resume's ``new`` (run.json's, or track's
    partial file's), each as ``"NAME (old then, new now)"`` — the schedule as ``"--levels/--fast/--metal:
    levels[2].iterations (40 then, 60 now), ..."`` (each level field that differs, in full: the two schedules cut
    at 60 characters named none); registration settings named by their options, those recorded before they
    existed taken at their defaults; inputs and preprocessing are compared elsewhere
    (:func:`input_changes`).  Used by ``evaluate --resume`` and ``track --resume``."""
    diffs = []
    for k in dict.fromkeys([*old, *new]):
        if k == "registration":
            a, b = old.get(k) or {}, new.get(k) or {}
            a = {**{k: v for k, v in _ADDED_SETTINGS.items() if k in b}, **a}  # recorded before they existed
            if "levels" in a or "levels" in b:
                a, b = {**a, "levels": _with_level_defaults(a.get("levels"))}, \
                    {**b, "levels": _with_level_defaults(b.get("levels"))}
            for f in dict.fromkeys([*a, *b]):
                if f not in _NOT_COMPARED and a.get(f) != b.get(f):
                    name = _SETTING_NAMES.get(f, f"registration setting {f}")
                    if f == "levels":  # the fields that differ, in full (the two schedules cut at 60 said nothing)
                        diffs.append(f"{name}: {_level_differences(a.get(f), b.get(f))}")
                    else:
                        diffs.append(f"{name} ({_short(a.get(f))} then, {_short(b.get(f))} now)")
        elif k == "source_path" and k not in old:
            continue  # recorded before the path was
        elif k in (INPUTS, PREPROCESSING):
            continue  # compared by _prepare_output (input_changes: the files named; not at all before it existed)
        elif old.get(k) != new.get(k):
            diffs.append(f"{k} ({_short(old.get(k))} then, {_short(new.get(k))} now)")
    return diffs
