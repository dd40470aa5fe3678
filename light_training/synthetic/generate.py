"""Synthetic AIIB2023 (chest CT, airway) and BraTS2023 (brain MRI, glioma) datasets in the raw layouts.

Run the whole pipeline before having the real data with ``tools/generate_synthetic.py``,
or from Python with :func:`generate_aiib2023` / :func:`generate_brats2023`. The anatomy is drawn by
:mod:`light_training.synthetic.ct` and :mod:`light_training.synthetic.mri`. Every case draws from its
own ``numpy`` generator seeded with ``(seed, dataset, case index)``: the same seed gives byte-identical
arrays, and a case does not depend on how many cases are generated.
"""
from __future__ import annotations

import functools
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from light_training.config import settings_from
from light_training.datasets import DatasetDescription, load_dataset
from light_training.io import Geometry, write_json, write_volume
from light_training.preprocessing.raw_cases import layout_path
from light_training.synthetic.ct import synthesize_ct
from light_training.synthetic.mri import SEQUENCES, synthesize_mri

__all__ = ["AIIB_FOLDER", "BRATS_FOLDER", "EXAMPLE_FOLDER", "DEFAULT_SHAPE_AIIB", "DEFAULT_SHAPE_BRATS",
           "generate_aiib2023", "generate_brats2023", "generate_example", "example_description", "write_case",
           "case_rng", "GenerateSettings", "generate_dataset"]

AIIB_FOLDER = "AIIB23_Train_T1"
BRATS_FOLDER = "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
DEFAULT_SHAPE_AIIB = (96, 112, 112)  # (z, y, x); each case varies it by up to 8 voxels per axis
DEFAULT_SHAPE_BRATS = (64, 80, 72)  # (z, y, x); the real files are (155, 240, 240)
MIN_SIDE = 16  # smallest volume side that still holds the anatomy
_DATASET_KEY = {"aiib2023": 0, "brats2023": 1, "example": 2}
# orientations of the AIIB cases stored with a non-identity direction (every third case, index 1, 4, ...)
_ORIENTATIONS = ("RAS", "LPI", "tilt")


def case_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """The random generator of one case, seeded with ``(seed, dataset, index)``."""
    return np.random.default_rng([seed, _DATASET_KEY[dataset], index])


def _check_arguments(num_cases: Any, seed: Any, shape: Any) -> tuple[int, int] | None:
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases={num_cases!r}: expected a positive int")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative int")
    if shape is None:
        return None
    if (not isinstance(shape, (list, tuple, np.ndarray)) or len(shape) != 3
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= MIN_SIDE for n in shape)):
        raise ValueError(f"shape={shape!r}: expected (z, y, x), three ints >= {MIN_SIDE}, or None for the default")
    return tuple(int(n) for n in shape)


