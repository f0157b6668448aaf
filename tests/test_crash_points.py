"""Hard crashes (a SIGKILL, a power loss) at chosen points of train, evaluate and demo, made deterministic: the
crash is an exception raised (or ``os._exit``) at the k-th call of a function, then the folder is checked and the
command run again as the docs say (``--resume``, or a plain re-run).

Everything is small (the bundled CT, a 32² test backbone, a few steps)."""

from __future__ import annotations

import pytest
from helpers import tiny_train

from xraypose.model import read_checkpoint
from xraypose.train import output_paths, train


def tiny(**run) -> dict:
    """The tests' few seconds of training (tests/helpers.py), validated every step, a checkpoint every second."""
    return tiny_train(**{"val_every_steps": 1, "checkpoint_every_steps": 2, **run})


class Killed(BaseException):
    """A crash at a chosen point (BaseException: no ``except Exception`` of the code under test catches it)."""


# ----------------------------------------------------------------------------- train
def _scripted_validation(monkeypatch, scores):
    """Trainer.validate returns the scores ``scores`` in turn (its other numbers fixed)."""
    from xraypose.train.trainer import Trainer

    it = iter(scores)

    def validate(self):
        s = float(next(it))
        return {"val_median_rot_deg": 1.0, "val_median_trans_mm": 1.0, "val_mean_dgeo_sod_mm": s, "score": s}

    monkeypatch.setattr(Trainer, "validate", validate)



def _killed_after_step(monkeypatch, trainer_class, step: int):
    """The training is killed (:class:`Killed`) once ``step`` steps are done; returns the real ``budget`` to put
    back."""
    real_budget = trainer_class.budget

    def killed(self):
        if self.steps == step:
            raise Killed
        return real_budget(self)

    monkeypatch.setattr(trainer_class, "budget", killed)
    return real_budget

def test_a_resume_keeps_the_better_model_the_killed_run_wrote_after_its_last_checkpoint(tmp_path, sample_ct,
                                                                                        monkeypatch):
    """model.pt is written at each better validation, model.last.pt (whose record of the best a resume reads) every
    few steps: a kill between them left a model.pt better than the state's record, and the resumed run — whose
    validations differ under a time budget or the thread tuner — replaced it with a worse one (here: 5 → 7)."""
    from xraypose.train.trainer import Trainer

    out = tmp_path / "model.pt"
    paths = output_paths(out)
    _scripted_validation(monkeypatch, [10.0, 9.0, 5.0])  # steps 1, 2 (checkpointed with best 9), 3 (model.pt: 5)
    real_budget = _killed_after_step(monkeypatch, Trainer, 3)
    with pytest.raises(Killed):
        train(sample_ct, out, tiny())
    assert read_checkpoint(paths["last"])["step"] == 2 and read_checkpoint(paths["last"])["best"]["score"] == 9.0
    assert read_checkpoint(out)["meta"]["training"]["validation"]["score"] == 5.0
    monkeypatch.setattr(Trainer, "budget", real_budget)
    _scripted_validation(monkeypatch, [7.0, 8.0, 8.0])  # the resumed run's steps 3, 4 and final validation
    r = train(sample_ct, out, None, resume=True)
    assert r.steps == 4
    kept = read_checkpoint(out)["meta"]["training"]
    assert (kept["step"], kept["validation"]["score"]) == (3, 5.0)  # the better model of the killed run
    assert read_checkpoint(paths["last"])["best"] == {"score": 5.0, "step": 3}


def test_a_resume_takes_no_model_of_another_training_or_of_an_earlier_step_as_the_best(tmp_path, sample_ct,
                                                                                         monkeypatch):
    """Only a model.pt of this training written after the checkpoint counts (_best_since_checkpoint)."""
    from xraypose.train.trainer import Trainer

    out = tmp_path / "model.pt"
    paths = output_paths(out)
    _scripted_validation(monkeypatch, [10.0, 9.0])
    real_budget = _killed_after_step(monkeypatch, Trainer, 2)
    with pytest.raises(Killed):
        train(sample_ct, out, tiny())
    monkeypatch.setattr(Trainer, "budget", real_budget)
    # model.pt of another training (another learning rate) that validated better, at a later step
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    _scripted_validation(monkeypatch, [1.0, 1.0, 1.0, 1.0, 1.0])
    cfg = tiny(max_steps=3)
    cfg["optim"]["lr"] = 0.01
    train(sample_ct, other, cfg)
    out.write_bytes(other.read_bytes())
    _scripted_validation(monkeypatch, [7.0, 8.0, 8.0])
    train(sample_ct, out, None, resume=True)
    assert read_checkpoint(out)["meta"]["training"]["validation"]["score"] == 7.0  # beat the state's 9: replaced
    assert read_checkpoint(paths["last"])["best"] == {"score": 7.0, "step": 3}


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from xraypose.datasets import make_example_case

    return make_example_case(tmp_path_factory.mktemp("case") / "mycase", size=48)


