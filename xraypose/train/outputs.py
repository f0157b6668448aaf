"""The files of a training run (``OUTPUT``, ``OUTPUT.last.pt``, ``OUTPUT.log.jsonl``, ``OUTPUT.crash.pt``)
and what :func:`xraypose.train.train` returns."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from xraypose.errors import InputError

__all__ = ["TrainResult", "output_paths", "check_output_name", "check_writable", "check_not_an_input", "truncate_log",
           "jsonable"]


@dataclass
class TrainResult:
    """What a training run wrote and did: files, steps, images, renders, seconds, the best validation."""

    model_path: Path
    last_path: Path
    log_path: Path
    steps: int
    images_seen: int
    renders: int
    elapsed_s: float
    images_per_s: float
    best_val: dict | None


def output_paths(output) -> dict:
    """Files written for ``output``: best model, last state, metrics log, crash dump."""
    p = Path(output)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return {"best": p, "last": p.with_name(stem + ".last.pt"), "log": p.with_name(stem + ".log.jsonl"),
            "crash": p.with_name(stem + ".crash.pt")}


def check_output_name(output) -> None:
    """InputError when ``output`` is named as a companion of a model (``model.last.pt``, ``model.crash.pt``): its
    own companions would be ``model.last.last.pt``, ... (and ``--resume`` of ``-o model.last.pt`` looked for
    ``model.last.last.pt``, finding nothing to resume)."""
    p = Path(output)
    for kind, what in (("last", "training state"), ("crash", "crash dump")):
        end = f".{kind}.pt"
        if p.name.endswith(end) and len(p.name) > len(end):
            model = p.with_name(p.name[: -len(end)] + ".pt")
            raise InputError(f"output {p} is named as a model's {what} (NAME{end}): its own would be "
                             f"{output_paths(p)[kind].name}; give the model's name, -o {model} (its {what} is "
                             f"written beside it as {p.name}" + (", and --resume continues from it)" if kind == "last"
                                                                 else ")"))


def check_writable(output) -> None:
    """InputError unless ``output`` and its companions can be written (checked before any computing)."""
    p = Path(output)
    if p.exists() and p.is_dir():
        raise InputError(f"output {p} is a folder; give a file name such as {p / 'model.pt'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} is not a folder")
    from xraypose.io import check_output_file

    check_output_file(p)  # a probe file (named as the package's temporary files) in the folder
    for q in output_paths(p).values():
        if q.is_dir():  # was "an earlier training" (resume: "checkpoint not found"), then "Is a directory" once set up
            raise InputError(f"{q} is a folder, where this training writes a file; move it away or give another -o")
        if q.exists() and not os.access(q, os.W_OK):
            raise InputError(f"cannot overwrite {q} (not writable)")


def check_not_an_input(output, inputs: dict) -> None:
    """InputError when ``output`` or a companion is one of ``inputs`` (``{what: path or None}``, e.g.
    ``{"the CT": "ct.nii.gz"}``): training would replace it (``-o ct.nii.gz --overwrite`` replaced the CT
    by the model; without ``--overwrite`` the CT was called "an earlier training")."""
    for q in output_paths(output).values():
        for what, given in inputs.items():
            if not isinstance(given, (str, os.PathLike)) or str(given) in ("", "sample"):
                continue
            p = Path(given)
            same = os.path.samefile(p, q) if p.exists() and q.exists() else p.resolve() == q.resolve()
            if same:
                raise InputError(f"output {q} is {what} ({given}): training would replace it; "
                                 "write the model to another file")


def truncate_log(path: Path, step: int) -> None:
    """Keep the log's rows up to ``step`` (those of a resumed checkpoint); drop later and partial rows."""
    if not path.exists():
        return
    from xraypose.io import atomic_write_bytes

    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            continue
        if isinstance(row, dict) and row.get("event") == "end":
            continue  # the run goes on
        keep.append(line)
    atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())


def jsonable(d: dict) -> dict:
    """``d`` with every value that strict JSON cannot hold (NaN, inf, objects) as its string."""
    return {k: (v if isinstance(v, (int, float, str)) and (not isinstance(v, float) or math.isfinite(v)) else str(v))
            for k, v in d.items()}
