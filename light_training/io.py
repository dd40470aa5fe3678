"""NIfTI input/output that keeps geometry, and atomic file writes.

Arrays are numpy in SimpleITK's array order ``(Z, Y, X)`` (channels first: ``(C, Z, Y, X)``).
A :class:`Geometry` holds what is needed to put an array back into physical space.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["Geometry", "ImageReadError", "atomic_path", "write_json", "read_json", "read_volume",
           "read_image", "read_label", "write_volume"]

GEOMETRY_ATOL = 1e-4  # mm / direction cosines: tolerance when comparing two files' geometry


class ImageReadError(ValueError):
    """A file that cannot be read, or that disagrees with the files it belongs with."""


@dataclass(frozen=True)
class Geometry:
    """Where a ``(Z, Y, X)`` array lies in physical space.

    ``spacing`` is in array order (z, y, x) in mm, like nnU-Net's plans; ``origin`` (x, y, z, mm) and
    ``direction`` (9 cosines, row-major) are SimpleITK's physical conventions; ``shape`` is (z, y, x).
    """
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> "Geometry":
        return cls(spacing=tuple(float(s) for s in image.GetSpacing()[::-1]),
                   origin=tuple(float(o) for o in image.GetOrigin()),
                   direction=tuple(float(d) for d in image.GetDirection()),
                   shape=tuple(int(s) for s in image.GetSize()[::-1]))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]), tuple(d["shape"]))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    def mismatch(self, other: "Geometry") -> str | None:
        """A description of how ``other`` differs from this geometry, or None when they agree."""
        if self.shape != other.shape:
            return f"shape {other.shape} != {self.shape}"
        for field in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, field)), np.asarray(getattr(other, field))
            if not np.allclose(a, b, atol=GEOMETRY_ATOL, rtol=0):
                return f"{field} {tuple(b.round(5).tolist())} != {tuple(a.round(5).tolist())}"
        return None

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffixes); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; an unreadable or invalid file raises an error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ImageReadError(f"{path}: cannot read JSON ({err})") from None


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one 3-D image: array ``(Z, Y, X)`` in the file's dtype and its geometry."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise ImageReadError(f"{path}: unreadable or truncated image ({first})") from None
    if array.ndim != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: expected a 3-D single-channel image, got array shape {array.shape}")
    return array, Geometry.of(image)


def read_image(paths: str | Path | Sequence[str | Path]) -> tuple[np.ndarray, Geometry]:
    """Read one image or several sequences of one case stacked as ``(C, Z, Y, X)`` float32.

    All sequences must share shape and geometry; a disagreeing one raises naming its file.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("read_image needs at least one path")
    arrays, geometry = [], None
    for path in paths:
        array, geo = read_volume(path)
        if geometry is None:
            geometry = geo
        elif (why := geometry.mismatch(geo)) is not None:
            raise ImageReadError(f"{path}: does not match {paths[0]} ({why})")
        arrays.append(array.astype(np.float32, copy=False))
    return np.stack(arrays), geometry


def read_label(path: str | Path, reference: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a label map as ``(Z, Y, X)`` uint8; with ``reference``, it must lie on that geometry."""
    array, geometry = read_volume(path)
    if reference is not None and (why := reference.mismatch(geometry)) is not None:
        raise ImageReadError(f"{path}: label does not match its image ({why})")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ImageReadError(f"{path}: label holds non-integer values")
    if array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise ImageReadError(f"{path}: label values outside 0..255 ({array.min()}..{array.max()})")
    return array.astype(np.uint8), geometry


def write_volume(array: np.ndarray, reference: Geometry, path: str | Path) -> None:
    """Write a ``(Z, Y, X)`` array (label map or float map, dtype kept) on ``reference``'s geometry.

    The file is written under a temporary name and renamed, so a crash never leaves half a file.
    """
    array = np.asarray(array)
    if tuple(array.shape) != tuple(reference.shape):
        raise ValueError(f"{path}: array shape {array.shape} != reference shape {reference.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = reference.apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
