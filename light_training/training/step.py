"""The training step's recipe: the settings, the optimizer, and the forward/loss/backward/clip of one step.

:class:`~light_training.training.trainer.Trainer` runs these on real batches (with its checks: finite
loss and gradients, DDP, accumulation); the memory estimator (:mod:`light_training.memory.estimator`)
runs the same functions on fake tensors, so a change of the recipe (the optimizer, its settings, the
clipping, the loss) changes the estimate too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as torch_dist

from light_training.runtime import autocast_context
from light_training.training.loss import training_loss

__all__ = ["TrainSettings", "check_label", "make_optimizer", "make_grad_scaler", "forward_loss", "backward",
           "all_finite", "clip_gradients"]


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
    accumulate_steps: int = 1  # batches per optimizer step (gradients averaged): effective batch
    #                            batch_size x accumulate_steps x GPUs
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16" (light_training.runtime); fp16 uses a grad scaler
    channels_last: bool = False  # weights and training batches in channels_last_3d (light_training.fast_paths);
    #                              validation's patches take the weights' layout at the first convolution
    seed: int = 0


def check_label(label: torch.Tensor, num_classes: int) -> None:
    """Class indices in [0, num_classes), checked on the host copy (no device read)."""
    lo, hi = torch.aminmax(label)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"label values must be class indices in [0, {num_classes - 1}], "
                         f"got range [{int(lo)}, {int(hi)}]")


def make_optimizer(parameters: Iterable[torch.nn.Parameter], settings: TrainSettings, *,
                   foreach: bool | None = None) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay at ``settings``' lr; ``foreach``: PyTorch's choice (None:
    the multi-tensor form on CUDA) or forced."""
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, nesterov=True,
                           weight_decay=settings.weight_decay, foreach=foreach)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's loss scaler on ``device``; disabled (a pass-through) for a resolved ``precision`` "fp32" or "bf16"."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def forward_loss(net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, precision: str, epoch: float,
                 max_epoch: float) -> dict[str, torch.Tensor]:
    """The network's training forward on ``image`` (B, C, *patch) and ``label`` (B, *patch) and its loss
    (:func:`~light_training.training.loss.training_loss` at ``epoch`` of ``max_epoch``) under autocast in
    ``precision``; the loss terms (``"loss"`` differentiable). The output is freed before returning."""
    with autocast_context(image.device, precision):
        output = net(image, label)
        terms = training_loss(output, label, epoch, max_epoch)
    del output
    return terms


def backward(scaler: torch.amp.GradScaler, loss: torch.Tensor, micro_batches: int = 1) -> None:
    """The gradients of ``loss`` averaged over ``micro_batches`` (accumulated into ``.grad``), through fp16's
    scaler."""
    scaler.scale(loss / micro_batches).backward()


def all_finite(values: Sequence[torch.Tensor], world_size: int = 1) -> bool:
    """True when every one of ``values`` is finite on every rank (all ranks must skip a step together).
    The step's one read of a device value: it decides whether the optimizer may step."""
    flag = torch.stack([torch.isfinite(v.detach()).all() for v in values]).all().float().reshape(1)
    if world_size > 1:
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def clip_gradients(parameters: Iterable[torch.nn.Parameter], settings: TrainSettings,
                   grad_norm: torch.Tensor | None = None) -> None:
    """Scale the gradients down to a total norm of at most ``settings.grad_clip``; ``grad_norm``: their norm,
    when already computed (else computed here)."""
    if grad_norm is None:
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
    else:
        torch.nn.utils.clip_grads_with_norm_(parameters, settings.grad_clip, grad_norm)
