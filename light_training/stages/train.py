"""The training stage: the network of the plan's dataset, trained on one fold of the preprocessed cases."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from diffunet import build_network, set_memory_options
from light_training.checkpoint import archive_previous_run, fold_logdir
from light_training.compilation import (compile_for_training, inductor_cache_dir, resolve_training_compile,
                                        training_compile_targets)
from light_training.datasets import load_dataset
from light_training.fast_paths import resolve_fast_paths
from light_training.io import read_json
from light_training.memory.fit import check_training_memory
from light_training.planning.network_plan import describe_network, network_for_patch, planned_model_options
from light_training.planning.plans import plans_path
from light_training.runtime import (cleanup_distributed, configure_backends, resolve_device, resolve_precision,
                                    seed_everything, set_cpu_threads, setup_distributed)
from light_training.stages import StageFailed, write_config
from light_training.training.augmentation import make_training_stream
from light_training.training.dataloading import ValidationPatches
from light_training.training.splits import fold_cases
from light_training.training.step import TrainSettings
from light_training.training.trainer import Trainer, TrainingStopped

__all__ = ["load_plans", "training_topology", "build_training_network", "patch_and_batch", "train"]


def load_plans(data_dir: str | Path, dataset: str) -> dict[str, Any]:
    """The plan of the preprocessed cases in ``data_dir``; ``ValueError`` when it is missing or of another dataset."""
    path = plans_path(data_dir)
    if not path.is_file():
        raise ValueError(f"{path} not found: run the preprocessing script of this chain first, or point "
                         f"--data_dir at its output")
    plans = read_json(path)
    expected = load_dataset(dataset).name
    if plans.get("dataset") != expected:
        raise ValueError(f"{path} is a {plans.get('dataset')!r} plan, this script works on {expected!r}")
    return plans


def _planned_network(plans: dict[str, Any], wanted: str) -> dict[str, Any]:
    if not plans.get("network"):
        raise ValueError(f"the plan of {plans.get('dataset')!r} holds no planned network ({wanted}): run the "
                         f"preprocessing script again (it plans one for its gpu_memory_target_gb), or set the value")
    return plans["network"]


def training_topology(config: dict[str, Any], plans: dict[str, Any]) -> dict[str, Any] | None:
    """With ``planned_network``, the plan's ``network`` entry for the training patch: the plan's own, or
    for a ``patch_size`` of the constants that differs from the plan's, the strides and stages the plan's
    rules derive for that patch (:func:`network_for_patch`: a smaller patch keeps every feature map >= 4
    voxels per axis). None without ``planned_network``."""
    if not config.get("planned_network"):
        return None
    network = _planned_network(plans, "planned_network=True")
    return network if config.get("patch_size") is None else network_for_patch(network, config["patch_size"])


def build_training_network(config: dict[str, Any], plans: dict[str, Any]):
    """The network the constants ask for (``model_variant``, ``model_preset`` and the model options); with
    ``planned_network`` the per-stage strides and kernels of :func:`training_topology`, at ``model_preset``'s
    widths (the model's config, which every checkpoint carries, records them for prediction)."""
    network = training_topology(config, plans)
    shape = planned_model_options(network, config["model_preset"]) if network is not None else {}
    return build_network(config["model_variant"], len(plans["channel_names"]), plans["num_classes"],
                         preset=config["model_preset"], mba=config["mba"], mc_diff=config["mc_diff"],
                         boundary_target=config["boundary_target"], **shape)


def patch_and_batch(config: dict[str, Any], plans: dict[str, Any], model) -> tuple[list[int], int]:
    """``patch_size`` and ``batch_size`` of the constants, the plan's where they are None; ``ValueError``
    when the network cannot divide the patch."""
    patch, batch = config["patch_size"], config["batch_size"]
    if patch is None:
        patch = _planned_network(plans, "patch_size=None")["patch_size"]
    if batch is None:
        batch = _planned_network(plans, "batch_size=None")["batch_size"]
    try:
        model.check_patch_size(patch)
    except ValueError as err:
        if config["patch_size"] is not None:
            raise
        raise ValueError(f"patch_size=None takes the plan's patch {patch}, but {err}; set --patch_size or use "
                         f"--planned_network=True") from None
    if int(batch) < 1:
        raise ValueError(f"batch_size={batch!r}: expected at least 1 patch per step")
    return [int(p) for p in patch], int(batch)


def _check_memory(c: dict[str, Any], plans: dict[str, Any], model, patch: list[int], batch: int, device,
                  is_main: bool) -> None:
    """The memory room's check before the loaders start (:func:`check_training_memory`); :class:`StageFailed`
    when the step does not fit the GPU's free memory."""
    network = plans.get("network")
    stop = check_training_memory(model, patch, batch, c["precision"],
                                 {k: c.get(k) for k in ("mc_chunk", "checkpointing", "accumulate_steps")}, device,
                                 network, describe_network(network) if network is not None else "",
                                 bool(c.get("planned_network")), is_main)
    if stop:
        raise StageFailed(stop)


def train(config: dict[str, Any], script: str) -> dict[str, Any]:
    """Train on fold ``fold`` of ``data_dir`` into ``logdir`` (single process or one rank of torchrun).

    Writes ``<logdir>/model/{latest,best,final}.pt``, tensorboard events, ``progress.png`` and the
    resolved constants. A fresh run moves an earlier run in ``logdir`` to ``previous_runs/``. Folds other
    than 0 train into ``<logdir>/fold_<k>`` (:func:`~light_training.checkpoint.fold_logdir`), beside fold 0's.
    """
    c = {**config, "logdir": str(fold_logdir(config["logdir"], config["fold"]))}
    if not 0 <= c["oversample_foreground"] <= 1:
        raise ValueError(f"oversample_foreground={c['oversample_foreground']!r}: expected a share of the patches, "
                         f"in [0, 1]")
    set_cpu_threads(c["num_threads"])
    dist, device = setup_distributed(resolve_device(c["device"]))
    seed_everything(c["seed"])  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    stream = None
    try:
        plans = load_plans(c["data_dir"], c["dataset"])
        model = build_training_network(c, plans)
        derived = training_topology(c, plans)
        if dist.is_main and derived is not None and "derived_from_patch" in derived:
            print(f"note: patch {derived['patch_size']} is not the plan's {derived['derived_from_patch']}: the network "
                  f"takes the topology the plan's rules derive for it ({len(derived['strides'])} stages, strides "
                  f"{derived['strides']}, kernels {derived['kernel_sizes']}; every feature map >= 4 voxels per axis)")
        set_memory_options(model, mc_chunk=c["mc_chunk"], checkpointing=c["checkpointing"])
        patch, batch = patch_and_batch(c, plans, model)
        _check_memory(c, plans, model, patch, batch, device, dist.is_main)
        c = {**c, "patch_size": patch, "batch_size": batch}  # resolved: the checkpoint's config tells prediction
        if resolve_training_compile(c["torch_compile"], device):
            compile_for_training(model, c["compile_regional"])
            if dist.is_main:
                print(f"torch.compile: {len(training_compile_targets(model, c['compile_regional']))} "
                      f"{'U-Net stages (regional)' if c['compile_regional'] else 'whole networks'}, static shapes; "
                      f"the first step and the first validation compile (cache: {inductor_cache_dir()})", flush=True)
        if not dist.is_main:
            dist.barrier()  # rank 0 writes splits.json first
        train_cases, val_cases = fold_cases(c["data_dir"], c["fold"], c["test_cases"] or None)
        if dist.is_main:
            dist.barrier()
            if not c["resume"] and (moved := archive_previous_run(c["logdir"])) is not None:
                print(f"note: {c['logdir']} held an earlier run, moved to {moved} (use --resume=True to continue)")
            write_config(c, script, c["logdir"])
        dist.barrier()
        settings = TrainSettings(max_epoch=c["max_epoch"], num_iterations_per_epoch=c["num_iterations_per_epoch"],
                                 batch_size=batch, val_every=c["val_every"], lr=c["lr"],
                                 precision=c["precision"], seed=c["seed"], accumulate_steps=c["accumulate_steps"],
                                 channels_last=resolve_fast_paths("train", device.type,
                                                                  resolve_precision(c["precision"], device),
                                                                  c.get("channels_last")).channels_last)
        trainer = Trainer(model, settings, c["logdir"], plans, c, device, dist)
        configure_backends(device, trainer.precision)  # cudnn.benchmark; TF32 only under bf16/fp16
        if c["resume"]:
            trainer.resume()
        stream = make_training_stream(c["data_dir"], train_cases, patch, batch, c["augmentation"],
                                      c["num_workers"], seed=[c["seed"], dist.rank, trainer.start_epoch],
                                      oversample_foreground_percent=c["oversample_foreground"])
        validation = ValidationPatches(c["data_dir"], val_cases, patch, c["num_val_patches"], c["seed"])
        if dist.is_main and validation.without_foreground:
            print(f"warning: validation case(s) without foreground left out of the pseudo Dice: "
                  f"{', '.join(validation.without_foreground)}" + ("" if len(validation) else "; no validation"))
        if dist.is_main:
            print(f"fold {c['fold']}: {len(train_cases)} training cases, {len(val_cases)} validation cases; "
                  f"{c['model_variant']} ({c['model_preset']}"
                  f"{', planned network' if c.get('planned_network') else ''}) on {device} x {dist.world_size}, "
                  f"precision {c['precision']}; patch {patch}, effective batch {trainer.effective_batch} (batch_size "
                  f"{batch} x accumulate_steps {c['accumulate_steps']} x {dist.world_size} processes); "
                  f"epochs {trainer.start_epoch + 1}..{c['max_epoch']}")
        result = trainer.fit(stream, validation)
    except TrainingStopped as err:
        raise StageFailed(str(err)) from None
    finally:
        if stream is not None:
            stream.close()
        cleanup_distributed()
    if dist.is_main:
        print(f"done: best pseudo Dice {result['best_dice']:.4f}; checkpoints in {Path(c['logdir']) / 'model'}")
    return result
