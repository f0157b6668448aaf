"""Tracking a sequence (issue 14, item 2): track_sequence on a short simulated sequence, and `xraypose track`."""

import json
import math
import re

import numpy as np
import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import make_transform, so3_exp
from xraypose.metrics import pose_errors
from xraypose.register import Level, FAST_LEVELS, Registrar, RegistrationConfig
from xraypose.register.cases import CaseMaker, perturb_pose
from xraypose.register.tracking import track_sequence
from xraypose.volume import load_sample_ct

F64 = torch.float64
PX = 64
N_FRAMES, JUMP_AT = 6, 3


@pytest.fixture(scope="module")
def volume():
    return load_sample_ct()


@pytest.fixture(scope="module")
def sequence(volume):
    """Raw X-rays (64² px, noisy) of a pose moving ~1.9 mm and 0.8° per frame, with a jump of 27 mm and
    8° at frame JUMP_AT; the true poses and fiducials."""
    from xraypose.synthetic import XraySimulator

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=PX, width=PX, delx=280.0 / PX)
    T0, fid = CaseMaker(volume, camera=cam, collimator_px=2, n_fiducials=10).true_pose(2)
    poses = [T0]
    for f in range(1, N_FRAMES):
        if f == JUMP_AT:
            w, v = torch.tensor([0.0, 0.0, math.radians(8.0)]), torch.tensor([25.0, 0.0, 10.0])
        else:
            w, v = torch.tensor([0.8944, 0.4472, 0.0]) * math.radians(0.8), torch.tensor([1.5, -1.0, 0.5])
        R = so3_exp(w.to(F64))
        poses.append(make_transform(R, iso - R @ iso + v.to(F64)) @ poses[-1])
    sim = XraySimulator(volume, cam, supersample=1, photons=1e5, blur_px=0.5)
    raws = torch.stack([sim(T, generator=torch.Generator().manual_seed(f)).raw[0, 0] for f, T in enumerate(poses)])
    start = perturb_pose(poses[0], iso, 3.0, 10.0, torch.Generator().manual_seed(1))[0]
    return {"raws": raws, "poses": poses, "fid": fid, "camera": cam, "i0": sim.i0, "start": start}


def _preprocessed(sequence):
    """(frames (F, 1, H, W), camera) of the sequence's raw X-rays, preprocessed as a user would."""
    from xraypose.preprocess import preprocess

    pres = [preprocess(r, sequence["camera"], blur=(5, 1.0), log=True, i0=sequence["i0"], rescale=True)
            for r in sequence["raws"]]
    return torch.stack([p.image for p in pres])[:, None], pres[0].camera


#: A tracking schedule too weak to follow the jump (one step at 24 rows).
WEAK = (Level(size=24, iterations=1, n_samples=32, volume_mm=8.0, fit_bone=True, optimizer="lm"),)


def test_track_sequence_follows_small_motion_and_reinitialises_a_jump(volume, sequence):
    from xraypose.preprocess import preprocess

    pres = [preprocess(r, sequence["camera"], blur=(5, 1.0), log=True, i0=sequence["i0"], rescale=True)
            for r in sequence["raws"]]
    frames = torch.stack([p.image for p in pres])[:, None]
    cam = pres[0].camera
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    seen = []
    out = track_sequence(reg, frames, cam, sequence["start"], progress=seen.append)
    assert [fr.index for fr in out] == list(range(N_FRAMES)) and seen == out
    err = [float(pose_errors(fr.camera_to_world, sequence["poses"][fr.index], sequence["fid"], cam)["mtre"])
           for fr in out]
    pred = [float(pose_errors(fr.predicted, sequence["poses"][fr.index], sequence["fid"], cam)["mtre"]) for fr in out]
    assert pred[JUMP_AT] > 20.0  # the prediction missed the jump by far
    assert err[JUMP_AT] < 4.0, (err, [fr.verdict for fr in out])  # tracked, or re-initialised
    assert not any(fr.reinitialised for fr in out[:JUMP_AT])  # small motion: tracked from the prediction
    assert not out[JUMP_AT + 1].reinitialised  # after the jump, no velocity carried across it
    assert max(e for f, e in enumerate(err) if f != JUMP_AT) < 2.0, err  # half a pixel (4.4 mm pixels)
    assert all(fr.verdict in ("ok", "uncertain", "failed") for fr in out)
    # a tracking schedule too weak to follow the jump (one step at 24 rows): the frame's check fails
    # it and the whole schedule, re-initialised from the last good pose, finds it
    weak = (Level(size=24, iterations=1, n_samples=32, volume_mm=8.0, fit_bone=True, optimizer="lm"),)
    out2 = track_sequence(reg, frames[: JUMP_AT + 1], cam, sequence["start"], tracking_levels=weak)
    e2 = float(pose_errors(out2[JUMP_AT].camera_to_world, sequence["poses"][JUMP_AT], sequence["fid"], cam)["mtre"])
    assert out2[JUMP_AT].reinitialised and e2 < 4.0, (e2, [fr.verdict for fr in out2])


def test_unchecked_tracking_reinitialises_what_the_motion_model_finds_improbable(volume, sequence):
    """Without the check, the motion model's gate decides: the small motion is tracked from the
    prediction, the 27 mm jump is improbable under the model and re-initialised; every frame ends
    near its truth."""
    from xraypose.preprocess import preprocess

    pres = [preprocess(r, sequence["camera"], blur=(5, 1.0), log=True, i0=sequence["i0"], rescale=True)
            for r in sequence["raws"]]
    frames = torch.stack([p.image for p in pres])[:, None]
    cam = pres[0].camera
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    out = track_sequence(reg, frames, cam, sequence["start"], confidence=False)
    assert all(fr.verdict is None and fr.p_success is None for fr in out)
    assert not any(fr.reinitialised for fr in out[:JUMP_AT]) and out[JUMP_AT].reinitialised
    err = [float(pose_errors(fr.camera_to_world, sequence["poses"][fr.index], sequence["fid"], cam)["mtre"])
           for fr in out]
    assert err[JUMP_AT] < 4.0 and max(e for f, e in enumerate(err) if f != JUMP_AT) < 2.0, err


def _save_sequence(d, sequence, n=4):
    d.mkdir()
    np.save(d / "run.npy", sequence["raws"][:n].numpy().astype(np.float32))
    cam = sequence["camera"]  # (no height/width: xray.py checks a sidecar's against an (F, H, W) stack's F, H)
    (d / "run.json").write_text(json.dumps({"sdd_mm": cam.sdd, "delx_mm": cam.delx, "kind": "intensity"}))
    (d / "start.json").write_text(json.dumps({"camera_to_world": sequence["start"].tolist()}))
    return d / "run.npy"


