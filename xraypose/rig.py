"""A rig: several X-ray views whose cameras are tied to each other by known rigid transforms.

Each view ``i`` has a ``camera_to_rig_i`` (4×4, mm) and, optionally, its
intrinsics.  One unknown ``rig_to_world`` (rig frame → CT world, RAS mm)
places the whole rig: ``camera_to_world_i = rig_to_world · camera_to_rig_i``.

Where a rig comes from:

* ``rig.json`` (:func:`read_rig`), written by hand or by :func:`write_rig`;
* a biplane calibration (:func:`rig_from_mayacam`): the rig frame is the
  calibration's world frame, so ``camera_to_rig_i`` is camera i's
  camera_to_world as the calibration gives it;
* several shots of one C-arm about one isocenter (:func:`rig_from_carm`,
  :func:`rig_from_xrays`): the rig frame is the isocenter frame, its origin at
  the isocenter and its axes the patient's RAS as the C-arm angles assume
  (:func:`xraypose.camera.carm_pose`), so ``rig_to_world`` is the isocenter's
  place in the CT (a translation, when the patient lies as the angles assume).

``rig.json``::

    {
      "description": "biplane wrist, XMALab calibration",          (optional)
      "camera": {"sdd_mm": …, "delx_mm": …, "height": …, "width": …},   (optional: shared intrinsics)
      "views": {                                                   (required, in order)
        "cam01.tif": {"camera_to_rig": [[…4 numbers…], …4 rows…],
                      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "height": 1760, "width": 1760,
                      "pixel_mm": 0.2},                             (K in pixels; pixel_mm optional)
        "cam02.tif": {"camera_to_rig": …,
                      "camera": {"sdd_mm": 1272.3, "delx_mm": 0.2, "height": 1760, "width": 1760,
                                 "x0_mm": 5.0, "y0_mm": 2.9}}       (xraypose's Camera keys)
      }
    }

A view's intrinsics are optional: without them the X-ray file's own (DICOM
header, sidecar JSON) are used, else the rig's shared ``"camera"`` (or one
given by the caller), which fits only views of its size.  A view's name is
matched to an X-ray by the path as given, the file name (``cam01.tif``), its
stem (``cam01``), or else its folder's name (``cam01/frame0002.tif``).

Checks (each a one-line :class:`~xraypose.errors.InputError` naming the file,
the key and the problem): unknown keys, wrong types, a ``camera_to_rig`` that
is not rigid (orthonormal rotation and det +1 within :data:`RIG_RIGID_TOL`,
last row 0 0 0 1), intrinsics that contradict themselves or the image size or put the principal
point more than one detector width (height) outside the image,
views naming X-rays that are not given and X-rays without a view, views of
different sizes without intrinsics of their own, two views with the same ``camera_to_rig``
(:data:`RIG_SAME_PLACE_MM`, :data:`RIG_SAME_PLACE_RAD`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera, camera_from_K, carm_pose
from xraypose.errors import InputError
from xraypose.schema import (OFFSET_MM, PIXEL_MM, PIXELS, SDD_MM, SOD_MM, PRIMARY_DEG, SECONDARY_DEG, Bool, MapOf,
                             Matrix, Matrix4, Number, Object, Text, check, read_json)

__all__ = ["Rig", "RigView", "read_rig", "write_rig", "rig_from_carm", "rig_from_xrays", "rig_from_mayacam",
           "RIG_RIGID_TOL", "RIG_SAME_PLACE_MM",
           "RIG_SAME_PLACE_RAD", "RIG_JSON"]

#: ``camera_to_rig`` must be rigid to this: max |RᵀR − I| and |last row − [0, 0, 0, 1]| (a rotation
#: written with 6 decimals passes; a scaled or sheared matrix does not).  It is then projected onto
#: the nearest rotation.
RIG_RIGID_TOL: float = 1e-4

#: Two views whose ``camera_to_rig`` agree within this (translation mm, rotation rad) are one place:
#: refused (a second view from where the first was adds nothing; almost surely a copy-paste error).
RIG_SAME_PLACE_MM: float = 1e-6
RIG_SAME_PLACE_RAD: float = 1e-9

_F64 = torch.float64

_CAMERA = Object({
    "sdd_mm": SDD_MM, "delx_mm": PIXEL_MM, "dely_mm": PIXEL_MM, "x0_mm": OFFSET_MM, "y0_mm": OFFSET_MM,
    "reverse_x_axis": Bool(), "height": PIXELS, "width": PIXELS, "K": Matrix(3, 3, Number(-1e9, 1e9)),
}, required=("sdd_mm", "delx_mm", "height", "width"),
    what="an object of intrinsics {\"sdd_mm\": …, \"delx_mm\": …, \"height\": …, \"width\": …}")

_VIEW = Object({
    "camera_to_rig": Matrix4(tol=RIG_RIGID_TOL),
    "camera": _CAMERA,
    "K": Matrix(3, 3, Number(-1e9, 1e9)),
    "height": PIXELS, "width": PIXELS, "pixel_mm": PIXEL_MM,
    "description": Text(),
}, required=("camera_to_rig",), what="an object {\"camera_to_rig\": 4×4, …}")

#: The schema of ``rig.json`` (module docstring).
RIG_JSON = Object({
    "description": Text(),
    "camera": _CAMERA,
    "views": MapOf(_VIEW, what="an object {\"<x-ray name>\": {\"camera_to_rig\": 4×4, …}}"),
}, required=("views",), what="an object {\"views\": {…}}")


@dataclass(frozen=True)
class RigView:
    """One view of a rig.

    Attributes:
        name: the X-ray it belongs to (file name, stem or path).
        camera_to_rig: (4, 4) float64, mm.
        camera: its intrinsics, or None (then the X-ray file's or the rig's shared ones).
    """

    name: str
    camera_to_rig: torch.Tensor
    camera: Camera | None = None


@dataclass
class Rig:
    """Ordered views tied together; ``views`` maps name → :class:`RigView` in the file's order.

    Attributes:
        views: {name: RigView}, ordered.
        camera: shared intrinsics for views with none of their own (or None).
        description: free text.
        source: where the rig came from (a path, "C-arm angles", ...).
    """

    views: dict = field(default_factory=dict)
    camera: Camera | None = None
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.views:
            raise InputError(f"{self.source or 'rig'}: a rig needs at least one view")
        _check_distinct_places(self.views, self.source or "rig")

    @property
    def names(self) -> list[str]:
        return list(self.views)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, name: str) -> RigView:
        return self.views[name]

    def camera_to_rig(self) -> torch.Tensor:
        """(N, 4, 4) float64, the views in order."""
        return torch.stack([v.camera_to_rig for v in self.views.values()])

    def camera_to_world(self, rig_to_world) -> torch.Tensor:
        """``rig_to_world · camera_to_rig_i``: (N, 4, 4) for a (4, 4), (B, N, 4, 4) for a (B, 4, 4)."""
        T = torch.as_tensor(rig_to_world)
        C = self.camera_to_rig().to(T.dtype if T.is_floating_point() else _F64)
        if T.ndim == 2:
            return T @ C
        return T[:, None] @ C[None]

    # ------------------------------------------------------------------ X-rays
    def match(self, xrays) -> list[RigView]:
        """The views of the given X-rays, in the X-rays' order.

        An X-ray matches the view named like the path as given, its file name, its stem, or else its
        folder (``radiographs/cam01/frame0002.tif`` → view "cam01": one camera's frames in its folder).

        Args:
            xrays: X-ray paths or names (as given on a command line).
        Raises:
            InputError: an X-ray without a view, a view whose X-ray is not given, two X-rays
                for one view.
        """
        where = self.source or "rig"
        given = [str(x) for x in xrays]
        out: list[RigView] = []
        used: dict[str, str] = {}
        for x in given:
            p = Path(x)
            name = next((n for n in (x, p.name, p.stem, p.parent.name) if n and n in self.views), None)
            if name is None:
                raise InputError(f"{where}: no view for the X-ray {x!r} (its views: {', '.join(self.names)}); "
                                 "name each X-ray's file in 'views'")
            if name in used:
                raise InputError(f"{where}: the X-rays {used[name]!r} and {x!r} both match the view {name!r}")
            used[name] = x
            out.append(self.views[name])
        missing = [n for n in self.names if n not in used]
        if missing:
            raise InputError(f"{where}: key 'views/{missing[0]}' names an X-ray that is not given "
                             f"(X-rays given: {', '.join(given) or 'none'})")
        return out

    def cameras(self, views: list[RigView], shapes, file_cameras=None, default_camera: Camera | None = None
                ) -> list[Camera]:
        """The intrinsics of each matched view.

        In order of precedence: the view's own (rig.json), the X-ray file's, the shared one
        (``default_camera``, else the rig's ``"camera"``).  A shared camera fits views of its size
        only, so views of different sizes without intrinsics of their own are refused.

        Args:
            views: from :meth:`match`.
            shapes: each X-ray's image size (H, W), in the same order.
            file_cameras: each X-ray file's own Camera or None (default: none).
        """
        where = self.source or "rig"
        shapes = [tuple(int(s) for s in sh[-2:]) for sh in shapes]
        file_cameras = list(file_cameras) if file_cameras is not None else [None] * len(views)
        if not (len(views) == len(shapes) == len(file_cameras)):
            raise InputError(f"{where}: {len(views)} views, {len(shapes)} image sizes and "
                             f"{len(file_cameras)} file cameras (one each)")
        shared = default_camera if default_camera is not None else self.camera
        out: list[Camera | None] = []
        bare = []
        for v, (H, W), fc in zip(views, shapes, file_cameras):
            if v.camera is not None:
                if (v.camera.height, v.camera.width) != (H, W):
                    raise InputError(f"{where}: key 'views/{v.name}' describes a {v.camera.height} × "
                                     f"{v.camera.width} detector but its X-ray is {H} × {W} pixels (sizes differ)")
                out.append(v.camera)
            elif fc is not None:
                if (fc.height, fc.width) != (H, W):
                    raise InputError(f"{where}: the X-ray of view {v.name!r} is {H} × {W} pixels but its file's "
                                     f"intrinsics describe {fc.height} × {fc.width}")
                out.append(fc)
            else:
                out.append(None)
                bare.append((v.name, (H, W)))
        if bare:
            sizes = {s for _, s in bare}
            if len(sizes) > 1:
                (n1, s1), (n2, s2) = bare[0], next(b for b in bare if b[1] != bare[0][1])
                raise InputError(f"{where}: views {n1!r} ({s1[0]} × {s1[1]}) and {n2!r} ({s2[0]} × {s2[1]}) have "
                                 "different sizes and no intrinsics of their own; give each view its intrinsics "
                                 "('camera' or 'K' in its entry of 'views')")
            if shared is None:
                raise InputError(f"{where}: no intrinsics for view {bare[0][0]!r}: give them in its entry of "
                                 "'views' ('camera' or 'K'), in the X-ray file, or once for all views")
            H, W = bare[0][1]
            if (shared.height, shared.width) != (H, W):
                raise InputError(f"{where}: the shared intrinsics describe a {shared.height} × {shared.width} "
                                 f"detector but the view {bare[0][0]!r} is {H} × {W} pixels (sizes differ)")
            out = [shared if c is None else c for c in out]
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """rig.json's document (intrinsics as xraypose Camera keys)."""
        doc: dict = {}
        if self.description:
            doc["description"] = self.description
        if self.camera is not None:
            doc["camera"] = _camera_doc(self.camera)
        doc["views"] = {}
        for n, v in self.views.items():
            entry = {"camera_to_rig": v.camera_to_rig.tolist()}
            if v.camera is not None:
                entry["camera"] = _camera_doc(v.camera)
            doc["views"][n] = entry
        return doc


def _check_distinct_places(views: dict, where: str) -> None:
    """Refuse two views whose camera_to_rig agree within :data:`RIG_SAME_PLACE_MM` / :data:`RIG_SAME_PLACE_RAD`."""
    items = list(views.values())
    for i, a in enumerate(items):
        Ta = a.camera_to_rig.to(_F64)
        for b in items[i + 1:]:
            Tb = b.camera_to_rig.to(_F64)
            dt = float(torch.linalg.vector_norm(Ta[:3, 3] - Tb[:3, 3]))
            # the angle of Raᵀ·Rb from ‖Ra − Rb‖_F = 2√2·sin(θ/2) (accurate near 0, unlike arccos of the trace)
            s = float(torch.linalg.matrix_norm(Ta[:3, :3] - Tb[:3, :3])) / (2 * math.sqrt(2))
            angle = 2 * math.asin(min(1.0, s))
            if dt <= RIG_SAME_PLACE_MM and angle <= RIG_SAME_PLACE_RAD:
                raise InputError(f"{where}: views {a.name!r} and {b.name!r} have the same camera_to_rig (within "
                                 f"{RIG_SAME_PLACE_MM:g} mm and {RIG_SAME_PLACE_RAD:g} rad): two views from one place "
                                 "add nothing (a copy-paste error?); give each view its own camera_to_rig")


def _camera_doc(c: Camera) -> dict:
    d = c.to_dict()
    d.pop("K", None)  # derived; the other keys define the camera exactly
    return d


# --------------------------------------------------------------------------
# rig.json
# --------------------------------------------------------------------------


def _check_principal_point(cam: Camera, where: str, key: str) -> None:
    """Refuse a principal point more than one detector width (height) outside the image.

    Real calibrations put it within the detector, at times somewhat outside (an off-centre crop);
    a detector's width beyond its edge is a K for another image size (binning, a crop of a larger
    image) or in other units, which would otherwise be refused only at registration as a start
    "that does not see the CT", or not at all."""
    _, _, cu, cv = cam._k_entries()  # as K gives it: a mirrored camera's column in the image (the range is symmetric)
    W, H = cam.width, cam.height
    if not (-W <= cu <= 2 * W - 1 and -H <= cv <= 2 * H - 1):
        raise InputError(f"{where}: key '{key}' puts the principal point at (u, v) = ({cu:g}, {cv:g}) pixels, more "
                         f"than one detector width or height outside the {H} × {W} detector (u in [{-W}, {2 * W - 1}], "
                         f"v in [{-H}, {2 * H - 1}]); are the intrinsics for another image size (binning, a crop)?")


def _camera_from(doc: dict, where: str, key: str) -> Camera:
    cam = Camera(sdd=doc["sdd_mm"], height=doc["height"], width=doc["width"], delx=doc["delx_mm"],
                 dely=doc.get("dely_mm"), x0=doc.get("x0_mm", 0.0), y0=doc.get("y0_mm", 0.0),
                 reverse_x_axis=doc.get("reverse_x_axis", False))
    if "K" in doc:
        K = np.asarray(doc["K"], dtype=np.float64)
        err = float(np.abs(cam.K().numpy() - K).max())
        if err > 1e-6 * max(1.0, float(np.abs(K).max())):
            raise InputError(f"{where}: key '{key}/K' disagrees with the other intrinsics by {err:.3g} pixels "
                             "(give K or sdd_mm/delx_mm/..., not both)")
    _check_principal_point(cam, where, key)
    return cam


def _view_camera(doc: dict, where: str, name: str) -> Camera | None:
    key = f"views/{name}"
    has = [k for k in ("camera", "K", "height", "width", "pixel_mm") if k in doc]
    if "camera" in doc:
        extra = [k for k in has if k != "camera"]
        if extra:
            raise InputError(f"{where}: key '{key}/{extra[0]}' cannot be given with '{key}/camera' "
                             "(one set of intrinsics per view)")
        return _camera_from(doc["camera"], where, f"{key}/camera")
    if "K" in doc:
        for k in ("height", "width"):
            if k not in doc:
                raise InputError(f"{where}: key '{key}/K' needs '{key}/{k}' (the image size in pixels)")
        from xraypose.calibration import NOMINAL_PIXEL_MM

        K = np.asarray(doc["K"], dtype=np.float64)
        px = doc.get("pixel_mm", NOMINAL_PIXEL_MM)
        try:
            if K[0, 0] == 0 or K[1, 1] == 0:
                raise InputError("zero focal length")
            cam, flip = camera_from_K(K, doc["height"], doc["width"], delx=px, dely=px * abs(K[0, 0] / K[1, 1]))
        except InputError as e:
            raise InputError(f"{where}: key '{key}/K' {e}") from None
        if not torch.equal(flip, torch.eye(4, dtype=_F64)):
            raise InputError(f"{where}: key '{key}/K' has negative focal lengths; write K with positive ones "
                             "(camera +z toward the detector)")
        _check_principal_point(cam, where, f"{key}/K")
        return cam
    if has:
        raise InputError(f"{where}: key '{key}/{has[0]}' is given without '{key}/K'")
    return None


def read_rig(path) -> Rig:
    """Read and check ``rig.json`` (module docstring); the views keep the file's order."""
    p = Path(path).expanduser()
    doc = check(read_json(p, "rig file"), RIG_JSON, p)
    where = str(p)
    if not doc["views"]:
        raise InputError(f"{where}: key 'views' names no X-ray (at least one view is needed)")
    views = {}
    for name, v in doc["views"].items():
        if not name.strip():
            raise InputError(f"{where}: key 'views' has a view with an empty name")
        T = torch.tensor(v["camera_to_rig"], dtype=_F64)
        views[name] = RigView(name=name, camera_to_rig=_project_rigid(T), camera=_view_camera(v, where, name))
    shared = _camera_from(doc["camera"], where, "camera") if "camera" in doc else None
    return Rig(views=views, camera=shared, description=doc.get("description", ""), source=where)


def write_rig(path, rig: Rig) -> None:
    """Write ``rig`` as rig.json (atomically); :func:`read_rig` reads it back."""
    from xraypose.io import atomic_write_json

    atomic_write_json(path, rig.to_dict())


def _project_rigid(T: torch.Tensor) -> torch.Tensor:
    """The nearest rigid transform (rotation by SVD; last row exact)."""
    U, _, Vh = torch.linalg.svd(T[:3, :3])
    out = torch.eye(4, dtype=_F64)
    out[:3, :3] = U @ Vh
    out[:3, 3] = T[:3, 3]
    return out


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def _number(spec: Number, v, what: str) -> float:
    p = spec.problem(v)
    if p:
        raise InputError(f"{what} {p}, got {v!r}")
    return float(v)


def rig_from_carm(shots: dict, sod: float | None = None, cameras: dict | None = None,
                  description: str = "") -> Rig:
    """A rig from the C-arm angles of several shots of one C-arm about one isocenter.

    Args:
        shots: {name: (primary, secondary)} in degrees (LAO+ / CRAN+), or
            {name: {"primary": …, "secondary": …, "sod": …}}.
        sod: source-to-isocenter distance (mm) of the shots that give none.
        cameras: {name: Camera} intrinsics (optional).
    Returns:
        Rig whose frame is the isocenter frame: ``camera_to_rig_i =
        carm_pose(primary_i, secondary_i, sod_i, isocenter=0)`` (axes = the patient's RAS as the
        angles assume), so ``rig_to_world`` places the isocenter in the CT.
    """
    if not shots:
        raise InputError("rig_from_carm needs at least one shot")
    views = {}
    for name, s in shots.items():
        if isinstance(s, dict):
            unknown = set(s) - {"primary", "secondary", "sod"}
            if unknown:
                raise InputError(f"shot {name!r}: unknown key {sorted(unknown)[0]!r} (known: primary, secondary, sod)")
            a, b, d = s.get("primary", 0.0), s.get("secondary", 0.0), s.get("sod", sod)
        else:
            try:
                a, b = s
            except (TypeError, ValueError):
                raise InputError(f"shot {name!r}: give (primary, secondary) in degrees, got {s!r}") from None
            d = sod
        if d is None:
            raise InputError(f"shot {name!r}: no source-to-isocenter distance (sod, mm)")
        a = _number(PRIMARY_DEG, a, f"shot {name!r}: primary angle")
        b = _number(SECONDARY_DEG, b, f"shot {name!r}: secondary angle")
        d = _number(SOD_MM, d, f"shot {name!r}: sod")
        T = carm_pose(a, b, sod=d, isocenter=torch.zeros(3, dtype=_F64))
        views[name] = RigView(name=name, camera_to_rig=T, camera=(cameras or {}).get(name))
    return Rig(views=views, description=description or "C-arm shots about one isocenter (rig frame: isocenter, "
                                                       "patient RAS axes)", source="C-arm angles")


def rig_from_xrays(xrays: dict) -> Rig:
    """A rig from X-rays that carry C-arm angles and a source-to-isocenter distance (DICOM headers).

    ``camera_to_rig_i`` is each X-ray's :meth:`~xraypose.xray.XRay.initial_pose` about the isocenter
    at the rig's origin (PatientOrientation's 180° roll and any preprocessing included); each view
    keeps its X-ray's camera.
    """
    if not xrays:
        raise InputError("rig_from_xrays needs at least one X-ray")
    views = {}
    for name, xr in xrays.items():
        T = xr.initial_pose(torch.zeros(3, dtype=_F64))
        views[name] = RigView(name=name, camera_to_rig=T.to(_F64), camera=xr.camera)
    return Rig(views=views, description="C-arm shots about one isocenter, from the X-rays' angles",
               source="C-arm angles of the X-rays")


def rig_from_mayacam(files: dict, pixel_mm: float | None = None) -> Rig:
    """A biplane (or multi-camera) rig from MayaCam 2.0 calibrations: {name: calibration file}.

    The rig frame is the calibration's world frame: ``camera_to_rig_i`` is camera i's
    camera_to_world (:func:`xraypose.calibration.read_mayacam_camera`); each view gets the
    calibration's intrinsics (pixel spacing ``pixel_mm``, default the nominal one).
    """
    from xraypose.calibration import NOMINAL_PIXEL_MM, read_mayacam_camera

    if not files:
        raise InputError("rig_from_mayacam needs at least one calibration file")
    px = NOMINAL_PIXEL_MM if pixel_mm is None else pixel_mm
    if isinstance(px, bool) or not isinstance(px, (int, float)) or not math.isfinite(px) or px <= 0:
        raise InputError(f"pixel_mm must be a finite positive number (mm), got {pixel_mm!r}")
    views = {}
    for name, f in files.items():
        cam, T = read_mayacam_camera(f, px)
        views[name] = RigView(name=name, camera_to_rig=T, camera=cam)
    return Rig(views=views, description="biplane calibration (rig frame: the calibration's world)",
               source="MayaCam calibrations: " + ", ".join(str(f) for f in files.values()))
