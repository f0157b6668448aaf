"""The hypotheses on two threads (``register_xray(..., parallel_hypotheses=True)``) give the results of trying
them one after the other: the same entries in the same order, the same numbers, the same kept pose."""

import pytest
import torch
from test_structure import _cube_case

F64 = torch.float64


def _block_case():
    """test_structure's block (600 mm from the source of a 64² camera) 1.4 mm off its pose, and an X-ray of noise
    that the block does not explain (so that no result is ``ok`` and every hypothesis runs)."""
    vol, cam, T, _ = _cube_case()
    T = T.clone()
    T[:3, 3] += torch.tensor([1.0, -1.0, 0.0], dtype=F64)
    noise = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    return vol, cam, T, noise


def _entries(out):
    return [(h["start"], h["verdict"], h["p_success"], h["similarity"], h["p_ranked"])
            for h in out.confidence["hypotheses"]]


@pytest.mark.parametrize("part", [True, False], ids=["part", "whole CT"])
def test_hypotheses_on_two_threads_give_the_results_of_one(part):
    """A part (capture and metal schedule from the given start) and a whole CT (intensities matched, capture, metal,
    scatter): every hypothesis runs (noise: nothing is ok), on one thread and on two, with the same numbers."""
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import _given_start_plans, register_xray
    from xraypose.structure import part_settings

    vol, cam, T0, noise = _block_case()
    cfg = RegistrationConfig(**part_settings({"num_threads": 1}, "raw")) if part else RegistrationConfig(num_threads=1)
    plans = [name for name, _ in _given_start_plans(cfg, [])]
    assert len(plans) == (2 if part else 4), plans
    outs = [register_xray(vol, noise, cam, T0[None], registrar=Registrar(vol, cfg), hypotheses=True,
                          parallel_hypotheses=parallel)[0] for parallel in (False, True)]
    one, two = (_entries(o) for o in outs)
    assert [e[0] for e in one][-len(plans):] == plans  # every given-start hypothesis ran, in order
    assert one == two
    assert torch.equal(outs[0].camera_to_world, outs[1].camera_to_world)
    assert (outs[0].verdict, outs[0].confidence["kept"]) == (outs[1].verdict, outs[1].confidence["kept"])


def test_a_result_that_is_ok_stops_the_hypotheses_on_two_threads_as_on_one(monkeypatch):
    """When an alternative's result is ``ok`` the given start's other registrations are not taken (they run only while
    no result is ok): on two threads the ones started ahead are dropped, and the entries are those of one thread."""
    import xraypose.register.confidence as confidence
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray

    real = confidence.assess

    def assess(reg, imgs, camera, poses, **kw):  # the alternatives' batch (three X-rays) is ok, the rest as measured
        out = real(reg, imgs, camera, poses, **kw)
        if imgs.shape[0] > 1:
            for c in out:
                c.verdict, c.p_success = "ok", 0.99
        return out

    monkeypatch.setattr(confidence, "assess", assess)
    vol, cam, T0, noise = _block_case()
    cfg = RegistrationConfig(num_threads=1)
    outs = [register_xray(vol, noise, cam, T0[None], registrar=Registrar(vol, cfg), hypotheses=True,
                          parallel_hypotheses=parallel)[0] for parallel in (False, True)]
    one, two = (_entries(o) for o in outs)
    assert [e[0] for e in one] == ["given start", "antipodal start", "restart 1", "restart 2"], one
    assert one == two


def test_parallel_hypotheses_default_needs_two_cpus_and_one_thread(monkeypatch):
    import xraypose.register.hypotheses as hyp
    from xraypose.errors import InputError
    from xraypose.register import RegistrationConfig, register_xray

    monkeypatch.setattr(hyp.os, "cpu_count", lambda: 2)
    assert hyp.parallel_default(RegistrationConfig(num_threads=1))
    assert not hyp.parallel_default(RegistrationConfig(num_threads=2))  # both cores are the kernel's
    assert not hyp.parallel_default(RegistrationConfig(num_threads=None))  # torch's own setting
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's two processes share the two CPUs
    assert not hyp.parallel_default(RegistrationConfig(num_threads=1))
    monkeypatch.setattr(hyp.os, "cpu_count", lambda: 4)
    assert hyp.parallel_default(RegistrationConfig(num_threads=1))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(hyp.os, "cpu_count", lambda: 1)
    assert not hyp.parallel_default(RegistrationConfig(num_threads=1))
    vol, cam, T0, noise = _block_case()
    with pytest.raises(InputError, match="parallel_hypotheses"):
        register_xray(vol, noise, cam, T0[None], parallel_hypotheses="yes")


def test_run_in_order_takes_the_jobs_wanted_in_order_and_drops_the_rest():
    """Two threads: the jobs wanted come back in the jobs' order whatever order they finish in; after one says stop,
    the later ones are not taken; an error in a job reaches the caller."""
    import threading
    import time

    from xraypose.register.hypotheses import run_in_order

    started = []

    def job(name, seconds):
        def run():
            started.append(name)
            time.sleep(seconds)
            return name.upper(), threading.current_thread().name
        return run

    jobs = [("a", job("a", 0.2)), ("b", job("b", 0.0)), ("c", job("c", 0.0)), ("d", job("d", 0.0))]
    for parallel in (False, True):
        taken = []
        for name, (value, thread) in run_in_order(jobs, lambda n: "C" not in [v for v, _ in taken], parallel, 1):
            taken.append((value, thread))
        assert [v for v, _ in taken] == ["A", "B", "C"]
        assert (taken[0][1] != threading.main_thread().name) == parallel

    def broken():
        raise ValueError("job failed")

    with pytest.raises(ValueError, match="job failed"):
        list(run_in_order([("a", job("a", 0.0)), ("x", broken)], lambda n: True, True, 1))


def test_a_job_no_longer_wanted_stops_when_cancelled():
    """With ``cancel``, a job still running when nothing more is taken is told to stop (the event is set) and the
    pool does not wait out its work; a registrar whose event is set raises RegistrationCancelled at its next
    iteration, and one derived from it too."""
    import threading
    import time

    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.hypotheses import cancellable, run_in_order
    from xraypose.register.optimizer import RegistrationCancelled

    cancel, running = threading.Event(), threading.Event()
    seen = []

    def first():  # returns once the slow job is running (else it could be cancelled before it starts)
        assert running.wait(10.0)
        return "A"

    def slow():  # a registration's loop: it checks the event between iterations
        running.set()
        for _ in range(200):
            if cancel.is_set():
                seen.append("stopped")
                raise RuntimeError("cancelled")
            time.sleep(0.05)
        return "done"

    t0 = time.perf_counter()
    taken = list(run_in_order([("a", first), ("slow", slow)], lambda n: n == "a", True, 1, cancel))
    assert taken == [("a", "A")] and seen == ["stopped"] and cancel.is_set()
    assert time.perf_counter() - t0 < 5.0  # not its 10 s

    vol, cam, T0, noise = _block_case()
    reg = Registrar(vol, RegistrationConfig(num_threads=1))
    assert cancellable(reg, None) is reg
    event = threading.Event()
    own = cancellable(reg, event)
    assert own is not reg and own.cancel is event and reg.cancel is None and own.config == reg.config
    event.set()
    for registrar in (own, own.derive(capture_starts=2)):
        with pytest.raises(RegistrationCancelled):
            registrar.register(noise, cam, T0[None])
    assert reg.register(noise, cam, T0[None]).poses.shape == (1, 4, 4)  # the original is not cancelled