def test_cli_track_writes_trajectory_and_animation(tmp_path, sequence, capsys):
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    assert [ln.startswith(f"frame {i}/4: ") for i, ln in enumerate(
        [x for x in text.out.splitlines() if x.startswith("frame ")], 1)] == [True] * 4
    assert "note: frames of 64 rows — the check was calibrated on 256-row X-rays" in text.out  # small frames
    rows = (out / "trajectory.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("frame,time_s,verdict,p_success,similarity,status,reinitialised,seconds,m00")
    assert rows[0].endswith(",reason,vouched")  # a frame the sequence vouched for (added last: columns keep places)
    doc = json.loads((out / "trajectory.json").read_text())
    assert "vouched" in doc["summary"] and all("vouched" in fr for fr in doc["frames"])
    assert "motion_fit" in doc["summary"]  # the smoother's fitted noise (None: a sequence too short to fit)
    assert not any("motion_fit" in fr for fr in doc["frames"])  # the sequence's, said once
    summary = doc["summary"]  # the sequence's time and rate, printed too
    assert summary["seconds"] == pytest.approx(sum(fr["seconds"] for fr in doc["frames"]))
    assert summary["frames_per_second"] == pytest.approx(4 / summary["seconds"])
    assert f"4 frames in {summary['seconds']:.1f} s ({summary['frames_per_second']:.1f} frames/s" in text.out
    assert doc["pose"] == "camera_to_world" and len(doc["frames"]) == 4
    for fr in doc["frames"]:
        e = float(pose_errors(torch.tensor(fr["camera_to_world"], dtype=F64), sequence["poses"][fr["frame"]],
                              sequence["fid"], sequence["camera"])["mtre"])
        assert e < 2.0 and fr["seconds"] > 0 and fr["verdict"] in ("ok", "uncertain", "failed")
    gif = (out / "overlay.gif").read_bytes()
    assert gif[:6] in (b"GIF89a", b"GIF87a") and len(gif) < 500_000


def test_cli_track_says_which_files_of_a_folder_it_did_not_read_as_frames(tmp_path, sequence, capsys):
    """`xraypose track CT FOLDER`: the sequence's notes (here: a file that is not a frame) are printed, not only
    kept in trajectory.json."""
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence, n=2)
    d = tmp_path / "frames"
    d.mkdir()
    for i, frame in enumerate(np.load(run)):
        np.save(d / f"f{i}.npy", frame)
    (d / "README.txt").write_text("exported frames")
    cam = sequence["camera"]
    code = main(["track", "sample", str(d), "-o", str(tmp_path / "out"), "--pose-json",
                 str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast", "--sdd", str(cam.sdd),
                 "--delx", str(cam.delx), "--kind", "intensity"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    assert f"note: {d}: files in the folder not read as frames" in text.out and ": 1, README.txt" in text.out, text.out
    assert "frame times unknown" not in text.out  # a note for trajectory.json only
    doc = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert any("README.txt" in n for n in doc["sequences"][0]["notes"])


def test_cli_track_of_one_frame_says_frame_not_frames(tmp_path, sequence, capsys):
    """A one-frame sequence: "tracking 1 frame of 1 view", "1 frame in …" (was "1 frames")."""
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence, n=1)
    code = main(["track", "sample", str(run), "-o", str(tmp_path / "out"), "--pose-json",
                 str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    assert "tracking 1 frame of 1 view (" in text.out and "; 1 frame in " in text.out, text.out
    assert not re.search(r"(?<![\d.])1 frames\b", text.out), text.out  # ("5.1 frames/s" is a rate)


def test_cli_track_bad_input_is_one_line(tmp_path, sequence, capsys):
    from xraypose.cli import main

    d = tmp_path / "frames"
    d.mkdir()
    cam = sequence["camera"]
    for i in range(3):
        raw = sequence["raws"][i].numpy().astype(np.float32)
        if i == 2:  # a frame of another size
            raw = raw[:, :-4]
        np.save(d / f"f{i}.npy", raw)
        (d / f"f{i}.json").write_text(json.dumps({"sdd_mm": cam.sdd, "delx_mm": cam.delx, "kind": "intensity"}))
    code = main(["track", "sample", str(d), "-o", str(tmp_path / "o"), "--init", "ap"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "f2.npy: frame 2 is 64 × 60 pixels" in err, err
    code = main(["track", "sample", str(d / "f0.npy"), str(d / "f2.npy"), "-o", str(tmp_path / "o"), "--init", "ap"])
    err = capsys.readouterr().err
    assert code == 2 and "every frame of a sequence must have one size" in err, err
    code = main(["track", "sample", str(d), str(d), "-o", str(tmp_path / "o"), "--init", "ap"])  # two views, no rig
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "give --rig rig.json" in err, err
    code = main(["track", "sample", str(d / "f0.npy"), "-o", str(tmp_path / "o"), "--init", "ap", "--start-view", "f0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--start-view needs --rig" in err, err


def test_cli_track_a_biplane_sequence(tmp_path, volume, capsys):
    """Two views (AP, lateral) tied by a rig, 2 frames each in its camera's folder: rig_to_world per frame."""
    from xraypose.cli import main
    from xraypose.rig import rig_from_carm, write_rig
    from xraypose.synthetic import XraySimulator

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=PX, width=PX, delx=280.0 / PX)
    rig = rig_from_carm({"cam01": (0.0, 0.0), "cam02": (90.0, 0.0)}, sod=612.0)
    write_rig(tmp_path / "rig.json", rig)
    frame = torch.eye(4, dtype=F64)
    frame[:3, 3] = iso
    truth = [perturb_pose(frame, iso, 2.0, 4.0, torch.Generator().manual_seed(2))[0]]
    R = so3_exp(torch.tensor([0.0, 0.0, math.radians(1.0)], dtype=F64))
    truth.append(make_transform(R, iso - R @ iso + torch.tensor([1.5, 1.0, 0.0], dtype=F64)) @ truth[0])
    sim = XraySimulator(volume, cam, supersample=1, photons=0, blur_px=0.5)
    for n in rig.names:
        (tmp_path / n).mkdir()
        for f, X in enumerate(truth):
            np.save(tmp_path / n / f"f{f}.npy", sim(X @ rig[n].camera_to_rig).raw[0, 0].numpy().astype(np.float32))
            (tmp_path / n / f"f{f}.json").write_text(json.dumps({"sdd_mm": cam.sdd, "delx_mm": cam.delx,
                                                                  "kind": "intensity"}))
    start = perturb_pose(truth[0], iso, 2.0, 6.0, torch.Generator().manual_seed(4))[0]
    (tmp_path / "start.json").write_text(json.dumps({"rig_to_world": start.tolist()}))
    code = main(["track", "sample", str(tmp_path / "cam01"), str(tmp_path / "cam02"), "--rig", str(tmp_path / "rig.json"),
                 "-o", str(tmp_path / "out"), "--pose-json", str(tmp_path / "start.json"), "--i0", "65000", "--fast"])
    assert code in (0, 3), capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert doc["pose"] == "rig_to_world" and [v["name"] for v in doc["views"]] == ["cam01", "cam02"]
    fid = iso[None] + torch.tensor([[40.0, 0, 0], [0, 40, 0], [0, 0, 40], [-30, -30, 10]], dtype=F64)
    for fr, X in zip(doc["frames"], truth):
        e = float(pose_errors(torch.tensor(fr["rig_to_world"], dtype=F64), X, fid, sdr=510.0)["mtre"])
        assert e < 1.5 and fr["verdict"] in ("ok", "uncertain", "failed"), e
        V = torch.tensor(fr["views"]["cam02"], dtype=F64)
        assert torch.allclose(V, torch.tensor(fr["rig_to_world"], dtype=F64) @ rig["cam02"].camera_to_rig, atol=1e-6)


def test_cli_track_metal_weighs_every_level_of_every_frame_robustly(tmp_path, sequence, capsys, monkeypatch):
    """track --metal: frame 0 with the metal schedule, the later frames with metal_levels(TRACKING_LEVELS);
    trajectory.json says so; the frames are still tracked."""
    import xraypose.register.tracking as tracking
    from xraypose.cli import main

    seen = []
    real = tracking.track_sequence

    def spy(*a, **k):
        seen.append(k.get("tracking_levels"))
        return real(*a, **k)

    monkeypatch.setattr(tracking, "track_sequence", spy)
    run = _save_sequence(tmp_path / "in", sequence)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--metal", "--levels", "24,48"])
    assert code in (0, 3), capsys.readouterr().err
    assert len(seen) == 1 and seen[0] and all(lv.robust for lv in seen[0])
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["metal"] is True and all(lv["robust"] for lv in doc["config"]["levels"])
    for fr in doc["frames"]:
        e = float(pose_errors(torch.tensor(fr["camera_to_world"], dtype=F64), sequence["poses"][fr["frame"]],
                              sequence["fid"], sequence["camera"])["mtre"])
        assert e < 2.0
    assert main(["track", "sample", str(run), "-o", str(out), "--metal", "--fast"]) == 2
    assert "--fast" in capsys.readouterr().err


def test_cli_track_motion_model_records_registrations_and_none_keeps_them(tmp_path, sequence, capsys):
    """trajectory.json gives each frame's registration alone beside the motion model's estimate; with
    --motion none they are the same pose; an unknown --motion is one line.  --no-metal-steps and
    --match-intensity reach the registration's config (recorded), a bad mode is one line."""
    from xraypose.cli import main
    from xraypose.register.config import MATCH_CURVED

    run = _save_sequence(tmp_path / "in", sequence)
    start = str(tmp_path / "in" / "start.json")
    docs = {}
    for motion, extra in (("smooth", []), ("none", ["--no-metal-steps", "--match-intensity", "off"])):
        out = tmp_path / motion
        code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", start, "--i0", "65000", "--fast",
                     "--motion", motion, *extra])
        assert code in (0, 3), capsys.readouterr().err
        docs[motion] = json.loads((out / "trajectory.json").read_text())
        assert docs[motion]["motion"] == motion
    cfgs = {m: (d["config"]["foreign_steps"], d["config"]["match_intensity"]) for m, d in docs.items()}
    assert cfgs == {"smooth": (12.0, MATCH_CURVED), "none": (None, None)}, cfgs
    for fr in docs["none"]["frames"]:
        assert fr["registered_camera_to_world"] == fr["camera_to_world"]
    moved = 0.0
    for fr in docs["smooth"]["frames"]:
        est = torch.tensor(fr["camera_to_world"], dtype=F64)
        reg = torch.tensor(fr["registered_camera_to_world"], dtype=F64)
        moved = max(moved, float((est[:3, 3] - reg[:3, 3]).norm()))
        e = float(pose_errors(est, sequence["poses"][fr["frame"]], sequence["fid"], sequence["camera"])["mtre"])
        assert e < 2.0, e
    assert 0.0 < moved < 5.0  # the estimate pooled the frames: near, not equal to, the registrations
    for motion in ("smooth", "none"):  # every frame's spread: the depth the least certain
        for fr in docs[motion]["frames"]:
            sp = fr["spread"]
            assert sp["along_beam_mm"] > sp["across_beam_mm"] > 0 and len(fr["covariance"]) == 6
    smoothed = [fr["spread"]["along_beam_mm"] for fr in docs["smooth"]["frames"]]
    alone = [fr["spread"]["along_beam_mm"] for fr in docs["none"]["frames"]]
    assert sum(smoothed) < sum(alone)  # pooling frames narrows it
    header = (tmp_path / "smooth" / "trajectory.csv").read_text().splitlines()[0]
    assert "sd_along_beam_mm,sd_across_beam_mm,sd_rotation_deg,reason" in header
    assert main(["track", "sample", str(run), "-o", str(tmp_path / "x"), "--pose-json", start, "--motion", "kalman"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--motion must be one of none, filter, smooth" in err, err
    assert main(["track", "sample", str(run), "-o", str(tmp_path / "x"), "--pose-json", start,
                 "--match-intensity", "on"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--match-intensity must be one of fine, all, off" in err, err


def test_later_frames_match_intensities_only_when_every_level_is_asked_to(volume, monkeypatch):
    """The default matches a curved display map at frame 0's fine levels only: the later frames' tracker
    is derived with match_intensity None (a map would cost two renders more per frame); with
    match_capture (--match-intensity all) the tracker keeps the threshold."""
    from xraypose.register.config import MATCH_CURVED

    seen = []

    class Stop(Exception):
        pass

    def spy(self, **changes):
        seen.append(changes)
        raise Stop

    monkeypatch.setattr(Registrar, "derive", spy)
    frames = torch.zeros(2, 1, 16, 16)
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    for cfg, want in ((RegistrationConfig(), None), (RegistrationConfig(match_intensity=None), None),
                      (RegistrationConfig(match_capture=True), MATCH_CURVED)):
        with pytest.raises(Stop):
            track_sequence(Registrar(volume, cfg), frames, cam, torch.eye(4, dtype=torch.float64))
        assert seen[-1]["match_intensity"] == want
        assert seen[-1]["revisit"] is False  # the later frames never render the prediction beside the result


def test_overlapped_checks_give_the_sequential_results_and_roll_back_a_failed_frame(volume, sequence):
    """Each frame's check beside the next frame's registration (``overlap_check``): the same poses,
    verdicts and re-initialisations as checking in order — also when a frame in the middle fails
    (a schedule too weak to follow the jump): the motion model is rolled back, the frame is
    re-initialised and the next frame is registered again from its new prediction; ``progress``
    sees every frame once, in order."""
    frames, cam = _preprocessed(sequence)
    frames = frames[: JUMP_AT + 2]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    weak = WEAK
    runs = {}
    for overlap in (False, True):
        seen = []
        runs[overlap] = (track_sequence(reg, frames, cam, sequence["start"], tracking_levels=weak,
                                        overlap_check=overlap, progress=seen.append), seen)
    (seq, seen_seq), (ovl, seen_ovl) = runs[False], runs[True]
    for seen in (seen_seq, seen_ovl):  # every frame reported once, in order, with and without the overlap
        assert [fr.index for fr in seen] == list(range(JUMP_AT + 2))
    assert [fr.index for fr in ovl] == list(range(JUMP_AT + 2))
    assert seq[JUMP_AT].reinitialised and seq[JUMP_AT].verdict != "failed"  # the rollback was exercised
    for a, b in zip(seq, ovl):
        assert (a.verdict, a.reinitialised, a.status) == (b.verdict, b.reinitialised, b.status), a.index
        assert torch.allclose(a.camera_to_world, b.camera_to_world, atol=1e-9), a.index
        assert torch.allclose(a.registered, b.registered, atol=1e-9), a.index
        assert a.p_success == pytest.approx(b.p_success, abs=1e-12)


def test_a_good_frame_the_check_failed_keeps_the_motion_models_history(volume, sequence, monkeypatch):
    """Frame 2 (small motion) is called `failed` once: it is re-initialised, lands where the motion
    model expected it, and the filter goes on from its history (no restart there); the jump at
    JUMP_AT, re-initialised far outside the model's gate, still restarts it."""
    from types import SimpleNamespace

    import xraypose.register.tracking as tracking

    frames, cam = _preprocessed(sequence)
    frames = frames[: JUMP_AT + 1]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    weak = WEAK
    filters, calls = [], []
    real_filter, real_register = tracking.MotionFilter, tracking._register_frame

    def recording_filter(*a, **k):
        filters.append(real_filter(*a, **k))
        return filters[-1]

    def register(reg_, f, T0, curvature=None, **kw):
        res, chk = real_register(reg_, f, T0, curvature, **kw)
        calls.append(f)
        if f == 2 and calls.count(2) == 1:  # the tracked registration of frame 2: called failed
            chk = SimpleNamespace(verdict="failed", p_success=0.0, reason="test")
        return res, chk

    monkeypatch.setattr(tracking, "MotionFilter", recording_filter)
    monkeypatch.setattr(tracking, "_register_frame", register)
    out = track_sequence(reg, frames, cam, sequence["start"], tracking_levels=weak, overlap_check=False,
                         motion="filter")
    assert out[2].reinitialised and calls.count(2) == 2
    steps = filters[0].steps
    assert [s.restart for s in steps[:3]] == [True, False, False]  # frame 2 fused with its history
    assert out[JUMP_AT].reinitialised and steps[JUMP_AT].restart  # the jump restarts it
    err = float(pose_errors(out[2].camera_to_world, sequence["poses"][2], sequence["fid"], cam)["mtre"])
    assert err < 2.0


def _saturated(sequence, frames):
    """(frames (F, 1, H, W), masks (F, 1, H, W), camera): the sequence's first raw frames with their left
    30 % clipped at the detector's maximum (a flat plateau over anatomy), preprocessed as a user would."""
    from xraypose.preprocess import preprocess

    pres = []
    for r in sequence["raws"][:frames]:
        r = r.clone()
        r[:, : int(0.3 * r.shape[1])] = float(sequence["raws"].max())
        pres.append(preprocess(r, sequence["camera"], blur=(5, 1.0), log=True, i0=sequence["i0"], rescale=True))
    assert all(p.mask is not None for p in pres)
    return (torch.stack([p.image for p in pres])[:, None], torch.stack([p.mask for p in pres])[:, None],
            pres[0].camera)


def test_a_sequences_saturated_frames_are_tracked_through_their_masks(volume, sequence):
    """track_sequence(masks=...): every frame's registration weighs its pixels by its own mask; frames with
    30 % clipped over anatomy are tracked with them, and the same frames without them are not."""
    frames, masks, cam = _saturated(sequence, JUMP_AT)
    reg = Registrar(volume, RegistrationConfig(seed=0, record_trajectory=False))
    errors = {}
    for name, m in (("masked", masks), ("unmasked", None)):
        out = track_sequence(reg, frames, cam, sequence["start"], confidence=False, motion="none", masks=m)
        errors[name] = [float(pose_errors(fr.camera_to_world, sequence["poses"][fr.index], sequence["fid"],
                                          sequence["camera"])["mtre"]) for fr in out]
    assert max(errors["masked"]) < 2.0, errors
    assert max(errors["unmasked"]) > 2 * max(errors["masked"]), errors


def test_a_sequences_masks_must_match_its_frames(volume, sequence):
    from xraypose.errors import InputError

    frames, masks, cam = _saturated(sequence, 2)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, seed=0, record_trajectory=False))
    with pytest.raises(InputError, match=r"pixel masks must have the frames' shape \(2, 1, 64, 64\), got \(1, 1, 64, 64\)"):
        track_sequence(reg, frames, cam, sequence["start"], confidence=False, masks=masks[:1])
    with pytest.raises(InputError, match="in its views"):
        track_sequence(reg, None, start=sequence["start"], views=[(frames, cam, None)], masks=masks)


def _tracked_argument(monkeypatch, name: str | None = None, read=None) -> list:
    """Each call of track_sequence (as the CLI makes it) records its keyword ``name`` — or ``read(args, kwargs)`` —
    in the list returned."""
    import xraypose.register.tracking as tracking

    seen = []
    real = tracking.track_sequence

    def spy(*a, **k):
        seen.append(read(a, k) if read is not None else k.get(name))
        return real(*a, **k)

    monkeypatch.setattr(tracking, "track_sequence", spy)
    return seen


def test_cli_track_weighs_each_frame_by_its_preprocessing_mask(tmp_path, sequence, capsys, monkeypatch):
    """`xraypose track` hands preprocessing's masks (here a saturated plateau) to every frame's registration."""
    from xraypose.cli import main

    seen = _tracked_argument(monkeypatch, "masks")
    raws = sequence["raws"][:3].clone()
    raws[:, :, :20] = float(raws.max())
    run = _save_sequence(tmp_path / "in", {**sequence, "raws": raws}, n=3)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast", "--no-confidence"])
    assert code in (0, 3), capsys.readouterr().err
    assert len(seen) == 1 and seen[0] is not None and tuple(seen[0].shape[:2]) == (3, 1)
    assert float(seen[0][:, 0, :, :10].max()) == 0.0 and float(seen[0][:, 0, :, -10:].min()) == 1.0


@pytest.mark.parametrize("overlap", [False, True])
def test_a_frame_the_check_passed_with_a_collapsed_similarity_is_reinitialised(volume, sequence, monkeypatch,
                                                                               overlap):
    """A check that passes everything (P 0.55, `ok`): the jump frame, tracked by a schedule too weak to
    follow it, lands far off with a similarity far below the frames before it; the sequence's own
    similarity record re-initialises it (in order, and with the check beside the next frame)."""
    from xraypose.register.confidence import Confidence
    import xraypose.register.tracking as tracking

    frames, cam = _preprocessed(sequence)
    frames = frames[: JUMP_AT + 2]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))

    def lenient(registrar, images, camera, poses, starts, masks=None):
        return [Confidence(0.55, "ok", "test: passes everything", {}, 0.0) for _ in range(len(poses))]

    monkeypatch.setattr(tracking, "_check", lenient)
    out = track_sequence(reg, frames, cam, sequence["start"], tracking_levels=WEAK, overlap_check=overlap)
    assert [fr.verdict for fr in out] == ["ok"] * len(out)
    assert out[JUMP_AT].reinitialised and not any(fr.reinitialised for fr in out[:JUMP_AT])
    err = float(pose_errors(out[JUMP_AT].camera_to_world, sequence["poses"][JUMP_AT], sequence["fid"], cam)["mtre"])
    assert err < 4.0


def test_the_check_reads_a_frame_through_its_mask(volume, sequence):
    """The confidence check weighs the pixels as registration did: a saturated plateau is no evidence.
    At the true pose of a 30 %-clipped frame the check failed it without the mask (P 0.014) and does
    not with it; a pose 23 mm off still fails; tracked with the check, the masked frames are kept as
    registered (no re-initialisation) and land below 2 mm."""
    from xraypose.register.confidence import assess

    frames, masks, cam = _saturated(sequence, JUMP_AT)
    reg = Registrar(volume, RegistrationConfig(seed=0, record_trajectory=False))
    truth = sequence["poses"][0]
    iso = volume.get_isocenter().to(F64)
    off = perturb_pose(truth, iso, 5.0, 20.0, torch.Generator().manual_seed(3))[0]
    masked = assess(reg, frames[:1].expand(2, -1, -1, -1), cam, torch.stack([truth, off]).to(F64), masks=masks[:1])
    plain = assess(reg, frames[:1], cam, truth[None])[0]
    assert plain.verdict == "failed"
    assert masked[0].verdict != "failed" and masked[0].p_success > 0.5, masked[0]
    assert masked[1].verdict == "failed", masked[1]
    out = track_sequence(reg, frames, cam, sequence["start"], motion="none", masks=masks)
    assert not any(fr.reinitialised for fr in out)
    assert all(fr.verdict != "failed" for fr in out), [(fr.verdict, fr.p_success) for fr in out]
    errors = [float(pose_errors(fr.camera_to_world, sequence["poses"][fr.index], sequence["fid"],
                                sequence["camera"])["mtre"]) for fr in out]
    assert max(errors) < 2.0, errors


def test_frames_after_the_first_render_the_ct_with_its_air_floored_when_asked(volume, sequence, monkeypatch):
    """track_sequence's air_floor_hu: frame 0 (the registrar's schedule) renders the density as it is, every
    later frame's tracking schedule with air floored there; None (default) keeps the registrar's own."""
    from xraypose.register.tracking import AIR_FLOOR_HU

    seen = []
    orig = Registrar.register_views

    def spy(self, *a, **k):
        seen.append(self.config.air_floor_hu)
        return orig(self, *a, **k)

    monkeypatch.setattr(Registrar, "register_views", spy)
    frames, cam = _preprocessed(sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    track_sequence(reg, frames[:3], cam, sequence["start"], confidence=False, tracking_levels=WEAK,
                   air_floor_hu=AIR_FLOOR_HU)
    assert AIR_FLOOR_HU == -975.0 and seen == [None, -975.0, -975.0]
    seen.clear()
    track_sequence(reg, frames[:3], cam, sequence["start"], confidence=False, tracking_levels=WEAK)
    assert seen == [None, None, None]


def test_a_sequence_holds_the_detectors_blur_it_is_given(volume, sequence):
    """track_sequence(blur=c): every frame's registration (and frame 0's) holds the coefficient, and the
    frames say so; a coefficient that is not a number <= 0 is refused."""
    from xraypose.errors import InputError

    frames, cam = _preprocessed(sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    out = track_sequence(reg, frames[:3], cam, sequence["start"], confidence=False, tracking_levels=WEAK,
                         blur=-0.02)
    assert [fr.blur_coefficient for fr in out] == [-0.02] * 3
    assert out[1].to_dict()["blur_coefficient"] == -0.02
    plain = track_sequence(reg, frames[:2], cam, sequence["start"], confidence=False, tracking_levels=WEAK)
    assert [fr.blur_coefficient for fr in plain] == [None, None]
    for bad in (0.1, float("nan"), "sequence", True):
        with pytest.raises(InputError, match="blur must be None, a number <= 0"):
            track_sequence(reg, frames[:2], cam, sequence["start"], confidence=False, blur=bad)


def test_a_sequence_predicts_the_blur_again_as_its_view_turns(volume, sequence):
    """track_sequence(blur=callable): predicted at frame 0 registered (and frame 0 registered again with
    it), again at the first trusted frame whose view turned by more than blur_turn_deg since (the 8°
    jump at JUMP_AT; the small motion before it turns 0.8° per frame), and every frame holds the
    coefficient predicted before its registration; blur_turn_deg=None predicts once; above 0 is held
    as 0; a predictor's NaN and a turn that is not > 0 are refused."""
    from xraypose.errors import InputError

    frames, cam = _preprocessed(sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    asked = []

    def predictor(T):
        asked.append(T)
        return -0.01 * len(asked)

    out = track_sequence(reg, frames[:JUMP_AT + 2], cam, sequence["start"], confidence=False, blur=predictor,
                         blur_turn_deg=4.0)
    assert len(asked) == 2, len(asked)
    assert [fr.blur_coefficient for fr in out] == [-0.01] * (JUMP_AT + 1) + [-0.02]
    for T, f in zip(asked, (0, JUMP_AT)):  # at the registered poses of frames 0 and JUMP_AT
        assert float(pose_errors(T, sequence["poses"][f], sequence["fid"], cam)["mtre"]) < 4.0
    asked.clear()  # checked beside the next frame: predicted once its frame's check has passed
    overlapped = track_sequence(reg, frames, cam, sequence["start"], blur=predictor, blur_turn_deg=4.0,
                                overlap_check=True)
    assert len(asked) == 2 and overlapped[-1].blur_coefficient == -0.02, [fr.blur_coefficient for fr in overlapped]
    asked.clear()
    once = track_sequence(reg, frames[:JUMP_AT + 2], cam, sequence["start"], confidence=False, blur=predictor,
                          blur_turn_deg=None, tracking_levels=WEAK)
    assert len(asked) == 1 and {fr.blur_coefficient for fr in once} == {-0.01}
    held = track_sequence(reg, frames[:2], cam, sequence["start"], confidence=False, blur=lambda T: 0.3,
                          tracking_levels=WEAK)
    assert [fr.blur_coefficient for fr in held] == [0.0, 0.0]
    with pytest.raises(InputError, match="the blur predictor returned nan"):
        track_sequence(reg, frames[:2], cam, sequence["start"], confidence=False, blur=lambda T: float("nan"))
    for bad in (0, -3.0, float("inf"), "5"):
        with pytest.raises(InputError, match="blur_turn_deg must be None or a finite number of degrees > 0"):
            track_sequence(reg, frames[:2], cam, sequence["start"], confidence=False, blur=predictor,
                           blur_turn_deg=bad)


def _blur_coefficients_tracked(monkeypatch) -> list:
    """A list that receives the blur coefficient of every registrar track_sequence is given."""
    import xraypose.register.tracking as tracking

    seen, real = [], tracking.track_sequence

    def spy(reg, *a, **k):
        seen.append(reg.config.blur_coefficient)
        return real(reg, *a, **k)

    monkeypatch.setattr(tracking, "track_sequence", spy)
    return seen


def test_cli_track_holds_a_given_blur_coefficient_and_refuses_a_positive_one(tmp_path, sequence, capsys, monkeypatch):
    from xraypose.cli import main

    seen = _blur_coefficients_tracked(monkeypatch)
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    args = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast",
            "--no-confidence"]
    code = main(args + ["-o", str(tmp_path / "out"), "--blur-coefficient", "-0.03"])
    assert code in (0, 3), capsys.readouterr().err
    assert seen == [-0.03]
    doc = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    assert doc["frames"][1]["blur_coefficient"] == -0.03
    code = main(args + ["-o", str(tmp_path / "out2"), "--blur-coefficient", "0.5"])
    assert code == 2 and "--blur-coefficient (blur coefficient (<= 0, per pixel²)) must be a number in [-10, 0], got 0.5" \
        in capsys.readouterr().err


def test_cli_track_air_floor_reaches_the_later_frames_and_is_range_checked(tmp_path, sequence, capsys, monkeypatch):
    """--air-floor HU: track_sequence's air_floor_hu (off without it); a value that is not air is refused."""
    from xraypose.cli import main

    seen = _tracked_argument(monkeypatch, "air_floor_hu")
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    args = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast",
            "--no-confidence"]
    assert main(args + ["-o", str(tmp_path / "out"), "--air-floor", "-975"]) in (0, 3), capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "out2")]) in (0, 3), capsys.readouterr().err
    assert seen == [-975.0, None]
    assert main(args + ["-o", str(tmp_path / "out3"), "--air-floor", "-100"]) == 2
    assert "--air-floor (the air floor) must be a number" in capsys.readouterr().err


def test_cli_track_runs_two_threads_by_default_where_there_are_two_cpus(tmp_path, sequence, capsys, monkeypatch):
    """`xraypose track` without --threads: 2 threads on a machine of two CPUs or more (the check beside the next
    frame gains from them since it is one render), 1 on one CPU; --threads decides when given."""
    import os

    from xraypose.cli import main

    seen = _tracked_argument(monkeypatch, read=lambda a, k: a[0].config.num_threads)  # the registrar's
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    args = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast",
            "--no-confidence"]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(args + ["-o", str(tmp_path / "a")]) in (0, 3), capsys.readouterr().err
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert main(args + ["-o", str(tmp_path / "b")]) in (0, 3), capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "c"), "--threads", "1"]) in (0, 3), capsys.readouterr().err
    assert seen == [2, 1, 1]


