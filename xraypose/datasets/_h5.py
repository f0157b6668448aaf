"""Small helpers to read HDF5 files with errors that name the missing path."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from xraypose._checks import one_line
from xraypose.errors import InputError
from xraypose.io import check_input_path


def resolve_file(filename, env: str, default_name: str, what: str) -> Path:
    """The dataset file: ``filename``, else ``$env``; raise a clear error when neither exists."""
    if filename is None:
        filename = os.environ.get(env)
        if not filename:
            raise InputError(
                f"{what} file not given: pass filename= or set ${env} to the path of {default_name}"
            )
    p = Path(filename).expanduser()
    check_input_path(p, what, f"{what} file not found: {p}")
    if p.is_dir():
        cand = p / default_name
        if cand.is_file():
            return cand
        raise InputError(f"{what}: {p} is a folder without {default_name}")
    return p


def open_h5(path: Path, what: str):
    import h5py

    try:
        return h5py.File(str(path), "r")
    except OSError as e:
        raise InputError(f"{what}: cannot open {path} as HDF5 ({' '.join(str(e).split())[:200]})") from None


class H5Backed:
    """Mixin of a dataset read from one HDF5 file ``self.filename``: opened on first use (:attr:`_file`, its
    errors naming :attr:`H5_WHAT`), closed by :meth:`close`, and left out when the dataset is pickled
    (h5py handles do not pickle: DataLoader workers reopen the file)."""

    H5_WHAT = "HDF5"
    _h5 = None

    def _open_and_load(self, filename, env: str, default_name: str, preprocess) -> None:
        """``self.filename`` (:func:`resolve_file`), then ``self._load(preprocess)``; the file is closed again
        when loading fails."""
        self.filename = resolve_file(filename, env, default_name, self.H5_WHAT)
        self._where = f"{self.H5_WHAT} {self.filename.name}"
        self._h5 = None
        try:
            self._load(preprocess)
        except BaseException:
            self.close()
            raise

    def _set_preprocess(self, preprocess, defaults: dict) -> None:
        """``self.preprocess``, the keywords of :func:`xraypose.preprocess.preprocess` for every image: ``defaults``
        (``preprocess`` True), none (False or None) or ``defaults`` updated by a dict, whose ``size`` sets
        ``self.size`` instead."""
        if preprocess is True:
            self.preprocess = defaults
        elif preprocess is False or preprocess is None:
            self.preprocess = {}
        elif isinstance(preprocess, dict):
            self.preprocess = {**defaults, **preprocess}
            if "size" in self.preprocess:
                self.size = self.preprocess.pop("size")
        else:
            raise InputError(f"preprocess must be True, False or a dict of preprocess() keywords, got {preprocess!r}")

    @property
    def _file(self):
        if self._h5 is None:
            self._h5 = open_h5(self.filename, self.H5_WHAT)
        return self._h5

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def close(self) -> None:
        """Close the file (it is opened again when next needed)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def need(group, path: str, where: str):
    """``group[path]`` or an :class:`InputError` naming the missing path inside the file (or ``group`` when it is a
    dataset, not a group: h5py's ValueError 'Field names only allowed for compound types' named nothing)."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise InputError(f"{where}: HDF5 path '{group.name}' is a dataset, not a group (expected '{path}' in it)")
    try:
        return group[path]
    except KeyError as e:
        base = group.name.rstrip("/")
        try:
            linked = path in group  # the link is there, the object behind it is not readable
        except (KeyError, RuntimeError, OSError):
            linked = False
        if linked:
            raise InputError(f"{where}: HDF5 path '{base}/{path}' cannot be read ({one_line(e, 120)}): the file is "
                             "damaged (an interrupted copy?)") from None
        node = group  # a group on the way whose index is damaged finds nothing: said so, not "missing"
        for part in path.split("/"):
            if not isinstance(node, h5py.Group):
                break
            group_keys(node, where)
            if part not in node:
                break
            node = need(node, part, where)
        raise InputError(f"{where}: HDF5 path '{base}/{path}' is missing") from None


def group_keys(group, where: str) -> list:
    """The names in ``group``, or an :class:`InputError` naming it when its index cannot be read (h5py's
    RuntimeError 'Unable to get group info (wrong B-tree signature)' escaped as a traceback)."""
    try:
        return list(group.keys())
    except (RuntimeError, OSError) as e:
        raise InputError(f"{where}: HDF5 group '{group.name}' cannot be read ({one_line(e, 120)}): the file is "
                         "damaged (an interrupted copy?)") from None


def read_array(group, path: str, where: str, dtype=np.float64) -> np.ndarray:
    """``group[path]``'s values as ``dtype`` (:func:`need`, :func:`read_numbers`)."""
    return read_numbers(need(group, path, where), where).astype(dtype, copy=False)


