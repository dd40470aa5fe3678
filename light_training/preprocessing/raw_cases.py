"""Which files make a raw case, and the checks every raw case passes before any work."""
from __future__ import annotations

import gzip
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from light_training.datasets import DatasetDescription, as_description
from light_training.io import Geometry, ImageReadError, read_image, read_label

__all__ = ["RawCase", "NIFTI_ENDINGS", "layout_path", "find_raw_cases", "find_label_files", "validate_case", "check_nifti_file",
           "read_raw_case"]

NIFTI_ENDINGS = (".nii.gz", ".nii")  # a case's files are matched by name whatever their NIfTI ending


@dataclass
class RawCase:
    """One raw case: its image files (one per channel, in ``channel_names`` order) and label file."""
    case: str
    image_files: list[Path]
    label_file: Path | None = None


def _endings(description: DatasetDescription) -> list[str]:
    ending = description.file_ending
    return [ending] + [e for e in NIFTI_ENDINGS if e != ending] if ending in NIFTI_ENDINGS else [ending]


def layout_path(pattern: str, case: str, channel_index: int | None, description: DatasetDescription,
                ext: str | None = None) -> str:
    """A layout pattern filled in for one case (and channel): ``"img/{case}{ext}"`` -> ``"img/AIIB23_1.nii.gz"``."""
    channel = description.channel_names[channel_index] if channel_index is not None else ""
    return pattern.format(case=case, channel=channel, channel_index=f"{channel_index or 0:04d}",
                          ext=description.file_ending if ext is None else ext)


def _pattern_regex(pattern: str, description: DatasetDescription) -> re.Pattern:
    """A regex matching the relative paths of channel 0's files; group ``case`` is the case id."""
    endings = "|".join(re.escape(e) for e in _endings(description))
    parts, seen_case = [], False
    for text, name in re.findall(r"([^{]*)(?:{(\w+)})?", pattern):
        parts.append(re.escape(text))
        if name == "case":
            parts.append("(?P=case)" if seen_case else r"(?P<case>[^/.][^/]*?)")
            seen_case = True
        elif name == "channel":
            parts.append(re.escape(description.channel_names[0]))
        elif name == "channel_index":
            parts.append("0000")
        elif name == "ext":
            parts.append(f"(?:{endings})")
    return re.compile("".join(parts))


def _first_existing(raw_dir: Path, patterns: Sequence[str], case: str, channel_index: int | None,
                    description: DatasetDescription) -> Path:
    """The first file of ``patterns`` x NIfTI endings that exists; the first candidate when none does."""
    candidates = [raw_dir / layout_path(p, case, channel_index, description, ext)
                  for p in patterns for ext in _endings(description)]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _matching_cases(raw_dir: Path, patterns: Sequence[str], description: DatasetDescription) -> dict[str, Path]:
    """``{case: first matching file}`` of the files under ``raw_dir`` that match one of ``patterns``."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        regex = _pattern_regex(pattern, description)
        glob = re.sub(r"\*+", "*", re.sub(r"{\w+}", "*", pattern))
        for path in sorted(raw_dir.glob(glob)):
            match = regex.fullmatch(path.relative_to(raw_dir).as_posix())
            if match and path.is_file():
                found.setdefault(match.group("case"), path)
    return found


def find_label_files(raw_dir: str | Path, description: DatasetDescription | str) -> dict[str, Path]:
    """``{case: label file}`` of a raw folder by the description's ``labels`` patterns (images not needed)."""
    raw_dir, description = Path(raw_dir), as_description(description)
    if not raw_dir.is_dir():
        raise ValueError(f"{raw_dir}: no such folder (expected labels laid out as "
                         f"{' or '.join(description.raw_layout['labels'])})")
    return dict(sorted(_matching_cases(raw_dir, description.raw_layout["labels"], description).items()))


def find_raw_cases(raw_dir: str | Path, description: DatasetDescription | str,
                   with_labels: bool = True) -> list[RawCase]:
    """The cases of a raw folder laid out as ``description.raw_layout`` says, sorted by case id.

    ``with_labels``: training data (``images`` + ``labels`` patterns); else a folder of scans to predict
    (``unlabeled_images``). A case is found by its first channel's file; the other files are looked
    up, not read (a missing one is reported when the case is checked). A folder that does not exist
    raises ``ValueError``; an empty one gives ``[]``.
    """
    raw_dir, description = Path(raw_dir), as_description(description)
    patterns = description.raw_layout["images" if with_labels else "unlabeled_images"]
    if not raw_dir.is_dir():
        raise ValueError(f"{raw_dir}: no such folder (expected {description.name} data laid out as "
                         f"{' or '.join(patterns)})")
    cases = []
    for case in sorted(_matching_cases(raw_dir, patterns, description)):
        images = [_first_existing(raw_dir, patterns, case, c, description) for c in range(len(description.channel_names))]
        label = (_first_existing(raw_dir, description.raw_layout["labels"], case, None, description)
                 if with_labels else None)
        cases.append(RawCase(case, images, label))
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


