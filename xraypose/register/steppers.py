"""How a level moves the poses: :class:`Track` (one start of one X-ray) and the two steppers.

A registration is a list of :class:`Track`\\ s, one per start of each X-ray.  A level runs
``stepper.begin(tracks)``, then ``stepper.iterate(...)`` until no track is active, then
``stepper.end(tracks)``; every track keeps the best pose of the level.  Each stepper decides
its own convergence test (:class:`~xraypose.register.config.RegistrationConfig`).

* :class:`AdamStepper` — Adam on the similarity in the configured parameterization (its gradient:
  autograd to the pose, then the parameter map's derivatives by central differences,
  :meth:`~xraypose.register.optimizer.Registrar.pose_and_jacobian`), one
  learning rate for the rotation and one for the translation parameters (DiffPose), the depth's
  scaled per level; plateau schedule (back to the best pose and halve the rates after
  ``patience`` iterations without improvement; converged after ``max_reductions`` halvings) or
  step schedule; also converged once the best pose has stayed within ``adam_tol_px`` pixels for
  ``adam_patience`` iterations.  Wide capture range, slow to settle.
* :class:`LMStepper` — Levenberg–Marquardt on the measure's residual ``r`` (``score = 1 −
  ½‖r‖²``) in a local chart ``pose(ξ) = F·exp(ξ)·F⁻¹·pose`` (``F``: the pose's axes at the
  isocenter; ξ = (ω, ρ) rad, mm): the exact gradient ``Jᵀr`` (autograd to the pose, then the
  chart's tangents ``F·G_k·F⁻¹·pose``), the Gauss–Newton curvature ``JᵀJ`` from the DRR linearised
  along the six directions (one render with the kernel's pose derivatives; six extra DRRs where
  that is not available), renewed every ``lm_hessian_every`` accepted steps, a step accepted only
  if it lowers ``‖r‖²`` — else the damping grows ×10 and a shorter step is tried from the best pose
  (its gradient and curvature kept: the best pose is never rendered twice).  Converges
  to the optimum in a few iterations and stops when the next step would move the CT by less
  than ``lm_tol_px`` pixels.

Both share :meth:`Stepper._recover` for steps that leave the CT (the pose turns away, the DRR
turns constant, the similarity is not finite): back to the level's best, smaller steps; after
``max_recoveries`` such events the track stops as ``"diverged"`` with its best finite pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from xraypose.geometry import pose_from_params, se3_hat

__all__ = ["Track", "AdamStepper", "LMStepper", "make_stepper"]

F64 = torch.float64


@dataclass
class Track:
    """One start of one X-ray through the registration.

    Attributes:
        xray, start: which X-ray, which of its starts.
        A, Bm: (4, 4) frames of the Adam parameters: ``pose = A · X(params) · Bm``.
        pose: (4, 4) float64 camera_to_world, the best pose so far.
        score: its similarity at the last finished level.
        alive: False once the start is invalid or the track diverged.
        status: "converged", "max_iterations", "recovered", "diverged" or "invalid start".
        levels: per finished level ``{"level", "iterations", "ended", "similarity"}``; ``ended``
            is "converged" (the level's test) or "max_iterations" (its cap).
        history: the poses each finished level started from (the start, then earlier results).
        start_gap: how much lower than the best candidate the start scored at the latest revisit
            before the last level's (0 before any: the last level then weighs the start however far
            away).
        curvature: per Levenberg–Marquardt level index, its last Gauss–Newton curvature JᵀJ (6, 6)
            (given before a registration: the first curvature to use, e.g. the previous frame's).
        work: the current level's working state (the stepper's).
    """

    xray: int
    start: int
    A: torch.Tensor
    Bm: torch.Tensor
    pose: torch.Tensor
    score: float = -math.inf
    alive: bool = True
    status: str = "max_iterations"
    recoveries: int = 0
    iterations: int = 0
    bone: float = 1.0
    trajectory: list = field(default_factory=list)
    levels: list = field(default_factory=list)
    history: list = field(default_factory=list)
    curvature: dict = field(default_factory=dict)
    work: dict = field(default_factory=dict)
    start_gap: float = 0.0

    @property
    def active(self) -> bool:
        return self.alive and self.work.get("active", False)

    def finish_level(self, ended: str) -> None:
        self.work["active"] = False
        self.work["ended"] = ended


class Stepper:
    """Common bookkeeping of a level's stepper (see the module docstring)."""

    def __init__(self, registrar, level_index: int, objective):
        self.reg, self.li, self.obj = registrar, level_index, objective
        self.level = objective.level
        self.config = registrar.config

    def begin(self, tracks) -> None:
        for t in tracks:
            t.work = {"active": t.alive, "it": 0, "best_score": -math.inf, "best_pose": t.pose.clone(),
                      "ended": "max_iterations"}

    def end(self, tracks) -> None:
        for t in tracks:
            w = t.work
            if math.isfinite(w["best_score"]):
                t.pose, t.score = w["best_pose"], w["best_score"]
            t.levels.append({"level": self.li, "iterations": w["it"], "ended": w["ended"],
                             "similarity": w["best_score"] if math.isfinite(w["best_score"]) else None})

    def iterate(self, tracks, last: bool) -> None:
        """One step of every active track (``last``: the level's final pass, which only evaluates)."""
        act = [t for t in tracks if t.active]
        if act:
            self._iterate(act, last)

    def _iterate(self, act: list, last: bool) -> None:
        raise NotImplementedError

    def _evaluate(self, T: torch.Tensor, act: list, loss):
        """Evaluate poses ``T`` (n, 4, 4) of the tracks ``act`` and differentiate ``loss(evaluation)``
        (n,) summed over the good ones with respect to them: ``(evaluation, dloss/dT (n, 4, 4))``,
        non-finite entries zeroed; ``T`` itself is left without gradient."""
        T.requires_grad_(True)
        ev = self.reg.evaluate(self.obj, T, act)
        if bool(ev.ok.any()):
            loss(ev)[ev.ok].sum().backward()
        gT = T.grad if T.grad is not None else torch.zeros_like(T)
        T.requires_grad_(False)
        return ev, torch.nan_to_num(gT, nan=0.0, posinf=0.0, neginf=0.0)

    def _record(self, t: Track, iteration: int, score: float, pose: torch.Tensor, **extra) -> None:
        if self.config.record_trajectory:
            t.trajectory.append({"level": self.li, "iteration": iteration, "similarity": score,
                                 "camera_to_world": pose.detach().clone(), **extra})

    def _recover(self, t: Track) -> bool:
        """A step left the CT: count it; False (and the track stops as diverged) after too many."""
        t.recoveries += 1
        if t.recoveries > self.config.max_recoveries or not math.isfinite(t.work["best_score"]):
            t.status = "diverged"
            t.alive = False
            t.finish_level("diverged")
            return False
        return True


