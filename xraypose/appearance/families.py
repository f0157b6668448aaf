"""The appearance families: each forms a target X-ray one way (see docs/benchmarks.md, "Appearance families").

Every family except "ours" and "diffdrr" renders with this module's chain:

1. line integrals with Siddon's exact method (never registration's trilinear
   "hu" DRR) on a detector of ``supersample``× the resolution (default 2);
2. transmission per fine pixel — monochromatic ``exp(−∫μ dl)`` with the
   physical μ model (~70 keV), or polychromatic (:mod:`.attenuation`) — plus
   metal (:mod:`.implants`) or a moved bone (:mod:`.femur`) where the family
   adds them;
3. the detector (:mod:`.detector`): the area average to detector pixels (a
   pixel integrates intensity), focal blur, scatter, a collimator border,
   Poisson noise, then a linear 16-bit file or a display image.
"""

from __future__ import annotations

import math
import weakref

import torch

from xraypose.appearance import attenuation as att
from xraypose.appearance import detector as det
from xraypose.appearance import femur as fem
from xraypose.appearance import implants as imp
from xraypose.appearance.independent import DiffDRRRenderer, diffdrr_scale_per_mm
from xraypose.appearance.registry import Context, FormedXray, register_family
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import make_transform, so3_exp
from xraypose.render import render
from xraypose.render.rays import world_rays
from xraypose.volume import Volume

__all__ = ["default_collimator_px", "siddon_lines", "narrow_geometry", "draw_implants", "femur_labels",
           "femur_transform"]

F64 = torch.float64

# ------------------------------------------------------------------ caches of per-CT work (keyed on the Volume)

_CACHE: "weakref.WeakKeyDictionary[Volume, dict]" = weakref.WeakKeyDictionary()


def _cached(volume: Volume, key, make, slot=None):
    """``make()`` once per (volume, key) while the volume's voxels are unchanged.

    An :class:`InputError` is remembered too (a CT without femurs says so at
    once the second time).  ``slot``: entries sharing a slot replace each other
    (big objects, e.g. a renderer per camera, kept for the last key only).
    """
    store = _CACHE.setdefault(volume, {})
    version = volume.data._version
    name = key if slot is None else slot
    hit = store.get(name)
    if hit is not None and hit[0] == version and hit[1] == key:
        if isinstance(hit[2], InputError):
            raise hit[2]
        return hit[2]
    try:
        value = make()
    except InputError as e:
        store[name] = (version, key, e)
        raise
    store[name] = (version, key, value)
    return value


# ------------------------------------------------------------------ shared chain


def default_collimator_px(camera: Camera) -> int:
    """Collimator border of a detector: 3 % of its smaller side (4 px at 128², 8 px at 256²), at least 1."""
    return max(1, int(round(0.03 * min(camera.height, camera.width))))


