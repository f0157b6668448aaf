"""Where a registration starts, chosen by name: the names, their checks and the evaluation's rules, once.

The names (:data:`STARTS`; ``xraypose evaluate --start``, ``xraypose register`` / ``track --init``):

* ``model`` — the trained pose regressor (:class:`~xraypose.register.initializers.ModelInitializer`); needs
  a model file;
* ``angles`` — each X-ray's C-arm angles (from its header, a sidecar or the case's files);
* ``perturb`` — the true pose turned by an exact angle and shifted by an exact distance (:func:`perturbed_starts`;
  only where the truth is known: an evaluation);
* ``pose`` — one pose file for every X-ray (:func:`~xraypose.register.initializers.pose_from_json`); needs one;
* ``ap`` — an AP view of the isocenter (:func:`ap_pose`), the source :func:`~xraypose.camera.default_sod`
  from it unless a distance is given.

:func:`check_start` refuses an unknown name or a start without what it needs; :func:`evaluation_start`
turns a name (or none: the default) into the start of every X-ray of an evaluation set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from xraypose.camera import carm_pose, check_sod, default_sod
from xraypose.errors import InputError

__all__ = ["STARTS", "SINGLE_XRAY_STARTS", "check_start", "ap_pose", "StartRule", "angle_starts",
           "perturbed_starts", "evaluation_start"]

F64 = torch.float64

#: Every start, by name.
STARTS = ("model", "angles", "perturb", "pose", "ap")
#: The starts of an X-ray whose pose is unknown (``register``, ``track``): all but ``perturb``.
SINGLE_XRAY_STARTS = ("model", "angles", "pose", "ap")


def check_start(name: str | None, *, model=None, pose_json=None, option: str = "--start",
                choices=STARTS) -> None:
    """Refuse (:class:`InputError`, naming ``option``) a start name not in ``choices``, ``model`` without a model
    file, or ``pose`` without a pose file; None (the default start) passes."""
    if name is not None and name not in choices:
        raise InputError(f"unknown {option} {name!r}; choose one of {', '.join(choices)}")
    if name == "model" and model is None:
        raise InputError(f"{option} model needs --model FILE")
    if name == "pose" and pose_json is None:
        raise InputError(f"{option} pose needs --pose-json FILE")


def ap_pose(isocenter, sdd: float, sod: float | None = None, sdd_from: str = "",
            what: str = "") -> tuple[torch.Tensor, float]:
    """``(camera_to_world (4, 4) float64, sod mm)``: an AP view (C-arm angles 0, 0) of ``isocenter`` (world mm),
    the source ``sod`` mm from it (default :func:`~xraypose.camera.default_sod` of ``sdd`` mm); a given ``sod``
    beyond ``sdd`` is refused (:func:`~xraypose.camera.check_sod`; ``sdd_from``, ``what``: for its message)."""
    d = sod if sod is not None else default_sod(sdd)
    check_sod(d, sdd, "--sod", sdd_from, what)
    return carm_pose(0.0, 0.0, sod=d, isocenter=isocenter).reshape(4, 4).to(F64), d


class StartRule:
    """A per-case start: ``rule(case, index) -> (4, 4)`` camera_to_world; ``label`` describes it.

    ``case`` is an :class:`xraypose.evaluate.EvalCase` (its ``name``, ``true_pose``, ``angles_pose``)."""

    def __init__(self, fn: Callable, label: str) -> None:
        self.fn, self.label = fn, label

    def __call__(self, case, index: int) -> torch.Tensor:
        return self.fn(case, index)


def angle_starts() -> StartRule:
    """Start each X-ray from its C-arm angles (DICOM positioner angles, a sidecar's, or case.json's)."""

    def start(case, index: int):
        if case.angles_pose is None:
            raise InputError(f"X-ray {case.name} has no C-arm angles to start from; choose another start "
                             "(a model, a pose, ap, or a perturbation of the truth)")
        return case.angles_pose.to(F64)

    return StartRule(start, "the X-rays' C-arm angles")


def perturbed_starts(angle_deg: float, translation_mm: float, isocenter, seed: int = 0) -> StartRule:
    """A start rule: each case's true pose turned by exactly ``angle_deg`` about a random axis through
    ``isocenter`` and shifted by exactly ``translation_mm`` (seeded by the case's position)."""
    from xraypose.register.cases import perturb_pose

    if not (angle_deg >= 0 and translation_mm >= 0) or not math.isfinite(angle_deg + translation_mm):
        raise InputError(f"a perturbation needs finite angle >= 0 and distance >= 0, got {angle_deg}, {translation_mm}")

    def start(case, index: int):
        if case.true_pose is None:
            raise InputError(f"case {case.name}: a perturbed start needs its true pose (poses.json)")
        g = torch.Generator().manual_seed(seed * 100_003 + index)
        return perturb_pose(case.true_pose, isocenter, angle_deg, translation_mm, g)[0]

    return StartRule(start, f"the true pose perturbed by {angle_deg:g}° and {translation_mm:g} mm")


def evaluation_start(name: str | None, evalset, *, model: Path | None = None, pose_json: Path | None = None,
                     sod: float | None = None, perturb: tuple[float, float] = (10.0, 40.0), seed: int = 0,
                     allow_other_ct: bool = False, source=None, foreign_steps: float | None = 12.0
                     ) -> tuple[str, object, str]:
    """``(name, start, label)``: how every X-ray of ``evalset`` (:func:`xraypose.evaluate.load_eval_set`) starts.

    ``name`` None chooses ``model`` when a model is given, else ``angles`` when every X-ray has C-arm angles,
    else ``perturb``.  ``start`` is what :func:`xraypose.evaluate.evaluate` takes: a model initialiser, a
    :class:`StartRule` or a (4, 4) pose; ``label`` says it in words for the report.  ``perturb`` is
    (degrees, mm); ``sod`` (mm) is the ``ap`` start's source distance; ``source`` names the set in messages
    (default its name).
    """
    from xraypose.register.initializers import ModelInitializer, pose_from_json

    check_start(name, model=model, pose_json=pose_json)
    if name is None:
        name = ("model" if model is not None else
                "angles" if all(c.angles_pose is not None for c in evalset.cases) else "perturb")
    if name == "model":
        return name, ModelInitializer.from_checkpoint(model, evalset.volume, allow_other_ct=allow_other_ct,
                                                      foreign_steps=foreign_steps), \
            f"the model {model.name}"
    if name == "angles":
        rule = angle_starts()
        return name, rule, rule.label
    if name == "perturb":
        if any(c.true_pose is None for c in evalset.cases):
            raise InputError(f"--start perturb needs every X-ray's true pose; {source or evalset.name} lacks some "
                             "(poses.json); choose --start model, angles, pose or ap")
        rule = perturbed_starts(*perturb, evalset.isocenter, seed=seed)
        return name, rule, rule.label
    if name == "pose":
        return name, pose_from_json(pose_json).reshape(4, 4), f"the pose in {pose_json.name}"
    T, d = ap_pose(evalset.isocenter, evalset.cases[0].camera.sdd, sod)
    return name, T, f"an AP view {d:.0f} mm from the isocenter"