class AdamStepper(Stepper):
    """Adam with per-track learning rates and a plateau (or step) schedule."""

    def begin(self, tracks) -> None:
        super().begin(tracks)
        c, lv, reg = self.config, self.level, self.reg
        for t in tracks:
            p = reg.params_from_pose(t.pose[None], t.A[None], t.Bm[None])[0]
            D = p.numel()
            nr = reg.n_rot
            lr = torch.cat([torch.full((nr,), c.lr_rot, dtype=F64), torch.full((D - nr,), c.lr_trans, dtype=F64)])
            lr = lr * lv.lr_scale
            if c.frame == "isocentric":
                lr[-1] *= lv.depth_lr_scale
            t.work.update(params=p, best_params=p.clone(), lr=lr, m=torch.zeros(D, dtype=F64),
                          v=torch.zeros(D, dtype=F64), t=0, wait=0, reductions=0, anchor=t.pose.clone(), still=0,
                          pix=float(self.obj.pixel_mm(t.pose[None], reg.isocenter)[0]))

    def _settled(self, w, reg) -> bool:
        """True when the new best pose lies within ``adam_tol_px`` pixels of the anchor."""
        return pose_motion_mm(w["anchor"], w["best_pose"], reg.isocenter,
                              self.config.motion_radius_mm) < self.config.adam_tol_px * w["pix"]

    def _reset_moments(self, w) -> None:
        w["m"].zero_()
        w["v"].zero_()
        w["t"] = 0

    def _iterate(self, act: list, last: bool) -> None:
        reg, c = self.reg, self.config
        p = torch.stack([t.work["params"] for t in act])
        T, dT = reg.pose_and_jacobian(p, torch.stack([t.A for t in act]), torch.stack([t.Bm for t in act]))
        ev, gT = self._evaluate(T, act, lambda e: -e.score_t)  # Adam ascends the similarity
        good = ev.ok
        grad = torch.nan_to_num(torch.einsum("nij,ndij->nd", gT, dT), nan=0.0, posinf=0.0, neginf=0.0)
        b1, b2 = c.adam_betas
        for j, t in enumerate(act):
            w = t.work
            if not bool(good[j]):
                if self._recover(t):
                    w["params"] = w["best_params"].clone()
                    w["lr"] = w["lr"] * 0.5
                    self._reset_moments(w)
                continue
            s = float(ev.score[j])
            t.bone = float(ev.bone[j])
            self._record(t, w["it"], s, T[j], lr_rot=float(w["lr"][0]), lr_trans=float(w["lr"][-1]))
            best = w["best_score"]
            if not math.isfinite(best) or s > best + c.rel_tol * max(abs(best), 1e-3):
                w["best_score"], w["best_params"], w["wait"] = s, w["params"].clone(), 0
                w["best_pose"] = T[j].detach().clone()
                if self._settled(w, reg):
                    w["still"] += 1
                else:
                    w["anchor"], w["still"] = w["best_pose"], 0
            else:
                w["wait"] += 1
                w["still"] += 1
            if last:
                t.finish_level("max_iterations")
                continue
            if c.schedule == "plateau" and w["still"] >= c.adam_patience:  # the best pose stayed put: converged
                t.finish_level("converged")
                continue
            if c.schedule == "plateau":
                if w["wait"] >= c.patience:
                    w["lr"] = w["lr"] * c.plateau_factor
                    w["reductions"] += 1
                    w["wait"] = 0
                    w["params"] = w["best_params"].clone()
                    self._reset_moments(w)
                    if w["reductions"] > c.max_reductions:
                        t.finish_level("converged")
                    continue
            elif w["it"] > 0 and w["it"] % c.step_every == 0:
                w["lr"] = w["lr"] * c.step_gamma
            g = grad[j]
            w["t"] += 1
            w["m"] = b1 * w["m"] + (1 - b1) * g
            w["v"] = b2 * w["v"] + (1 - b2) * g * g
            mhat = w["m"] / (1 - b1 ** w["t"])
            vhat = w["v"] / (1 - b2 ** w["t"])
            w["params"] = w["params"] - w["lr"] * mhat / (vhat.sqrt() + 1e-8)
            w["it"] += 1
            t.iterations += 1


