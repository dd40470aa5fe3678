"""PURE (progressive uncertainty-driven refinement) and the other ways to fuse the DDIM step predictions.

PURE's weight of step i (0-based) of T at a voxel: w_i = exp(sigmoid((i + 1) / T) * (1 - u_i)), u_i the
normalised entropy of that step's probabilities; later steps and more certain voxels weigh more.
:func:`pure_step_weight` is the one place that computes it.
"""
from __future__ import annotations

import math

import torch

__all__ = ["FUSIONS", "normalized_entropy", "pure_step_weight", "pure_weights", "weighted_mean", "StepFusion",
           "fuse_steps"]

FUSIONS = ("pure", "mean", "last")


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of ``probs`` over ``dim`` divided by log(K), in float32 and clamped to [0, 1]
    (0: one class has all the mass, 1: uniform). ``(B, K, ...)`` -> ``(B, ...)``."""
    k = probs.shape[dim]
    ent = torch.special.entr(probs.float()).sum(dim)  # entr(0) = 0, no log(0)
    return (ent / math.log(k)).clamp(0.0, 1.0)


def pure_step_weight(probs: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """PURE weight w_i = exp(sigmoid((i + 1) / T) (1 - u_i)) of step ``step`` = i of ``steps`` = T.
    ``probs`` (B, K, ...) -> (B, ...) float32."""
    ramp = 1 / (1 + math.exp(-(step + 1) / steps))  # sigmoid((i + 1) / T)
    return torch.exp(ramp * (1 - normalized_entropy(probs)))


def pure_weights(probs: torch.Tensor) -> torch.Tensor:
    """:func:`pure_step_weight` of every step: ``probs`` (T, B, K, ...) -> (T, B, ...)."""
    return torch.stack([pure_step_weight(p, i, probs.shape[0]) for i, p in enumerate(probs)])


def weighted_mean(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i p_i / sum_i w_i. ``probs`` (T, B, K, ...), ``weights`` (T, B, ...) -> (B, K, ...)."""
    w = weights.unsqueeze(2)
    return (w * probs).sum(0) / w.sum(0)


class StepFusion:
    """Running fusion of the DDIM step predictions, so the T steps never sit in memory together.

    ``fusion``: ``"pure"`` (paper: uncertainty- and step-weighted mean of the softmax probabilities),
    ``"mean"`` (release: softmax of the mean logits), ``"last"`` (softmax of the last step's logits).
    """

    def __init__(self, steps: int, fusion: str = "pure"):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.steps, self.fusion, self.count = steps, fusion, 0
        self.numerator: torch.Tensor | None = None
        self.denominator: torch.Tensor | None = None

    def add(self, logits: torch.Tensor) -> None:
        """Add step ``self.count``'s logits ``(B, K, D, H, W)``."""
        logits = logits.float()
        i, self.count = self.count, self.count + 1
        if self.fusion == "pure":
            probs = torch.softmax(logits, dim=1)
            w = pure_step_weight(probs, i, self.steps)[:, None]
            num, den = w * probs, w
        elif self.fusion == "mean":
            num, den = logits, None
        else:
            self.numerator = logits
            return
        self.numerator = num if self.numerator is None else self.numerator + num
        if den is not None:
            self.denominator = den if self.denominator is None else self.denominator + den

    def result(self) -> torch.Tensor:
        """Fused probabilities ``(B, K, D, H, W)`` float32, summing to 1 over K."""
        if self.numerator is None:
            raise ValueError("no step was added")
        if self.fusion == "pure":
            return self.numerator / self.denominator
        if self.fusion == "mean":
            return torch.softmax(self.numerator / self.count, dim=1)
        return torch.softmax(self.numerator, dim=1)


def fuse_steps(step_logits: torch.Tensor, fusion: str = "pure") -> torch.Tensor:
    """Fuse T step predictions ``(T, B, K, D, H, W)`` into probabilities ``(B, K, D, H, W)`` (float32);
    ``fusion`` as in :class:`StepFusion`."""
    fuser = StepFusion(step_logits.shape[0], fusion)
    for logits in step_logits:
        fuser.add(logits)
    return fuser.result()
