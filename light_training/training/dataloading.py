"""Patches from the preprocessed cases: random training patches with foreground oversampling, and a
fixed set of validation patches.

Cases are memory-mapped (``np.load(mmap_mode="r")``), so only the voxels of a patch are read from disk.
Patch placement follows nnU-Net: a patch lies inside its case where the case is large enough (else the
case lies inside the patch, which is padded with 0 for the image and 0 (background) for the label);
with probability ``oversample_foreground_percent`` (0.33) a patch is instead centred on a random voxel
of a random foreground class present in the case (the ``class_locations`` that preprocessing stored).
The draw is made per patch, so a third of all patches are foreground-centred whatever the batch size
(nnU-Net forces the last third of each batch instead, 1 of 2 patches at batch size 2).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from light_training.preprocessing.preprocess import list_cases, load_case

__all__ = ["OVERSAMPLE_FOREGROUND_PERCENT", "crop_patch", "choose_patch_start", "foreground_voxel",
           "PatchLoader", "ValidationPatches"]

OVERSAMPLE_FOREGROUND_PERCENT = 0.33  # nnU-Net's fraction of foreground-centred training patches


def crop_patch(image: np.ndarray, label: np.ndarray | None, start: Sequence[int],
               size: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the box ``[start, start + size)`` of a case; the parts outside the case are zero.

    Args:
        image: ``(C, Z, Y, X)`` (a memmap is fine: only the box is read); label: ``(Z, Y, X)`` or None.
        start: ``(z, y, x)`` corner, may be negative or reach past the case.
    Returns:
        ``(C, *size)`` float32 and ``(*size)`` uint8 (or None).
    """
    start = np.asarray(start, dtype=int)
    size = np.asarray(size, dtype=int)
    shape = np.asarray(image.shape[1:])
    lo, hi = np.clip(start, 0, shape), np.clip(start + size, 0, shape)
    inside = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(int(a - s), int(s + n - b)) for a, b, s, n in zip(lo, hi, start, size)]
    patch = np.pad(np.asarray(image[(slice(None), *inside)], dtype=np.float32), [(0, 0), *pad])
    seg = None if label is None else np.pad(np.asarray(label[inside], dtype=np.uint8), pad)
    return patch, seg


