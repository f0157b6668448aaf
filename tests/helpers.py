"""Synthetic volumes with closed-form line integrals, shared by the tests."""

from __future__ import annotations

import math

import torch


def oblique_affine(spacing=(1.2, 1.0, 1.4), flip=(True, False, False), origin=(10.0, -20.0, 5.0)) -> torch.Tensor:
    """(4, 4) voxel → world affine with anisotropic spacing and a flipped axis."""
    A = torch.eye(4, dtype=torch.float64)
    s = torch.tensor([(-1.0 if f else 1.0) * v for v, f in zip(spacing, flip)], dtype=torch.float64)
    A[:3, :3] = torch.diag(s)
    A[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return A


def voxel_centres(shape, affine) -> torch.Tensor:
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def gaussian_blob(shape, affine, centre_index, sigma_mm):
    """Volume of exp(−|x − c|² / 2σ²) sampled at voxel centres; returns (volume, centre world)."""
    c = affine[:3, :3] @ torch.tensor(centre_index, dtype=torch.float64) + affine[:3, 3]
    w = voxel_centres(shape, affine)
    return torch.exp(-((w - c) ** 2).sum(-1) / (2 * sigma_mm**2)), c


def gaussian_line_integrals(source, targets, centre, sigma_mm):
    """∫ exp(−|x − c|²/2σ²) dl along the full lines source→targets: σ√(2π)·exp(−d²/2σ²)."""
    d = targets - source
    d = d / d.norm(dim=-1, keepdim=True)
    w = centre - source
    along = (d * w).sum(-1)
    dist2 = (w * w).sum(-1) - along**2
    return torch.exp(-dist2 / (2 * sigma_mm**2)) * sigma_mm * math.sqrt(2 * math.pi)


def box_chords(source, targets, lo, hi):
    """Length (mm) of the segments source→target inside the world box [lo, hi] (numpy-free slab clip)."""
    d = targets - source
    tl = (lo - source) / d
    th = (hi - source) / d
    tmin = torch.minimum(tl, th).amax(-1).clamp(0, 1)
    tmax = torch.maximum(tl, th).amin(-1).clamp(0, 1)
    return (tmax - tmin).clamp_min(0) * d.norm(dim=-1)


#: A training of a few seconds (the test backbone, 32-pixel DRRs): the fault and crash tests' model.
TINY_TRAIN = {
    "model": {"backbone": "test_resnet"},
    "camera": {"height": 32},
    "render": {"n_samples": 16},
    "optim": {"batch_size": 4},
    "data": {"reuse": 2, "buffer_size": 8},
    "run": {"max_steps": 4, "val_size": 4, "val_every_steps": 2, "threads": 1, "progress": False},
}


def tiny_train(**run) -> dict:
    """A fresh copy of :data:`TINY_TRAIN` with ``run`` settings changed."""
    import json

    d = json.loads(json.dumps(TINY_TRAIN))
    d["run"].update(run)
    return d


def ctrl_c_after(monkeypatch, module, prefix: str) -> None:
    """The user presses Ctrl-C (SIGINT to this process) once ``module.typer.echo`` prints a line starting with
    ``prefix`` (e.g. ``"frame 2/"``: track has reported frame 2)."""
    import os
    import signal

    echo = module.typer.echo

    def echo_and_interrupt(msg="", *a, **k):
        echo(msg, *a, **k)
        if str(msg).startswith(prefix):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(module.typer, "echo", echo_and_interrupt)
