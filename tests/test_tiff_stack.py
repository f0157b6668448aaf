"""Volumes from multi-page TIFF stacks: axis order, placement, values, and bad stacks."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import requires_shared, shared_path
from xraypose.errors import InputError
from xraypose.tiff_stack import read_tiff_pages, read_tiff_volume
from xraypose.volume import read_volume


def write_stack(path, pages, mode=None):
    ims = [Image.fromarray(p) if mode is None else Image.fromarray(p, mode) for p in pages]
    ims[0].save(str(path), save_all=True, append_images=ims[1:])
    return path


def pages_16bit(n=3, rows=4, cols=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 4096, size=(n, rows, cols)).astype(np.uint16)


def test_axis_order_values_and_placement(tmp_path):
    pages = pages_16bit()
    pages[1, 2, 3] = 65535  # the full 16-bit range survives
    f = write_stack(tmp_path / "v.tif", list(pages))
    v = read_tiff_volume(f, (0.5, 0.6, 0.7))
    assert v.shape == (5, 4, 3)  # (columns, rows, pages)
    k, j, i = 1, 2, 3
    assert float(v.data[i, j, k]) == 65535.0
    assert torch.equal(v.data, torch.from_numpy(pages.transpose(2, 1, 0).astype(np.float32)))
    assert torch.allclose(v.spacing, torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64))
    # voxel (i, j, k)'s centre sits at (i·sx, j·sy, k·sz): voxel (0, 0, 0) at the origin
    w = v.voxel_to_world(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([1.5, 1.2, 0.7], dtype=torch.float64))
    c = read_tiff_volume(f, (0.5, 0.6, 0.7), origin="center")
    assert torch.allclose(c.center, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    o = read_tiff_volume(f, (0.5, 0.6, 0.7), origin=(10, 20, 30))
    assert torch.allclose(o.voxel_to_world(torch.zeros(3, dtype=torch.float64)),
                          torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64))


def test_flip_reverses_the_voxel_order(tmp_path):
    pages = pages_16bit()
    f = write_stack(tmp_path / "v.tif", list(pages))
    v = read_tiff_volume(f, (1, 1, 1))
    fx = read_tiff_volume(f, (1, 1, 1), flip=(True, False, False))
    fz = read_tiff_volume(f, (1, 1, 1), flip=(False, False, True))
    assert torch.equal(fx.data, torch.flip(v.data, dims=(0,)))
    assert torch.equal(fz.data, torch.flip(v.data, dims=(2,)))


def test_read_volume_reads_a_stack_with_spacing(tmp_path):
    pages = pages_16bit(n=4)
    f = write_stack(tmp_path / "v.tiff", list(pages))
    a = read_volume(f, spacing=(0.4, 0.4, 0.6))
    b = read_tiff_volume(f, (0.4, 0.4, 0.6))
    assert torch.equal(a.data, b.data) and torch.equal(a.affine, b.affine)
    assert a.source == str(f)


def test_eight_bit_stack(tmp_path):
    pages = (pages_16bit() // 16).astype(np.uint8)
    f = write_stack(tmp_path / "v.tif", list(pages))
    assert torch.equal(read_tiff_volume(f, (1, 1, 1)).data,
                       torch.from_numpy(pages.transpose(2, 1, 0).astype(np.float32)))


@pytest.mark.parametrize("spacing, words", [
    (None, "carries no voxel size"),
    ((0, 1, 1), "> 0 mm"),
    ((-0.4, 0.4, 0.6), "> 0 mm"),
    ((1, 1), "3 voxel sizes"),
    ((1, float("nan"), 1), "finite"),
    ("1,1,1", "3 voxel sizes"),
])
def test_bad_spacing(tmp_path, spacing, words):
    f = write_stack(tmp_path / "v.tif", list(pages_16bit()))
    with pytest.raises(InputError, match=words) as e:
        read_volume(f, spacing=spacing)
    assert "\n" not in str(e.value)


def test_a_sidecar_gives_the_voxel_size_where_no_argument_reaches_the_reader(tmp_path):
    """``v.json`` ({"spacing_mm": [...]}) beside ``v.tif`` is the voxel size when none is given (the command line:
    ``xraypose render v.tif``, which said "pass spacing=" though no option passes it); an argument wins; a
    sidecar with another key or bad JSON is refused, naming it; without either the message names the sidecar."""
    import json

    from xraypose.cli import main

    f = write_stack(tmp_path / "v.tif", list(pages_16bit(n=20, rows=20, cols=20)))
    with pytest.raises(InputError, match=r"give it in v.json beside it"):
        read_volume(f)
    (tmp_path / "v.json").write_text(json.dumps({"spacing_mm": [0.5, 0.6, 0.7]}))
    assert torch.allclose(read_volume(f).affine.diagonal()[:3].float(), torch.tensor([0.5, 0.6, 0.7]))
    assert torch.allclose(read_volume(f, spacing=(1, 1, 1)).affine.diagonal()[:3].float(), torch.ones(3))
    assert main(["render", str(f), "--density", "raw", "--pose", "0,0", "--height", "16",
                 "-o", str(tmp_path / "d.npy")]) == 0 and (tmp_path / "d.npy").is_file()
    for text, words in (('{"spacing": [1, 1, 1]}', "lacks the key 'spacing_mm'"),
                        ('{"spacing_mm": [1, 1, 1], "flip": 1}', "known keys: spacing_mm"),
                        ("{not json", "not valid JSON"), ('{"spacing_mm": [1, 0, 1]}', "spacing_mm")):
        (tmp_path / "v.json").write_text(text)
        with pytest.raises(InputError, match=words):
            read_volume(f)


def test_pages_of_different_sizes(tmp_path):
    pages = [np.zeros((4, 5), np.uint16), np.zeros((4, 5), np.uint16), np.zeros((3, 5), np.uint16)]
    f = write_stack(tmp_path / "v.tif", pages)
    with pytest.raises(InputError, match=r"page 2 is 3 × 5 pixels .* page 0 is 4 × 5") as e:
        read_tiff_volume(f, (1, 1, 1))
    assert "\n" not in str(e.value)


def test_a_cut_stack_is_named_damaged(tmp_path):
    """A multi-page TIFF cut short (a copy stopped halfway): PIL raised TypeError ('Missing dimensions')
    reading its page count, a traceback; now one line naming the file."""
    f = write_stack(tmp_path / "v.tif", list(pages_16bit(n=3, rows=8, cols=8)))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"v\.tif: the TIFF page directory is damaged") as e:
        read_tiff_volume(f, (1, 1, 1))
    assert "\n" not in str(e.value)


def test_rgb_stack_is_refused(tmp_path):
    pages = [np.zeros((4, 5, 3), np.uint8) for _ in range(3)]
    f = write_stack(tmp_path / "v.tif", pages)
    with pytest.raises(InputError, match=r"colour \(RGB\)"):
        read_volume(f, spacing=(1, 1, 1))


def test_one_page_and_not_a_tiff(tmp_path):
    f = write_stack(tmp_path / "v.tif", [np.zeros((4, 5), np.uint16)])
    with pytest.raises(InputError, match="one page"):
        read_tiff_volume(f, (1, 1, 1))
    g = tmp_path / "x.tif"
    g.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="not a readable TIFF"):
        read_tiff_pages(g)
    png = tmp_path / "p.tif"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(str(png), format="PNG")
    with pytest.raises(InputError, match="PNG image, not a TIFF"):
        read_tiff_pages(png)


def test_spacing_refused_for_other_formats(tmp_path):
    import nibabel as nib

    f = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(f))
    with pytest.raises(InputError, match="only for TIFF stacks"):
        read_volume(f, spacing=(1, 1, 1))


@requires_shared
def test_wrist_radius_volume():
    v = read_volume(shared_path("autoscoper_wrist", "volumes", "rad_dcm_cropped.tif"), spacing=(0.39625, 0.39625, 0.625))
    assert v.shape == (68, 86, 128)  # 68 columns, 86 rows, 128 pages
    assert float(v.data.min()) == 0.0 and float(v.data.max()) == 4095.0
    assert torch.allclose(v.extent_mm, torch.tensor([68 * 0.39625, 86 * 0.39625, 128 * 0.625], dtype=torch.float64))


def test_info_reads_a_tiff_stack_with_a_voxel_size_as_a_ct(tmp_path, capsys):
    """`xraypose info` took every TIFF for an X-ray (a stack: a sequence of frames); one whose sidecar gives
    spacing_mm is a CT, as register and train read it."""
    import json

    from xraypose.cli import main

    f = write_stack(tmp_path / "bone.tif", list(pages_16bit(n=6, rows=7, cols=8)))
    (tmp_path / "bone.json").write_text(json.dumps({"spacing_mm": [0.5, 0.5, 0.6]}))
    assert main(["info", str(f), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["what"] == "CT" and d["shape"] == [8, 7, 6] and d["spacing_mm"] == [0.5, 0.5, 0.6]
    assert main(["info", str(f), "--sdd", "1000"]) == 2  # an X-ray's override is refused for a CT
    assert "is a CT" in capsys.readouterr().err
    (tmp_path / "bone.json").unlink()  # without it: frames of an X-ray sequence, as before
    assert main(["info", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["what"] != "CT"


def test_info_reads_a_stacks_sidecar_as_utf_8_with_a_bom_and_under_a_c_locale(tmp_path, capsys):
    """`info` looked for spacing_mm with Path.read_text() (the locale's encoding, no BOM): a sidecar saved with a
    UTF-8 BOM (Notepad), which register and train read, made the CT an X-ray; so did any non-ASCII byte under a
    C locale. Read as UTF-8 (BOM or not) whatever the locale, in a folder named 'Müller' too."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from xraypose.cli import main

    d = tmp_path / "Müller"
    d.mkdir()
    f = write_stack(d / "bone.tif", list(pages_16bit(n=6, rows=7, cols=8)))
    (d / "bone.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"spacing_mm": [0.5, 0.5, 0.6]}).encode())
    assert main(["info", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["what"] == "CT"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = ("import locale, sys; from xraypose.cli import main; "
            "assert locale.getpreferredencoding(False).lower() not in ('utf-8', 'utf8'), locale.getpreferredencoding(False); "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "info", os.fsencode(f), "--json"], env=env, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    assert json.loads(r.stdout)["what"] == "CT"


def _write_pages(path, pages, sample_format):
    """An uncompressed little-endian TIFF of the (rows, columns) pages, with their SampleFormat (1 unsigned, 2 signed):
    Pillow writes neither signed 8-bit nor unsigned 32-bit pages."""
    import struct

    blob, offset = [], 8
    for k, a in enumerate(pages):
        h, w = a.shape
        data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
        tags = [(256, 3, w), (257, 3, h), (258, 3, 8 * a.dtype.itemsize), (259, 3, 1), (262, 3, 1), (273, 4, None),
                (277, 3, 1), (278, 3, h), (279, 4, len(data)), (339, 3, sample_format)]
        start = offset + 2 + 12 * len(tags) + 4
        nxt = 0 if k == len(pages) - 1 else start + len(data)
        blob.append(struct.pack("<H", len(tags)) + b"".join(
            struct.pack("<HHIHH", t, ty, 1, v, 0) if ty == 3 else struct.pack("<HHII", t, ty, 1, start if v is None else v)
            for t, ty, v in tags) + struct.pack("<I", nxt) + data)
        offset = start + len(data)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + b"".join(blob))


@pytest.mark.parametrize("dtype,sample_format", [(np.int8, 2), (np.uint32, 1)])
def test_pages_are_read_with_their_sample_format(tmp_path, dtype, sample_format):
    """Pillow gives signed 8-bit pages as unsigned (−1 as 255) and unsigned 32-bit ones as signed (2³¹ and more
    negative): the stack's values were taken as they came."""
    info = np.iinfo(dtype)
    pages = [np.linspace(info.min, info.max, 20).reshape(4, 5).astype(dtype) for _ in range(3)]
    _write_pages(tmp_path / "s.tif", pages, sample_format)
    got = read_tiff_pages(tmp_path / "s.tif")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.stack(pages))
