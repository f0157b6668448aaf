"""Other hypotheses for a registration that is not trusted: the antipodal start and perturbed restarts.

When the confidence check (:mod:`xraypose.register.confidence`) does not give ``ok``, a few
other starts are registered — the start seen from the other side of the patient (AP/PA
confusion, :func:`~xraypose.register.initializers.antipodal`), the result turned and shifted
by a fixed amount in seeded random directions (a local optimum) — and the result with the highest
``p_success`` is kept (:func:`xraypose.register.api.register_xray` does this with
``hypotheses=True``; ranked by the larger of the check's ``p_success`` and its P with scatter modelled on the
DRR, :func:`~xraypose.register.confidence.scatter_aware_p`).  Then, unless a result so far is ``ok``: the given start registered with the
X-ray's intensities matched to the DRR's (:data:`MATCH_HYPOTHESIS`: a display curve), the given start captured from five
starts about it (:data:`CAPTURE_HYPOTHESIS`: a capture that ended at a false optimum), and, when the
schedule is not already robust everywhere, the
given start registered with :func:`~xraypose.register.config.metal_levels` (every level weighs its
pixels robustly: metal or a tool that is not in the CT pulled the capture; ``register --metal``),
and with :func:`~xraypose.register.config.scatter_levels` (every level models smooth additive scatter
on the DRR: the halo of a raw X-ray misled the capture; ``register --scatter``), each unless a
result so far is already ``ok``.  A kept result that is not ``ok`` gives way to an ``ok`` one within
:data:`AGREE_MM` of it (:func:`agreeing_ok`: the same answer).  Last, the kept result's verdict: ``ok``
from the antipodal start needs strong evidence (:func:`mirror_verdict`), and ``ok`` with another result
the check did not reject more than :data:`RIVAL_MM` away is ``uncertain`` (:func:`rival_verdict`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from xraypose._checks import check_flag
from xraypose.register.cases import perturb_pose
from xraypose.register.config import metal_levels, scatter_levels, torch_threads
from xraypose.register.initializers import antipodal

__all__ = ["alternative_starts", "viable_alternatives", "best_hypothesis", "schedule_levels", "kept_reason",
           "mirror_verdict", "capture_hypothesis_config", "HYPOTHESES", "MARGIN", "METAL_HYPOTHESIS",
           "CAPTURE_HYPOTHESIS", "ANTIPODAL_OK", "MATCH_HYPOTHESIS", "match_hypothesis_config",
           "SCATTER_HYPOTHESIS", "SCHEDULE_HYPOTHESES", "RIVAL_MM", "rival_verdict", "agreeing_ok", "AGREE_MM",
           "scatter_note", "SCATTER_NOTE_GAIN", "rivals", "settle_kept", "final_verdict", "VERIFY_P", "to_verify",
           "gate_verdicts", "reached_again", "corroborated_verdict", "run_in_order", "parallel_default", "parallel_choice", "cancellable"]

F64 = torch.float64

#: The alternatives tried, in order: (name, kind, angle °, translation mm); a "perturb" start is the
#: result turned by the angle about a random axis through the isocenter and shifted by the distance.
HYPOTHESES = (
    ("antipodal start", "antipodal", 0.0, 0.0),
    ("restart 1", "perturb", 10.0, 40.0),
    ("restart 2", "perturb", 10.0, 40.0),
)

#: The name of the hypothesis "the given start, every level robust" (tried after :data:`HYPOTHESES`).
METAL_HYPOTHESIS = "metal schedule"

#: The name of the hypothesis "the given start, scatter modelled on the DRR at every level" (tried last):
#: a raw X-ray's scatter halo made the capture prefer poses 76–108 mm from the truth on fresh scatter
#: cases, which the scatter model captured (docs/registration.md, "Scatter modelled on the DRR").
SCATTER_HYPOTHESIS = "scatter modelled"

#: The hypotheses "the given start registered with another schedule", tried in this order after the
#: others (:func:`schedule_levels`): their names and how each schedule is made from the registrar's levels.
SCHEDULE_HYPOTHESES = {METAL_HYPOTHESIS: metal_levels, SCATTER_HYPOTHESIS: scatter_levels}

#: The hypothesis "the given start captured from several starts about it" (``capture_starts``, tried after
#: :data:`HYPOTHESES` when the registrar uses one): a capture can end at a false optimum that a start nearby
#: avoids.  On fresh appearance cases (seed 1) a 10°/40 mm start was lost in every family (67 mm off on the
#: simulator's own X-ray) and the restarts about that result stayed lost, while of five capture starts
#: 5°/20 mm apart one found it.  Its cost: one registration plus four runs of the cheap first level.
CAPTURE_HYPOTHESIS = "five capture starts"
CAPTURE_HYPOTHESIS_STARTS = 5

#: The hypothesis "the given start registered with the X-ray's intensities matched to the DRR's at every
#: level" (``match_capture``, the registrar's own ``match_intensity`` at the finer levels;
#: :mod:`xraypose.register.matching`; tried after :data:`HYPOTHESES`, before the capture hypothesis): a
#: display curve the DRR does not share (a linear LUT shown bone bright, a strong gamma) pulls the
#: capture away.  Not the default: on fresh cases (seed 1) matching at a capture's start 10°/40 mm off
#: lost X-rays that registered without it.
MATCH_HYPOTHESIS = "intensities matched"

#: An alternative replaces the given start's result only if its p_success is higher by this much.
MARGIN = 0.05

#: One view's result kept from the antipodal start is ``ok`` only from this p_success on (else ``uncertain``).
#: The antipodal view sees the anatomy through the same lines from the other side: its DRR is nearly the
#: given view's mirror image, and a nearly mirror-symmetric body (an abdomen, a pelvis) looks alike from both
#: sides.  The check was fitted on registrations near their truth or failed nearby, never on such flips: on
#: the appearance benchmark's fresh cases (seed 1) an abdominal X-ray's antipodal result 305 mm off got P 0.54
#: (`ok` at 0.5).  A rig's second view tells the sides apart: this applies to single views only.
ANTIPODAL_OK = 0.9


#: Two results of one X-ray further apart than this (mm, :func:`~xraypose.metrics.moved_near_isocenter`: the mTRE
#: of one against the other near the isocenter) are two answers; the check's own label is mTRE < 2 mm.
RIVAL_MM = 2.0

#: Two results of one X-ray nearer than this (mm, as :data:`RIVAL_MM`) are the same answer (:func:`agreeing_ok`):
#: about one view's own precision (a 128² low-dose view's depth sd 0.2–0.45 mm, docs/registration.md).  Not
#: :data:`RIVAL_MM`: on the abdomen's low-dose case 2 (seed 1, from its truth) the given start's result lay 0.24 mm
#: from the truth (``uncertain``, P 0.98) and two restarts' ``ok`` results 1.5–1.6 mm from it.
AGREE_MM = 0.5


#: An ``ok`` below this ``p_success`` is verified: the hypotheses run as for a result that is not ``ok`` (every
#: one of them, as if the given start had not been accepted), then the ranking and the verdict rules — a
#: rival the check does not reject more than :data:`RIVAL_MM` away makes it ``uncertain``, a better-ranked
#: result replaces it.  Why: the check's ``ok`` starts at P 0.5, and the far-wrong ``ok`` results seen on the
#: appearance benchmark all read P ≤ 0.70 (pelvis scatter case 5, 72.5 mm at P 0.70, stop 44; two abdominal
#: scatter captures 87.6 and 95.7 mm off at P 0.60 and 0.58 when the schedule or the density changed a little,
#: stop 46), while of the archived runs' 1621 ``ok`` results from P 0.75 on 9 lay 2 mm or more from the truth,
#: none more than 7.6 mm.  Cost: the hypotheses (a few registrations) for the 7 % of ``ok`` results below it
#: (121 of the 1742 archived).  The kept ``ok`` below it must also be reached again (:func:`corroborated_verdict`).
VERIFY_P = 0.75


def to_verify(verdict: str, p_success: float) -> bool:
    """Whether a result's hypotheses are to run: it is not ``ok``, or ``ok`` below :data:`VERIFY_P`."""
    return verdict != "ok" or not p_success >= VERIFY_P


