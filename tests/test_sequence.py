"""Sequences: multi-frame DICOM (all frames, frame times), multi-page TIFF, folders of frames, bad sequences."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.sequence import natural_key, read_sequence
from xraypose.xray import read_xray, write_dicom_xray

CAM = Camera(sdd=1000.0, height=24, width=32, delx=0.5, x0=1.0)


def frames3():
    return np.stack([np.full((24, 32), 100 * i + 7) + np.arange(32)[None] for i in range(3)]).astype(np.uint16)


def test_multiframe_dicom_all_frames_and_frame_time(tmp_path):
    f = tmp_path / "cine.dcm"
    px = frames3()
    write_dicom_xray(f, px, camera=CAM, primary=20, secondary=-5, sod=700, extra={"FrameTime": "40"})
    seq = read_sequence(f)
    assert len(seq) == 3 and seq.shape == (24, 32)
    assert seq.camera == CAM and all(fr.camera == CAM for fr in seq.frames)
    assert torch.equal(seq.images, torch.from_numpy(px.astype(np.float32)))
    assert torch.allclose(seq.times, torch.tensor([0.0, 0.04, 0.08], dtype=torch.float64))
    assert seq.frame_interval_s == pytest.approx(0.04)
    assert seq[1].angles["primary"] == 20.0  # every frame keeps the header's angles
    assert seq[2].source.endswith("#2")


def test_a_cine_whose_number_of_frames_undercounts_its_pixel_data_is_refused(tmp_path):
    """pydicom warns and drops the frames beyond NumberOfFrames: a sequence read short without a word."""
    import pydicom

    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM)
    ds = pydicom.dcmread(f)
    ds.NumberOfFrames = 2
    ds.save_as(f)
    for read in (read_sequence, read_xray):
        with pytest.raises(InputError, match="holds 3 frames of 24 × 32 pixels but NumberOfFrames .* says 2"):
            read(f)
    ds.PixelData = ds.PixelData + b"\0\0"  # padding of less than a frame is normal: read
    ds.NumberOfFrames = 3
    ds.save_as(f)
    assert len(read_sequence(f)) == 3


def test_frame_time_vector_and_its_errors(tmp_path):
    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM, extra={"FrameTimeVector": [0, 30, 45]})
    seq = read_sequence(f)
    assert torch.allclose(seq.times, torch.tensor([0.0, 0.030, 0.075], dtype=torch.float64))
    g = tmp_path / "bad.dcm"
    write_dicom_xray(g, frames3(), camera=CAM, extra={"FrameTimeVector": [0, 30]})
    with pytest.raises(InputError, match="2 values for 3 frames"):
        read_sequence(g)


@pytest.mark.parametrize("tag, value, words", [
    ("FrameTime", "1e308", "FrameTime (0018,1063) must be a positive number of ms, at most 8.64e+07 (a day), got 1e+308"),
    ("FrameTimeVector", ["0", "1e308", "1e308"], "FrameTimeVector (0018,1065) holds an interval of 1e+308 ms"),
])
def test_a_frame_interval_beyond_a_day_is_refused(tmp_path, tag, value, words):
    """Two intervals of 1e308 ms summed to inf: trajectory.json's times were written as null and "inf"."""
    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM, extra={tag: value})
    with pytest.raises(InputError, match="^" + re.escape(f"{f}: {words}")):
        read_sequence(f)


@pytest.mark.parametrize("value, words", [
    ([0, 0, 0], "FrameTimeVector (0018,1065) is all zeros: its 3 frames would be at one moment"),
    (["0", "-0", "0"], "FrameTimeVector (0018,1065) is all zeros"),
    ([0, 30, 0], "FrameTimeVector (0018,1065) entry 3 of 3 is 0 ms; each increment after the first must be a positive"),
    ([0, -30, 40], "FrameTimeVector (0018,1065) entry 2 of 3 is -30 ms; each increment after the first must be"),
    ([-5, 30, 40], "FrameTimeVector (0018,1065) entry 1 of 3 is -5 ms; the first increment must be a number >= 0"),
])
def test_a_frame_time_vector_of_zero_or_negative_increments_is_refused(tmp_path, value, words):
    """All zeros was read as frames at one moment (a frame interval of 0 s); a negative increment was refused
    without naming it."""
    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM, extra={"FrameTimeVector": value})
    with pytest.raises(InputError, match="^" + re.escape(f"{f}: {words}")):
        read_sequence(f)


@pytest.mark.parametrize("value, times", [([5, 30, 40], [0.0, 0.030, 0.070]), ([33, 33, 33], [0.0, 0.033, 0.066]),
                                          ([0, 30, 40], [0.0, 0.030, 0.070])])