EVAL = ["--start", "perturb", "--perturb", "1,2", "--levels", "32", "--size", "48", "--no-pictures", "--quiet"]


_REGISTERED: dict = {}


def _registered_once(mp):
    """register_xray made to register each X-ray once per module (its result kept by the X-ray's bytes): the
    resumes here re-register the same cases, and their hypotheses take seconds."""
    import hashlib

    import xraypose.register.api as api

    real = api.register_xray

    def register_xray(volume, image, *a, **k):
        key = hashlib.sha256(image.detach().cpu().numpy().tobytes()).hexdigest()
        if key not in _REGISTERED:
            _REGISTERED[key] = real(volume, image, *a, **k)
        return _REGISTERED[key]

    mp.setattr(api, "register_xray", register_xray)


@pytest.fixture
def registered_once(monkeypatch):
    _registered_once(monkeypatch)


@pytest.fixture(scope="module")
def evaluated(case, tmp_path_factory):
    """A whole evaluation of ``case`` (its folder: copy it before changing it)."""
    from xraypose.cli import main

    ev = tmp_path_factory.mktemp("evaluated") / "ev"
    with pytest.MonkeyPatch.context() as mp:
        _registered_once(mp)
        assert main(["evaluate", str(case), "-o", str(ev), *EVAL]) == 0
    return ev


def _complete(ev):
    """Every case of the evaluation ``ev`` holds its files, and metrics.csv a row per case."""
    import csv

    rows = list(csv.DictReader(open(ev / "metrics.csv", encoding="utf-8")))
    names = sorted(d.name for d in (ev / "cases").iterdir())
    assert len(rows) == len(names) == 2
    for n in names:
        for f in ("pose.json", "pose.tfm", "landmarks.csv", "result.json"):
            assert (ev / "cases" / n / f).is_file(), (n, f)


def test_an_overwrite_killed_while_it_deletes_the_earlier_evaluation_leaves_a_folder_resume_goes_on_from(
        case, evaluated, registered_once, tmp_path, monkeypatch, capsys):
    """evaluate --overwrite deletes the earlier evaluation's files before registering: deleted in their listing's
    order, a kill part way left case files without run.json (a --resume of the same settings was refused as
    "results without run.json (an older xraypose)") or a case's result.json without its pose.json (a resume kept
    the case, its pose.json gone).  Now each case's result.json goes first and run.json last: whatever the kill's
    moment, --resume completes the evaluation."""
    import shutil
    from pathlib import Path

    from xraypose.cli import main
    from xraypose.evaluate import previous_results, remove_previous_results

    n = len(previous_results(evaluated))  # 4 at the top, 4 a case
    real_unlink = Path.unlink
    for k in (5, n - 1):  # in the listing's order: 5 is run.json and a case's pose.json gone, its result.json not
        ev = tmp_path / f"ev{k}"
        shutil.copytree(evaluated, ev)
        calls = []

        def killed_at_k(self, *a, **kw):
            calls.append(self)
            if len(calls) > k:
                raise Killed
            return real_unlink(self, *a, **kw)

        monkeypatch.setattr(Path, "unlink", killed_at_k)
        with pytest.raises(Killed):
            remove_previous_results(ev)  # as evaluate --overwrite does first
        monkeypatch.setattr(Path, "unlink", real_unlink)
        capsys.readouterr()
        code = main(["evaluate", str(case), "-o", str(ev), *EVAL, "--resume"])
        assert code == 0, (k, capsys.readouterr().err)
        _complete(ev)


@pytest.mark.parametrize("damaged", [b"", b'{"source": "mycase", "cas', b"[1, 2]", b'"run"', b"\xff\xfe"])
def test_a_resume_of_an_evaluation_whose_run_json_is_damaged_is_one_line(case, evaluated, tmp_path, capsys, damaged):
    """run.json is written atomically, but a disk or a hand can still damage it: a resume says so in one line (a
    JSON that was no object escaped as AttributeError)."""
    import shutil

    from xraypose.cli import main

    ev = tmp_path / "ev"
    shutil.copytree(evaluated, ev)
    (ev / "run.json").write_bytes(damaged)
    capsys.readouterr()
    assert main(["evaluate", str(case), "-o", str(ev), *EVAL, "--resume"]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"xraypose: error: cannot resume {ev}: ") and "run.json" in err, err


