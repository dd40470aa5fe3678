"""Training augmentation (nnU-Net's default recipe, with batchgenerators' transforms) and the batch
stream that runs loading + augmentation in worker processes.

The recipe (nnU-Net v2 defaults for 3D patches; probabilities per patch):
rotation about each axis in +-30 deg (p 0.2) and isotropic scaling in [0.7, 1.4] (p 0.2), no elastic
deformation, cubic for the image and nearest for the label (order 0: labels stay labels, the border is
background); Gaussian noise (p 0.1); Gaussian blur sigma 0.5-1 (p 0.2, per channel 0.5); multiplicative
brightness 0.75-1.25 (p 0.15); contrast 0.75-1.25 (p 0.15); low-resolution simulation, zoom 0.5-1
(p 0.25, per channel 0.5); gamma 0.7-1.5 on the inverted image (p 0.1) and on the image (p 0.3), both
keeping mean and std; mirroring along each axis (p 0.5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from light_training.training.dataloading import OVERSAMPLE_FOREGROUND_PERCENT, PatchLoader

__all__ = ["ROTATION", "SCALE", "enlarged_patch_size", "training_transforms", "FinalizeBatch", "BatchStream",
           "make_training_stream"]

ROTATION = (-np.pi / 6, np.pi / 6)  # rad about each axis (nnU-Net: +-30 deg for 3D patches)
SCALE = (0.7, 1.4)  # >1 zooms out (batchgenerators scales the sampling grid)


def _rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation by ``angles`` (rad) about the z, y and x axes in turn, as a 3x3 matrix on (z, y, x)."""
    a, b, c = angles
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def enlarged_patch_size(patch_size: Sequence[int], rotation: tuple[float, float] = ROTATION) -> tuple[int, int, int]:
    """The box ``(z, y, x)`` read around a patch so that a rotation about any one axis (up to ``rotation``)
    samples real image wherever the case has some.

    Compound rotations and zooming out reach a little further; there the corners of the patch are padded
    with zeros (as in nnU-Net). Covering the worst case (about 2.4 x the patch per axis at 30 deg and scale
    1.4) would read 14 x the voxels for every patch, though only a third of them are rotated or scaled.
    """
    size = np.asarray(patch_size, dtype=float)
    extreme = max(abs(rotation[0]), abs(rotation[1]))
    extent = size.copy()
    for axis in range(3):
        angles = [0.0, 0.0, 0.0]
        angles[axis] = extreme
        extent = np.maximum(extent, np.abs(_rotation_matrix(angles)) @ size)
    return tuple(int(v) for v in np.ceil(extent).astype(int))


class FinalizeBatch(AbstractTransform):
    """Last transform: ``data`` -> ``image`` float32 ``(B, C, Z, Y, X)``, ``seg`` -> ``label`` uint8
    ``(B, Z, Y, X)``, both contiguous numpy arrays; other keys pass through.

    Numpy, not torch: workers send plain pickles through their queues (torch tensors would travel as
    shared-memory file descriptors, which fail when a worker exits first, e.g. at shutdown); the
    :class:`BatchStream` wraps them as tensors without a copy.
    """

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch.pop("data"), batch.pop("seg")
        batch["image"] = np.ascontiguousarray(data, dtype=np.float32)
        batch["label"] = np.ascontiguousarray(seg[:, 0], dtype=np.uint8)
        return batch


def training_transforms(patch_size: Sequence[int], augmentation: bool = True,
                        mirror_axes: Sequence[int] = (0, 1, 2)) -> Compose:
    """The transform applied to each :class:`PatchLoader` batch (see the module docstring for the recipe).

    Input ``data (B, C, *read_size)``, ``seg (B, 1, *read_size)``; output ``image (B, C, *patch_size)``
    float32 and ``label (B, *patch_size)`` uint8 arrays. ``augmentation=False``: only the conversion.
    """
    if not augmentation:
        return Compose([FinalizeBatch()])
    transforms = [
        SpatialTransform(list(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=ROTATION, angle_y=ROTATION, angle_z=ROTATION, p_rot_per_axis=1,
                         do_scale=True, scale=SCALE, border_mode_data="constant", border_cval_data=0, order_data=3,
                         border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
                         p_el_per_sample=0, p_scale_per_sample=0.2, p_rot_per_sample=0.2,
                         independent_scale_for_each_axis=False),
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if len(mirror_axes):
        transforms.append(MirrorTransform(tuple(mirror_axes)))
    transforms.append(FinalizeBatch())
    return Compose(transforms)


class BatchStream:
    """Endless iterator of augmented training batches: ``image`` float32 tensor ``(B, C, *patch)``,
    ``label`` uint8 tensor ``(B, *patch)`` (class indices), ``keys`` (case ids) and ``foreground``
    (which patches were foreground-centred), from ``num_workers`` processes (batchgenerators'
    ``MultiThreadedAugmenter``) or in this process when ``num_workers == 0``. Call :meth:`close`
    (or use ``with``) to stop the workers."""

    def __init__(self, loader: PatchLoader, transform: Compose, num_workers: int, worker_seeds: Sequence[int]):
        self.loader, self.num_workers = loader, num_workers
        if num_workers == 0:
            self._augmenter = SingleThreadedAugmenter(loader, transform)
        else:
            # one queue per worker, read in turn: the batch order is reproducible for given seeds
            self._augmenter = MultiThreadedAugmenter(loader, transform, num_workers, num_cached_per_queue=4,
                                                     seeds=list(worker_seeds))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._augmenter)
        batch["image"], batch["label"] = torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"])
        return batch

    def close(self) -> None:
        if isinstance(self._augmenter, MultiThreadedAugmenter):
            self._augmenter._finish()  # the augmenter's own shutdown (no public name for it)

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_training_stream(data_dir: str | Path, cases: Sequence[str], patch_size: Sequence[int], batch_size: int,
                         augmentation: bool = True, num_workers: int = 4, seed: int | Sequence[int] = 0,
                         oversample_foreground_percent: float = OVERSAMPLE_FOREGROUND_PERCENT,
                         mirror_axes: Sequence[int] = (0, 1, 2)) -> BatchStream:
    """Training batches of ``cases``: image ``(B, C, *patch_size)`` float32, label ``(B, *patch_size)`` uint8.

    ``seed`` (an int or a list such as ``[seed, rank, start_epoch]``) determines everything: worker ``w``'s
    patch choice is seeded with ``(*seed, w)`` and its augmentation (numpy's global generator, which
    batchgenerators uses) with the ``w``-th number drawn from ``numpy.random.SeedSequence(seed)``.
    With ``num_workers == 0`` augmentation runs here and draws from this process's numpy generator.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    read_size = enlarged_patch_size(patch_size) if augmentation else patch_size
    loader = PatchLoader(data_dir, cases, patch_size, batch_size, read_size=read_size,
                         oversample_foreground_percent=oversample_foreground_percent, seed=seed)
    worker_seeds = np.random.SeedSequence(np.atleast_1d(seed).tolist()).generate_state(max(num_workers, 1))
    return BatchStream(loader, training_transforms(patch_size, augmentation, mirror_axes), num_workers,
                       [int(s) for s in worker_seeds])
