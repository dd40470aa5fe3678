"""The training stage: the network of the plan's dataset, trained on one fold of the preprocessed cases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffunet import build_network, set_memory_options
from light_training.checkpoint import archive_previous_run, fold_logdir
from light_training.compilation import (compile_for_training, inductor_cache_dir, resolve_training_compile,
                                        training_compile_targets)
from light_training.config import settings_from
from light_training.datasets import load_dataset
from light_training.fast_paths import resolve_fast_paths
from light_training.io import read_json
from light_training.memory.fit import check_training_memory
from light_training.planning.network_plan import describe_network, network_for_patch, planned_model_options
from light_training.plans import NetworkPlan, Plans, plans_path
from light_training.runtime import (cleanup_distributed, configure_backends, resolve_device, resolve_precision,
                                    seed_everything, set_cpu_threads, setup_distributed)
from light_training.stages import StageFailed, write_config
from light_training.training.augmentation import make_training_stream
from light_training.training.dataloading import ValidationPatches
from light_training.training.splits import fold_cases
from light_training.training.step import TrainSettings
from light_training.training.trainer import Trainer, TrainingStopped

__all__ = ["TrainStageSettings", "load_plans", "training_topology", "build_training_network", "patch_and_batch",
           "train"]


@dataclass(frozen=True)
class TrainStageSettings:
    """The training script's constants (their comments say what each does), checked once."""
    dataset: str
    data_dir: str
    logdir: str
    max_epoch: int
    batch_size: int | None
    val_every: int
    device: str
    patch_size: list[int] | None
    augmentation: bool
    oversample_foreground: float
    model_preset: str
    model_variant: str
    mba: bool
    mc_diff: bool
    boundary_target: str
    num_iterations_per_epoch: int
    num_workers: int
    fold: int
    test_cases: list[str]
    resume: bool
    seed: int
    lr: float
    num_val_patches: int
    precision: str
    planned_network: bool = False
    num_threads: int | None = None
    channels_last: bool | None = None
    accumulate_steps: int = 1
    mc_chunk: int | None = None
    checkpointing: bool = False
    torch_compile: bool | None = None
    compile_regional: bool = True

    def __post_init__(self):
        if not 0 <= self.oversample_foreground <= 1:
            raise ValueError(f"oversample_foreground={self.oversample_foreground!r}: expected a share of the "
                             f"patches, in [0, 1]")


def load_plans(data_dir: str | Path, dataset: str) -> Plans:
    """The plan of the preprocessed cases in ``data_dir``; ``ValueError`` when it is missing or of another dataset."""
    path = plans_path(data_dir)
    if not path.is_file():
        raise ValueError(f"{path} not found: run the preprocessing script of this chain first, or point "
                         f"--data_dir at its output")
    plans = Plans.from_json(read_json(path))
    expected = load_dataset(dataset).name
    if plans.dataset != expected:
        raise ValueError(f"{path} is a {plans.dataset!r} plan, this script works on {expected!r}")
    return plans


def _planned_network(plans: Plans, wanted: str) -> NetworkPlan:
    if plans.network is None:
        raise ValueError(f"the plan of {plans.dataset!r} holds no planned network ({wanted}): run the "
                         f"preprocessing script again (it plans one for its gpu_memory_target_gb), or set the value")
    return plans.network


def training_topology(settings: TrainStageSettings, plans: Plans) -> dict[str, Any] | None:
    """With ``planned_network``, the plan's ``network`` entry for the training patch: the plan's own, or
    for a ``patch_size`` of the constants that differs from the plan's, the strides and stages the plan's
    rules derive for that patch (:func:`network_for_patch`: a smaller patch keeps every feature map >= 4
    voxels per axis). None without ``planned_network``."""
    if not settings.planned_network:
        return None
    network = _planned_network(plans, "planned_network=True").to_json()
    return network if settings.patch_size is None else network_for_patch(network, settings.patch_size)


def build_training_network(settings: TrainStageSettings, plans: Plans):
    """The network the constants ask for (``model_variant``, ``model_preset`` and the model options); with
    ``planned_network`` the per-stage strides and kernels of :func:`training_topology`, at ``model_preset``'s
    widths (the model's config, which every checkpoint carries, records them for prediction)."""
    s = settings
    network = training_topology(s, plans)
    shape = planned_model_options(network, s.model_preset) if network is not None else {}
    return build_network(s.model_variant, len(plans.channel_names), plans.num_classes, preset=s.model_preset,
                         mba=s.mba, mc_diff=s.mc_diff, boundary_target=s.boundary_target, **shape)


def patch_and_batch(settings: TrainStageSettings, plans: Plans, model) -> tuple[list[int], int]:
    """``patch_size`` and ``batch_size`` of the constants, the plan's where they are None; ``ValueError``
    when the network cannot divide the patch."""
    patch, batch = settings.patch_size, settings.batch_size
    if patch is None:
        patch = _planned_network(plans, "patch_size=None").patch_size
    if batch is None:
        batch = _planned_network(plans, "batch_size=None").batch_size
    try:
        model.check_patch_size(patch)
    except ValueError as err:
        if settings.patch_size is not None:
            raise
        raise ValueError(f"patch_size=None takes the plan's patch {patch}, but {err}; set --patch_size or use "
                         f"--planned_network=True") from None
    if int(batch) < 1:
        raise ValueError(f"batch_size={batch!r}: expected at least 1 patch per step")
    return [int(p) for p in patch], int(batch)