def pose_motion_mm(T1: torch.Tensor, T2: torch.Tensor, isocenter: torch.Tensor, radius: float) -> float:
    """Largest motion (mm) of a point within ``radius`` of the isocenter between two camera_to_world
    poses (4, 4): the rotation angle times the radius plus the isocenter's displacement."""
    # in plain floats (a 3×3 product; runs on every improving Adam iteration): D = T2·T1⁻¹,
    # angle = atan2(‖D − Dᵀ‖/(2√2), (tr D − 1)/2) (accurate at small angles, unlike acos)
    R1 = T1.detach().to(F64)[:3].tolist()
    R2 = T2.detach().to(F64)[:3].tolist()
    t1 = [R1[i][3] for i in range(3)]
    t2 = [R2[i][3] for i in range(3)]
    D = [[sum(R2[i][k] * R1[j][k] for k in range(3)) for j in range(3)] for i in range(3)]  # R2·R1ᵀ
    skew = math.sqrt(sum((D[i][j] - D[j][i]) ** 2 for i in range(3) for j in range(3)))
    angle = math.atan2(skew / (2.0 * math.sqrt(2.0)), 0.5 * (D[0][0] + D[1][1] + D[2][2] - 1.0))
    iso = isocenter.to(F64).tolist()
    # where the isocenter goes: D·(iso − t1) + t2
    moved = [sum(D[i][j] * (iso[j] - t1[j]) for j in range(3)) + t2[i] for i in range(3)]
    return angle * radius + math.sqrt(sum((moved[i] - iso[i]) ** 2 for i in range(3)))


