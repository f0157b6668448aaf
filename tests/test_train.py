"""Training: config, augmentations, the loop, checkpoints (atomic, exact resume), errors, DDP (slow)."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from xraypose.augment import Augmenter, AugmentConfig, collimator_mask, draw_tools, random_blur, warp_about_source
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import so3_exp
from xraypose.model import load_checkpoint, predict_pose, read_checkpoint
from xraypose.render import DRR
from xraypose.sampling import PoseSampler
from xraypose.similarity import ncc
from xraypose.train import TrainConfig, TrainingDiverged, WarmupCosine, load_config, output_paths, train
from xraypose.volume import volume_from_array

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"backbone": "test_resnet"},
    "camera": {"height": 32},
    "render": {"n_samples": 16},
    "optim": {"batch_size": 8},
    "data": {"reuse": 2, "buffer_size": 32},
    "run": {"max_steps": 6, "val_size": 8, "val_every_steps": 3, "threads": 1, "progress": False,
            "checkpoint_every_steps": 3},
}


def tiny(**changes) -> dict:
    cfg = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    return cfg


# ----------------------------------------------------------------------------- config
def test_config_toml_round_trip_and_errors(tmp_path):
    p = tmp_path / "train.toml"
    p.write_text('[model]\nbackbone = "resnet10t"\nparameterization = "quaternion"\n'
                 '[optim]\nlr = 0.0005\n[sampler]\nrot_std = [0.1, 0.1, 0.05]\n')
    cfg = load_config(p)
    assert cfg.model.backbone == "resnet10t" and cfg.optim.lr == 0.0005 and cfg.sampler.rot_std == [0.1, 0.1, 0.05]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    fast = TrainConfig.from_dict({"preset": "cpu-fast", "optim": {"lr": 0.002}})
    assert fast.model.backbone == "resnet10t" and fast.camera.height == 48 and fast.optim.lr == 0.002
    p.write_text('preset = "cpu-fast"\n[camera]\nheight = 40\n')
    assert load_config(p).camera.height == 40 and load_config(p).augment.bone_multiplier_log
    bad = [
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"optim": {"batch_size": 0}}, "optim.batch_size"),
        ({"augment": {"bone_multiplier": [5.0, 1.0]}}, "augment.bone_multiplier"),
        ({"model": {"parameterization": "rodrigues"}}, "model.parameterization"),
        ({"camera": {"height": 2}}, "camera.height"),
        ({"sampler": {"sod": 5000.0}}, "sampler.sod"),
        ({"optim": {"nesterov": True}}, "unknown setting optim.nesterov"),
        ({"optimizer": {}}, "unknown table"),
        ({"run": {"max_steps": 1.5}}, "run.max_steps"),
        ({"loss": {"mode": "ncc"}}, "loss.mode"),
        ({"augment": {"tools_prob": 1.5}}, "augment.tools_prob"),
        ({"augment": {"tools_max": 0}}, "augment.tools_max"),
        ({"augment": {"tools_max": 2.5}}, "augment.tools_max"),
    ]
    for d, msg in bad:
        with pytest.raises(InputError, match=msg.replace(".", r"\.")):
            TrainConfig.from_dict(d)
    p.write_text("[model\nbackbone=")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(p)


@pytest.mark.parametrize("value", ["QQQ", "ZYXZ", 5, "", "Zyx"])
def test_model_convention_is_checked_when_the_config_is_read(tmp_path, value):
    """An unknown ``[model] convention`` was taken and failed only once training set the model up, naming no key
    (or, with another parameterization, not at all)."""
    p = tmp_path / "t.toml"
    for par in ("euler_angles", "se3_log_map"):
        p.write_text(f'[model]\nparameterization = "{par}"\nconvention = {json.dumps(value)}\n')
        with pytest.raises(InputError, match="^" + re.escape(f"config: model.convention = {value!r} is not one of: "
                                                             "XYZ, XZY, YXZ, YZX, ZXY, ZYX, XYX, XZX, YXY, YZY, ZXZ, ZYZ")):
            load_config(p)
    for ok in ("ZYX", "zyx", "XYX"):
        p.write_text(f'[model]\nparameterization = "euler_angles"\nconvention = "{ok}"\n')
        assert load_config(p).model.convention == ok


@pytest.mark.parametrize("par", ["se3_log_map", "quaternion"])
def test_a_model_convention_with_another_parameterization_than_euler_angles_is_refused(tmp_path, par):
    """``[model] convention = "XYZ"`` (a valid Euler axis sequence) with parameterization "se3_log_map" was ignored
    without a word: the model trained in se3_log_map.  It is a one-line error naming both fields, as other
    settings that contradict one another (render.n_samples and render.step)."""
    p = tmp_path / "t.toml"
    p.write_text(f'[model]\nparameterization = "{par}"\nconvention = "XYZ"\n')
    with pytest.raises(InputError, match="^" + re.escape(
            f"config: model.convention = 'XYZ' is the axis sequence of Euler angles, but model.parameterization = "
            f"{par!r} (it would be ignored): remove model.convention, or set model.parameterization = "
            "'euler_angles'") + "$"):
        load_config(p)
    p.write_text(f'[model]\nparameterization = "{par}"\n')
    assert load_config(p).model.convention is None


def test_a_render_step_alone_replaces_the_number_of_samples(tmp_path, sample_ct):
    """TOML has no null, so ``[render] step`` alone was refused ("give render.n_samples or render.step, not both":
    the default 64 samples were given too); now the step replaces them.  A step taking over 10⁵ samples a ray is
    refused naming render.step, before anything is rendered."""
    p = tmp_path / "t.toml"
    p.write_text("[render]\nstep = 8.0\n")
    cfg = load_config(p)
    assert cfg.render.step == 8.0 and cfg.render.n_samples is None
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="not both"):
        TrainConfig.from_dict({"render": {"step": 8.0, "n_samples": 32}})
    d = tiny(render__step=8.0, run__max_steps=1)
    del d["render"]["n_samples"]
    assert train(sample_ct, tmp_path / "m.pt", d).steps == 1
    d["render"]["step"] = 1e-6
    with pytest.raises(InputError, match=r"render\.step = 1e-06: .* use a step of at least"):
        train(sample_ct, tmp_path / "m2.pt", d)


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = WarmupCosine(opt, 1e-3, total_steps=100, warmup_frac=0.1)
    lrs = [s.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-5


def test_thread_tuner_keeps_the_faster_count_and_probes_again():
    from xraypose.train import ThreadTuner

    t = ThreadTuner([1, 2], probe=3, hold_s=1.0)
    speed = {1: 0.1, 2: 0.4}  # a busy machine: two threads are slower
    used = []
    for _ in range(30):
        n = t.next_threads()
        used.append(n)
        t.record(n, speed[n])
    assert used[:8] == [1] * 4 + [2] * 4  # probe both
    assert used[8:18] == [1] * 10  # keep the faster for hold_s seconds of steps
    assert 2 in used[18:26]  # then probe again
    while t.queue:
        t.record(t.next_threads(), speed[t.next_threads()])
    assert t.next_threads() == 1
    speed = {1: 0.4, 2: 0.1}  # the load changed: the kept count got 4x slower, so probe at once
    for _ in range(5):
        t.record(1, speed[1])
    assert t.queue
    for _ in range(12):
        n = t.next_threads()
        t.record(n, speed[n])
    assert t.next_threads() == 2


# ----------------------------------------------------------------------------- augmentations
def test_rotation_about_the_source_is_an_exact_pose_change(sample_ct):
    cam = Camera(sdd=1020.0, height=48, width=48, delx=400 / 48)
    drr = DRR(sample_ct, cam, n_samples=96)
    T = PoseSampler.for_volume(sample_ct, sod=612.0).sample(2, torch.Generator().manual_seed(0))
    R = so3_exp(torch.tensor([[0.03, -0.02, 0.08], [-0.02, 0.03, -0.1]], dtype=torch.float64))
    warped, valid = warp_about_source(drr(T), cam, R)
    Rh = torch.eye(4).repeat(2, 1, 1)
    Rh[:, :3, :3] = R.float()
    direct = drr(T @ Rh)
    assert 0.8 < float(valid.float().mean()) < 1.0
    v = valid.float()
    assert float(ncc(warped * v, direct * v).min()) > 0.995
    # a wrong sign of the warp would not match
    wrong, _ = warp_about_source(drr(T), cam, R.transpose(-1, -2))
    assert float(ncc(wrong * v, direct * v).max()) < 0.99


def test_collimator_and_blur():
    g = torch.Generator().manual_seed(0)
    m = collimator_mask(64, 20, 30, prob=1.0, max_frac=0.2, g=g)
    assert m.shape == (64, 1, 20, 30) and not bool(m.all()) and bool(m[:, :, 10, 15].all())
    assert bool(collimator_mask(4, 20, 30, prob=0.0, max_frac=0.2, g=g).all())
    x = torch.rand(4, 1, 16, 16)
    y = random_blur(x, 1.5, 1.0, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and float(y.std()) < float(x.std())
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.05)


def test_tools_are_drawn_as_added_attenuation_reproducibly():
    """draw_tools: metal only adds attenuation (wires, blades), to about the share of images asked for,
    the same from the same seed; prob 0 changes nothing; the Augmenter applies it only when switched on."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 48, 48).cumsum(-1)
    y = draw_tools(x, 0.5, 3, torch.Generator().manual_seed(1))
    assert torch.equal(y, draw_tools(x, 0.5, 3, torch.Generator().manual_seed(1)))
    changed = ((y - x).abs().amax(dim=(1, 2, 3)) > 0)
    assert bool((y >= x).all()) and 10 <= int(changed.sum()) <= 30
    added = (y - x)[changed]
    assert float(added.amax()) > 0.2 * float((x.amax() - x.amin()))  # strong: metal, not texture
    assert torch.equal(draw_tools(x, 0.0, 3, g), x)
    cam = Camera(sdd=1020.0, height=48, width=48, delx=280.0 / 48)
    basis = torch.rand(8, 1, 48, 48).cumsum(-1)
    poses = torch.eye(4, dtype=torch.float64).repeat(8, 1, 1)
    plain = AugmentConfig(source_rotation=False, collimator=False, gamma=False, blur=False, noise=False)
    a = Augmenter(plain, cam, 0.0, 1.0)(basis, poses, torch.Generator().manual_seed(2))
    tools = AugmentConfig(source_rotation=False, collimator=False, gamma=False, blur=False, noise=False,
                          tools=True, tools_prob=1.0)
    b = Augmenter(tools, cam, 0.0, 1.0)(basis, poses, torch.Generator().manual_seed(2))
    assert not torch.equal(a.x, b.x) and torch.equal(a.poses, b.poses)