# ----------------------------------------------------------------------------- temporary files
def test_a_temporary_file_of_this_pid_that_this_process_did_not_make_is_stale(tmp_path):
    """A killed writer's temporary file was recognised by its PID no longer running; in a container xraypose runs
    as the same PID (often 1) every time, so a run killed mid-write left one that every later run took for its
    own write in progress and kept, one more after each kill (a demo's model.last.pt: 78 MB each)."""
    import os

    from xraypose.io import _temp_path, atomic_write_bytes, is_stale_temp_file, remove_stale_temp_files

    earlier = tmp_path / f".model.last.pt.xraypose-{os.getpid()}-0badc0de.tmp"  # an earlier process of our PID
    earlier.write_bytes(b"half a checkpoint")
    mine = _temp_path(tmp_path / "model.pt")  # one this process is writing: kept
    mine.write_bytes(b"a write in progress")
    assert is_stale_temp_file(earlier) and not is_stale_temp_file(mine)
    assert remove_stale_temp_files(tmp_path) == [earlier]
    assert mine.exists()
    earlier.write_bytes(b"half a checkpoint")
    atomic_write_bytes(tmp_path / "model.last.pt", b"whole")  # each write clears its target's
    assert not earlier.exists() and mine.exists()


# ----------------------------------------------------------------------------- demo
def _tiny_demo(monkeypatch):
    """``xraypose demo --fast`` made tiny: the tests' training (:func:`tiny`, a checkpoint every 2 steps, 4 steps)
    and one 64² X-ray."""
    import xraypose.demo as demo
    import xraypose.train as train_module
    from xraypose.train import TrainConfig

    cfg = tiny(checkpoint_every_steps=2)
    real_train = train_module.train

    def tiny_training(ct, output, config=None, **kw):  # (the demo's earlier versions built their config inline)
        return real_train(ct, output, cfg, **kw)

    monkeypatch.setattr(train_module, "train", tiny_training)
    monkeypatch.setattr(demo, "_train_config", lambda s, quiet: TrainConfig.from_dict(cfg), raising=False)
    monkeypatch.setattr(demo.DemoSettings, "fast", classmethod(lambda c: c(train_seconds=30.0, cases=1, xray_size=64)))


def test_a_demo_killed_while_it_trains_resumes_its_training_when_run_again(tmp_path, monkeypatch, capsys):
    """The demo's training (6 minutes) writes model.last.pt as `train` does, but a demo killed late in its
    training trained again from step 0 when run again (the README's one command): now the re-run resumes it
    from the checkpoint, saying so in one line, and a third run reuses the finished training."""
    import json

    from xraypose.cli import main
    from xraypose.train.trainer import Trainer

    _tiny_demo(monkeypatch)
    out = tmp_path / "demo"
    real_budget = _killed_after_step(monkeypatch, Trainer, 3)  # the checkpoint is at step 2
    with pytest.raises(Killed):
        main(["demo", "-o", str(out), "--fast"])
    assert read_checkpoint(out / "model.last.pt")["step"] == 2 and not (out / "report.html").exists()
    monkeypatch.setattr(Trainer, "budget", real_budget)
    capsys.readouterr()
    assert main(["demo", "-o", str(out), "--fast"]) == 0
    said = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "model.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "event" not in r] == [1, 2, 3, 4], rows  # steps 1 and 2 not trained again
    assert {"event": "resume", "step": 2} == {k: v for k, v in rows[2].items() if k != "elapsed_s"}, rows
    assert "resuming the interrupted training of an earlier demo from model.last.pt at step 2" in said, said
    assert rows[-1]["event"] == "end" and (out / "report.html").is_file()
    assert json.loads((out / "summary.json").read_text())["cases"] == 1
    # its manifest lists what it writes: no run.json (evaluate's; a user's there is neither refused nor deleted)
    assert "run.json" not in json.loads((out / ".xraypose-result.json").read_text())["files"]
    (out / "run.json").write_text("mine")
    # run again: the finished training of these settings is reused, not trained again
    before = (out / "model.pt").read_bytes()
    assert main(["demo", "-o", str(out), "--fast"]) == 0
    said = capsys.readouterr().out
    assert "training: reusing model.pt, the finished training of an earlier demo with these settings (4 steps" in said
    assert (out / "model.pt").read_bytes() == before and len((out / "model.log.jsonl").read_text().splitlines()) \
        == len(rows)
    assert (out / "run.json").read_text() == "mine"