def check_nifti_file(path: str | Path, allow_nonfinite: bool = False) -> np.ndarray | None:
    """Raise ``ImageReadError`` for what SimpleITK reads without complaint: a truncated file (the
    missing voxels become 0) and NaN/Inf values (they become 0 too).

    With ``allow_nonfinite`` NaN/Inf are not an error: the ``(Z, Y, X)`` mask of those voxels (in
    SimpleITK's array order) is returned instead; None when there are none.

    Float files are read once more with nibabel and checked for NaN/Inf; for integer files the size
    is checked instead: for gzip the stored uncompressed size (its last 4 bytes), and only when that
    disagrees (a truncated file, or one of several gzip members) a full decompression.
    """
    path = Path(path)
    try:
        nifti = nib.load(str(path))
        expected = int(nifti.dataobj.offset) + int(np.prod(nifti.shape)) * nifti.get_data_dtype().itemsize
    except Exception:  # not a NIfTI file nibabel understands: SimpleITK reports what it cannot read
        return None
    if np.issubdtype(nifti.get_data_dtype(), np.floating):
        try:
            values = nifti.dataobj.get_unscaled()
        except Exception as err:  # nibabel's message for a short file varies with the compression
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
        finite = np.isfinite(values)
        bad = values.size - np.count_nonzero(finite)
        if bad and not allow_nonfinite:
            raise ImageReadError(f"{path}: {bad} NaN/Inf voxel(s)")
        # nibabel's array is in the file's (x, y, z) order, SimpleITK's the reverse
        return np.ascontiguousarray(~finite.reshape(finite.shape[:3]).T) if bad else None
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
    else:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return None
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from None
    if size < expected:
        raise ImageReadError(f"{path}: unreadable or truncated image ({size} of {expected} bytes)")
    return None


def read_raw_case(raw: RawCase, description: DatasetDescription | str,
                  replace_nonfinite: bool = False) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """Read and check a case: image ``(C, Z, Y, X)`` float32, its geometry, label ``(Z, Y, X)`` uint8 or None.

    Raises ``ValueError`` / ``ImageReadError`` (missing or unreadable file, sequences or label on
    another grid, NaN/Inf, unexpected label values, empty image). With ``replace_nonfinite`` NaN/Inf
    voxels of an image become the smallest finite value of their sequence, with a ``UserWarning``
    naming the file (prediction may opt in; training data never does).
    """
    description = as_description(description)
    names = description.channel_names
    if len(raw.image_files) != len(names):
        raise ValueError(f"{len(raw.image_files)} image file(s) but {description.name} has {len(names)} "
                         f"channel(s) {list(names)}")
    for channel, path in zip(names, raw.image_files):
        if not Path(path).is_file():
            what = f"sequence {channel}" if len(names) > 1 else "image"
            raise ValueError(f"missing {what}: {path} not found (layout: {' or '.join(description.raw_layout['images'])})")
    if raw.label_file is not None and not Path(raw.label_file).is_file():
        raise ValueError(f"missing label: {raw.label_file} not found")
    masks = [check_nifti_file(path, allow_nonfinite=replace_nonfinite) for path in raw.image_files]
    if raw.label_file is not None:
        check_nifti_file(raw.label_file)
    image, geometry = read_image(raw.image_files)
    for c, (path, mask) in enumerate(zip(raw.image_files, masks)):
        if mask is None:
            continue
        if mask.shape != image.shape[1:] or mask.all():
            raise ImageReadError(f"{path}: {int(mask.sum())} NaN/Inf voxel(s) and no finite value to replace them with")
        minimum = image[c][~mask].min()
        image[c][mask] = minimum
        warnings.warn(f"{path}: {int(mask.sum())} NaN/Inf voxel(s) replaced by the scan's minimum {minimum:g}",
                      UserWarning, stacklevel=2)
    label = read_label(raw.label_file, geometry)[0] if raw.label_file is not None else None
    validate_case(image, label, description.label_values, names)
    return image, geometry, label
