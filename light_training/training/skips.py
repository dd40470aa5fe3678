"""Skipped steps: why a step whose loss or gradient was NaN/Inf was skipped, and the advice when too many
in a row stop training (:class:`~light_training.training.trainer.Trainer` prints and raises them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["SkippedStep", "diagnose", "skip_message", "stop_message", "stopped_message"]


@dataclass(frozen=True)
class SkippedStep:
    """Why a step was skipped: whether its loss was finite, and the parameter holding the largest gradient
    (``largest``: its largest |value|, inf where NaN or Inf; 0 and "" when no gradient was computed)."""
    loss_finite: bool
    parameter: str
    largest: float


def diagnose(model: torch.nn.Module, loss: torch.Tensor) -> SkippedStep:
    """Why a step is skipped, from its loss and the unclipped gradients of ``model``: one device read, made
    only on a skipped step."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    peaks = [torch.nan_to_num(g.detach().abs().amax().float(), nan=math.inf, posinf=math.inf) for _, g in named]
    values = torch.stack([torch.isfinite(loss.detach()).float(), *peaks]).tolist()
    if not named:
        return SkippedStep(values[0] > 0, "", 0.0)
    top = int(np.argmax(values[1:]))
    return SkippedStep(values[0] > 0, named[top][0], values[1 + top])


def skip_message(skip: SkippedStep) -> str:
    """What a skipped step's warning says about it."""
    if not skip.loss_finite:
        return "the loss was NaN/Inf"
    if math.isfinite(skip.largest):  # every value finite, but their norm overflowed (from about 1e19 in fp32)
        return (f"the loss was finite, the gradient's norm was not (largest in {skip.parameter}: "
                f"{skip.largest:.3g}, finite values too large to square)")
    return f"the loss was finite, the gradient was not (largest in {skip.parameter}: NaN/Inf)"


def stop_message(skips: Sequence[SkippedStep], precision: str) -> str:
    """The advice when ``skips`` (the skipped steps in a row) stop training: the data, lr or inputs where a
    loss was non-finite; ``precision="fp32"`` only where every loss was finite and the gradient was not under
    a reduced ``precision`` (the forward pass held; only the backward failed)."""
    lost = sum(not s.loss_finite for s in skips)
    parameters = sorted({s.parameter for s in skips if s.loss_finite})
    what = [f"the loss was NaN/Inf in {lost}"] if lost else []
    if lost < len(skips):
        what.append(f"the loss was finite and the gradient NaN/Inf in {len(skips) - lost} (largest in "
                    f"{', '.join(parameters)})")
    if lost:
        advice = "Check the data (NaN in the preprocessed images?) or lower lr"
    elif precision != "fp32":
        advice = f"The {precision} backward failed where the forward held: try precision='fp32', or lower lr"
    else:
        advice = "Lower lr (or grad_clip), or check the data"
    what = "; ".join(what)
    return f"{what}. {advice}"


def stopped_message(skips: Sequence[SkippedStep], precision: str, epoch: int, latest: Path) -> str:
    """Why training stops after ``skips`` in a row (in 0-based ``epoch``), with :func:`stop_message`'s advice
    and whether ``latest`` (the last good checkpoint) is kept."""
    kept = (f"the last good checkpoint, {latest} ({epoch} epochs done), is kept" if latest.is_file()
            else "no checkpoint had been written yet")
    return (f"{len(skips)} steps in a row were skipped (epoch {epoch + 1}): {stop_message(skips, precision)}; then "
            f"resume with resume=True. Training stopped and {kept}")
