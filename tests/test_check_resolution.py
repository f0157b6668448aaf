"""benchmarks/check_resolution.py: the poses it checks are where their names say (geometry only)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from test_faults import _benchmark
from xraypose.camera import Camera
from xraypose.geometry import make_transform, so3_exp

F64 = torch.float64
bench = _benchmark("check_resolution")


def _pose(seed: int) -> tuple:
    """A random camera_to_world P0, a second view's camera_to_rig C1 (turned 60–110° about the
    isocenter, as the benchmark's pairs) and the isocenter."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp(torch.randn(3, generator=g, dtype=F64))
    iso = torch.randn(3, generator=g, dtype=F64) * 20
    P0 = make_transform(R, iso - 700.0 * R[:, 2])  # the isocenter 700 mm down view 0's beam
    turn = so3_exp(math.radians(60 + 50 * float(torch.rand((), generator=g))) * R[:, 1])
    P1 = make_transform(turn, iso - turn @ iso) @ P0
    return P0, torch.linalg.inv(P0) @ P1, iso


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(0.5, 10.0))
def test_moves_are_what_their_names_say(seed, a):
    P0, C1, iso = _pose(seed)
    cam = Camera(sdd=1020.0, height=64, width=64, delx=4.0)
    pts = iso + torch.randn(20, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * 50
    for kind in ("across0", "beam0", "beam1"):
        Q = bench.moved(P0, C1, iso, kind, a)
        # a translation of the camera by a mm: every point moves by a relative to it
        assert torch.allclose(Q[:3, :3], P0[:3, :3], atol=1e-12)
        assert math.isclose(float((Q[:3, 3] - P0[:3, 3]).norm()), a, rel_tol=1e-9)
    # along view 0's beam: the isocenter's depth changes by a, its projection's direction does not
    Q = bench.moved(P0, C1, iso, "beam0", a)
    assert math.isclose(float(cam.depth(iso[None], P0)[0] - cam.depth(iso[None], Q)[0]), a, rel_tol=1e-6)
    # across view 0's beam: the depth of every point is unchanged (an in-plane shift)
    Q = bench.moved(P0, C1, iso, "across0", a)
    assert torch.allclose(cam.depth(pts, P0), cam.depth(pts, Q), atol=1e-9)
    # along view 1's beam: view 1's depth of the isocenter changes by a
    Q = bench.moved(P0, C1, iso, "beam1", a)
    assert math.isclose(float(cam.depth(iso[None], P0 @ C1)[0] - cam.depth(iso[None], Q @ C1)[0]), a,
                        rel_tol=1e-6)
    # turned about the isocenter: it stays, and the camera turned by the angle
    Q = bench.moved(P0, C1, iso, "turn", a)
    assert torch.allclose(cam.depth(iso[None], P0), cam.depth(iso[None], Q), atol=1e-9)
    cos = float(((Q[:3, :3].T @ P0[:3, :3]).trace() - 1) / 2)
    assert math.isclose(math.degrees(math.acos(max(-1.0, min(1.0, cos)))), a, rel_tol=1e-6)


def test_the_pair_is_as_trusted_as_its_least_trusted_view():
    """The benchmark's pair verdict is the rule of register --rig (combine_confidences)."""
    from xraypose.register.confidence import Confidence
    from xraypose.register.multiview import combine_confidences

    for vs in (["ok", "ok"], ["ok", "uncertain"], ["failed", "ok"], ["uncertain", "uncertain"], ["ok", "failed"]):
        confs = [Confidence(0.9 if v == "ok" else 0.6 if v == "uncertain" else 0.1, v, "") for v in vs]
        assert bench.pair_verdict(vs) == combine_confidences(["0", "1"], confs).verdict
    names = set(bench.poses_to_check(*_pose(1)[:1], _pose(1)[1], _pose(1)[2], [1.5, 3.0], [1.0]))
    assert names == {"truth", "across0+1.5", "beam0+1.5", "beam1+1.5", "across0+3", "beam0+3", "beam1+3", "turn+1"}