def siddon_lines(density: torch.Tensor, affine: torch.Tensor, camera: Camera, pose: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float64 exact line integrals of ``density`` (C, I, J, K) per mm through ``camera`` at ``pose``."""
    T = pose.to(device=density.device, dtype=F64)[None]
    return render(density, affine, camera, T, renderer="siddon")[0].to(F64).cpu()


def _fine(ctx: Context, camera: Camera | None = None):
    cam = camera or ctx.camera
    s = ctx.p.fixed("supersample", 2)
    if isinstance(s, bool) or int(s) != s or s < 1:
        raise InputError(f"supersample must be a whole number >= 1, got {s!r}")
    s = int(s)
    return s, cam.resize(cam.height * s, cam.width * s)


def _physical_mu(volume: Volume) -> torch.Tensor:
    return _cached(volume, "physical", lambda: volume.density("physical"))


def _fractions(volume: Volume, hu_bone: float) -> torch.Tensor:
    return _cached(volume, ("fractions", round(hu_bone, 6)), lambda: att.water_bone_fractions(volume.data, hu_bone))


def _base(ctx: Context, camera: Camera, *, photons=None, blur_px=None):
    """The detector settings every family shares (overridable): collimator, photons, blur, 16-bit I0, and
    ``dose_scale`` (default 1), which multiplies the photons per pixel (an automatic exposure's target too):
    ``(coarse / fine)²`` forms an X-ray on a finer detector with the same dose per mm² as on the coarse one."""
    p = ctx.p
    c = p.fixed("collimator_px", default_collimator_px(camera))
    if isinstance(c, bool) or int(c) != c or c < 0:
        raise InputError(f"collimator_px must be a whole number >= 0, got {c!r}")
    c = int(c)
    if 2 * (c + 2) >= min(camera.height, camera.width):
        raise InputError(f"a collimator border of {c} px leaves no image on a {camera.height}×{camera.width} detector")
    photons = p.fixed("photons", 1e5) if photons is None else photons
    blur_px = p.fixed("blur_px", 0.7) if blur_px is None else blur_px
    i0 = p.fixed("i0", 65000.0)
    scale = p.fixed("dose_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise InputError(f"dose_scale must be a number > 0, got {scale!r}")
    if not (float(photons) >= 0 and math.isfinite(float(photons))):
        raise InputError(f"photons must be >= 0 (0: no noise), got {photons!r}")
    if not (float(blur_px) >= 0):
        raise InputError(f"blur_px must be >= 0, got {blur_px!r}")
    if not 0 < float(i0) <= 65535:
        raise InputError(f"i0 must be in (0, 65535], got {i0!r}")
    return dict(collimator_px=c, photons=float(photons) * scale, blur_px=float(blur_px), i0=float(i0),
                dose_scale=float(scale))


def _standard_preprocess(c: int, i0: float) -> dict:
    return {"crop": c + 2, "blur": (5, 1.0), "log": True, "i0": i0, "rescale": True}


def _detect(ctx: Context, camera: Camera, pose: torch.Tensor, T_fine: torch.Tensor, s: int, base: dict, *,
            scatter=None, display=None, foreign_fine=None) -> FormedXray:
    """Fine transmission (H·s, W·s) → the stored image, through the detector chain."""
    t = det.area_average(T_fine, s)
    t = det.gaussian_blur(t, base["blur_px"])
    if scatter is not None:
        t = det.add_scatter(t, scatter["spr"], scatter["sigma_mm"], camera.delx, camera.dely)
    c = base["collimator_px"]
    t = det.collimate(t, c)
    photons = base["photons"]
    if base.get("detected_photons") is not None:  # automatic exposure control: a set signal behind the patient
        inside = ~det.border_mask(t.shape, c)
        photons = base["detected_photons"] * base["dose_scale"] / float(t[inside].median().clamp_min(1e-12))
        ctx.p.record("photons_unattenuated", photons)
    t = det.poisson(t, photons, ctx.generator)
    if display is None:
        raw = det.store16(t, base["i0"])
        prep = _standard_preprocess(c, base["i0"])
    else:
        floor = 1.0 / photons if photons > 0 else 1e-6
        raw = det.display(t, collimator_px=c, floor=floor, **display)
        prep = {"crop": c + 2, "blur": (5, 1.0), "rescale": True, **_display_reading(display)}
    foreign = None
    if foreign_fine is not None:
        foreign = det.area_average(foreign_fine.to(F64), s) > 0
    return FormedXray(raw=raw, camera=camera, pose=pose, preprocess=prep, info={}, foreign=foreign)


def _display_reading(display: dict) -> dict:
    """How a user reads a display image as line-integral-like, bone bright (preprocess's ``log`` argument)."""
    if display["lut"] == "log":
        # already ∝ −log I: as is when bone is bright, max − v when it is dark
        return {"log": False} if display["polarity"] == "bone_bright" else {"log": "log-intensity", "i0": None}
    # linear LUT: ∝ I when bone is dark (take the log against the image maximum); 1 − I/Imax when bright
    return {"log": True, "i0": None} if display["polarity"] == "bone_dark" else {"log": False}


def _mono(ctx: Context, pose: torch.Tensor, fine: Camera, extra=None) -> torch.Tensor:
    """exp(−(∫μ dl + extra)) on the fine detector, physical μ model."""
    L = siddon_lines(_physical_mu(ctx.volume)[None], ctx.volume.affine, fine, pose)[0]
    if extra is not None:
        L = L + extra
    return torch.exp(-L)


def _mono_xray(ctx: Context, *, photons=None, blur_px=None, **detector) -> FormedXray:
    """The monochromatic X-ray (:func:`_mono`) of ``ctx.pose`` on ``ctx.camera`` through the detector
    chain: the families that change one setting — ``photons``, ``blur_px`` of :func:`_base`, or
    ``scatter``, ``display`` of :func:`_detect` — and keep the rest."""
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera, photons=photons, blur_px=blur_px)
    return _detect(ctx, ctx.camera, ctx.pose, _mono(ctx, ctx.pose, fine), s, base, **detector)


# ------------------------------------------------------------------ families


@register_family("ours", "xraypose's own simulator, unchanged (Siddon 2×, physical μ, 0.7 px blur, Poisson 1e5, "
                         "16 bit, collimator): the baseline")
def _ours(ctx: Context) -> FormedXray:
    from xraypose.synthetic import XraySimulator

    p = ctx.p
    c = p.fixed("collimator_px", default_collimator_px(ctx.camera))
    kw = dict(supersample=p.fixed("supersample", 2), photons=p.fixed("photons", 1e5), blur_px=p.fixed("blur_px", 0.7),
              collimator_px=c, i0=p.fixed("i0", 65000.0))
    sim = _cached(ctx.volume, ("ours", ctx.camera, tuple(sorted(kw.items()))),
                  lambda: XraySimulator(ctx.volume, ctx.camera, **kw), slot="ours")
    x = sim(ctx.pose.to(ctx.volume.data.device), generator=ctx.generator)
    return FormedXray(raw=x.raw[0, 0].cpu(), camera=ctx.camera, pose=ctx.pose,
                      preprocess=_standard_preprocess(int(c), float(x.i0)), info={})


@register_family("diffdrr", "the independent renderer DiffDRR (its HU→density model, its trilinear renderer, "
                            "2× area-averaged) on our CT; I = I0·exp(−s·L), Poisson 2e4, 0.7 px blur, collimator")
def _diffdrr(ctx: Context) -> FormedXray:
    p = ctx.p
    scale = p.fixed("scale_per_mm", None)
    if scale is None:
        scale = _cached(ctx.volume, "diffdrr_scale", lambda: diffdrr_scale_per_mm(ctx.volume))
        p.record("scale_per_mm", scale)
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera, photons=p.fixed("photons", 2e4))
    step = p.fixed("step_mm", 0.5 * float(ctx.volume.spacing.min()))
    renderer = _cached(ctx.volume, ("diffdrr", fine), lambda: DiffDRRRenderer(ctx.volume, fine), slot="diffdrr")
    L = renderer(ctx.pose, step) * float(scale)
    return _detect(ctx, ctx.camera, ctx.pose, torch.exp(-L), s, base)


def _poly_lengths(ctx: Context, fine: Camera, pose: torch.Tensor, ct_kev: float) -> dict:
    hu_bone = att.cortical_bone_hu(ct_kev)
    ctx.p.record("hu_cortical_bone", hu_bone)
    Lwb = siddon_lines(_fractions(ctx.volume, hu_bone), ctx.volume.affine, fine, pose)
    return {"water": Lwb[0], "bone": Lwb[1]}


def _spectrum(ctx: Context):
    p = ctx.p
    kvp = p.uniform("kvp", 60.0, 120.0)
    filt = p.fixed("filtration_mm_al", 2.5)
    e, n = att.spectrum(kvp, filt)
    p.record("effective_kev", att.effective_energy(e, n))
    return e, n


@register_family("polychromatic", "a 60–120 kVp tube spectrum (Kramers, 2.5 mm Al), water/bone decomposition "
                                  "from HU, NIST μ(E), energy-integrating detector: beam hardening")
def _polychromatic(ctx: Context) -> FormedXray:
    e, n = _spectrum(ctx)
    ct_kev = ctx.p.fixed("ct_kev", 70.0)
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera)
    T = att.transmission(_poly_lengths(ctx, fine, ctx.pose, ct_kev), e, n)
    return _detect(ctx, ctx.camera, ctx.pose, T, s, base)


