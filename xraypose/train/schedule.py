"""The learning-rate schedule and adaptive gradient clipping of the training loop."""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine", "adaptive_clip_"]


class WarmupCosine:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to ``min_lr_frac``·lr.

    ``total_steps`` may be re-estimated during a time-budgeted run
    (:meth:`set_total`); the state (a few numbers) is checkpointed.
    """

    def __init__(self, optimizer, lr: float, total_steps: int, warmup_frac: float = 0.05, min_lr_frac: float = 0.0):
        self.optimizer, self.lr, self.warmup_frac, self.min_lr_frac = optimizer, float(lr), warmup_frac, min_lr_frac
        self.total_steps = max(1, int(total_steps))

    def set_total(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))

    def lr_at(self, step: int) -> float:
        warm = max(1, int(round(self.warmup_frac * self.total_steps)))
        if step < warm:
            return self.lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        lo = self.min_lr_frac
        return self.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)))

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_frac": self.warmup_frac,
                "min_lr_frac": self.min_lr_frac}

    def load_state_dict(self, d: dict) -> None:
        self.lr, self.total_steps = float(d["lr"]), int(d["total_steps"])
        self.warmup_frac, self.min_lr_frac = float(d["warmup_frac"]), float(d["min_lr_frac"])


def adaptive_clip_(parameters, clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021): per output unit, ‖g‖ ≤ clip·max(‖w‖, eps)."""
    for p in parameters:
        if p.grad is None:
            continue
        w, g = p.detach(), p.grad.detach()
        dims = tuple(range(1, w.dim())) if w.dim() > 1 else None
        wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True).clamp_min(eps)
        gn = torch.linalg.vector_norm(g, dim=dims, keepdim=True).clamp_min(1e-6)
        limit = clip * wn
        g.mul_(torch.where(gn > limit, limit / gn, torch.ones_like(gn)))
