"""Energy-dependent attenuation: published μ/ρ tables, an X-ray tube spectrum, polychromatic transmission.

Mass attenuation coefficients μ/ρ (cm²/g, total with coherent scattering) are
from the NIST tables of Hubbell & Seltzer, *Tables of X-Ray Mass Attenuation
Coefficients and Mass Energy-Absorption Coefficients*, NIST Standard Reference
Database 126 (NISTIR 5632, last data update 2004), Table 3 (elements: Al, Ti,
Fe) and Table 4 (compounds: "Water, Liquid" and "Bone, Cortical (ICRU-44)"),
https://physics.nist.gov/PhysRefData/XrayMassCoef/ — the same values XCOM
gives — at the tables' grid energies 10–150 keV (no absorption edge of these
materials lies in that range).  Between grid energies they are interpolated
log-log (μ/ρ is close to a power law of E between edges).  Densities (g/cm³)
are the tables' (water 1.0, cortical bone 1.92, Al 2.699, Ti 4.54, Fe 7.874).

The tube spectrum is Kramers' law for the bremsstrahlung photon fluence per
unit energy, ``N(E) ∝ (kVp − E) / E``, hardened by the tube's inherent
filtration (aluminium, default 2.5 mm, the usual minimum total filtration of a
diagnostic tube).  An energy-integrating detector weights each photon by its
energy: ``I = Σ_E N(E)·E·exp(−Σ_m μ_m(E)·L_m)``.

Units: energies in keV, μ in 1/mm, path lengths in mm of each material.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xraypose.errors import InputError

__all__ = [
    "TABLE_KEV", "MASS_ATTENUATION", "DENSITY", "MATERIALS", "mu_per_mm", "spectrum", "cortical_bone_hu",
    "water_bone_fractions", "transmission", "effective_energy",
]

#: Grid energies of the tables, keV.
TABLE_KEV = np.array([10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0])

#: μ/ρ in cm²/g at :data:`TABLE_KEV` (NIST SRD 126, see the module docstring).
MASS_ATTENUATION: dict[str, np.ndarray] = {
    "water": np.array([5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505]),
    "bone": np.array([28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480]),
    "aluminium": np.array([26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378]),
    "titanium": np.array([110.7, 35.87, 15.85, 4.972, 2.214, 1.213, 0.7661, 0.4052, 0.2721, 0.1649]),
    "iron": np.array([170.6, 57.08, 25.68, 8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717, 0.1964]),
}
#: Densities, g/cm³ ("steel" is iron at a stainless steel's 7.9 g/cm³).
DENSITY: dict[str, float] = {"water": 1.0, "bone": 1.92, "aluminium": 2.699, "titanium": 4.54, "iron": 7.874,
                             "steel": 7.9}
#: Material names accepted by :func:`mu_per_mm`.
MATERIALS = ("water", "bone", "aluminium", "titanium", "iron", "steel")


def _table(material: str) -> np.ndarray:
    if material not in MATERIALS:
        raise InputError(f"unknown material {material!r}; choose one of: {', '.join(MATERIALS)}")
    return MASS_ATTENUATION["iron" if material == "steel" else material]


def mu_per_mm(material: str, energy_kev) -> np.ndarray:
    """Linear attenuation coefficient μ (1/mm) of ``material`` at ``energy_kev`` (scalar or array, 10–150 keV)."""
    e = np.asarray(energy_kev, dtype=np.float64)
    if np.any(~np.isfinite(e)) or np.any(e < TABLE_KEV[0]) or np.any(e > TABLE_KEV[-1]):
        raise InputError(f"photon energies must lie in {TABLE_KEV[0]:g}–{TABLE_KEV[-1]:g} keV (the tables' range)")
    mass = np.exp(np.interp(np.log(e), np.log(TABLE_KEV), np.log(_table(material))))
    return mass * DENSITY[material] / 10.0  # cm²/g · g/cm³ = 1/cm → 1/mm


def spectrum(kvp: float, filtration_mm_al: float = 2.5, bin_kev: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An X-ray tube's photon spectrum: Kramers' law behind aluminium filtration.

    Args:
        kvp: tube voltage, kV (the highest photon energy, keV); 20–150.
        filtration_mm_al: inherent + added filtration, mm of aluminium (>= 0).
        bin_kev: width of the energy bins, keV.
    Returns:
        energies (N,) keV (bin centres from 10 keV to ``kvp``) and photon
        fluence per bin (N,), normalised to sum 1.
    """
    kvp = float(kvp)
    if not (20.0 <= kvp <= TABLE_KEV[-1]):
        raise InputError(f"tube voltage must be 20–{TABLE_KEV[-1]:g} kVp, got {kvp:g}")
    if not (math.isfinite(filtration_mm_al) and filtration_mm_al >= 0):
        raise InputError(f"filtration must be >= 0 mm Al, got {filtration_mm_al!r}")
    edges = np.arange(TABLE_KEV[0], kvp + 1e-9, float(bin_kev))
    if edges[-1] < kvp:
        edges = np.append(edges, kvp)
    e = 0.5 * (edges[1:] + edges[:-1])
    n = (kvp - e) / e * np.diff(edges) * np.exp(-mu_per_mm("aluminium", e) * filtration_mm_al)
    return e, n / n.sum()