def reached_again(tried, kept: str) -> list:
    """The ``tried`` entries other than the kept one whose result lies within :data:`RIVAL_MM` of it (the same
    answer reached from another start, whatever the check said of it there)."""
    return [t for t in tried if t["start"] != kept and _within(t.get("from_kept_mm"), RIVAL_MM)]


def corroborated_verdict(verdict: str, p_success: float, kept: str, tried) -> tuple[str, str]:
    """(verdict, reason sentence) of a kept ``ok`` below :data:`VERIFY_P` once the hypotheses ran: ``ok`` when
    another start reached the same pose (:func:`reached_again`: a true optimum is a basin that starts 10°/40 mm
    away fall back into), else ``uncertain``.  Seen when ``ok`` results were first verified (appearance
    benchmark, seed 1, 220 registrations, 11 of them verified): the 9 reached again all lay below 0.4 mm of the
    truth; the 2 that no other start reached lay 87.6 mm (abdomen scatter case 5 from 10°/40 mm, P 0.60, every
    other start's result rejected) and 1.67 mm off.  Any other verdict, or P from VERIFY_P on: unchanged, no
    reason."""
    if verdict != "ok" or p_success >= VERIFY_P:
        return verdict, ""
    again = reached_again(tried, kept)
    if again:
        return verdict, f"reached again from {len(again)} other start{'s' if len(again) > 1 else ''}"
    return "uncertain", (f"P {p_success:.2f} is marginal and none of {len(tried) - 1} other starts reached this pose "
                         "again: confirm with a second view or refine on the counts (--counts)")