def chart_step_mm(xi: torch.Tensor, radius_mm: float) -> float:
    """mm: at most how far a step ξ (6,) = (ω rad, ρ mm) of the chart at the isocenter moves a point within
    ``radius_mm`` of it (|ω|·radius + |ρ|): the registration's and the counts fit's step tolerance."""
    return float(xi[:3].norm()) * radius_mm + float(xi[3:6].norm())


def _chart(frame: torch.Tensor, xi: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """(n, 4, 4) poses ``F · exp(ξ) · F⁻¹ · pose`` for frames F (n, 4, 4), ξ (n, 6) = (ω, ρ)."""
    X = pose_from_params(xi[..., :3], xi[..., 3:], "se3_log_map")
    return frame @ X @ torch.linalg.inv(frame) @ pose


def chart_tangents(frame: torch.Tensor, pose: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 6, 4, 4) derivatives ``∂/∂ξ_k`` of :func:`_chart` at ξ = 0 (``F·G_k·F⁻¹·pose``, G_k the
    generators of se(3) in twist order), each times ``steps[:, k]`` when given (n, 6)."""
    xi = torch.eye(6, dtype=pose.dtype).expand(pose.shape[0], 6, 6) if steps is None else torch.diag_embed(steps)
    return frame[:, None] @ se3_hat(xi) @ torch.linalg.inv(frame)[:, None] @ pose[:, None]


class LMStepper(Stepper):
    """Levenberg–Marquardt in a local se(3) chart at the isocenter (see the module docstring)."""

    def begin(self, tracks) -> None:
        super().begin(tracks)
        for t in tracks:
            t.work.update(cand=t.pose.clone(), best_cost=math.inf, lam=float(self.config.lm_damping),
                          H=t.curvature.get(self.li), since_H=0)

    def end(self, tracks) -> None:
        super().end(tracks)
        for t in tracks:
            if t.work.get("H") is not None:
                t.curvature[self.li] = t.work["H"]

    def _frames(self, poses: torch.Tensor) -> torch.Tensor:
        Fr = poses.clone()
        Fr[:, :3, 3] = self.reg.isocenter
        return Fr

    def _iterate(self, act: list, last: bool) -> None:
        c = self.config
        cand = torch.stack([t.work["cand"] for t in act])
        Fr = self._frames(cand)
        T = cand.clone()
        ev, gT = self._evaluate(T, act, lambda e: 0.5 * e.cost_t)  # LM: ½‖r‖²
        good = ev.ok
        # the gradient in the chart ξ at 0: ⟨∂cost/∂pose, ∂pose/∂ξ_k⟩ with ∂pose/∂ξ_k = F·G_k·F⁻¹·pose
        grad = torch.nan_to_num(torch.einsum("nij,ndij->nd", gT, chart_tangents(Fr, cand)), nan=0.0)
        accepted, retry = [], []
        for j, t in enumerate(act):
            w = t.work
            if not bool(good[j]):
                if self._recover(t):
                    self._damp(w)
                    retry.append(t)
                continue
            cost = float(ev.cost[j])
            self._record(t, w["it"], float(ev.score[j]), T[j], damping=w["lam"])
            w["it"] += 1
            t.iterations += 1
            if cost >= w["best_cost"]:  # reject: a shorter step from the best pose, more damping
                self._damp(w)
                if w["lam"] > c.lm_max_damping or w["step_px"] < c.lm_reject_tol_px:
                    t.finish_level("converged")
                elif last:
                    t.finish_level("max_iterations")
                else:
                    retry.append(t)
                continue
            t.bone = float(ev.bone[j])
            w["best_cost"], w["best_score"], w["best_pose"] = cost, float(ev.score[j]), cand[j].clone()
            w["grad"] = grad[j]  # the gradient at the best pose: what a step from it needs
            if last:
                t.finish_level("max_iterations")
                continue
            accepted.append(t)
        need = [t for t in accepted if t.work["H"] is None or t.work["since_H"] >= c.lm_hessian_every]
        if need:
            self._curvature(need)
        for t in accepted:
            self._step(t, accepted=True)
        for t in retry:
            if "grad" not in t.work:  # no pose of this level was ever good: nothing to step from
                t.status, t.alive = "diverged", False
                t.finish_level("diverged")
                continue
            self._step(t, accepted=False)

    def _step(self, t: Track, accepted: bool) -> None:
        """The next candidate of track ``t``: the damped Gauss–Newton step from its best pose (its
        gradient, curvature and damping), capped at ``lm_max_step_px``; converged when the step would
        move the CT by less than ``lm_tol_px``.  After a rejected step the damping has grown, so the
        new step is shorter and turns toward the gradient; the best pose is not evaluated again."""
        c, w = self.config, t.work
        best = w["best_pose"][None]
        pix = float(self.obj.pixel_mm(best, self.reg.isocenter)[0])
        H = w["H"]
        A = H + w["lam"] * torch.diag(torch.diag(H).clamp_min(1e-12))
        delta = -torch.linalg.solve(A, w["grad"])
        if accepted:  # the curvature is renewed every lm_hessian_every accepted steps
            w["since_H"] += 1
        motion = chart_step_mm(delta, c.motion_radius_mm)
        if motion < c.lm_tol_px * pix:
            t.finish_level("converged")
            return
        cap = c.lm_max_step_px * pix
        if motion > cap:  # a trust region: weakly seen directions (the depth) must not jump
            delta = delta * (cap / motion)
        w["step_px"] = min(motion, cap) / pix  # how far the candidate moves the CT, pixels
        w["cand"] = _chart(self._frames(best), delta[None], best)[0].detach()
        if accepted:
            w["lam"] = max(w["lam"] / 3, 1e-9)

    def _damp(self, w: dict) -> None:
        """More damping for a step retried from the best pose: ×10, and at least ``lm_reject_damping`` (1: the
        step about halves) — ×10 alone, from the small damping a run of accepted steps leaves, retried the
        same step (RegistrationConfig)."""
        w["lam"] = max(w["lam"] * 10, float(self.config.lm_reject_damping))

    def _curvature(self, tracks) -> None:
        """Gauss–Newton curvature JᵀJ at each track's best pose.

        ``J``'s column k is ``(r(ξ = h_k·e_k) − r(0)) / h_k`` with steps ``h`` that move the CT by
        0.1 pixel.  ``r(h_k·e_k)`` is the residual of the DRR linearised along the chart's direction k
        (:meth:`~xraypose.register.objective.LevelObjective.residual_along`: one render with its pose
        derivatives, the fused CPU kernel's); where the objective cannot linearise, of the DRR
        rendered there (seven poses in one batch).  Each neighbour's intensity fits and robust
        weights are its own (re-fitted): holding them at the pose's, as the gradient does, gave a
        curvature 19 % different that lost a 35 mm tracking jump the re-fitted one captures
        (tests/test_tracking.py).
        """
        reg = self.reg
        best = torch.stack([t.work["best_pose"] for t in tracks])
        Fr = self._frames(best)
        pix = self.obj.pixel_mm(best, reg.isocenter)
        n = len(tracks)
        h = torch.zeros(n, 6, dtype=F64)
        h[:, :3] = (0.1 * pix / self.config.motion_radius_mm)[:, None]
        h[:, 3:] = (0.1 * pix)[:, None]
        rows = torch.tensor([t.xray for t in tracks])
        tangents = chart_tangents(Fr, best, h)
        r = self.obj.residual_along(best, rows, tangents) if self.config.lm_linearised else None
        if r is not None:
            r = r.to(F64)
            J = (r[:, 1:] - r[:, :1]) / h[:, :, None]  # (n, 6, M)
        else:  # each pose and its six neighbours in one batch
            xi = torch.cat([torch.zeros(n, 1, 6, dtype=F64), torch.diag_embed(h)], 1).reshape(n * 7, 6)
            rep = lambda x: x.repeat_interleave(7, dim=0)  # noqa: E731
            with torch.no_grad():
                r, _, _ = self.obj.residual(_chart(rep(Fr), xi, rep(best)), rep(rows))
            r = r.to(F64).reshape(n, 7, -1)
            J = (r[:, 1:] - r[:, :1]) / h[:, :, None]  # (n, 6, M)
        for q, t in enumerate(tracks):
            t.work["H"] = J[q] @ J[q].T
            t.work["since_H"] = 0


def make_stepper(registrar, level_index: int, objective):
    """The stepper of a level (``Level.optimizer``)."""
    kind = objective.level.optimizer
    return (LMStepper if kind == "lm" else AdamStepper)(registrar, level_index, objective)