def _check_memory(s: TrainStageSettings, recipe: TrainSettings, plans: Plans, model, patch: list[int], batch: int,
                  device, is_main: bool) -> None:
    """The memory room's check before the loaders start (:func:`check_training_memory`); :class:`StageFailed`
    when the step does not fit the GPU's free memory."""
    network = None if plans.network is None else plans.network.to_json()
    options = {"mc_chunk": s.mc_chunk, "checkpointing": s.checkpointing, "accumulate_steps": s.accumulate_steps}
    stop = check_training_memory(model, patch, batch, recipe, options, device, network,
                                 describe_network(network) if network is not None else "", s.planned_network, is_main)
    if stop:
        raise StageFailed(stop)


def train(config: dict[str, Any], script: str) -> dict[str, Any]:
    """Train on fold ``fold`` of ``data_dir`` into ``logdir`` (single process or one rank of torchrun).

    Writes ``<logdir>/model/{latest,best,final}.pt``, tensorboard events, ``progress.png`` and the
    resolved constants. A fresh run moves an earlier run in ``logdir`` to ``previous_runs/``. Folds other
    than 0 train into ``<logdir>/fold_<k>`` (:func:`~light_training.checkpoint.fold_logdir`), beside fold 0's.
    """
    s = settings_from(TrainStageSettings, config)
    logdir = str(fold_logdir(s.logdir, s.fold))
    c = {**config, "logdir": logdir}  # what the checkpoints and <logdir>/*_config.json store, never read here
    set_cpu_threads(s.num_threads)
    dist, device = setup_distributed(resolve_device(s.device))
    seed_everything(s.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    stream = None
    try:
        plans = load_plans(s.data_dir, s.dataset)
        model = build_training_network(s, plans)
        derived = training_topology(s, plans)
        if dist.is_main and derived is not None and "derived_from_patch" in derived:
            print(f"note: patch {derived['patch_size']} is not the plan's {derived['derived_from_patch']}: the network "
                  f"takes the topology the plan's rules derive for it ({len(derived['strides'])} stages, strides "
                  f"{derived['strides']}, kernels {derived['kernel_sizes']}; every feature map >= 4 voxels per axis)")
        set_memory_options(model, mc_chunk=s.mc_chunk, checkpointing=s.checkpointing)
        patch, batch = patch_and_batch(s, plans, model)
        precision = resolve_precision(s.precision, device)
        recipe = TrainSettings(max_epoch=s.max_epoch, num_iterations_per_epoch=s.num_iterations_per_epoch,
                               batch_size=batch, val_every=s.val_every, lr=s.lr, precision=s.precision, seed=s.seed,
                               accumulate_steps=s.accumulate_steps,
                               channels_last=resolve_fast_paths("train", device.type, precision,
                                                                s.channels_last).channels_last)
        _check_memory(s, recipe, plans, model, patch, batch, device, dist.is_main)  # estimates the recipe's step
        c = {**c, "patch_size": patch, "batch_size": batch}  # resolved: the checkpoint's config tells prediction
        if resolve_training_compile(s.torch_compile, device):
            compile_for_training(model, s.compile_regional)
            if dist.is_main:
                print(f"torch.compile: {len(training_compile_targets(model, s.compile_regional))} "
                      f"{'U-Net stages (regional)' if s.compile_regional else 'whole networks'}, static shapes; "
                      f"the first step and the first validation compile (cache: {inductor_cache_dir()})", flush=True)
        if not dist.is_main:
            dist.barrier()  # rank 0 writes splits.json first
        train_cases, val_cases = fold_cases(s.data_dir, s.fold, s.test_cases or None)
        if dist.is_main:
            dist.barrier()
            if not s.resume and (moved := archive_previous_run(logdir)) is not None:
                print(f"note: {logdir} held an earlier run, moved to {moved} (use --resume=True to continue)")
            write_config(c, script, logdir)
        dist.barrier()
        trainer = Trainer(model, recipe, logdir, plans, c, device, dist)
        configure_backends(device, trainer.precision)  # cudnn.benchmark; TF32 only under bf16/fp16
        if s.resume:
            trainer.resume()
        stream = make_training_stream(s.data_dir, train_cases, patch, batch, s.augmentation, s.num_workers,
                                      seed=[s.seed, dist.rank, trainer.start_epoch],
                                      oversample_foreground_percent=s.oversample_foreground)
        validation = ValidationPatches(s.data_dir, val_cases, patch, s.num_val_patches, s.seed)
        if dist.is_main and validation.without_foreground:
            print(f"warning: validation case(s) without foreground left out of the pseudo Dice: "
                  f"{', '.join(validation.without_foreground)}" + ("" if len(validation) else "; no validation"))
        if dist.is_main:
            print(f"fold {s.fold}: {len(train_cases)} training cases, {len(val_cases)} validation cases; "
                  f"{s.model_variant} ({s.model_preset}"
                  f"{', planned network' if s.planned_network else ''}) on {device} x {dist.world_size}, "
                  f"precision {s.precision}; patch {patch}, effective batch {trainer.effective_batch} (batch_size "
                  f"{batch} x accumulate_steps {s.accumulate_steps} x {dist.world_size} processes); "
                  f"epochs {trainer.start_epoch + 1}..{s.max_epoch}")
        result = trainer.fit(stream, validation)
    except TrainingStopped as err:
        raise StageFailed(str(err)) from None
    finally:
        if stream is not None:
            stream.close()
        cleanup_distributed()
    if dist.is_main:
        print(f"done: best pseudo Dice {result['best_dice']:.4f}; checkpoints in {Path(logdir) / 'model'}")
    return result
