"""CT volumes: reading, geometry and attenuation (density) models.

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
from xraypose.geometry.frames import LPS_TO_RAS as GEOMETRY_LPS_TO_RAS

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

#: (4, 4) float64 matrix converting LPS world coordinates to RAS (its own inverse): a NumPy copy of
#: :data:`xraypose.geometry.LPS_TO_RAS`.
LPS_TO_RAS: np.ndarray = GEOMETRY_LPS_TO_RAS.numpy().copy()

#: A labelmap file must map its voxel grid within this distance (mm) of the CT's.
LABEL_ALIGN_TOL_MM: float = 1e-3

#: Voxel spacings (mm, per axis) outside [MIN_SPACING_MM, MAX_SPACING_MM] are refused when a volume is read
#: or built: no CT has them, a header in m or µm does (and a DRR's step or a registration's pyramid sized
#: for such voxels would not fit memory).
MIN_SPACING_MM: float = 0.01
MAX_SPACING_MM: float = 100.0

_NIFTI_EXTS = (".nii", ".nii.gz")
_ITK_EXTS = (".nrrd", ".nhdr", ".mha", ".mhd")
#: File name endings read by :func:`read_volume` (a DICOM series is a folder).
SUPPORTED_EXTENSIONS: tuple[str, ...] = _NIFTI_EXTS + _ITK_EXTS
_SUPPORTED_TEXT = (", ".join(SUPPORTED_EXTENSIONS) + ", a folder holding one DICOM series, or a multi-page TIFF "
                   "stack (.tif, .tiff, with spacing=)")

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


# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------


def _read_image(path: PathLike, what: str, spacing=None) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one 3D image: ``(I, J, K)`` array (native dtype), ``(4, 4)`` RAS affine, source text.
    ``spacing`` (mm): a TIFF stack's voxel size (xraypose.tiff_stack); refused for other files."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{what} path must be a string or path; got {type(path).__name__}")
    p = Path(path).expanduser()
    check_input_path(p, what, f"{what} file not found: {p}")
    source = str(p)
    is_tiff = p.is_file() and p.name.lower().endswith((".tif", ".tiff"))
    if spacing is not None and not is_tiff:
        raise InputError(f"spacing= is only for TIFF stacks; {p} carries its own voxel size")
    if is_tiff:
        from xraypose.tiff_stack import read_tiff_array

        arr, aff = read_tiff_array(p, spacing, what)
    elif p.is_dir():
        arr, aff, source = _read_dicom_dir(p, what)
    else:
        lname = p.name.lower()
        if lname.endswith(_NIFTI_EXTS):
            arr, aff = _read_nifti(p, what)
        elif lname.endswith(_ITK_EXTS):
            arr, aff = _read_itk_file(p, what)
        else:
            ext = "".join(p.suffixes[-2:]) if p.suffixes else "(none)"
            dicom_like = lname.endswith((".dcm", ".ima")) or not p.suffixes
            hint = " (for DICOM pass the folder holding the series)" if dicom_like else ""
            raise InputError(
                f"Unsupported {what} file extension {ext!r} for {p}; supported: {_SUPPORTED_TEXT}{hint}"
            )
    if not is_numeric_dtype(arr.dtype):
        raise InputError(
            f"{source}: voxel type {arr.dtype} is not a scalar number "
            "(RGB/structured images are not supported)"
        )
    arr = _as_3d(arr, source)
    check_voxel_values(arr, source)
    _check_affine(aff, source)
    _check_position(aff, arr.shape, source)
    return arr, aff, source


def _read_nifti(p: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    with _nibabel_quiet():  # nibabel logs the header fixes it makes ("setting 0 dims to 1") to stderr
        try:
            img = nib.load(str(p))
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise _nifti_unreadable(p, what, exc) from exc
        _check_nifti_header(img, p, what)
        try:
            arr = np.asanyarray(img.dataobj)
            aff = np.array(img.affine, dtype=np.float64)
            unit = img.header.get_xyzt_units()[0]
        except Exception as exc:  # noqa: BLE001
            raise _nifti_unreadable(p, what, exc) from exc
    # the header's spatial unit (xyzt_units): nibabel gives the affine in it, ITK (Slicer) in mm; a micro-CT's
    # 20 µm voxels were read as 20 mm
    aff[:3, :] *= _NIFTI_UNIT_MM.get(unit, 1.0)
    arr = np.array(arr)  # detach from a possible memmap
    return arr, aff


#: Millimetres per NIfTI spatial unit (xyzt_units) other than mm; "unknown" is taken as mm.
_NIFTI_UNIT_MM = {"meter": 1000.0, "micron": 1e-3}


#: Bytes of a NIfTI-1 header (NIfTI-2: 540); its first 4 bytes hold this number.
_NIFTI_HEADER_BYTES = {348: "NIfTI-1", 540: "NIfTI-2"}


def _nifti_unreadable(p: Path, what: str, exc: Exception) -> InputError:
    """Why nibabel could not read the NIfTI file ``p`` (it says "Cannot work out file type" both of a file cut
    short and of one that is no NIfTI): empty, truncated (shorter than its header, or a gzip stream that
    ends early), not a NIfTI file, or nibabel's own reason."""
    import gzip
    import zlib

    gz = p.name.lower().endswith(".gz")
    size = p.stat().st_size
    if size == 0:
        return InputError(f"Could not read {what} NIfTI file {p}: it is empty (0 bytes)")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as fh:
            head = fh.read(max(_NIFTI_HEADER_BYTES))
            while gz and fh.read(1 << 20):  # a gzip stream cut short fails only where it ends
                pass
    except EOFError:
        return InputError(f"Could not read {what} NIfTI file {p}: it is truncated, its gzip stream ends early "
                          f"({size} bytes; an incomplete copy or download?)")
    except gzip.BadGzipFile:
        return InputError(f"Could not read {what} NIfTI file {p}: it is not gzip-compressed, as its ending .gz says "
                          "(a plain NIfTI ends in .nii)")
    except (OSError, zlib.error) as e:
        return InputError(f"Could not read {what} NIfTI file {p}: {one_line(e)}")
    kinds = {int.from_bytes(head[:4], order) for order in ("little", "big")} if len(head) >= 4 else set()
    kind = next((_NIFTI_HEADER_BYTES[k] for k in kinds if k in _NIFTI_HEADER_BYTES), None)
    if kind is None:
        if not gz and head[:2] == b"\x1f\x8b":
            return InputError(f"Could not read {what} NIfTI file {p}: it is gzip-compressed: name it .nii.gz")
        return InputError(f"Could not read {what} NIfTI file {p}: it is not a NIfTI file (its first bytes are no "
                          "NIfTI header)")
    need = min(k for k, v in _NIFTI_HEADER_BYTES.items() if v == kind)
    if len(head) < need:
        held = f"{len(head)} bytes" + (" once decompressed" if gz else "")
        return InputError(f"Could not read {what} NIfTI file {p}: it is truncated, it holds {held}, less than its "
                          f"{need}-byte {kind} header")
    return InputError(f"Could not read {what} NIfTI file {p}: {one_line(exc)}")