def _scatter_params(p) -> dict:
    return {"spr": p.uniform("spr", 0.10, 0.50), "sigma_mm": p.uniform("scatter_sigma_mm", 20.0, 60.0)}


@register_family("scatter", "scatter-to-primary 10–50 %: the primary smoothed by a Gaussian of σ 20–60 mm on the "
                            "detector, added before noise")
def _scatter(ctx: Context) -> FormedXray:
    sc = _scatter_params(ctx.p)
    return _mono_xray(ctx, scatter=sc)


def _display_params(p) -> dict:
    return {
        "lut": p.choice("lut", list(det.LUTS)),
        "polarity": p.choice("polarity", list(det.POLARITIES)),
        "gamma": p.log_uniform("gamma", 0.5, 2.0),
        "unsharp_amount": p.uniform("unsharp_amount", 0.5, 2.0),
        "unsharp_radius_px": p.uniform("unsharp_radius_px", 2.0, 10.0),
        "vignette": p.uniform("vignetting", 0.10, 0.30),
        "bits": p.choice("bits", [8, 12]),
    }


@register_family("display", "clinical display processing: log or linear LUT, gamma 0.5–2, unsharp masking "
                            "(amount 0.5–2, radius 2–10 px), vignetting 10–30 %, 8 or 12 bit, bone bright or dark")
