"""A synthetic skull-stripped brain MRI with glioma (BraTS2023-like): four sequences and the tumour labels.

The brain is a bumpy ellipsoid of white matter under a folded grey-matter cortex, with CSF in the
sulci and two lateral ventricles, on an exactly zero background. Each lesion is an irregular blob:
edema (label 2) around a tumour core that is an enhancing rim (3) around necrosis (1), or, for a
non-enhancing tumour, a core of label 1 only. Every tissue has its own contrast in each sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from light_training.synthetic.ct import smooth_noise

__all__ = ["SEQUENCES", "Lesion", "synthesize_mri"]

SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
# mean intensity of each tissue in each sequence (arbitrary scanner units, as in the BraTS files)
CONTRAST = {          # t1n   t1c   t2w   t2f
    "csf":            (250,  270, 1600,  120),
    "grey":           (520,  560,  750,  620),
    "white":          (700,  730,  500,  470),
    "edema":          (450,  480, 1250, 1050),  # bright on t2w and FLAIR (t2f)
    "necrosis":       (300,  260, 1450,  650),  # dark on t1c, bright on t2w
    "non_enhancing":  (420,  440, 1050,  950),  # a core without enhancement (label 1)
    "enhancing":      (520, 1250,  900,  800),  # bright on t1c
}
NCR, ED, ET = 1, 2, 3


@dataclass(frozen=True)
class Lesion:
    """One tumour: centre (voxels, z, y, x), whole-tumour semi-axes (voxels), and what its core holds."""
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    enhancing: bool
    necrotic: bool


def _brain_tissues(rng: np.random.Generator, shape: tuple[int, int, int]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Brain mask ``(Z, Y, X)`` bool, soft tissue fractions, the brain centre and semi-axes (voxels)."""
    center = np.array(shape) / 2 + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    semi = np.array(shape) * np.array([0.38, 0.40, 0.36]) * rng.uniform(0.92, 1.03, 3)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, center, semi))).astype(np.float32)
    radius += 0.05 * smooth_noise(rng, shape, max(4.0, semi.min() / 2))  # lobes
    scale = float(semi.min())
    brain = radius < 1
    gyri = smooth_noise(rng, shape, float(np.clip(scale / 10, 2.5, 8)))  # cortical folding
    thickness = float(np.clip(0.16 * scale, 2.5, 6))  # grey matter, voxels (mm)
    cortex_depth = thickness * (1 + 0.5 * gyri) / scale  # as a fraction of the radius
    white = np.clip(0.5 + (1 - cortex_depth - radius) * scale / 1.5, 0, 1)
    csf = np.clip(0.5 + (gyri - 1.1) * 2, 0, 1) * (1 - white)  # sulci
    csf = np.maximum(csf, np.clip(0.5 + (radius - 0.97) * scale, 0, 1))  # a thin rim at the surface
    for side in (-1, 1):  # lateral ventricles
        v_center = center + np.array([0.1, -0.05, side * 0.12]) * semi
        v_semi = semi * np.array([0.22, 0.45, 0.1]) * rng.uniform(0.8, 1.2)
        v = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, v_center, v_semi)))
        csf = np.maximum(csf, np.clip(0.5 + (1 - v) * float(v_semi.min()), 0, 1))
    white = white * (1 - csf)
    grey = np.clip(1 - white - csf, 0, 1)
    return brain, {"csf": csf, "grey": grey, "white": white}, center, semi


def _random_lesions(rng: np.random.Generator, center: np.ndarray, semi: np.ndarray, index: int) -> list[Lesion]:
    """Every third case (index 1, 4, ...) has two or three lesions; every fourth (3, 7, ...) no enhancement."""
    count = int(rng.integers(2, 4)) if index % 3 == 1 else 1
    enhancing = index % 4 != 3
    lesions = []
    for k in range(count):
        size = rng.uniform(0.42, 0.55) if k == 0 else rng.uniform(0.22, 0.32)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = direction * rng.uniform(0.15, 0.5) * semi
        lesion_semi = np.maximum(size * semi.min() * rng.uniform(0.8, 1.2, 3), 4.0)
        lesions.append(Lesion(tuple(center + offset), tuple(lesion_semi), enhancing,
                              necrotic=not enhancing or rng.uniform() < 0.85))
    return lesions


