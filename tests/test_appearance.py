"""Appearance families (xraypose.appearance): reproducible, readable by their own preprocessing, and each
family's physics checked against a closed form or an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xraypose.appearance import FAMILIES, FormedXray, form_xray
from xraypose.appearance import attenuation as att
from xraypose.appearance import detector as det
from xraypose.appearance import femur as fem
from xraypose.appearance import implants as imp
from xraypose.appearance.families import femur_labels, femur_transform, narrow_geometry, siddon_lines
from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.preprocess import ncc, preprocess
from xraypose.render.rays import world_rays
from xraypose.synthetic import XraySimulator
from xraypose.volume import volume_from_array

F64 = torch.float64
ROD_X = 30.0  # mm, world x of the phantom's bone rod


def _phantom():
    """A soft-tissue cylinder (axis = world z; muscle, 40 HU, to radius 68 mm, fat, −100 HU, to 80 mm) in air
    with a bone rod (radius 9 mm, 1000 HU) at x = +30 mm: 64×64×48 voxels of 3 mm centred on the origin."""
    n = (64, 64, 48)
    origin = [-(k - 1) * 1.5 for k in n]
    ijk = torch.stack(torch.meshgrid(*[torch.arange(k, dtype=F64) for k in n], indexing="ij"), -1)
    w = ijk * 3.0 + torch.tensor(origin, dtype=F64)
    r_body = (w[..., 0] ** 2 + w[..., 1] ** 2).sqrt()
    r_rod = ((w[..., 0] - ROD_X) ** 2 + w[..., 1] ** 2).sqrt()
    hu = torch.full(n, -1000.0, dtype=F64)
    hu[r_body < 80] = -100.0  # fat
    hu[r_body < 68] = 40.0  # muscle
    hu[r_rod < 9] = 1000.0
    return volume_from_array(hu.float(), spacing=(3.0, 3.0, 3.0), origin=origin)


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module")
def rig():
    cam = Camera(sdd=1020.0, height=48, width=48, delx=280.0 / 48)
    return cam, carm_pose(0.0, 0.0, sod=600.0, isocenter=torch.zeros(3, dtype=F64))


def _families_on_phantom():
    out = [f for f in FAMILIES if f not in ("femur", "diffdrr")]
    try:
        import diffdrr.drr  # noqa: F401

        out.append("diffdrr")
    except Exception:
        pass
    return out


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_registry_and_bad_input(phantom, rig):
    assert set(FAMILIES) == {"ours", "diffdrr", "polychromatic", "scatter", "display", "lowdose", "focal",
                             "narrow_fov", "implants", "femur", "clinical"}
    assert all(isinstance(d, str) and len(d) > 10 for d in FAMILIES.values())
    cam, T = rig
    with pytest.raises(InputError, match="unknown appearance family"):
        form_xray(phantom, cam, T, "sepia")
    with pytest.raises(InputError, match="unknown parameter.*sprr"):
        form_xray(phantom, cam, T, "scatter", sprr=0.2)
    with pytest.raises(InputError, match="photons"):
        form_xray(phantom, cam, T, "focal", photons=-1)
    with pytest.raises(InputError, match="one .4, 4. pose"):
        form_xray(phantom, cam, torch.eye(3), "focal")
    with pytest.raises(InputError, match="no femur"):
        form_xray(phantom, cam, T, "femur")


@pytest.mark.parametrize("family", _families_on_phantom())
def test_family_reproducible_readable_bone_bright(family, phantom, rig):
    cam, T = rig
    over = {"implants": True} if family == "clinical" else {}
    a = form_xray(phantom, cam, T, family, generator=_g(5), **over)
    b = form_xray(phantom, cam, T, family, generator=_g(5), **over)
    c = form_xray(phantom, cam, T, family, generator=_g(6), **over)
    assert isinstance(a, FormedXray) and a.raw.dtype == torch.float32
    assert a.raw.shape == (a.camera.height, a.camera.width)
    assert torch.equal(a.raw, b.raw) and a.info == b.info
    assert not torch.equal(a.raw, c.raw)
    assert a.info["family"] == family
    assert a.pose.shape == (4, 4) and a.pose.dtype == F64
    json.dumps(a.info)  # JSON-able
    pre = preprocess(a.raw, a.camera, **a.preprocess)
    img = pre.image
    assert bool(torch.isfinite(img).all()) and float(img.max() - img.min()) > 0.5
    # bone bright: the rod's column is brighter than its mirror image through the (symmetric) water
    u_rod, u_mirror = (pre.camera.project(torch.tensor([[x, 0.0, 0.0]], dtype=F64), a.pose)[0, 0] for x in
                       (ROD_X, -ROD_X))
    col = img.mean(0)
    assert float(col[int(round(float(u_rod)))]) > float(col[int(round(float(u_mirror)))]) + 0.05
    # its parameters (not the derived values in info) fix every draw: another generator forms the same kind
    if family not in ("implants", "clinical"):  # (implants: anchors drawn from the CT's bone at each call)
        again = form_xray(phantom, cam, T, family, generator=_g(6), **{k: a.info[k] for k in a.parameters})
        assert {k: again.info[k] for k in a.parameters} == {k: a.info[k] for k in a.parameters}
        assert set(a.info) - set(a.parameters) <= {"family", "photons_unattenuated", "scale_per_mm",
                                                   "hu_cortical_bone", "effective_kev", "isocenter_point"}
    # and the image reads like today's simulator's image of the same view
    ours = form_xray(phantom, a.camera, a.pose, "ours", generator=_g(5))
    ref = preprocess(ours.raw, ours.camera, **ours.preprocess).image
    assert ncc(img, ref) > 0.6


def test_ours_is_the_simulator_unchanged(phantom, rig):
    cam, T = rig
    fx = form_xray(phantom, cam, T, "ours", generator=_g(2))
    sim = XraySimulator(phantom, cam, supersample=2, photons=1e5, blur_px=0.7, collimator_px=fx.info["collimator_px"])
    assert torch.equal(fx.raw, sim(T, generator=_g(2)).raw[0, 0])
    assert fx.preprocess == {"crop": fx.info["collimator_px"] + 2, "blur": (5, 1.0), "log": True, "i0": 65000.0,
                             "rescale": True}


def test_overrides_fix_one_parameter_and_keep_the_others(phantom, rig):
    cam, T = rig
    a = form_xray(phantom, cam, T, "display", generator=_g(9))
    b = form_xray(phantom, cam, T, "display", generator=_g(9), gamma=1.7)
    assert b.info["gamma"] == 1.7
    assert {k: v for k, v in a.info.items() if k != "gamma"} == {k: v for k, v in b.info.items() if k != "gamma"}
    lo, hi = (form_xray(phantom, cam, T, "lowdose", generator=_g(s)).info["photons"] for s in (1, 2))
    assert 1e3 <= min(lo, hi) and max(lo, hi) <= 1e4 and lo != hi


def test_dose_scale_multiplies_the_photons_per_pixel(phantom, rig):
    # the same draw, its photons scaled: the image of ¼ of the photons per pixel (a 2× finer detector at the
    # same dose per mm²), whichever family sets them — a drawn dose (lowdose), a fixed one (diffdrr-like
    # "scatter"), an automatic exposure's target (clinical)
    cam, T = rig
    a = form_xray(phantom, cam, T, "lowdose", generator=_g(3), dose_scale=0.25)
    b = form_xray(phantom, cam, T, "lowdose", generator=_g(3))
    c = form_xray(phantom, cam, T, "lowdose", generator=_g(3), photons=b.info["photons"] * 0.25)
    assert a.info["photons"] == b.info["photons"] and a.info["dose_scale"] == 0.25 and b.info["dose_scale"] == 1.0
    assert torch.equal(a.raw, c.raw) and not torch.equal(a.raw, b.raw)
    s = form_xray(phantom, cam, T, "scatter", generator=_g(3), dose_scale=0.5)
    assert torch.equal(s.raw, form_xray(phantom, cam, T, "scatter", generator=_g(3), photons=5e4).raw)
    k1, k4 = (form_xray(phantom, cam, T, "clinical", generator=_g(3), dose_scale=d).info["photons_unattenuated"]
              for d in (1.0, 4.0))
    assert k4 == pytest.approx(4 * k1, rel=1e-9)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(InputError, match="dose_scale"):
            form_xray(phantom, cam, T, "lowdose", dose_scale=bad)


# ------------------------------------------------------------------ physics


def test_attenuation_tables_and_beam_hardening():
    # the tables' own values come back at grid energies; water and bone attenuate less at higher energy
    assert float(att.mu_per_mm("water", 60.0)) == pytest.approx(0.02059)
    assert float(att.mu_per_mm("bone", 40.0)) == pytest.approx(0.6655 * 1.92 / 10)
    e = np.linspace(10, 150, 50)
    for m in ("water", "bone", "iron"):
        assert np.all(np.diff(att.mu_per_mm(m, e)) < 0)
    assert 1400 < att.cortical_bone_hu(70.0) < 1900
    with pytest.raises(InputError):
        att.mu_per_mm("water", 200.0)
    E, N = att.spectrum(90.0)
    assert N.sum() == pytest.approx(1.0) and E.max() < 90.0 and 35 < att.effective_energy(E, N) < 60
    # beam hardening: the effective attenuation per mm of water falls with thickness
    L = torch.tensor([1.0, 20.0, 50.0, 100.0, 200.0, 300.0], dtype=F64)
    T = att.transmission({"water": L, "bone": torch.zeros_like(L)}, E, N)
    mu_eff = -torch.log(T) / L
    assert bool((mu_eff[1:] < mu_eff[:-1]).all())
    assert float(mu_eff[0] / mu_eff[-1]) > 1.15
    # thin limit: the detector-weighted mean μ
    w = N * E / (N * E).sum()
    assert float(mu_eff[0]) == pytest.approx(float((w * att.mu_per_mm("water", E)).sum()), rel=0.02)
    # HU decomposition reproduces μ at the CT's energy
    hu = torch.tensor([-1000.0, -100.0, 0.0, 400.0, 1593.5, 2500.0])
    f = att.water_bone_fractions(hu, att.cortical_bone_hu(70.0))
    mu = f[0] * float(att.mu_per_mm("water", 70.0)) + f[1] * float(att.mu_per_mm("bone", 70.0))
    expect = float(att.mu_per_mm("water", 70.0)) * (1 + hu / 1000)
    torch.testing.assert_close(mu[:5], expect[:5].float(), rtol=2e-3, atol=1e-6)


def test_scatter_to_primary_ratio_on_a_flat_phantom():
    flat = torch.full((40, 52), 0.37, dtype=F64)
    out = det.add_scatter(flat, 0.3, 40.0, delx=2.0, dely=2.0)
    torch.testing.assert_close(out, flat * 1.3)
    # through the family: a uniform water slab filling the field, noise and blur off
    slab = volume_from_array(torch.zeros(70, 70, 10), spacing=(8.0, 8.0, 10.0), origin=(-276.0, -276.0, -45.0))
    cam = Camera(sdd=1020.0, height=40, width=40, delx=7.0)
    T = torch.eye(4, dtype=F64)  # looking along +z, the slab's normal, from 600 mm before its centre
    T[2, 3] = -600.0
    kw = dict(photons=0, blur_px=0.0)
    s = form_xray(slab, cam, T, "scatter", generator=_g(4), **kw)
    p = form_xray(slab, cam, T, "scatter", generator=_g(4), spr=0.0, **kw)
    c = s.info["collimator_px"]
    measured = float(s.raw[c:-c, c:-c].sum() / p.raw[c:-c, c:-c].sum()) - 1
    assert 0.1 <= s.info["spr"] <= 0.5
    assert measured == pytest.approx(s.info["spr"], rel=0.01)


@pytest.mark.parametrize("lut", det.LUTS)
@pytest.mark.parametrize("polarity", det.POLARITIES)
def test_display_lut_monotone_and_read_back_bone_bright(lut, polarity, phantom, rig):
    L = torch.linspace(0.2, 5.0, 64, dtype=F64)  # line integral grows along the columns
    img = torch.exp(-L).expand(12, 64).clone()
    kw = dict(lut=lut, polarity=polarity, gamma=1.6, unsharp_amount=0.0, unsharp_radius_px=3.0, vignette=0.0,
              bits=12, collimator_px=0, floor=1e-6)
    y = det.display(img, **kw)[6]
    step = torch.diff(y)
    assert bool((step >= 0).all() if polarity == "bone_bright" else (step <= 0).all())
    assert float(y.max() - y.min()) > 1000
    # the family says how to read it back: line-integral-like, bone bright
    cam, T = rig
    fx = form_xray(phantom, cam, T, "display", generator=_g(1), lut=lut, polarity=polarity)
    assert fx.raw.max() <= 2 ** fx.info["bits"] - 1 and torch.equal(fx.raw, fx.raw.round())
    pre = preprocess(fx.raw, fx.camera, **fx.preprocess).image
    ours = form_xray(phantom, cam, T, "ours", generator=_g(1))
    assert ncc(pre, preprocess(ours.raw, ours.camera, **ours.preprocess).image) > 0.6


# ------------------------------------------------------------------ implants


def _voxelised_cylinder(cyl: imp.Cylinder, centre, size_mm=20.0, vox=0.25, sub=2):
    n = int(size_mm / vox)
    origin = centre - (n - 1) * vox / 2
    occ = torch.zeros(n, n, n, dtype=torch.float32)
    offs = (torch.arange(sub, dtype=F64) + 0.5) / sub - 0.5
    i = torch.arange(n, dtype=F64)
    for ox in offs:
        for oy in offs:
            for oz in offs:
                grid = torch.stack(torch.meshgrid(i + ox, i + oy, i + oz, indexing="ij"), -1) * vox + origin
                w = grid - cyl.start
                t = w @ cyl.axis
                r2 = (w * w).sum(-1) - t * t
                occ += ((t >= 0) & (t <= cyl.length) & (r2 <= cyl.radius**2)).float()
    return occ / sub**3, torch.cat([torch.cat([torch.eye(3, dtype=F64) * vox, origin[:, None]], 1),
                                    torch.tensor([[0, 0, 0, 1.0]], dtype=F64)])


def test_cylinder_chord_matches_rendered_voxelised_cylinder():
    centre = torch.tensor([5.0, -3.0, 2.0], dtype=F64)
    axis = torch.tensor([0.5, 0.75, -0.43], dtype=F64)  # 63° from the view: no ray grazes a cap face
    axis = axis / axis.norm()
    cyl = imp.Cylinder(centre - 7.0 * axis, axis, 14.0, 2.0, "steel")
    occ, affine = _voxelised_cylinder(cyl, centre)
    cam = Camera(sdd=1000.0, height=40, width=40, delx=0.8)
    T = carm_pose(20.0, 10.0, sod=500.0, isocenter=centre)
    rendered = siddon_lines(occ[None], affine, cam, T)[0]
    src, tgt = world_rays(cam, T[None], cam.pixel_grid(F64))
    closed = imp.cylinder_chords(cyl, src[0], tgt[0]).reshape(40, 40)
    assert float(closed.max()) > 3.5 and int((closed > 0).sum()) > 100  # the rays cross the wire
    err = (rendered - closed).abs()
    assert float(rendered.sum()) == pytest.approx(float(closed.sum()), rel=0.01)  # the projected volume
    assert float(err.mean()) < 0.03
    # away from grazing rays (a 0.1 mm shift of the voxelised surface changes a tangent chord by ~1 mm):
    # rays passing the axis at least 0.5 mm inside the surface agree to a fraction of a voxel
    u = tgt[0] - src[0]
    n = torch.linalg.cross(u, axis.expand_as(u))
    dist = ((src[0] - cyl.start) @ n.T).abs() / n.norm(dim=-1)
    inner = ((dist < cyl.radius - 0.5) & (closed.flatten() > 0)).reshape(40, 40)
    assert int(inner.sum()) > 50 and float(err[inner].max()) < 0.3 and float(err[inner].mean()) < 0.08
    # and the closed form against dense sampling of the solid along rays that cross it
    t = torch.linspace(-15.0, 15.0, 30001, dtype=F64)  # mm around the point nearest the centre, 1 µm steps
    for r in torch.nonzero(closed.flatten() > 0)[::30, 0]:
        d = (tgt[0, r] - src[0]) / (tgt[0, r] - src[0]).norm()
        pts = src[0] + (torch.dot(centre - src[0], d) + t)[:, None] * d
        w = pts - cyl.start
        along = w @ axis
        inside = (along >= 0) & (along <= cyl.length) & ((w * w).sum(-1) - along**2 <= cyl.radius**2)
        assert float(closed.flatten()[r]) == pytest.approx(float(inside.double().sum()) * 1e-3, abs=0.003)
    # exact cases: across the axis through it = the diameter, along the axis = the length; a box's thickness
    s = cyl.start + 0.5 * cyl.length * axis
    perp = torch.linalg.cross(axis, torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    perp = perp / perp.norm()
    assert float(imp.cylinder_chords(cyl, s - 100 * perp, (s + 100 * perp)[None])[0]) == pytest.approx(4.0)
    assert float(imp.cylinder_chords(cyl, cyl.start - 50 * axis, (cyl.start + 90 * axis)[None])[0]) == \
        pytest.approx(14.0)
    box = imp.Box(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64), torch.tensor([10.0, 20.0, 1.0], dtype=F64),
                  "steel")
    z = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    assert float(imp.box_chords(box, -50 * z, (50 * z)[None])[0]) == pytest.approx(2.0)
    assert float(imp.box_chords(box, 30 * z, (50 * z)[None])[0]) == 0.0


def test_implants_raise_attenuation_exactly_where_foreign(phantom, rig):
    cam, T = rig
    kw = dict(photons=0, blur_px=0.0)
    for seed in (0, 1, 2):
        fx = form_xray(phantom, cam, T, "implants", generator=_g(seed), **kw)
        none = form_xray(phantom, cam, T, "implants", generator=_g(seed), n_objects=0, **kw)
        darker = fx.raw < none.raw
        assert fx.foreign is not None and int(fx.foreign.sum()) > 10
        assert int((darker & ~fx.foreign).sum()) == 0
        assert int((fx.foreign & ~darker).sum()) <= 0.02 * int(fx.foreign.sum()) + 1
        assert not bool((fx.raw > none.raw).any())
        assert 1 <= fx.info["n_objects"] <= 4 and len(fx.info["objects"]) >= fx.info["n_objects"]


# ------------------------------------------------------------------ geometry


def test_narrow_fov_geometry(phantom, rig):
    cam, _ = rig
    iso = torch.tensor([4.0, -6.0, 3.0], dtype=F64)
    T = carm_pose(25.0, -10.0, sod=900.0, isocenter=iso)
    vol = volume_from_array(phantom.data, affine=phantom.affine, isocenter=iso)
    fx = form_xray(vol, cam, T, "narrow_fov", generator=_g(3))
    sod = fx.info["sod"]
    assert 600 <= sod <= 750
    assert fx.camera.width * fx.camera.delx == pytest.approx(300.0) and fx.camera.sdd == 1020.0
    torch.testing.assert_close(fx.pose[:3, :3], T[:3, :3])  # same view direction
    uv = fx.camera.project(iso[None], fx.pose)[0]
    torch.testing.assert_close(uv, torch.tensor(fx.camera.principal_point, dtype=F64), atol=1e-9, rtol=0)
    assert float((iso - fx.pose[:3, 3]).norm()) == pytest.approx(sod)
    cam2, T2, point = narrow_geometry(vol, cam, T, 650.0)
    torch.testing.assert_close(point, iso, atol=1e-9, rtol=0)


def test_femur_split_moves_only_the_structure():
    g = _g(0)
    hu = torch.randint(-1000, 1500, (30, 28, 26), generator=g).float()
    aff = torch.tensor([[0.0, 1.5, 0, 10], [-2.0, 0, 0, 5], [0, 0, 2.5, -40], [0, 0, 0, 1]], dtype=F64)
    vol = volume_from_array(hu, affine=aff)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in hu.shape], indexing="ij"), -1).to(F64)
    mask = ((idx - torch.tensor([14.0, 12.0, 9.0], dtype=F64)) ** 2).sum(-1) < 30
    rest, part = fem.split_structure(vol, mask, 40.0)
    assert torch.equal(rest.data[~mask], hu[~mask]) and bool((rest.data[mask] == 40.0).all())
    centre = torch.tensor([3.0, -2.0, 1.0], dtype=F64)
    M = femur_transform(centre, 4.0, torch.tensor([0.3, -0.5, 0.8], dtype=F64), 5.0,
                        torch.tensor([0.0, 0.6, 0.8], dtype=F64))
    assert float((M[:3, :3] @ centre + M[:3, 3] - centre).norm()) == pytest.approx(5.0)  # the hip centre shifts
    moved_aff = M @ part.affine
    pm = part.data != 40.0  # the structure's voxels inside the cut-out box
    pidx = torch.nonzero(pm).to(F64)
    moved_centroid = (pidx @ moved_aff[:3, :3].T + moved_aff[:3, 3]).mean(0)
    orig_centroid = vol.voxel_to_world(torch.nonzero(mask & (hu != 40.0)).to(F64)).mean(0)
    torch.testing.assert_close(moved_centroid, M[:3, :3] @ orig_centroid + M[:3, 3])
    # rest + (part − fill) is the CT again
    back = rest.data.clone()
    sl = tuple(slice(int(a), int(a) + n) for a, n in zip(torch.linalg.solve(aff, part.affine)[:3, 3].round(),
                                                          part.data.shape))
    back[sl] += part.data - 40.0
    torch.testing.assert_close(back, hu)


def test_femur_mask_of_the_bundled_pelvis_and_family(sample_ct):
    labels = femur_labels(sample_ct)
    assert int(labels.max()) == 2
    voxel_cc = float(sample_ct.spacing.prod()) / 1000
    xs = []
    for side in (1, 2):
        m = labels == side
        assert 60 < float(m.sum()) * voxel_cc < 400  # a proximal femur, cm³
        w = sample_ct.voxel_to_world(torch.nonzero(m).to(F64))
        assert float(w[:, 2].min() - sample_ct.corners[:, 2].min()) < 10  # leaves the CT through its bottom
        assert float(w[:, 2].max() - sample_ct.corners[:, 2].min()) < 90  # ends at the hip joint, below the crests
        assert float(sample_ct.data[m].float().mean()) > 250  # bone
        xs.append(float(w[:, 0].mean()))
    assert xs[0] > 40 and xs[1] < -40  # label 1 toward +x (the patient's right)
    # a CT that ends above the hip joints has no femur: not applicable, said clearly
    upper = volume_from_array(sample_ct.data[:, :, 30:], affine=sample_ct.affine)
    with pytest.raises(InputError, match="no femur"):
        fem.femur_mask(upper)
    # the family: the pelvis stays, the femur moved; its pixels are marked
    cam = Camera(sdd=1020.0, height=48, width=48, delx=8.0)
    iso = sample_ct.get_isocenter().clone()
    iso[2] = float(sample_ct.corners[:, 2].min()) + 70.0
    T = carm_pose(0.0, 0.0, sod=650.0, isocenter=iso)
    kw = dict(photons=0, blur_px=0.0)
    fx = form_xray(sample_ct, cam, T, "femur", generator=_g(0), **kw)
    assert 2 <= fx.info["translation_mm"] <= 6 and 2 <= fx.info["rotation_deg"] <= 5
    still = form_xray(sample_ct, cam, T, "femur", generator=_g(0), translation_mm=0.0, rotation_deg=0.0, **kw)
    ours = form_xray(sample_ct, cam, T, "ours", generator=_g(0), **kw)
    changed = (fx.raw - still.raw).abs() > 0.01 * still.raw + 1  # 1 %, and more than the rounding to counts
    assert int(fx.foreign.sum()) > 5 and int(changed.sum()) > 5
    assert int((changed & ~fx.foreign).sum()) == 0
    pre = preprocess(fx.raw, fx.camera, **fx.preprocess).image
    ref = preprocess(ours.raw, ours.camera, **ours.preprocess).image
    assert bool(torch.isfinite(pre).all()) and float(pre.max() - pre.min()) > 0.5 and ncc(pre, ref) > 0.9
    # a view of one hip moves that femur
    w = sample_ct.voxel_to_world(torch.nonzero(labels == 1).to(F64))
    T1 = carm_pose(0.0, 0.0, sod=650.0, isocenter=w.mean(0))
    small = Camera(sdd=1020.0, height=24, width=24, delx=5.0)
    for seed in (1, 2, 3):
        one = form_xray(sample_ct, small, T1, "femur", generator=_g(seed), photons=0)
        assert one.info["side"] == "right" and one.info["hip_in_view"] and bool(one.foreign.any())
    # with no displacement the image is today's simulator's (Siddon, physical μ) up to the area average
    c = fx.info["collimator_px"]
    rel = (still.raw - ours.raw).abs()[c:-c, c:-c] / ours.raw[c:-c, c:-c]
    assert float(rel.median()) < 0.01


# ------------------------------------------------------------------ the independent renderer


def test_diffdrr_bead_lands_on_the_same_pixel():
    pytest.importorskip("diffdrr.drr")
    from xraypose.appearance.independent import diffdrr_line_integrals

    n = 40
    hu = torch.full((n, n, n), -1000.0)
    origin = torch.tensor([-19.5, -19.5, -19.5], dtype=F64)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64)] * 3, indexing="ij"), -1)
    bead = torch.tensor([6.0, -4.0, 5.0], dtype=F64)
    hu[((ijk + origin - bead) ** 2).sum(-1) < 3.5**2] = 2000.0
    hu[0, 0, :2] = 0.0  # DiffDRR's density model needs some soft tissue; this corner is out of view
    vol = volume_from_array(hu, spacing=(1.0, 1.0, 1.0), origin=origin.tolist())
    cam = Camera(sdd=1000.0, height=64, width=60, delx=1.0, dely=1.1, x0=3.0, y0=-2.0, reverse_x_axis=True)
    T = carm_pose(20.0, 10.0, sod=500.0, isocenter=torch.zeros(3, dtype=F64))
    theirs = diffdrr_line_integrals(vol, cam, T)
    ours = siddon_lines(vol.density("raw")[None] + 1000.0, vol.affine, cam, T)[0]

    def centroid(img):
        w = img.clamp_min(0)
        v, u = torch.meshgrid(torch.arange(img.shape[0], dtype=F64), torch.arange(img.shape[1], dtype=F64),
                              indexing="ij")
        return torch.stack([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])

    expect = cam.project(bead[None], T)[0]
    assert float(theirs.max()) > 0 and 5 < float(expect[0]) < 55 and 5 < float(expect[1]) < 59
    torch.testing.assert_close(centroid(theirs), centroid(ours), atol=0.05, rtol=0)
    torch.testing.assert_close(centroid(theirs), expect, atol=0.3, rtol=0)
