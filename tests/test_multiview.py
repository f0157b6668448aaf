"""Several views tied by a rig (issue 14): the API (register_rig), the verdict rule, the CLI and its bad input."""

import json
import math

import numpy as np
import pytest
import torch

from xraypose.camera import Camera
from xraypose.metrics import moved_near_isocenter, pose_errors
from xraypose.register import FAST_LEVELS, Registrar, RegistrationConfig
from xraypose.register.cases import perturb_pose
from xraypose.register.confidence import Confidence
from xraypose.register.multiview import ViewImage, combine_confidences, register_rig, write_rig_registration
from xraypose.rig import rig_from_carm, write_rig
from xraypose.volume import load_sample_ct

F64 = torch.float64
PX = 64


@pytest.fixture(scope="module")
def volume():
    return load_sample_ct()


@pytest.fixture(scope="module")
def biplane(volume):
    """Two realistic raw X-rays (AP and LAO 90, 64² px) of one rig pose, the rig and the truth."""
    from xraypose.synthetic import XraySimulator

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=PX, width=PX, delx=280.0 / PX)
    rig = rig_from_carm({"ap.npy": (0.0, 0.0), "lat.npy": (90.0, 0.0)}, sod=612.0,
                        cameras={"ap.npy": cam, "lat.npy": cam})
    frame = torch.eye(4, dtype=F64)
    frame[:3, 3] = iso
    truth = perturb_pose(frame, iso, 3.0, 6.0, torch.Generator().manual_seed(3))[0]
    sim = XraySimulator(volume, cam, supersample=1, photons=1e5, blur_px=0.5)
    raws = [sim(truth @ rig[n].camera_to_rig, generator=torch.Generator().manual_seed(i)).raw[0, 0]
            for i, n in enumerate(rig.names)]
    return {"rig": rig, "truth": truth, "raws": raws, "camera": cam, "iso": iso, "i0": sim.i0}


def _views(b):
    from xraypose.preprocess import preprocess

    out = []
    for n, raw in zip(b["rig"].names, b["raws"]):
        pre = preprocess(raw, b["camera"], blur=(5, 1.0), log=True, i0=b["i0"], rescale=True)
        out.append(ViewImage(n, pre.image, pre.camera, b["rig"][n].camera_to_rig))
    return out


def test_register_rig_recovers_the_rig_pose_and_writes_it(tmp_path, volume, biplane):
    views = _views(biplane)
    truth, iso = biplane["truth"], biplane["iso"]
    start = perturb_pose(truth, iso, 4.0, 12.0, torch.Generator().manual_seed(5))[0]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))
    out = register_rig(volume, views, start, registrar=reg, start_view=1, true_rig_to_world=truth)
    fid = iso[None] + torch.tensor([[40.0, 0, 0], [0, 40, 0], [0, 0, 40], [-30, -30, 10]], dtype=F64)
    err = lambda X: float(pose_errors(X, truth, fid, sdr=510.0)["mtre"])  # noqa: E731
    assert err(start) > 8.0
    assert err(out.rig_to_world) < 1.5, err(out.rig_to_world)
    for v in out.views:  # every view's pose is the rig pose times its camera_to_rig
        assert torch.allclose(v.camera_to_world, out.rig_to_world @ v.camera_to_rig, atol=1e-9)
        assert v.verdict in ("ok", "uncertain", "failed") and 0 <= v.p_success <= 1
    assert out.p_success == min(v.p_success for v in out.views)
    assert out.metrics["mtre"] == pytest.approx(out.views[1].metrics["mtre"], rel=1e-6)  # one mTRE for a rigid rig
    files = write_rig_registration(tmp_path / "res", out, images=[v.image for v in views], volume=volume)
    assert {f.name for f in files} == {"pose.json", "metrics.json", "trajectory.json", "views.png"}
    pose = json.loads((tmp_path / "res" / "pose.json").read_text())
    X = torch.tensor(pose["rig_to_world"], dtype=F64)
    assert torch.allclose(X, out.rig_to_world) and pose["start_view"] == "lat.npy"
    assert [v["name"] for v in pose["views"]] == ["ap.npy", "lat.npy"]
    assert torch.allclose(torch.tensor(pose["views"][0]["camera_to_world"], dtype=F64) @
                          torch.tensor(pose["views"][0]["world_to_camera"], dtype=F64), torch.eye(4, dtype=F64),
                          atol=1e-9)
    tr = json.loads((tmp_path / "res" / "trajectory.json").read_text())
    assert tr["records"] and "rig_to_world" in tr["records"][0]