class _nibabel_quiet:
    """nibabel's header log ('nibabel.global') silenced: what matters is refused by xraypose, in one line."""

    def __enter__(self):
        import logging

        self._log = logging.getLogger("nibabel.global")
        self._level = self._log.level
        self._log.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc):
        self._log.setLevel(self._level)
        return False


def _check_nifti_header(img, p: Path, what: str) -> None:
    """Before reading the voxels: the declared size fits memory (and, uncompressed, the file), and
    the voxel size is known (no sform/qform and a zero pixdim: nibabel would guess 1 mm)."""
    from xraypose.limits import check_allocation, dims, human_bytes

    hdr = img.header
    shape = tuple(int(n) for n in img.shape)
    if any(n < 0 for n in shape):  # nibabel would fail on its memory map ("length must be positive"); 0: below
        raise InputError(f"{what} file {p}: the header declares a size of {' × '.join(map(str, shape))} voxels "
                         "(a negative size: a damaged header?)")
    itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    check_allocation(shape, itemsize + 4, f"{what} file {p}")  # the file's values and a float32 copy
    if not p.name.lower().endswith(".gz"):
        need = int(hdr.get("vox_offset", 0)) + int(np.prod(shape)) * itemsize
        have = p.stat().st_size
        if have < need:
            raise InputError(f"{what} file {p} is truncated: the header declares {dims(shape)} voxels of "
                             f"{np.dtype(hdr.get_data_dtype()).name} ({human_bytes(need)} with the header), the file "
                             f"holds {human_bytes(have)}")
    if "sform_code" not in hdr:
        return
    from nibabel.openers import ImageOpener

    with ImageOpener(str(p)) as fh:  # the header as written: nibabel's loaded one has 0 voxel sizes set to 1
        raw = type(hdr).from_fileobj(fh, check=False)
    _check_sform_qform(raw, shape, p, what)
    if [int(raw["sform_code"]), int(raw["qform_code"])] == [0, 0]:
        pixdim = [float(v) for v in raw["pixdim"][1:4]]
        if not all(math.isfinite(v) and v > 0 for v in pixdim):
            raise InputError(f"{what} file {p} has no sform/qform and pixdim {pixdim} holds a zero, negative or "
                             "non-finite voxel size: its spacing is unknown (xraypose does not guess 1 mm); "
                             "write the voxel size or an affine into the file")


