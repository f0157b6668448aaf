"""A motion model for sequences: a constant-velocity Kalman filter on SE(3) and its smoother.

One view sees depth only as magnification: on 128² low-dose fluoroscopy frames of the pelvis the
registration of each frame alone scatters ±1.3 mm (rms) along the beam and ±0.2 mm across it, from one
frame to the next, independently (lag-1 correlation 0.08; benchmarks/tracking.py).  The motion of a
patient from one frame to the next is smooth, so the frames can be pooled: each registration is a
*measurement* of the pose, with the covariance its own optimum gives (:func:`measurement_covariance`),
fused with the prediction of a constant-velocity model (:class:`MotionFilter`, causal: usable while
frames arrive) and, for a recorded sequence, with the later frames too (:func:`smooth`, the
Rauch–Tung–Striebel smoother run backwards over the filter's estimates).

**Chart.**  Poses (camera_to_world, or a rig's rig_to_world; world = CT RAS mm) are perturbed as
``T(ξ) = F·exp(ξ)·F⁻¹·T`` with ``F`` the translation to the isocenter (world axes) and ξ = (ω, ρ)
(rad, mm; :func:`xraypose.geometry.se3_exp`'s order): ω turns about the isocenter, ρ moves it.  The
state is the pose and its velocity ``v`` (ξ per frame); the prediction is ``F·exp(v)·F⁻¹·T``.

**Noise.**  Process: white noise in the acceleration, ``accel_deg`` and ``accel_mm`` per frame per
frame (standard deviation; :class:`MotionModel`).  The defaults, 0.2° and 0.3 mm, are those of
breathing (about 10 mm amplitude over 4 s: 0.11 mm/frame² at 15 frames/s, 0.44 at 7.5).  Measurement:
the Gauss–Newton curvature ``JᵀJ`` of the last Levenberg–Marquardt level at the registered pose gives
the shape, ``(JᵀJ)⁻¹·‖r‖²/M`` the size under independent pixel noise (``‖r‖² = 2(1 − similarity)``,
M pixels); the pixels' noise is not independent (blur, resampling, the gradient measure), and the
scatter measured on the pelvis frames was 3.6× (depth) and 4.2× (across) that size: ``noise_scale``
(default 4) multiplies the standard deviations.

**Jumps.**  A measurement whose innovation is improbable under the model (squared Mahalanobis distance
above ``gate``, default 28: a 6-dof χ² tail of 10⁻⁴) restarts the filter there (the measurement taken
as it is, the velocity forgotten); the smoother does not smooth across such a restart.  A re-initialised
frame of :func:`~xraypose.register.tracking.track_sequence` goes through the same gate: one that lands
where the model expected it keeps the history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from xraypose.errors import InputError
from xraypose.geometry import se3_exp, se3_log

__all__ = ["MotionModel", "MotionFilter", "measurement_covariance", "result_covariance", "smooth", "pose_spread",
           "MOTIONS", "NOISE_SCALE", "bracketed_steps", "replay", "replay_likelihoods", "fit_noise", "fuse_measurements"]

F64 = torch.float64
#: What ``track_sequence`` reports per frame: the registration alone, the causal filter, or the smoother.
MOTIONS = ("none", "filter", "smooth")
#: The default ``noise_scale``: the registration's own standard deviations (:func:`measurement_covariance`) times
#: this are the scatter measured on low-dose frames (module docstring, "Noise").
NOISE_SCALE = 4.0


@dataclass(frozen=True)
class MotionModel:
    """Settings of the motion model (see the module docstring).

    Args:
        accel_mm: standard deviation of the change of the velocity per frame, mm/frame² (translation).
        accel_deg: the same for the rotation, degrees/frame².
        noise_scale: multiplies the standard deviations of :func:`measurement_covariance`.
        gate: squared Mahalanobis distance of a measurement's innovation above which the filter
            restarts there (a jump).
    """

    accel_mm: float = 0.3
    accel_deg: float = 0.2
    noise_scale: float = NOISE_SCALE
    gate: float = 28.0

    def __post_init__(self):
        for name in ("accel_mm", "accel_deg", "noise_scale", "gate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"motion model: {name} must be a finite number > 0, got {v!r}")

    def process_noise(self) -> torch.Tensor:
        """(12, 12) covariance of one frame's white-noise acceleration on (pose ξ, velocity)."""
        q = torch.tensor([math.radians(self.accel_deg)] * 3 + [self.accel_mm] * 3, dtype=F64) ** 2
        Q = torch.zeros(12, 12, dtype=F64)
        Q[:6, :6] = torch.diag(q) / 3
        Q[:6, 6:] = Q[6:, :6] = torch.diag(q) / 2
        Q[6:, 6:] = torch.diag(q)
        return Q


