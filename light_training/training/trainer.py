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
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from diffunet.networks import network_from_config
from diffunet.uncertainty import uncertainty_map
from light_training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from light_training.compilation import announce_compile, is_compiled
from light_training.plans import Plans
from light_training.runtime import DistInfo, autocast_context, resolve_precision, seed_everything
from light_training.training.dataloading import ValidationPatches
from light_training.training.monitor import TrainingMonitor, epoch_scalars, middle_slices, summary_line
from light_training.training.skips import SkippedStep, diagnose, skip_message, stopped_message
from light_training.training.step import (TrainSettings, all_finite, backward, check_label, clip_gradients,
                                          forward_loss, make_grad_scaler, make_optimizer)
from light_training.training.validation import dice_counts, pad_batch, validation_scalars

__all__ = ["TrainingStopped", "Trainer", "describe_patch"]


def describe_patch(shape: Sequence[int]) -> str:
    """``128^3`` for a cube, ``96x160x160`` otherwise (a patch's (z, y, x))."""
    shape = [int(n) for n in shape]
    return f"{shape[0]}^3" if len(shape) == 3 and len(set(shape)) == 1 else "x".join(map(str, shape))


def _write_line(line: str) -> None:
    """A line on stdout, above the progress bar (which tqdm redraws), flushed: it shows in a log file at once."""
    tqdm.write(line)
    sys.stdout.flush()


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); the message says why and what was kept."""


class Trainer:
    """Trains ``model`` (a network of :func:`diffunet.build_network`) and writes
    ``<logdir>/model/{latest,best,final}.pt`` and the logs.

    Args:
        model: the network (on any device; moved to ``device``).
        settings: the recipe; ``logdir``: logs and checkpoints.
        plans: the preprocessing plan (stored in every checkpoint as read, and gives the class names); None:
            none (``{}`` stored, classes named ``class_<k>``).
        checkpoint_config: the training script's resolved constants, only stored (every checkpoint's ``config``,
            which prediction and export read); the trainer itself reads ``settings``.
        dist: this rank's :class:`DistInfo`; ``find_unused_parameters`` is passed to DDP.
    """

    LOSS_DISPLAY_EVERY = 10  # steps between the progress bar's reads of the loss (each a device sync)

    def __init__(self, model: torch.nn.Module, settings: TrainSettings, logdir: str | Path, plans: Plans | None,
                 checkpoint_config: dict[str, Any], device: torch.device, dist: DistInfo = DistInfo(),
                 find_unused_parameters: bool = False):
        steps = settings.accumulate_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"accumulate_steps={settings.accumulate_steps!r}: expected an int >= 1 "
                             f"(batches per optimizer step)")
        self.settings, self.logdir, self.plans = settings, Path(logdir), plans
        self.checkpoint_config = checkpoint_config
        self.device, self.dist = device, dist
        self.layout = torch.channels_last_3d if settings.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout)
        self.net = self.model
        if dist.world_size > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)
        self.optimizer = make_optimizer(self.model.parameters(), settings)
        # a closure reads self.settings, so a resumed run with a new max_epoch follows the new schedule
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: self._poly(e))
        self.precision = resolve_precision(settings.precision, device)  # "fp32", "bf16" or "fp16"
        self.scaler = make_grad_scaler(device, self.precision)
        self.start_epoch, self.best_dice = 0, -1.0
        self.nonfinite_in_a_row = 0  # skipped steps in a row, across epochs
        self.skips: list[SkippedStep] = []  # why each of them was skipped
        self.last_skip: SkippedStep | None = None  # set by train_step when it skips
        self.history: dict[str, list] = {}
        self._restored_rng: dict[str, Any] | None = None
        self.compiled = is_compiled(self.model)  # then the first step and the first validation say so
        self._announced: set[str] = set()
        names = list((plans and plans.label_names) or [f"class_{k}" for k in range(self.model.num_classes)])
        self.class_names = names[1:self.model.num_classes]

    def _poly(self, epoch: int) -> float:
        """The poly LR factor (1 - epoch / max_epoch) ** 0.9 (nnU-Net's schedule)."""
        return max(0.0, 1 - epoch / self.settings.max_epoch) ** self.settings.poly_power

    @property
    def effective_batch(self) -> int:
        """Patches per optimizer step: batch_size x accumulate_steps x processes."""
        return self.settings.batch_size * self.settings.accumulate_steps * self.dist.world_size

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.logdir / "model"

    def state(self, epochs_done: int) -> dict[str, Any]:
        """The checkpoint dict after ``epochs_done`` epochs (tensors and plain values only)."""
        return {"model_class": type(self.model).__name__, "model_config": dict(self.model.config),
                "model": self.model.state_dict(), "plans": {} if self.plans is None else self.plans.to_json(),
                "config": self.checkpoint_config,
                "settings": asdict(self.settings), "epoch": epochs_done, "best_dice": self.best_dice,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history,
                "world_size": self.dist.world_size, "effective_batch": self.effective_batch}

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
    def _announce(self, kind: str, what: str) -> contextlib.AbstractContextManager:
        """:func:`~light_training.compilation.announce_compile` around the first call of ``kind`` of a
        compiled model (rank 0); nothing otherwise."""
        first = self.compiled and self.dist.is_main and kind not in self._announced
        self._announced.add(kind)
        return announce_compile(what, first, _write_line)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.precision)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device; through pinned memory on CUDA, so the copy does not block."""
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def train_step(self, batch: dict[str, Any] | Sequence[dict[str, Any]], epoch: int) -> dict[str, torch.Tensor] | None:
        """One optimisation step on ``batch`` (``image (B, C, *patch)`` float, ``label (B, *patch)`` class
        indices), or on a list of ``accumulate_steps`` such micro-batches whose gradients are averaged
        (as DDP averages those of its ranks). Returns the loss terms (detached device scalars, averaged
        over the micro-batches), or None when the loss or the gradient was NaN/Inf (step skipped).

        One device value is read per step: whether it is finite (fp16's GradScaler reads its own too).
        """
        micro = [batch] if isinstance(batch, dict) else list(batch)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for i, part in enumerate(micro):
            check_label(part["label"], self.model.num_classes)
            image, label = self._to_device(part["image"]), self._to_device(part["label"]).long()
            image = image.contiguous(memory_format=self.layout)
            last = i == len(micro) - 1  # DDP all-reduces the gradients on the last micro-batch only
            sync = self.net.no_sync() if self.dist.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                terms = forward_loss(self.net, image, label, self.precision, epoch, self.settings.max_epoch)
                backward(self.scaler, terms["loss"], len(micro))
            for k, v in terms.items():
                v = v.detach().float() / len(micro)
                totals[k] = v if k not in totals else totals[k] + v
        if self.scaler.is_enabled():
            # inf gradients are normal with fp16 (the scaler skips the step and lowers the scale); a
            # non-finite loss is not
            if not all_finite([totals["loss"]], self.dist.world_size):
                self.last_skip = diagnose(self.model, totals["loss"])
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.model.parameters(), self.settings)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return totals
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if not all_finite([totals["loss"], grad_norm], self.dist.world_size):
            self.last_skip = diagnose(self.model, totals["loss"])
            self.optimizer.zero_grad(set_to_none=True)
            return None
        clip_gradients(parameters, self.settings, grad_norm)
        self.optimizer.step()
        return totals

    def train_epoch(self, batches: Iterator[dict[str, Any]], epoch: int) -> dict[str, float]:
        """``num_iterations_per_epoch`` steps of ``accumulate_steps`` batches each; the mean of every loss
        term over the steps (and ranks). The terms stay on the device until the epoch's end (the progress
        bar reads the loss every ``LOSS_DISPLAY_EVERY`` steps)."""
        s = self.settings
        self.net.train()
        sums: dict[str, torch.Tensor] = {}
        done, skipped, data_time = 0, 0, 0.0
        loop_start = time.perf_counter()
        bar = tqdm(range(s.num_iterations_per_epoch), desc=f"epoch {epoch + 1}/{s.max_epoch}", leave=False,
                   disable=not self.dist.is_main, dynamic_ncols=True)
        for step in bar:
            start = time.perf_counter()
            micro = [next(batches) for _ in range(s.accumulate_steps)]
            data_time += time.perf_counter() - start
            image = micro[0]["image"]
            with self._announce("train", f"the training step for patch {describe_patch(image.shape[2:])}, "
                                         f"batch {image.shape[0]}"):
                terms = self.train_step(micro, epoch)
            if terms is None:
                skipped, self.nonfinite_in_a_row = skipped + 1, self.nonfinite_in_a_row + 1
                self.skips.append(self.last_skip)
                if self.dist.is_main:
                    keys = [b.get("keys") for b in micro] if len(micro) > 1 else micro[0].get("keys")
                    warnings.warn(f"epoch {epoch + 1} step {step + 1}: {skip_message(self.last_skip)} "
                                  f"(cases {keys}); step skipped", RuntimeWarning, stacklevel=2)
                if self.nonfinite_in_a_row >= s.max_consecutive_nonfinite:
                    raise TrainingStopped(stopped_message(self.skips, self.precision, epoch,
                                                          self.checkpoint_dir / "latest.pt"))
                continue
            self.nonfinite_in_a_row, self.skips = 0, []
            done += 1
            for k, v in terms.items():
                sums[k] = v.double() if k not in sums else sums[k] + v.double()
            if step % self.LOSS_DISPLAY_EVERY == 0:
                bar.set_postfix(loss=f"{float(terms['loss']):.4f}")
        loop_time = time.perf_counter() - loop_start
        return epoch_scalars(sums, done, skipped, data_time, loop_time, self.device, self.dist.world_size)

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
        batch_size = self.settings.batch_size
        for image, label in patches.batches(batch_size, self.dist.rank, self.dist.world_size):
            n = len(image)
            x = torch.from_numpy(pad_batch(image, batch_size) if self.compiled else image).to(self.device)
            y = torch.from_numpy(label).to(self.device).long()
            with self.autocast(), self._announce("validate", f"validation's sampling for patch "
                                                              f"{describe_patch(image.shape[2:])}, batch {len(x)}"):
                output = self.model.sample_members(x, steps=self.settings.val_steps, generator=generator,
                                                   return_boundary=True)
            pred = output.probs[:n].argmax(1)
            counts[0] += dice_counts(pred, y, k)
            if has_boundary:
                counts[1] += dice_counts(output.boundary_logits[:n].argmax(1), self.model.boundary_labels(y), k)
            if slices is None:
                uncertainty = uncertainty_map("total", output)
                slices = middle_slices(image[0], label[0], pred[0].cpu().numpy(), uncertainty[0].float().cpu().numpy())
        if self.dist.world_size > 1:
            torch_dist.all_reduce(counts)
        self.model.train()
        return validation_scalars(counts, self.class_names, has_boundary), slices

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
                scalars["time/patches_per_s"] = s.num_iterations_per_epoch * self.effective_batch / seconds
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