# ----------------------------------------------------------------------------- training runs
def _trainer(folder, ct, **changes):
    """A set-up :class:`Trainer` on the tiny config, writing into ``folder``."""
    from xraypose.train import Trainer

    folder.mkdir(exist_ok=True)
    return Trainer(TrainConfig.from_dict(tiny(**changes)), output_paths(folder / "m.pt")).setup(ct)


def test_trainer_step_alone_is_one_reproducible_optimiser_step(tmp_path, sample_ct):
    a, b = _trainer(tmp_path / "a", sample_ct), _trainer(tmp_path / "b", sample_ct)
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    out = a.step()
    assert (a.steps, a.images_seen, a.renders, a.buffer.filled) == (1, 8, 4, 4)  # batch 8, reuse 2: 4 fresh renders
    assert set(out["parts"]) == {"loss", "rot_deg", "trans_mm", "dgeo_sod_mm", "se3"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out["parts"].values())
    assert out["lr"] == a.sched.lr_at(0)
    changed = [k for k, v in a.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed  # the step moved the weights
    # a step's data and update depend on (seed, rank, step) only: a second trainer makes the same step
    assert b.step()["parts"] == out["parts"]
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    # a step writes no checkpoint (checkpoints are the loop's business)
    assert not a.paths["best"].exists() and not a.paths["last"].exists()
    a.close()
    b.close()


def test_a_training_killed_before_its_first_checkpoint_says_to_overwrite(tmp_path, sample_ct):
    """Killed before its first checkpoint, a training leaves its log only: the re-run says --overwrite (it said
    --resume, which said "nothing to resume")."""
    out = tmp_path / "m.pt"
    log = output_paths(out)["log"]
    log.write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(InputError, match=r"m.log.jsonl already exists .*no m.last.pt to resume.*give --overwrite") as e:
        train(sample_ct, out, tiny())
    assert "--resume" not in str(e.value)
    with pytest.raises(InputError, match=r"nothing to resume: .*m.last.pt does not exist .*give --overwrite"):
        train(sample_ct, out, tiny(), resume=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.log.jsonl"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a disk that is always full)")
def test_a_full_disk_under_the_log_is_one_error_naming_it(tmp_path, sample_ct):
    """A log row a full disk refuses is an OutputError naming the log, and closing the log does not replace it
    (the CLI printed "No space left on device", naming no file)."""
    from xraypose.io import OutputError

    t = _trainer(tmp_path, sample_ct, run__val_size=0)
    t.log_file = open("/dev/full", "w")  # noqa: SIM115 - its writes fail as on a full disk
    with pytest.raises(OutputError, match=f"cannot write {t.paths['log']}: No space left on device"):
        t.log({"step": 1})
    t.close()  # the unwritten row is dropped, not raised again
    assert t.log_file is None


def test_trainer_budget_fits_the_schedule_to_the_time_left(tmp_path, sample_ct):
    t = _trainer(tmp_path, sample_ct, run__max_steps=1000, run__time_budget_s=1e6)
    t.steps, t.step_times = 50, [1.0] * 20  # measured: 1 s a step (1.05 s with the margin)
    t.t_start, t.elapsed_before = time.perf_counter(), 1e6 - 3.0 - 10.5 * 1.05  # 3 s reserve, 10.5 steps left
    t.budget()
    assert (t.total, t.sched.total_steps, t.stop) == (60, 60, False)
    t.elapsed_before = 1e6 - 3.0 - 0.5 * 1.05  # half a step left: stop
    t.budget()
    assert t.stop
    t.close()


def test_training_writes_usable_model_log_and_state(tmp_path, sample_ct):
    out = tmp_path / "model.pt"
    r = train(sample_ct, out, tiny(loss__param_weight=1.0))
    paths = output_paths(out)
    assert r.steps == 6 and r.images_seen == 48 and r.renders == 24
    for k in ("best", "last", "log"):
        assert paths[k].exists()
    rows = [json.loads(x) for x in paths["log"].read_text().splitlines()]
    steps = [x for x in rows if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("rot_deg", "trans_mm", "dgeo_sod_mm", "se3", "loss", "lr"):
        assert key in steps[0]
    assert "val_median_mtre_mm" in steps[2] and rows[-1]["event"] == "end"
    for p in (paths["best"], paths["last"]):
        torch.load(p, weights_only=True)
    model, meta = load_checkpoint(out)
    assert meta["image_size"] == [32, 32] and meta["parameterization"] == "se3_log_map"
    assert meta["training"]["config"]["model"]["backbone"] == "test_resnet"
    cam = Camera(sdd=1020.0, height=40, width=40, delx=10.0)
    img = DRR(sample_ct, cam, n_samples=32)(torch.tensor(meta["isocenter_pose"], dtype=torch.float32)[None])
    assert predict_pose(model, meta, img, cam).shape == (1, 4, 4)


def test_full_loss_mode_renders_at_the_prediction(tmp_path, sample_ct):
    out = tmp_path / "m.pt"
    seen = []
    train(sample_ct, out, tiny(loss__mode="full", run__max_steps=2, run__val_size=0),
          callback=lambda ev, info: seen.append(info) if ev == "step" else None)
    assert all(0 < s["ncc"] <= 1 for s in seen)
    assert all(s["loss"] > 1 - s["ncc"] for s in seen)


def test_resume_continues_bit_identically(tmp_path, sample_ct):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def keep(event, info):
        if event == "checkpoint" and info["step"] == 3:
            shutil.copy(info["path"], b / "model.last.pt")

    train(sample_ct, a / "model.pt", tiny(loss__param_weight=1.0), callback=keep)
    train(sample_ct, b / "model.pt", None, resume=True)  # the checkpoint's own config
    A = read_checkpoint(a / "model.last.pt")
    B = read_checkpoint(b / "model.last.pt")
    assert A["step"] == B["step"] == 6
    for k, v in A["model"].items():
        assert torch.equal(v, B["model"][k]), k
    sa, sb = A["optimizer"]["state"], B["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    la = [json.loads(x) for x in (a / "model.log.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x) for x in (b / "model.log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [x["loss"] for x in la[3:]] == [x["loss"] for x in lb]
    # Resuming with another configuration is refused (only [run] may change).
    with pytest.raises(InputError, match="different configuration"):
        train(sample_ct, b / "model.pt", tiny(optim__lr=0.01), resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        train(sample_ct, tmp_path / "c.pt", None, resume=True)


def test_finetune_refuses_another_architecture_or_parameterization(tmp_path, sample_ct):
    src = tmp_path / "src.pt"
    train(sample_ct, src, tiny(run__max_steps=1, run__val_size=0))
    with pytest.raises(InputError, match="parameterization"):
        train(sample_ct, tmp_path / "q.pt", tiny(model__parameterization="quaternion"), finetune=src)
    with pytest.raises(InputError, match="backbone"):
        train(sample_ct, tmp_path / "e.pt", tiny(model__backbone="test_efficientnet"), finetune=src)
    r = train(sample_ct, tmp_path / "ok.pt", tiny(run__max_steps=1, run__val_size=0), finetune=src)
    assert r.steps == 1


def test_nan_loss_writes_a_crash_dump_and_stops(tmp_path, sample_ct, monkeypatch):
    import xraypose.geometry as geometry

    real = geometry.double_geodesic
    monkeypatch.setattr(geometry, "double_geodesic", lambda a, b, sdr: real(a, b, sdr) * float("nan"))
    out = tmp_path / "m.pt"
    with pytest.raises(TrainingDiverged, match="diverged at step 0"):
        train(sample_ct, out, tiny())
    dump = read_checkpoint(output_paths(out)["crash"])
    assert dump["images"].shape == (8, 1, 32, 32) and dump["poses"].shape == (8, 4, 4)
    assert "optimizer" in dump and dump["step"] == 0


def test_bad_inputs_are_refused_before_training(tmp_path, sample_ct):
    with pytest.raises(InputError, match="does not exist"):
        train(sample_ct, tmp_path / "nope" / "m.pt", tiny())
    with pytest.raises(InputError, match="is a folder"):
        train(sample_ct, tmp_path, tiny())
    const = volume_from_array(torch.zeros(20, 20, 20).numpy(), spacing=(3.0, 3.0, 3.0))
    with pytest.raises(InputError, match="constant"):
        train(const, tmp_path / "m.pt", tiny())
    small = volume_from_array(sample_ct.data[50:60, 45:55, 50:60].numpy(), spacing=(3.0, 3.0, 3.0))
    with pytest.raises(InputError, match="too small for the field of view"):
        train(small, tmp_path / "m.pt", tiny())
    with pytest.raises(InputError, match="inside the CT"):
        train(sample_ct, tmp_path / "m.pt", tiny(sampler__sod=100.0))
    with pytest.raises(InputError, match="optim.lr"):
        train(sample_ct, tmp_path / "m.pt", tiny(optim__lr=0.0))


WRITER = textwrap.dedent("""
    import sys, torch
    from xraypose.model import save_checkpoint
    path = sys.argv[1]
    i = 1
    while True:
        save_checkpoint(path, {"format": "xraypose.pose_regressor", "version": 1, "model": {},
                               "meta": {"i": i}, "x": torch.full((4_000_000,), float(i))})
        if i == 1:
            print("written", flush=True)
        i += 1
""")


def test_a_kill_mid_write_never_leaves_a_partial_checkpoint(tmp_path):
    """SIGKILL a process that keeps rewriting a 16 MB checkpoint: the file always loads whole."""
    from xraypose.model import save_checkpoint

    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "xraypose.pose_regressor", "version": 1, "model": {}, "meta": {"i": 0},
                           "x": torch.zeros(4_000_000)})
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen = set()
    for delay in (0.0, 0.07, 0.2):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "written"
        time.sleep(delay)  # now somewhere in the middle of a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = read_checkpoint(path)
        x = ck["x"]
        assert x.numel() == 4_000_000 and bool((x == x[0]).all()) and float(x[0]) == ck["meta"]["i"]
        seen.add(ck["meta"]["i"])
    assert len(seen) > 1  # the writer did get to overwrite it


def test_a_few_hundred_steps_reduce_the_error(tmp_path, sample_ct):
    """A tiny problem (narrow pose distribution, 32² images, a tiny network) is learnt."""
    cfg = tiny(run__max_steps=250, run__val_size=32, run__val_every_steps=250, run__checkpoint_every_steps=1000,
               sampler__rot_std=[0.1, 0.1, 0.05], sampler__trans_std=[30.0, 30.0, 40.0], optim__batch_size=16,
               optim__lr=3e-3, loss__param_weight=1.0, data__reuse=4, data__buffer_size=256)
    first = []
    r = train(sample_ct, tmp_path / "m.pt", cfg, callback=lambda ev, info: first.append(info) if ev == "step" else None)
    start = sum(x["dgeo_sod_mm"] for x in first[:10]) / 10
    end = sum(x["dgeo_sod_mm"] for x in first[-20:]) / 20
    assert end < 0.7 * start, (start, end)
    assert r.best_val["val_mean_dgeo_sod_mm"] < 0.8 * start


# ----------------------------------------------------------------------------- distributed (slow)
DDP_SCRIPT = textwrap.dedent("""
    import sys, json
    from xraypose.train import train
    cfg = json.loads(sys.argv[2])
    r = train("sample", sys.argv[1], cfg)
    print("RESULT", r.steps, r.images_seen)
""")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "model.pt"
    cfg = tiny(run__max_steps=4, run__checkpoint_every_steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(out), json.dumps(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("RESULT 4 64") == 2  # 2 processes × 4 steps × 8 images
    ck = read_checkpoint(output_paths(out)["last"])
    assert ck["world_size"] == 2 and ck["buffer"]["images"].shape[0] == 2 and len(ck["rng"]["torch"]) == 2
    model, meta = load_checkpoint(out)
    assert meta["training"]["world_size"] == 2
    # Resume under torchrun continues to more steps.
    cfg["run"]["max_steps"] = 6
    cmd[-1] = json.dumps(cfg)
    script.write_text(DDP_SCRIPT.replace("train(\"sample\", sys.argv[1], cfg)",
                                         "train(\"sample\", sys.argv[1], cfg, resume=True)"))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("RESULT 6 96") == 2


# ----------------------------------------------------------------------------- command line
def _toml(d: dict) -> str:
    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def test_train_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from xraypose.cli.train import train_command

    app = typer.Typer()
    app.command("train")(train_command)
    app.command("other")(lambda: None)  # keep typer in multi-command mode, as in xraypose.cli
    cfg = tmp_path / "t.toml"
    cfg.write_text(_toml(tiny()))
    out = tmp_path / "model.pt"
    r = CliRunner().invoke(app, ["train", "sample", "-o", str(out), "--config", str(cfg), "--steps", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.exists()
    r = CliRunner().invoke(app, ["train", "sample", "-o", str(out), "--resume", "--steps", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(output_paths(out)["last"])["step"] == 3
    r = CliRunner().invoke(app, ["train", "sample", "-o", str(out), "--config", str(cfg), "--preset", "nope"])
    assert isinstance(r.exception, InputError) and "unknown preset" in str(r.exception)
    r = CliRunner().invoke(app, ["train", "sample", "-o", str(out), "--config", str(cfg), "--minutes", "-1"])
    assert isinstance(r.exception, InputError)


def test_resume_names_a_world_size_that_is_not_the_runs(tmp_path, monkeypatch):
    """A checkpoint's ``world_size`` that is not a whole number (an edited file) raised ValueError from int()."""
    from xraypose.train import run
    from xraypose.train.config import TrainConfig

    cfg = TrainConfig()
    last = tmp_path / "model.last.pt"
    last.write_bytes(b"")
    for saved, ok in (("two", False), (2, False), (True, False), (1.0, False), (1, True)):
        monkeypatch.setattr(run, "read_training_state",
                            lambda p, saved=saved: {"config": cfg.to_dict(), "optimizer": {}, "world_size": saved})
        if ok:
            assert run._resume_state(cfg, False, last, 1)[1]["world_size"] == 1
        else:
            with pytest.raises(InputError, match=rf"was written by {saved!r} processes; resume with the same number"):
                run._resume_state(cfg, False, last, 1)
