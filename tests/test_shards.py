"""Evaluation across processes (xraypose.shards): 2 gloo ranks give one process's metrics; resume after a killed rank."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xraypose.shards import Plan, Shards, deal_cases

TIMING = {"init (s)", "opt (s)"}  # the only columns allowed to differ between runs
N_XRAYS = 5


def test_cases_are_dealt_round_robin_and_finished_ones_kept_by_the_lowest_rank_holding_them():
    assert deal_cases(5, [[], []]) == ([[0, 2, 4], [1, 3]], [[], []])
    assert deal_cases(5, [[], [], []]) == ([[0, 3], [1, 4], [2]], [[], [], []])
    # rank 1 holds 1 and 3 (its own disk), rank 0 holds 3 too (a shared disk): 3 is rank 0's to speak for
    assert deal_cases(5, [[3], [1, 3]]) == ([[0, 4], [2]], [[3], [1]])
    assert deal_cases(2, [[0, 1], [0, 1]]) == ([[], []], [[0, 1], []])
    assert deal_cases(1, [[], [], []]) == ([[0], [], []], [[], [], []])


def test_one_process_needs_no_process_group():
    s = Shards()
    assert not s.distributed and s.is_main and s.label("registering") == "registering"
    p = s.plan(3, {1})
    assert p.mine == [0, 2] and p.kept == [1]
    assert s.merge(Path("."), ["a", "b", "c"], {0: "x"}, ()) == {0: "x"}
    assert s.share(7) == 7
    with pytest.raises(ValueError, match="boom"):
        s.check(ValueError("boom"))


def test_ranks_claim_the_next_case_as_they_are_free(monkeypatch):
    """Dynamic sharing: every unfinished case is claimed exactly once, in case order, whoever asks
    (a counter in the group's store); without a store the static round-robin deal."""
    class Store:  # the one call the claims need: an atomic add that returns the new value
        def __init__(self):
            self.n = {}

        def add(self, key, k):
            self.n[key] = self.n.get(key, 0) + k
            return self.n[key]

    store = Store()
    ranks = [Shards(rank=r, world=3) for r in range(3)]
    plan = Shards().plan(7, {2, 5})  # one process: todo = the unfinished cases
    assert plan.todo == [0, 1, 3, 4, 6] and plan.key.startswith("xraypose/evaluate/claims/")
    monkeypatch.setattr(Shards, "_store", staticmethod(lambda: store))
    its = [r.claims(plan) for r in ranks]
    got = {0: [], 1: [], 2: []}
    for who in (0, 1, 1, 1, 2, 0, 2, 1):  # rank 1 is fast: it asks most
        nxt = next(its[who], None)
        if nxt is not None:
            got[who].append(nxt)
    assert got == {0: [0], 1: [1, 3, 4], 2: [6]}
    assert sorted(i for v in got.values() for i in v) == plan.todo
    monkeypatch.setattr(Shards, "_store", staticmethod(lambda: None))
    assert list(Shards(rank=1, world=2).claims(Plan(mine=[1, 3], todo=[0, 1, 2, 3]))) == [1, 3]


def test_another_ranks_error_is_raised_naming_the_rank():
    from xraypose.errors import InputError

    s = Shards(rank=0, world=3)
    s._raise_any([None, None, None])  # all fine: nothing raised
    outcomes = [None, Shards._outcome(InputError("no such file: ct.nii.gz")), Shards._outcome(RuntimeError("x"))]
    with pytest.raises(InputError, match=r"^rank 1: no such file: ct.nii.gz$"):
        s._raise_any(outcomes)  # the first failing rank's, an input error staying one (exit code 2)
    with pytest.raises(RuntimeError, match="rank 2: x"):
        s._raise_any([None, None, outcomes[2]])
    with pytest.raises(InputError, match="rank 3 is not in 0..1"):
        Shards(rank=3, world=2)


# ---------------------------------------------------------------- two gloo ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The example case folder with N_XRAYS X-rays (copies of its lateral view, each started elsewhere)."""
    from xraypose.datasets import make_example_case

    root = make_example_case(tmp_path_factory.mktemp("shards") / "case", size=64)
    poses = json.loads((root / "poses.json").read_text())
    for k in range(1, N_XRAYS - 1):
        shutil.copy(root / "xrays" / "lateral.npy", root / "xrays" / f"lateral{k}.npy")
        shutil.copy(root / "xrays" / "lateral.json", root / "xrays" / f"lateral{k}.json")
        poses[f"lateral{k}.npy"] = poses["lateral.npy"]
    (root / "poses.json").write_text(json.dumps(poses))
    return root


def _evaluate(case, out, shards=None, resume=False, kill_at=None, quiet=True):
    """Evaluate ``case`` at 16 rows from the truth perturbed by 3°, 10 mm; ``kill_at``: SIGKILL this
    process when it starts its X-ray number ``kill_at`` (0-based, among its own)."""
    from xraypose.evaluate import StartRule, evaluate, load_eval_set, perturbed_starts
    from xraypose.register import RegistrationConfig, levels_for_sizes

    ev = load_eval_set(case, size=32)
    rule = perturbed_starts(3.0, 10.0, ev.isocenter)
    if kill_at is not None:
        started, perturbed = [], rule

        def start(c, i):
            if len(started) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            started.append(i)
            return perturbed(c, i)

        rule = StartRule(start, perturbed.label)
    cfg = RegistrationConfig(levels=levels_for_sizes([16]), num_threads=1, drr_blur=ev.blur_px)
    return evaluate(ev, out, rule, config=cfg, start_label=rule.label, pictures=False, resume=resume, quiet=quiet,
                    shards=shards)


def _rank(rank, world, port, case, outs, resume, kill_rank, kill_at):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    shards = Shards.from_env()
    try:
        summary = _evaluate(Path(case), Path(outs[rank]), shards, resume=resume,
                            kill_at=kill_at if rank == kill_rank else None)
        assert summary["n_cases"] == N_XRAYS  # every rank gets rank 0's summary
    finally:
        shards.close()


def _spawn(case, outs, resume=False, kill_rank=None, kill_at=None):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(len(outs), _free_port(), str(case), [str(o) for o in outs], resume, kill_rank, kill_at),
             nprocs=len(outs), join=True)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def one_process(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "eval"
    _evaluate(case, out)
    return out


def _same_results(a: Path, b: Path):
    rows_a, rows_b = _rows(a / "metrics.csv"), _rows(b / "metrics.csv")
    assert len(rows_a) == N_XRAYS and [r["case"] for r in rows_a] == [r["case"] for r in rows_b]
    assert _without_timing(rows_a) == _without_timing(rows_b)  # same numbers, same order, as text
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if "_s" not in k and "stats" != k} == \
           {k: v for k, v in sb.items() if "_s" not in k and "stats" != k}
    for r in rows_a:
        pa, pb = (json.loads((d / "cases" / r["case"] / "pose.json").read_text()) for d in (a, b))
        assert pa["camera_to_world"] == pb["camera_to_world"]


