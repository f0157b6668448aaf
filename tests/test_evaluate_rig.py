"""``evaluate`` on a case folder with a ``rig.json``: its X-rays registered together as one rig."""

import csv
import json

import pytest
import torch

from xraypose.datasets import make_example_case
from xraypose.errors import InputError
from xraypose.evaluate import RIG_FOLDER, evaluate, load_eval_set
from xraypose.register.starts import perturbed_starts


def _truth(value):
    return value["camera_to_world"] if isinstance(value, dict) else value


@pytest.fixture(scope="module")
def rig_case(tmp_path_factory):
    """The example case (a DICOM at LAO 20° / CAUD 10° and a lateral NPY) with a rig.json whose rig
    frame is the CT's world: camera_to_rig = each view's true pose, so the true rig_to_world is I."""
    root = make_example_case(tmp_path_factory.mktemp("rig") / "case", size=96)
    poses = json.loads((root / "poses.json").read_text())
    (root / "rig.json").write_text(json.dumps({"views": {n: {"camera_to_rig": _truth(T)} for n, T in poses.items()}}))
    return root


def test_a_rig_case_folder_is_registered_jointly(rig_case, tmp_path, monkeypatch):
    es = load_eval_set(rig_case, size=96)
    assert len(es.cases) == 2 and all(c.camera_to_rig is not None for c in es.cases)
    out = tmp_path / "eval"
    summary = evaluate(es, out, perturbed_starts(5.0, 20.0, es.isocenter), start_label="5°/20 mm", quiet=True)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [c.name for c in es.cases]
    assert len({r["similarity"] for r in rows}) == 1 and len({r["verdict"] for r in rows}) == 1  # one joint result
    for r in rows:
        assert float(r["start mTRE (mm)"]) > 5.0 and float(r["mTRE (mm)"]) < 1.0
    pose = json.loads((out / "cases" / RIG_FOLDER / "pose.json").read_text())
    # each view's row has the joint pose's spread along its own beam (the rig's pose.json's, per view)
    sds = [float(r["sd along beam (mm)"]) for r in rows]
    assert sds == pytest.approx([v["spread"]["along_beam_mm"] for v in pose["views"]], rel=1e-6) and min(sds) > 0
    X = torch.tensor(pose["rig_to_world"], dtype=torch.float64)
    assert torch.allclose(X[:3, :3], torch.eye(3, dtype=torch.float64), atol=0.01)  # rad
    assert float(X[:3, 3].norm()) < 1.0  # mm
    assert len(pose["views"]) == 2 and (out / "cases" / RIG_FOLDER / "views.png").is_file()
    assert summary["n_cases"] == 2 and sum(summary["verdicts"].values()) == 2
    assert "every view: X-ray, DRR at the joint result" in (out / "report.html").read_text()  # views.png, embedded
    # a resume reads both views back: no registration runs
    import xraypose.register.multiview as mv

    monkeypatch.setattr(mv, "register_rig", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-registered")))
    again = evaluate(es, out, perturbed_starts(5.0, 20.0, es.isocenter), start_label="5°/20 mm", quiet=True,
                     resume=True)
    assert again["median_mtre_mm"] == summary["median_mtre_mm"]


def test_rig_json_must_name_the_case_folders_xrays(rig_case, tmp_path):
    import shutil

    bad = tmp_path / "case"
    shutil.copytree(rig_case, bad)
    doc = json.loads((bad / "rig.json").read_text())
    doc["views"]["missing.dcm"] = next(iter(doc["views"].values()))
    (bad / "rig.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="missing.dcm"):
        load_eval_set(bad, size=96)


def test_a_rig_is_not_sharded(rig_case, tmp_path):
    from xraypose.shards import Shards

    es = load_eval_set(rig_case, size=96)
    with pytest.raises(InputError, match="one process"):
        evaluate(es, tmp_path / "e", perturbed_starts(5.0, 20.0, es.isocenter), quiet=True,
                 shards=Shards(rank=0, world=2))


def test_a_views_intrinsics_in_rig_json_come_before_the_xray_files(rig_case, tmp_path):
    """As ``register --rig`` takes them: evaluate ignored rig.json's intrinsics (the sidecar's were registered with,
    silently) and let a view of another size than its X-ray pass."""
    import shutil

    case = tmp_path / "case"
    shutil.copytree(rig_case, case)
    doc = json.loads((case / "rig.json").read_text())
    side = json.loads((case / "xrays" / "lateral.json").read_text())
    doc["views"]["lateral.npy"]["camera"] = {"sdd_mm": side["sdd_mm"] + 50.0, "delx_mm": side["delx_mm"],
                                             "height": 96, "width": 96 + 16}
    (case / "rig.json").write_text(json.dumps(doc))
    es = load_eval_set(case, size=None)
    assert [c.camera.sdd for c in es.cases if c.name == "lateral.npy"] == [side["sdd_mm"] + 50.0]
    doc["views"]["lateral.npy"]["camera"]["height"] = 64
    (case / "rig.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"rig.json: key 'views/lateral.npy' describes a 64 × 112 detector but its "
                                         r"X-ray is 96 × 112 pixels"):
        load_eval_set(case, size=None)


def test_an_xray_whose_intrinsics_only_rig_json_gives_needs_no_sidecar(rig_case, tmp_path):
    """``load_case`` read each X-ray before the rig, so an NPY whose intrinsics were in rig.json alone was refused
    for want of a sidecar (although ``register --rig`` takes it); now the rig's intrinsics are its camera, and a
    view left without any is named."""
    import shutil

    from xraypose.datasets import load_case

    case = tmp_path / "case"
    shutil.copytree(rig_case, case)
    side = json.loads((case / "xrays" / "lateral.json").read_text())
    (case / "xrays" / "lateral.json").unlink()
    doc = json.loads((case / "rig.json").read_text())
    with pytest.raises(InputError, match=r"rig.json: no intrinsics for view 'lateral.npy'"):
        load_case(case)
    import numpy as np

    H, W = np.load(case / "xrays" / "lateral.npy").shape
    doc["views"]["lateral.npy"]["camera"] = {**{k: side[k] for k in ("sdd_mm", "delx_mm", "dely_mm", "x0_mm", "y0_mm")},
                                             "height": H, "width": W}
    (case / "rig.json").write_text(json.dumps(doc))
    loaded = load_case(case)
    i = loaded.names.index("lateral.npy")
    assert loaded.rig is not None and loaded.get_camera(i).sdd == side["sdd_mm"]
    assert loaded.get_camera(i).x0 == side["x0_mm"]
    es = load_eval_set(case, size=None)
    assert [c.camera.sdd for c in es.cases if c.name == "lateral.npy"] == [side["sdd_mm"]]
    assert all(c.camera_to_rig is not None for c in es.cases)