def test_a_frame_time_vector_whose_first_entry_is_not_0_is_read_from_its_second_with_a_note(tmp_path, value, times):
    """The standard's first entry is 0 (the first frame has no increment before it); one > 0 (a writer giving each
    frame its duration: 33, 33, 33) was dropped without a word.  It is not used — frame 1 at 0 s, the increments
    from entry 2 on — and a note names it (pose records keep the sequence's notes)."""
    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM, extra={"FrameTimeVector": value})
    seq = read_sequence(f)
    assert torch.allclose(seq.times, torch.tensor(times, dtype=torch.float64))
    notes = [n for n in seq.notes if "entry 1" in n]
    assert notes == ([f"FrameTimeVector (0018,1065) entry 1 is {value[0]} ms, not 0 as the standard gives it (the "
                      "first frame has no increment before it): not used, frame 1 is at 0 s and the increments from "
                      "entry 2 on are used"] if value[0] else []), seq.notes


def test_read_xray_all_frames(tmp_path):
    f = tmp_path / "cine.dcm"
    write_dicom_xray(f, frames3(), camera=CAM)
    xr = read_xray(f, frames="all")
    assert tuple(xr.image.shape) == (3, 24, 32) and xr.camera == CAM
    assert "3 frames of 24 rows" in xr.report()
    one = tmp_path / "one.dcm"
    write_dicom_xray(one, frames3()[0], camera=CAM)
    assert tuple(read_xray(one, frames="all").image.shape) == (1, 24, 32)
    # the default still reduces to one frame
    assert tuple(read_xray(f).image.shape) == (24, 32)


def write_tiff_frames(path, frames):
    ims = [Image.fromarray(a) for a in frames]
    ims[0].save(str(path), save_all=True, append_images=ims[1:])