def _display(ctx: Context) -> FormedXray:
    d = _display_params(ctx.p)
    return _mono_xray(ctx, display=d)


#: The low-dose family's range of photons per unattenuated pixel (drawn log-uniformly).
LOWDOSE_PHOTONS = (1e3, 1e4)


@register_family("lowdose", "low dose: 10³–10⁴ photons per unattenuated pixel")
def _lowdose(ctx: Context) -> FormedXray:
    photons = ctx.p.log_uniform("photons", *LOWDOSE_PHOTONS)
    return _mono_xray(ctx, photons=photons)


@register_family("focal", "focal-spot blur σ 0.3–1.5 px")
def _focal(ctx: Context) -> FormedXray:
    blur = ctx.p.uniform("blur_px", 0.3, 1.5)
    return _mono_xray(ctx, blur_px=blur)


def narrow_geometry(volume: Volume, camera: Camera, pose: torch.Tensor, sod: float, sdd: float = 1020.0,
                    detector_mm: float = 300.0) -> tuple[Camera, torch.Tensor, torch.Tensor]:
    """A DeepFluoro-like rig for the same view: (camera, pose, isocenter point).

    The camera keeps the pixel counts (and pixel aspect and mirroring) of
    ``camera`` on a ``detector_mm``-wide detector at ``sdd``; the pose keeps
    the view direction and the point of the principal ray at the CT
    isocenter's depth, and puts the source ``sod`` mm before that point.
    """
    if not (0 < sod < sdd):
        raise InputError(f"sod must be in (0, sdd = {sdd:g}) mm, got {sod!r}")
    if not detector_mm > 0:
        raise InputError(f"detector_mm must be > 0, got {detector_mm!r}")
    delx = detector_mm / camera.width
    cam = Camera(sdd=sdd, height=camera.height, width=camera.width, delx=delx,
                 dely=delx * camera.dely / camera.delx, reverse_x_axis=camera.reverse_x_axis)
    z, src = pose[:3, 2], pose[:3, 3]
    iso = torch.as_tensor(volume.get_isocenter(), dtype=F64)
    point = src + z * torch.dot(iso - src, z)
    out = pose.clone()
    out[:3, 3] = point - sod * z
    return cam, out, point