def test_register_rig_tries_hypotheses_when_not_ok(tmp_path, volume, biplane):
    """A rig started from the other side of the patient (the start view's antipodal pose): the joint
    registration stays there and is not ok; the antipodal hypothesis, registered jointly, is kept."""
    from xraypose.register.initializers import antipodal
    from xraypose.register.multiview import rig_start

    views = _views(biplane)
    truth, iso = biplane["truth"], biplane["iso"]
    near = perturb_pose(truth, iso, 2.0, 5.0, torch.Generator().manual_seed(6))[0]
    C0 = biplane["rig"][views[0].name].camera_to_rig
    flipped = rig_start(antipodal(near @ C0, iso)[0], C0)
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))
    fid = iso[None] + torch.tensor([[40.0, 0, 0], [0, 40, 0], [0, 0, 40], [-30, -30, 10]], dtype=F64)
    err = lambda X: float(pose_errors(X, truth, fid, sdr=510.0)["mtre"])  # noqa: E731
    plain = register_rig(volume, views, flipped, registrar=reg, hypotheses=False)
    assert plain.verdict != "ok" and err(plain.rig_to_world) > 20.0 and plain.kept is None
    out = register_rig(volume, views, flipped, registrar=reg)
    assert [h["start"] for h in out.hypotheses][:2] == ["given start", "antipodal start"]
    assert out.hypotheses[0]["verdict"] != "ok"
    assert out.kept != "given start" and out.verdict == "ok" and err(out.rig_to_world) < 1.5, err(out.rig_to_world)
    assert f"kept the {out.kept}'s result" in out.reason
    assert "metal schedule" not in [h["start"] for h in out.hypotheses]  # an alternative was ok: not tried
    # each result's distance from the kept one (rival_verdict): the given start's lies far; none accepted far
    d = {h["start"]: h["from_kept_mm"] for h in out.hypotheses}
    assert d[out.kept] == pytest.approx(0.0, abs=1e-9) and d["given start"] > 20.0
    assert d["given start"] == pytest.approx(moved_near_isocenter(out.rig_to_world, plain.rig_to_world, iso), rel=1e-6)
    assert all(h["verdict"] == "failed" or h["from_kept_mm"] <= 2.0 for h in out.hypotheses)
    assert torch.allclose(out.initial_rig_to_world, flipped, atol=1e-9)  # the start the user gave
    write_rig_registration(tmp_path / "res", out)
    pose = json.loads((tmp_path / "res" / "pose.json").read_text())
    assert pose["kept"] == out.kept and len(pose["hypotheses"]) >= 2 and pose["hypotheses_s"] > 0


