"""Synthetic cases in the exact raw layouts of AIIB2023 (chest CT, airway) and BraTS2023 (glioma MRI).

The demo, the tests and the benchmarks run on them; a user with the real data changes nothing but the
data folder. Deterministic: the same seed gives byte-identical arrays (one generator per case).

    python -m light_training.synthetic --dataset=aiib2023 --num_cases=12 --out=./data/raw_data
    python -m light_training.synthetic --dataset=brats2023 --num_cases=12 --out=./data/raw_data --shape=(155,240,240)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from light_training.io import Geometry, write_volume

__all__ = ["Branch", "airway_tree", "synthetic_ct", "synthetic_mri", "generate_aiib2023", "generate_brats2023"]

AIIB_SHAPE = (96, 112, 112)  # default (z, y, x) of a synthetic CT: small enough for a CPU demo
BRATS_SHAPE = (64, 80, 72)  # default (z, y, x) of a synthetic MRI (the real ones are 155 x 240 x 240)
MIN_GENERATIONS = 5  # the airway tree bifurcates at least this often (where the radius allows)
BRATS_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
# mean intensity of each tissue in each sequence (arbitrary MRI units): white matter, grey matter, CSF,
# necrosis (1), edema (2), enhancing tumour (3). Enhancing bright on t1c, edema bright on t2f / t2w,
# necrosis dark on t1c and bright on t2w, CSF suppressed on t2f.
TISSUE_INTENSITY = {
    "t1n": (110, 80, 30, 50, 75, 85),
    "t1c": (115, 85, 30, 35, 85, 230),
    "t2w": (70, 90, 200, 185, 150, 115),
    "t2f": (80, 100, 25, 90, 200, 140),
}


@dataclass(frozen=True)
class Branch:
    """One airway segment in physical (z, y, x) mm: from ``start`` to ``end``, lumen ``radius``."""
    start: np.ndarray
    end: np.ndarray
    radius: float
    generation: int


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def airway_tree(rng: np.random.Generator, extent_mm: np.ndarray) -> list[Branch]:
    """A trachea bifurcating recursively with tapering radius and varied angles.

    ``extent_mm``: (z, y, x) size of the volume; the trachea enters at z = 0 and runs towards +z.
    """
    in_plane = float(min(extent_mm[1:]))
    start = np.array([0.0, extent_mm[1] * rng.uniform(0.42, 0.48), extent_mm[2] * rng.uniform(0.47, 0.53)])
    radius = in_plane * rng.uniform(0.042, 0.05)
    length = extent_mm[0] * rng.uniform(0.3, 0.36)
    min_radius = max(0.35, in_plane / 400)
    branches: list[Branch] = []
    stack = [(start, _unit(np.array([1.0, rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)])), length, radius, 0,
              np.array([0.0, 0.0, 1.0]))]
    while stack:
        start, direction, length, radius, generation, split_axis = stack.pop()
        end = np.clip(start + direction * length, 0, extent_mm)
        branches.append(Branch(start, end, radius, generation))
        if radius * 0.78 < min_radius or generation >= 8:
            continue
        # the two children leave in the plane of direction and a (randomly turned) split axis
        axis = _unit(split_axis - split_axis.dot(direction) * direction + rng.normal(0, 0.25, 3))
        axis = _unit(axis - axis.dot(direction) * direction)
        for sign in (1.0, -1.0):
            angle = np.deg2rad(rng.uniform(25, 45))
            child = _unit(np.cos(angle) * direction + sign * np.sin(angle) * axis)
            next_axis = _unit(np.cross(child, axis))  # the next split is roughly perpendicular to this one
            stack.append((end, child, length * rng.uniform(0.72, 0.86), radius * rng.uniform(0.72, 0.82),
                          generation + 1, next_axis))
    return branches


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of ``(..., 3)`` points to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def _draw_tree(branches: Sequence[Branch], shape: Sequence[int], spacing: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise lumen and wall (boolean ``(Z, Y, X)``) of the tree, each branch inside its bounding box."""
    lumen = np.zeros(shape, bool)
    wall = np.zeros(shape, bool)
    for branch in branches:
        thickness = 0.35 * branch.radius + 0.4
        reach = branch.radius + thickness
        lo = np.maximum(np.floor((np.minimum(branch.start, branch.end) - reach) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((np.maximum(branch.start, branch.end) + reach) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(l, h) * s for l, h, s in zip(lo, hi, spacing)], indexing="ij"), -1)
        distance = _segment_distance(grid, branch.start, branch.end)
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        lumen[box] |= distance < branch.radius
        wall[box] |= distance < reach
    return lumen, wall & ~lumen


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed noise scaled to unit standard deviation (texture, bias fields, irregular borders)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoid distance ``(Z, Y, X)`` (< 1 inside), in voxel units."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((ax - c) / r) ** 2 for ax, c, r in zip(axes, centre, radii)))


