"""Whole-volume prediction: sliding windows (MONAI) x sampling (Diff-UNet: DDIM steps fused by PURE; the plain
U-Net: one pass) x mirroring.

Each window is predicted by the network's ``sample_members`` (Diff-UNet: boundary branch once, T denoiser
steps, step fusion); its mirrored copies go through the network in one call on CUDA and one call each on
the CPU (measured faster there; ``InferenceSettings.batch_mirrors``). Probabilities, not logits, are averaged
over the mirrors, and MONAI's ``SlidingWindowInferer`` blends them over the windows with Gaussian importance
weights; the uncertainty map is computed from the blended member means (:mod:`diffunet.uncertainty`), so
it sees the disagreement between mirrors and steps. The result is mapped back onto the original image grid
by the preprocessing inverse.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from diffunet.pure import FUSIONS
from diffunet.uncertainty import check_uncertainty, entropy_term, uncertainty_from_means
from light_training.io import Geometry, atomic_path, write_volume
from light_training.runtime import autocast_context
from light_training.preprocessing.preprocess import restore_to_original

__all__ = ["InferenceSettings", "predict_volume",
           "save_prediction"]


@dataclass
class InferenceSettings:
    """How windows are predicted. ``precision``: "fp32", "bf16", "fp16" or "auto" (the fastest
    measured: bf16 on CPUs with bf16 units and on CUDA; see benchmarks/bench_speed.py)."""
    patch_size: Sequence[int]
    overlap: float = 0.5
    mirror_axes: Sequence[int] = (0, 1, 2)  # spatial axes (z, y, x) to mirror; () for none
    sw_batch_size: int = 1  # windows per network call (each times its mirrored copies)
    precision: str = "auto"
    channels_last: bool = False  # channels_last_3d: measured slower with bf16 on the CPU (bench_speed.py)
    batch_mirrors: bool | None = None  # mirrored copies in one network call; None: on CUDA yes, on the CPU
    #                                    no (one call per mirror measured 1.2-1.3x faster there, bench_speed.py)
    steps: int | None = None  # DDIM steps; None: the model's own
    fusion: str | None = None  # step fusion "pure", "mean", "last"; None: the model's own (the plain U-Net: unused)
    uncertainty: str = "total"  # the map written: "total", "mutual_information", "fused_entropy" (diffunet.uncertainty)
    progress: bool = True

    def __post_init__(self) -> None:
        check_uncertainty(self.uncertainty)
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be None (the model's own) or one of {FUSIONS}, got {self.fusion!r}")


class _MirroredSampler:
    """The inferer's predictor: ``(N, C, *roi)`` windows -> averages over every mirror combination of
    ``mirror_axes`` of the fused probabilities ``(N, K, *roi)``, the member probabilities ``(N, K, *roi)``
    (not for "fused_entropy") and the entropy term ``(N, 1, *roi)`` of ``settings.uncertainty`` (not for
    "total", which needs only the member probabilities).
    Mirrors are accumulated as running sums, one call's output at a time."""

    def __init__(self, model: torch.nn.Module, settings: InferenceSettings, device: torch.device):
        self.model, self.settings, self.device = model, settings, device
        axes = [2 + a for a in settings.mirror_axes]
        self.flips = [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]
        self.batched = device.type == "cuda" if settings.batch_mirrors is None else settings.batch_mirrors
        self.with_members = settings.uncertainty != "fused_entropy"
        self.with_entropy = settings.uncertainty != "total"

    def _outputs(self, output) -> tuple[torch.Tensor, ...]:
        terms = (output.probs, output.member_probs) if self.with_members else (output.probs,)
        return (*terms, entropy_term(self.settings.uncertainty, output)[:, None]) if self.with_entropy else terms

    def __call__(self, windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = windows.shape[0]
        flipped = [windows.flip(f) if f else windows for f in self.flips]
        calls = [torch.cat(flipped)] if self.batched else flipped  # (n*F, C, *roi) once, or F times (n, C, *roi)
        flips = iter(self.flips)
        sums: list[torch.Tensor] | None = None
        for batch in calls:
            if self.settings.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last_3d)
            with autocast_context(self.device, self.settings.precision):
                output = self.model.sample_members(batch, steps=self.settings.steps, fusion=self.settings.fusion)
            terms = self._outputs(output)
            for start in range(0, batch.shape[0], n):  # one mirror per chunk of n windows
                f = next(flips)
                chunk = [t[start:start + n].float() for t in terms]
                chunk = [t.flip(f) for t in chunk] if f else chunk  # undo the flip before averaging
                sums = chunk if sums is None else [a + b for a, b in zip(sums, chunk)]
        return tuple(t / len(self.flips) for t in sums)


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, image: np.ndarray | torch.Tensor, settings: InferenceSettings,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict one preprocessed volume.

    Args:
        model: a network of :func:`diffunet.build_network` (Diff-UNet or the plain U-Net) in eval mode, on
            ``device``.
        image: ``(C, Z, Y, X)`` preprocessed image (any size; smaller than a window is padded).
    Returns:
        probabilities ``(K, Z, Y, X)`` float32 (the fused prediction, averaged over mirrors and windows)
        and the ``settings.uncertainty`` map ``(Z, Y, X)`` float32 in [0, 1], on ``device``.
    """
    # a copy: preprocessed cases are read-only memory maps
    image = torch.from_numpy(np.array(image, dtype=np.float32)) if isinstance(image, np.ndarray) else image
    inferer = SlidingWindowInferer(roi_size=list(settings.patch_size), sw_batch_size=settings.sw_batch_size,
                                   overlap=settings.overlap, mode="gaussian", progress=settings.progress,
                                   cache_roi_weight_map=True, device=device, sw_device=device)
    sampler = _MirroredSampler(model, settings, device)
    outputs = inferer(image[None].to(device), sampler)
    probs, entropy = outputs[0], outputs[-1][:, 0] if sampler.with_entropy else None
    member_probs = outputs[1] if sampler.with_members else probs
    return probs[0], uncertainty_from_means(settings.uncertainty, member_probs, entropy)[0]


def save_prediction(probabilities: torch.Tensor, uncertainty: torch.Tensor, properties: dict[str, Any],
                    labels: Sequence[int], save_dir: str | Path, save_probabilities: bool = False,
                    save_uncertainty: bool = False) -> Path:
    """Map a prediction back onto the original image grid and write ``<case>.nii.gz``.

    Args:
        probabilities: ``(K, z, y, x)`` on the preprocessed grid; uncertainty ``(z, y, x)``.
        properties: the case's preprocessing properties (crop box, shapes, original geometry).
        labels: label value of each of the K classes (e.g. ``[0, 1, 2, 3]``).
    Also writes ``<case>.npz`` (probabilities, compressed) and ``<case>_uncertainty.nii.gz`` (the map that
    :func:`predict_volume` made, ``InferenceSettings.uncertainty``; 0 outside the crop) on request; every
    file on exactly the original image's spacing, origin and direction.
    """
    save_dir = Path(save_dir)
    case = properties["case"]
    geometry = Geometry.from_dict(properties["geometry"])
    probs = restore_to_original(probabilities.cpu().numpy(), properties, is_label=False)  # (K, Z, Y, X)
    segmentation = np.asarray(labels, dtype=np.uint8)[probs.argmax(0)]
    write_volume(segmentation, geometry, save_dir / f"{case}.nii.gz")
    if save_probabilities:
        with atomic_path(save_dir / f"{case}.npz") as tmp:
            np.savez_compressed(tmp, probabilities=probs)  # float32, so its argmax is the segmentation
    if save_uncertainty:
        # the uncertainty is a single float map: restore it like a two-class probability whose
        # "background" channel is 1 - u, so voxels outside the crop get uncertainty 0
        u = uncertainty.cpu().numpy()
        restored = restore_to_original(np.stack([1 - u, u]), properties, is_label=False)[1]
        write_volume(restored.astype(np.float32), geometry, save_dir / f"{case}_uncertainty.nii.gz")
    return save_dir / f"{case}.nii.gz"
