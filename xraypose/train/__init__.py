"""Training a patient-specific pose regressor from one CT (DiffPose's training stage).

Data are made on the fly: poses from :class:`xraypose.sampling.PoseSampler`,
DRRs from :class:`xraypose.render.DRR` at the training size, rendered once as
the two-channel bone basis so every use of a render draws a fresh
``bone_attenuation_multiplier`` ~ U(1, 10) for free.  Rendering costs far more
than a training step on a CPU, so a replay buffer (``data.reuse``) lets each
render serve several steps; every reuse draws a new bone contrast, a new exact
rotation about the X-ray source (a new pose, :mod:`xraypose.augment`) and new
image augmentations.

Loss (``loss.mode``):

* ``"full"`` (DiffPose): ``1 − mNCC(DRR(T̂), DRR(T)) + w·(‖log(T̂⁻¹T)‖ + dgeo(T̂, T; sod))``,
  ``w = 1e-2``; needs a differentiable second render per step;
* ``"geodesic"``: the geodesic terms only (no second render; the fast default on CPU).

Optimisation: Adam (lr 1e-3), linear warm-up then cosine decay, adaptive
gradient clipping (AGC), gradient accumulation, bfloat16 autocast on GPU.
A time budget (``run.time_budget_s``) fixes the schedule's length from the
measured step rate and stops in time.

Checkpoints (written atomically, load with ``weights_only=True``):

* ``OUTPUT`` (e.g. ``model.pt``): the best model by validation (weights + meta),
  what :func:`xraypose.model.load_checkpoint` reads;
* ``OUTPUT.last.pt`` (``model.last.pt``): the full training state — model,
  optimiser, scheduler, step, random state, replay buffer — for ``resume``;
* ``OUTPUT.log.jsonl``: one JSON line of metrics per step;
* ``OUTPUT.crash.pt``: written when the loss becomes NaN/inf (then training stops).

Randomness: every step draws from a generator seeded by (seed, rank, step),
so the data of a step do not depend on the history and resuming is exact.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel
(DDP; gloo on CPU, NCCL on GPU); ``optim.batch_size`` is per process; rank 0
validates and writes files.

The package, one job a module:

* :mod:`~xraypose.train.config`: :class:`TrainConfig` and its nine sections, each checking its
  own fields; :data:`PRESETS`; :func:`load_config`;
* :mod:`~xraypose.train.run`: :func:`train` (outputs checked, resume, devices, processes);
* :mod:`~xraypose.train.trainer`: :class:`Trainer` — ``setup``, ``step``, ``validate``,
  ``save_last`` / ``save_best``, ``budget``, ``fit`` (the loop);
* :mod:`~xraypose.train.data`: the CT, camera, pose sampler, DRR bases, :class:`ReplayBuffer`;
* :mod:`~xraypose.train.schedule`: :class:`WarmupCosine`, adaptive gradient clipping;
* :mod:`~xraypose.train.threads`: :class:`ThreadTuner`;
* :mod:`~xraypose.train.outputs`: the files of a run (:func:`output_paths`), :class:`TrainResult`.
"""

from xraypose.train.config import (
    PRESETS,
    SECTIONS,
    AugmentConfig,
    CameraConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RenderConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
    load_config,
)
from xraypose.train.data import ReplayBuffer, check_geometry, make_sampler
from xraypose.train.outputs import TrainResult, output_paths
from xraypose.train.run import train
from xraypose.train.schedule import WarmupCosine, adaptive_clip_
from xraypose.train.threads import ThreadTuner
from xraypose.train.trainer import Trainer, TrainingDiverged

__all__ = [
    "TrainConfig", "ModelConfig", "CameraConfig", "RenderConfig", "SamplerConfig", "AugmentConfig", "LossConfig",
    "OptimConfig", "DataConfig", "RunConfig", "TrainResult", "TrainingDiverged", "WarmupCosine", "train",
    "load_config", "output_paths", "PRESETS", "SECTIONS", "Trainer", "ThreadTuner", "ReplayBuffer", "make_sampler",
    "check_geometry", "adaptive_clip_",
]