def choose_patch_start(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator,
                       center: Sequence[int] | None = None) -> np.ndarray:
    """Corner ``(z, y, x)`` of a ``size`` patch in a case of ``shape``: uniform at random, or centred on
    the voxel ``center`` as far as the case allows. Along an axis where the case is at least as long as the
    patch, the patch stays inside the case; where it is shorter, the case stays inside the patch."""
    shape, size = np.asarray(shape, dtype=int), np.asarray(size, dtype=int)
    low, high = np.minimum(0, shape - size), np.maximum(0, shape - size)
    if center is None:
        return rng.integers(low, high + 1)
    return np.clip(np.asarray(center, dtype=int) - size // 2, low, high)


def foreground_voxel(properties: dict[str, Any], rng: np.random.Generator) -> np.ndarray | None:
    """A random voxel ``(z, y, x)`` of a random foreground class among those present in the case
    (each class equally likely, as nnU-Net does, so small classes are seen); None without foreground."""
    locations = properties.get("class_locations") or {}
    present = sorted(k for k, v in locations.items() if len(v) > 0 and int(k) != 0)
    if not present:
        return None
    voxels = locations[present[rng.integers(len(present))]]
    return np.asarray(voxels[rng.integers(len(voxels))], dtype=int)


def _check_cases(data_dir: str | Path, cases: Sequence[str]) -> list[str]:
    cases = list(cases)
    if not cases:
        raise ValueError(f"{data_dir}: no cases to draw patches from")
    missing = sorted(set(cases) - set(list_cases(data_dir)))
    if missing:
        raise ValueError(f"{data_dir}: case(s) {missing[:10]} are not (completely) preprocessed; "
                         f"run the preprocessing script")
    return cases


class PatchLoader(SlimDataLoaderBase):
    """Endless training batches for batchgenerators' augmenters.

    Each batch is ``{"data": (B, C, *read_size) float32, "seg": (B, 1, *read_size) uint8,
    "keys": [case, ...], "foreground": (B,) bool}`` where ``foreground`` says which patches were forced
    onto foreground. ``read_size`` may exceed ``patch_size`` (room for rotation and scaling; the spatial
    transform then takes the central ``patch_size``); the extra margin lies symmetrically around the patch,
    so a foreground-centred patch stays centred.

    Randomness: a ``numpy.random.Generator`` seeded with ``(seed, worker id)`` (the id that batchgenerators'
    augmenter gives each worker process), so every worker draws different, reproducible patches.
    """

    def __init__(self, data_dir: str | Path, cases: Sequence[str], patch_size: Sequence[int], batch_size: int,
                 read_size: Sequence[int] | None = None,
                 oversample_foreground_percent: float = OVERSAMPLE_FOREGROUND_PERCENT,
                 seed: int | Sequence[int] = 0):
        super().__init__(None, batch_size)
        self.data_dir = Path(data_dir)
        self.cases = _check_cases(data_dir, cases)
        self.patch_size = np.asarray(patch_size, dtype=int)
        self.read_size = self.patch_size if read_size is None else np.asarray(read_size, dtype=int)
        if len(self.patch_size) != 3 or np.any(self.read_size < self.patch_size):
            raise ValueError(f"patch_size must be 3 ints (z, y, x) and read_size at least as large, "
                             f"got {list(patch_size)} and {list(self.read_size)}")
        if not 0 <= oversample_foreground_percent <= 1:
            raise ValueError(f"oversample_foreground_percent must lie in [0, 1], got {oversample_foreground_percent}")
        self.oversample_foreground_percent = oversample_foreground_percent
        self.seed = [int(s) for s in np.atleast_1d(seed)]
        self._rng: np.random.Generator | None = None
        self._rng_thread = -1
        self._parent_pid = os.getpid()
        first, _, _ = load_case(self.data_dir, self.cases[0])
        self.num_channels = first.shape[0]

    @property
    def rng(self) -> np.random.Generator:
        # made lazily, inside the worker process, once the augmenter has set its thread id
        if self._rng is None or self._rng_thread != self.thread_id:
            self._rng = np.random.default_rng([*self.seed, self.thread_id])
            self._rng_thread = self.thread_id
            if os.getpid() != self._parent_pid:
                # some batchgenerators transforms draw from Python's `random`, which the augmenter does not
                # seed (a forked worker inherits the parent's state): seed it here, per worker
                random.seed(int(self._rng.integers(2**63)))
        return self._rng

    def sample(self, case: str, force_foreground: bool) -> tuple[np.ndarray, np.ndarray, bool]:
        """One patch of ``case``: ``(C, *read_size)`` float32, ``(*read_size)`` uint8, foreground-centred?"""
        image, label, properties = load_case(self.data_dir, case)
        if label is None:
            raise ValueError(f"{self.data_dir}: case {case!r} has no label (<case>_label.npy)")
        center = foreground_voxel(properties, self.rng) if force_foreground else None
        start = choose_patch_start(image.shape[1:], self.patch_size, self.rng, center)
        start = start - (self.read_size - self.patch_size) // 2
        patch, seg = crop_patch(image, label, start, self.read_size)
        return patch, seg, center is not None

    def generate_train_batch(self) -> dict[str, Any]:
        rng = self.rng
        data = np.empty((self.batch_size, self.num_channels, *self.read_size), dtype=np.float32)
        seg = np.empty((self.batch_size, 1, *self.read_size), dtype=np.uint8)
        keys, foreground = [], np.zeros(self.batch_size, dtype=bool)
        for b in range(self.batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            force = rng.uniform() < self.oversample_foreground_percent
            patch, label, foreground[b] = self.sample(case, force)
            if patch.shape[0] != self.num_channels:
                raise ValueError(f"{self.data_dir}: case {case!r} has {patch.shape[0]} channel(s), "
                                 f"expected {self.num_channels} like {self.cases[0]!r}")
            data[b], seg[b, 0] = patch, label
            keys.append(case)
        return {"data": data, "seg": seg, "keys": keys, "foreground": foreground}


class ValidationPatches:
    """A fixed list of validation patches: ``num_patches`` patches of ``patch_size``, taken in turn from
    each case and centred on a random foreground voxel; cases without foreground are left out (listed in
    ``without_foreground``).
    The choice depends on ``seed`` only, so every validation sees the same patches and the pseudo Dice
    of successive epochs can be compared. Patches are read on demand, not kept in memory."""

    def __init__(self, data_dir: str | Path, cases: Sequence[str], patch_size: Sequence[int],
                 num_patches: int = 50, seed: int = 0):
        self.data_dir = Path(data_dir)
        self.patch_size = np.asarray(patch_size, dtype=int)
        self.boxes: list[tuple[str, np.ndarray]] = []
        self.without_foreground: list[str] = []
        if not cases:
            return
        cases = _check_cases(data_dir, cases)
        # a case without foreground would only add false positives to the pseudo Dice (a lone one makes
        # it 0): such cases are left out of validation, and listed
        loaded = {c: load_case(self.data_dir, c) for c in cases}  # (image memmap, label, properties), read once
        self.without_foreground = [c for c in cases if not any(loaded[c][2]["class_locations"].values())]
        cases = [c for c in cases if c not in self.without_foreground]
        if not cases:
            return
        rng = np.random.default_rng(seed)
        for i in range(num_patches):
            case = cases[i % len(cases)]
            image, _, properties = loaded[case]
            center = foreground_voxel(properties, rng)
            self.boxes.append((case, choose_patch_start(image.shape[1:], self.patch_size, rng, center)))

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Patch ``index``: image ``(C, *patch_size)`` float32, label ``(*patch_size)`` uint8, case id."""
        case, start = self.boxes[index]
        image, label, _ = load_case(self.data_dir, case)
        if label is None:
            raise ValueError(f"{self.data_dir}: validation case {case!r} has no label")
        patch, seg = crop_patch(image, label, start, self.patch_size)
        return patch, seg, case

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        """Yield ``(image (B, C, *patch), label (B, *patch))`` numpy batches of this rank's share of the
        patches (patch ``i`` goes to rank ``i % world_size``)."""
        mine = list(range(rank, len(self), world_size))
        for first in range(0, len(mine), batch_size):
            items = [self[i] for i in mine[first:first + batch_size]]
            yield np.stack([it[0] for it in items]), np.stack([it[1] for it in items])