def test_an_overwrite_finishes_an_interrupted_write_in_the_folders_it_replaces(evaluated, case, registered_once,
                                                                               tmp_path, monkeypatch, capsys):
    """A rig's joint result (``cases/rig/``) is written as one set, through a journal; a kill part way left the
    journal and its staged files there.  ``evaluate --overwrite`` deleted the earlier evaluation's files but kept
    the journal and the files it names (the stale-file sweep keeps a journal's): the new evaluation's folder held
    a journal that, at the next write or read there, put the killed run's pose.json back.  Now the overwrite
    finishes it first, then deletes its files as the earlier evaluation's: no journal, no staged file, no file of
    the earlier run is left."""
    import shutil

    from test_io_journal import _killed_write

    from xraypose.cli import main
    from xraypose.io import JOURNAL, atomic_write_files, finish_before_reading
    from xraypose.register.api import RESULT_FILES

    ev = tmp_path / "ev"
    shutil.copytree(evaluated, ev)
    rig = ev / "cases" / "rig"
    rig.mkdir()  # an earlier rig evaluation's joint result, and its next write killed part way
    atomic_write_files(rig, {"pose.json": b"old pose", "metrics.json": b"old metrics"}, remove=RESULT_FILES)
    _killed_write(monkeypatch, rig, "views.png", {"pose.json": b"killed pose", "views.png": b"killed views"}, RESULT_FILES)
    assert (rig / JOURNAL).is_file()
    _registered_once(monkeypatch)
    assert main(["evaluate", str(case), "-o", str(ev), *EVAL, "--overwrite"]) == 0, capsys.readouterr().err
    assert sorted(p.relative_to(ev).as_posix() for p in ev.rglob(".*") if p.name != ".xraypose-result.json") == []
    finish_before_reading(rig / "pose.json")  # a later reader there: nothing of the killed run comes back
    assert not rig.exists() or [p.name for p in rig.iterdir() if p.name != ".xraypose-result.json"] == []
    _complete(ev)


def _results(out) -> dict:
    """The demo's results in ``out``: its visible files but the model's (its training's, written as it trains)."""
    from xraypose.train import output_paths

    model = {p.name for p in output_paths("model.pt").values()}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.relative_to(out).as_posix() not in model}


@pytest.mark.parametrize("at", ["cases/000/result.json", "metrics.csv", "summary.json", "report.html",
                                ".xraypose-journal.json"])
def test_a_demo_killed_while_it_writes_its_results_leaves_the_earlier_results_or_its_own_whole(tmp_path, monkeypatch,
                                                                                              at):
    """The demo wrote its results one by one, after deleting the earlier demo's: killed between two files, it left
    cases and a summary without their report, or beside the report of the earlier run.  Now they are written as
    one set: killed at any rename into the folder, the next command there (its check, first) finds the earlier
    demo's results (2 X-rays) whole, or this one's (1 X-ray) whole; and the demo runs there again, reusing its
    training."""
    import json
    import os
    from pathlib import Path

    import xraypose.io as xio
    from xraypose.demo import DemoSettings, run_demo
    from xraypose.io import check_output_folder

    _tiny_demo(monkeypatch)
    out = tmp_path / "demo"
    run_demo(out, DemoSettings(train_seconds=30.0, cases=2, xray_size=64), quiet=True)
    old = _results(out)
    assert "cases/001/pose.json" in old and "report.html" in old
    real_replace, real_unlink, dead = os.replace, xio._unlink_quietly, []

    def replace(src, dst):  # a SIGKILL at the rename onto ``at``: nothing of the demo runs after it
        if dead or Path(dst) == out / at:
            dead.append(dst)
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(xio.os, "replace", replace)
    monkeypatch.setattr(xio, "_unlink_quietly", lambda p: None if dead else real_unlink(p))
    with pytest.raises(Killed):
        run_demo(out, DemoSettings.fast(), quiet=True)
    monkeypatch.setattr(xio.os, "replace", real_replace)
    monkeypatch.setattr(xio, "_unlink_quietly", real_unlink)
    for p in out.rglob(".*.tmp"):  # the killed process's temporary files: an earlier process's now
        xio._OWN_TEMPS.discard(p.name)
    check_output_folder(out)  # what every command does first
    now = _results(out)
    if now != old:  # not the earlier results: this demo's, whole
        assert sorted(now) == sorted(n for n in old if not n.startswith("cases/001/")), sorted(now)
        assert json.loads(now["summary.json"])["cases"] == 1 and now["report.html"] != old["report.html"]
    assert [p.name for p in out.rglob(".xraypose-journal.json")] == []
    summary = run_demo(out, DemoSettings.fast(), quiet=True)  # again: the training reused, the results replaced
    assert summary["cases"] == 1 and sorted(_results(out)) == sorted(n for n in old if not n.startswith("cases/001/"))
    assert not (out / "cases" / "001").exists() and list(out.rglob("*.tmp")) == []
