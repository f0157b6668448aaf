"""scripts/wrist_register.py's own parts that need no data: its settings, the rolled starts, the choice
of the best run (the registrations themselves: tests/test_wrist_register.py, with ../shared only)."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xraypose.geometry import make_transform, so3_exp
from xraypose.geometry.so3 import rotation_angle
from xraypose.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import wrist_register as W  # noqa: E402

F64 = torch.float64


@pytest.fixture(scope="module")
def rod():
    """A long bone along the volume's k axis, flared at its first pages (the distal end), 1 mm voxels."""
    i, j, k = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), torch.arange(60.0), indexing="ij")
    radius = 4.0 + 6.0 * torch.clamp(1 - k / 15.0, min=0.0)  # 10 mm at k = 0, 4 mm from k = 15 on
    data = (((i - 11.5) ** 2 + (j - 11.5) ** 2).sqrt() <= radius).float() * 1000.0
    return Volume(data=data, affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=F64)))


def test_the_wrist_is_registered_with_the_part_settings():
    """The radius alone against X-rays of the whole wrist: no intensity map (a quantile map between them is
    no intensity relationship), gradient NCC, raw density — as `xraypose register --structure`."""
    from xraypose.structure import part_settings

    cfg = W.wrist_config()
    assert cfg["match_intensity"] is None and cfg["match_capture"] is False
    assert cfg["similarity"] == "gncc" and cfg["density"] == "raw" and cfg["levels"] == W.WRIST_LEVELS
    assert part_settings(dict(cfg), "raw") == cfg
    over = W.wrist_config(2, ["shift_search=null", "lm_tol_px=0.05"])
    assert over["shift_search"] is None and over["lm_tol_px"] == 0.05 and over["num_threads"] == 2


@settings(max_examples=25, deadline=None)
@given(w=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
       t=st.lists(st.floats(-200.0, 200.0), min_size=3, max_size=3))
def test_rolled_starts_turn_the_bone_about_its_own_axis(rod, w, t):
    """Start 0 is the given pose; every start keeps the bone's distal end and long axis where the given
    pose put them, and start k is turned by ROLLS_DEG[k] about that axis."""
    d, a = W.volume_axis(rod)
    bone_to_cal = make_transform(so3_exp(torch.tensor(w, dtype=F64)), torch.tensor(t, dtype=F64))
    starts = W.rolled(bone_to_cal, rod)
    assert starts.shape == (len(W.ROLLS_DEG), 4, 4)
    assert torch.allclose(starts[0], torch.linalg.inv(bone_to_cal), atol=1e-9)
    p0, a0 = bone_to_cal[:3, :3] @ d + bone_to_cal[:3, 3], bone_to_cal[:3, :3] @ a
    for S, deg in zip(starts, W.ROLLS_DEG):
        B = torch.linalg.inv(S)
        assert torch.allclose(B[:3, :3] @ d + B[:3, 3], p0, atol=1e-6)
        assert torch.allclose(B[:3, :3] @ a, a0, atol=1e-9)
        angle = math.degrees(float(rotation_angle(B[:3, :3] @ bone_to_cal[:3, :3].T)))
        assert angle == pytest.approx(min(deg, 360 - deg), abs=1e-5)


def test_the_rod_reads_distal_at_its_flare(rod):
    d, a = W.volume_axis(rod)
    assert float(a[2]) > 0.99 and float(d[2]) < 5.0  # from the flared first pages toward the last


def test_best_of_keeps_the_highest_final_similarity():
    runs = [SimpleNamespace(similarity=s) for s in (0.27, 0.58, 0.56, 0.31)]
    best, k = W.best_of(runs)
    assert k == 1 and best is runs[1]


