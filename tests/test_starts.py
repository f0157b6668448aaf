"""Registration starts by name (xraypose.register.starts): the checks, the AP view and an evaluation's default."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.register.starts import (SINGLE_XRAY_STARTS, STARTS, StartRule, ap_pose, check_start,
                                      evaluation_start)

F64 = torch.float64
ISO = torch.tensor([1.0, -20.0, 30.0], dtype=F64)


def _set(angles: bool, truth: bool) -> SimpleNamespace:
    cam = Camera(sdd=1000.0, height=8, width=8, delx=2.0)
    T = carm_pose(10.0, 5.0, sod=600.0, isocenter=ISO)
    cases = [SimpleNamespace(name=f"x{i}", camera=cam, angles_pose=T if angles else None,
                             true_pose=T if truth else None) for i in range(2)]
    return SimpleNamespace(name="set", cases=cases, isocenter=ISO, volume=None)


def test_check_start_names_the_option_and_what_is_missing():
    check_start(None)  # the default start
    for name in STARTS:
        check_start(name, model=Path("m.pt"), pose_json=Path("p.json"))
    with pytest.raises(InputError, match=r"unknown --init 'perturb'; choose one of model, angles, pose, ap"):
        check_start("perturb", option="--init", choices=SINGLE_XRAY_STARTS)
    with pytest.raises(InputError, match="--start model needs --model FILE"):
        check_start("model")
    with pytest.raises(InputError, match="--init pose needs --pose-json FILE"):
        check_start("pose", option="--init")


def test_ap_pose_is_an_ap_view_at_the_default_distance():
    T, d = ap_pose(ISO, 1020.0)
    assert d == pytest.approx(0.6 * 1020.0)
    assert torch.equal(T, carm_pose(0.0, 0.0, sod=d, isocenter=ISO).reshape(4, 4).to(F64))
    T2, d2 = ap_pose(ISO, 1020.0, sod=500.0)
    assert d2 == 500.0 and float((T2[:3, 3] - ISO).norm()) == pytest.approx(500.0)


def test_an_evaluation_starts_from_the_angles_when_every_xray_has_them_else_from_the_perturbed_truth():
    name, rule, label = evaluation_start(None, _set(angles=True, truth=True))
    assert name == "angles" and isinstance(rule, StartRule) and label == "the X-rays' C-arm angles"
    name, rule, label = evaluation_start(None, _set(angles=False, truth=True), perturb=(5.0, 10.0), seed=3)
    assert name == "perturb" and "perturbed by 5° and 10 mm" in label
    case = _set(angles=False, truth=True).cases[1]
    a, b = rule(case, 1), rule(case, 1)
    assert torch.equal(a, b) and not torch.equal(a, case.true_pose)  # seeded by the case's index
    with pytest.raises(InputError, match="needs every X-ray's true pose; my.h5 lacks some"):
        evaluation_start(None, _set(angles=False, truth=False), source="my.h5")
    name, T, label = evaluation_start("ap", _set(angles=False, truth=False), sod=640.0)
    assert name == "ap" and T.shape == (4, 4) and label == "an AP view 640 mm from the isocenter"
    with pytest.raises(InputError, match="has no C-arm angles"):
        evaluation_start("angles", _set(angles=False, truth=True))[1](_set(False, True).cases[0], 0)