def _lesion_labels(rng: np.random.Generator, shape: tuple[int, int, int], lesion: Lesion) -> np.ndarray:
    """Label map ``(Z, Y, X)`` uint8 of one lesion (0, 1, 2, 3), drawn inside its bounding box."""
    center, semi = np.asarray(lesion.center), np.asarray(lesion.semi)
    reach = semi * 1.5 + 2
    lo = np.maximum(np.floor(center - reach).astype(int), 0)
    hi = np.minimum(np.ceil(center + reach).astype(int) + 1, shape)
    labels = np.zeros(shape, np.uint8)
    if np.any(hi <= lo):
        return labels
    box = tuple(hi - lo)
    grid = np.ogrid[tuple(slice(l, h) for l, h in zip(lo, hi))]
    d = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, center, semi)))
    scale = max(2.0, float(semi.min()) / 3)
    edema = d + 0.25 * np.clip(smooth_noise(rng, box, scale), -1.5, 1.5) < 1  # finger-like edema, inside the box
    core_d = d + 0.08 * np.clip(smooth_noise(rng, box, scale), -1.5, 1.5)
    core_radius = rng.uniform(0.5, 0.65)
    rim = max(rng.uniform(0.25, 0.45) * core_radius, 1.5 / float(semi.min()))  # at least ~1.5 voxels thick
    core = core_d < core_radius
    region = np.where(edema, ED, 0).astype(np.uint8)
    if lesion.enhancing:
        region[core] = ET
        if lesion.necrotic and (core_radius - rim) * float(semi.min()) >= 1.5:  # small lesions are solid
            region[core_d < core_radius - rim] = NCR
    else:
        region[core] = NCR
    labels[tuple(slice(l, h) for l, h in zip(lo, hi))] = region
    return labels


def synthesize_mri(rng: np.random.Generator, shape: tuple[int, int, int],
                   index: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, list[Lesion]]:
    """One case: ``{sequence: (Z, Y, X) int16}`` for t1n, t1c, t2w, t2f, the label ``(Z, Y, X)`` uint8, the lesions.

    Background is exactly 0 in every sequence and the brain is >= 1. ``index`` (the case number)
    decides the lesion count and whether the tumour enhances (see :func:`_random_lesions`).
    """
    brain, tissues, center, semi = _brain_tissues(rng, shape)
    label = np.zeros(shape, np.uint8)
    priority = np.array([0, 3, 1, 2])  # where lesions overlap: necrosis > enhancing > edema
    lesions = _random_lesions(rng, center, semi, index)
    for lesion in lesions:
        drawn = _lesion_labels(rng, shape, lesion)
        label = np.where(priority[drawn] > priority[label], drawn, label)
    label[~brain] = 0
    bias = np.exp(0.08 * smooth_noise(rng, shape, max(8.0, shape[1] / 3))).astype(np.float32)
    heterogeneity = 1 + 0.06 * smooth_noise(rng, shape, 3)
    tumour = label > 0
    non_enhancing = not any(lesion.enhancing for lesion in lesions)
    images = {}
    for s, sequence in enumerate(SEQUENCES):
        jitter = {name: rng.uniform(0.93, 1.07) for name in CONTRAST}
        mean = {name: values[s] * jitter[name] for name, values in CONTRAST.items()}
        image = sum(fraction * mean[name] for name, fraction in tissues.items()).astype(np.float32)
        tumour_value = np.zeros(shape, np.float32)
        tumour_value[label == ED] = mean["edema"]
        tumour_value[label == NCR] = mean["non_enhancing" if non_enhancing else "necrosis"]
        tumour_value[label == ET] = mean["enhancing"]
        image = np.where(tumour, tumour_value * heterogeneity, image)
        image = ndimage.gaussian_filter(image * bias, sigma=0.6, truncate=3.0)  # partial volume
        image += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.025 * mean["white"])
        image *= rng.uniform(0.6, 1.6)  # scanner scale: MRI units are arbitrary
        images[sequence] = np.where(brain, np.clip(np.rint(image), 1, 32000), 0).astype(np.int16)
    return images, label, lesions