def read_numbers(ds, where: str) -> np.ndarray:
    """The values of the dataset ``ds`` (image or volume pixels, a pose, a spacing), refused unless it is a dataset
    of numbers (a text dataset's ``astype(float32)`` raised numpy's ValueError; a group has no values)."""
    import h5py

    from xraypose._checks import is_numeric_dtype

    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{where}: HDF5 path '{ds.name}' is not a numeric dataset (a group)")
    if not is_numeric_dtype(ds.dtype):
        raise InputError(f"{where}: HDF5 path '{ds.name}' is not a numeric dataset (dtype {ds.dtype})")
    try:
        return np.asarray(ds[()])
    except OSError as e:  # h5py's own error, raised deep in a loader with no file named
        raise InputError(f"{where}: HDF5 path '{ds.name}' cannot be read ({one_line(e, 120)}): the file is damaged "
                         "(an interrupted copy?)") from None


def read_scalar(group, path: str, where: str) -> float:
    a = read_array(group, path, where).reshape(-1)
    if a.size != 1:
        raise InputError(f"{where}: HDF5 path '{group.name.rstrip('/')}/{path}' should hold one number, holds {a.size}")
    return float(a[0])


def read_whole(group, path: str, where: str, lo: int, hi: int) -> int:
    """:func:`read_scalar`'s number as an int, refused (naming the path) unless it is a whole number in
    ``[lo, hi]``: ``int()`` of a NaN raised a bare ValueError, of 1536.7 cut it to 1536, and a flag of NaN or 2
    read as true."""
    from xraypose._checks import check_number

    v = read_scalar(group, path, where)
    check_number(f"HDF5 path '{group.name.rstrip('/')}/{path}'", v, lo=lo, hi=hi, integer=True, prefix=f"{where}: ")
    return int(v)


def read_string(group, path: str, where: str) -> str:
    v = need(group, path, where)[()]
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0]
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace").rstrip("\x00")
    return str(v)


@contextmanager
def naming(key: str, where: str):
    """Run the block; an :class:`InputError` from it (a converter's: ``intrinsic matrix is singular``,
    ``cam-to-pelvis-vol must end with the row [0, 0, 0, 1]``) comes out naming the file and ``key``."""
    try:
        yield
    except InputError as e:
        raise InputError(f"{where}: '{key}': {e}") from None


def check_rigid_pose(T, path: str, where: str):
    """``T`` (4, 4) — a camera_to_world made from the dataset's ``path`` — unchanged, or
    :class:`InputError` naming ``path`` when it is not rigid (a scaled or sheared ground truth would give
    every metric against it silently wrong)."""
    from xraypose.geometry.rigid import check_rigid

    try:
        check_rigid(T, atol=1e-3)
    except InputError as e:
        raise InputError(f"{where}: the pose from '{path}' is not a rigid transform ({e})") from None
    return T


def check_camera_ranges(cam, spacing_keys: str, intrinsic_key: str, where: str):
    """``cam`` (made from the file's pixel spacings ``spacing_keys`` and K ``intrinsic_key``) unchanged, or
    :class:`InputError` unless its pixel spacing and sdd (|f| pixels × spacing) are within a sidecar's ranges
    (:data:`xraypose.schema.PIXEL_MM`, :data:`~xraypose.schema.SDD_MM`): a spacing in µm read as mm made a 1 km sdd,
    registered and scored without a word."""
    from xraypose.schema import PIXEL_MM, SDD_MM

    for v in (cam.delx, cam.dely):
        bad = PIXEL_MM.problem(float(v))
        if bad:
            raise InputError(f"{where}: the pixel spacing '{spacing_keys}' {bad}, got {float(v):g} (µm or m?)")
    bad = SDD_MM.problem(float(cam.sdd))
    if bad:
        raise InputError(f"{where}: the source-to-detector distance (|focal| of '{intrinsic_key}' × pixel spacing "
                         f"'{spacing_keys}') {bad}, got {float(cam.sdd):g} (a pixel spacing in µm or m?)")
    return cam


def check_shape(a: np.ndarray, shape: tuple, path: str, where: str) -> np.ndarray:
    if a.size == int(np.prod(shape)) and a.ndim != len(shape):
        a = a.reshape(shape)
    if tuple(a.shape) != tuple(shape):
        raise InputError(f"{where}: '{path}' has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{where}: '{path}' has NaN or infinite values")
    return a