def _orient(image: np.ndarray, label: np.ndarray, geometry: Geometry,
            orientation: str, tilt_degrees: float) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Store an LPS image and label with another direction; SimpleITK reorders the arrays to match."""
    if orientation == "tilt":  # same axes, rotated by a gantry tilt about x
        a = np.radians(tilt_degrees)
        rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        direction = tuple(float(v) for v in (rotation @ np.asarray(geometry.direction).reshape(3, 3)).ravel())
        return image, label, Geometry(geometry.spacing, geometry.origin, direction, geometry.shape)
    arrays = []
    for array in (image, label):
        oriented = sitk.DICOMOrient(geometry.apply_to(sitk.GetImageFromArray(array)), orientation)
        arrays.append(sitk.GetArrayFromImage(oriented))
    return arrays[0], arrays[1], Geometry.of(oriented)


def _aiib_case(seed: int, index: int, shape: tuple[int, int, int] | None
               ) -> tuple[np.ndarray, np.ndarray, Geometry]:
    rng = case_rng(seed, "aiib2023", index)
    if shape is None:
        dz, dxy = rng.integers(-1, 2, size=2) * 8
        shape = (DEFAULT_SHAPE_AIIB[0] + int(dz), DEFAULT_SHAPE_AIIB[1] + int(dxy), DEFAULT_SHAPE_AIIB[2] + int(dxy))
    in_plane = round(rng.uniform(340, 380) / 512, 8)  # a 512-wide field of view of 34-38 cm
    spacing = (round(rng.uniform(0.47, 0.53), 3), in_plane, in_plane)
    image, label, _ = synthesize_ct(rng, shape, spacing)
    extent_x, extent_y = shape[2] * spacing[2], shape[1] * spacing[1]
    origin = (-extent_x / 2 + rng.uniform(-15, 15), -extent_y / 2 + rng.uniform(-15, 15), rng.uniform(-300, -100))
    geometry = Geometry(spacing, tuple(round(float(o), 4) for o in origin), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape)
    if index % 3 == 1:
        orientation = _ORIENTATIONS[int(rng.integers(len(_ORIENTATIONS)))]
        image, label, geometry = _orient(image, label, geometry, orientation, rng.uniform(3, 8))
    return image, label, geometry


def write_case(root: Path, description: DatasetDescription, case: str, images: Sequence[np.ndarray],
               label: np.ndarray | None, geometry: Geometry, labelled: bool = True) -> None:
    """Write one case's channels ``[(Z, Y, X), ...]`` and label where the description's raw layout puts
    them (its first naming; ``labelled=False``: the layout for scans to predict)."""
    layout = description.raw_layout
    patterns = layout["images"] if labelled else layout["unlabeled_images"]
    for c, image in enumerate(images):
        write_volume(image, geometry, root / layout_path(patterns[0], case, c, description))
    if label is not None:
        write_volume(label, geometry, root / layout_path(layout["labels"][0], case, None, description))


def _each_case(write: Callable[[int], str], num_cases: int, processes: int) -> list[str]:
    """``write(index)`` for index 0..num_cases-1, in ``processes`` worker processes (1: here); the case ids in order.
    Every case draws from its own generator, so the result does not depend on ``processes``."""
    if processes <= 1 or num_cases <= 1:
        return [write(index) for index in range(num_cases)]
    with ProcessPoolExecutor(min(processes, num_cases)) as pool:
        return list(pool.map(write, range(num_cases)))


def _write_aiib_case(root: Path, seed: int, shape: tuple[int, int, int] | None, verbose: bool, index: int) -> str:
    start = time.time()
    case = f"AIIB23_{index + 1}"
    image, label, geometry = _aiib_case(seed, index, shape)
    write_case(root, load_dataset("aiib2023"), case, [image], label, geometry)
    if verbose:
        print(f"{case}: shape {geometry.shape}, spacing {geometry.spacing}, "
              f"{int(label.sum())} airway voxels, {time.time() - start:.1f} s", flush=True)
    return case


def generate_aiib2023(out_dir: str | Path, num_cases: int = 12, seed: int = 0,
                      shape: Sequence[int] | None = None, verbose: bool = False, processes: int = 1) -> list[str]:
    """Write synthetic chest CTs as ``out_dir/AIIB23_Train_T1/{img,gt}/AIIB23_<n>.nii.gz``, n = 1..num_cases.

    Images are int16 HU ``(Z, Y, X)``: body, lungs near -850 HU, vessels, and an airway tree of at least
    5 generations below the trachea (lumen near -1000 HU inside a wall near -100 HU); labels are uint8,
    1 = airway lumen. Spacing about (0.5, 0.7, 0.7) mm (z, y, x), a non-zero origin, and every third
    case (index 1, 4, ...) stored with a non-identity direction. ``shape`` (z, y, x) is used for every
    case; None: about :data:`DEFAULT_SHAPE_AIIB`, varied per case. Existing files are overwritten.
    ``processes``: cases generated in parallel (the same files). Returns the case ids ``["AIIB23_1", ...]``.
    """
    shape = _check_arguments(num_cases, seed, shape)
    write = functools.partial(_write_aiib_case, Path(out_dir) / AIIB_FOLDER, int(seed), shape, verbose)
    return _each_case(write, int(num_cases), processes)


def _write_brats_case(root: Path, seed: int, shape: tuple[int, int, int], verbose: bool, index: int) -> str:
    start = time.time()
    # like the real files as SimpleITK reads them: 1 mm, identity direction, origin (0, -239, 0) for 240 rows
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, -(shape[1] - 1.0), 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape)
    description = load_dataset("brats2023")
    case = f"BraTS-GLI-{index:05d}-000"
    images, label, lesions = synthesize_mri(case_rng(seed, "brats2023", index), shape, index)
    for pattern in description.raw_layout["images"][1:]:
        for c in range(len(SEQUENCES)):
            (root / layout_path(pattern, case, c, description)).unlink(missing_ok=True)
    for pattern in description.raw_layout["labels"][1:]:
        (root / layout_path(pattern, case, 0, description)).unlink(missing_ok=True)
    write_case(root, description, case, [images[s] for s in description.channel_names], label, geometry)
    if verbose:
        counts = ", ".join(f"{name} {int((label == value).sum())}"
                           for value, name in ((1, "NCR"), (2, "ED"), (3, "ET")))
        print(f"{case}: {len(lesions)} lesion(s), voxels {counts}, {time.time() - start:.1f} s", flush=True)
    return case


def generate_brats2023(out_dir: str | Path, num_cases: int = 12, seed: int = 0,
                       shape: Sequence[int] | None = None, verbose: bool = False, processes: int = 1) -> list[str]:
    """Write synthetic glioma MRIs as ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` in
    ``out_dir/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData``.

    ``<case>`` is ``BraTS-GLI-<5 digits>-000`` from 00000. The four sequences are int16 ``(Z, Y, X)``
    on one 1 mm isotropic grid, zero outside the brain; ``seg`` is uint8 with 1 necrotic core,
    2 edema, 3 enhancing tumour. Every third case (index 1, 4, ...) has two or three lesions and every
    fourth (index 3, 7, ...) a non-enhancing tumour (no label 3). ``shape`` (z, y, x) defaults to
    :data:`DEFAULT_SHAPE_BRATS`. Files of the renamed layout (``t1n.nii.gz``...) left in a case folder
    by an earlier run of ``brats2023/1_rename_mri_data_brats2023.py`` are removed, so the folder
    holds this case only. ``processes``: cases generated in parallel (the same files). Returns the case ids.
    """
    shape = _check_arguments(num_cases, seed, shape) or DEFAULT_SHAPE_BRATS
    write = functools.partial(_write_brats_case, Path(out_dir) / BRATS_FOLDER, int(seed), tuple(shape), verbose)
    return _each_case(write, int(num_cases), processes)


EXAMPLE_FOLDER = "Dataset001_Example"
DEFAULT_SHAPE_EXAMPLE = (20, 64, 56)  # (z, y, x) at 4 x 1 x 1 mm: thick slices, as many clinical MRIs
EXAMPLE_SPACING = (4.0, 1.0, 1.0)  # thick slices: max/min spacing 4 > 3, so resampling takes the anisotropic path


def example_description(num_training: int) -> dict[str, Any]:
    """The ``dataset.json`` of the synthetic example of a user's own dataset (nnU-Net's fields only,
    plus ``name``: the layout, normalisation, spacing and metrics are nnU-Net's / ours by default)."""
    return {"name": EXAMPLE_FOLDER, "channel_names": {"0": "T1c", "1": "FLAIR"},
            "labels": {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3, "tumor": [1, 2, 3]},
            "numTraining": int(num_training), "file_ending": ".nii.gz"}


def generate_example(out_dir: str | Path, num_cases: int = 8, seed: int = 0, shape: Sequence[int] | None = None,
                     num_test: int = 2, verbose: bool = False) -> list[str]:
    """A user's own dataset in nnU-Net's raw layout: ``out_dir/Dataset001_Example/{imagesTr,labelsTr,imagesTs}``
    and ``dataset.json`` (two MRI channels, labels 1-3 and the region "tumor" = {1, 2, 3}, 4 x 1 x 1 mm).

    Cases ``case_000``.. (``num_cases`` labelled) and ``test_000``.. (``num_test`` without labels, in
    ``imagesTs``). Returns the labelled case ids.
    """
    shape = _check_arguments(num_cases, seed, shape) or DEFAULT_SHAPE_EXAMPLE
    root = Path(out_dir) / EXAMPLE_FOLDER
    data = example_description(num_cases)
    description = load_dataset(data)
    geometry = Geometry(EXAMPLE_SPACING, (-30.0, -20.0, 12.5), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape)
    cases = []
    for index in range(int(num_cases) + int(num_test)):
        labelled = index < num_cases
        case = f"case_{index:03d}" if labelled else f"test_{index - num_cases:03d}"
        images, label, _ = synthesize_mri(case_rng(int(seed), "example", index), shape, index)
        write_case(root, description, case, [images["t1c"], images["t2f"]], label if labelled else None, geometry,
                   labelled=labelled)
        if labelled:
            cases.append(case)
        if verbose:
            print(f"{case}: {int((label > 0).sum())} tumour voxels", flush=True)
    write_json(data, root / "dataset.json")
    return cases


_GENERATORS = {"aiib2023": generate_aiib2023, "brats2023": generate_brats2023, "example": generate_example}
_FOLDERS = {"aiib2023": AIIB_FOLDER, "brats2023": BRATS_FOLDER, "example": EXAMPLE_FOLDER}


@dataclass(frozen=True)
class GenerateSettings:
    """The constants of ``tools/generate_synthetic.py`` (their comments say what each does), checked once."""
    dataset: str
    num_cases: int
    out: str
    seed: int
    shape: list[int] | None
    processes: int

    def __post_init__(self):
        if self.dataset not in _GENERATORS:
            raise ValueError(f"--dataset={self.dataset}: choose from {list(_GENERATORS)}")


def generate_dataset(config: dict[str, Any], script: str) -> list[str]:
    """The entry of ``tools/generate_synthetic.py``: ``num_cases`` cases of ``dataset`` ("aiib2023",
    "brats2023" or "example") under ``out`` with ``seed`` and ``shape`` (AIIB and BraTS cases in ``processes``
    processes, the same files); returns the case ids written.
    Raises ``ValueError`` naming a bad constant."""
    c = settings_from(GenerateSettings, config)
    start = time.time()
    parallel = {"processes": c.processes} if c.dataset in ("aiib2023", "brats2023") else {}
    cases = _GENERATORS[c.dataset](c.out, c.num_cases, c.seed, c.shape, verbose=True, **parallel)
    folder = Path(c.out) / _FOLDERS[c.dataset]
    print(f"wrote {len(cases)} {c.dataset} cases to {folder} in {time.time() - start:.1f} s")
    return cases