def test_multipage_tiff_sequence(tmp_path):
    px = (frames3() // 2).astype(np.uint8)
    f = tmp_path / "run.tif"
    write_tiff_frames(f, list(px))
    seq = read_sequence(f, camera=CAM)
    assert len(seq) == 3 and seq.camera == CAM and seq.times is None
    assert torch.equal(seq.images, torch.from_numpy(px.astype(np.float32)))


def test_multipage_tiff_with_a_frame_of_another_size(tmp_path):
    f = tmp_path / "run.tif"
    write_tiff_frames(f, [np.zeros((24, 32), np.uint8), np.zeros((24, 32), np.uint8), np.zeros((20, 32), np.uint8)])
    for call in (lambda: read_sequence(f, camera=CAM), lambda: read_xray(f, camera=CAM)):
        with pytest.raises(InputError, match=r"frame 2 is 20 × 32 pixels .* frame 0 is 24 × 32") as e:
            call()
        assert "\n" not in str(e.value)


def test_folder_sorted_naturally(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (10, 2, 1):
        Image.fromarray(np.full((24, 32), i, np.uint8)).save(str(d / f"frame{i}.png"))
    (d / ".hidden.png").write_bytes(b"junk")
    (d / "notes.txt").write_text("not a frame")
    seq = read_sequence(d, sdd=1000, delx=0.5)
    assert [float(fr.image[0, 0]) for fr in seq.frames] == [1.0, 2.0, 10.0]
    assert seq.camera == Camera(sdd=1000.0, height=24, width=32, delx=0.5)
    assert sorted(["f10", "f2", "F1", "f1a"], key=natural_key) == ["F1", "f1a", "f2", "f10"]


def test_a_folders_files_that_are_not_frames_are_named_in_a_note(tmp_path):
    """A folder's files that are not read as frames (a README, a frame saved as .jpg) are named in the sequence's
    notes — read silently, such a frame vanished unseen; hidden files are not named, a folder of frames only gets
    no such note."""
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((24, 32), i, np.uint8)).save(str(d / f"frame{i}.png"))
    (d / ".hidden.png").write_bytes(b"junk")
    (d / "frame1.json").write_text(json.dumps({"sdd_mm": 1000.0}))  # a sidecar: read with its frame, not named
    assert not any("not read as frames" in n for n in read_sequence(d, sdd=1000, delx=0.5).notes)
    (d / "notes.txt").write_text("not a frame")
    Image.fromarray(np.full((24, 32), 3, np.uint8)).save(str(d / "frame3.jpg"))
    seq = read_sequence(d, sdd=1000, delx=0.5)
    assert len(seq) == 2
    (note,) = [n for n in seq.notes if "not read as frames" in n]
    assert note.endswith(": 2, frame3.jpg, notes.txt") and ".hidden" not in note
    for i in range(7):
        (d / f"extra{i}.txt").write_text("x")
    (note,) = [n for n in read_sequence(d, sdd=1000, delx=0.5).notes if "not read as frames" in n]
    assert ": 9, " in note and note.endswith("and 4 more")


def test_folder_of_frames_whose_names_hold_superscript_digits(tmp_path):
    # '²' is a digit to str.isdigit() but not to int(): the sort raised ValueError (a traceback in track)
    d = tmp_path / "frames"
    d.mkdir()
    for i, name in enumerate(("²1.png", "1²2.png", "frame 3.png")):
        Image.fromarray(np.full((24, 32), i, np.uint8)).save(str(d / name))
    assert len(read_sequence(d, sdd=1000, delx=0.5).frames) == 3
    assert sorted(["x²10", "x²9", "²1", "1²2", "x١٠", "x٢"], key=natural_key) == ["1²2", "x٢", "x١٠", "x²9", "x²10", "²1"]


def test_folder_with_a_frame_of_another_size(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((24 if i != 1 else 26, 32), np.uint8)).save(str(d / f"f{i}.png"))
    with pytest.raises(InputError, match=r"f1.png: frame 1 is 26 × 32 pixels but the first frame f0.png is 24 × 32"):
        read_sequence(d, sdd=1000, delx=0.5)


def test_folder_with_frames_of_other_intrinsics(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(str(d / f"f{i}.png"))
        (d / f"f{i}.json").write_text(json.dumps({"sdd_mm": 1000 + 10 * i, "delx_mm": 0.5}))
    with pytest.raises(InputError, match="other intrinsics than the first frame"):
        read_sequence(d)


def test_folder_with_a_frame_of_another_pixel_kind(tmp_path):
    """One frame's sidecar saying "attenuation" among raw-intensity frames: that frame was taken with inverted
    contrast and tracked at a low similarity, silently; now refused naming it (``kind=`` / --kind sets every
    frame's kind)."""
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(3):
        np.save(d / f"f{i}.npy", frames3()[i].astype(np.float32))
        kind = "attenuation" if i == 2 else "intensity"
        (d / f"f{i}.json").write_text(json.dumps({"sdd_mm": 1000, "delx_mm": 0.5, "kind": kind}))
    with pytest.raises(InputError, match=r"f2.npy: frame 2 holds 'attenuation' pixels but the first frame f0.npy "
                       r"'intensity'") as e:
        read_sequence(d)
    assert "\n" not in str(e.value)
    assert [fr.kind for fr in read_sequence(d, kind="intensity")] == ["intensity"] * 3


def test_folder_with_a_frame_of_another_bit_depth(tmp_path):
    """An 8-bit PNG among 16-bit ones (a frame exported again): its grey levels are on a scale 257× apart, and the
    sequence was read and tracked without a word; now refused naming the frame.  Floats of two widths pass."""
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(3):
        a = frames3()[i]
        Image.fromarray(a if i != 1 else (a // 257).astype(np.uint8)).save(str(d / f"f{i}.png"))
    with pytest.raises(InputError, match=r"f1.png: frame 1 stores uint8 pixels but the first frame f0.png uint16; "
                       r"every frame of a sequence must have one bit depth") as e:
        read_sequence(d, sdd=1000, delx=0.5)
    assert "\n" not in str(e.value)
    e2 = tmp_path / "floats"
    e2.mkdir()
    for i in range(2):
        np.save(e2 / f"f{i}.npy", frames3()[i].astype(np.float32 if i == 0 else np.float64))
    assert len(read_sequence(e2, sdd=1000, delx=0.5)) == 2
    d3 = tmp_path / "dicom"
    d3.mkdir()
    write_dicom_xray(d3 / "a.dcm", frames3()[0].astype(np.float32), camera=CAM)
    Image.fromarray((frames3()[1] // 257).astype(np.uint8)).save(str(d3 / "b.png"))
    with pytest.raises(InputError, match=r"b.png: frame 1 stores uint8 pixels but the first frame a.dcm uint16"):
        read_sequence(d3, sdd=1000, delx=0.5)


def test_list_of_files_and_bad_sources(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.ones((24, 32), np.float32))
    np.save(b, 2 * np.ones((24, 32), np.float32))
    seq = read_sequence([b, a], camera=CAM)
    assert [float(fr.image[0, 0]) for fr in seq.frames] == [2.0, 1.0]
    cine = tmp_path / "cine.dcm"
    write_dicom_xray(cine, frames3(), camera=CAM)
    with pytest.raises(InputError, match="give a multi-frame file alone"):
        read_sequence([a, cine], camera=CAM)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no frames"):
        read_sequence(empty)
    with pytest.raises(InputError, match="not found"):
        read_sequence(tmp_path / "nothing")
    with pytest.raises(InputError, match="'frames' is not an option"):
        read_sequence(cine, frames=0)


def test_a_stack_of_no_frames_is_refused(tmp_path, capsys):
    """An (0, H, W) NPY, alone or in a list, is a one-line error naming it (was an IndexError in `track`)."""
    from xraypose.cli import main

    stack = tmp_path / "stack0.npy"
    np.save(stack, np.zeros((0, 24, 32), np.float32))
    one = tmp_path / "one.npy"
    np.save(one, np.ones((24, 32), np.float32))
    for source in (stack, [stack, one], [one, stack]):
        with pytest.raises(InputError, match=r"stack0.npy: holds no frames \(an array of shape \(0, 24, 32\)\)"):
            read_sequence(source, camera=CAM)
    (tmp_path / "stack0.json").write_text(json.dumps(CAM.to_dict()))
    assert main(["track", "sample", str(stack), "-o", str(tmp_path / "t"), "--size", "32", "--init", "ap"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stack0.npy: holds no frames" in err[0]
    assert not (tmp_path / "t").exists()


def test_npy_stack_with_a_full_sidecar(tmp_path):
    """An (F, H, W) NPY whose sidecar is Camera.to_dict() (height, width of one frame) is read."""
    import json

    np.save(tmp_path / "stack.npy", np.stack([np.full((24, 32), i + 1.0, np.float32) for i in range(3)]))
    (tmp_path / "stack.json").write_text(json.dumps(CAM.to_dict()))
    xr = read_xray(tmp_path / "stack.npy", frames="all")
    assert tuple(xr.image.shape) == (3, 24, 32) and xr.camera == CAM
    (tmp_path / "stack.json").write_text(json.dumps({**CAM.to_dict(), "height": 3}))
    with pytest.raises(InputError, match="sizes differ"):
        read_xray(tmp_path / "stack.npy", frames="all")


def test_frame_files_in_a_shell_globs_text_order_are_refused(tmp_path, capsys):
    """`track ct frames/*.png` gives f1 f10 f11 f2 …: frame 10 was tracked before frame 2 without a word."""
    from xraypose.cli import main

    fs = []
    for i in range(1, 12):
        fs.append(tmp_path / f"f{i}.npy")
        np.save(fs[-1], np.full((24, 32), i, np.float32))
    glob = sorted(fs, key=str)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'f11.npy'} is given before {tmp_path / 'f2.npy'}: "
                                                   "the frame files are in text order")):
        read_sequence(glob, camera=CAM)
    seq = read_sequence(fs, camera=CAM)  # natural order, and an order of one's own, are kept
    assert [int(fr.image[0, 0]) for fr in seq.frames] == list(range(1, 12))
    assert [int(fr.image[0, 0]) for fr in read_sequence(fs[::-1], camera=CAM).frames] == list(range(11, 0, -1))
    (tmp_path / "f1.json").write_text(json.dumps(CAM.to_dict()))
    assert main(["track", "sample", *map(str, glob), "-o", str(tmp_path / "t"), "--size", "32", "--init", "ap"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the frame files are in text order" in err[0]
    assert not (tmp_path / "t").exists()


def test_a_frame_file_given_twice_is_refused(tmp_path):
    """`track ct f1.npy f*.npy`: frame 1 was tracked twice without a word (a link to it is the same file)."""
    fs = []
    for i in range(1, 4):
        fs.append(tmp_path / f"f{i}.npy")
        np.save(fs[-1], np.full((24, 32), i, np.float32))
    (tmp_path / "again.npy").symlink_to(fs[1])
    for given, i, j in (([fs[0], *fs], 0, 1), ([*fs, tmp_path / "again.npy"], 1, 3)):
        with pytest.raises(InputError, match=re.escape(f"{given[j]} is given twice (frames {i} and {j})")):
            read_sequence(given, camera=CAM)


def test_a_folder_of_dicom_frames_is_ordered_by_instance_number(tmp_path):
    """A PACS export names its frames by UID or in an order of its own: sorted by name, they were tracked shuffled."""
    for name, number in (("a.dcm", 2), ("b.dcm", 1), ("c.dcm", 3)):
        write_dicom_xray(tmp_path / name, np.full((24, 32), number, np.uint16), camera=CAM,
                         extra={"InstanceNumber": str(number)})
    seq = read_sequence(tmp_path)
    assert [int(fr.image[0, 0]) for fr in seq.frames] == [1, 2, 3]
    assert [fr.source.rsplit("/", 1)[-1] for fr in seq.frames] == ["b.dcm", "a.dcm", "c.dcm"]
    assert "frames ordered by their DICOM InstanceNumber (0020,0013), not by file name" in seq.notes
    write_dicom_xray(tmp_path / "d.dcm", np.full((24, 32), 9, np.uint16), camera=CAM,
                     extra={"InstanceNumber": "2"})  # numbers not distinct: by name, as before
    seq = read_sequence(tmp_path)
    assert [int(fr.image[0, 0]) for fr in seq.frames] == [2, 1, 3, 9] and not any("Instance" in n for n in seq.notes)


def test_a_folder_of_dicom_frames_of_two_series_is_refused(tmp_path):
    """Two runs exported into one folder (the same detector, so the same intrinsics) were tracked as one sequence."""
    for i, uid in enumerate(("1.2.3.1", "1.2.3.1", "1.2.3.2")):
        write_dicom_xray(tmp_path / f"IM{i}.dcm", np.full((24, 32), i + 1, np.uint16), camera=CAM,
                         extra={"SeriesInstanceUID": uid, "InstanceNumber": str(i + 1)})
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'IM2.dcm'}: frame of the DICOM series 1.2.3.2 among "
                                                   "frames of the series 1.2.3.1 (IM0.dcm)")):
        read_sequence(tmp_path)
    (tmp_path / "IM2.dcm").unlink()
    assert len(read_sequence(tmp_path)) == 2


def test_a_cine_of_more_than_1e8_pixels_in_all_is_read(tmp_path, monkeypatch):
    """10⁸ pixels is a frame's limit: a real cine of 100 frames of 1024² (1.05·10⁸ pixels) was refused as
    "X-rays are at most 1e+08 pixels (a damaged file?)".  Shown with the limit lowered to 2000 pixels: three
    frames of 24 × 32 (768 each, 2304 in all) are read; a frame beyond it, or frames beyond memory, are not."""
    import xraypose.limits as limits
    from xraypose.limits import check_xray_size

    with pytest.raises(InputError, match=r"x: the header declares 10000000 × 1024 × 1024 pixels .* of memory"):
        check_xray_size(1024, 1024, "x", frames=10_000_000)  # a damaged NumberOfFrames
    monkeypatch.setattr(limits, "MAX_XRAY_PIXELS", 2000)
    px = frames3()
    write_dicom_xray(tmp_path / "cine.dcm", px, camera=CAM)
    Image.fromarray(px[0]).save(tmp_path / "run.tif", save_all=True,
                                append_images=[Image.fromarray(a) for a in px[1:]])
    np.save(tmp_path / "run.npy", px.astype(np.float32))
    for f in ("cine.dcm", "run.tif", "run.npy"):
        assert len(read_sequence(tmp_path / f, camera=CAM)) == 3, f
    monkeypatch.setattr(limits, "MAX_XRAY_PIXELS", 500)
    for f in ("cine.dcm", "run.tif", "run.npy"):
        with pytest.raises(InputError, match=r"declares (frames of )?(3 × )?24 × 32 pixels \(768\); X-rays are at most"):
            read_sequence(tmp_path / f, camera=CAM)


def test_dicom_frame_files_given_out_of_their_instance_numbers_order_are_refused(tmp_path):
    """`track ct export/*.dcm` of UID-named frames: their names' order is none, and they were tracked shuffled."""
    fs = []
    for name, number in (("1.2.9.dcm", 2), ("1.2.10.dcm", 1), ("1.2.11.dcm", 3)):  # their names in natural order
        fs.append(tmp_path / name)
        write_dicom_xray(fs[-1], np.full((24, 32), number, np.uint16), camera=CAM, extra={"InstanceNumber": str(number),
                                                                                      "SeriesInstanceUID": "1.2"})
    with pytest.raises(InputError, match=re.escape(f"{fs[0]} (InstanceNumber 2) is given before {fs[1]} "
                                                   "(InstanceNumber 1): DICOM frames are tracked in the order given")):
        read_sequence(fs)
    assert [int(fr.image[0, 0]) for fr in read_sequence([fs[1], fs[0], fs[2]]).frames] == [1, 2, 3]
    write_dicom_xray(fs[2], np.full((24, 32), 3, np.uint16), camera=CAM, extra={"InstanceNumber": "3",
                                                                                "SeriesInstanceUID": "1.3"})
    with pytest.raises(InputError, match="frame of the DICOM series 1.3 among frames of the series 1.2"):
        read_sequence([fs[1], fs[0], fs[2]])
