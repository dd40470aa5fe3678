"""The training loop: SGD + poly LR, the network's loss, AMP, validation by sampling, checkpoints, resume, DDP.

One epoch is ``num_iterations_per_epoch`` steps on batches from a :class:`~light_training.training.augmentation.BatchStream`;
every ``val_every`` epochs (and after the last) the model samples the fixed
:class:`~light_training.training.dataloading.ValidationPatches` and the per-class Dice of all of them together
(nnU-Net's "pseudo Dice") decides ``best.pt``; a Diff-UNet's boundary branch is scored on the same
patches (the boundary Dice: argmax of its logits against its target), so a collapsed branch shows. Under
``torchrun`` every rank trains on its own batches (DistributedDataParallel averages the gradients),
validates its share of the patches, and rank 0 alone prints, logs and saves.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from diffunet.networks import network_from_config
from diffunet.uncertainty import uncertainty_map
from light_training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from light_training.runtime import DistInfo, autocast_context, resolve_precision, seed_everything
from light_training.training.dataloading import ValidationPatches
from light_training.training.loss import training_loss
from light_training.training.monitor import TrainingMonitor, middle_slices, summary_line

__all__ = ["TrainSettings", "TrainingStopped", "Trainer", "dice_counts", "dice_from_counts"]


@dataclass
class TrainSettings:
    """The optimisation recipe (nnU-Net's, which the original Diff-UNet kept)."""
    max_epoch: int = 1000
    num_iterations_per_epoch: int = 250
    batch_size: int = 2  # per process
    val_every: int = 2  # validate every this many epochs (and after the last)
    lr: float = 1e-2
    momentum: float = 0.99  # SGD, Nesterov
    weight_decay: float = 3e-5
    poly_power: float = 0.9  # lr = lr0 * (1 - epoch / max_epoch) ** 0.9
    grad_clip: float = 12.0  # max gradient norm
    val_steps: int | None = None  # DDIM steps when validating; None: the model's own
    max_consecutive_nonfinite: int = 5  # this many NaN/Inf steps in a row stop training
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16" (light_training.runtime); fp16 uses a grad scaler
    seed: int = 0


def dice_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """True positives, false positives and false negatives of every foreground class: class maps ``pred``
    and ``target`` (any equal shapes) -> (3, num_classes - 1) float64, on their device."""
    counts = torch.zeros(3, num_classes - 1, dtype=torch.float64, device=pred.device)
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        counts[0, c - 1] = (p & t).sum()
        counts[1, c - 1] = (p & ~t).sum()
        counts[2, c - 1] = (~p & t).sum()
    return counts


def dice_from_counts(counts: torch.Tensor | np.ndarray) -> np.ndarray:
    """Dice 2 tp / (2 tp + fp + fn) per class from :func:`dice_counts` (summed over patches); NaN for a
    class absent from both the target and the prediction."""
    tp, fp, fn = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); the message says why and what was kept."""


class Trainer:
    """Trains ``model`` (a network of :func:`diffunet.build_network`) and writes
    ``<logdir>/model/{latest,best,final}.pt`` and the logs.

    Args:
        model: the network (on any device; moved to ``device``).
        settings: the recipe; ``logdir``: logs and checkpoints.
        plans: the preprocessing plan (stored in every checkpoint, and gives the class names).
        config: the training script's resolved constants (stored in every checkpoint).
        dist: this rank's :class:`DistInfo`; ``find_unused_parameters`` is passed to DDP.
    """

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, logdir: str | Path, plans: dict[str, Any],
                 config: dict[str, Any], device: torch.device, dist: DistInfo = DistInfo(),
                 find_unused_parameters: bool = False):
        self.settings, self.logdir, self.plans, self.config = settings, Path(logdir), plans, config
        self.device, self.dist = device, dist
        self.model = model.to(device)
        self.net = self.model
        if dist.world_size > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         nesterov=True, weight_decay=settings.weight_decay)
        # a closure reads self.settings, so a resumed run with a new max_epoch follows the new schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: self._poly(e))
        self.precision = resolve_precision(settings.precision, device)  # "fp32", "bf16" or "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.start_epoch, self.best_dice = 0, -1.0
        self.nonfinite_in_a_row = 0  # skipped steps in a row, across epochs
        self.history: dict[str, list] = {}
        self._restored_rng: dict[str, Any] | None = None
        names = list(plans.get("label_names") or [f"class_{k}" for k in range(self.model.num_classes)])
        self.class_names = names[1:self.model.num_classes]

    def _poly(self, epoch: int) -> float:
        """The poly LR factor (1 - epoch / max_epoch) ** 0.9 (nnU-Net's schedule)."""
        return max(0.0, 1 - epoch / self.settings.max_epoch) ** self.settings.poly_power

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.logdir / "model"

    def state(self, epochs_done: int) -> dict[str, Any]:
        """The checkpoint dict after ``epochs_done`` epochs (tensors and plain values only)."""
        return {"model_class": type(self.model).__name__, "model_config": dict(self.model.config),
                "model": self.model.state_dict(), "plans": self.plans, "config": self.config,
                "settings": asdict(self.settings), "epoch": epochs_done, "best_dice": self.best_dice,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history,
                "world_size": self.dist.world_size}

    def save(self, name: str, epochs_done: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(epochs_done), self.checkpoint_dir / f"{name}.pt")

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default ``<logdir>/model/latest.pt``): weights, optimizer, LR schedule,
        grad scaler, epoch counter, best Dice, history and (single process) the random generators."""
        path = Path(path) if path is not None else self.checkpoint_dir / "latest.pt"
        if not path.is_file():
            raise TrainingStopped(f"resume: no checkpoint at {path}; start without resume=True")
        ckpt = load_checkpoint(path, map_location="cpu")  # load_state_dict moves each part to its device
        if ckpt["model_class"] != type(self.model).__name__:
            raise TrainingStopped(f"resume: {path} holds a {ckpt['model_class']}, this run builds a "
                                  f"{type(self.model).__name__}; use the same model_variant, or another logdir")
        # the saved config with today's defaults filled in (a checkpoint older than an option lacks it)
        saved = ckpt["model_config"] if ckpt["model_config"] == self.model.config else \
            network_from_config(ckpt["model_class"], ckpt["model_config"]).config
        if saved != self.model.config:
            diff = {k: (saved.get(k), v) for k, v in self.model.config.items() if saved.get(k) != v}
            raise TrainingStopped(f"resume: {path} holds another architecture (checkpoint vs now: {diff}); "
                                  f"use the same model_preset, model options and data, or another logdir")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.start_epoch, self.best_dice = int(ckpt["epoch"]), float(ckpt["best_dice"])
        self.history = ckpt.get("history", {})
        self._restored_rng = ckpt["rng"] if ckpt.get("world_size", 1) == 1 == self.dist.world_size else None
        old_max = ckpt.get("settings", {}).get("max_epoch", self.settings.max_epoch)
        if old_max != self.settings.max_epoch and self.dist.is_main:
            print(f"note: max_epoch {old_max} -> {self.settings.max_epoch}; the LR follows the new schedule")
        lrs = [base * self._poly(self.start_epoch) for base in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    # ------------------------------------------------------------------ steps
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.precision)

    def _all_finite(self, value: torch.Tensor) -> bool:
        """True when ``value`` is finite on every rank (all ranks must skip a step together)."""
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.dist.world_size > 1:
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, float] | None:
        """One optimisation step on ``batch`` (``image (B, C, *patch)`` float, ``label (B, *patch)`` class
        indices); returns the loss terms, or None when the loss or the gradient was NaN/Inf (step skipped)."""
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True).long()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            output = self.net(image, label)
            terms = training_loss(output, label, epoch, self.settings.max_epoch)
        if not self._all_finite(terms["loss"]):
            return None
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips by itself on inf gradients (normal with fp16)
            self.scaler.update()
        elif math.isfinite(float(grad_norm)):
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        return {k: float(v.detach()) for k, v in terms.items()}

    def train_epoch(self, batches: Iterator[dict[str, Any]], epoch: int) -> dict[str, float]:
        """``num_iterations_per_epoch`` steps; the mean of every loss term over the steps (and ranks)."""
        s = self.settings
        self.net.train()
        sums: dict[str, float] = {}
        done, skipped, data_time = 0, 0, 0.0
        bar = tqdm(range(s.num_iterations_per_epoch), desc=f"epoch {epoch + 1}/{s.max_epoch}", leave=False,
                   disable=not self.dist.is_main, dynamic_ncols=True)
        for step in bar:
            start = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - start
            terms = self.train_step(batch, epoch)
            if terms is None:
                skipped, self.nonfinite_in_a_row = skipped + 1, self.nonfinite_in_a_row + 1
                if self.dist.is_main:
                    warnings.warn(f"epoch {epoch + 1} step {step + 1}: loss or gradient is NaN/Inf "
                                  f"(cases {batch.get('keys')}); step skipped", RuntimeWarning, stacklevel=2)
                if self.nonfinite_in_a_row >= s.max_consecutive_nonfinite:
                    latest = self.checkpoint_dir / "latest.pt"
                    kept = (f"the last good checkpoint, {latest} ({epoch} epochs done), is kept" if latest.is_file()
                            else "no checkpoint had been written yet")
                    raise TrainingStopped(
                        f"the loss or gradient was NaN/Inf in {self.nonfinite_in_a_row} steps in a row (epoch "
                        f"{epoch + 1}); training stopped and {kept}. Check the data (NaN in the preprocessed "
                        f"images?), lower lr or use precision='fp32', then resume with resume=True")
                continue
            self.nonfinite_in_a_row = 0
            done += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
        keys = list(sums)  # the loss's own order; the same on every rank (steps are skipped together)
        means = torch.tensor([sums.get(k, 0.0) for k in keys] + [done, skipped, data_time],
                             dtype=torch.float64, device=self.device)
        if self.dist.world_size > 1:
            torch_dist.all_reduce(means)
        total = max(float(means[len(keys)]), 1.0)
        result = {f"train/{k}": float(means[i]) / total for i, k in enumerate(keys)}
        result["steps/skipped"] = float(means[len(keys) + 1])
        result["time/data_s"] = float(means[len(keys) + 2]) / self.dist.world_size
        return result

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, patches: ValidationPatches) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
        """Sample every validation patch (this rank's share); Dice per foreground class over all patches
        together, and their mean ``val/pseudo_dice`` (classes absent from every patch and prediction are left
        out of the mean). A network with a boundary branch also gets ``val/boundary_dice``: the same mean
        Dice of the argmax of the boundary logits against the boundary target (0 when the branch predicts
        no boundary voxel anywhere)."""
        self.model.eval()
        k = self.model.num_classes
        counts = torch.zeros(2, 3, k - 1, dtype=torch.float64, device=self.device)  # segmentation, boundary
        generator = torch.Generator(self.device).manual_seed(self.settings.seed)  # same noise every time
        slices, has_boundary = None, hasattr(self.model, "boundary_labels")
        for image, label in patches.batches(self.settings.batch_size, self.dist.rank, self.dist.world_size):
            x = torch.from_numpy(image).to(self.device)
            y = torch.from_numpy(label).to(self.device).long()
            with self.autocast():
                output = self.model.sample_members(x, steps=self.settings.val_steps, generator=generator,
                                                   return_boundary=True)
            pred = output.probs.argmax(1)
            counts[0] += dice_counts(pred, y, k)
            if has_boundary:
                counts[1] += dice_counts(output.boundary_logits.argmax(1), self.model.boundary_labels(y), k)
            if slices is None:
                uncertainty = uncertainty_map("total", output)
                slices = middle_slices(image[0], label[0], pred[0].cpu().numpy(), uncertainty[0].float().cpu().numpy())
        if self.dist.world_size > 1:
            torch_dist.all_reduce(counts)
        self.model.train()
        dice = dice_from_counts(counts[0])
        scalars = {f"val/dice_{name}": float(d) for name, d in zip(self.class_names, dice)}
        scalars["val/pseudo_dice"] = _nanmean(dice)
        if has_boundary:
            scalars["val/boundary_dice"] = _nanmean(dice_from_counts(counts[1]))
        return scalars, slices

    # ------------------------------------------------------------------ the run
    def fit(self, batches: Iterator[dict[str, Any]], validation: ValidationPatches) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``max_epoch``; returns ``{"epochs", "best_dice"}``.

        Raises :class:`TrainingStopped` when the loss stays non-finite (``latest.pt`` keeps the last good epoch).
        """
        s = self.settings
        if self._restored_rng is not None:
            set_rng_state(self._restored_rng)  # a single-process resume continues the random streams
        else:
            seed_everything([s.seed, self.dist.rank, self.start_epoch])
        monitor = TrainingMonitor(self.logdir, self.dist.is_main, self.history, self.start_epoch)
        if self.dist.is_main and not len(validation):
            print("note: no validation cases in this fold; best.pt will be the final model")
        try:
            for epoch in range(self.start_epoch, s.max_epoch):
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                scalars = self.train_epoch(batches, epoch)
                scalars["lr"] = lr
                if len(validation) and ((epoch + 1) % s.val_every == 0 or epoch + 1 == s.max_epoch):
                    val_scalars, slices = self.validate(validation)
                    scalars.update(val_scalars)
                    if slices is not None:
                        monitor.log_images(epoch, slices)
                seconds = time.perf_counter() - start
                scalars["time/epoch_s"] = seconds
                scalars["time/patches_per_s"] = (s.num_iterations_per_epoch * s.batch_size * self.dist.world_size
                                                 / seconds)
                self.scheduler.step()
                monitor.log_epoch(epoch, scalars)
                self.history = monitor.history
                dice = scalars.get("val/pseudo_dice", float("nan"))
                improved = math.isfinite(dice) and dice > self.best_dice
                if improved:
                    self.best_dice = dice
                self.save("latest", epoch + 1)
                if improved:
                    self.save("best", epoch + 1)
                if self.dist.is_main:
                    print(summary_line(epoch, s.max_epoch, scalars) + (" | new best" if improved else ""), flush=True)
            self.save("final", s.max_epoch)
            if not len(validation):
                self.save("best", s.max_epoch)
        finally:
            monitor.close()
        self.dist.barrier()  # the other ranks wait until rank 0 has written the final checkpoint
        return {"epochs": s.max_epoch, "best_dice": self.best_dice}
