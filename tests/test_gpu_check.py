"""benchmarks/gpu_check.py: the GPU check's runner, proven on the CPU.

The cheap tests run its machinery (a step killed at its budget keeps what it saved and takes
its child processes with it; a failing step does not stop the next; wheels are installed from
a folder only; the JSON and the table) and the dry run's cheapest step; the whole dry run
(every step on the CPU at tiny sizes, Triton interpreted) is marked slow.
"""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_steps import parse_junit, render_ratios  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_step_past_its_budget_is_killed_with_its_children_and_keeps_its_part(tmp_path):
    part, pidfile = tmp_path / "part.json", tmp_path / "grandchild.pid"
    code = (
        "import json, subprocess, sys, time\n"
        f"json.dump({{'measured': 1.5}}, open({str(part)!r}, 'w'))\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n"
    )
    t = time.perf_counter()
    rec = gpu_check.run_step("demo", [sys.executable, "-c", code], dict(os.environ), 2.0, part, tmp_path / "log")
    assert time.perf_counter() - t < 20
    assert rec["status"] == "timeout" and "budget of 2 s" in rec["error"]
    assert rec["result"] == {"measured": 1.5}  # what the step saved before it was killed
    assert "working" in rec["log_tail"] and "===== step demo" in (tmp_path / "log").read_text()
    pid = int(pidfile.read_text())
    for _ in range(50):  # the grandchild went with its process group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's child process outlived the step")


def test_a_failing_step_reports_its_error(tmp_path):
    part = tmp_path / "part.json"
    code = f"import json, sys; json.dump({{'error': 'RuntimeError: no kernel'}}, open({str(part)!r}, 'w')); sys.exit(1)"
    rec = gpu_check.run_step("demo", [sys.executable, "-c", code], dict(os.environ), 30.0, part, None)
    assert rec["status"] == "failed" and rec["exit_code"] == 1 and rec["error"] == "RuntimeError: no kernel"
    rec = gpu_check.run_step("demo", [sys.executable, "-c", "raise SystemExit('boom')"], dict(os.environ), 30.0,
                             tmp_path / "none.json", None)
    assert rec["status"] == "failed" and "boom" in rec["error"] and rec["result"] == {}


def test_step_budgets_keep_a_reserve_for_later_steps():
    budgets = {"a": 100, "b": 40, "c": 10}
    now = time.time()
    assert gpu_check.step_timeout("a", ["a", "b", "c"], budgets, now + 1000) == 100
    t = gpu_check.step_timeout("a", ["a", "b", "c"], budgets, now + 60)  # keeps 25 (b) + 10 (c)
    assert 24 < t <= 25
    assert gpu_check.step_timeout("c", ["a", "b", "c"], budgets, now + 5) <= 5


def _wheel(folder: Path, module: str, dist: str, value: int) -> Path:
    """A minimal pure-Python wheel holding ``module`` with ``VALUE = value``."""
    w = folder / f"{dist.replace('-', '_')}-0.1-py3-none-any.whl"
    info = f"{dist.replace('-', '_')}-0.1.dist-info"
    files = {f"{module}/__init__.py": f"VALUE = {value}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(w, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return w


def test_install_missing_takes_wheels_from_the_folder_only(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "xrp_probe_mod", "xrp-probe-mod", 42)
    mods = {"xrp_probe_mod": ("xrp-probe-mod", "test"), "xrp_absent_mod": ("xrp-absent-mod", "test"),
            "json": ("json", "present already")}
    res = gpu_check.install_missing(wheels, tmp_path / "site", modules=mods)
    assert res["missing_before"] == ["xrp_probe_mod", "xrp_absent_mod"]
    assert res["pip_exit"] == 0, res["pip_tail"]
    assert res["installed"] == ["xrp_probe_mod-0.1-py3-none-any.whl"]
    assert res["no_wheel"] == ["xrp_absent_mod"] and res["missing_after"] == ["xrp_absent_mod"]
    assert (tmp_path / "site" / "xrp_probe_mod" / "__init__.py").exists()
    import xrp_probe_mod

    assert xrp_probe_mod.VALUE == 42


def test_nvidia_smi_is_read_and_a_refused_field_list_falls_back(tmp_path, monkeypatch):
    from benchmarks.gpu_steps import _nvidia_smi

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *clocks.max.sm*) echo "Field clocks.max.sm is not a valid field" >&2; exit 2;;\n'
        '  *--query-gpu*) echo "NVIDIA H200, 580.159.03, 143771 MiB";;\n'
        '  *) echo "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0 |";;\n'
        "esac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert _nvidia_smi() == {"gpus": [{"name": "NVIDIA H200", "driver_version": "580.159.03",
                                       "memory.total": "143771 MiB"}], "driver_cuda": "13.0"}