def _check_sform_qform(raw, shape: tuple[int, ...], p: Path, what: str) -> None:
    """A NIfTI header with both an sform and a qform (codes > 0) that place the CT differently (a corner half its
    smallest voxel or more apart) is refused: nibabel, so xraypose, uses the sform, ITK-based tools (Slicer,
    SimpleITK) the qform; which the file means is unknown."""
    sc, qc = int(raw["sform_code"]), int(raw["qform_code"])
    if sc <= 0 or qc <= 0:
        return
    try:
        s_aff, q_aff = np.asarray(raw.get_sform(), np.float64), np.asarray(raw.get_qform(), np.float64)
    except Exception:  # noqa: BLE001 - a damaged quaternion: the sform is read, as nibabel does
        return
    n = [max(int(v), 1) - 1 for v in (list(shape) + [1, 1, 1])[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    apart = float(np.linalg.norm((corners @ (s_aff - q_aff).T)[:, :3], axis=1).max())
    s_vox, q_vox = np.linalg.norm(s_aff[:3, :3], axis=0), np.linalg.norm(q_aff[:3, :3], axis=0)
    if not (apart < 0.5 * min(float(s_vox.min()), float(q_vox.min()))):
        raise InputError(f"{what} file {p}: its sform (code {sc}) and qform (code {qc}) place the CT differently "
                         f"(corners up to {apart:.3g} mm apart; voxel sizes {np.round(s_vox, 4).tolist()} and "
                         f"{np.round(q_vox, 4).tolist()} mm): xraypose would use the sform, ITK-based tools (Slicer) "
                         "the qform; make them agree, or set the code of the wrong one to 0")


def _read_itk_file(p: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    from xraypose.limits import check_allocation, itemsize_from_text

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with _itk_quiet():
        try:
            _check_detached_data_file(p, what)
            _check_nrrd_space_units(p, what)
            reader.ReadImageInformation()  # the header only
            size = tuple(int(n) for n in reader.GetSize())
            item = itemsize_from_text(sitk.GetPixelIDValueAsString(reader.GetPixelID()))
            check_allocation(size, item * max(1, reader.GetNumberOfComponents()) + 4, f"{what} file {p}")
            img = reader.Execute()
        except RuntimeError as exc:
            msg = str(exc)
            if "zero-valued spacing" in msg.lower():
                raise InputError(f"{what} file {p} has zero voxel spacing in its header") from exc
            raise InputError(f"Could not read {what} file {p}: {_itk_reason(msg)}") from exc
    return _sitk_to_array_affine(img, str(p))


def _check_nrrd_space_units(p: Path, what: str) -> None:
    """A NRRD header's ``space units`` other than mm refused: ITK ignores them and reads mm, so a header in
    cm or m placed the CT 10 or 1000 times too small, without a word."""
    if not p.name.lower().endswith((".nrrd", ".nhdr")):
        return
    try:
        text = _header_fields(p, ":").get("space units", "")
    except OSError:
        return  # ITK's reading names the problem
    units = [u.strip().strip('"') for u in text.split('"') if u.strip().strip('"')] if text else []
    other = [u for u in units if u.lower() != "mm"]
    if other:
        raise InputError(f"{what} file {p}: its space units are {' '.join(units)} (NRRD 'space units'); xraypose, as "
                         "ITK, reads NRRD coordinates as mm: convert the file to mm")


class _itk_quiet:
    """ITK's warnings off while reading (they go straight to stderr, around xraypose's one-line errors)."""

    def __enter__(self):
        import SimpleITK as sitk

        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        return self

    def __exit__(self, *exc):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self._old)
        return False


def _header_fields(p: Path, sep: str) -> dict:
    """{lower-case key: value} of a text header (MetaImage ``Key = value``, NRRD ``key: value``)."""
    out = {}
    with open(p, "rb") as fh:
        head = fh.read(65536)
    for line in head.split(b"\n"):
        text = line.decode("latin-1").strip()
        if not text and sep == ":":  # the blank line ending a NRRD header
            break
        if sep in text:
            k, v = text.split(sep, 1)
            out[k.strip().lower()] = v.strip()
    return out


def _check_detached_data_file(p: Path, what: str) -> None:
    """A ``.mhd`` / ``.nhdr`` header names its voxel file: refuse, naming it, when it is missing or
    shorter than the header declares (uncompressed)."""
    from xraypose.limits import dims, human_bytes, itemsize_from_text

    name = p.name.lower()  # (MetaImage and NRRD type names → bytes per value; 0: unknown, size not checked)
    if name.endswith(".mhd"):
        f = _header_fields(p, "=")
        data, key = f.get("elementdatafile"), "ElementDataFile"
        size = f.get("dimsize", "")
        met = {"char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4, "uint": 4, "long": 8, "ulong": 8,
               "long_long": 8, "ulong_long": 8, "float": 4, "double": 8}
        item = met.get(f.get("elementtype", "").lower().replace("met_", ""), 0)
        try:
            item *= int(f.get("elementnumberofchannels", "1") or 1)
        except ValueError:
            item = 0
        compressed = f.get("compresseddata", "false").lower() == "true"
    elif name.endswith(".nhdr"):
        f = _header_fields(p, ":")
        data, key = f.get("data file") or f.get("datafile"), "data file"
        size = f.get("sizes", "")
        nrrd = {"char": 1, "uchar": 1, "signed char": 1, "unsigned char": 1, "short": 2, "ushort": 2,
                "signed short": 2, "unsigned short": 2, "short int": 2, "int": 4, "uint": 4, "signed int": 4,
                "unsigned int": 4, "float": 4, "double": 8}
        item = itemsize_from_text(f.get("type", ""), 0) or nrrd.get(f.get("type", "").lower(), 0)
        compressed = f.get("encoding", "raw").lower() not in ("raw",)
    else:
        return
    if not data or data.upper() in ("LOCAL", "LIST") or data.upper().startswith("LIST") or "%" in data:
        return
    target = (p.parent / data.split()[0]) if not Path(data).is_absolute() else Path(data)
    missing = f"{what} file {p} names its voxel file {target.name} ({key}), which is missing: {target}"
    check_input_path(target, f"{what} voxel file", missing)
    if not target.is_file():
        raise InputError(missing)
    try:
        shape = [int(float(v)) for v in size.split()]
    except ValueError:
        return
    need = int(np.prod(shape)) * item if shape and item else 0
    have = target.stat().st_size
    if not compressed and need and have < need:
        raise InputError(f"{what} voxel file {target.name} (named by {p.name}) is truncated: {dims(shape)} voxels "
                         f"need {human_bytes(need)}, the file holds {human_bytes(have)}")


def _read_dicom_dir(d: Path, what: str) -> tuple[np.ndarray, np.ndarray, str]:
    import SimpleITK as sitk

    entries = list(d.iterdir())
    files = [e for e in entries if e.is_file()]
    if not files:
        sub = " (it holds only sub-folders; pass the folder of one series)" if entries else ""
        from xraypose.info import CT_SUFFIXES, XRAY_SUFFIXES  # the endings of the files xraypose reads

        endings = [x for x in CT_SUFFIXES + XRAY_SUFFIXES if d.name.lower().endswith(x)]
        if not entries and endings:  # `mkdir ct.nii.gz`, a copy gone wrong
            sub = f" (a folder named like a {max(endings, key=len)} file: give the file itself)"
        raise InputError(f"DICOM folder is empty: {d}{sub}")
    try:
        with _itk_quiet():
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
    except RuntimeError as exc:
        raise InputError(f"Could not scan DICOM folder {d}: {_itk_reason(str(exc))}") from exc
    if not series_ids:
        raise InputError(
            f"No DICOM image series found in folder {d} ({len(files)} files; sub-folders are not searched)"
        )
    by_count = []
    for sid in series_ids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid)
        by_count.append((len(names), sid, names))
    by_count.sort(key=lambda t: -t[0])
    count, sid, names = by_count[0]
    if count < 2:
        raise InputError(f"DICOM series in {d} has only {count} slice; a 3D series needs at least 2"
                         f"{_one_file_series_hint(names[0])}")

    _check_dicom_series_size(names, d, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(names))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _itk_quiet():
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read DICOM series in {d}: {_series_reason(names, str(exc))}") from exc

    named = f"DICOM series {sid!r}" if sid.strip() else "a DICOM series without a SeriesInstanceUID"
    source = f"{d} ({named}, {count} files" + (
        f"; {len(series_ids)} series in folder, read the largest)" if len(series_ids) > 1 else ")")
    _check_dicom_series_headers(reader, count, source)
    if _slice_rescales_vary(reader, count) and img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        reader.SetOutputPixelType(sitk.sitkFloat32)  # GDCM typed the volume by the first slice's rescale
        with _itk_quiet():
            img = reader.Execute()
    _check_dicom_slice_spacing(reader, img, count, source)
    arr, aff = _sitk_to_array_affine(img, source)
    return arr, aff, source


def _one_file_series_hint(name: str) -> str:
    """What a series of one file is when that file holds several frames: an enhanced (multi-frame) CT or a
    segmentation (SEG) — not read as a CT volume here; "" otherwise."""
    import pydicom

    try:
        ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable: the count says enough
        return ""
    if frames < 2:
        return ""
    modality = str(ds.get("Modality", "") or "").strip() or "no Modality"
    return (f" ({Path(name).name} is one multi-frame file of {frames} frames, {modality}: an enhanced CT or a "
            "segmentation is not read as a CT; convert a CT to NIfTI first, e.g. dcm2niix)")


#: DICOM Modality values of projection radiographs (one 2-D view each, not slices of a volume).
PROJECTION_MODALITIES = ("CR", "DX", "XA", "RF", "MG")
#: SOP Class UIDs of projection radiographs: CR, DX (presentation, processing), mammography, intra-oral,
#: X-ray angiography and radiofluoroscopy (and their enhanced and bi-plane forms).
PROJECTION_SOP_CLASSES = frozenset(
    "1.2.840.10008.5.1.4.1.1." + s
    for s in ("1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1", "12.1", "12.1.1", "12.2", "12.2.1", "12.3")
)


def _check_dicom_series_headers(reader, count: int, source: str) -> None:
    """Refuse a series that is no CT volume: projection radiographs (Modality or SOP class; GDCM stacks them
    with an invented 1 mm spacing), slices of differing ImageOrientationPatient (a localizer mixed in: the
    volume's axes would be the first slice's), a RescaleSlope of 0 or not finite (a slice of one value)."""
    def tag(i, key):
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""

    modality, sop = tag(0, "0008|0060").upper(), tag(0, "0008|0016").rstrip("\0 ")
    if modality in PROJECTION_MODALITIES or sop in PROJECTION_SOP_CLASSES:
        what = f"Modality {modality}" if modality in PROJECTION_MODALITIES else f"SOP class {sop}"
        raise InputError(f"DICOM series {source} holds projection radiographs ({what}), not CT slices: "
                         "give a CT series as the CT, and X-rays as X-rays")
    names = reader.GetFileNames()
    first = None
    first_ps = None
    for i in range(count):
        name = Path(names[i]).name if i < len(names) else f"slice {i + 1}"
        first_ps = _check_slice_pixel_spacing(tag(i, "0028|0030"), first_ps, name, source)
        try:
            iop = [float(v) for v in tag(i, "0020|0037").split("\\")] if tag(i, "0020|0037") else None
            slope = float(tag(i, "0028|1053")) if tag(i, "0028|1053") else None
        except ValueError:
            continue  # unreadable: SimpleITK's reading stands
        if iop is not None and len(iop) == 6:
            if first is None:
                first = iop
            elif max(abs(a - b) for a, b in zip(iop, first)) > 1e-4:
                raise InputError(f"DICOM series {source}: {name} has ImageOrientationPatient {iop}, the first slice "
                                 f"{first}: slices of different orientations (a localizer mixed in?)")
        if slope is not None and not (math.isfinite(slope) and slope != 0):
            raise InputError(f"DICOM series {source}: {name} has RescaleSlope (0028,1053) {slope:g} (every voxel of "
                             "the slice would be equal)")


def _slice_rescales_vary(reader, count: int) -> bool:
    """Whether the slices' RescaleSlope/Intercept (0028,1053/1052) differ, or one is fractional: GDCM gives the
    volume the first slice's pixel type (int16 for slope 1, intercept −1024), so another slice's fractional values
    were truncated (4.5 read as 4)."""
    seen = set()
    for i in range(count):
        pair = []
        for key in ("0028|1053", "0028|1052"):
            text = reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""
            try:
                pair.append(float(text) if text else None)
            except ValueError:
                pair.append(None)
        if any(v is not None and not float(v).is_integer() for v in pair):
            return True
        seen.add(tuple(pair))
    return len(seen) > 1


def _check_slice_pixel_spacing(text: str, first: list | None, name: str, source: str) -> list:
    """A slice's PixelSpacing (0028,0030): 2 positive numbers (GDCM would invent 1 mm without them), the
    first slice's within 0.1 % (the volume gets the first slice's pixel size: two reconstructions mixed?)."""
    try:
        ps = [float(v) for v in text.split("\\")] if text else []
    except ValueError:
        ps = []
    if len(ps) != 2 or not all(math.isfinite(v) and v > 0 for v in ps):
        found = f"{text!r}" if text else "none"
        raise InputError(f"DICOM series {source}: {name} has no usable PixelSpacing (0028,0030) (2 numbers > 0, mm; "
                         f"found {found}): the voxel size is unknown (xraypose does not guess 1 mm)")
    if first is not None and any(abs(a - b) > 1e-3 * b for a, b in zip(ps, first)):
        raise InputError(f"DICOM series {source}: {name} has PixelSpacing {ps} mm, the first slice {first} mm: "
                         "slices of different pixel sizes (two reconstructions in one folder?)")
    return first if first is not None else ps


def _check_dicom_series_size(names, d: Path, what: str) -> None:
    """The series' size (first slice's rows × columns × number of slices) fits memory, before reading it."""
    import SimpleITK as sitk

    from xraypose.limits import check_allocation, itemsize_from_text

    r = sitk.ImageFileReader()
    r.SetFileName(str(names[0]))
    try:
        with _itk_quiet():
            r.ReadImageInformation()
    except RuntimeError:
        return  # the series reader will say what is wrong
    size = list(r.GetSize())[:2] + [len(names)]
    item = itemsize_from_text(sitk.GetPixelIDValueAsString(r.GetPixelID()))
    check_allocation(size, item + 4, f"{what} DICOM series in {d}")


def _check_dicom_slice_spacing(reader, img, count: int, source: str) -> None:
    """Raise if a slice lacks a usable ImagePositionPatient (GDCM would then invent a 1 mm spacing or
    misplace the slice) or the slice positions along the slice normal are not evenly spaced."""
    positions = []
    names = reader.GetFileNames()
    for i in range(count):
        text = reader.GetMetaData(i, "0020|0032").strip() if reader.HasMetaDataKey(i, "0020|0032") else ""
        try:
            xyz = [float(v) for v in text.split("\\")] if text else []
        except ValueError:
            xyz = []
        if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
            name = Path(names[i]).name if i < len(names) else f"slice {i + 1}"
            found = f"{text!r}" if text else "none"
            raise InputError(
                f"DICOM series {source}: {name} has no usable ImagePositionPatient (0020,0032) (3 numbers, mm; "
                f"found {found}): the slices' spacing and order are unknown (xraypose does not guess them)"
            )
        positions.append(xyz)
    pos = np.asarray(positions, dtype=np.float64)
    normal = np.asarray(img.GetDirection(), dtype=np.float64).reshape(img.GetDimension(), -1)[:3, 2]
    gaps = np.diff(pos @ normal)
    med = float(np.median(gaps))
    if abs(med) < 1e-6 or np.any(np.abs(gaps - med) > max(1e-2, 0.01 * abs(med))):
        raise InputError(
            f"DICOM series {source} has uneven slice positions (gaps {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm): missing or duplicate slices?"
        )
    along = np.outer((pos - pos[0]) @ normal, normal)
    drift = np.linalg.norm(pos - pos[0] - along, axis=1)  # within the slices' planes: GDCM stacks them straight
    if drift.max() > max(1e-2, 0.01 * abs(med)):
        k = int(np.argmax(drift))
        raise InputError(
            f"DICOM series {source}: slice {k + 1}'s ImagePositionPatient lies {drift[k]:.3g} mm beside the line "
            "through the first slice along the slices' normal (a gantry-tilted acquisition?); it would be read as a "
            "straight stack, each slice misplaced: resample it first (e.g. dcm2niix, which corrects gantry tilt)"
        )


def _sitk_to_array_affine(img, source: str) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image → ``(I, J, K)`` array and ``(4, 4)`` RAS affine."""
    import SimpleITK as sitk

    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp != 1:
        raise InputError(f"{source}: expected a scalar image, got {ncomp} components per voxel")
    size = list(img.GetSize())
    dim = img.GetDimension()
    if dim == 4 and size[3] == 1:
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise InputError(f"{source}: expected a 3D volume, got a {dim}D image of size {tuple(size)}")
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    if np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{source}: voxel spacing must be > 0 mm; header says {spacing.tolist()}")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    aff_lps = np.eye(4)
    aff_lps[:3, :3] = direction * spacing[None, :]
    aff_lps[:3, 3] = origin
    # ITK arrays are indexed [k, j, i]; ITK index (i, j, k) = (x, y, z).
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return arr, LPS_TO_RAS @ aff_lps


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _as_3d(arr: np.ndarray, source: str) -> np.ndarray:
    shape = tuple(int(n) for n in arr.shape)
    if 0 in shape:
        raise InputError(f"{source}: volume has a zero-size dimension, shape {shape}")
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        extra = " (several volumes / time points: extract one first)" if arr.ndim > 3 else ""
        raise InputError(f"{source}: expected a 3D volume, got shape {shape}{extra}")
    return arr


#: Voxel values beyond ± this are refused when a CT is read: not HU nor an attenuation (a damaged
#: file or wrong units), and sums of such values overflow float32 in a DRR.
MAX_ABS_VOXEL: float = 1e6


def check_voxel_values(arr: np.ndarray, source: str, max_abs: float = MAX_ABS_VOXEL) -> None:
    """Refuse NaN / infinite voxels and values beyond ``±max_abs`` (naming the first such value and
    its voxel index), before the values are converted to float32.

    Raises:
        InputError: ``"{source}: voxel value 1e+300 at (6, 6, 6) …"``.
    """
    _check_finite(arr, source)
    if arr.size == 0 or arr.dtype == bool or arr.dtype.kind not in "iuf":
        return
    lo, hi = arr.min(), arr.max()
    if max(abs(float(lo)), abs(float(hi))) <= max_abs:
        return
    v = hi if abs(float(hi)) >= abs(float(lo)) else lo
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(arr == v)), arr.shape))
    if abs(float(v)) > float(np.finfo(np.float32).max):
        raise InputError(f"{source}: voxel value {float(v):g} at {idx} does not fit float32 (at most "
                         f"{float(np.finfo(np.float32).max):.3g}): not CT values")
    raise InputError(f"{source}: voxel value {float(v):g} at {idx} is beyond ±{max_abs:g}: not CT values (HU) "
                     "nor attenuations (a damaged file or wrong units?)")


def _check_finite(arr: np.ndarray, source: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{source}: {bad} of {arr.size} voxels are NaN or infinite")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{source}: complex voxel values are not supported")


def _check_affine(aff: np.ndarray, source: str, plausible_spacing: bool = True) -> None:
    """A (4, 4) finite, invertible voxel-index → world affine with last row [0, 0, 0, 1]; with
    ``plausible_spacing`` (a CT's) its voxel sizes within :data:`MIN_SPACING_MM` … :data:`MAX_SPACING_MM`."""
    if aff.shape != (4, 4):
        raise InputError(f"{source}: affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise InputError(f"{source}: affine has NaN or infinite entries: {aff.tolist()}")
    if not np.allclose(aff[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{source}: affine's last row must be [0, 0, 0, 1], got {aff[3].tolist()}")
    m = aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        axes = ", ".join("ijk"[a] for a in np.flatnonzero(spacing <= 0))
        raise InputError(
            f"{source}: zero voxel spacing along axis {axes} (spacing {spacing.tolist()} mm; singular affine)"
        )
    odd = np.flatnonzero((spacing < MIN_SPACING_MM) | (spacing > MAX_SPACING_MM))
    if plausible_spacing and odd.size:
        a = int(odd[0])
        raise InputError(
            f"{source}: voxel spacing {spacing[a]:.3g} mm (axis {'ijk'[a]}) is implausible for a CT (expected "
            f"{MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm) — check the header's units"
        )
    if abs(np.linalg.det(m)) <= 1e-6 * float(np.prod(spacing)):
        raise InputError(f"{source}: singular affine (voxel axes are collinear): {m.tolist()}")


def _check_position(aff: np.ndarray, shape: tuple[int, ...], source: str) -> None:
    """The CT's voxel box within ±:data:`xraypose.schema.MAX_POSITION_MM` of the world origin, as every
    coordinate xraypose takes: farther, float32 rays lose the CT (a DRR of zeros or shifted, silently)."""
    from xraypose.schema import MAX_POSITION_MM

    ijk = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape[:3]])), dtype=np.float64)
    far = float(np.abs(ijk @ aff[:3, :3].T + aff[:3, 3]).max())
    if far > MAX_POSITION_MM:
        raise InputError(f"{source}: the CT reaches {far:.3g} mm from the world origin (its origin is "
                         f"{[round(float(v), 3) for v in aff[:3, 3]]} mm); coordinates must be within "
                         f"±{MAX_POSITION_MM:g} mm (1 km): check the header's origin and units")


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


def _series_reason(names, msg: str) -> str:
    """Why ITK's series reader failed on the files ``names``: slices of different sizes in one series
    (ITK says "Size mismatch!" or "ImageIO returns IO region that does not fully contain the requested
    region", by which file comes first) become "its slices differ in size: A is 512 × 512, B is 160 × 160
    pixels (…)" — each file's header read only now, after the failure; anything else as
    :func:`_itk_reason` keeps it."""
    import SimpleITK as sitk

    sizes = {}
    for n in names:
        r = sitk.ImageFileReader()
        r.SetFileName(str(n))
        try:
            with _itk_quiet():
                r.ReadImageInformation()
        except RuntimeError:
            continue
        sizes.setdefault(tuple(r.GetSize()[:2]), Path(n).name)
    if len(sizes) < 2:
        return _itk_reason(msg)
    shown = ", ".join(f"{name} is {w} × {h}" for (w, h), name in list(sizes.items())[:3])
    return f"its slices differ in size: {shown} pixels (one folder should hold the slices of one CT series)"


def _itk_reason(msg: str) -> str:
    """Keep the informative tail of an ITK exception message, on one line."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR" in ln or "Unable" in ln or "error" in ln:
            return one_line(Exception(ln.split("ERROR:")[-1]))
    return one_line(Exception(lines[-1] if lines else msg))