def test_axis_starts_both_ways(rod):
    """One direction: the volume's distal end on the first triangulated point and its axis toward the
    second; both directions: 12 more starts with the axis reversed and its far end on the first point."""
    d, a = W.volume_axis(rod)
    P_dist, P_prox = torch.tensor([10.0, -5.0, 3.0], dtype=F64), torch.tensor([10.0, 40.0, 3.0], dtype=F64)
    want = (P_prox - P_dist) / (P_prox - P_dist).norm()
    one = W.axis_starts(rod, P_dist, P_prox)
    both = W.axis_starts(rod, P_dist, P_prox, both_directions=True)
    n = len(W.ROLLS_DEG)
    assert one.shape == (n, 4, 4) and both.shape == (2 * n, 4, 4)
    assert torch.allclose(both[:n], one, atol=1e-12)
    far = d + a * float((P_prox - P_dist).norm())
    for S in both[:n]:
        B = torch.linalg.inv(S)
        assert torch.allclose(B[:3, :3] @ d + B[:3, 3], P_dist, atol=1e-6)
        assert torch.allclose(B[:3, :3] @ a, want, atol=1e-9)
    for S in both[n:]:
        B = torch.linalg.inv(S)
        assert torch.allclose(B[:3, :3] @ far + B[:3, 3], P_dist, atol=1e-6)
        assert torch.allclose(B[:3, :3] @ a, -want, atol=1e-9)


def _plane(z: float, half: float) -> torch.Tensor:
    """(N, 3) points on a square grid of half-width ``half`` mm, at depth ``z`` mm on the camera's axis."""
    g = torch.linspace(-half, half, 11, dtype=F64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), torch.full((121,), z, dtype=F64)], -1)


def test_one_views_geometry_matches_the_pinhole_closed_form():
    """scripts/wrist_depth.py on a flat grid facing a pinhole (focal f = sdd/pixel px, depth z): 1 mm across the
    beam moves every point f/z px, 1 mm along it f·r/z² px (r: the point's distance from the axis), 1° about
    the beam f·r/z·π/180 px; and the depth ratio (the sd along the beam over the sd across it, the other five
    free) grows in proportion to the depth and falls in proportion to the grid's width."""
    import wrist_depth as D
    from xraypose.camera import Camera

    cam = Camera(sdd=1000.0, height=512, width=512, delx=0.5)  # f = 2000 px
    eye = torch.eye(4, dtype=F64)
    pts = _plane(800.0, 20.0)
    g = D.view_geometry(cam, eye, eye, pts)
    r = pts[:, :2].norm(dim=-1)
    assert g["depth_mm"] == pytest.approx(800.0)
    assert g["px_per_mm_across"] == pytest.approx(2000.0 / 800.0, rel=1e-9)
    assert g["px_per_mm_along"] == pytest.approx(float((2000.0 * r / 800.0 ** 2).mean()), rel=1e-9)
    assert g["px_per_deg_about_beam"] == pytest.approx(float((2000.0 * r / 800.0).mean()) * math.pi / 180, rel=1e-9)
    far = D.view_geometry(cam, eye, eye, _plane(1600.0, 20.0))
    wide = D.view_geometry(cam, eye, eye, _plane(800.0, 40.0))
    assert far["depth_ratio"] / g["depth_ratio"] == pytest.approx(2.0, rel=1e-3)
    assert wide["depth_ratio"] / g["depth_ratio"] == pytest.approx(0.5, rel=1e-3)
    assert g["depth_ratio"] > 10 and g["tilt_ratio"] > 1  # 40 mm seen from 800 mm: depth far less certain


def test_one_views_geometry_follows_the_camera_and_the_bone():
    """The same grid and camera moved together by any rigid motion (camera_to_rig, bone_to_cal) give the same
    numbers: they are the view's own."""
    import wrist_depth as D
    from xraypose.camera import Camera

    cam = Camera(sdd=1000.0, height=512, width=512, delx=0.5)
    eye = torch.eye(4, dtype=F64)
    pts = _plane(900.0, 15.0) + torch.tensor([3.0, -2.0, 0.0], dtype=F64)
    g = D.view_geometry(cam, eye, eye, pts)
    M = make_transform(so3_exp(torch.tensor([0.4, -1.1, 2.0], dtype=F64)), torch.tensor([50.0, -20.0, 300.0], dtype=F64))
    h = D.view_geometry(cam, M, M, pts)  # camera and bone both carried by M into the calibration frame
    for k in g:
        assert h[k] == pytest.approx(g[k], rel=1e-6), k