def gate_verdicts(tried) -> list:
    """The verdicts that decide whether the conditional hypotheses (intensities matched, capture, schedules)
    still run — "unless a result so far is ``ok``": those of ``tried`` (dicts with ``verdict``), the given
    start's (the first) left out when it is an ``ok`` being verified (:func:`to_verify`)."""
    v = [t["verdict"] for t in tried]
    return v[1:] if v and v[0] == "ok" else v


def alternative_starts(start, result, isocenter, seed: int = 0, hypotheses=HYPOTHESES) -> tuple[list, torch.Tensor]:
    """(names, starts (K, 4, 4) float64): the alternatives of :data:`HYPOTHESES` for one X-ray.

    Args:
        start: (4, 4) the start that was registered; result: (4, 4) its result (camera_to_world).
        isocenter: (3,) world mm, the centre of the antipodal turn and of the perturbations.
        seed: seeds the perturbations' directions.
    """
    start = torch.as_tensor(start, dtype=F64).reshape(4, 4)
    result = torch.as_tensor(result, dtype=F64).reshape(4, 4)
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    names, poses = [], []
    for name, kind, deg, mm in hypotheses:
        if kind == "antipodal":
            poses.append(antipodal(start, isocenter)[0])
        else:
            poses.append(perturb_pose(result, isocenter, deg, mm, g)[0])
        names.append(name)
    return names, torch.stack(poses) if poses else torch.empty(0, 4, 4, dtype=F64)


def best_hypothesis(p_given: float, p_alternatives) -> int | None:
    """Index of the alternative to keep, or None for the given start's result: the highest
    ``p_success``, provided it beats the given start's by :data:`MARGIN`."""
    p = list(p_alternatives)
    if not p:
        return None
    k = max(range(len(p)), key=lambda i: p[i])
    return k if p[k] > p_given + MARGIN else None


def viable_alternatives(start, result, camera, isocenter, seed: int = 0) -> tuple[list, torch.Tensor]:
    """(names, starts (K, 4, 4)): :func:`alternative_starts` of one registration, less those from
    which ``camera`` does not see the CT (:func:`~xraypose.register.confidence.sees_ct`)."""
    from xraypose.register.confidence import sees_ct

    names, alts = alternative_starts(start, result, isocenter, seed=seed)
    if not len(names):
        return names, alts
    keep = sees_ct(alts, camera, isocenter)
    return [n for n, k in zip(names, keep.tolist()) if k], alts[keep]


def schedule_levels(name: str, config, verdicts) -> tuple | None:
    """The levels of the schedule hypothesis ``name`` (a key of :data:`SCHEDULE_HYPOTHESES`) made from
    ``config``'s levels, or None when it is not to be registered: ``config.schedule_hypotheses`` leaves it
    out (a part of a CT: no scatter model), a result so far (``verdicts``: the given start's and the
    alternatives') is already ``ok``, or the levels are that schedule already."""
    if name not in config.schedule_hypotheses:
        return None
    schedule = SCHEDULE_HYPOTHESES[name](config.levels)
    if any(v == "ok" for v in verdicts) or schedule == tuple(config.levels):
        return None
    return schedule