def test_cli_track_threads_1_runs_the_check_on_the_same_thread(tmp_path, sequence, capsys, monkeypatch):
    """`xraypose track --threads 1` on a machine of two CPUs: the registrations ran one thread but the check beside
    the next frame followed os.cpu_count() and ran on a second thread.  --threads 1 is one thread for everything
    (the check after each frame, in order); the default there still runs it beside the next frame."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import xraypose.register.tracking as tracking
    from xraypose.cli import main

    pools = []

    def pool(*a, **k):
        pools.append(k.get("max_workers"))
        return ThreadPoolExecutor(*a, **k)

    monkeypatch.setattr(tracking, "ThreadPoolExecutor", pool)
    seen = _tracked_argument(monkeypatch, read=lambda a, k: (a[0].config.num_threads, k.get("overlap_check")))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    args = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast"]
    assert main(args + ["-o", str(tmp_path / "a"), "--threads", "1"]) in (0, 3), capsys.readouterr().err
    assert pools == [] and seen == [(1, False)]
    assert main(args + ["-o", str(tmp_path / "b")]) in (0, 3), capsys.readouterr().err
    assert pools == [1] and seen[1] == (2, True)


def test_cli_track_predicts_the_blur_coefficient(tmp_path, sequence, capsys, monkeypatch):
    """--predict-blur: frame 0 registered, the coefficient read on xraypose's simulator there, held for
    every frame and recorded (trajectory.json's blur_prediction and each frame's blur_coefficient); not
    with --blur-coefficient."""
    from xraypose.cli import main

    seen = _blur_coefficients_tracked(monkeypatch)
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    args = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000", "--fast",
            "--no-confidence"]
    code = main(args + ["-o", str(tmp_path / "out"), "--predict-blur"])
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    doc = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    bp = doc["blur_prediction"]
    c = bp["coefficient"]
    assert math.isfinite(c) and c < 0 and seen == [None] and doc["frames"][1]["blur_coefficient"] == c
    assert [fr["blur_coefficient"] for fr in doc["frames"]] == [c, c]  # frame 0 registered again with it
    assert "blur coefficient predicted (1)" in out.out
    assert bp["at"].startswith("frame 0 registered") and bp["turn_deg"] == 5.0
    assert bp["predictions"][0]["from_frame"] == 0 and len(bp["predictions"][0]["pose"]) == 4
    code = main(args + ["-o", str(tmp_path / "out2"), "--predict-blur", "--blur-coefficient", "-0.02"])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = main(args + ["-o", str(tmp_path / "out3"), "--blur-turn", "3"])
    assert code == 2 and "--blur-turn says when --predict-blur predicts again" in capsys.readouterr().err
    code = main(args + ["-o", str(tmp_path / "out4"), "--predict-blur", "--blur-turn", "-1"])
    assert code == 2 and "--blur-turn (turn before the blur is predicted again (0: once)) must be a number in " \
        "[0, 180] degrees, got -1" in capsys.readouterr().err
    # through the jump (8°) with --blur-turn 4: predicted again after it, recorded with the frame it took over from
    long_run = _save_sequence(tmp_path / "in5", sequence, n=JUMP_AT + 2)
    args[2] = str(long_run)
    code = main(args + ["-o", str(tmp_path / "out5"), "--predict-blur", "--blur-turn", "4"])
    assert code in (0, 3), capsys.readouterr().err
    bp = json.loads((tmp_path / "out5" / "trajectory.json").read_text())["blur_prediction"]
    assert [p["from_frame"] for p in bp["predictions"]] == [0, JUMP_AT + 1], bp["predictions"]


def test_cli_track_one_structure_windows_the_frames_and_weighs_each_at_its_start(tmp_path, volume, sequence, capsys,
                                                                                  monkeypatch):
    """`xraypose track --label-map --label`: the frames cropped to where the structure projects at the start
    (recorded), every registration weighed by the structure's footprint at its own start, and the part
    tracked (the CT's bone alone against X-rays of the whole CT)."""
    import nibabel as nib

    import xraypose.register.tracking as tracking
    from xraypose.cli import main

    seen = []
    real = tracking._frame_views

    def spy(views, f, T0=None):
        out = real(views, f, T0)
        seen.append((f, callable(views[0][3]), out[0][3]))
        return out

    monkeypatch.setattr(tracking, "_frame_views", spy)
    later = []
    real_track = tracking.track_sequence

    def spy_track(*a, **k):
        later.append(k["tracking_levels"])
        return real_track(*a, **k)

    monkeypatch.setattr(tracking, "track_sequence", spy_track)
    run = _save_sequence(tmp_path / "in", sequence, n=3)
    lab = (volume.data > 200).numpy().astype(np.int16) * 4
    nib.save(nib.Nifti1Image(lab, volume.affine.numpy()), str(tmp_path / "lab.nii.gz"))
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast", "--label-map", str(tmp_path / "lab.nii.gz"), "--label", "4"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    assert "rendering the structure only" in text.out
    doc = json.loads((out / "trajectory.json").read_text())
    (win,) = doc["structure_windows"].values()
    assert win["margin_mm"] > 20.0 and 16 <= win["height"] <= PX and 16 <= win["width"] <= PX
    assert seen and all(c for _, c, _ in seen)  # weights drawn per registration, at its start
    assert later and not any(lv.fit_bone or lv.fit_tissue or lv.fit_curve for lv in later[0])  # the part's levels
    assert {f for f, _, _ in seen} == {0, 1, 2}
    assert all(m is not None and tuple(m.shape[-2:]) == (win["height"], win["width"]) and float(m.min()) == 0.0
               for _, _, m in seen)  # the footprint, not ones
    errs = [float(pose_errors(torch.tensor(fr["camera_to_world"], dtype=F64), sequence["poses"][fr["frame"]],
                              sequence["fid"], sequence["camera"])["mtre"]) for fr in doc["frames"]]
    assert max(errs) < 5.0, errs  # without the windows and footprints this run ended 8.9 mm off on frame 0
    far = sequence["start"].clone()
    far[:3, 3] += 600.0 * far[:3, 0]  # looks 600 mm beside the structure
    (tmp_path / "far.json").write_text(json.dumps({"camera_to_world": far.tolist()}))
    code = main(["track", "sample", str(run), "-o", str(tmp_path / "bad"), "--pose-json", str(tmp_path / "far.json"),
                 "--i0", "65000", "--fast", "--label-map", str(tmp_path / "lab.nii.gz"), "--label", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "the structure projects outside the frames at the start" in err, err


def test_a_views_masks_may_follow_the_frames_start():
    """A callable 4th element is drawn per frame at the frame's start composed with the view's camera_to_rig."""
    from xraypose.register.tracking import _frame_views, _sequence_views

    calls = []

    def weights(f, T):
        calls.append((f, T.clone()))
        return torch.full((5, 7), 0.5)

    C = make_transform(so3_exp(torch.tensor([0.0, 0.3, 0.0], dtype=F64)), torch.tensor([10.0, 0.0, 0.0], dtype=F64))
    cam = Camera(sdd=1000.0, height=5, width=7, delx=1.0)
    views = _sequence_views(None, None, [(torch.zeros(3, 1, 5, 7), cam, C, weights)])
    T0 = make_transform(so3_exp(torch.tensor([0.1, 0.0, 0.2], dtype=F64)), torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    (img, _, _, m), = _frame_views(views, 2, T0)
    assert tuple(m.shape) == (1, 1, 5, 7) and float(m.mean()) == 0.5 and tuple(img.shape) == (1, 1, 5, 7)
    assert calls[0][0] == 2 and torch.allclose(calls[0][1], T0 @ C)
    with pytest.raises(InputError, match="start pose"):
        _frame_views(views, 0)


def test_cli_track_counts_refines_every_frame_on_its_raw_counts(tmp_path, sequence, capsys):
    """--counts: each frame's pose refined on its photon counts (the blur estimated on frame 0), pooled by the
    motion model, the tracked pose kept beside it; the results are no worse than the tracked ones.  (The sequence's frames are
    point-sampled — XraySimulator(supersample=1) — so the counts' model is too: --counts-supersample 1.)"""
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence, n=3)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast", "--counts", "--counts-supersample", "1"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    assert sum(ln.startswith("counts, frame ") for ln in text.out.splitlines()) == 3
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["counts"]["refined"] == 3  # a failed frame's too (admit_doubtful decides whether it counts)
    assert doc["counts"]["blur_estimated"] and 0.0 <= doc["counts"]["blur_px"] <= 1.6
    c = doc["counts"]  # the formation chosen on the first frame (the simulator's air starts at -1000 HU)
    assert c["renderer_chosen"] and c["air_chosen"] and c["renderer"] in ("siddon", "trilinear")
    assert c["air_hu"] in (-1000.0, -900.0, -800.0, -700.0) and c["scatter_chosen"]
    assert c["scatter_mm"] == 0.0  # the simulator's frames have none
    assert any(ln.startswith("counts: formation ") for ln in text.out.splitlines())
    assert doc["counts"]["pooled"] == "smooth"  # the refined poses pooled by the motion model
    assert doc["counts"]["bin"] == 1  # frames of at most 128 pixels a side are refined as they are
    for fr in doc["frames"]:
        if fr["counts"].get("admitted") is False:  # a failed frame whose fit the sequence did not vouch for
            assert fr["verdict"] == "failed" and "tracked_camera_to_world" not in fr
            continue
        err = lambda key: float(pose_errors(torch.tensor(fr[key], dtype=F64), sequence["poses"][fr["frame"]],  # noqa: E731
                                            sequence["fid"], sequence["camera"])["mtre"])
        assert fr["counts"]["converged"] and len(fr["counts"]["covariance"]) == 6
        assert len(fr["counts"]["camera_to_world"]) == 4  # the frame's own refined pose, before pooling
        assert err("camera_to_world") < max(1.0, err("tracked_camera_to_world") + 0.3)


def test_cli_track_counts_every_refines_every_kth_frame_and_pools_the_registrations(tmp_path, sequence, capsys):
    """--counts-every 2 on three frames: frames 1 and 3 (the first and the last) refined on their counts, frame 2
    not, its pose pooled from its registration and its neighbours' fits (the tracked pose kept beside it); the
    record says so; every frame no worse than tracked."""
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence, n=3)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast", "--counts", "--counts-supersample", "1", "--counts-every", "2"])
    text = capsys.readouterr()
    assert code in (0, 3), text.err
    lines = [ln for ln in text.out.splitlines() if ln.startswith("counts, frame ")]
    assert len(lines) == 2 and lines[0].startswith("counts, frame 1 (1/2 refined)") and "frame 3 (2/2" in lines[1]
    doc = json.loads((out / "trajectory.json").read_text())
    c = doc["counts"]
    assert (c["every"], c["refined"], c["pooled_with_registrations"]) == (2, 2, True)
    frames = doc["frames"]
    assert "counts" in frames[0] and "counts" in frames[2] and "counts" not in frames[1]
    for fr in frames:
        if fr["verdict"] == "failed" and "tracked_camera_to_world" not in fr:
            continue
        err = lambda key: float(pose_errors(torch.tensor(fr[key], dtype=F64), sequence["poses"][fr["frame"]],  # noqa: E731
                                            sequence["fid"], sequence["camera"])["mtre"])
        assert "tracked_camera_to_world" in fr  # the pooled pose replaced the tracked one, kept beside it
        assert err("camera_to_world") < max(1.0, err("tracked_camera_to_world") + 0.3)


def test_track_counts_refines_a_failed_frame_and_vouches_for_it_only_where_the_sequence_leads(monkeypatch, capsys):
    """``track --counts`` with a ``failed`` frame: it is refined from its tracked pose too, flagged doubtful (so
    the formation is not chosen on it); where ``admit_doubtful`` keeps its fit it is pooled and made
    ``uncertain`` (the reason says both), else it stays ``failed``, its fit recorded, not admitted, its pose the
    smoother's where pool_fits gives one (between refined frames), else the tracked one."""
    from types import SimpleNamespace

    import xraypose.register.counts as counts
    from xraypose.cli.track import _refine_on_counts
    from xraypose.register.counts import CountsFit, CountsFormation
    from xraypose.register.tracking import FrameResult

    I = torch.eye(4, dtype=F64)
    tracked = [make_transform(torch.eye(3, dtype=F64), torch.tensor([float(f), 0.0, 600.0], dtype=F64))
               for f in range(3)]
    refined = [T.clone() for T in tracked]
    for T in refined:
        T[2, 3] += 0.5  # the counts move each frame 0.5 mm
    seen = {}

    def fake_refine(volume, camera, raws, starts, doubtful=None, progress=None, **kw):
        seen["starts"], seen["doubtful"] = starts, doubtful
        fits = [CountsFit(T, torch.zeros(1), 1.0, 0.0, 0.0, 1, True, 0.5, torch.eye(6, dtype=F64)) for T in refined]
        for i, f in enumerate(fits):
            progress(i, f)
        return CountsFormation("siddon", -1000.0, 0.3, 0.0, 2), fits

    admit = {}
    monkeypatch.setattr(counts, "refine_sequence", fake_refine)
    monkeypatch.setattr(counts, "admit_doubtful", lambda fits, d, iso, motion: [
        None if x and not admit["ok"] else f for f, x in zip(fits, d)])
    between = tracked[1].clone()
    between[2, 3] += 0.25  # the smoother's pose between refined frames, where pool_fits gives one
    monkeypatch.setattr(counts, "pool_fits", lambda fits, iso, motion: [
        (between if admit["between"] else None) if f is None else f.pose for f in fits])
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    seq = SimpleNamespace(frames=[SimpleNamespace(image=torch.ones(16, 16)) for _ in range(3)])
    cts = SimpleNamespace(volume=None, isocenter=torch.zeros(3, dtype=F64))
    kw = {"blur": None, "air_hu": None, "scatter_mm": None, "renderer": None, "supersample": None, "max_side": None}
    for ok, interpolated in ((True, False), (False, False), (False, True)):
        admit["ok"], admit["between"] = ok, interpolated
        res = [FrameResult(f, T.clone(), T.clone(), 0.9, "converged", v, 0.5, "why")
               for f, (T, v) in enumerate(zip(tracked, ["ok", "failed", "ok"]))]
        rec = _refine_on_counts(res, seq, cam, I, cts, 0, kw, "smooth")
        out = capsys.readouterr().out
        assert all(s is not None for s in seen["starts"]) and seen["doubtful"] == [False, True, False]
        assert rec["refined"] == 3 and (rec["failed_admitted"], rec["failed_left"]) == ((1, 0) if ok else (0, 1))
        assert torch.equal(res[0].camera_to_world, refined[0]) and torch.equal(res[2].camera_to_world, refined[2])
        fr = res[1]
        assert fr.extra["counts"]["admitted"] is ok and "admitted" not in res[0].extra["counts"]
        if ok:
            assert fr.verdict == "uncertain" and torch.equal(fr.camera_to_world, refined[1])
            assert "the check alone said failed (why)" in fr.reason
            assert fr.extra["tracked_camera_to_world"] == tracked[1].tolist()
        elif interpolated:  # not vouched for, but between refined frames: the smoother's pose, still failed
            assert fr.verdict == "failed" and torch.equal(fr.camera_to_world, between) and fr.reason == "why"
            assert fr.extra["tracked_camera_to_world"] == tracked[1].tolist() and "smoother's between" in out
        else:
            assert fr.verdict == "failed" and torch.equal(fr.camera_to_world, tracked[1]) and fr.reason == "why"
            assert "tracked_camera_to_world" not in fr.extra and "counts, frame 2: failed" in out

    def nothing_refined(volume, camera, raws, starts, doubtful=None, progress=None, **kw):
        for i in range(len(raws)):
            progress(i, None)
        return CountsFormation("siddon", -1000.0, 0.0, 0.0, 2), [None] * len(raws)

    monkeypatch.setattr(counts, "refine_sequence", nothing_refined)  # every frame failed: none to choose on
    res = [FrameResult(f, T.clone(), T.clone(), 0.9, "converged", "failed", 0.1, "why") for f, T in enumerate(tracked)]
    rec = _refine_on_counts(res, seq, cam, I, cts, 0, kw, "smooth")
    out = capsys.readouterr().out
    assert rec["refined"] == 0 and "no frame refined (every frame failed)" in out and "counts: formation" not in out
    assert all(fr.verdict == "failed" and torch.equal(fr.camera_to_world, T) for fr, T in zip(res, tracked))


def test_track_counts_every_refines_the_doubted_frames_too_and_leaves_their_registrations_out(monkeypatch, capsys):
    """``--counts-every 2`` on five frames, frame 2 ``uncertain``: frames 1, 3 and 5 (every second and the last) and
    frame 2 (doubted) are refined, frame 4 is not; the pooling gets the tracker's model and every frame's registration
    but the doubted one's (its fit stands for it); frame 4's pose is the pooled one, its tracked pose kept beside it."""
    from types import SimpleNamespace

    import xraypose.register.counts as counts
    from xraypose.cli.track import _refine_on_counts
    from xraypose.register.counts import CountsFit, CountsFormation
    from xraypose.register.motion import MotionModel
    from xraypose.register.tracking import FrameResult, TrackedFrames

    I = torch.eye(4, dtype=F64)
    tracked = [make_transform(torch.eye(3, dtype=F64), torch.tensor([float(f), 0.0, 600.0], dtype=F64))
               for f in range(5)]
    seen = {}

    def fake_refine(volume, camera, raws, starts, doubtful=None, progress=None, **kw):
        seen["starts"] = starts
        fits = [None if T is None else CountsFit(T, torch.zeros(1), 1.0, 0.0, 0.0, 1, True, 0.5,
                                                  torch.eye(6, dtype=F64)) for T in starts]
        for i, f in enumerate(fits):
            progress(i, f)
        return CountsFormation("siddon", -1000.0, 0.3, 0.0, 2), fits

    moved = tracked[3].clone()
    moved[2, 3] += 0.4

    def fake_pool(fits, iso, motion, model=None, tracked=None):
        seen["model"], seen["tracked"] = model, tracked
        return [f.pose if f is not None else moved for f in fits]

    monkeypatch.setattr(counts, "refine_sequence", fake_refine)
    monkeypatch.setattr(counts, "admit_doubtful", lambda fits, d, iso, motion, **kw: fits)
    monkeypatch.setattr(counts, "pool_fits", fake_pool)
    model = MotionModel(accel_mm=0.5)
    res = TrackedFrames(FrameResult(f, T.clone(), T.clone(), 0.9, "converged", v, 0.5, "why")
                        for f, (T, v) in enumerate(zip(tracked, ["ok", "uncertain", "ok", "ok", "ok"])))
    res.motion_model = model
    res.measurements = [(T.clone(), torch.eye(6, dtype=F64)) for T in tracked]
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    seq = SimpleNamespace(frames=[SimpleNamespace(image=torch.ones(16, 16)) for _ in range(5)])
    cts = SimpleNamespace(volume=None, isocenter=torch.zeros(3, dtype=F64))
    kw = {"blur": None, "air_hu": None, "scatter_mm": None, "renderer": None, "supersample": None, "max_side": None}
    rec = _refine_on_counts(res, seq, cam, I, cts, 0, kw, "smooth", every=2)
    out = capsys.readouterr().out
    assert [s is not None for s in seen["starts"]] == [True, True, True, False, True]
    assert (rec["every"], rec["refined"], rec["pooled_with_registrations"]) == (2, 4, True)
    assert seen["model"] is model and seen["tracked"][1] is None
    assert all(seen["tracked"][i] is not None and torch.equal(seen["tracked"][i][0], tracked[i]) for i in (0, 2, 3, 4))
    assert "counts, frame 2 (2/4 refined)" in out and "counts, frame 4 " not in out
    assert torch.equal(res[3].camera_to_world, moved) and res[3].extra["tracked_camera_to_world"] == tracked[3].tolist()
    assert "counts" not in res[3].extra and "counts" in res[1].extra


def test_cli_track_counts_with_a_blank_frame_keeps_it_out_of_the_others(tmp_path, sequence, capsys):
    """A frame with no anatomy (flat photon noise) in a sequence: tracking calls it failed; --counts refines it
    too but its fit is not admitted (it pins nothing: without anatomy its covariance passes any gate, and it
    was once made `uncertain` so) and its coefficients start no other frame — the next frame's refinement went
    28 mm off when they did — and it keeps the smoother's pose between its neighbours, still failed."""
    from xraypose.cli import main

    seq = dict(sequence)
    raws = sequence["raws"][:3].clone()  # (before the fixture's jump: the blank frame lies between two others)
    raws[1] = torch.poisson(torch.full_like(raws[1], float(raws[1].mean())), generator=torch.Generator().manual_seed(9))
    seq["raws"] = raws
    run = _save_sequence(tmp_path / "in", seq, n=3)
    out = tmp_path / "out"
    code = main(["track", "sample", str(run), "-o", str(out), "--pose-json", str(tmp_path / "in" / "start.json"),
                 "--i0", "65000", "--fast", "--counts", "--counts-supersample", "1"])
    text = capsys.readouterr()
    assert code == 3, text.out + text.err  # the blank frame stays failed
    doc = json.loads((out / "trajectory.json").read_text())
    assert doc["counts"]["refined"] == 3 and (doc["counts"]["failed_admitted"], doc["counts"]["failed_left"]) == (0, 1)
    blank = doc["frames"][1]
    assert blank["verdict"] == "failed" and blank["counts"]["admitted"] is False
    assert "tracked_camera_to_world" in blank  # its pose: the smoother's between the refined frames
    assert "the smoother's between the refined frames" in text.out
    for fr in (doc["frames"][0], doc["frames"][2]):  # its neighbours refined as if it were not there
        assert fr["verdict"] != "failed" and fr["counts"]["moved_mm"] < 2.0
        err = float(pose_errors(torch.tensor(fr["camera_to_world"], dtype=F64), sequence["poses"][fr["frame"]],
                                sequence["fid"], sequence["camera"])["mtre"])
        assert err < 1.0


def test_cli_track_counts_max_side_sets_the_counts_bin(tmp_path, sequence, capsys, monkeypatch):
    """--counts-max-side N: each frame's counts summed over k×k pixels until at most N a side (64² frames, N = 32:
    2×2), passed to the refinement and recorded; without it the default (128: 64² frames as they are)."""
    import xraypose.register.counts as C
    from xraypose.cli import main
    from xraypose.register.counts import CountsFormation

    bins = []

    def spy(volume, camera, raws, poses, **kw):
        bins.append(kw["bin"])
        return CountsFormation("siddon", -1000.0, 0.5, 0.0, 1), [None] * len(poses)

    monkeypatch.setattr(C, "refine_sequence", spy)
    run = _save_sequence(tmp_path / "in", sequence, n=2)
    base = ["track", "sample", str(run), "--pose-json", str(tmp_path / "in" / "start.json"), "--i0", "65000",
            "--fast", "--counts"]
    for extra, out, want in ((["--counts-max-side", "32"], "o32", 2), ([], "o", 1)):
        code = main(base + extra + ["-o", str(tmp_path / out)])
        assert code in (0, 3), capsys.readouterr().err
        assert bins[-1] == want
        assert json.loads((tmp_path / out / "trajectory.json").read_text())["counts"]["bin"] == want
    capsys.readouterr()
    for extra, what in ((["--counts-max-side", "64"], "--counts-max-side go with --counts"),
                        (["--counts", "--counts-max-side", "4"],
                         "--counts-max-side (the counts' longest side after summing) must be a whole number in [8,")):
        code = main(["track", "sample", str(run), "-o", str(tmp_path / "bad"), "--init", "ap"] + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and what in err, err


def test_cli_track_counts_bad_input_is_one_line(tmp_path, sequence, capsys):
    from xraypose.cli import main

    run = _save_sequence(tmp_path / "in", sequence, n=2)
    base = ["track", "sample", str(run), "-o", str(tmp_path / "o"), "--init", "ap"]
    code = main(base + ["--counts-blur", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--counts-max-side go with --counts" in err
    code = main(base + ["--counts", "--counts-scatter-mm", "-5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "scatter" in err, err
    code = main(base + ["--counts", "--counts-air-hu", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "air knot" in err, err
    code = main(base + ["--counts", "--counts-renderer", "raycast"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--counts-renderer must be auto or one of" in err, err
    code = main(base + ["--counts-every", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--counts-every says which frames --counts refines" in err, err
    code = main(base + ["--counts", "--counts-every", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "counts-every" in err, err
    side = json.loads((tmp_path / "in" / "run.json").read_text())
    (tmp_path / "in" / "run.json").write_text(json.dumps({**side, "kind": "attenuation"}))
    code = main(base + ["--counts"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--counts needs raw detector intensities" in err, err


@pytest.fixture(scope="module")
def smooth_sequence(volume):
    """Raw 64² X-rays of a pose moving ~1.9 mm and 0.8° per frame (no jump), 7 frames; true poses, fiducials."""
    from xraypose.synthetic import XraySimulator

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=PX, width=PX, delx=280.0 / PX)
    T0, fid = CaseMaker(volume, camera=cam, collimator_px=2, n_fiducials=10).true_pose(2)
    poses = [T0]
    for _ in range(1, 7):
        R = so3_exp((torch.tensor([0.8944, 0.4472, 0.0]) * math.radians(0.8)).to(F64))
        poses.append(make_transform(R, iso - R @ iso + torch.tensor([1.5, -1.0, 0.5], dtype=F64)) @ poses[-1])
    sim = XraySimulator(volume, cam, supersample=1, photons=1e5, blur_px=0.5)
    raws = torch.stack([sim(T, generator=torch.Generator().manual_seed(f)).raw[0, 0] for f, T in enumerate(poses)])
    start = perturb_pose(poses[0], iso, 2.0, 5.0, torch.Generator().manual_seed(1))[0]
    return {"raws": raws, "poses": poses, "fid": fid, "camera": cam, "i0": sim.i0, "start": start}


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failed_check_the_sequence_contradicts_is_kept_uncertain(volume, smooth_sequence, monkeypatch, overlap):
    """A check that fails frame 5 of a smooth sequence (P 0.30): its registration converged where the motion
    model expected it, with the frames' similarity, so the sequence vouches for it — kept `uncertain`, a
    measurement of the motion model, not re-initialised (in order and with the check beside the next
    frame); with ``vouch_failed=False`` it is re-initialised and stays `failed` (the rule until 2026-12-05)."""
    import xraypose.register.tracking as tracking
    from xraypose.register.confidence import Confidence

    frames, cam = _preprocessed(smooth_sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    real = tracking._check
    calls = {"n": 0}

    def fails_frame_5(registrar, images, camera, poses, starts, masks=None):
        out = real(registrar, images, camera, poses, starts, masks)
        target = frames[5:6]
        if images.shape == target.shape and torch.equal(images, target):
            calls["n"] += 1
            return [Confidence(0.30, "failed", "test: fails frame 5", {}, 0.0) for _ in range(len(poses))]
        return out

    monkeypatch.setattr(tracking, "_check", fails_frame_5)
    out = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=overlap)
    assert calls["n"] >= 1
    assert not out[5].reinitialised and out[5].verdict == "uncertain", (out[5].verdict, out[5].reason)
    assert "vouches" in out[5].reason and "P 0.30" in out[5].reason and out[5].p_success == pytest.approx(0.30)
    assert out[5].vouched and out[5].to_dict()["vouched"] is True
    assert not any(fr.vouched for fr in out[:5] + out[6:])
    err = float(pose_errors(out[5].camera_to_world, smooth_sequence["poses"][5], smooth_sequence["fid"], cam)["mtre"])
    assert err < 2.0, err
    old = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=overlap, vouch_failed=False)
    assert old[5].reinitialised and old[5].verdict == "failed" and not old[5].vouched


def test_a_failed_frame_between_measured_ones_reports_the_smoothers_estimate(volume, smooth_sequence, monkeypatch):
    """A frame whose check fails every time (re-initialised, still `failed`: the filter coasts over it) in the
    middle of a smooth sequence: with the smoother its estimate is the smoother's, interpolated from the
    frames on both sides, with that estimate's spread; its own registration stays in ``registered``.  With
    the filter alone (no later frame to interpolate from) it keeps its registration, as before."""
    import xraypose.register.tracking as tracking
    from xraypose.register.confidence import Confidence

    frames, cam = _preprocessed(smooth_sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    real = tracking._check

    def fails_frame_5(registrar, images, camera, poses, starts, masks=None):
        out = real(registrar, images, camera, poses, starts, masks)
        if images.shape == frames[5:6].shape and torch.equal(images, frames[5:6]):
            return [Confidence(0.10, "failed", "test: fails frame 5", {}, 0.0) for _ in range(len(poses))]
        return out

    monkeypatch.setattr(tracking, "_check", fails_frame_5)
    out = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=False, vouch_failed=False)
    assert out[5].verdict == "failed" and out[5].reinitialised
    assert not torch.allclose(out[5].camera_to_world, out[5].registered)
    assert out[5].spread is not None and out[5].covariance is not None
    err = float(pose_errors(out[5].camera_to_world, smooth_sequence["poses"][5], smooth_sequence["fid"], cam)["mtre"])
    assert err < 2.0, err
    filt = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=False, vouch_failed=False,
                          motion="filter")
    assert filt[5].verdict == "failed" and torch.equal(filt[5].camera_to_world, filt[5].registered)


def test_bracketed_steps():
    """Only a coasted step with measured steps on both sides in its segment is interpolated."""
    from types import SimpleNamespace as S

    from xraypose.register.motion import bracketed_steps

    def m(restart=False):
        return S(measured=True, restart=restart)

    c = S(measured=False, restart=False)
    assert bracketed_steps([m(True), c, m(), c, c, m(True), c, m(), c]) == [False, True, False, False, False, False,
                                                                         True, False, False]
    assert bracketed_steps([m(True), m(), c]) == [False, False, False] and bracketed_steps([]) == []
    # a measured step whose frame was not trusted (a failed frame 0: the model starts from it) holds no side
    steps = [m(True), c, c, m(), c, m()]
    assert bracketed_steps(steps) == [False, True, True, False, True, False]
    assert bracketed_steps(steps, trusted=[False, False, False, True, False, True]) == [False] * 4 + [True, False]
    assert bracketed_steps(steps, trusted=[True] * 6) == bracketed_steps(steps)


def test_failed_frames_after_a_failed_first_frame_keep_their_own_registrations(volume, smooth_sequence, monkeypatch):
    """Frames 0 and 1 fail their check (frame 0 is measured all the same: the model starts from it): frame 1 is
    not interpolated from frame 0's untrusted pose — it keeps its own registration — while a failed frame 5
    between trusted frames still reports the smoother's estimate (stop 64: a display-processed sequence whose
    first frame failed was carried 1–31 mm off through 41 frames whose registrations were mostly right)."""
    import xraypose.register.tracking as tracking
    from xraypose.register.confidence import Confidence

    frames, cam = _preprocessed(smooth_sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    real = tracking._check

    def fails(registrar, images, camera, poses, starts, masks=None):
        out = real(registrar, images, camera, poses, starts, masks)
        if any(images.shape == frames[i:i + 1].shape and torch.equal(images, frames[i:i + 1]) for i in (0, 1, 5)):
            return [Confidence(0.10, "failed", "test: fails", {}, 0.0) for _ in range(len(poses))]
        return out

    monkeypatch.setattr(tracking, "_check", fails)
    out = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=False, vouch_failed=False)
    assert [out[i].verdict for i in (0, 1, 5)] == ["failed"] * 3
    assert torch.equal(out[1].camera_to_world, out[1].registered)  # no trusted frame before it: its own
    assert not torch.allclose(out[5].camera_to_world, out[5].registered)  # between trusted frames: the smoother's
    # the registrations the model fused (what track --counts-every pools with): none for the untrusted first frame
    # nor for the coasted ones; a trusted frame's is its registration, with a covariance, under the fitted model
    m = out.measurements
    assert len(m) == len(out) and m[0] is None and m[1] is None and m[5] is None
    assert all(m[i] is not None and torch.equal(m[i][0], out[i].registered) and m[i][1].shape == (6, 6)
               for i in (2, 3, 4, 6))
    assert out.motion_model is not None


def test_a_rigs_failed_frame_the_sequence_contradicts_is_kept_uncertain(volume, smooth_sequence, monkeypatch):
    """The rig form of the rule above: two views (AP and lateral, a rig), the rig's check fails frame 5;
    the sequence vouches for it — kept `uncertain`, `vouched`, not re-initialised, below 2 mm."""
    import xraypose.register.tracking as tracking
    from xraypose.register.confidence import Confidence
    from xraypose.rig import rig_from_carm
    from xraypose.synthetic import XraySimulator

    cam = smooth_sequence["camera"]
    rig = rig_from_carm({"ap": (0.0, 0.0), "lat": (90.0, 0.0)}, sod=612.0)
    iso = volume.get_isocenter().to(F64)
    frame = torch.eye(4, dtype=F64)
    frame[:3, 3] = iso
    # the rig's poses: the smooth sequence's motion applied to a rig frame at the isocenter
    truth = [smooth_sequence["poses"][f] @ torch.linalg.inv(smooth_sequence["poses"][0]) @ frame
             for f in range(len(smooth_sequence["poses"]))]
    sim = XraySimulator(volume, cam, supersample=1, photons=1e5, blur_px=0.5)
    from xraypose.preprocess import preprocess

    views = []
    for n in rig.names:
        C = rig[n].camera_to_rig
        pres = [preprocess(sim(X @ C, generator=torch.Generator().manual_seed(f)).raw[0, 0], cam, blur=(5, 1.0),
                           log=True, i0=sim.i0, rescale=True) for f, X in enumerate(truth)]
        views.append((torch.stack([p.image for p in pres])[:, None], pres[0].camera, C))
    target = views[0][0][5:6]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    real = tracking._check_views
    calls = {"n": 0}

    def fails_frame_5(registrar, fviews, rig_to_world, start):
        out = real(registrar, fviews, rig_to_world, start)
        if torch.equal(torch.as_tensor(fviews[0][0]), target):
            calls["n"] += 1
            return Confidence(0.30, "failed", "test: fails frame 5", {}, 0.0)
        return out

    monkeypatch.setattr(tracking, "_check_views", fails_frame_5)
    start = perturb_pose(truth[0], iso, 1.0, 3.0, torch.Generator().manual_seed(1))[0]
    out = track_sequence(reg, None, start=start, views=views)
    assert calls["n"] >= 1
    assert not out[5].reinitialised and out[5].verdict == "uncertain" and out[5].vouched, (out[5].verdict, out[5].reason)
    fid = iso[None] + torch.tensor([[40.0, 0, 0], [0, 40, 0], [0, 0, 40], [-30, -30, 10]], dtype=F64)
    e = float(pose_errors(out[5].camera_to_world, truth[5], fid, sdr=510.0)["mtre"])
    assert e < 2.0, e


def test_cli_track_a_biplane_sequence_whose_frame_times_disagree_is_refused(tmp_path, capsys):
    """Cines of other frame rates (15 vs 30 frames/s) with one frame count: frame n is not one moment in both views,
    yet they were tracked as one and only the first view's times written."""
    from xraypose.cli import main
    from xraypose.cli.track import read_sequences
    from xraypose.rig import rig_from_carm, write_rig
    from xraypose.xray import write_dicom_xray

    cam = Camera(sdd=1020.0, height=32, width=32, delx=8.0)
    write_rig(tmp_path / "rig.json", rig_from_carm({"cam01": (0.0, 0.0), "cam02": (90.0, 0.0)}, sod=612.0))
    px = np.stack([np.full((32, 32), 100 * i + 7) + np.arange(32)[None] for i in range(4)]).astype(np.uint16)
    for n, ms in (("cam01", "66.7"), ("cam02", "33.3")):
        write_dicom_xray(tmp_path / f"{n}.dcm", px, camera=cam, extra={"FrameTime": ms})
    views = [str(tmp_path / "cam01.dcm"), str(tmp_path / "cam02.dcm")]
    code = main(["track", "sample", *views, "--rig", str(tmp_path / "rig.json"), "-o", str(tmp_path / "o"),
                 "--init", "ap"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the views' frame times disagree: frame 3 is at 0.2001 s in cam01 but 0.0999 s in cam02" in err, err
    assert not (tmp_path / "o").exists()
    write_dicom_xray(tmp_path / "cam02.dcm", px, camera=cam, extra={"FrameTime": "66.5"})  # within half a frame
    write_dicom_xray(tmp_path / "cam01.dcm", px, camera=cam)  # no times: the other view's are the sequence's
    names, seqs, *_ = read_sequences(views, str(tmp_path / "rig.json"), {})
    assert names == ["cam01", "cam02"] and seqs[0].times is None and seqs[1].times is not None


def test_cli_track_writes_the_trajectory_when_the_overlay_cannot_be_made(tmp_path, monkeypatch, capsys):
    """The overlay (every frame's picture, held in memory) ran out of memory after a long sequence was tracked:
    the trajectory was lost with it.  Now it is written, an earlier run's overlay removed, a warning printed."""
    import xraypose.cli.track as track
    from xraypose.register.tracking import FrameResult

    def no_memory(*a, **k):
        raise MemoryError("cannot allocate 3.2 GiB")

    out = tmp_path / "out"
    out.mkdir()
    eye = torch.eye(4, dtype=F64)
    res = [FrameResult(index=i, camera_to_world=eye, predicted=eye, similarity=0.9, status="converged", seconds=0.1)
           for i in range(2)]
    doc = {"summary": {"verdicts": {"ok": 2, "uncertain": 0, "failed": 0}, "reinitialised": 0, "seconds": 0.2,
                       "frames_per_second": 10.0, "median_seconds": 0.1}}
    views = [(torch.zeros(2, 1, 16, 16), None, eye, None)]
    monkeypatch.setattr(track, "_overlay_gif", lambda *a, **k: b"GIF89a earlier")
    track._write(out, res[:1], None, ["frames"], [eye], "camera_to_world", doc, None, "linear", views)
    assert (out / "overlay.gif").exists()
    capsys.readouterr()
    monkeypatch.setattr(track, "_overlay_gif", no_memory)
    track._write(out, res, None, ["frames"], [eye], "camera_to_world", doc, None, "linear", views)  # a re-run
    text = capsys.readouterr()
    assert "warning: overlay.gif not written (MemoryError: cannot allocate 3.2 GiB); the trajectory is" in text.err
    assert "wrote " + str(out) + "/trajectory.csv, trajectory.json: 2 ok" in text.out
    assert len(json.loads((out / "trajectory.json").read_text())["frames"]) == 2
    assert (out / "trajectory.csv").read_text().count("\n") == 3 and not (out / "overlay.gif").exists()


def test_a_frame_whose_structure_moved_is_registered_again_with_its_weights_drawn_at_the_result():
    """Weights that follow the pose (a structure's footprint) are drawn at a frame's start; a result that moved more
    than REWINDOW_MM from there is registered once more from itself with the weights drawn there (the real wrist:
    7 -> 12 of 12 frames within 2 mm / 2 deg, docs/wrist.md).  Not for weights that do not follow the pose, nor for
    a result that stayed."""
    from types import SimpleNamespace

    from xraypose.register import tracking as TR

    def shifted(T, mm):
        out = T.clone()
        out[:3, 3] += torch.tensor([mm, 0.0, 0.0], dtype=torch.float64)
        return out

    class FakeRegistrar:
        isocenter = torch.zeros(3, dtype=torch.float64)
        config = SimpleNamespace(motion_radius_mm=100.0)

        def __init__(self, move_mm):
            self.move_mm, self.calls = move_mm, []

        def register_views(self, fviews, T0, curvature=None):
            self.calls.append((T0[0].clone(), [v[3] for v in fviews], curvature))
            return SimpleNamespace(poses=shifted(T0[0], self.move_mm if len(self.calls) == 1 else 0.0)[None])

    drawn = []

    def follow(f, T):  # a footprint that follows the pose
        drawn.append(T.clone())
        return torch.ones(8, 8)

    T0 = torch.eye(4, dtype=torch.float64)
    frames = torch.zeros(2, 1, 8, 8)
    views = [(frames, None, None, follow)]
    reg = FakeRegistrar(move_mm=10.0)
    res, chk = TR._register_frame(reg, 1, T0, [{"H": 1}], views=views, confidence=False)
    assert len(reg.calls) == 2 and chk is None
    assert torch.equal(reg.calls[0][0], T0) and torch.equal(reg.calls[1][0], shifted(T0, 10.0))
    assert torch.equal(drawn[0], T0) and torch.equal(drawn[1], shifted(T0, 10.0))  # weights drawn at the result
    assert reg.calls[1][2] is None  # the first pass's curvature belongs to the old weights
    assert torch.equal(res.poses[0], shifted(T0, 10.0))
    # a result that stayed within REWINDOW_MM: one pass
    reg = FakeRegistrar(move_mm=0.5 * TR.REWINDOW_MM)
    TR._register_frame(reg, 1, T0, None, views=views, confidence=False)
    assert len(reg.calls) == 1
    # weights that do not follow the pose (a frame's own mask): one pass however far it moved
    reg = FakeRegistrar(move_mm=50.0)
    TR._register_frame(reg, 1, T0, None, views=[(frames, None, None, torch.ones(2, 1, 8, 8))], confidence=False)
    assert len(reg.calls) == 1


def test_a_frame_whose_structure_moved_is_checked_with_its_weights_drawn_at_the_result(monkeypatch):
    """The check of a frame weighs it where the registration that gave the result did — that registration's own
    start (``initial_poses``): the frame's start, or the first pass's result when the frame was registered again
    there (_register_frame); the start the check is given stays the frame's.  Weights that do not follow the pose
    are the frame's own either way."""
    from types import SimpleNamespace

    from xraypose.register import tracking as TR

    seen = []
    monkeypatch.setattr(TR, "_check", lambda reg, img, cam, poses, starts, masks: seen.append((starts, masks)) or None)

    def follow(f, T):  # weights that read where they were drawn: the pose's x translation
        return torch.full((8, 8), float(T[0, 3]))

    def at(x):
        T = torch.eye(4, dtype=torch.float64)
        T[0, 3] = x
        return T

    T0 = at(0.0)
    views = [(torch.zeros(2, 1, 8, 8), None, None, follow)]
    for weighed_at in (10.0, 0.0):  # registered again from the first pass's result 10 mm on, or once from T0
        TR._check_frame(None, 1, SimpleNamespace(poses=at(10.5)[None], initial_poses=at(weighed_at)[None]), T0,
                        views=views)
        starts, masks = seen[-1]
        assert torch.equal(starts[0], T0) and float(masks.mean()) == weighed_at
    own = torch.rand(2, 1, 8, 8)
    TR._check_frame(None, 1, SimpleNamespace(poses=at(50.0)[None], initial_poses=at(50.0)[None]), T0,
                    views=[(torch.zeros(2, 1, 8, 8), None, None, own)])
    assert torch.equal(seen[-1][1], own[1:2])


def test_the_smoother_fits_the_motion_noise_to_the_sequence(volume, sequence, monkeypatch):
    """track_sequence(fit_motion=True, the default): the smoother's model is fitted to the sequence's innovations
    (motion.fit_noise; here with the minimum number of innovations lowered to this short sequence's) and every
    frame says what was chosen; fit_motion=False smooths with the model as given and says nothing."""
    from xraypose.preprocess import preprocess
    from xraypose.register import motion as M

    pres = [preprocess(r, sequence["camera"], blur=(5, 1.0), log=True, i0=sequence["i0"], rescale=True)
            for r in sequence["raws"]][:JUMP_AT]
    frames = torch.stack([p.image for p in pres])[:, None]
    cam = pres[0].camera
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    monkeypatch.setattr(M, "FIT_MIN_INNOVATIONS", 1)
    seen = []
    real = M.fit_noise

    def spy(filt, *a, **k):
        out = real(filt, *a, **k)
        seen.append(out[1])
        return out

    monkeypatch.setattr("xraypose.register.tracking.fit_noise", spy)
    fitted = track_sequence(reg, frames, cam, sequence["start"], confidence=False, tracking_levels=WEAK)
    assert len(seen) == 1 and seen[0] is not None and seen[0]["innovations"] == JUMP_AT - 1
    assert fitted.motion_fit == seen[0] and all("motion_fit" not in fr.extra for fr in fitted)  # once, not per frame
    fixed = track_sequence(reg, frames, cam, sequence["start"], confidence=False, tracking_levels=WEAK,
                           fit_motion=False)
    assert len(seen) == 1 and fixed.motion_fit is None
    # the same registrations either way; only the smoother's estimate may differ
    for a, b in zip(fitted, fixed):
        assert torch.allclose(a.registered, b.registered)


def test_a_resume_with_a_predicted_blur_gives_the_uninterrupted_sequence(volume, smooth_sequence):
    """``resume`` with a blur predicted along the way (a callable ``blur``, predicted again after 1.2° of turn: every
    second frame of a sequence turning 0.8° a frame): the checkpoints of frames 0–2 given back rebuild the
    coefficient held and where it was predicted, and frames 3–6 come out as in the run that was never stopped —
    poses, coefficients and the predictions made (in order: the overlapped check's first frame after a resume is
    documented to differ)."""
    frames, cam = _preprocessed(smooth_sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    seen = []

    def predictor(T):  # a coefficient that follows the pose, so that each prediction differs
        seen.append(T.clone())
        return -0.01 - 0.001 * float(T[0, 3] % 7.0)

    records = []
    whole = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=False, blur=predictor,
                           blur_turn_deg=1.2, checkpoint=records.append)
    n_whole = len(seen)
    assert 3 <= n_whole < len(whole) and len({fr.blur_coefficient for fr in whole}) >= 3  # not at every frame
    resumed = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=False, blur=predictor,
                             blur_turn_deg=1.2, resume=records[:3])
    assert len(seen) - n_whole == n_whole - _predictions_before(records, 3)  # only the predictions after frame 2
    for a, b in zip(whole, resumed):
        assert a.blur_coefficient == b.blur_coefficient, (a.index, a.blur_coefficient, b.blur_coefficient)
        assert torch.allclose(a.camera_to_world, b.camera_to_world, atol=1e-9), a.index


def _predictions_before(records: list, k: int) -> int:
    """How many blur predictions the first ``k`` checkpoints record (the distinct poses predicted at)."""
    at = {tuple(map(tuple, r["blur"]["predicted_at"])) for r in records[:k] if r["blur"]["predicted_at"] is not None}
    return len(at)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_prediction_that_sees_no_ct_is_re_initialised(volume, smooth_sequence, monkeypatch, overlap):
    """Frame 3's prediction moved 3 m along the beam (the CT out of view: its registration is an ``invalid start``):
    the frame is re-initialised from the last trusted pose with the whole schedule and registered right, in
    order and with the check beside the next frame; the frames after it are tracked as usual."""
    import xraypose.register.tracking as tracking

    frames, cam = _preprocessed(smooth_sequence)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0, record_trajectory=False))
    real = tracking._SequenceTracker.predict

    def far_at_3(self, f):
        T = real(self, f)
        if f != 3:
            return T
        far = T.clone()
        far[:3, 3] = far[:3, 3] + 3000.0 * far[:3, 2]  # 3 m along the camera's +z: the CT behind the source
        return far

    monkeypatch.setattr(tracking._SequenceTracker, "predict", far_at_3)
    out = track_sequence(reg, frames, cam, smooth_sequence["start"], overlap_check=overlap)
    assert out[3].reinitialised and float((out[3].predicted[:3, 3] - out[2].camera_to_world[:3, 3]).norm()) > 2000
    for f in range(7):
        err = float(pose_errors(out[f].camera_to_world, smooth_sequence["poses"][f], smooth_sequence["fid"], cam)["mtre"])
        assert err < 2.0, (f, err)
    assert not any(fr.reinitialised for fr in out[:3] + out[4:]), [fr.reinitialised for fr in out]