@register_family("narrow_fov", "DeepFluoro-like rig: ~300 mm detector at sdd 1020 mm, sod 600–750 mm, anatomy cut "
                               "by the field (same view direction and isocenter point)")
def _narrow_fov(ctx: Context) -> FormedXray:
    p = ctx.p
    sod = p.uniform("sod", 600.0, 750.0)
    sdd = p.fixed("sdd", 1020.0)
    width = p.fixed("detector_mm", 300.0)
    cam, pose, point = narrow_geometry(ctx.volume, ctx.camera, ctx.pose, sod, sdd, width)
    p.record("isocenter_point", point)
    s, fine = _fine(ctx, cam)
    base = _base(ctx, cam)
    return _detect(ctx, cam, pose, _mono(ctx, pose, fine), s, base)


# ------------------------------------------------------------------ implants


def _bone_points(volume: Volume) -> torch.Tensor:
    def make():
        idx = torch.nonzero(volume.data > 300.0)
        if idx.shape[0] > 20000:
            idx = idx[:: idx.shape[0] // 20000 + 1]
        return volume.voxel_to_world(idx.to(F64))

    return _cached(volume, "bone_points", make)


def _anchors(ctx: Context, camera: Camera, pose: torch.Tensor) -> torch.Tensor:
    """Bone points (M, 3) that project into the central 70 % of the image."""
    pts = _bone_points(ctx.volume)
    if pts.shape[0] == 0:
        return torch.as_tensor(ctx.volume.get_isocenter(), dtype=F64)[None]
    uv = camera.project(pts, pose)
    ok = (camera.depth(pts, pose) > 0) & (uv[:, 0] > 0.15 * camera.width) & (uv[:, 0] < 0.85 * camera.width) \
        & (uv[:, 1] > 0.15 * camera.height) & (uv[:, 1] < 0.85 * camera.height)
    return pts[ok] if bool(ok.any()) else torch.as_tensor(ctx.volume.get_isocenter(), dtype=F64)[None]


def _across_view(p, name: str, pose: torch.Tensor) -> torch.Tensor:
    """A random direction, its component along the principal ray damped (objects seen mostly side-on)."""
    v = p.direction(name)
    z = pose[:3, 2]
    v = v - 0.7 * torch.dot(v, z) * z
    return v / v.norm()


def draw_implants(ctx: Context, camera: Camera, pose: torch.Tensor, n: int) -> list:
    """``n`` metal objects near/through the bone in view: K-wires, screws, a retractor blade (shapes in world mm)."""
    p = ctx.p
    anchors = _anchors(ctx, camera, pose)
    shapes = []
    for k in range(1, n + 1):
        kind = p.choice(f"implant{k}_kind", ["kwire", "screw", "retractor"], weights=[0.45, 0.4, 0.15])
        a = anchors[p.integer(f"implant{k}_anchor", 0, anchors.shape[0] - 1) % anchors.shape[0]]
        p.record(f"implant{k}_anchor_mm", a)
        if kind == "kwire":
            d = _across_view(p, f"implant{k}_direction", pose)
            shapes += imp.kwire(a, d, p.uniform(f"implant{k}_diameter_mm", 1.6, 2.5),
                                p.uniform(f"implant{k}_length_mm", 80.0, 200.0),
                                p.uniform(f"implant{k}_offset", -0.35, 0.35), "steel")
        elif kind == "screw":
            d = _across_view(p, f"implant{k}_direction", pose)
            diam = p.uniform(f"implant{k}_diameter_mm", 4.0, 7.0)
            length = p.uniform(f"implant{k}_length_mm", 30.0, 80.0)
            material = p.choice(f"implant{k}_material", ["titanium", "steel"])
            shapes += imp.screw(a - 0.5 * length * d, d, diam, length, material)
        else:
            shapes += _retractor(p, k, camera, pose, a)
    return shapes


def _retractor(p, k: int, camera: Camera, pose: torch.Tensor, anchor: torch.Tensor) -> list:
    """A steel blade whose straight edge crosses the image, covering 10–35 % of its width from one side."""
    R, src = pose[:3, :3], pose[:3, 3]
    depth = float(torch.dot(anchor - src, R[:, 2])) - 30.0  # 30 mm above the bone, toward the source
    half_w = 0.5 * camera.width * camera.delx * depth / camera.sdd  # half the field at that depth, mm
    phi = p.uniform(f"implant{k}_edge_angle_deg", 0.0, 360.0)
    cover = p.uniform(f"implant{k}_cover", 0.10, 0.35)
    tilt = p.uniform(f"implant{k}_tilt_deg", -20.0, 20.0)
    thick = p.uniform(f"implant{k}_thickness_mm", 1.5, 3.0)
    c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
    n_cam = torch.tensor([c, s, 0.0], dtype=F64)  # from the image centre toward the covered side
    e_cam = torch.tensor([-s, c, 0.0], dtype=F64)  # along the edge
    width = 4.0 * half_w
    edge = (1.0 - 2.0 * cover) * half_w  # distance of the edge from the principal ray
    centre_cam = (edge + width / 2) * n_cam + torch.tensor([0.0, 0.0, depth], dtype=F64)
    axes_cam = torch.stack([e_cam, n_cam, torch.tensor([0.0, 0.0, 1.0], dtype=F64)], dim=1)
    axes_cam = so3_exp(e_cam * math.radians(tilt)) @ axes_cam  # tilt about the edge
    return imp.plate(R @ centre_cam + src, R @ axes_cam, (4.0 * half_w, width, thick), "steel")


def _implant_lengths(ctx: Context, fine: Camera, pose: torch.Tensor, shapes) -> dict:
    src, tgt = world_rays(fine, pose[None], fine.pixel_grid(F64))
    return {m: L.reshape(fine.height, fine.width) for m, L in imp.chord_lengths(shapes, src[0], tgt[0]).items()}


def _record_shapes(p, shapes) -> None:
    p.record("objects", [imp.shape_to_dict(s) for s in shapes])


@register_family("implants", "1–4 metal objects not in the CT (K-wires Ø1.6–2.5 mm, screws Ø4–7 mm with heads, a "
                             "retractor blade's edge) near/through bone; exact chords; foreign = their pixels")
def _implants(ctx: Context) -> FormedXray:
    p = ctx.p
    n = p.integer("n_objects", 1, 4)
    kev = p.fixed("implant_kev", 60.0)
    shapes = draw_implants(ctx, ctx.camera, ctx.pose, n)
    _record_shapes(p, shapes)
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera)
    chords = _implant_lengths(ctx, fine, ctx.pose, shapes)
    extra = sum((float(att.mu_per_mm(m, kev)) * L for m, L in chords.items()),
                torch.zeros(fine.height, fine.width, dtype=F64))
    T = _mono(ctx, ctx.pose, fine, extra)
    return _detect(ctx, ctx.camera, ctx.pose, T, s, base, foreign_fine=extra > 0)