def test_a_rigs_kept_result_gives_way_to_an_ok_one_at_the_same_pose(monkeypatch, volume, biplane):
    """The rig's hypotheses follow one view's rules, with a scripted check: the given start's joint result is
    'uncertain' at P 0.99 (as a guard would make it), every later one near the truth 'ok' at P 0.99: an ok
    result within AGREE_MM of it is kept, ok; every tried result records its rig pose and distance."""
    import xraypose.register.confidence as confidence
    from xraypose.register.hypotheses import AGREE_MM

    views = _views(biplane)
    truth, iso = biplane["truth"], biplane["iso"]
    near = perturb_pose(truth, iso, 2.0, 5.0, torch.Generator().manual_seed(6))[0]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))
    calls = []

    def fake_assess_rig(registrar, items, **kw):
        calls.append(1)
        out = []
        for image, camera, pose, start, mask in items:
            C = biplane["rig"][views[len(out)].name].camera_to_rig
            good = moved_near_isocenter(truth @ C, pose, iso) < 2.0
            v = ("uncertain" if len(calls) == 1 else "ok") if good else "failed"
            out.append(Confidence(0.99 if good else 0.01, v, "scripted", {}, 0.0))
        return out

    monkeypatch.setattr(confidence, "assess_rig", fake_assess_rig)
    out = register_rig(volume, views, near, registrar=reg)
    assert out.hypotheses[0]["start"] == "given start" and out.hypotheses[0]["verdict"] == "uncertain"
    assert out.kept != "given start" and out.verdict == "ok", (out.kept, out.verdict, out.reason)
    assert out.hypotheses[0]["from_kept_mm"] <= AGREE_MM
    for h in out.hypotheses:
        P = torch.tensor(h["rig_to_world"], dtype=F64)
        assert h["from_kept_mm"] == pytest.approx(moved_near_isocenter(out.rig_to_world, P, iso), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("all_failed", [False, True], ids=["an alternative ok", "every result failed"])
def test_a_rigs_hypotheses_on_two_threads_give_the_results_of_one(monkeypatch, volume, biplane, all_failed):
    """From the other side of the patient: on one thread and on two the same results are tried, in the same order,
    with the same numbers, and the same one is kept — whether an alternative is ok (the metal schedule, started
    ahead on two threads, is dropped) or every result fails (scripted: the metal schedule is tried too)."""
    import xraypose.register.confidence as confidence
    from xraypose.errors import InputError
    from xraypose.register.initializers import antipodal
    from xraypose.register.multiview import rig_start

    if all_failed:
        monkeypatch.setattr(confidence, "assess_rig", lambda registrar, items, **kw: [
            Confidence(0.01, "failed", "scripted", {}, 0.0) for _ in items])
    views = _views(biplane)
    truth, iso = biplane["truth"], biplane["iso"]
    near = perturb_pose(truth, iso, 2.0, 5.0, torch.Generator().manual_seed(6))[0]
    C0 = biplane["rig"][views[0].name].camera_to_rig
    flipped = rig_start(antipodal(near @ C0, iso)[0], C0)
    outs = [register_rig(volume, views, flipped, registrar=Registrar(volume, RegistrationConfig(
        levels=FAST_LEVELS, drr_blur=1.0, num_threads=1)), parallel_hypotheses=parallel) for parallel in (False, True)]
    starts = [h["start"] for h in outs[0].hypotheses]
    assert ("metal schedule" in starts) == all_failed, starts
    key = lambda o: [(h["start"], h["verdict"], h["p_success"], h["similarity"]) for h in o.hypotheses]  # noqa: E731
    assert key(outs[0]) == key(outs[1])
    assert torch.equal(outs[0].rig_to_world, outs[1].rig_to_world) and outs[0].kept == outs[1].kept
    with pytest.raises(InputError, match="parallel_hypotheses"):
        register_rig(volume, views, flipped, parallel_hypotheses="no")


def test_the_joint_verdict_is_the_least_trusted_views():
    ok = Confidence(0.95, "ok", "fine")
    unc = Confidence(0.6, "uncertain", "the optimum is flat")
    bad = Confidence(0.7, "failed", "the DRR at the result is empty")
    assert combine_confidences(["a", "b"], [ok, ok])[:2] == (0.95, "ok")
    p, v, why = combine_confidences(["a", "b"], [ok, unc])
    assert (p, v) == (0.6, "uncertain") and why == "view b: the optimum is flat"
    p, v, why = combine_confidences(["a", "b", "c"], [ok, unc, bad])  # a guard's failure wins over a lower p
    assert (p, v) == (0.6, "failed") and why.startswith("view c: ")
    low_ok = Confidence(0.52, "ok", "fine")  # an uncertain view's reason, not a lower-P ok view's
    p, v, why = combine_confidences(["a", "b"], [low_ok, unc])
    assert (p, v) == (0.52, "uncertain") and why == "view b: the optimum is flat"


def _write_case(d, b, with_cameras=True):
    for n, raw in zip(b["rig"].names, b["raws"]):
        np.save(d / n, raw.numpy().astype(np.float32))
        (d / n).with_suffix(".json").write_text(json.dumps({**b["camera"].to_dict(), "kind": "intensity"}))
    write_rig(d / "rig.json", b["rig"])
    (d / "truth.json").write_text(json.dumps({"rig_to_world": b["truth"].tolist()}))
    start = perturb_pose(b["truth"], b["iso"], 4.0, 12.0, torch.Generator().manual_seed(5))[0]
    (d / "start.json").write_text(json.dumps({"rig_to_world": start.tolist()}))


def _run(args):
    from xraypose.cli import main

    return main(args)


def test_cli_register_with_a_rig(tmp_path, biplane, capsys):
    _write_case(tmp_path, biplane)
    x = [str(tmp_path / n) for n in biplane["rig"].names]
    base = ["register", "sample", *x, "--rig", str(tmp_path / "rig.json"), "--i0", "65000",
            "--true-pose", str(tmp_path / "truth.json")]
    code = _run([*base, "-o", str(tmp_path / "out"), "--pose-json", str(tmp_path / "start.json"), "--fast"])
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    assert "view ap.npy:" in out.out and "verdict:" in out.out
    assert out.out.count("mm along this view's beam") == 2  # each view's spread
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["final"]["mtre"] < 1.5 and m["initial"]["mtre"] > 8.0
    assert (tmp_path / "out" / "views.png").stat().st_size > 1000
    # a start for one view (camera_to_world of lat.npy; start.json held a rig_to_world)
    pose = json.loads((tmp_path / "out" / "pose.json").read_text())
    (tmp_path / "start-lat.json").write_text(json.dumps({"camera_to_world": pose["views"][1]["camera_to_world"]}))
    code = _run([*base, "-o", str(tmp_path / "out2"), "--pose-json", str(tmp_path / "start-lat.json"),
                 "--start-view", "lat.npy", "--no-trajectory", "--levels", "48"])
    assert code in (0, 3), capsys.readouterr().err
    m = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert m["initial"]["mtre"] < 1.5 and m["final"]["mtre"] < 1.5
    assert not (tmp_path / "out2" / "trajectory.json").exists()


def test_cli_rig_bad_input_is_one_line(tmp_path, biplane, capsys):
    _write_case(tmp_path, biplane)
    ap, lat = str(tmp_path / "ap.npy"), str(tmp_path / "lat.npy")
    rig = json.loads((tmp_path / "rig.json").read_text())

    def run(*xrays, rig_doc=None, extra=()):
        p = tmp_path / "r.json"
        p.write_text(json.dumps(rig_doc if rig_doc is not None else rig))
        code = _run(["register", "sample", *xrays, "--rig", str(p), "-o", str(tmp_path / "o"), "--fast",
                     "--pose-json", str(tmp_path / "start.json"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("xraypose: error: "), err
        return err

    assert "names an X-ray that is not given" in run(ap)  # rig.json names lat.npy, not given
    (tmp_path / "other.npy").write_bytes((tmp_path / "ap.npy").read_bytes())
    (tmp_path / "other.json").write_bytes((tmp_path / "ap.json").read_bytes())
    assert "no view for the X-ray" in run(ap, lat, str(tmp_path / "other.npy"))
    sheared = json.loads(json.dumps(rig))
    sheared["views"]["lat.npy"]["camera_to_rig"][0][0] += 0.05
    assert "rigid" in run(ap, lat, rig_doc=sheared)
    # views of different sizes without intrinsics of their own (the files give none either)
    bare = {"views": {k: {"camera_to_rig": v["camera_to_rig"]} for k, v in rig["views"].items()}}
    np.save(tmp_path / "lat.npy", np.ones((PX, PX + 8), np.float32) * 1000)
    (tmp_path / "ap.json").unlink()
    (tmp_path / "lat.json").unlink()
    assert "different sizes" in run(ap, lat, rig_doc=bare)
    # several X-rays without a rig
    code = _run(["register", "sample", ap, lat, "-o", str(tmp_path / "o")])
    assert code == 2 and "--rig" in capsys.readouterr().err


def test_a_rig_views_check_reads_it_through_its_mask(volume, biplane, monkeypatch):
    """register_rig checks every view with the mask it was registered with (a view without one: None)."""
    import xraypose.register.confidence as confidence

    seen = []
    real = confidence.measure_signals

    def spy(*a, masks=None, **k):
        seen.append(None if masks is None else masks.clone())
        return real(*a, masks=masks, **k)

    monkeypatch.setattr(confidence, "measure_signals", spy)
    views = _views(biplane)
    mask = torch.ones(PX, PX)
    mask[:, :12] = 0.0
    views[0] = ViewImage(views[0].name, views[0].image, views[0].camera, views[0].camera_to_rig, mask=mask)
    start = perturb_pose(biplane["truth"], biplane["iso"], 2.0, 5.0, torch.Generator().manual_seed(5))[0]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))
    register_rig(volume, views, start, registrar=reg, hypotheses=False)
    assert len(seen) == 2 and seen[1] is None
    assert seen[0] is not None and torch.equal(seen[0].reshape(PX, PX), mask)


def test_register_rig_refuses_fiducials_in_metres_before_registering(volume, biplane, monkeypatch):
    """Fiducials given in metres (as register_xray refuses them): refused before any registration work,
    naming the fiducials — a rig's mTRE from them was silent and meaningless."""
    from xraypose.errors import InputError

    called = []
    monkeypatch.setattr(Registrar, "register_views", lambda *a, **k: called.append(1))
    fid_m = (volume.get_isocenter().to(F64) / 1000.0) + torch.tensor([[0.0, 0.0, 0.0], [0.02, 0.0, 0.0],
                                                                         [0.0, 0.03, 0.01]], dtype=F64)
    with pytest.raises(InputError, match="fiducials"):
        register_rig(volume, _views(biplane), biplane["truth"], true_rig_to_world=biplane["truth"], fiducials=fid_m)
    assert not called


def test_a_rigs_spread_is_each_views_and_the_second_view_fixes_the_firsts_depth(volume, biplane):
    """Each view of a rig result carries the joint pose's own spread along its beam: a lateral view pins the AP
    view's depth, which the AP view alone sees only as magnification."""
    from xraypose.register.api import register_xray

    views = _views(biplane)
    truth = biplane["truth"]
    reg = Registrar(volume, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))
    out = register_rig(volume, views, truth, registrar=reg, confidence=False)
    for v in out.views:
        assert set(v.spread) == {"along_beam_mm", "across_beam_mm", "rotation_deg", "noise_scale"}
        assert all(math.isfinite(x) and x > 0 for x in v.spread.values())
        assert v.to_dict()["spread"] == v.spread
    ap = views[0]
    alone = register_xray(volume, ap.image, ap.camera, truth @ ap.camera_to_rig, registrar=reg, confidence=False)[0]
    assert alone.spread["along_beam_mm"] > 3 * alone.spread["across_beam_mm"]  # one view: depth is the weak axis
    assert out.views[0].spread["along_beam_mm"] < 0.5 * alone.spread["along_beam_mm"]  # the lateral view fixes it
