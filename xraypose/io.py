"""Writing images and JSON results atomically (a kill mid-write never leaves a corrupt file)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from xraypose.errors import InputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the user's usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Min–max scale an image to 0…255 (a constant image gives zeros)."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.nanmin(img), np.nanmax(img)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.round(255 * (img - lo) / (hi - lo)).astype(np.uint8)


def save_image(path, img) -> None:
    """Save an (H, W) image: .npy keeps float values; .png is 8-bit min–max."""
    path = Path(path)
    img = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    img = np.squeeze(img)
    if img.ndim != 2:
        raise InputError(f"expected a single 2D image to save, got shape {img.shape}")
    buf = io.BytesIO()
    if path.suffix.lower() == ".npy":
        np.save(buf, img.astype(np.float32))
    elif path.suffix.lower() == ".png":
        from PIL import Image

        Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    else:
        raise InputError(f"unsupported image type {path.suffix!r}; use .npy or .png")
    atomic_write_bytes(path, buf.getvalue())


def read_toml(path) -> dict:
    """A TOML config file as a dict; a missing or malformed file is an :class:`InputError` naming it."""
    import tomllib

    from xraypose.errors import InputError

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"config file {p} is not valid TOML ({e})") from None
