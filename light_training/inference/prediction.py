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
from light_training.postprocessing import Postprocessing, apply_postprocessing
from light_training.runtime import autocast_context, resolve_precision, seed_everything
from light_training.preprocessing.preprocess import restore_to_original

__all__ = ["InferenceSettings", "prepare_for_inference", "MirroredSampler", "predict_volume", "predict_ensemble",
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
    cast_weights: bool = False  # weights held in bf16/fp16 (prepare_for_inference), autocast casts inputs only
    batch_mirrors: bool | None = None  # mirrored copies in one network call; None: on CUDA yes, on the CPU
    #                                    no (one call per mirror measured 1.2-1.3x faster there, bench_speed.py)
    steps: int | None = None  # DDIM steps; None: the model's own
    fusion: str | None = None  # step fusion "pure", "mean", "last"; None: the model's own (the plain U-Net: unused)
    uncertainty: str = "total"  # the map written: "total", "mutual_information", "fused_entropy" (diffunet.uncertainty)
    with_uncertainty: bool = True  # False: no uncertainty map, and none of the whole-volume buffers it needs
    buffers_on_cpu: bool = False  # the whole-volume sums on the CPU, windows on ``device`` (the out-of-memory retry)
    progress: bool = True

    def __post_init__(self) -> None:
        check_uncertainty(self.uncertainty)
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be None (the model's own) or one of {FUSIONS}, got {self.fusion!r}")


def prepare_for_inference(model: torch.nn.Module, settings: InferenceSettings,
                          device: torch.device) -> torch.nn.Module:
    """Put ``model``'s weights (in place, once, before torch.compile) in the form ``settings`` ask for:
    ``channels_last_3d`` with ``channels_last`` (otherwise every convolution converts its weight per call),
    the low precision that ``settings.precision`` resolves to on ``device`` with ``cast_weights``. Autocast
    still runs: it casts the inputs (the image, the noise, the time embedding's float32 input), and finds the
    weights already cast. ``ValueError`` for ``cast_weights`` in fp32."""
    if settings.cast_weights:
        precision = resolve_precision(settings.precision, device)
        if precision == "fp32":
            raise ValueError(f"cast_weights=True with precision={settings.precision!r} (fp32 on {device}): "
                             f"nothing to cast; use precision 'bf16' or 'fp16', or cast_weights=False")
        model = model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


class MirroredSampler:
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
        self.with_members = settings.with_uncertainty and settings.uncertainty != "fused_entropy"
        self.with_entropy = settings.with_uncertainty and settings.uncertainty != "total"

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


def _volume_sums(model: torch.nn.Module, image: torch.Tensor, settings: InferenceSettings,
                 device: torch.device, roi_weight_map: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """One model over ``image`` ``(C, Z, Y, X)``: the inferer's blended outputs of :class:`MirroredSampler`,
    each ``(1, ch, Z, Y, X)``, on the CPU when ``settings.buffers_on_cpu``, else on ``device``."""
    buffers = torch.device("cpu") if settings.buffers_on_cpu else device
    inferer = SlidingWindowInferer(roi_size=list(settings.patch_size), sw_batch_size=settings.sw_batch_size,
                                   overlap=settings.overlap, mode="gaussian", progress=settings.progress,
                                   cache_roi_weight_map=roi_weight_map is None, device=buffers, sw_device=device)
    if roi_weight_map is not None:  # the cache MONAI would have computed, given
        inferer.roi_weight_map = roi_weight_map
    outputs = inferer(image[None].to(buffers), MirroredSampler(model, settings, device))
    return outputs if isinstance(outputs, tuple) else (outputs,)


@torch.inference_mode()
def predict_ensemble(members: Sequence[tuple[torch.nn.Module, InferenceSettings]], image: np.ndarray | torch.Tensor,
                     device: torch.device, seed: int | None = None, roi_weight_map: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predict one preprocessed volume with one or several models (e.g. the folds of a cross-validation).

    Each model runs over the whole volume with its own settings (its patch size), the noise reset to
    ``seed`` before each (so a member predicts exactly as it would alone); the probabilities, the member
    probabilities and the entropy term are averaged over the models as over mirrors and steps, so the
    uncertainty map counts every model as members and shows where folds disagree. The first member's
    settings choose the uncertainty kind.

    Args:
        members: ``(model in eval mode on device, settings)`` per model, all with the same classes.
        image: ``(C, Z, Y, X)`` preprocessed image (any size; smaller than a window is padded).
        roi_weight_map: the windows' Gaussian weights ``(1, 1, *patch)`` when already at hand; None: MONAI
            computes them from values (the memory estimator passes shapes only).
    Returns:
        probabilities ``(K, Z, Y, X)`` float32 and the uncertainty map ``(Z, Y, X)`` float32 in [0, 1]
        (None when ``with_uncertainty`` is False), on ``device`` (on the CPU with ``buffers_on_cpu``).
    """
    if not members:
        raise ValueError("predict_ensemble needs at least one model")
    # a copy: preprocessed cases are read-only memory maps
    image = torch.from_numpy(np.array(image, dtype=np.float32)) if isinstance(image, np.ndarray) else image
    sums = None
    for model, settings in members:
        if seed is not None:
            seed_everything(seed)
        outputs = _volume_sums(model, image, settings, device, roi_weight_map)
        sums = list(outputs) if sums is None else [a.add_(b) for a, b in zip(sums, outputs)]
        del outputs
    means = [t[0] / len(members) for t in sums]  # (ch, Z, Y, X) each
    first = members[0][1]
    probs = means[0]
    if not first.with_uncertainty:
        return probs, None
    with_entropy = first.uncertainty != "total"
    member_probs = means[1] if first.uncertainty != "fused_entropy" else probs
    entropy = means[-1][0] if with_entropy else None
    return probs, uncertainty_from_means(first.uncertainty, member_probs[None],
                                         None if entropy is None else entropy[None])[0]


def predict_volume(model: torch.nn.Module, image: np.ndarray | torch.Tensor, settings: InferenceSettings,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predict one preprocessed volume with one model (:func:`predict_ensemble` of one, without reseeding).

    Args:
        model: a network of :func:`diffunet.build_network` (Diff-UNet or the plain U-Net) in eval mode, on
            ``device``.
        image: ``(C, Z, Y, X)`` preprocessed image (any size; smaller than a window is padded).
    Returns:
        probabilities ``(K, Z, Y, X)`` float32 (the fused prediction, averaged over mirrors and windows)
        and the ``settings.uncertainty`` map ``(Z, Y, X)`` float32 in [0, 1] (None without
        ``with_uncertainty``), on ``device``.
    """
    return predict_ensemble([(model, settings)], image, device)


def save_prediction(probabilities: torch.Tensor | np.ndarray, uncertainty: torch.Tensor | np.ndarray | None,
                    properties: dict[str, Any],
                    labels: Sequence[int], save_dir: str | Path, save_probabilities: bool = False,
                    save_uncertainty: bool = False, postprocessing: Postprocessing | None = None) -> Path:
    """Map a prediction back onto the original image grid and write ``<case>.nii.gz``.

    Args:
        probabilities: ``(K, z, y, x)`` on the preprocessed grid; uncertainty ``(z, y, x)``.
        properties: the case's preprocessing properties (crop box, shapes, original geometry).
        labels: label value of each of the K classes (e.g. ``[0, 1, 2, 3]``).
    Also writes ``<case>.npz`` (probabilities, compressed) and ``<case>_uncertainty.nii.gz`` (the map that
    :func:`predict_volume` made, ``InferenceSettings.uncertainty``; 0 outside the crop) on request; every
    file on exactly the original image's spacing, origin and direction. ``postprocessing``: rules applied
    to the label map only (the probabilities stay the network's).
    """
    save_dir = Path(save_dir)
    case = properties["case"]
    geometry = Geometry.from_dict(properties["geometry"])
    probs = restore_to_original(_numpy(probabilities), properties, is_label=False)  # (K, Z, Y, X)
    segmentation = apply_postprocessing(np.asarray(labels, dtype=np.uint8)[probs.argmax(0)], postprocessing)
    write_volume(segmentation, geometry, save_dir / f"{case}.nii.gz")
    if save_probabilities:
        with atomic_path(save_dir / f"{case}.npz") as tmp:
            np.savez_compressed(tmp, probabilities=probs)  # float32, so its argmax is the segmentation
    if save_uncertainty:
        # the uncertainty is a single float map: restore it like a two-class probability whose
        # "background" channel is 1 - u, so voxels outside the crop get uncertainty 0
        if uncertainty is None:
            raise ValueError("save_uncertainty=True needs the uncertainty map (InferenceSettings.with_uncertainty)")
        u = _numpy(uncertainty)
        restored = restore_to_original(np.stack([1 - u, u]), properties, is_label=False)[1]
        write_volume(restored.astype(np.float32), geometry, save_dir / f"{case}_uncertainty.nii.gz")
    return save_dir / f"{case}.nii.gz"


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
