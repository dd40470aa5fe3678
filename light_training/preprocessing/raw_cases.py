"""Which files make a raw case, and the checks every raw case passes before any work."""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from light_training.io import Geometry, ImageReadError, read_image, read_label

__all__ = ["DatasetSpec", "DATASETS", "dataset_spec", "RawCase", "find_raw_cases", "validate_case", "check_nifti_file",
           "read_raw_case"]

@dataclass(frozen=True)
class DatasetSpec:
    """What is fixed per dataset: sequences, label values, normalisation scheme."""
    name: str
    modality: str  # "CT" or "MRI"
    channel_names: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    normalization: str  # scheme of every channel: "CT" or "ZScore"
    layout: str  # the raw layout, for error messages


DATASETS = {
    "aiib2023": DatasetSpec("aiib2023", "CT", ("CT",), (0, 1), ("background", "airway"), "CT",
                            "img/<case>.nii.gz and gt/<case>.nii.gz"),
    "brats2023": DatasetSpec("brats2023", "MRI", ("t1n", "t1c", "t2w", "t2f"), (0, 1, 2, 3),
                             ("background", "NCR", "ED", "ET"), "ZScore",
                             "<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz or <case>/{t1n,t1c,t2w,t2f,seg}.nii.gz"),
}


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return DATASETS[dataset]


@dataclass
class RawCase:
    """One raw case: its image files (one per channel, in ``channel_names`` order) and label file."""
    case: str
    image_files: list[Path]
    label_file: Path | None = None


def _nifti_stem(name: str) -> str | None:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and not name.startswith("."):
            return name[: -len(suffix)]
    return None


def _pick(folder: Path, case: str, part: str) -> Path:
    """``<case>-<part>.nii.gz`` or ``<part>.nii.gz`` (or .nii) in ``folder``; the first name if none exists."""
    names = [f"{case}-{part}.nii.gz", f"{part}.nii.gz", f"{case}-{part}.nii", f"{part}.nii"]
    return next((folder / n for n in names if (folder / n).is_file()), folder / names[0])


def find_raw_cases(raw_dir: str | Path, dataset: str, with_labels: bool = True) -> list[RawCase]:
    """The cases of a raw folder (layouts in the module docstring), sorted by case id.

    Files are listed, not read: a missing sequence or label shows up when the case is read.
    A folder that does not exist raises ``ValueError``; an empty one gives ``[]``.
    """
    spec, raw_dir = dataset_spec(dataset), Path(raw_dir)
    if not raw_dir.is_dir():
        raise ValueError(f"{raw_dir}: no such folder (expected {dataset} data laid out as {spec.layout})")
    cases = []
    if dataset == "aiib2023":
        folder = raw_dir / "img" if (with_labels or (raw_dir / "img").is_dir()) else raw_dir
        if not folder.is_dir():
            raise ValueError(f"{raw_dir}: no img/ folder (expected {spec.layout})")
        for path in sorted(folder.iterdir()):
            if (case := _nifti_stem(path.name)) is not None and path.is_file():
                cases.append(RawCase(case, [path], raw_dir / "gt" / path.name if with_labels else None))
    else:
        for folder in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = [_pick(folder, folder.name, channel) for channel in spec.channel_names]
            if not any(p.is_file() for p in files):  # not a case folder (a missing sequence is reported later)
                continue
            cases.append(RawCase(folder.name, files, _pick(folder, folder.name, "seg") if with_labels else None))
    return cases


def validate_case(image: np.ndarray, label: np.ndarray | None, labels: Sequence[int],
                  channel_names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the problem when an image ``(C, Z, Y, X)`` / label ``(Z, Y, X)`` is unusable."""
    if image.ndim != 4 or image.shape[0] != len(channel_names):
        raise ValueError(f"expected an image (C, Z, Y, X) with {len(channel_names)} channel(s) "
                         f"{list(channel_names)}, got array shape {image.shape}")
    for c, name in enumerate(channel_names):
        bad = image[c].size - np.count_nonzero(np.isfinite(image[c]))
        if bad:
            raise ValueError(f"image {name} holds {bad} NaN/Inf voxel(s)")
    if not np.any(image):
        raise ValueError("image has no foreground: every voxel is 0, nothing to crop to")
    if label is not None:
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} != image shape {image.shape[1:]}")
        found = np.flatnonzero(np.bincount(label.ravel().astype(np.int64), minlength=1))
        unexpected = sorted(set(found.tolist()) - set(labels))
        if unexpected:
            raise ValueError(f"label values {unexpected} outside the expected {list(labels)}")


def check_nifti_file(path: str | Path) -> None:
    """Raise ``ImageReadError`` for what SimpleITK reads without complaint: a truncated file (the
    missing voxels become 0) and NaN/Inf values (they become 0 too).

    Float files are read once more with nibabel and checked for NaN/Inf; for integer files the size
    is checked instead: for gzip the stored uncompressed size (its last 4 bytes), and only when that
    disagrees (a truncated file, or one of several gzip members) a full decompression.
    """
    path = Path(path)
    try:
        nifti = nib.load(str(path))
        expected = int(nifti.dataobj.offset) + int(np.prod(nifti.shape)) * nifti.get_data_dtype().itemsize
    except Exception:  # not a NIfTI file nibabel understands: SimpleITK reports what it cannot read
        return
    if np.issubdtype(nifti.get_data_dtype(), np.floating):
        try:
            values = nifti.dataobj.get_unscaled()
        except Exception as err:  # nibabel's message for a short file varies with the compression
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
        bad = values.size - np.count_nonzero(np.isfinite(values))
        if bad:
            raise ImageReadError(f"{path}: {bad} NaN/Inf voxel(s)")
        return
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
    else:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
    if size < expected:
        raise ImageReadError(f"{path}: unreadable or truncated image ({size} of {expected} bytes)")


def read_raw_case(raw: RawCase, spec: DatasetSpec) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Read and check a case: image ``(C, Z, Y, X)`` float32, its geometry, label ``(Z, Y, X)`` uint8 or None.

    Raises ``ValueError`` / ``ImageReadError`` (missing or unreadable file, sequences or label on
    another grid, NaN/Inf, unexpected label values, empty image).
    """
    names = spec.channel_names
    for channel, path in zip(names, raw.image_files):
        if not Path(path).is_file():
            path = Path(path)
            if len(names) > 1:
                raise ValueError(f"missing sequence {channel}: neither {path.name} nor {channel}.nii.gz "
                                 f"in {path.parent}")
            raise ValueError(f"missing image: {path} not found")
    if raw.label_file is not None and not Path(raw.label_file).is_file():
        raise ValueError(f"missing label: {raw.label_file} not found")
    for path in [*raw.image_files, *([raw.label_file] if raw.label_file is not None else [])]:
        check_nifti_file(path)
    image, geometry = read_image(raw.image_files)
    label = read_label(raw.label_file, geometry)[0] if raw.label_file is not None else None
    validate_case(image, label, spec.labels, names)
    return image, geometry, label