def mirror_verdict(verdict: str, p_success: float, kept: str) -> tuple[str, str | None]:
    """(verdict, extra reason or None) of one view's kept result: from the antipodal start, ``ok`` needs
    ``p_success`` ≥ :data:`ANTIPODAL_OK`, else it is ``uncertain`` (see there)."""
    if kept != "antipodal start" or verdict != "ok" or p_success >= ANTIPODAL_OK:
        return verdict, None
    return "uncertain", ("the pose is the given start's view from the other side of the patient, and one X-ray of a "
                         "nearly symmetric body looks alike from both: confirm the side (the C-arm's angles, a second "
                         "view)")


def capture_hypothesis_config(config, verdicts) -> dict | None:
    """``derive`` changes for the capture hypothesis (:data:`CAPTURE_HYPOTHESIS`), or None when it is not
    worth registering: a result so far is ``ok``, the registrar already captures from several starts, or
    its first level is not a capture (Adam) level."""
    if any(v == "ok" for v in verdicts) or config.capture_starts > 1 or not config.levels or \
            config.levels[0].optimizer != "adam":
        return None
    return {"capture_starts": CAPTURE_HYPOTHESIS_STARTS}


def match_hypothesis_config(config, verdicts) -> dict | None:
    """``derive`` changes for the intensity hypothesis (:data:`MATCH_HYPOTHESIS`), or None when it is not
    worth registering: a result so far is ``ok``, the registrar matches its captures already, or matching
    is off (``match_intensity`` None: ``--match-intensity off``, a part of the CT registered)."""
    if any(v == "ok" for v in verdicts) or config.match_capture or config.match_intensity is None:
        return None
    return {"match_capture": True}


def _within(mm, limit: float) -> bool:
    """Whether a distance (mm; None or NaN where it could not be measured) is at most ``limit``."""
    return mm is not None and float(mm) <= limit


def agreeing_ok(kept: int, tried) -> int | None:
    """The index in ``tried`` of an ``ok`` result to keep instead of the kept one (index ``kept``) when that one
    is not ``ok``: the most likely ``ok`` result within :data:`AGREE_MM` of it — the same answer, which the check
    accepts whole where the kept one failed a guard (e.g. its Gauss–Newton step) at a ``p_success`` no more than
    :data:`MARGIN` higher.  None when the kept result is ``ok`` or no ``ok`` result lies that near.
    Seen on the appearance benchmark (pelvis, low dose, seed 1, case 2 from 10°/40 mm): the given start's
    result, ``uncertain`` at P 1.00, kept over the metal schedule's ``ok`` at P 1.00, 0.25 mm from it.

    Args:
        kept: index of the kept result; tried: dicts with ``start``, ``p_success``, ``verdict``, ``from_kept_mm``.
    """
    if tried[kept]["verdict"] == "ok":
        return None
    same = [i for i, t in enumerate(tried) if i != kept and t["verdict"] == "ok" and _within(t["from_kept_mm"], AGREE_MM)]
    return max(same, key=lambda i: tried[i]["p_success"]) if same else None


def rivals(tried, kept: str, mirror: bool = True) -> list:
    """The ``tried`` entries other than the kept one (``start`` ``kept``) that the check did not reject (``ok`` or
    ``uncertain``) and that lie more than :data:`RIVAL_MM` from it (a distance of None or NaN: not
    comparable, a rival) — :func:`rival_verdict`'s and ``views.png``'s (``api.rival_view``).  With ``mirror``
    (one view) the antipodal start's result is a rival only from P :data:`ANTIPODAL_OK`, the evidence it needs
    to be kept (:func:`mirror_verdict`): below it the check cannot tell one X-ray's two sides apart, and the
    side is the start's (the C-arm's angles).  Seen when ``ok`` results were first verified (pelvis display
    case 2 from its truth): the given start's result 0.00 mm from the truth at P 0.72, the antipodal's 175 mm
    off at P 0.73 — without this rule the right answer was ``uncertain``."""
    return [t for t in tried if t["start"] != kept and t["verdict"] in ("ok", "uncertain")
            and not _within(t.get("from_kept_mm"), RIVAL_MM)
            and not (mirror and t["start"] == "antipodal start" and not t["p_success"] >= ANTIPODAL_OK)]


