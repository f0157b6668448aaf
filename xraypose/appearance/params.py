"""Drawing a family's parameters from a generator, with per-call overrides, into a JSON-able record."""

from __future__ import annotations

import math

import torch

from xraypose._checks import finite_float
from xraypose.errors import InputError

__all__ = ["Params"]


class Params:
    """Draws parameters in a fixed order from ``generator``; ``overrides`` fix any of them by name.

    Every draw consumes the same random numbers whether or not it is
    overridden, so fixing one parameter leaves the others' draws unchanged.
    ``info`` records every value used.
    """

    def __init__(self, family: str, generator: torch.Generator, overrides: dict):
        self.family = family
        self.g = generator
        self.overrides = dict(overrides)
        self.used: set[str] = set()
        self.info: dict = {}
        #: the names of the parameters (drawn or fixed: each can be overridden), in order; ``info`` holds
        #: derived values (:meth:`record`) besides
        self.names: list[str] = []

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.g, dtype=torch.float64))

    def _take(self, name: str, drawn):
        if name in self.info:
            raise AssertionError(f"parameter {name!r} drawn twice")
        self.names.append(name)
        if name in self.overrides:
            self.used.add(name)
            value = self.overrides[name]
        else:
            value = drawn
        self.info[name] = _jsonable(value)
        return value

    def uniform(self, name: str, lo: float, hi: float) -> float:
        return finite_float(self._take(name, lo + (hi - lo) * self._rand()), f"{self.family}: {name}")

    def log_uniform(self, name: str, lo: float, hi: float) -> float:
        v = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * self._rand())
        return finite_float(self._take(name, v), f"{self.family}: {name}")

    def integer(self, name: str, lo: int, hi: int) -> int:
        """Uniform on lo..hi inclusive."""
        v = lo + min(int(self._rand() * (hi - lo + 1)), hi - lo)
        out = self._take(name, v)
        if isinstance(out, bool) or int(out) != out:
            raise InputError(f"{self.family}: {name} must be a whole number, got {out!r}")
        return int(out)

    def choice(self, name: str, options, weights=None):
        w = [1.0] * len(options) if weights is None else list(weights)
        r, acc, pick = self._rand() * sum(w), 0.0, options[-1]
        for o, wi in zip(options, w):
            acc += wi
            if r < acc:
                pick = o
                break
        out = self._take(name, pick)
        if out not in options:
            raise InputError(f"{self.family}: {name} must be one of {list(options)}, got {out!r}")
        return out

    def bernoulli(self, name: str, p: float) -> bool:
        return bool(self._take(name, self._rand() < p))

    def fixed(self, name: str, default):
        """A parameter that is not drawn (overridable)."""
        return self._take(name, default)

    def direction(self, name: str) -> torch.Tensor:
        """A uniformly random unit vector (3,) float64."""
        v = torch.randn(3, generator=self.g, dtype=torch.float64)
        v = self._take(name, (v / v.norm()).tolist())
        v = torch.as_tensor(v, dtype=torch.float64).reshape(3)
        if not float(v.norm()) > 0:
            raise InputError(f"{self.family}: {name} must be a non-zero vector")
        v = v / v.norm()
        self.info[name] = v.tolist()
        return v

    def record(self, name: str, value) -> None:
        """Add a derived value to ``info``."""
        self.info[name] = _jsonable(value)

    def finish(self) -> dict:
        unknown = sorted(set(self.overrides) - self.used)
        if unknown:
            known = ", ".join(sorted(self.names))
            raise InputError(f"unknown parameter(s) for the {self.family!r} family: {', '.join(unknown)} "
                             f"(its parameters: {known})")
        return self.info


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, float) or isinstance(v, (int, str, bool)) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
