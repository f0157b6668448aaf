"""CT volumes: the Volume, its geometry and attenuation (density) models; reading a CT (files: ct_files).

World frame
-----------
The world frame of xraypose is the CT's physical frame in **RAS+ millimetres**
(x → patient Right, y → Anterior, z → Superior), as NIfTI stores it.
A :class:`Volume` carries a ``(4, 4)`` float64 ``affine`` that maps a voxel
index ``(i, j, k, 1)`` to world RAS mm.  Voxel *centres* sit at integer
indices, so the box that the voxels fill spans indices ``-0.5 … n - 0.5``
along each axis.

Readers
-------
:func:`read_volume` reads the file through :mod:`xraypose.ct_files` (its readers and checks live there):
* NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; its affine (sform, else
  qform) is RAS already and is used as is.
* NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and DICOM series
  (a folder of slices) are read with SimpleITK, whose physical frame is LPS;
  the affine is built from origin, spacing and direction and converted with
  ``diag(-1, -1, 1)`` (:data:`LPS_TO_RAS`).

Every problem with the user's input raises :class:`xraypose.errors.InputError`
with a one-line message.

Density models
--------------
:meth:`Volume.density` turns voxel values into attenuation per mm:

* ``"hu"`` — the DiffPose/DiffDRR model (arbitrary units, scaled to [0, 1]);
* ``"physical"`` — linear attenuation coefficient μ in 1/mm at ~70 keV from a
  bilinear HU → μ calibration (:data:`MU_WATER_PER_MM`, :data:`MU_BONE_PER_MM`,
  :data:`HU_BONE_REF`);
* ``"raw"`` — the voxel values unchanged.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from xraypose._checks import check_not_meta, check_number, finite_float, is_numeric_dtype, one_line
from xraypose.errors import InputError
from xraypose.io import check_input_path
# the files' readers and the checks of any CT array and affine (re-exported: they were defined here until stop 66)
from xraypose.ct_files import (  # noqa: F401
    LPS_TO_RAS,
    MAX_ABS_VOXEL,
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    PROJECTION_MODALITIES,
    PROJECTION_SOP_CLASSES,
    SUPPORTED_EXTENSIONS,
    _as_3d,
    _check_affine,
    _check_position,
    _read_image,
    check_voxel_values,
)

__all__ = [
    "Volume",
    "read_volume",
    "volume_from_array",
    "load_sample_ct",
    "load_ct",
    "SAMPLE_CT_ATTRIBUTION",
    "SAMPLE_CT_FILENAME",
    "DENSITY_MODELS",
    "HU_AIR_MAX",
    "HU_BONE_MIN",
    "MU_WATER_PER_MM",
    "MU_BONE_PER_MM",
    "HU_BONE_REF",
    "LPS_TO_RAS",
    "LABEL_ALIGN_TOL_MM",
    "SUPPORTED_EXTENSIONS",
    "MAX_ABS_VOXEL",
    "MIN_SPACING_MM",
    "MAX_SPACING_MM",
    "PROJECTION_MODALITIES",
    "PROJECTION_SOP_CLASSES",
    "check_voxel_values",
]

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

#: Voxels with HU <= this are "air" in the ``"hu"`` model (DiffDRR's threshold).
HU_AIR_MAX: float = -800.0
#: Voxels with HU > this are "bone" in both the ``"hu"`` and ``"physical"``
#: models; ``bone_attenuation_multiplier`` acts on them only.
HU_BONE_MIN: float = 350.0

#: Linear attenuation coefficient of water at ~70 keV, in 1/mm
#: (μ/ρ ≈ 0.193 cm²/g × 1.0 g/cm³ ≈ 0.193 /cm; NIST XCOM order of magnitude).
MU_WATER_PER_MM: float = 0.0193
#: Linear attenuation coefficient of cortical bone at ~70 keV, in 1/mm
#: (μ/ρ ≈ 0.26 cm²/g × 1.92 g/cm³ ≈ 0.50 /cm; NIST XCOM order of magnitude).
MU_BONE_PER_MM: float = 0.0500
#: HU value assigned to :data:`MU_BONE_PER_MM` (cortical bone) in the bilinear
#: calibration of the ``"physical"`` model.
HU_BONE_REF: float = 1900.0

#: Names accepted by :meth:`Volume.density`.
DENSITY_MODELS: tuple[str, ...] = ("hu", "physical", "raw")


#: A labelmap file must map its voxel grid within this distance (mm) of the CT's.
LABEL_ALIGN_TOL_MM: float = 1e-3

#: File name of the bundled sample CT inside ``xraypose/data``.
SAMPLE_CT_FILENAME: str = "sample_ct.nii.gz"
#: Attribution line for the bundled sample CT (see ``xraypose/data/ATTRIBUTION.md``).
SAMPLE_CT_ATTRIBUTION: str = (
    "Sample CT: TotalSegmentator (Wasserthal et al., Radiology: AI 2023) example CT, "
    "from the TotalSegmentator repository's test files "
    "(https://github.com/wasserth/TotalSegmentator, tests/reference_files/example_ct.nii.gz), "
    "Apache-2.0."
)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Volume:
    """A 3D image (usually a CT in HU) placed in the world frame (RAS+ mm).

    Attributes:
        data: ``(I, J, K)`` floating tensor (float32 by default) of voxel
            values, ``data[i, j, k]`` — HU for CT, or raw values.
        affine: ``(4, 4)`` float64 tensor mapping voxel index ``(i, j, k, 1)``
            to world RAS mm.  Voxel centres are at integer indices.
        labels: ``(I, J, K)`` int64 labelmap aligned with ``data``, or None.
        label_names: ``{label id: name}``, or None.
        isocenter: ``(3,)`` float64 world point in mm (e.g. the C-arm's
            rotation centre), or None meaning the centre of the volume box.
        source: free text saying where the volume came from (path, ...).

    The constructor converts numpy arrays / sequences to tensors of the types
    above, checks shapes and refuses NaN/inf voxels (one pass; the readers also check
    the values' range and degenerate spacing).
    """

    data: torch.Tensor
    affine: torch.Tensor
    labels: torch.Tensor | None = None
    label_names: dict[int, str] | None = None
    isocenter: torch.Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        data = torch.as_tensor(self.data)
        check_not_meta("Volume data", data)
        if not data.is_floating_point():
            data = data.to(torch.float32)  # (whole numbers: finite)
        elif data.numel():
            with torch.no_grad():  # (one bool tensor: no copy of the volume)
                bad = data.numel() - int(torch.isfinite(data).sum())
            if bad:  # the readers refuse them; an array built in Python rendered NaN DRRs
                raise InputError(f"Volume data: {bad} of {data.numel()} voxels are NaN or infinite")
        if data.ndim != 3:
            raise InputError(f"Volume data must be 3D (I, J, K); got shape {tuple(data.shape)}")
        if 0 in data.shape:
            raise InputError(f"Volume has a zero-size dimension: shape {tuple(data.shape)}")
        self.data = data

        affine = torch.as_tensor(self.affine, dtype=torch.float64)
        check_not_meta("Volume affine", affine)
        if tuple(affine.shape) != (4, 4):
            raise InputError(f"Volume affine must be 4x4; got shape {tuple(affine.shape)}")
        self.affine = affine

        if self.labels is not None:
            self.labels = _as_label_tensor(self.labels, tuple(data.shape), "labels")
        if self.label_names is not None:
            self.label_names = _coerce_label_names(self.label_names, "label_names")
        if self.isocenter is not None:
            self.isocenter = _as_point(self.isocenter, "isocenter")
        self.source = str(self.source)

    # ---------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts ``(I, J, K)``."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> torch.Tensor:
        """``(3,)`` float64 voxel size in mm along i, j, k (column norms of ``affine[:3, :3]``)."""
        return torch.linalg.norm(self.affine[:3, :3], dim=0)

    @property
    def center(self) -> torch.Tensor:
        """``(3,)`` float64 world RAS mm of the box centre (voxel index ``(n - 1) / 2``)."""
        idx = torch.tensor([(n - 1) / 2.0 for n in self.shape], dtype=torch.float64,
                           device=self.affine.device)
        return self.voxel_to_world(idx)

    @property
    def extent_mm(self) -> torch.Tensor:
        """``(3,)`` float64 size of the box in mm along i, j, k: ``n * spacing``."""
        n = torch.tensor(self.shape, dtype=torch.float64, device=self.affine.device)
        return n * self.spacing

    @property
    def corners(self) -> torch.Tensor:
        """``(8, 3)`` float64 world RAS mm of the box corners.

        The corners are at voxel indices ``-0.5`` and ``n - 0.5`` (the outer
        faces of the edge voxels); row ``4a + 2b + c`` is the corner with
        index ``(lo/hi)_i = a, (lo/hi)_j = b, (lo/hi)_k = c`` (0 = low end).
        """
        axes = [(-0.5, n - 0.5) for n in self.shape]
        idx = torch.tensor(list(itertools.product(*axes)), dtype=torch.float64,
                           device=self.affine.device)
        return self.voxel_to_world(idx)

    def get_isocenter(self) -> torch.Tensor:
        """``(3,)`` float64 world mm: :attr:`isocenter` if set, else :attr:`center`."""
        return self.isocenter if self.isocenter is not None else self.center

    def voxel_to_world(self, ijk: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Map voxel indices ``(..., 3)`` to world RAS mm ``(..., 3)`` float64.

        Indices are continuous; voxel centres are at integers.
        """
        ijk = torch.as_tensor(ijk, dtype=torch.float64, device=self.affine.device)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Map world RAS mm points ``(..., 3)`` to continuous voxel indices ``(..., 3)`` float64."""
        xyz = torch.as_tensor(xyz, dtype=torch.float64, device=self.affine.device)
        inv = torch.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    # ---------------------------------------------------------------- density
    def density(
        self,
        model: str = "hu",
        bone_attenuation_multiplier: float = 1.0,
        structures: int | str | Iterable[int | str] | None = None,
        *,
        mu_water: float = MU_WATER_PER_MM,
        mu_bone: float = MU_BONE_PER_MM,
        hu_bone: float = HU_BONE_REF,
    ) -> torch.Tensor:
        """Attenuation per mm of every voxel, for rendering DRRs.

        Args:
            model: one of :data:`DENSITY_MODELS`:

                * ``"hu"`` — DiffPose/DiffDRR model.  Air (HU <= -800) is set
                  to the minimum HU of the soft-tissue class
                  (-800 < HU <= 350; -800 if there is no soft tissue), soft
                  tissue is kept as is, bone (HU > 350) is multiplied by
                  ``bone_attenuation_multiplier``; the result is then shifted
                  and scaled so that its min is 0 and its max 1 over the whole
                  volume (before any ``structures`` mask).  Arbitrary units.
                * ``"physical"`` — linear attenuation coefficient μ in 1/mm
                  at ~70 keV, bilinear in HU:
                  ``HU <= 0: μ = mu_water * (1 + HU / 1000)`` clipped at >= 0;
                  ``HU > 0: μ = mu_water + HU * (mu_bone - mu_water) / hu_bone``.
                  For bone voxels (HU > 350) the excess over water,
                  ``μ - mu_water``, is multiplied by
                  ``bone_attenuation_multiplier`` (1 = calibrated; note that
                  values other than 1 make μ jump at HU = 350).
                * ``"raw"`` — the voxel values themselves, as attenuation per
                  mm (for geometry checks); ``bone_attenuation_multiplier``
                  is ignored.
            bone_attenuation_multiplier: a finite number > 0 (not a text or a bool), as
                :class:`~xraypose.render.DRR` takes it; see ``model``.
            structures: None keeps every voxel.  Otherwise a label id, a label
                name, or a list of them: the density is multiplied by the mask
                of those labels (see :meth:`structure_mask`).
            mu_water: μ of water in 1/mm (``"physical"`` only).
            mu_bone: μ in 1/mm at HU = ``hu_bone`` (``"physical"`` only);
                must exceed ``mu_water``.
            hu_bone: HU of the bone reference point (``"physical"`` only), > 0.

        Returns:
            ``(I, J, K)`` tensor with the dtype and device of :attr:`data`
            (float32 unless moved with :meth:`to`).  A new tensor: nothing is
            cached, callers should cache.

        Raises:
            InputError: unknown model, bad multiplier / constants, a constant
                volume with ``"hu"`` (nothing to normalise), bad ``structures``.
        """
        name = str(model).lower()
        if name not in DENSITY_MODELS:
            raise InputError(
                f"Unknown density model {model!r}; choose one of {', '.join(DENSITY_MODELS)}"
            )
        # a text '2' or a bool would pass float(); 0 leaves bone darker than soft tissue (the DRR and the
        # density basis refuse it too)
        check_number("bone_attenuation_multiplier", bone_attenuation_multiplier, lo=0, lo_open=True, prefix="")
        mult = float(bone_attenuation_multiplier)

        x = self.data
        if name == "hu":
            out = _hu_density(x, mult, self.source)
        elif name == "physical":
            out = _physical_density(x, mult, mu_water, mu_bone, hu_bone)
        else:
            out = x.clone()

        if structures is not None:
            out = out * self.structure_mask(structures).to(out.dtype)
        return out

    def structure_mask(self, structures: int | str | Iterable[int | str]) -> torch.Tensor:
        """``(I, J, K)`` bool mask of the voxels whose label is in ``structures``.

        Args:
            structures: a label id, a label name (looked up in
                :attr:`label_names`, exact match first, then
                case-insensitive), or a list mixing both.

        Raises:
            InputError: no labelmap; an unknown name (lists the known names);
                an id absent from the labelmap (lists the ids present); an
                empty list; or a selection containing no voxel.
        """
        if self.labels is None:
            raise InputError("structures were requested but this volume has no labelmap (pass labels=...)")
        scalar_tensor = torch.is_tensor(structures) and structures.ndim == 0
        if isinstance(structures, (str, int, np.integer)) or scalar_tensor:
            items = [structures]
        else:
            items = list(structures)
        if not items:
            raise InputError("structures is an empty list; give label ids or names, or None for all")

        ids: list[int] = []
        for item in items:
            if isinstance(item, str):
                ids.append(self._label_id_from_name(item))
            elif isinstance(item, (bool, np.bool_)):
                raise InputError(f"structures entries must be label ids or names; got {item!r}")
            else:
                try:
                    value = int(item)
                except (TypeError, ValueError):
                    raise InputError(
                        f"structures entries must be label ids or names; got {item!r}"
                    ) from None
                if value != item:
                    raise InputError(f"label ids must be integers; got {item!r}")
                ids.append(value)

        labels = self.labels
        mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
        for lid in dict.fromkeys(ids):
            m = labels == lid
            if not bool(m.any()):
                raise InputError(
                    f"label id {lid}{self._name_suffix(lid)} is not present in the labelmap; "
                    f"present: {self._describe_present_labels()}"
                )
            mask |= m
        return mask

    def _label_id_from_name(self, name: str) -> int:
        names = self.label_names or {}
        if name not in names.values():
            try:  # "3.0", "1e0", "nan", "": not a whole-number id, and not a name either
                float(name)
                number = True
            except ValueError:
                number = False
            if number or not name.strip():
                raise InputError(f"label {name!r} is neither a label id (a whole number, e.g. 3) nor a structure "
                                 "name" + ("" if not names else f" (known names: {', '.join(sorted(names.values()))})"))
        if not names:
            raise InputError(
                f"structure name {name!r} given but the volume has no label_names; use label ids"
            )
        for lid, nm in names.items():
            if nm == name:
                return lid
        matches = [lid for lid, nm in names.items() if nm.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(f"{nm} ({lid})" for lid, nm in sorted(names.items()))
        raise InputError(f"unknown structure name {name!r}; known names: {known}")

    def _name_suffix(self, lid: int) -> str:
        if self.label_names and lid in self.label_names:
            return f" ({self.label_names[lid]})"
        return ""

    def _describe_present_labels(self) -> str:
        assert self.labels is not None
        present = torch.unique(self.labels).tolist()
        shown = [f"{lid}{self._name_suffix(lid)}" for lid in present[:50]]
        more = f", ... ({len(present)} in all)" if len(present) > 50 else ""
        return ", ".join(shown) + more

    # ---------------------------------------------------------------- misc
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Volume":
        """A copy on ``device`` with :attr:`data` cast to ``dtype`` (a floating dtype).

        ``affine`` and ``isocenter`` stay float64 and ``labels`` int64; all
        tensors move to ``device``.  Tensors already matching are shared, not
        copied (as with :meth:`torch.Tensor.to`).
        """
        if dtype is not None and not dtype.is_floating_point:
            raise InputError(f"Volume.to: dtype must be a floating type; got {dtype}")
        return Volume(
            data=self.data.to(device=device, dtype=dtype),
            affine=self.affine.to(device=device),
            labels=None if self.labels is None else self.labels.to(device=device),
            label_names=None if self.label_names is None else dict(self.label_names),
            isocenter=None if self.isocenter is None else self.isocenter.to(device=device),
            source=self.source,
        )

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing.tolist())
        lab = "none" if self.labels is None else (
            f"{len(self.label_names)} names" if self.label_names else "ids only")
        return (
            f"Volume(shape={self.shape}, spacing=({sp}) mm, dtype={self.data.dtype}, "
            f"device={self.data.device}, labels={lab}, source={self.source!r})"
        )


# --------------------------------------------------------------------------
# Density models (torch ops only)
# --------------------------------------------------------------------------


def _hu_density(x: torch.Tensor, mult: float, source: str) -> torch.Tensor:
    # Written with few full-size temporaries: on CPU, allocating is what costs.
    # Non-air values, air -> +inf; its min is the soft-tissue minimum when any
    # soft tissue exists (soft tissue < bone).
    buf = F.threshold(x, HU_AIR_MAX, math.inf)
    soft_min = float(buf.amin())
    if not soft_min <= HU_BONE_MIN:  # no soft-tissue voxel (only air and/or bone)
        soft_min = HU_AIR_MAX
    # Every non-air voxel is >= soft_min, so clamping sends exactly air to soft_min.
    torch.clamp(x, min=soft_min, out=buf)
    if mult != 1.0:
        buf.add_(F.threshold(x, HU_BONE_MIN, 0.0), alpha=mult - 1.0)  # bone: x -> mult * x
    dmin, dmax = (float(v) for v in torch.aminmax(buf))
    if dmin == dmax:
        vmin, vmax = (float(v) for v in torch.aminmax(x))
        where = f" ({source})" if source else ""
        if vmin == vmax:
            raise InputError(
                f"volume is constant (every voxel = {vmin:g}){where}: "
                "the 'hu' density model has nothing to normalise"
            )
        raise InputError(
            f"density is constant after the 'hu' mapping{where} (air is set to the soft-tissue "
            "minimum): the 'hu' model has nothing to normalise"
        )
    return buf.sub_(dmin).mul_(1.0 / (dmax - dmin))


def _physical_density(x: torch.Tensor, mult: float, mu_water: float, mu_bone: float,
                      hu_bone: float) -> torch.Tensor:
    mu_w = finite_float(mu_water, "mu_water")
    mu_b = finite_float(mu_bone, "mu_bone")
    hu_b = finite_float(hu_bone, "hu_bone")
    if mu_w <= 0:
        raise InputError(f"mu_water must be > 0 (1/mm); got {mu_w}")
    if mu_b <= mu_w:
        raise InputError(f"mu_bone ({mu_b}) must exceed mu_water ({mu_w})")
    if hu_b <= 0:
        raise InputError(f"hu_bone must be > 0; got {hu_b}")
    slope_neg = mu_w / 1000.0            # 1/mm per HU for HU <= 0
    slope_pos = (mu_b - mu_w) / hu_b     # 1/mm per HU for HU > 0
    # mu = slope_neg * (HU + 1000 + (slope_pos / slope_neg - 1) * max(HU, 0)):
    # written so that HU = -1000 (air) gives exactly 0, also in float32.
    out = x.clamp(min=0.0)
    out.mul_(slope_pos / slope_neg - 1.0).add_(x).add_(1000.0).mul_(slope_neg)
    if mult != 1.0:
        # bone (HU > 350): excess over water slope_pos * HU -> mult * slope_pos * HU
        out.add_(F.threshold(x, HU_BONE_MIN, 0.0), alpha=(mult - 1.0) * slope_pos)
    return out.clamp_(min=0.0)


# --------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------


def volume_from_array(
    array,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    affine=None,
    labels=None,
    label_names: dict[int, str] | PathLike | None = None,
    isocenter=None,
    source: str = "array",
    dtype: torch.dtype = torch.float32,
) -> Volume:
    """Build a :class:`Volume` from an in-memory array (synthetic phantoms, tests).

    Args:
        array: ``(I, J, K)`` numpy array or tensor of voxel values.
        spacing: ``(3,)`` voxel size in mm, default ``(1, 1, 1)``.
        origin: ``(3,)`` world RAS mm of the centre of voxel ``(0, 0, 0)``,
            default ``(0, 0, 0)``.
        affine: ``(4, 4)`` voxel-index → world-RAS-mm matrix.  When given,
            ``spacing`` and ``origin`` must be left out; when not, the affine
            is ``diag(spacing)`` with ``origin`` as translation.
        labels: ``(I, J, K)`` integer labelmap (array/tensor), or None.
        label_names: ``{id: name}`` or a path to a JSON file ``{"id": "name"}``.
        isocenter: ``(3,)`` world mm, or None (box centre).
        source: text stored in :attr:`Volume.source`.
        dtype: floating dtype of :attr:`Volume.data`.

    Raises:
        InputError: not 3D, zero-size dimension, NaN/inf voxels, zero or
            negative spacing, spacing outside :data:`MIN_SPACING_MM` …
            :data:`MAX_SPACING_MM`, singular affine, misaligned labels, ...
    """
    dtype = _check_float_dtype(dtype)
    if torch.is_tensor(array):
        t = array.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # (NumPy has no bfloat16: a TypeError)
    else:
        arr = np.asarray(array)
    if not is_numeric_dtype(arr.dtype):
        raise InputError(f"volume array must be numeric; got dtype {arr.dtype}")
    arr = _as_3d(arr, source)
    check_voxel_values(arr, source, max_abs=float(np.finfo(np.float32).max))

    if affine is not None:
        if spacing is not None or origin is not None:
            raise InputError("give either affine or spacing/origin, not both")
        aff = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    else:
        for name, v in (("spacing", spacing), ("origin", origin)):  # a text ('1,1,1', ['1', '1', '1']) is no number
            if isinstance(v, (str, bytes)) or (v is not None and not is_numeric_dtype(np.asarray(v).dtype)):
                raise InputError(f"{name} must be 3 numbers (mm), got {v!r}")
        sp = np.asarray([1.0, 1.0, 1.0] if spacing is None else spacing, dtype=np.float64).reshape(-1)
        org = np.asarray([0.0, 0.0, 0.0] if origin is None else origin, dtype=np.float64).reshape(-1)
        if sp.shape != (3,) or org.shape != (3,):
            raise InputError(f"spacing and origin must have 3 values; got {sp.tolist()} and {org.tolist()}")
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise InputError(f"spacing must be finite and > 0 mm; got {sp.tolist()}")
        if not np.all(np.isfinite(org)):
            raise InputError(f"origin must be finite; got {org.tolist()}")
        aff = np.diag([*sp, 1.0])
        aff[:3, 3] = org
    _check_affine(aff, source)
    _check_position(aff, arr.shape, source)

    data = _to_data_tensor(arr, dtype)
    lab = None if labels is None else _as_label_tensor(labels, arr.shape, "labels")
    names = _load_label_names(label_names)
    iso = None if isocenter is None else _as_point(isocenter, "isocenter")
    return Volume(data=data, affine=torch.from_numpy(aff), labels=lab, label_names=names,
                  isocenter=iso, source=source)


def read_volume(
    path: PathLike,
    labels: PathLike | torch.Tensor | np.ndarray | None = None,
    label_names: dict[int, str] | PathLike | None = None,
    isocenter=None,
    dtype: torch.dtype = torch.float32,
    spacing: Sequence[float] | None = None,
) -> Volume:
    """Read a CT (or any 3D scalar image) into a :class:`Volume` in world RAS mm.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file (nibabel; the affine is used as
            is: RAS), a ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` file
            (SimpleITK; LPS → RAS), or a folder of DICOM slices (SimpleITK
            ImageSeriesReader; the series with the most files is read; LPS →
            RAS).  Voxel values are used as stored after the file's own
            rescaling (NIfTI scl_slope/inter, DICOM RescaleSlope/Intercept),
            i.e. HU for a CT.  A multi-page ``.tif`` / ``.tiff`` stack (pages =
            slices) needs ``spacing``; its axes and placement are those of
            :func:`xraypose.tiff_stack.read_tiff_volume` (which also offers
            ``origin`` and ``flip``); its values are kept as stored (not HU).
        labels: a labelmap aligned with the CT, as a path (any format above;
            same shape, and voxel grid within :data:`LABEL_ALIGN_TOL_MM` mm of
            the CT's) or an ``(I, J, K)`` integer array/tensor.
        label_names: ``{id: name}`` or a path to a JSON file ``{"id": "name"}``.
        isocenter: ``(3,)`` world RAS mm, or None (the box centre).
        dtype: floating dtype of :attr:`Volume.data` (default float32).
        spacing: ``(sx, sy, sz)`` voxel size in mm (columns, rows, pages) of a
            TIFF stack; refused for the other formats, which carry their own.

    Returns:
        The :class:`Volume`, on the CPU, with ``source`` set to the path.

    Raises:
        InputError: missing path, unknown or unreadable format, not 3D (a 4D
            image whose 4th size is 1 is squeezed), zero-size dimension,
            NaN/inf voxels, zero/negative or implausible (:data:`MIN_SPACING_MM`
            … :data:`MAX_SPACING_MM`) spacing or singular affine, empty
            DICOM folder or non-uniform DICOM slice spacing, misaligned or
            non-integer labels, bad label names.
    """
    dtype = _check_float_dtype(dtype)
    arr, aff, source = _read_image(path, "CT", spacing)
    data = _to_data_tensor(arr, dtype)
    del arr

    lab = None
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            tiff_labels = str(labels).lower().endswith((".tif", ".tiff"))
            larr, laff, lsource = _read_image(labels, "Labelmap", spacing if tiff_labels else None)
            if larr.shape != tuple(data.shape):
                raise InputError(
                    f"Labelmap {lsource} has shape {larr.shape} but the CT {source} has shape "
                    f"{tuple(data.shape)}"
                )
            err = _grid_distance_mm(aff, laff, larr.shape)
            if err > LABEL_ALIGN_TOL_MM:
                raise InputError(
                    f"Labelmap {lsource} is not aligned with the CT {source}: voxel positions differ "
                    f"by up to {err:.4g} mm (tolerance {LABEL_ALIGN_TOL_MM:g} mm)"
                )
            lab = _as_label_tensor(larr, tuple(data.shape), f"Labelmap {lsource}")
        else:
            lab = _as_label_tensor(labels, tuple(data.shape), "labels")
    names = _load_label_names(label_names)
    iso = None if isocenter is None else _as_point(isocenter, "isocenter")
    return Volume(data=data, affine=torch.from_numpy(aff), labels=lab, label_names=names,
                  isocenter=iso, source=source)


def load_sample_ct() -> Volume:
    """The bundled sample CT (pelvis, 122 × 101 × 112 voxels, 3 mm, HU, RAS).

    Read from ``xraypose/data/sample_ct.nii.gz`` through
    :mod:`importlib.resources`, so it works from an installed package.
    Attribution: :data:`SAMPLE_CT_ATTRIBUTION`.
    """
    ref = resources.files("xraypose").joinpath("data").joinpath(SAMPLE_CT_FILENAME)
    if not ref.is_file():
        raise FileNotFoundError(
            f"bundled sample CT missing from the xraypose package (data/{SAMPLE_CT_FILENAME}); "
            "reinstall xraypose"
        )
    with resources.as_file(ref) as p:
        vol = read_volume(p)
    vol.source = f"xraypose bundled sample CT (data/{SAMPLE_CT_FILENAME})"
    return vol


def load_ct(path) -> Volume:
    """A CT from a path (:func:`read_volume`), or the bundled sample (:func:`load_sample_ct`) when ``path``
    is the word ``"sample"`` (as every command's CT argument takes it)."""
    return load_sample_ct() if str(path) == "sample" else read_volume(path)


def _grid_distance_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the same voxel centre of a grid."""
    corners = np.array(list(itertools.product(*[(0.0, n - 1.0) for n in shape])), dtype=np.float64)
    hom = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
    return float(np.max(np.linalg.norm(hom @ (a - b).T, axis=1)))


def _as_label_tensor(labels, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if torch.is_tensor(labels):
        check_not_meta(what, labels)
        t = labels.detach()
    else:
        arr = np.asarray(labels)
        if not is_numeric_dtype(arr.dtype):
            raise InputError(f"{what}: labelmap must be numeric; got dtype {arr.dtype}")
        if arr.ndim > 3:
            arr = _as_3d(arr, what)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if tuple(t.shape) != tuple(shape):
        raise InputError(
            f"{what}: labelmap shape {tuple(t.shape)} does not match the volume shape {tuple(shape)}"
        )
    if t.dtype == torch.int64:
        return t
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{what}: labelmap has NaN or infinite values")
        if not bool((t == torch.round(t)).all()):
            raise InputError(f"{what}: labelmap has non-integer values; expected integer label ids")
    elif t.is_complex():
        raise InputError(f"{what}: labelmap must hold integer label ids")
    return t.to(torch.int64)


def _coerce_label_names(names, what: str) -> dict[int, str]:
    if not isinstance(names, dict):
        raise InputError(f"{what} must be a dict {{id: name}}; got {type(names).__name__}")
    out: dict[int, str] = {}
    for key, value in names.items():
        try:
            lid = int(key)
            if isinstance(key, float) and key != lid:
                raise ValueError
        except (TypeError, ValueError):
            raise InputError(f"{what}: label ids must be integers; got {key!r}") from None
        out[lid] = str(value)
    return out


def _load_label_names(label_names) -> dict[int, str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, (str, os.PathLike)):
        p = Path(label_names).expanduser()
        check_input_path(p, "label names file", f"Label names file not found: {p}")
        if not p.is_file():
            raise InputError(f"Label names file not found: {p}")
        try:
            content = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"Could not read label names JSON {p}: {one_line(exc)}") from exc
        if not isinstance(content, dict):
            raise InputError(f"Label names JSON {p} must be an object {{\"id\": \"name\"}}")
        return _coerce_label_names(content, f"Label names JSON {p}")
    return _coerce_label_names(label_names, "label_names")


def _as_point(value, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what} must be 3 numbers (world RAS mm); got {value!r}") from None
    if t.is_complex():  # the imaginary part was dropped with a warning
        raise InputError(f"{what} must be 3 real numbers (world RAS mm); got {t.tolist()}")
    check_not_meta(what, t)
    t = t.to(torch.float64).reshape(-1)
    if t.numel() != 3 or not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} must be 3 finite numbers (world RAS mm); got {t.tolist()}")
    return t


def _check_float_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating torch dtype (e.g. torch.float32); got {dtype}")
    return dtype


def _to_data_tensor(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Contiguous ``(I, J, K)`` tensor of ``dtype`` from a numeric numpy array (one copy)."""
    np_types = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
    if dtype in np_types:
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np_types[dtype]))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dtype)