def settle_kept(tried, poses, best: int, isocenter, pose_key: str = "camera_to_world") -> int:
    """The index of the result to keep, given ``best`` (the ranking's) and every result's pose ``poses`` (4, 4)
    (one view's camera_to_world or a rig's rig_to_world, in ``tried``'s order): records in each entry its pose
    (``pose_key``) and ``from_kept_mm`` (:func:`~xraypose.metrics.moved_near_isocenter`; None where a pose is
    not finite: pose.json never holds a NaN), then lets a kept result that is not ``ok`` give way to an ``ok``
    one at the same pose (:func:`agreeing_ok`), the distances recorded again from it."""
    from xraypose.metrics import moved_near_isocenter

    def record(b):
        for t, P in zip(tried, poses):
            finite = bool(torch.isfinite(P).all() and torch.isfinite(poses[b]).all())
            t["from_kept_mm"] = moved_near_isocenter(poses[b], P, isocenter) if finite else None
            t[pose_key] = P.tolist() if finite else None

    record(best)
    same = agreeing_ok(best, tried)
    if same is not None:  # the same answer, accepted by the check whole: kept instead
        record(same)
        return same
    return best


def final_verdict(verdict: str, p_success: float, kept: str, tried,
                  one_view: bool = True) -> tuple[str, str | None, str]:
    """``(verdict, why, note)`` of the kept result once the hypotheses ran — the rules in order, one view's
    and a rig's (``one_view`` False: no mirror rule, the antipodal result a rival like any other, no
    corroboration — not measured on rigs): :func:`mirror_verdict`; if that changed nothing,
    :func:`rival_verdict`; then :func:`corroborated_verdict`.  ``why``: the reason of a changed verdict (None:
    unchanged by the first two), to go before the check's own; ``note``: the corroboration's sentence (or
    ""), to go after it."""
    v, why = mirror_verdict(verdict, p_success, kept) if one_view else (verdict, None)
    if why is None:
        v, why = rival_verdict(verdict, kept, tried, one_view)
    if not one_view:
        return v, why, ""
    v, note = corroborated_verdict(v, p_success, kept, tried)
    return v, why, note


def rival_verdict(verdict: str, kept: str, tried, mirror: bool = True) -> tuple[str, str | None]:
    """(verdict, extra reason or None) of the kept result given the others: an ``ok`` is ``uncertain`` when
    another start's result that the check did not reject (verdict ``ok`` or ``uncertain``) lies more than
    :data:`RIVAL_MM` from it.  Two poses that far apart cannot both be within 2 mm of the truth, yet the
    check finds both plausible: it cannot tell which is right, so it vouches for neither.  Seen on the
    appearance benchmark (pelvis, scatter, seed 1, case 5 started at its truth): the given start's result
    (P 0.65, ``uncertain``) lay near the truth and restart 1's 72.5 mm off (P 0.70, ``ok``, kept).

    Args:
        verdict: the kept result's verdict; kept: its start's name (a ``tried`` entry's ``start``).
        tried: every result of the X-ray (dicts with ``start``, ``p_success``, ``verdict``,
            ``from_kept_mm``: its distance from the kept result, mm).
        mirror: one view (:func:`rivals`: the antipodal start's result needs P :data:`ANTIPODAL_OK`).
    """
    found = rivals(tried, kept, mirror) if verdict == "ok" else []
    if not found:
        return verdict, None
    r = max(found, key=lambda t: t["p_success"])
    far = "an unmeasurable distance" if r.get("from_kept_mm") is None else f"{float(r['from_kept_mm']):.1f} mm"
    return "uncertain", (f"the {r['start']}'s result lies {far} away and the check finds it "
                         f"plausible too (P {r['p_success']:.2f}, {r['verdict']}): two optima explain this X-ray "
                         "about equally — confirm with a second view or refine on the counts (--counts)")


#: :func:`scatter_note`: how much higher (in P) the check with scatter modelled must read than the shipped one.
SCATTER_NOTE_GAIN = 0.3