def synthetic_ct(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]
                 ) -> tuple[np.ndarray, np.ndarray, list[Branch]]:
    """A chest CT ``(Z, Y, X)`` int16 in HU, its airway label (uint8, 1 = lumen) and the tree drawn."""
    shape, spacing = tuple(int(s) for s in shape), np.asarray(spacing, float)
    z, y, x = shape
    hu = np.full(shape, -1000.0, np.float32)  # air around the body
    body = _ellipsoid((1, y, x), (0, y * 0.5, x * 0.5), (1, y * rng.uniform(0.42, 0.47), x * rng.uniform(0.45, 0.49)))
    hu[:, body[0] < 1] = 40.0 + 15 * _smooth_noise(rng, shape, 3)[:, body[0] < 1]
    fat = (body[0] < 1) & (body[0] > 0.9)
    hu[:, fat] = -90.0
    lungs = np.zeros(shape, bool)
    for side in (0.3, 0.7):  # two lungs left and right of the mediastinum
        lungs |= _ellipsoid(shape, (z * 0.55, y * 0.5, x * side), (z * 0.6, y * 0.33, x * 0.2)) < 1
    hu[lungs] = -850.0 + 30 * _smooth_noise(rng, shape, 2)[lungs]
    branches = airway_tree(rng, np.asarray(shape) * spacing)
    lumen, wall = _draw_tree(branches, shape, spacing)
    hu[wall] = -100.0
    hu[lumen] = -1000.0
    hu = ndimage.gaussian_filter(hu, 0.6)  # partial-volume blur
    hu += rng.normal(0.0, 20.0, shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), lumen.astype(np.uint8), branches