def test_the_reference_views_of_the_bundled_pelvis(capsys):
    """scripts/wrist_depth.py --reference pelvis: the bundled CT in AP, 45° and lateral views — depth ratios of a
    few (a body seen from 600 mm), far below the radius's 18–49 (docs/wrist.md)."""
    import wrist_depth as D

    assert D.main(["--reference", "pelvis", "--points", "1500"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [r[1] for r in rows] == ["0°", "45°", "90°"]
    assert all(3.0 < float(r[2]) < 8.0 for r in rows), rows


def test_focal_scaled_scales_the_focal_length_and_keeps_the_principal_point():
    """scripts/wrist_flatness.py's calibration-scale probe: K's fx, fy ×k, its principal point unchanged, so a
    point on the principal ray stays put and every other moves radially by k."""
    import wrist_flatness as WF

    from xraypose.camera import Camera

    cam = Camera(sdd=1020.0, height=60, width=64, delx=0.4, dely=0.5, x0=3.0, y0=-2.0)
    K, Kk = cam.K(), WF.focal_scaled(cam, 1.03).K()
    assert Kk[0, 0] == pytest.approx(1.03 * float(K[0, 0])) and Kk[1, 1] == pytest.approx(1.03 * float(K[1, 1]))
    assert torch.allclose(Kk[:2, 2], K[:2, 2]) and WF.focal_scaled(cam, 1.03).height == 60


@settings(max_examples=25, deadline=None)
@given(w=st.lists(st.floats(-2.0, 2.0), min_size=6, max_size=6),
       t=st.lists(st.floats(-100.0, 100.0), min_size=6, max_size=6))
def test_geodesic_runs_from_one_pose_to_the_other(w, t):
    """t = 0 gives the first pose, t = 1 the second, and two half steps make the whole one."""
    import wrist_flatness as WF

    B0 = make_transform(so3_exp(torch.tensor(w[:3], dtype=F64)), torch.tensor(t[:3], dtype=F64))
    B1 = make_transform(so3_exp(torch.tensor(w[3:], dtype=F64)), torch.tensor(t[3:], dtype=F64))
    if rotation_angle(B1[:3, :3] @ B0[:3, :3].T) > 3.1:  # the log's cut: the geodesic is not unique there
        return
    assert torch.allclose(WF.geodesic(B0, B1, 0.0), B0, atol=1e-9)
    assert torch.allclose(WF.geodesic(B0, B1, 1.0), B1, atol=1e-6)
    half = WF.geodesic(B0, B1, 0.5)
    assert torch.allclose(WF.geodesic(half, B1, 0.0), half, atol=1e-9)
    assert torch.allclose(WF.geodesic(B0, half, 2.0), B1, atol=1e-6)


def test_scaled_volume_stretches_one_axis_about_the_centre(rod):
    """scripts/wrist_flatness.py's voxel probe: the voxel size along one index axis ×k, the other two and the centre
    kept — an index step along that axis moves k times as far in the world."""
    import wrist_flatness as WF

    A = torch.tensor([[0.0, 0.4, 0.0, -10.0], [0.5, 0.0, 0.0, 3.0], [0.0, 0.0, 0.6, 7.0], [0, 0, 0, 1]], dtype=F64)
    vol = Volume(data=rod.data, affine=A)
    s = WF.scaled_volume(vol, 2, 1.02)
    assert torch.allclose(s.get_isocenter().to(F64), vol.get_isocenter().to(F64), atol=1e-9)
    assert torch.allclose(s.affine[:3, 2], 1.02 * A[:3, 2]) and torch.allclose(s.affine[:3, :2], A[:3, :2])
    assert s.data is vol.data or torch.equal(s.data, vol.data)
    both = WF.scaled_volume(vol, [0, 1], 0.98)
    assert torch.allclose(both.affine[:3, :2], 0.98 * A[:3, :2]) and torch.allclose(both.affine[:3, 2], A[:3, 2])
    assert torch.allclose(both.get_isocenter().to(F64), vol.get_isocenter().to(F64), atol=1e-9)


def test_part_origin_puts_a_cut_bone_in_the_whole_volumes_frame():
    """A bone cut from a two-bone volume (its box's voxels equal, the neighbour's zeroed) read with
    ``origin=part_origin(...)`` shares the whole's world frame: each of its voxels lands on the whole's voxel of
    the same value; a volume that is not a part is refused by name."""
    g = torch.Generator().manual_seed(3)
    whole = torch.zeros(20, 30, 16)
    whole[2:9, 3:27, 2:14] = torch.randint(1, 4096, (7, 24, 12), generator=g).float()   # the first bone
    whole[11:18, 2:28, 3:15] = torch.randint(1, 4096, (7, 26, 12), generator=g).float()  # the second
    aff = torch.tensor([[0.4, 0, 0, -4.0], [0, 0.4, 0, -6.0], [0, 0, 0.6, -5.0], [0, 0, 0, 1]], dtype=F64)
    outer = Volume(data=whole, affine=aff)
    cut = whole[9:19, 1:29, 1:16].clone()  # the second bone's box, reaching into the first's
    cut[:2] = 0.0  # the first bone left out of the cut, as a segmentation does
    inner = Volume(data=cut, affine=torch.diag(torch.tensor([0.4, 0.4, 0.6, 1.0], dtype=F64)))
    o = W.part_origin(outer, inner)
    assert torch.allclose(o, (aff @ torch.tensor([9.0, 1.0, 1.0, 1.0], dtype=F64))[:3])
    placed = Volume(data=cut, affine=torch.cat([torch.cat([aff[:3, :3], o[:, None]], 1), aff[3:]]))
    idx = torch.nonzero(cut > 0)
    w = placed.voxel_to_world(idx.to(F64))
    back = (torch.linalg.inv(aff)[:3, :3] @ w.T).T + torch.linalg.inv(aff)[:3, 3]
    back = back.round().long()
    assert torch.equal(whole[back[:, 0], back[:, 1], back[:, 2]], cut[idx[:, 0], idx[:, 1], idx[:, 2]])
    other = Volume(data=torch.randint(1, 4096, (5, 5, 5), generator=g).float(), affine=aff)
    with pytest.raises(SystemExit, match="not a part"):
        W.part_origin(outer, other)
    with pytest.raises(SystemExit, match="cannot lie inside"):
        W.part_origin(inner, outer)


def test_a_frames_starts_come_from_a_given_pose_then_the_picks_then_the_last_result(rod):
    """``frame_starts``: a given rig_to_world (``--start-poses``) is start 0 and its 12 rolls follow; without one
    the first frame starts on the picked axis and a later frame at the previous result, rolled."""
    d, a = W.volume_axis(rod)
    P_dist, P_prox = torch.tensor([5.0, -3.0, 40.0], dtype=F64), torch.tensor([5.0, 60.0, 40.0], dtype=F64)
    given = torch.linalg.inv(make_transform(so3_exp(torch.tensor([0.3, -0.2, 1.0], dtype=F64)),
                                            torch.tensor([10.0, 20.0, -30.0], dtype=F64)))
    prev = torch.linalg.inv(make_transform(so3_exp(torch.tensor([-0.5, 0.1, 0.2], dtype=F64)),
                                           torch.tensor([1.0, 2.0, 3.0], dtype=F64)))
    s = W.frame_starts(given.tolist(), prev, rod, P_dist, P_prox)
    assert s.shape == (len(W.ROLLS_DEG), 4, 4) and torch.allclose(s[0], given, atol=1e-9)
    assert torch.allclose(s, W.rolled(torch.linalg.inv(given), rod))
    assert torch.allclose(W.frame_starts(None, None, rod, P_dist, P_prox), W.axis_starts(rod, P_dist, P_prox))
    assert torch.allclose(W.frame_starts(None, prev, rod, P_dist, P_prox), W.rolled(torch.linalg.inv(prev), rod))
