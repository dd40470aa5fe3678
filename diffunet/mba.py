"""MBA: multi-granularity boundary aggregation (paper Sec. "MBA").

After encoder stage s the denoiser feature x_s is fused with the boundary branch's feature b_s of the
same stage: above the bottleneck by a 1x1x1 conv on concat(x_s, b_s) (2C -> C); at the bottleneck by
affinity attention x'_i = sum_j softmax_j(-||x_i - b_j||^2 / sqrt(C)) b_j.

The boundary features come from one boundary pass per input, while the denoiser runs on R (DDIM
starts) or K (MC-Diff) copies of the batch and for T steps. The conv is linear, so its boundary half
W_b b_s + bias is computed once (:meth:`MBA.prepare`) and broadcast over the copies and steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffunet.conv import Conv3d, conv3d

__all__ = ["affinity_fusion", "MBA"]


def _copies(n: int, b: int) -> int:
    if n % b:
        raise ValueError(f"denoiser batch {n} is not a multiple of the boundary batch {b}")
    return n // b


def affinity_fusion(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bottleneck fusion: each position i of ``x`` takes the softmax(-||x_i - b_j||^2 / sqrt(C)) weighted
    mean of the boundary features b_j over the positions j of its own sample.

    Args:
        x: ``(R * B, C, *S)`` denoiser features (R copies of the batch, copy-major: index r * B + b).
        b: ``(B, C, *S)`` boundary features.
    Returns:
        ``(R * B, C, *S)`` in ``x``'s dtype. Computed in float32 (distances of 320-dim features lose
        too much in bf16); the bottleneck is small, so this costs nothing.
    """
    n, c, *spatial = x.shape
    bsz = b.shape[0]
    r = _copies(n, bsz)
    with torch.autocast(device_type=x.device.type, enabled=False):
        q = x.float().reshape(r, bsz, c, -1).permute(1, 0, 3, 2).reshape(bsz, -1, c)  # (B, R*L, C)
        kv = b.float().flatten(2).transpose(1, 2)  # (B, L, C)
        # -||q_i - k_j||^2 = 2 q_i.k_j - ||k_j||^2 - ||q_i||^2; the last term is constant over j and
        # cancels in the softmax over j
        scores = (2 * q @ kv.transpose(1, 2) - kv.pow(2).sum(-1)[:, None, :]) / math.sqrt(c)  # (B, R*L, L)
        out = torch.softmax(scores, dim=-1) @ kv  # (B, R*L, C)
    out = out.reshape(bsz, r, -1, c).permute(1, 0, 3, 2).reshape(n, c, *spatial)
    return out.to(x.dtype)


class MBA(nn.Module):
    """The fusion modules of every encoder stage. ``features``: channels per stage (bottleneck last)."""

    def __init__(self, features: list[int]):
        super().__init__()
        # one 1x1x1 conv per stage above the bottleneck; the bottleneck uses parameter-free attention
        # (the release also builds an unused conv there: 205,120 parameters fewer here)
        self.convs = nn.ModuleList(Conv3d(2 * c, c, kernel_size=1) for c in features[:-1])

    def prepare(self, boundary_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Boundary-side terms, once per boundary pass: W_b b_s + bias for the stages above the
        bottleneck (shapes as b_s), and the bottleneck feature b_S itself."""
        out = []
        for conv, b in zip(self.convs, boundary_features[:-1]):
            c = b.shape[1]
            out.append(conv3d(b, conv.weight[:, c:], conv.bias))
        out.append(boundary_features[-1])
        return out

    def fuse(self, stage: int, x: torch.Tensor, prepared: list[torch.Tensor]) -> torch.Tensor:
        """Fuse denoiser feature ``x`` ``(R * B, C, *S)`` of ``stage`` with the prepared boundary term."""
        if stage == len(self.convs):
            return affinity_fusion(x, prepared[-1])
        conv, pre = self.convs[stage], prepared[stage]
        y = conv3d(x, conv.weight[:, : x.shape[1]])  # W_x x_s, (R * B, C, *S)
        r = _copies(y.shape[0], pre.shape[0])
        if r == 1:
            return y + pre
        return (y.unflatten(0, (r, pre.shape[0])) + pre).flatten(0, 1)