def measurement_covariance(curvature, similarity: float, n_pixels: int, pose, scale: float = 1.0):
    """(6, 6) covariance of a registered pose in the world-axes chart (module docstring).

    Args:
        curvature: (6, 6) Gauss–Newton ``JᵀJ`` at the pose, in the chart of the pose's own axes at the
            isocenter (:class:`~xraypose.register.steppers.LMStepper`'s), or None.
        similarity: the level's score at the pose (``1 − ½‖r‖²``).
        n_pixels: M, the residual's pixels.
        pose: (4, 4) the registered pose (its rotation turns the curvature's chart to world axes).
        scale: multiplies the standard deviations.
    Returns:
        (6, 6) float64, or None without a usable curvature (not finite, not positive definite).
    """
    if curvature is None:
        return None
    H = torch.as_tensor(curvature, dtype=F64)
    if H.shape != (6, 6) or not bool(torch.isfinite(H).all()):
        return None
    var = max(2.0 * (1.0 - float(similarity)), 1e-12) / max(int(n_pixels), 1)
    try:
        L = torch.linalg.cholesky(0.5 * (H + H.T))
    except RuntimeError:  # not positive definite: a direction the X-ray does not see at all
        return None
    C = torch.cholesky_inverse(L) * var * scale ** 2
    R = torch.as_tensor(pose, dtype=F64)[:3, :3]
    A = torch.block_diag(R, R)
    return A @ C @ A.T


def result_covariance(res, k: int, sizes, scale: float = 1.0):
    """(6, 6) world-axes covariance of element ``k``'s registered pose in a registration result ``res``
    (:class:`~xraypose.register.optimizer.RegistrationResult`): :func:`measurement_covariance` of its last
    Levenberg–Marquardt level's curvature, its score there and that level's pixels over the views.

    Args:
        res: the result (its ``curvature``, ``levels``, ``config`` and ``poses``).
        k: the element (an X-ray of a batch, or a rig's one element).
        sizes: (H, W) of each view's image (the level's pixels follow its rows and the aspect).
        scale: multiplies the standard deviations (:data:`NOISE_SCALE`: the measured scatter).
    Returns:
        (6, 6) float64, or None without one (no Levenberg–Marquardt level, no finite score, a direction
        the X-ray does not see).
    """
    curv = res.curvature[k] if res.curvature and k < len(res.curvature) else {}
    if not curv:
        return None
    li = max(curv)
    lv = res.config.levels[li]
    score = next((r["similarity"] for r in res.levels[k] if r.get("level") == li), None)
    if score is None or not math.isfinite(float(score)):
        return None
    n = 0
    for H, W in sizes:
        rows = min(int(lv.size), int(H))
        n += rows * max(1, round(int(W) * rows / int(H)))
    return measurement_covariance(curv[li], float(score), n, res.poses[k], scale)


def _about(isocenter) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, F⁻¹): the translation (4, 4) to the ``isocenter`` (3,) mm and back — the motion chart's centre."""
    F = torch.eye(4, dtype=F64)
    F[:3, 3] = torch.as_tensor(isocenter, dtype=F64).reshape(3)
    return F, torch.linalg.inv(F)