def effective_energy(energies: np.ndarray, fluence: np.ndarray) -> float:
    """Mean photon energy of a spectrum weighted as the detector weights it (by energy), keV."""
    w = fluence * energies
    return float((w * energies).sum() / w.sum())


def cortical_bone_hu(ct_kev: float = 70.0) -> float:
    """The HU a CT scanning at effective energy ``ct_kev`` gives cortical bone: 1000·(μ_bone/μ_water − 1)."""
    return 1000.0 * (float(mu_per_mm("bone", ct_kev)) / float(mu_per_mm("water", ct_kev)) - 1.0)


def water_bone_fractions(hu: torch.Tensor, hu_bone: float) -> torch.Tensor:
    """Split every voxel into volume fractions of water and cortical bone, from its HU.

    ``HU <= 0``: water at density ``1 + HU/1000`` (air 0, fat 0.9), no bone;
    ``0 < HU < hu_bone``: a mix, bone fraction ``HU/hu_bone``, water the rest;
    ``HU >= hu_bone``: bone fraction ``HU/hu_bone`` (denser than the reference), no water.
    At the CT's energy this reproduces its HU (μ = fw·μ_water + fb·μ_bone).

    Returns:
        (2, I, J, K) float32 [water fraction, bone fraction].
    """
    x = hu.to(torch.float32)
    fb = (x / float(hu_bone)).clamp_min(0.0)
    fw = torch.where(x <= 0, (1.0 + x / 1000.0).clamp_min(0.0), (1.0 - fb).clamp_min(0.0))
    return torch.stack([fw, fb])


def transmission(lengths: dict[str, torch.Tensor], energies: np.ndarray, fluence: np.ndarray) -> torch.Tensor:
    """Energy-integrated transmission ``Σ N(E)·E·exp(−Σ_m μ_m(E)·L_m) / Σ N(E)·E``.

    Args:
        lengths: material name → path lengths (mm, any common shape) through it.
        energies, fluence: the spectrum (:func:`spectrum`).
    Returns:
        the transmission (same shape as the lengths, float64), 1 where every length is 0.
    """
    if not lengths:
        raise InputError("transmission needs at least one material's path lengths")
    shape = next(iter(lengths.values())).shape
    w = torch.as_tensor(fluence * energies, dtype=torch.float64)
    w = (w / w.sum())[:, None]
    mus = [(torch.as_tensor(mu_per_mm(m, energies), dtype=torch.float64)[:, None], L.to(torch.float64).reshape(-1))
           for m, L in lengths.items()]
    n = mus[0][1].numel()
    out = torch.empty(n, dtype=torch.float64)
    step = max(1, (1 << 22) // len(energies))  # (energies × pixels) elements per chunk
    for a in range(0, n, step):
        att = sum(mu * L[None, a:a + step] for mu, L in mus)
        out[a:a + step] = (w * torch.exp(-att)).sum(0)
    return out.reshape(shape)