def synthetic_mri(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Four skull-stripped MRI sequences ``(4, Z, Y, X)`` float32 (background exactly 0) and the tumour
    label ``(Z, Y, X)`` uint8 (1 NCR, 2 ED, 3 ET), on a 1 mm grid."""
    shape = tuple(int(s) for s in shape)
    centre = np.asarray(shape) / 2
    brain_radii = np.asarray(shape) * rng.uniform(0.40, 0.45, 3)
    brain = (_ellipsoid(shape, centre, brain_radii) + 0.04 * _smooth_noise(rng, shape, 6)) < 1
    tissue = np.where(_smooth_noise(rng, shape, 3) > 0.2, 0, 1)  # 0 white matter, 1 grey matter
    ventricles = _ellipsoid(shape, centre, brain_radii * np.array([0.2, 0.3, 0.12])) < 1
    tissue[ventricles] = 2
    label = np.zeros(shape, np.uint8)
    for _ in range(1 if rng.random() < 0.75 else 2):  # sometimes several lesions
        radius = min(shape) * rng.uniform(0.14, 0.2)
        where = centre + rng.uniform(-0.45, 0.45, 3) * (brain_radii - radius)
        d = _ellipsoid(shape, where, radius * rng.uniform(0.8, 1.2, 3)) + 0.12 * _smooth_noise(rng, shape, 4)
        core, necrosis = rng.uniform(0.5, 0.65), rng.uniform(0.25, 0.4)
        enhancing = rng.random() < 0.8  # sometimes no enhancing tumour
        label[(d < 1) & (label == 0)] = 2
        label[d < core] = 3 if enhancing else 1
        label[d < necrosis] = 1
    label[~brain] = 0
    tissue = np.where(label > 0, label.astype(int) + 2, tissue)  # 3 NCR, 4 ED, 5 ET
    bias = 1 + 0.08 * _smooth_noise(rng, shape, 12)
    images = np.zeros((4, *shape), np.float32)
    for c, name in enumerate(BRATS_SEQUENCES):
        mean = np.asarray(TISSUE_INTENSITY[name], np.float32)[tissue]
        texture = 6 * _smooth_noise(rng, shape, 1.5) + rng.normal(0, 4, shape)
        images[c] = np.where(brain, np.maximum((mean + texture) * bias, 1.0), 0.0)
    return images, label


def _check(num_cases: int, shape: Sequence[int] | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    shape = tuple(default if shape is None else shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be (z, y, x) with every size >= 16, got {shape}")
    return shape


def generate_aiib2023(out_dir: str | Path, num_cases: int = 12, seed: int = 0,
                      shape: Sequence[int] | None = None) -> list[str]:
    """Write ``out_dir/AIIB23_Train_T1/{img,gt}/AIIB23_<n>.nii.gz``; returns the case ids.

    Each case: shape ``shape`` (z, y, x) plus up to 10 % per axis, spacing ~0.5 mm between slices and
    ~0.7 mm in plane, a non-zero origin, a flipped (non-identity) direction in every third case.
    """
    base = _check(num_cases, shape, AIIB_SHAPE)
    root = Path(out_dir) / "AIIB23_Train_T1"
    cases = []
    for n in range(1, num_cases + 1):
        rng = np.random.default_rng([seed, n])
        case_shape = tuple(s + int(rng.integers(0, s // 10 + 1)) for s in base)
        in_plane = rng.uniform(0.62, 0.78)
        spacing = (float(np.float32(rng.uniform(0.45, 0.55))), float(np.float32(in_plane)),
                   float(np.float32(in_plane)))
        ct, label, _ = synthetic_ct(rng, case_shape, spacing)
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if n % 3 else \
            (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        origin = tuple(float(np.float32(v)) for v in (rng.uniform(-200, -100), rng.uniform(-200, -100),
                                                       rng.uniform(-400, -100)))
        geometry = Geometry(spacing, origin, direction, case_shape)
        case = f"AIIB23_{n}"
        write_volume(ct, geometry, root / "img" / f"{case}.nii.gz")
        write_volume(label, geometry, root / "gt" / f"{case}.nii.gz")
        cases.append(case)
    return cases


def generate_brats2023(out_dir: str | Path, num_cases: int = 12, seed: int = 0,
                       shape: Sequence[int] | None = None) -> list[str]:
    """Write ``out_dir/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-<5 digits>-000/``
    with ``BraTS-GLI-<5 digits>-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (1 mm, shared geometry); returns the ids."""
    shape = _check(num_cases, shape, BRATS_SHAPE)
    root = Path(out_dir) / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    # the real files' geometry: 1 mm isotropic, LPS origin, x and y flipped
    geometry = Geometry((1.0, 1.0, 1.0), (-0.0, -239.0, 0.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), shape)
    cases = []
    for n in range(num_cases):
        rng = np.random.default_rng([seed, n])
        images, label = synthetic_mri(rng, shape)
        case = f"BraTS-GLI-{n:05d}-000"
        for name, image in zip(BRATS_SEQUENCES, images):
            write_volume(image, geometry, root / case / f"{case}-{name}.nii.gz")
        write_volume(label, geometry, root / case / f"{case}-seg.nii.gz")
        cases.append(case)
    return cases


def main(argv: Sequence[str]) -> None:
    """``python -m light_training.synthetic --dataset=... --num_cases=... --out=... [--seed=] [--shape=]``."""
    from light_training.config import parse_value
    options = {"dataset": "aiib2023", "num_cases": 12, "out": "./data/raw_data", "seed": 0, "shape": None}
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("options: " + ", ".join(f"--{k}={v!r}" for k, v in options.items()))
        raise SystemExit(0)
    for arg in argv:
        name, _, raw = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name not in options:
            raise SystemExit(f"synthetic: unknown option {arg!r}; options are " + ", ".join(f"--{k}" for k in options))
        try:
            options[name] = parse_value(name, raw, options[name])
        except ValueError as err:
            raise SystemExit(f"synthetic: {err}") from None
    generators = {"aiib2023": generate_aiib2023, "brats2023": generate_brats2023}
    if options["dataset"] not in generators:
        raise SystemExit(f"synthetic: --dataset must be one of {list(generators)}, got {options['dataset']!r}")
    try:
        cases = generators[options["dataset"]](options["out"], options["num_cases"], options["seed"], options["shape"])
    except ValueError as err:
        raise SystemExit(f"synthetic: {err}") from None
    print(f"{len(cases)} synthetic {options['dataset']} cases written under {options['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
