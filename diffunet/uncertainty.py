"""The uncertainty map of a prediction, from the members that the prediction averages.

A *member* is one probability map: one DDIM step of one start (Diff-UNet) or the one pass (plain U-Net),
times every mirrored copy when the sliding-window predictor mirrors. With p_m the members' probabilities,
p_bar their mean and H the entropy over the K classes divided by log K (so every map is in [0, 1]):

- ``"total"``: H(p_bar), the total predictive entropy;
- ``"mutual_information"``: H(p_bar) - mean_m H(p_m), the part of it that comes from the members
  disagreeing (the BALD decomposition), 0 where every member says the same;
- ``"fused_entropy"``: the mean over mirrors of H(fused prediction), the map written before the other two
  existed (it sees neither the disagreement between steps nor between mirrors).

Members are averaged as running sums (:class:`MemberMean`), never stacked.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffunet.pure import normalized_entropy

__all__ = ["UNCERTAINTIES", "SampleOutput", "MemberMean", "entropy_term", "uncertainty_from_means",
           "uncertainty_map", "check_uncertainty"]

UNCERTAINTIES = ("total", "mutual_information", "fused_entropy")


@dataclass
class SampleOutput:
    """What one sampling call returns, all float32 on the input's device.

    ``probs`` (B, K, D, H, W): the fused prediction (its argmax is the segmentation); ``member_probs``
    (B, K, D, H, W): the mean of the members' probabilities; ``member_entropy`` (B, D, H, W): the mean of
    the members' normalised entropies; ``members``: how many members; ``boundary_logits`` (B, K, D, H, W)
    or None (no boundary branch, or not asked for).
    """
    probs: torch.Tensor
    member_probs: torch.Tensor
    member_entropy: torch.Tensor
    members: int
    boundary_logits: torch.Tensor | None = None


class MemberMean:
    """Running mean of member probabilities and of their normalised entropies."""

    def __init__(self) -> None:
        self.probs_sum: torch.Tensor | None = None
        self.entropy_sum: torch.Tensor | None = None
        self.count = 0

    def add(self, probs: torch.Tensor) -> None:
        """Add M members at once: ``probs`` (M, B, K, D, H, W), summing to 1 over K."""
        probs = probs.float()
        p, h = probs.sum(0), normalized_entropy(probs, dim=2).sum(0)
        self.probs_sum = p if self.probs_sum is None else self.probs_sum + p
        self.entropy_sum = h if self.entropy_sum is None else self.entropy_sum + h
        self.count += probs.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean probabilities (B, K, D, H, W) and mean normalised entropy (B, D, H, W)."""
        if not self.count:
            raise ValueError("no member was added")
        return self.probs_sum / self.count, self.entropy_sum / self.count


def check_uncertainty(kind: str) -> str:
    """``kind`` itself, or ValueError listing the valid kinds."""
    if kind not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {kind!r}")
    return kind


def entropy_term(kind: str, output: SampleOutput) -> torch.Tensor:
    """The entropy that is averaged (over mirrors, and by the sliding window over windows) for ``kind``:
    the members' mean entropy, or for ``"fused_entropy"`` the entropy of the fused prediction. (B, D, H, W)."""
    return normalized_entropy(output.probs) if check_uncertainty(kind) == "fused_entropy" else output.member_entropy


def uncertainty_from_means(kind: str, member_probs: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
    """The ``kind`` map from the averaged ``member_probs`` (B, K, ...) and the averaged :func:`entropy_term`
    (B, ...; not needed, and may be None, for "total"): (B, ...) float32 in [0, 1]."""
    if check_uncertainty(kind) == "fused_entropy":
        return entropy.float().clamp(0.0, 1.0)
    total = normalized_entropy(member_probs)
    if kind == "total":
        return total
    return (total - entropy.float()).clamp(0.0, 1.0)  # >= 0 by concavity of H; the clamp absorbs rounding


def uncertainty_map(kind: str, output: SampleOutput) -> torch.Tensor:
    """The ``kind`` map of one sampling call (no mirrors): (B, D, H, W) float32 in [0, 1]."""
    return uncertainty_from_means(kind, output.member_probs, entropy_term(kind, output))