# ------------------------------------------------------------------ a displaced femur


def femur_labels(volume: Volume) -> torch.Tensor:
    """:func:`xraypose.appearance.femur.femur_mask` of ``volume``, computed once per CT."""
    return _cached(volume, "femur_mask", lambda: fem.femur_mask(volume))


def _split(volume: Volume, side_label: int):
    def make():
        m = femur_labels(volume) == side_label
        fill = fem.filler_hu(volume, m)
        rest, part = fem.split_structure(volume, m, fill)
        mu_fill = float(Volume(data=torch.full((1, 1, 1), fill), affine=torch.eye(4)).density("physical")[0, 0, 0])
        excess = part.density("physical") - mu_fill
        return m, fill, rest.density("physical"), excess, part.affine, fem.hip_centre(volume, m)

    return _cached(volume, ("femur_split", side_label), make)


def _projects_inside(camera: Camera, pose: torch.Tensor, point: torch.Tensor) -> bool:
    uv = camera.project(point.to(F64)[None], pose)[0]
    return bool(camera.depth(point.to(F64)[None], pose)[0] > 0) and 0 <= float(uv[0]) <= camera.width - 1 \
        and 0 <= float(uv[1]) <= camera.height - 1


def femur_transform(centre: torch.Tensor, rotation_deg: float, axis: torch.Tensor, translation_mm: float,
                    direction: torch.Tensor) -> torch.Tensor:
    """(4, 4) world transform: turn by ``rotation_deg`` about ``axis`` through ``centre``, then shift."""
    R = so3_exp(axis.to(F64) * math.radians(rotation_deg))
    c = centre.to(F64)
    return make_transform(R, c - R @ c + direction.to(F64) * translation_mm)