@pytest.mark.slow
def test_two_ranks_without_a_shared_disk_give_one_process_metrics(case, one_process, tmp_path):
    """Each rank writes into its own folder (two machines); rank 0 gathers the other's cases over gloo."""
    outs = [tmp_path / "machine0" / "eval", tmp_path / "machine1" / "eval"]
    _spawn(case, outs)
    _same_results(one_process, outs[0])
    names = [r["case"] for r in _rows(one_process / "metrics.csv")]
    # rank 1's disk holds only the X-rays it claimed (as it was free: which ones varies); rank 0 holds everything
    theirs = sorted(p.name for p in (outs[1] / "cases").iterdir()) if (outs[1] / "cases").is_dir() else []
    assert set(theirs) <= set(names)
    assert not (outs[1] / "metrics.csv").exists()
    for n in names:
        for f in ("pose.json", "pose.tfm", "landmarks.csv", "result.json"):
            assert (outs[0] / "cases" / n / f).is_file(), (n, f)
    for n in theirs:  # byte for byte what rank 1 wrote
        assert (outs[0] / "cases" / n / "pose.json").read_bytes() == (outs[1] / "cases" / n / "pose.json").read_bytes()
    assert "lateral1.npy" in (outs[0] / "report.html").read_text()


@pytest.mark.slow
def test_resume_after_a_killed_rank_skips_what_any_rank_finished(case, one_process, tmp_path):
    out = tmp_path / "eval"  # one folder for both ranks (a shared disk)
    with pytest.raises(Exception):  # rank 1 is killed as it starts its second X-ray; spawn stops rank 0
        _spawn(case, [out, out], kill_rank=1, kill_at=1)
    names = [r["case"] for r in _rows(one_process / "metrics.csv")]
    finished = [i for i, n in enumerate(names) if (out / "cases" / n / "result.json").is_file()]
    assert finished and len(finished) < N_XRAYS and not (out / "metrics.csv").exists()  # rank 1's first, at least
    k = finished[0]
    done = out / "cases" / names[k] / "result.json"
    res = json.loads(done.read_text())
    res["row"]["status"] = "kept-by-resume"  # a registration would overwrite this
    done.write_text(json.dumps(res))
    _spawn(case, [out, out], resume=True)
    rows = _rows(out / "metrics.csv")
    assert rows[k]["status"] == "kept-by-resume"
    rows[k]["status"] = _rows(one_process / "metrics.csv")[k]["status"]
    assert _without_timing(rows) == _without_timing(_rows(one_process / "metrics.csv"))


@pytest.mark.slow
def test_torchrun_two_processes_cli(case, one_process, tmp_path):
    """The documented command: torchrun, 2 processes, one output folder."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "xraypose.cli", "--", "evaluate", str(case), "-o", str(out), "--start", "perturb", "--perturb",
           "3,10", "--levels", "16", "--size", "32", "--no-pictures", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("report:") == 1  # rank 0 alone speaks
    _same_results(one_process, out)
