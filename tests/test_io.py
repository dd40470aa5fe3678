"""NIfTI I/O keeps geometry; disagreeing files are named; writes are atomic."""
import numpy as np
import pytest
import SimpleITK as sitk

from light_training.io import (Geometry, ImageReadError, atomic_path, read_image, read_label, read_volume,
                               write_json, read_json, write_volume)

# float32-representable values, so the NIfTI header stores them exactly
GEO = Geometry(spacing=(0.5, 0.703125, 0.75), origin=(-120.5, 33.25, 1045.0),
               direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0), shape=(17, 18, 19))


def test_round_trip_keeps_geometry_exactly(tmp_path):
    label = (np.arange(17 * 18 * 19).reshape(17, 18, 19) % 4).astype(np.uint8)
    write_volume(label, GEO, tmp_path / "label.nii.gz")
    back, geometry = read_label(tmp_path / "label.nii.gz")
    assert geometry == GEO
    np.testing.assert_array_equal(back, label)
    floats = np.random.default_rng(0).random((17, 18, 19)).astype(np.float32)
    write_volume(floats, GEO, tmp_path / "map.nii.gz")
    back, geometry = read_volume(tmp_path / "map.nii.gz")
    assert back.dtype == np.float32 and geometry == GEO
    np.testing.assert_array_equal(back, floats)
    image = sitk.ReadImage(str(tmp_path / "map.nii.gz"))  # what any viewer sees
    assert image.GetSpacing() == (0.75, 0.703125, 0.5) and image.GetOrigin() == GEO.origin


def test_sequences_stack_and_mismatch_names_the_file(tmp_path):
    for i, name in enumerate(["t1n", "t1c", "t2w", "t2f"]):
        write_volume(np.full(GEO.shape, i, np.int16), GEO, tmp_path / f"{name}.nii.gz")
    paths = [tmp_path / f"{n}.nii.gz" for n in ["t1n", "t1c", "t2w", "t2f"]]
    image, geometry = read_image(paths)
    assert image.shape == (4, 17, 18, 19) and image.dtype == np.float32 and geometry == GEO
    assert image[3].max() == 3
    shifted = Geometry(GEO.spacing, (0.0, 0.0, 0.0), GEO.direction, GEO.shape)
    write_volume(np.zeros(GEO.shape, np.int16), shifted, tmp_path / "t2f.nii.gz")
    with pytest.raises(ImageReadError, match=r"t2f\.nii\.gz.*origin"):
        read_image(paths)
    small = Geometry(GEO.spacing, GEO.origin, GEO.direction, (17, 18, 18))
    write_volume(np.zeros(small.shape, np.uint8), small, tmp_path / "seg.nii.gz")
    with pytest.raises(ImageReadError, match=r"seg\.nii\.gz.*shape"):
        read_label(tmp_path / "seg.nii.gz", GEO)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    write_volume(np.zeros(GEO.shape, np.int16), GEO, tmp_path / "ok.nii.gz")
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz"):
        read_volume(tmp_path / "cut.nii.gz")


def test_write_refuses_wrong_shape_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_volume(np.zeros((3, 3, 3)), GEO, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "plans.json"
    write_json({"a": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["plans.json"]


def test_geometry_dict_round_trip():
    assert Geometry.from_dict(GEO.to_dict()) == GEO
    assert GEO.mismatch(GEO) is None
