"""Diffusion over label maps: cosine log-SNR schedule, time and label embeddings, DDIM steps.

The denoiser is conditioned on the continuous time t in [0, 1] both in training and in sampling.
(The original release feeds t during training but log-SNR(t) during sampling; we do not reproduce
that mismatch.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["T_MAX", "logsnr_cosine", "alpha_sigma", "noise_labels", "ddim_times", "TimeEmbedding",
           "LabelEmbedding"]

T_MAX = 0.999  # training draws t ~ U(0, T_MAX), the release's sample range


def logsnr_cosine(t: torch.Tensor, ns: float = 2e-4, ds: float = 2.5e-4) -> torch.Tensor:
    """Cosine schedule: logsnr(t) = -log(cos((t + ns) / (1 + ds) * pi / 2)^-2 - 1), any shape, float32."""
    t = t.float()
    return -torch.log((torch.cos((t + ns) / (1 + ds) * math.pi * 0.5) ** -2 - 1).clamp(min=1e-5))


def alpha_sigma(t: torch.Tensor, ndim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = sqrt(sigmoid(logsnr)), sigma = sqrt(sigmoid(-logsnr)) for ``t`` (B,), shaped (B, 1, ..., 1)."""
    logsnr = logsnr_cosine(t).view(-1, *([1] * (ndim - 1)))
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def noise_labels(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Forward process x_t = alpha x0 + sigma eps. ``x0`` (B, K, D, H, W), ``t`` (B,)."""
    alpha, sigma = alpha_sigma(t, x0.ndim)
    noise = torch.randn_like(x0) if noise is None else noise
    return alpha * x0 + sigma * noise


def ddim_times(steps: int) -> list[tuple[float, float]]:
    """(t_now, t_next) per DDIM step: t_now = 1 - i/T, t_next = max(1 - (i + 2)/T, 0)
    (the release's time_difference of 1: each step jumps two grid points ahead)."""
    return [(1 - i / steps, max(1 - (i + 2) / steps, 0.0)) for i in range(steps)]


class TimeEmbedding(nn.Module):
    """t (B,) -> (B, dim): learned sinusoidal features [t, sin(2 pi t w), cos(2 pi t w)] (``fourier_dim``
    sin/cos features, i.e. fourier_dim / 2 learned frequencies w) -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int = 32, fourier_dim: int = 16):
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(fourier_dim // 2))
        self.mlp = nn.Sequential(nn.Linear(fourier_dim + 1, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()[:, None]  # (B, 1)
        angles = t * self.freqs[None] * 2 * math.pi  # (B, F/2)
        return self.mlp(torch.cat([t, angles.sin(), angles.cos()], dim=1))  # (B, dim)


class LabelEmbedding(nn.Module):
    """Class index map (B, D, H, W) -> (B, K, D, H, W): learned K x K embedding,
    then (sigmoid * 2 - 1) * bit_scale (values in (-bit_scale, bit_scale))."""

    def __init__(self, num_classes: int, bit_scale: float = 0.001):
        super().__init__()
        self.table = nn.Embedding(num_classes, num_classes)
        self.bit_scale = float(bit_scale)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        emb = self.table(label.long())  # (B, D, H, W, K)
        # the permuted view is channels_last_3d in memory, like the inputs of the fast conv paths
        return (torch.sigmoid(emb) * 2 - 1).mul(self.bit_scale).permute(0, 4, 1, 2, 3)
