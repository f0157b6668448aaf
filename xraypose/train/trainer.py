"""One training run as an object: :class:`Trainer` (setup, step, validate, save, budget, the loop).

:func:`xraypose.train.train` checks the outputs, reads a resumed state, picks the device and starts
the processes, then runs ``Trainer(...).setup(ct, ...)`` and :meth:`Trainer.fit`.  Each part of a
step can be called alone (tests do): :meth:`Trainer.step` makes one optimiser step,
:meth:`Trainer.validate` scores the model on the validation DRRs, :meth:`Trainer.save_last` /
:meth:`Trainer.save_best` write the checkpoints, :meth:`Trainer.budget` fits the schedule's length to
the time budget.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from xraypose import geometry
from xraypose.augment import Augmenter, combine_basis, draw_multipliers, minmax_valid
from xraypose.errors import InputError, RunError
from xraypose.model import (
    PoseRegressor,
    check_compatible,
    check_training_volume,
    checkpoint_dict,
    read_checkpoint,
    save_checkpoint,
    volume_record,
)
from xraypose.render import DRR
from xraypose.similarity import MultiscaleNCC
from xraypose.train.config import TrainConfig, training_differences
from xraypose.train.data import (
    ReplayBuffer,
    check_geometry,
    load_volume,
    make_camera,
    make_sampler,
    mix_seed,
    render_basis,
    step_generator,
)
from xraypose.train.outputs import TrainResult, jsonable, truncate_log
from xraypose.train.schedule import WarmupCosine, adaptive_clip_
from xraypose.train.threads import ThreadTuner

__all__ = ["Trainer", "TrainingDiverged", "training_errors"]

#: Tensors of a checkpoint that describe the pose frame of one CT (not learnt weights): a finetuned
#: model takes them from its own CT and config.
_POSE_FRAME = {"isocenter_pose", "pivot", "rotation_mean", "rotation_std", "translation_mean", "translation_std"}


class TrainingDiverged(RunError):
    """The loss became NaN or infinite (a crash dump was written): a failed run, not bad input
    (:class:`~xraypose.errors.RunError`, a RuntimeError)."""


def training_errors(pred: torch.Tensor, true: torch.Tensor, sod: float) -> dict:
    """Per pose ``(B,)``: ``rot_deg`` (degrees), ``trans_mm`` (mm), ``dgeo_sod_mm`` = ``sqrt((sod·θ)² + Δt²)``
    (mm) and ``se3`` (the SE(3) geodesic), between camera_to_world poses ``pred`` and ``true`` ``(B, 4, 4)``;
    ``sod`` in mm.

    ``dgeo_sod_mm`` is the double geodesic with the source-to-isocenter distance as its radius (the
    training loss's); the evaluation's ``dgeo`` (:func:`xraypose.metrics.pose_errors`) takes ``sdd / 2``
    (DiffPose's), so the two differ for one pose.  Training logs before this name called it ``dgeo_mm``.
    """
    p, t = pred.double(), true.double()
    rot = geometry.geodesic_rotation(p, t)
    trans = geometry.geodesic_translation(p, t)
    return {"rot_deg": torch.rad2deg(rot), "trans_mm": trans, "dgeo_sod_mm": torch.sqrt((sod * rot) ** 2 + trans**2),
            "se3": geometry.geodesic_se3(p, t)}


class Trainer:
    """A training run: its data, model, optimiser and counters, and one method per part of the loop.

    Made with the checked config, the output paths (:func:`~xraypose.train.output_paths`) and the
    process layout; :meth:`setup` then builds everything (it is the only method that reads the CT).
    After it: ``volume``, ``camera``, ``sampler``, ``sod`` (mm), ``drr``, ``model`` (``net``: the
    same, DDP-wrapped with several processes), ``opt``, ``sched``, ``buffer``, ``augmenter``, the
    validation set ``val_x`` ``(N, 1, H, W)`` / ``val_poses`` ``(N, 4, 4)``, and the counters
    ``steps`` (optimiser steps done), ``images_seen``, ``renders``, ``best`` (``{"score", "step"}``).
    """

    def __init__(self, cfg: TrainConfig, paths: dict, *, device="cpu", world: int = 1, rank: int = 0,
                 callback=None, quiet: bool = False, t_start: float | None = None):
        self.cfg, self.paths = cfg, paths
        self.device = torch.device(device)
        self.world, self.rank, self.ddp = world, rank, world > 1
        self.callback, self.quiet = callback, quiet
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.seed = int(cfg.run.seed)
        self.state = None
        self.log_file = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self, ct, *, state: dict | None = None, finetune=None, replace=()) -> "Trainer":
        """Build the run: the CT (a Volume, a path or ``"sample"``), camera, poses, DRR, model, optimiser,
        validation set, buffer; restore ``state`` (a ``.last.pt`` checkpoint's dict) when resuming; take the
        weights of the checkpoint ``finetune``; remove ``replace`` (the files ``--overwrite`` replaces) and
        open the log.  Returns ``self``."""
        self.state = state
        torch.manual_seed(self.seed)
        self._build_data(ct)
        self._build_model(finetune)
        self._build_optimiser()
        self._build_validation()
        self._build_meta()
        self._build_buffer()
        self._restore()
        self._open_log(replace)
        self._start_loop()
        return self

    def _build_data(self, ct) -> None:
        cfg = self.cfg
        self.volume = load_volume(ct)
        if cfg.render.step is not None:  # a step of 1e-6 mm would take 10⁸ samples a ray, before any render
            from xraypose.limits import check_drr_step

            try:
                check_drr_step(cfg.render.step, self.volume)
            except InputError as e:
                raise InputError(f"config: render.step = {cfg.render.step}: {e}") from None
        self.camera = make_camera(cfg.camera)
        self.sampler, self.sod = make_sampler(self.volume, cfg)
        self.drr = DRR(self.volume, self.camera, density=cfg.render.density, renderer=cfg.render.renderer,
                       n_samples=cfg.render.n_samples, step=cfg.render.step, backend=cfg.render.backend).to(self.device)
        check_geometry(self.volume, self.camera, self.sampler, self.sod, self.drr)
        self._check_memory()

    def _check_memory(self) -> None:
        """Refuse a replay buffer or a validation set that this machine's memory cannot hold (a
        ``data.buffer_size`` of 10⁹ was PyTorch's "can't allocate memory" traceback), before anything is rendered.
        The buffer is held, and copied twice into each ``.last.pt`` written; the validation DRRs about 3 times."""
        from xraypose.limits import check_memory

        cfg, c = self.cfg, self.camera
        image = int(self.drr.basis.shape[0]) * c.height * c.width * 4  # one render's bytes (float32 bases)
        cap = max(int(cfg.data.buffer_size), int(cfg.optim.batch_size))
        check_memory(3 * cap * image, f"config: data.buffer_size = {cfg.data.buffer_size}: a replay buffer of "
                     f"{cap} renders of {c.height} × {c.width}", "give a smaller data.buffer_size")
        n_val = max(int(cfg.run.val_size), 16)
        check_memory(3 * n_val * image, f"config: run.val_size = {cfg.run.val_size}: a validation set of {n_val} "
                     f"DRRs of {c.height} × {c.width}", "give a smaller run.val_size")

    def _build_model(self, finetune) -> None:
        m, sampler = self.cfg.model, self.sampler
        self.pivot = self.sod if m.pivot == "isocenter" else float(m.pivot)
        model = PoseRegressor(m.backbone, m.parameterization, m.convention, m.norm, m.pool_grid, m.pretrained,
                              m.weights, isocenter_pose=sampler.isocenter_pose, pivot_mm=self.pivot)
        model.fit_output_scaling(sampler.sample(4096, torch.Generator().manual_seed(mix_seed(self.seed, 99)),
                                                dtype=torch.float64))
        if finetune is not None:
            src = read_checkpoint(finetune)
            check_compatible(model.architecture(), src["meta"].get("architecture", {}), f"checkpoint {finetune}")
            weights = {k: v for k, v in src["model"].items() if k not in _POSE_FRAME}
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if unexpected or set(missing) - _POSE_FRAME:
                raise InputError(f"checkpoint {finetune} does not fit the model ({len(missing)} missing, "
                                 f"{len(unexpected)} unexpected tensors)")
        if self.state is not None:
            last = self.paths["last"]
            check_compatible(model.architecture(), self.state["meta"]["architecture"], f"checkpoint {last}")
            check_training_volume(self.state["meta"], self.volume, what=f"the training state {last}")
            model.load_state_dict(self.state["model"])
        model.to(self.device)
        self.model = model
        self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None) if self.ddp else model

    def _build_optimiser(self) -> None:
        o, model = self.cfg.optim, self.model
        try:  # the fused kernel (one pass over all parameters) is much faster on CPU than the per-tensor loop
            self.opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.sched = WarmupCosine(self.opt, o.lr, self.cfg.run.max_steps, o.warmup_frac, o.min_lr_frac)
        heads = {id(p) for p in list(model.rotation_head.parameters()) + list(model.translation_head.parameters())}
        self.agc_params = [p for p in model.parameters() if id(p) not in heads]  # AGC skips the output layers
        self.amp = self.device.type == "cuda" and o.amp

    def _build_validation(self) -> None:
        """The validation DRRs (their own generator), the image statistics, the fiducials of the mTRE."""
        cfg = self.cfg
        gval = torch.Generator().manual_seed(mix_seed(self.seed, 12345))
        n_stats = max(cfg.run.val_size, 16)
        val_poses = self.sampler.sample(n_stats, gval, dtype=torch.float32)
        val_m = draw_multipliers(n_stats, cfg.augment.bone_multiplier, cfg.augment.bone_multiplier_log, gval)
        val_basis = torch.cat([render_basis(self.drr, self.camera, val_poses[i:i + 32], cfg.render)
                               for i in range(0, n_stats, 32)])
        val_img01 = minmax_valid(combine_basis(val_basis, val_m.to(val_basis.device)), None)
        if self.state is not None:
            norm = self.state["meta"]["normalization"]
            self.mean, self.std = norm["mean"], norm["std"]
        else:
            self.mean, self.std = float(val_img01.mean()), float(val_img01.std().clamp_min(1e-3))
        val_x = (val_img01 - self.mean) / self.std
        self.val_poses, self.val_x = val_poses[: cfg.run.val_size], val_x[: cfg.run.val_size]
        self.fiducials = None
        if self.rank == 0 and cfg.run.val_size > 0:
            try:
                from xraypose.fiducials import pick_bone_fiducials

                self.fiducials = pick_bone_fiducials(self.volume, n=20, seed=self.seed)
            except InputError:
                self.fiducials = None  # no bone: validate by the double geodesic alone
        self.augmenter = Augmenter(cfg.augment, self.camera, self.mean, self.std)

    def _build_meta(self) -> None:
        """What a checkpoint records of the model's frame and input (read back by ``load_checkpoint``)."""
        cfg, sampler, camera = self.cfg, self.sampler, self.camera
        self.meta = {
            "camera": camera.to_dict(), "image_size": [camera.height, camera.width],
            "isocenter_pose": sampler.isocenter_pose.tolist(), "isocenter": sampler.isocenter.tolist(),
            "sod_mm": float(self.sod), "pivot_mm": float(self.pivot),
            "normalization": {"mean": float(self.mean), "std": float(self.std), "fill": 0.0,
                              "rule": "min-max over valid pixels, invalid = fill, then (x - mean) / std"},
            "density": cfg.render.density, "renderer": cfg.render.renderer, "n_samples": cfg.render.n_samples,
            "volume": volume_record(self.volume),
            "sampler": {"distribution": sampler.distribution, "rot_std": list(sampler.rot_std),
                        "trans_mean": list(sampler.trans_mean), "trans_std": list(sampler.trans_std),
                        "rot_range": list(sampler.rot_range), "trans_range": list(sampler.trans_range)},
        }

    def _build_buffer(self) -> None:
        cfg = self.cfg
        self.batch = int(cfg.optim.batch_size)
        self.fresh_n = max(1, math.ceil(self.batch / cfg.data.reuse))  # fresh renders per micro-batch
        channels = int(self.drr.basis.shape[0])
        cap = max(int(cfg.data.buffer_size), self.batch)
        self.buffer = ReplayBuffer(cap, channels, self.camera.height, self.camera.width, self.device)
        self.similarity = MultiscaleNCC(patch_sizes=(None, int(cfg.loss.ncc_patch)), weights=(0.5, 0.5))

    def _restore(self) -> None:
        """The counters, optimiser, schedule, buffer and random state of a resumed run (else a fresh start)."""
        self.steps, self.images_seen, self.renders, self.elapsed_before = 0, 0, 0, 0.0
        self.best = {"score": math.inf, "step": -1}
        state, max_steps = self.state, self.cfg.run.max_steps
        if state is None:
            self.sched.set_total(max_steps)
            return
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.steps, self.images_seen, self.renders = int(state["step"]), int(state["images_seen"]), int(state["renders"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.best = dict(state.get("best", self.best))
        self._best_since_checkpoint()
        self.buffer.load_state_dict({k: v[self.rank] for k, v in state["buffer"].items()})
        torch.set_rng_state(state["rng"]["torch"][self.rank])
        if self.cfg.run.time_budget_s is None:
            self.sched.set_total(max_steps)

    def _best_since_checkpoint(self) -> None:
        """On a resume, the best model (``OUTPUT``) that the killed run validated and wrote *after* its last
        ``OUTPUT.last.pt`` (whose ``best`` record predates it) stays the best to beat: a resumed run's own
        validations (another schedule under a time budget, other threads) replaced it with a worse model
        whenever they beat the checkpoint's older record.  Only a model of this training (its configuration
        outside ``[run]`` is the state's) written at a later step is taken."""
        best = self.paths["best"]
        if self.rank != 0 or not best.is_file():
            return
        try:
            training = read_checkpoint(best)["meta"].get("training") or {}
        except InputError:
            return
        score = (training.get("validation") or {}).get("score")
        step, config = training.get("step"), training.get("config")
        if not isinstance(score, (int, float)) or not math.isfinite(score) or not isinstance(step, int) \
                or not isinstance(config, dict) or step <= self.steps:
            return
        if training_differences(config, self.cfg.to_dict()):  # another training's model
            return
        if score < self.best["score"]:
            self.best = {"score": float(score), "step": step}

    def _open_log(self, replace) -> None:
        for q in replace:  # --overwrite: the earlier training's files go once this one is set up
            q.unlink(missing_ok=True)
        resumed, log = self.state is not None, self.paths["log"]
        if self.rank == 0 and resumed:
            truncate_log(log, self.steps)  # steps logged after the checkpoint are done again
        self.log_file = open(log, "a" if resumed else "w", encoding="utf-8") if self.rank == 0 else None
        if self.log_file is not None and resumed:
            self._write_log_row({"event": "resume", "step": self.steps, "elapsed_s": round(self.elapsed_before, 3)})

    def _write_log_row(self, row: dict) -> None:
        """Append ``row`` to ``OUTPUT.log.jsonl`` (flushed); a failed write (a full disk) is an
        :class:`~xraypose.io.OutputError` naming the log (the OSError alone named no file)."""
        from xraypose.io import OutputError

        try:
            self.log_file.write(json.dumps(row) + "\n")
            self.log_file.flush()
        except OSError as e:
            raise OutputError(f"cannot write {self.paths['log']}: {e.strerror or e}") from None

    def _start_loop(self) -> None:
        """The loop's state: schedule length, timers, checkpoint interval, thread tuner."""
        run = self.cfg.run
        self.total = run.max_steps
        self.step_times: list[float] = []
        self.val_cost = 0.0
        self.last_ckpt_t = time.perf_counter()
        # Time-based checkpoints: the first soon (a kill loses little), then at doubling intervals up to every_s.
        self.ckpt_interval = min(float(run.first_checkpoint_s), float(run.checkpoint_every_s))
        self.pbar = None
        self.ema: dict = {}
        self.t_loop = time.perf_counter()
        self.seen_at_loop, self.step_at_loop = self.images_seen, self.steps
        self.model.train()
        # The budget is that of the whole training: a resumed run has what its earlier sessions left
        # (none: no step; the 3 s are the loop's reserve for the final validation and checkpoints).
        budget = run.time_budget_s
        self.stop = self.state is not None and budget is not None and self.elapsed() + 3.0 >= budget
        self.tuner = None
        if run.threads is None and self.device.type == "cpu" and not self.ddp and torch.get_num_threads() > 1:
            self.tuner = ThreadTuner([1, torch.get_num_threads()])

    def elapsed(self) -> float:
        """Seconds of the whole training so far, resumed sessions included."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    # -------------------------------------------------------------------------------------------- step
    def step(self) -> dict:
        """One optimiser step of ``optim.accumulate`` micro-batches; returns ``{"lr", "parts", "dt"}``: the
        learning rate, the batch means (``loss``, ``rot_deg``, ``trans_mm``, ``dgeo_sod_mm``, ``se3``, with
        ``loss.mode = "full"`` also ``ncc``) and the step's seconds.  Raises :class:`TrainingDiverged` (after
        writing the crash dump) when the loss is not finite."""
        n_threads = None
        if self.tuner is not None:
            n_threads = self.tuner.next_threads()
            torch.set_num_threads(n_threads)
        t_step = time.perf_counter()
        lr = self.sched.apply(self.steps)
        self.opt.zero_grad(set_to_none=True)
        accumulate = int(self.cfg.optim.accumulate)
        parts_sum: dict = {}
        for micro in range(accumulate):
            parts, last = self._micro_step(micro, accumulate)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / accumulate
        self._check_finite(parts_sum, *last)
        if self.cfg.optim.agc_clip > 0:
            adaptive_clip_(self.agc_params, self.cfg.optim.agc_clip)
        self.opt.step()
        self.steps += 1
        self.images_seen += self.batch * accumulate * self.world
        dt = time.perf_counter() - t_step
        self.step_times.append(dt)
        if self.tuner is not None:
            self.tuner.record(n_threads, dt)
        for k, v in parts_sum.items():
            self.ema[k] = v if k not in self.ema else 0.9 * self.ema[k] + 0.1 * v
        return {"lr": lr, "parts": parts_sum, "dt": dt}

    def _micro_step(self, micro: int, accumulate: int) -> tuple[dict, tuple]:
        """Render ``fresh_n`` new poses into the buffer, draw a batch, augment, backpropagate its loss.
        Returns the batch's means and ``(poses, pred, x)`` (for a crash dump)."""
        cfg, model, device, sod = self.cfg, self.model, self.device, self.sod
        g = step_generator(self.seed, self.rank, self.steps, micro)
        poses_new = self.sampler.sample(self.fresh_n, g, dtype=torch.float32)
        self.buffer.push(render_basis(self.drr, self.camera, poses_new, cfg.render), poses_new.to(device))
        self.renders += self.fresh_n
        basis, poses = self.buffer.sample(self.batch, g, newest=self.fresh_n)
        x, clean, valid, poses, m = self.augmenter(basis, poses, g)
        poses = poses.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            pred, p_rot, p_trans = self.net(x, return_params=True)
        pred = pred.float()
        geo = geometry.geodesic_se3(pred, poses)
        dg = geometry.double_geodesic(pred, poses, sod)
        loss = float(cfg.loss.geodesic_weight) * (geo + dg)
        w_par = float(cfg.loss.param_weight)
        if w_par > 0:
            with torch.no_grad():
                t_rot, t_trans = model.pose_to_params(poses.double())
                target = model.whiten(t_rot.float(), t_trans.float())
            loss = loss + w_par * (model.whiten(p_rot.float(), p_trans.float()) - target).pow(2).mean(-1)
        ncc_v = None
        if cfg.loss.mode == "full":
            img_pred = self.drr(pred, bone_attenuation_multiplier=m.to(device))
            vm = valid.to(img_pred.dtype)
            ncc_v = self.similarity(img_pred * vm, clean * vm)
            loss = loss + (1 - ncc_v)
        loss = loss.mean()
        (loss / accumulate).backward()
        with torch.no_grad():
            e = training_errors(pred.detach().cpu(), poses.detach().cpu(), sod)
            parts = {"loss": float(loss), "rot_deg": float(e["rot_deg"].mean()),
                     "trans_mm": float(e["trans_mm"].mean()), "dgeo_sod_mm": float(e["dgeo_sod_mm"].mean()),
                     "se3": float(e["se3"].mean())}
            if ncc_v is not None:
                parts["ncc"] = float(ncc_v.mean())
        return parts, (poses, pred, x)

    def _check_finite(self, parts_sum: dict, poses, pred, x) -> None:
        """All processes agree whether the loss is finite; if not, write the crash dump and raise."""
        finite = torch.tensor([1.0 if math.isfinite(parts_sum["loss"]) else 0.0], device=self.device)
        if self.ddp:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if float(finite) >= 1:
            return
        dump = self.paths["crash"]
        if self.rank == 0:
            save_checkpoint(dump, checkpoint_dict(self.model, self._training_meta(), optimizer=self.opt.state_dict(),
                                                  step=self.steps, poses=poses.detach().cpu(),
                                                  pred=pred.detach().cpu(), images=x.detach().cpu(),
                                                  loss_parts=parts_sum, config=self.cfg.to_dict()))
        if self.log_file is not None:
            self.log_file.write(json.dumps({"event": "diverged", "step": self.steps, **jsonable(parts_sum)}) + "\n")
            self.log_file.close()
            self.log_file = None
        raise TrainingDiverged(
            f"training diverged at step {self.steps}: the loss is {parts_sum['loss']} (crash dump: {dump}); "
            "try a lower optim.lr or a smaller optim.agc_clip"
        )

    # -------------------------------------------------------------------------- validation, checkpoints
    def validate(self) -> dict | None:
        """Errors of the model on the validation DRRs (rank 0; None elsewhere or with ``run.val_size = 0``):
        medians of rotation (degrees) and translation (mm), ``val_mean_dgeo_sod_mm`` (the mean double geodesic
        with radius sod, mm: :func:`training_errors`), with fiducials the mTRE (mm) and the fraction within
        ``run.capture_mtre_mm``; ``score`` (lower is better) is the mean mTRE, or the mean dgeo without
        fiducials."""
        if self.rank != 0 or self.cfg.run.val_size == 0:
            return None
        model, val_x, val_poses = self.model, self.val_x, self.val_poses
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            pred = torch.cat([model(val_x[i:i + 64].to(self.device)) for i in range(0, val_x.shape[0], 64)])
        model.train()
        e = training_errors(pred.cpu(), val_poses, self.sod)
        res = {"val_median_rot_deg": float(e["rot_deg"].median()), "val_median_trans_mm": float(e["trans_mm"].median()),
               "val_mean_dgeo_sod_mm": float(e["dgeo_sod_mm"].mean())}
        if self.fiducials is not None:
            from xraypose.metrics import target_registration_error

            mtre = target_registration_error(pred.cpu().double(), val_poses.double(), self.fiducials)
            res.update(val_median_mtre_mm=float(mtre.median()), val_mean_mtre_mm=float(mtre.mean()),
                       val_frac_in_capture=float((mtre < self.cfg.run.capture_mtre_mm).float().mean()))
            res["score"] = res["val_mean_mtre_mm"]
        else:
            res["score"] = res["val_mean_dgeo_sod_mm"]
        return res

    def _training_meta(self, extra=None) -> dict:
        mm = dict(self.meta)
        mm["training"] = {"step": self.steps, "images_seen": self.images_seen, "renders": self.renders,
                          "world_size": self.world, "elapsed_s": self.elapsed(), "config": self.cfg.to_dict(),
                          **(extra or {})}
        return mm

    def _gather_state(self) -> tuple[dict, list]:
        """Every process's replay buffer and random state (collective under DDP)."""
        bstate = self.buffer.state_dict()
        rng = torch.get_rng_state()
        if not self.ddp:
            return {"images": bstate["images"][None], "poses": bstate["poses"][None], "filled": [bstate["filled"]],
                    "pos": [bstate["pos"]]}, [rng]
        world, device = self.world, self.device
        imgs = [torch.zeros_like(bstate["images"]) for _ in range(world)]
        poses = [torch.zeros_like(bstate["poses"]) for _ in range(world)]
        rngs = [torch.zeros_like(rng) for _ in range(world)]
        meta_t = torch.tensor([bstate["filled"], bstate["pos"]])
        metas = [torch.zeros_like(meta_t) for _ in range(world)]
        for src_t, dst in ((bstate["images"], imgs), (bstate["poses"], poses), (rng, rngs), (meta_t, metas)):
            dist.all_gather(dst, src_t.to(device) if device.type == "cuda" else src_t)
        return {"images": torch.stack([x.cpu() for x in imgs]), "poses": torch.stack([x.cpu() for x in poses]),
                "filled": [int(x[0]) for x in metas], "pos": [int(x[1]) for x in metas]}, [x.cpu() for x in rngs]

    def save_last(self) -> None:
        """Write ``OUTPUT.last.pt``, the full training state (every process must call it: it gathers)."""
        bufstate, rngs = self._gather_state()
        if self.rank != 0:
            return
        ck = checkpoint_dict(self.model, self._training_meta(), optimizer=self.opt.state_dict(),
                             scheduler=self.sched.state_dict(), step=self.steps, images_seen=self.images_seen,
                             renders=self.renders, best=self.best, rng={"torch": rngs, "seed": self.seed},
                             buffer=bufstate, config=self.cfg.to_dict(), world_size=self.world,
                             elapsed_s=self.elapsed())
        save_checkpoint(self.paths["last"], ck)
        if self.callback:
            self.callback("checkpoint", {"step": self.steps, "path": self.paths["last"]})

    def save_best(self, res: dict | None) -> None:
        """Write ``OUTPUT``, the model with its validation ``res`` (rank 0)."""
        if self.rank != 0:
            return
        extra = {"validation": {k: v for k, v in res.items()}} if res else {}
        save_checkpoint(self.paths["best"], checkpoint_dict(self.model, self._training_meta(extra), step=self.steps))

    def _validate_and_checkpoint(self) -> dict | None:
        """After a step: validate every ``run.val_every_steps`` (keeping the best), checkpoint when due."""
        run = self.cfg.run
        val = None
        now = time.perf_counter()
        if run.val_size and (self.steps % run.val_every_steps == 0):
            tv = time.perf_counter()
            val = self.validate()
            if val is not None and val["score"] < self.best["score"]:
                self.best = {"score": val["score"], "step": self.steps}
                self.save_best(val)
            self.val_cost = time.perf_counter() - tv
            if self.callback and val is not None:
                self.callback("validation", {"step": self.steps, **val})
        every = run.checkpoint_every_steps
        due = (every is not None and self.steps % every == 0) or \
            (every is None and now - self.last_ckpt_t > self.ckpt_interval)
        if self.ddp:
            flag = torch.tensor([1.0 if due else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag > 0)
        if due:
            self.save_last()
            self.last_ckpt_t = time.perf_counter()
            self.ckpt_interval = min(2 * self.ckpt_interval, float(run.checkpoint_every_s))
        return val

    def budget(self) -> None:
        """With ``run.time_budget_s``: re-fit the schedule's length to the measured step rate (at steps 5, 10,
        20 and every 50th) and set ``stop`` when the next step would not fit in what is left."""
        budget = self.cfg.run.time_budget_s
        if budget is None:
            return
        step = self.steps
        recent = self.step_times[-20:]
        per_step = sorted(recent)[len(recent) // 2] * 1.05 + self.val_cost / self.cfg.run.val_every_steps
        reserve = 2 * self.val_cost + 3.0  # final validation and checkpoints
        remaining = budget - self.elapsed() - reserve
        est = torch.tensor([float(step + max(0, int(remaining / max(per_step, 1e-6)))),
                            1.0 if remaining < per_step else 0.0], device=self.device)
        if self.ddp:
            dist.broadcast(est, 0)
        if step in (5, 10, 20) or step % 50 == 0:
            self.total = max(step + 1, min(self.cfg.run.max_steps, int(est[0])))
            self.sched.set_total(self.total)
        if float(est[1]) > 0:
            self.stop = True

    # -------------------------------------------------------------------------------------------- loop
    def log(self, rec: dict) -> None:
        """One row of ``OUTPUT.log.jsonl`` (rank 0) and the ``"step"`` callback."""
        if self.log_file is not None:
            self._write_log_row(rec)
        if self.callback:
            self.callback("step", rec)

    def fit(self) -> TrainResult:
        """Steps until ``run.max_steps`` (or the time budget), then the final validation and checkpoints.

        Ctrl-C (SIGINT) on one process: the step under way ends, ``OUTPUT.last.pt`` is written at it (a
        ``--resume`` continues from there: nothing trained is lost) and KeyboardInterrupt is raised; a second
        Ctrl-C stops at once.  (Under torchrun each process would stop at another step: left as it was.)"""
        with self._checkpoint_on_interrupt():
            return self._fit()

    @contextlib.contextmanager
    def _checkpoint_on_interrupt(self):
        """SIGINT sets :attr:`interrupted` (the loop checkpoints and stops at the step's end) instead of
        raising mid-step, where an optimiser's update could stop half done; the handler before it is put
        back, and a second SIGINT is the old handler's."""
        from xraypose._interrupt import StopRequest, stop_requests

        if self.ddp:  # (under torchrun each process would stop at another step)
            self._stop = StopRequest()
            yield
            return
        with stop_requests() as self._stop:
            yield

    @property
    def interrupted(self) -> bool:
        """Ctrl-C was pressed during :meth:`fit` (the step under way ends first)."""
        stop = getattr(self, "_stop", None)
        return bool(stop is not None and stop.requested)

    def _stop_if_interrupted(self) -> None:
        """After a whole step: on Ctrl-C, the training state is written and KeyboardInterrupt raised."""
        if not self.interrupted:
            return
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        self.save_last()
        if self.log_file is not None:
            self._write_log_row({"event": "interrupted", "step": self.steps, "elapsed_s": round(self.elapsed(), 3)})
        if self.rank == 0:  # the outcome, said with --quiet too
            print(f"interrupted at step {self.steps}: {self.paths['last']} holds the training so far; "
                  "--resume continues it", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def _fit(self) -> TrainResult:
        run = self.cfg.run
        while self.steps < self.total and not self.stop:
            epoch = self.steps // run.steps_per_epoch
            self._open_bar(epoch)
            out = self.step()
            val = self._validate_and_checkpoint()
            self.budget()
            rec = {"step": self.steps, "epoch": epoch, "lr": out["lr"],
                   **{k: round(v, 6) for k, v in out["parts"].items()},
                   "images_seen": self.images_seen, "renders": self.renders, "step_s": round(out["dt"], 4),
                   "threads": torch.get_num_threads(), "elapsed_s": round(self.elapsed(), 3)}
            if val is not None:
                rec.update({k: v for k, v in val.items() if k != "score"})
            self.log(rec)
            self._show_progress()
            self._stop_if_interrupted()
        if self.pbar is not None:
            self.pbar.close()
        return self._finish()

    def _open_bar(self, epoch: int) -> None:
        run = self.cfg.run
        if self.pbar is None and not self.quiet and run.progress:
            from xraypose.progress import progress

            n_ep = min(run.steps_per_epoch - self.steps % run.steps_per_epoch, self.total - self.steps)
            # a bar per epoch on a terminal; in a log, a line every few seconds (none at each epoch's end)
            self.pbar = progress(total=n_ep, desc=f"epoch {epoch}", unit="steps", leave=sys.stderr.isatty(),
                                 file=sys.stderr, dynamic_ncols=True)

    def _show_progress(self) -> None:
        if self.pbar is None:
            return
        ema = self.ema
        self.pbar.update(1)
        post = {"rot°": f"{ema['rot_deg']:.2f}", "trans": f"{ema['trans_mm']:.1f}",
                "dgeo_sod": f"{ema['dgeo_sod_mm']:.1f}", "se3": f"{ema['se3']:.1f}", "loss": f"{ema['loss']:.3f}"}
        if "ncc" in ema:
            post["ncc"] = f"{ema['ncc']:.3f}"
        self.pbar.set_postfix(post, refresh=False)
        if self.steps % self.cfg.run.steps_per_epoch == 0 or self.steps >= self.total or self.stop:
            self.pbar.close()
            self.pbar = None

    def _finish(self) -> TrainResult:
        """The final validation, best and last checkpoints, the log's end row."""
        loop_s = time.perf_counter() - self.t_loop
        final_val = self.validate()
        if final_val is not None and final_val["score"] < self.best["score"]:
            self.best = {"score": final_val["score"], "step": self.steps}
            self.save_best(final_val)
        if self.cfg.run.val_size == 0 or not self.paths["best"].exists():
            self.save_best(final_val)
        self.save_last()
        elapsed = self.elapsed()
        ips = (self.images_seen - self.seen_at_loop) / loop_s if self.steps > self.step_at_loop else 0.0
        if self.log_file is not None:
            self._write_log_row({
                "event": "end", "step": self.steps, "images_seen": self.images_seen, "renders": self.renders,
                "elapsed_s": round(elapsed, 3), "images_per_s": round(ips, 3), "final_validation": final_val,
                "best": self.best})
            self.close()
        return TrainResult(model_path=self.paths["best"], last_path=self.paths["last"], log_path=self.paths["log"],
                           steps=self.steps, images_seen=self.images_seen, renders=self.renders, elapsed_s=elapsed,
                           images_per_s=ips,
                           best_val={"step": self.best["step"], **(final_val or {})} if final_val else None)

    def close(self) -> None:
        """Close the log (a run that stops by an error leaves its rows so far; a row a full disk refused is
        dropped: its write raised already)."""
        if self.log_file is not None:
            f, self.log_file = self.log_file, None
            try:
                f.close()
            except OSError:
                pass