def scatter_note(verdict: str, p_success: float, p_scatter: float | None) -> str | None:
    """A sentence for the reason of a kept result that is not ``ok`` while the check with scatter modelled on its
    DRR (:func:`~xraypose.register.confidence.scatter_aware_p`) reads it plausible (≥ 0.5) and at least
    :data:`SCATTER_NOTE_GAIN` higher: the X-ray likely carries scatter the check does not model, and the verdict
    may be too strict.  The verdict is not changed (that P is not calibrated).  On the appearance benchmark's
    scattered X-rays (seed 1, stop 45) 10 kept results met this, 9 of them within 2 mm of the truth (one 4.1 mm);
    the 87 mm one did not (0.57 → 0.70).  None otherwise."""
    if verdict == "ok" or p_scatter is None or not p_scatter >= 0.5 or not p_scatter - p_success >= SCATTER_NOTE_GAIN:
        return None
    return (f"with smooth scatter modelled on the DRR the check reads P {p_scatter:.2f}: the X-ray likely carries "
            "scatter this check does not model, and the verdict may be too strict — look at the overlay, refine on "
            "the counts (--counts) or take a second view")


def kept_reason(reason: str, kept: str, p_given: float) -> str:
    """The kept result's reason, saying which start it came from when not the given one."""
    if kept == "given start":
        return reason
    return f"{reason} (kept the {kept}'s result; the given start's had P {p_given:.2f})"


def parallel_default(config) -> bool:
    """Whether the hypotheses run on two threads when not told (``parallel_hypotheses=None``): with two CPUs or more
    for this process — the machine's shared by the processes ``torchrun`` started on it (``LOCAL_WORLD_SIZE``:
    ``xraypose evaluate``'s shards) — and a registration on one thread (``config.num_threads`` 1, the default; with
    more, the kernel has the cores)."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return (os.cpu_count() or 1) // local >= 2 and config.num_threads == 1


def parallel_choice(value, config=None) -> bool:
    """``register_xray``'s and ``register_rig``'s ``parallel_hypotheses``: True or False as given (anything else — a
    text 'no' — refused with one line), None: :func:`parallel_default` of the registration's ``config`` (None: the
    default :class:`~xraypose.register.RegistrationConfig`)."""
    if value is None:
        if config is None:
            from xraypose.register.config import RegistrationConfig

            config = RegistrationConfig()
        return parallel_default(config)
    return check_flag("parallel_hypotheses", value, prefix="")


def cancellable(registrar, cancel):
    """``registrar`` itself when ``cancel`` is None, else a copy (:meth:`~xraypose.register.Registrar.derive`, the
    same settings and pyramid) whose registrations stop at their next iteration once ``cancel`` is set
    (:attr:`~xraypose.register.Registrar.cancel`; :func:`run_in_order`)."""
    if cancel is None:
        return registrar
    out = registrar.derive()
    out.cancel = cancel
    return out


def run_in_order(jobs, wanted, parallel: bool, threads: int | None = None, cancel=None):
    """Yield ``(name, result)`` of ``jobs`` (``[(name, job)]``, ``job()`` the result) in their order, each one only when
    ``wanted(name)`` says so at its turn — asked after the results before it were yielded (the hypotheses that run
    only while no result so far is ``ok``).  ``parallel``: every job starts at once on two threads (torch's intra-op
    threads set to ``threads`` around them, so that the registrations inside leave the setting alone); those not
    wanted are cancelled before they start, and ``cancel`` (a ``threading.Event``, optional) is set once nothing more
    is taken — the jobs' registrars hold it (:attr:`~xraypose.register.Registrar.cancel`), so one already running
    stops at its next iteration (without it, it is finished and dropped).  The results are those of running them one
    after the other (on two cores, measured: 12–47 % less time when every job is wanted, docs/registration.md
    "On two threads")."""
    if not parallel:
        for name, job in jobs:
            if wanted(name):
                yield name, job()
        return
    with torch_threads(threads):
        pool = ThreadPoolExecutor(max_workers=2)
        ahead = {name: pool.submit(job) for name, job in jobs}
        done = False
        try:
            for name, _ in jobs:
                if wanted(name):
                    yield name, ahead[name].result()
            done = True
        finally:  # what is not taken is cancelled; after an error (or a consumer that stopped early) nothing waits
            if cancel is not None:  # on a running job unless it stops at once
                cancel.set()
            pool.shutdown(wait=done or cancel is not None, cancel_futures=True)
