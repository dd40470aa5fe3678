"""Diff-UNet: boundary branch + MBA + diffusion denoiser, MC-Diff training forward, DDIM sampling with PURE.

Parameters of ``DiffUNet(1, 2)`` (paper preset): 62,834,512, versus 63,042,720 in the original release
(-0.33 %). The release builds modules it never uses: a 1x1x1 MBA conv at the bottleneck (640 -> 320,
205,120 parameters; the bottleneck uses the parameter-free affinity fusion) and nnU-Net's deep-supervision
heads on the four lower decoder stages of both U-Nets (2 x 1,544). Everything used is the same
(benchmarks/count_params.py prints the breakdown).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from diffunet.boundary import boundary_target
from diffunet.diffusion import T_MAX, LabelEmbedding, alpha_sigma, ddim_times, logsnr_cosine, noise_labels
from diffunet.presets import FUSIONS, check_image, check_patch_size, resolve_config, stage_kernels, stage_strides
from diffunet.pure import StepFusion, normalized_entropy
from diffunet.uncertainty import MemberMean, SampleOutput, uncertainty_map
from diffunet.unet import DenoiseUNet, ImageUNet

__all__ = ["DiffUNet", "DiffUNetOutput"]


@dataclass
class DiffUNetOutput:
    """Training forward output. ``logits``, ``boundary_logits``: (B, K, D, H, W); ``boundary_target``:
    (B, D, H, W) int64, what the boundary branch is trained on; ``uncertainty``: (B, D, H, W) in [0, 1]
    (MC-Diff), None when ``mc_diff=False``."""
    logits: torch.Tensor
    boundary_logits: torch.Tensor
    boundary_target: torch.Tensor
    uncertainty: torch.Tensor | None


def _like_layout(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in ``reference``'s memory format (channels_last_3d or contiguous), so the concat with the
    image does not mix layouts."""
    if reference.is_contiguous(memory_format=torch.channels_last_3d) and not reference.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.contiguous()