@register_family("femur", "a femur displaced rigidly against the pelvis (2–6 mm, 2–5° about the hip centre; a femur "
                          "whose hip projects into the image when one does); CTs without femurs: not applicable "
                          "(InputError)")
def _femur(ctx: Context) -> FormedXray:
    p = ctx.p
    labels = femur_labels(ctx.volume)
    sides = ["right", "left"][: int(labels.max())]
    centres = _cached(ctx.volume, "hip_centres",
                      lambda: [fem.hip_centre(ctx.volume, labels == k + 1) for k in range(len(sides))])
    seen = [_projects_inside(ctx.camera, ctx.pose, c) for c in centres]
    side = p.choice("side", sides, weights=[1.0 if v else 0.0 for v in seen] if any(seen) else None)
    p.record("hip_in_view", seen[sides.index(side)])
    m, fill, mu_rest, excess, part_affine, centre = _split(ctx.volume, 1 if side == "right" else 2)
    t_mm = p.uniform("translation_mm", 2.0, 6.0)
    t_dir = p.direction("translation_direction")
    r_deg = p.uniform("rotation_deg", 2.0, 5.0)
    r_axis = p.direction("rotation_axis")
    T = femur_transform(centre, r_deg, r_axis, t_mm, t_dir)
    p.record("hip_centre_mm", centre)
    p.record("fill_hu", fill)
    p.record("transform", T)
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera)
    L = siddon_lines(mu_rest[None], ctx.volume.affine, fine, ctx.pose)[0]
    moved = siddon_lines(excess[None], T @ part_affine, fine, ctx.pose)[0]
    before = siddon_lines(excess[None], part_affine, fine, ctx.pose)[0]
    foreign = (moved - before).abs() > 0.01  # ≈ 0.5 mm of water
    return _detect(ctx, ctx.camera, ctx.pose, torch.exp(-(L + moved)), s, base, foreign_fine=foreign)


# ------------------------------------------------------------------ the realistic mix


@register_family("clinical", "a realistic mix: polychromatic + scatter + focal blur 0.3–1.5 px + noise (automatic "
                             "exposure: 10³–10⁴ photons at the median pixel) + display processing, implants with "
                             "probability 0.3")
def _clinical(ctx: Context) -> FormedXray:
    p = ctx.p
    e, n = _spectrum(ctx)
    sc = _scatter_params(p)
    blur = p.uniform("blur_px", 0.3, 1.5)
    detected = p.log_uniform("detected_photons", 1e3, 1e4)
    d = _display_params(p)
    with_implants = p.bernoulli("implants", 0.3)
    shapes = draw_implants(ctx, ctx.camera, ctx.pose, p.integer("n_objects", 1, 4)) if with_implants else []
    if shapes:
        _record_shapes(p, shapes)
    ct_kev = p.fixed("ct_kev", 70.0)
    s, fine = _fine(ctx)
    base = _base(ctx, ctx.camera, photons=0.0, blur_px=blur)
    base["detected_photons"] = detected
    lengths = _poly_lengths(ctx, fine, ctx.pose, ct_kev)
    foreign = None
    if shapes:
        chords = _implant_lengths(ctx, fine, ctx.pose, shapes)
        lengths.update(chords)
        foreign = sum(chords.values()) > 0
    T = att.transmission(lengths, e, n)
    return _detect(ctx, ctx.camera, ctx.pose, T, s, base, scatter=sc, display=d, foreign_fine=foreign)