def test_parse_junit(tmp_path):
    x = tmp_path / "j.xml"
    x.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_backends" name="test_a" time="0.5"/>'
        '<testcase classname="tests.test_backends" name="test_b" time="1"><failure message="assert 2 == 1">tb'
        '</failure></testcase>'
        '<testcase classname="tests.test_backends" name="test_c" time="0"><skipped message="needs a CUDA GPU"/>'
        '</testcase></testsuite></testsuites>')
    r = parse_junit(x)
    assert r["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert [c["outcome"] for c in r["cases"]] == ["passed", "failed", "skipped"]
    assert r["cases"][1]["message"] == "assert 2 == 1" and r["cases"][2]["message"] == "needs a CUDA GPU"
    assert r["cases"][0]["test"] == "tests.test_backends::test_a"


def test_render_ratios_and_the_table():
    rows = [{"ct": "pelvis", "impl": "ours", "mode": "fwd", "size": 128, "median_s": 0.002},
            {"ct": "pelvis", "impl": "peer", "mode": "fwd", "size": 128, "median_s": 0.010},
            {"ct": "pelvis", "impl": "peer", "mode": "fwdbwd", "size": 128, "median_s": 0.030},
            {"ct": "pelvis", "impl": "ours", "mode": "fwdbwd", "size": 128, "error": "RuntimeError: boom"}]
    ratios = render_ratios(rows, "ours")
    assert len(ratios) == 1 and ratios[0]["other_over_ours"] == pytest.approx(5.0)
    report = {"dry_run": False, "total_s": 12.0, "out": "x.json", "steps": {
        "render": {"status": "ok", "seconds": 3.0, "budget_s": 10, "result": {"rows": rows}},
        "train": {"status": "timeout", "seconds": 10.0, "budget_s": 10, "error": "killed after its budget of 10 s",
                  "result": {"images_per_s": 812.25, "steps": 40, "elapsed_s": 9.0, "bf16_autocast": True}}}}
    text = gpu_check.format_report(report)
    assert "2.000" in text and "10.000 (5.00×)" in text  # ms, and the peer's time over ours
    assert "ours: RuntimeError: boom" in text
    assert "812.2 images/s" in text and "killed after its budget" in text


def test_bad_options_are_one_line_errors(tmp_path):
    for args, what in ((["--set", "nosuch=1"], "no such setting"), (["--set", "sizes=[128"], "not JSON"),
                       (["--wheels", str(tmp_path / "none")], "no such folder")):
        out = _run("--dry-run", "--out", str(tmp_path / "x.json"), *args, timeout=60)
        assert out.returncode == 2 and what in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_steps_run_in_order_and_the_json_is_written_after_each(tmp_path, monkeypatch):
    """main() with its step runner replaced: a failing step does not stop the next, each step finds
    the JSON already holding the steps before it, the exit status is 1, the table is printed."""
    out = tmp_path / "gc.json"
    seen = []

    def fake_run_step(name, cmd, env, timeout, part_path, log_path):
        rep = json.loads(out.read_text())
        seen.append((name, list(rep["steps"]), timeout, "--_step" in cmd and name in cmd))
        if name == "accuracy":
            return {"status": "failed", "seconds": 1.0, "budget_s": timeout, "exit_code": 1, "result": {},
                    "error": "RuntimeError: triton compile failed", "log_tail": ""}
        return {"status": "ok", "seconds": 1.0, "budget_s": timeout, "exit_code": 0,
                "result": {"images_per_s": 99.5, "steps": 3, "elapsed_s": 2.0, "bf16_autocast": False}
                if name == "train" else {}, "error": None, "log_tail": ""}

    monkeypatch.setattr(gpu_check, "run_step", fake_run_step)
    rc = gpu_check.main(["--dry-run", "--steps", "accuracy", "train", "--out", str(out)])
    assert rc == 1
    assert [s[:2] for s in seen] == [("accuracy", []), ("train", ["accuracy"])]
    assert all(s[3] for s in seen) and seen[0][2] <= gpu_check.BUDGETS_DRY["accuracy"]
    rep = json.loads(out.read_text())
    assert rep["steps"]["accuracy"]["status"] == "failed" and rep["steps"]["train"]["status"] == "ok"
    assert rep["finished"] and rep["total_s"] >= 0 and rep["wheels"]["note"] == "no --wheels folder given"


def test_dry_run_env_step_writes_the_json(tmp_path):
    """The dry run's cheapest step, for real (its module list cut to three)."""
    out = tmp_path / "gc.json"
    r = _run("--dry-run", "--steps", "env", "--out", str(out), "--set", 'check_modules=["torch", "numpy", "triton"]')
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert rep["schema"] == gpu_check.SCHEMA and rep["dry_run"] is True and list(rep["steps"]) == ["env"]
    e = rep["steps"]["env"]
    assert e["status"] == "ok" and e["seconds"] > 0 and e["budget_s"] > 0 and e["error"] is None
    res = e["result"]
    import torch

    assert res["torch"] == torch.__version__ and res["modules"]["torch"]["version"]
    assert set(res["modules"]) == {"torch", "numpy", "triton"}
    assert res["cuda_available"] == torch.cuda.is_available()
    assert (res["gpu"] is None) == (not torch.cuda.is_available())
    assert res["auto_backend"]["trilinear"] in ("cpu", "triton", "reference")
    assert "missing_before" in res["wheels"] and res["source_sha256"]["xraypose/render/backends/triton_backend.py"]
    assert "===== step env" in (tmp_path / "gc.steps.log").read_text()
    assert "step      status" in r.stdout and "torch " + torch.__version__ in r.stdout


@pytest.mark.slow
def test_full_dry_run_through_the_wrapper(tmp_path):
    """Every step on the CPU at tiny sizes through benchmarks/gpu_check.sh, as the device runs it."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.log").read_text().strip().endswith(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, {k: (v["status"], v.get("error")) for k, v in rep["steps"].items()}
    assert list(rep["steps"]) == ["env", "tests", "accuracy", "render", "train", "register"]
    s = {k: v["result"] for k, v in rep["steps"].items()}
    assert s["tests"]["counts"]["passed"] >= 2 and s["tests"]["counts"]["failed"] == 0
    assert any("interpreter" in c["test"] and c["outcome"] == "passed" for c in s["tests"]["cases"])
    acc = s["accuracy"]
    assert acc["all_ok"] and {c["volume_dtype"] for c in acc["cases"]} >= {"float32", "bfloat16", "float16"}
    assert all(c["image_rel_err"] < 1e-5 for c in acc["cases"] if "image_rel_err" in c)
    ctx = rep["context"]
    rows = [r for r in s["render"]["rows"] if "median_s" in r]
    assert len(rows) == 2 * len(ctx["impls"]) * len(ctx["modes"]) * len(ctx["sizes"])  # two CTs
    assert all(r["median_s"] > 0 and r["finite"] for r in rows)
    assert {r["ct"] for r in rows} == {"pelvis", "pelvis-x1.25"}
    assert s["render"]["ratios"] and all(x["other_over_ours"] > 0 for x in s["render"]["ratios"])
    assert all(r["ncc_vs_xraypose-triton"] > 0.99 for r in rows if r["mode"] == "fwd" and r["impl"] == "xraypose-cpu")
    assert s["train"]["steps"] >= 1 and s["train"]["images_per_s"] > 0 and s["train"]["bf16_autocast"] is False
    assert len(s["register"]["cases"]) == 2 and s["register"]["median_opt_s"] > 0
    assert rep["total_s"] < rep["budget_s"] + 30
