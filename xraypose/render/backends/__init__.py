"""Fast rendering backends behind :func:`xraypose.render.render`'s ``backend=`` switch.

=============  =========================================================  ====================
backend        what                                                       where
=============  =========================================================  ====================
``reference``  plain PyTorch (``trilinear.py``, ``siddon.py``): the        any device, float64
               ground truth
``cpu``        fused C++ kernel (threads, AVX2), compiled on first use    CPU tensors
``triton``     fused Triton kernel (triton_backend.py); half-precision    CUDA tensors
               volumes with float32 geometry and accumulation
``auto``       the fastest that applies: ``triton`` on CUDA, ``cpu`` on
               CPU, else ``reference`` (with one warning saying why)
=============  =========================================================  ====================

Every backend computes the same numbers as the reference: the same clipped
chord, the same midpoint samples, the same trilinear interpolant; they differ
only by floating-point rounding (tests/test_backends.py).
"""

from __future__ import annotations

import os
import warnings

import torch

from xraypose.errors import InputError

FAST_BACKENDS = ("cpu", "triton")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def cpu_status() -> str | None:
    """None when the fused CPU kernels load, else why not."""
    from xraypose.render.backends import cpu

    return None if cpu.available() else cpu.unavailable_reason()


def triton_status() -> str | None:
    """None when the Triton kernels can run, else why not."""
    try:
        from xraypose.render.backends import triton_backend
    except Exception as e:  # triton missing or broken
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return triton_backend.unavailable_reason()


def _supports(backend: str, renderer: str) -> bool:
    if backend == "cpu":
        from xraypose.render.backends import cpu

        return renderer in cpu.RENDERERS
    if backend == "triton":
        return renderer == "trilinear"
    return True


def resolve(backend: str, renderer: str, device: torch.device) -> str:
    """The backend that will run: ``reference``, ``cpu`` or ``triton``.

    An explicit fast backend on the wrong device is an error; an explicit fast
    backend that cannot load here (no compiler, no triton) falls back to the
    reference with one warning, as does ``auto``.
    """
    if backend == "reference":
        return "reference"
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            want = "triton"
        elif device.type == "cpu":
            want = "cpu"
        else:
            return "reference"
        if not _supports(want, renderer):
            return "reference"
    else:
        want = backend
        if want == "cpu" and device.type != "cpu":
            raise InputError(f"backend 'cpu' renders CPU tensors, but the volume and pose are on {device}")
        if want == "triton" and not on_cuda and not (device.type == "cpu" and _triton_interpreting()):
            raise InputError(f"backend 'triton' renders CUDA tensors, but the volume and pose are on {device}")
        if not _supports(want, renderer):
            warn_once(f"{want}-{renderer}", f"backend {want!r} has no {renderer} renderer; using the reference backend")
            return "reference"
    why = cpu_status() if want == "cpu" else triton_status()
    if why is not None:
        warn_once(
            want,
            f"the fast {want} rendering backend is unavailable ({why.splitlines()[0]}); "
            "falling back to the (slower) reference backend",
        )
        return "reference"
    return want