def _move(F, Fi, xi: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """``F·exp(ξ)·F⁻¹·pose`` (4, 4): ``pose`` moved by ξ (6,) of the motion chart."""
    return F @ se3_exp(xi) @ Fi @ pose


def _chart(F, Fi, pose: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """ξ (6,) with ``pose = F·exp(ξ)·F⁻¹·ref``."""
    return se3_log(Fi @ pose @ torch.linalg.inv(ref) @ F)


def _kalman_update(Pp: torch.Tensor, S_inv: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state correction ``x`` (..., 12) and the covariance (..., 12, 12), symmetrised, of a prior ``Pp``
    (..., 12, 12) given an innovation ``z`` (..., 6) of covariance ``S`` (its inverse ``S_inv``, (..., 6, 6)); one
    filter or a batch of them (:func:`replay_likelihoods`)."""
    G = Pp[..., :, :6] @ S_inv
    x = G @ z if z.dim() == 1 else (G @ z[..., None])[..., 0]
    P = Pp - G @ Pp[..., :6, :]
    return x, 0.5 * (P + P.transpose(-1, -2))


def _restart_covariance(R: torch.Tensor | None, batch: tuple = ()) -> torch.Tensor:
    """(*batch, 12, 12) state covariance at a restart: the measurement's ``R`` (..., 6, 6; None: exact) for the pose
    and, for the unknown velocity, a few frames of the largest plausible motion (5° and 10 mm per frame)."""
    shape = tuple(R.shape[:-2]) if R is not None else tuple(batch)
    P = torch.zeros(*shape, 12, 12, dtype=F64)
    if R is not None:
        P[..., :6, :6] = R
    P[..., 6:, 6:] = torch.diag(torch.tensor([math.radians(5.0)] * 3 + [10.0] * 3, dtype=F64) ** 2)
    return P


@dataclass
class _Step:
    """What the smoother needs of one filtered frame."""

    predicted: torch.Tensor | None  # (4, 4) the prediction (None at a restart)
    P_pred: torch.Tensor | None  # (12, 12)
    pose: torch.Tensor  # (4, 4) the filtered pose
    velocity: torch.Tensor  # (6,)
    P: torch.Tensor  # (12, 12)
    restart: bool
    measured: bool = True  # False: a frame the filter coasted over (its prediction)
    measurement: torch.Tensor | None = None  # (4, 4) the registered pose fused here (None: coasted)
    R: torch.Tensor | None = None  # (6, 6) its covariance as given (None: taken as exact)


@dataclass
class MotionFilter:
    """Constant-velocity Kalman filter on SE(3) about ``isocenter`` (3,) world mm (module docstring).

    ``predict()`` gives the next frame's predicted pose; ``update(pose, R, restart)`` fuses that frame's
    registered pose (4, 4) with covariance ``R`` (6, 6, world axes; None: taken as exact) and returns
    the filtered pose.  ``steps`` keeps what :func:`smooth` needs.
    """

    isocenter: torch.Tensor
    model: MotionModel = field(default_factory=MotionModel)
    steps: list = field(default_factory=list)

    def __post_init__(self):
        self._F, self._Fi = _about(self.isocenter)
        self._Q = self.model.process_noise()
        self._Phi = torch.eye(12, dtype=F64)
        self._Phi[:6, 6:] = torch.eye(6, dtype=F64)

    def _move(self, xi: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return _move(self._F, self._Fi, xi, pose)

    def _chart(self, pose: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return _chart(self._F, self._Fi, pose, ref)

    def _prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted pose (4, 4), its state covariance (12, 12)) for the next frame."""
        if not self.steps:
            raise InputError("the motion filter has no frame yet")
        s = self.steps[-1]
        return self._move(s.velocity, s.pose), self._Phi @ s.P @ self._Phi.T + self._Q

    def predict(self) -> torch.Tensor:
        """(4, 4) the next frame's predicted pose (``InputError`` before the first update)."""
        return self._prior()[0]

    def innovation(self, pose, R) -> float:
        """Squared Mahalanobis distance of a measured ``pose`` (covariance ``R``) from the prediction
        (inf when it cannot be measured: no frame yet, no covariance)."""
        if not self.steps or R is None:
            return math.inf
        Tp, Pp = self._prior()
        z = self._chart(torch.as_tensor(pose, dtype=F64), Tp)
        return float(z @ torch.linalg.solve(Pp[:6, :6] + R, z))

    def update(self, pose, R=None, restart: bool = False) -> torch.Tensor:
        """Fuse a registered ``pose`` (4, 4) of covariance ``R`` (6, 6 or None); returns the filtered
        pose (4, 4).  Restarts (the pose as it is, no velocity) on the first frame, when ``restart``,
        without ``R``, or when the innovation exceeds the model's gate."""
        T = torch.as_tensor(pose, dtype=F64).reshape(4, 4)
        if self.steps and not restart and R is not None:
            Tp, Pp = self._prior()
            z = self._chart(T, Tp)
            S_inv = torch.linalg.inv(Pp[:6, :6] + R)
            if float(z @ S_inv @ z) <= self.model.gate:
                return self._fuse(T, R, Tp, Pp, z, S_inv)
        return self._restart(T, R)

    def _fuse(self, T, R, Tp, Pp, z, S_inv) -> torch.Tensor:
        """The Kalman update of measurement ``T`` (covariance ``R``) against the prior (``Tp``, ``Pp``), its
        innovation ``z`` and ``S⁻¹``; returns the filtered pose."""
        x, P = _kalman_update(Pp, S_inv, z)
        out = self._move(x[:6], Tp)
        self.steps.append(_Step(Tp, Pp, out.clone(), self.steps[-1].velocity + x[6:], P, False,
                                measurement=T.clone(), R=torch.as_tensor(R, dtype=F64).clone()))
        return out

    def _restart(self, T, R) -> torch.Tensor:
        """The model restarted at measurement ``T`` (covariance ``R`` or None): the pose as it is, no velocity."""
        R = None if R is None else torch.as_tensor(R, dtype=F64)
        self.steps.append(_Step(None, None, T.clone(), torch.zeros(6, dtype=F64), _restart_covariance(R), True,
                                measurement=T.clone(), R=None if R is None else R.clone()))
        return T.clone()

    def coast(self) -> torch.Tensor:
        """A frame without a measurement (its registration failed): the prediction, its uncertainty
        grown by one frame of process noise; returns the predicted pose (4, 4)."""
        Tp, Pp = self._prior()
        self.steps.append(_Step(Tp, Pp, Tp.clone(), self.steps[-1].velocity.clone(), Pp.clone(), False,
                                measured=False))
        return Tp


#: The grids :func:`fit_noise` searches: factors on the process noise's standard deviations (``accel_mm``,
#: ``accel_deg``) and on the measurements' (``noise_scale``).
FIT_ACCEL_FACTORS = (0.5, 0.71, 1.0, 1.41, 2.0)
FIT_NOISE_FACTORS = (0.71, 1.0, 1.41)
#: Fewer innovations than this (fused frames that are not restarts) and :func:`fit_noise` keeps the model.
FIT_MIN_INNOVATIONS = 12


def replay(filt: MotionFilter, model: MotionModel, noise_factor: float = 1.0) -> tuple[MotionFilter, float, int]:
    """The filter's measurements run again through a filter of ``model``, their covariances × ``noise_factor``²,
    with the same restarts and coasted frames (no gate: the sequence's segments stay as they were).

    Returns:
        (the new filter, the innovations' Gaussian log-likelihood Σ −½(zᵀS⁻¹z + log det S) up to a constant,
        the number of innovations).
    """
    out = MotionFilter(filt.isocenter, model)
    ll, n = 0.0, 0
    f2 = float(noise_factor) ** 2
    for s in filt.steps:
        if not s.measured:
            out.coast()
            continue
        R = None if s.R is None else s.R * f2
        if s.restart or R is None:
            out._restart(s.measurement, R)
            continue
        Tp, Pp = out._prior()
        z = out._chart(s.measurement, Tp)
        S = Pp[:6, :6] + R
        S_inv = torch.linalg.inv(S)
        ll += -0.5 * (float(z @ S_inv @ z) + float(torch.linalg.slogdet(S)[1]))
        n += 1
        out._fuse(s.measurement, R, Tp, Pp, z, S_inv)
    return out, ll, n


def replay_likelihoods(filt: MotionFilter, factors) -> tuple[torch.Tensor, int]:
    """:func:`replay`'s log-likelihood for each ``(accel factor, noise factor)`` of ``factors`` (K pairs), the K models
    run through the measurements at once (batched: one pass, not K); returns ((K,) float64, the innovations)."""
    a = torch.tensor([float(f[0]) for f in factors], dtype=F64)
    r2 = torch.tensor([float(f[1]) for f in factors], dtype=F64) ** 2
    K = len(factors)
    Q = filt.model.process_noise()[None] * (a ** 2)[:, None, None]  # both accel_mm and accel_deg × a: q × a²
    Phi = filt._Phi
    pose = v = P = Tp = Pp = None
    ll = torch.zeros(K, dtype=F64)
    n = 0
    for s in filt.steps:  # the K filters in step: MotionFilter's own chart, motion and update on (K, ...) tensors
        if pose is not None:
            Tp = filt._move(v, pose)
            Pp = Phi @ P @ Phi.T + Q
        if not s.measured:  # coasted
            pose, P = Tp, Pp
            continue
        if s.restart or s.R is None:
            pose = s.measurement.expand(K, 4, 4).clone()
            v = torch.zeros(K, 6, dtype=F64)
            P = _restart_covariance(None if s.R is None else s.R[None] * r2[:, None, None], (K,))
            continue
        z = filt._chart(s.measurement, Tp)  # (K, 6)
        S = Pp[:, :6, :6] + s.R[None] * r2[:, None, None]
        S_inv = torch.linalg.inv(S)
        ll += -0.5 * (torch.einsum("ki,kij,kj->k", z, S_inv, z) + torch.linalg.slogdet(S)[1])
        n += 1
        x, P = _kalman_update(Pp, S_inv, z)
        pose = filt._move(x[:, :6], Tp)
        v = v + x[:, 6:]
    return ll, n


def fit_noise(filt: MotionFilter, accel_factors=FIT_ACCEL_FACTORS, noise_factors=FIT_NOISE_FACTORS):
    """The motion model's noise fitted to a recorded sequence: the process noise (``accel_mm``, ``accel_deg``
    together) and the measurements' scale (``noise_scale``), each times the factor of its grid that makes the
    filter's innovations most probable (maximum likelihood over the grid: :func:`replay_likelihoods`, then
    :func:`replay` of the chosen pair).

    Why: the defaults are breathing's motion and the scatter of low-dose 128² frames; a sequence that moves
    faster, or frames registered more (or less) precisely, make the smoother lag behind the motion (or follow
    the noise).  The innovations of the whole sequence say which; a handful do not (fewer than
    :data:`FIT_MIN_INNOVATIONS`: the filter as it is).

    Returns:
        (the filter replayed with the fitted model — ``filt`` itself when nothing is fitted —, a dict
        ``{"accel_factor", "noise_factor", "log_likelihood", "innovations"}`` or None when not fitted).
    """
    n_innov = sum(1 for s in filt.steps if s.measured and not s.restart and s.R is not None)
    if n_innov < FIT_MIN_INNOVATIONS:
        return filt, None
    pairs = [(float(a), float(r)) for a in accel_factors for r in noise_factors]
    ll, _ = replay_likelihoods(filt, pairs)
    a, r = pairs[int(torch.argmax(ll))]
    m0 = filt.model
    model = MotionModel(accel_mm=m0.accel_mm * a, accel_deg=m0.accel_deg * a, noise_scale=m0.noise_scale * r,
                        gate=m0.gate)
    f, lik, n = replay(filt, model, r)
    return f, {"accel_factor": a, "noise_factor": r, "log_likelihood": lik, "innovations": n}


def smooth(filt: MotionFilter, covariances: bool = False):
    """The Rauch–Tung–Striebel smoother over a filter's frames: (4, 4) poses, one per update, each
    from every frame of its segment (restarts cut the sequence into segments); with
    ``covariances``, also each pose's (6, 6) covariance (world-axes chart at the isocenter:
    rad, mm), as ``(poses, covariances)``."""
    steps = filt.steps
    if not steps:
        return ([], []) if covariances else []
    n = len(steps)
    poses = [None] * n
    vel = [None] * n
    covs = [None] * n
    poses[-1], vel[-1], Ps = steps[-1].pose.clone(), steps[-1].velocity.clone(), steps[-1].P
    covs[-1] = Ps[:6, :6].clone()
    Phi = filt._Phi
    for f in range(n - 2, -1, -1):
        s, nxt = steps[f], steps[f + 1]
        if nxt.restart:  # no smoothing across a restart
            poses[f], vel[f], Ps = s.pose.clone(), s.velocity.clone(), s.P
            covs[f] = Ps[:6, :6].clone()
            continue
        G = s.P @ Phi.T @ torch.linalg.pinv(nxt.P_pred, hermitian=True)
        dx = torch.cat([filt._chart(poses[f + 1], nxt.predicted), vel[f + 1] - s.velocity])
        x = G @ dx
        poses[f] = filt._move(x[:6], s.pose)
        vel[f] = s.velocity + x[6:]
        Ps = s.P + G @ (Ps - nxt.P_pred) @ G.T
        Ps = 0.5 * (Ps + Ps.T)
        covs[f] = Ps[:6, :6].clone()
    return (poses, covs) if covariances else poses


def bracketed_steps(steps, trusted=None) -> list:
    """Per motion-model step: True for a coasted one (a ``failed`` frame, not measured) with a measured
    step before it and one after it in its segment (no restart between): the smoother interpolates
    there, from both sides.  A coasted step at a segment's end (a jump whose frame failed: the next
    measurement restarted the model) would be extrapolated — False: the frame keeps its registration.

    ``trusted`` (per step, optional): only a measured step whose frame was trusted holds a side.  A ``failed``
    first frame is measured all the same (the model starts from something), but a smoother anchored there
    carried the failed frames after it from its error to the first good frame's pose — 1–31 mm off where
    their own registrations were 0.0–0.4 mm on 28 of 41 frames (a display-processed sequence, stop 64)."""
    n = len(steps)
    holds = [s.measured and (trusted is None or bool(trusted[f])) for f, s in enumerate(steps)]
    out = [False] * n
    seen = False  # a trusted measured step since the segment began
    for f, s in enumerate(steps):
        if s.restart:
            seen = False
        if holds[f]:
            seen = True
        elif seen and not s.measured:
            out[f] = True
    later = False  # a trusted measured step after f within f's segment
    for f in range(n - 1, -1, -1):
        s = steps[f]
        if not s.measured:
            out[f] = out[f] and later
        elif holds[f]:
            later = True
        if s.restart:
            later = False  # steps before a restart belong to the earlier segment
    return out


def fuse_measurements(pose_a, R_a, pose_b, R_b, isocenter) -> tuple[torch.Tensor, torch.Tensor]:
    """Two measurements of one frame's pose as one: ``(pose (4, 4), R (6, 6))``, the information-weighted mean.

    In the chart at ``pose_a`` (module docstring: ξ = (ω rad, ρ mm) about the ``isocenter`` (3,) mm, world axes),
    ``pose_b`` sits at ξ_b; the fused pose is at ``R·R_b⁻¹·ξ_b`` with ``R = (R_a⁻¹ + R_b⁻¹)⁻¹`` — what two Kalman
    updates of one frame give, to first order in ξ_b.  Each covariance (6, 6) must be positive definite
    (``InputError`` otherwise): a measurement taken as exact has no weight to share."""
    Ta, Tb = (torch.as_tensor(T, dtype=F64).reshape(4, 4) for T in (pose_a, pose_b))
    Ra, Rb = (torch.as_tensor(R, dtype=F64).reshape(6, 6) for R in (R_a, R_b))
    Ia, Ib = [], []
    for R, out in ((Ra, Ia), (Rb, Ib)):
        L, info = torch.linalg.cholesky_ex(0.5 * (R + R.T))
        if int(info) != 0 or not bool(torch.isfinite(R).all()):
            raise InputError("fuse_measurements needs two positive definite (6, 6) covariances")
        out.append(torch.cholesky_inverse(L))
    F, Fi = _about(isocenter)
    R = torch.linalg.inv(Ia[0] + Ib[0])
    R = 0.5 * (R + R.T)
    return _move(F, Fi, R @ (Ib[0] @ _chart(F, Fi, Tb, Ta)), Ta), R


def pose_spread(covariance, pose) -> dict | None:
    """Standard deviations of a pose of (6, 6) ``covariance`` (world-axes chart at the isocenter):
    ``{"along_beam_mm", "across_beam_mm", "rotation_deg"}`` — the isocenter's position along the
    camera's +z (the ``pose``'s third axis), across it (rms of the two other axes), and the rotation
    (rms of the three axes).  None without a covariance."""
    if covariance is None:
        return None
    C = torch.as_tensor(covariance, dtype=F64)
    z = torch.as_tensor(pose, dtype=F64)[:3, 2]
    Ct = C[3:, 3:]
    along = float(z @ Ct @ z)
    across = max(float(torch.trace(Ct)) - along, 0.0) / 2
    rot = float(torch.trace(C[:3, :3])) / 3
    return {"along_beam_mm": math.sqrt(max(along, 0.0)), "across_beam_mm": math.sqrt(across),
            "rotation_deg": math.degrees(math.sqrt(max(rot, 0.0)))}