class DiffUNet(nn.Module):
    """Diff-UNet (in_channels image channels, num_classes classes with background).

    ``preset``: "paper" or "tiny" (see :mod:`diffunet.presets`); ``overrides`` replace preset entries,
    e.g. ``mba=False``, ``fusion="mean"``, ``boundary_target="segmentation"``, ``steps=5``.
    ``model.config`` is JSON-able and ``DiffUNet(**model.config)`` rebuilds the architecture.
    """

    def __init__(self, in_channels: int, num_classes: int, preset: str = "paper", **overrides: Any):
        super().__init__()
        self.config = resolve_config(in_channels, num_classes, preset, **overrides)
        c = self.config
        strides, kernels = stage_strides(c["strides"]), stage_kernels(c["kernel_size"], len(c["features"]))
        self.num_classes = c["num_classes"]
        self.boundary = ImageUNet(c["in_channels"], self.num_classes, c["features"], strides,
                                  c["convs_per_stage"], kernels)
        self.denoiser = DenoiseUNet(c["in_channels"], self.num_classes, c["features"], strides, c["convs_per_stage"],
                                    kernels, c["time_dim"], c["time_fourier_dim"], c["mba"])
        self.label_embedding = LabelEmbedding(self.num_classes, c["bit_scale"])
        # run-time memory settings, not architecture (kept out of config): diffunet.set_memory_options
        self.mc_chunk: int | None = None

    # ---------------------------------------------------------------- checks
    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ValueError (listing sizes that work) unless the network can divide ``patch_size`` (z, y, x)."""
        check_patch_size(patch_size, self.config["strides"])

    def _check_label(self, image: torch.Tensor, label: torch.Tensor) -> None:
        if label.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(f"label must be (B, D, H, W) = {(image.shape[0], *image.shape[2:])}, "
                             f"got {tuple(label.shape)}")
        # the values are checked where reading them is free: not on a GPU, where it would stall every step
        # (the trainer checks the host copy), nor on the meta device or under a dispatch mode that intercepts
        # the ops (a tracer's or an op counter's), where they may not exist
        if label.is_cuda or label.is_meta or is_in_torch_dispatch_mode():
            return
        lo, hi = torch.aminmax(label)
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"label values must be class indices in [0, {self.num_classes - 1}], "
                             f"got range [{int(lo)}, {int(hi)}]")

    def _boundary_terms(self, features: list[torch.Tensor]) -> list[torch.Tensor] | None:
        return self.denoiser.mba.prepare(features) if self.denoiser.mba is not None else None

    def boundary_labels(self, label: torch.Tensor) -> torch.Tensor:
        """What the boundary branch is trained on, for a class map ``label`` (B, D, H, W): with
        ``boundary_target="boundary"`` (the paper) the labelled voxels that have a voxel of another label
        within ``boundary_width`` voxels, keeping their class, every other voxel 0
        (:func:`diffunet.boundary.boundary_target`); with ``"segmentation"`` (the release) ``label`` itself.
        (B, D, H, W) int64."""
        label = label.long()
        if self.config["boundary_target"] == "boundary":
            return boundary_target(label, self.config["boundary_width"])
        return label

    # ---------------------------------------------------------------- training
    def forward(self, image: torch.Tensor, label: torch.Tensor) -> DiffUNetOutput:
        """Training forward.

        Args:
            image: ``(B, C, D, H, W)`` float; label: ``(B, D, H, W)`` int64 class indices.
        Returns:
            :class:`DiffUNetOutput`: denoiser logits at a random t ~ U(0, 0.999), boundary logits and
            target, and the MC-Diff uncertainty (mean logits of K more no-grad passes at independent t,
            softmax, entropy / log K).
        """
        check_image(image, self.config)
        self._check_label(image, label)
        c = self.config
        label = label.long()
        boundary_logits, features = self.boundary(image)
        target = self.boundary_labels(label)
        terms = self._boundary_terms(features)
        x0 = _like_layout(self.label_embedding(label), image)  # (B, K, D, H, W)
        t = torch.rand(image.shape[0], device=image.device) * T_MAX
        logits = self.denoiser(image, noise_labels(x0, t), t, terms)
        uncertainty = None
        if c["mc_diff"]:
            with torch.no_grad():
                uncertainty = normalized_entropy(torch.softmax(self._mc_mean_logits(image, x0, terms), dim=1))
        return DiffUNetOutput(logits, boundary_logits, target, uncertainty)

    def _mc_mean_logits(self, image: torch.Tensor, x0: torch.Tensor, terms: list[torch.Tensor] | None) -> torch.Tensor:
        """MC-Diff: the mean logits (B, K, D, H, W) float32 of ``mc_samples`` denoiser passes at independent t.
        The passes run copy-major (index k * B + b) in batches of ``self.mc_chunk`` passes (None: all at
        once); the times and noise are drawn for all passes first, so the result does not depend on it."""
        k, b = self.config["mc_samples"], image.shape[0]
        chunk = k if self.mc_chunk is None else min(int(self.mc_chunk), k)
        t_k = torch.rand(k * b, device=image.device) * T_MAX
        x0_k = x0.detach().repeat(k, 1, 1, 1, 1)  # (k * B, K, D, H, W)
        noise = torch.randn_like(x0_k)
        total = None
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            rows = slice(start * b, (start + n) * b)
            logits_n = self.denoiser(image.repeat(n, 1, 1, 1, 1), noise_labels(x0_k[rows], t_k[rows], noise[rows]),
                                     t_k[rows], terms)
            part = logits_n.unflatten(0, (n, b)).float().sum(0)
            total = part if total is None else total + part
        return total / k

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def sample_members(self, image: torch.Tensor, steps: int | None = None, rand_steps: int | None = None,
                       fusion: str | None = None, generator: torch.Generator | None = None,
                       return_boundary: bool = False) -> SampleOutput:
        """DDIM sampling with step fusion, keeping what the uncertainty maps need.

        The boundary branch runs once; its MBA terms are reused by every step. Step i: logits_i =
        denoiser(image, x_t, time input) with time input t_now, or log-SNR(t_now) when the config's
        ``sampling_time_input`` is "logsnr" (the release); x0_hat = embedding(argmax logits_i); eps_hat =
        (x_t - alpha x0_hat) / sigma; x_next = alpha_next x0_hat + sigma_next eps_hat. ``rand_steps``
        independent starts run as one batch; their logits are averaged per step and the T step
        predictions fused by ``fusion``. Each start's step is a member of the uncertainty
        (:mod:`diffunet.uncertainty`): R x T members. With ``add_boundary_logits`` (the release) the
        boundary logits are added to the fused logits and to every member's.

        Args:
            image: ``(B, C, D, H, W)``; works under torch.autocast and with channels_last_3d input.
            steps, rand_steps, fusion: override the config's values for this call.
            generator: for the starting noise (default: the global RNG, so ``torch.manual_seed`` repeats a call).
            return_boundary: also run the boundary decoder and return its logits (validation).
        Returns:
            :class:`~diffunet.uncertainty.SampleOutput`; ``probs`` sum to 1 over K.
        """
        check_image(image, self.config)
        c = self.config
        steps = int(c["steps"] if steps is None else steps)
        starts = int(c["rand_steps"] if rand_steps is None else rand_steps)
        fusion = c["fusion"] if fusion is None else fusion
        if steps < 1 or starts < 1 or fusion not in FUSIONS:
            raise ValueError(f"need steps >= 1, rand_steps >= 1 and fusion in {FUSIONS}, "
                             f"got {steps}, {starts}, {fusion!r}")
        b, _, *spatial = image.shape
        if c["add_boundary_logits"] or return_boundary:
            boundary_logits, features = self.boundary(image)
            boundary_logits = boundary_logits.float()
        else:  # the boundary decoder is only trained, never needed here
            boundary_logits, features = None, self.boundary.encode(image)
        added = boundary_logits if c["add_boundary_logits"] else None
        terms = self._boundary_terms(features)
        images = image.repeat(starts, 1, 1, 1, 1) if starts > 1 else image  # (R * B, C, D, H, W)
        x_t = torch.randn((starts * b, self.num_classes, *spatial), generator=generator, device=image.device)
        x_t = _like_layout(x_t, image)
        fuser, members = StepFusion(steps, fusion), MemberMean()
        for i, (t_now, t_next) in enumerate(ddim_times(steps)):
            t = torch.full((starts * b,), t_now, device=image.device)
            t_in = logsnr_cosine(t) if c["sampling_time_input"] == "logsnr" else t
            logits = self.denoiser(images, x_t, t_in, terms)  # (R * B, K, D, H, W)
            per_start = logits.unflatten(0, (starts, b)).float()  # (R, B, K, D, H, W)
            fuser.add(per_start.mean(0))
            members.add(torch.softmax(per_start if added is None else per_start + added, dim=2))
            if i == steps - 1:
                break
            x0_hat = self.label_embedding(logits.argmax(dim=1))
            alpha, sigma = alpha_sigma(t)
            alpha_next, sigma_next = alpha_sigma(torch.full_like(t, t_next))
            eps_hat = (x_t - alpha * x0_hat) / sigma.clamp(min=1e-8)
            x_t = _like_layout(alpha_next * x0_hat + sigma_next * eps_hat, image)  # one layout: no recompiles
        probs = fuser.result()
        if added is not None:  # the release: fused logits + boundary logits
            probs = torch.softmax(probs.clamp(min=1e-12).log() + added, dim=1)
        member_probs, member_entropy = members.result()
        return SampleOutput(probs, member_probs, member_entropy, members.count,
                            boundary_logits if return_boundary else None)

    @torch.no_grad()
    def sample(self, image: torch.Tensor, steps: int | None = None, rand_steps: int | None = None,
               fusion: str | None = None, generator: torch.Generator | None = None,
               uncertainty: str = "total") -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample_members` reduced to probabilities ``(B, K, D, H, W)`` float32 (summing to 1 over K)
        and the ``uncertainty`` map ``(B, D, H, W)`` float32 in [0, 1] (see :mod:`diffunet.uncertainty`;
        default the total predictive entropy over the R x T members)."""
        output = self.sample_members(image, steps, rand_steps, fusion, generator)
        return output.probs, uncertainty_map(uncertainty, output)
