"""Preview PNG: a PNG of the fixed size, pixels that change where the masks are, the airway projection's
colours, the coronal aspect from the spacing, and errors that name the bad argument."""
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from scipy import ndimage

from light_training.inference.preview import (HEADER_PX, MIP_COLOURS, PREDICTION_COLOURS, ROW_HEIGHT_PX,
                                              TRUTH_COLOURS, airway_mip_rgb, body_box, foreground_slices,
                                              pixel_aspect, preview_path, preview_size_px, write_preview)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scan(shape=(20, 30, 30), seed=0) -> np.ndarray:
    """A smooth bright ellipsoid ("body") with noise in dark air, float32 ``(Z, Y, X)``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    return (np.where(body, 40.0 + 30 * z, -1000.0) + rng.normal(0, 15, shape)).astype(np.float32)


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def count_colour(rgb: np.ndarray, colour: str, tol: float = 0.08, shaded: bool = False) -> int:
    """Pixels of ``rgb`` ``(H, W, 3)`` within ``tol`` of ``colour`` in every channel; ``shaded``: of
    ``colour`` times any shade from 0.4 to 1 (the projections' depth shading)."""
    target = np.asarray(to_rgb(colour))
    pixels = rgb[..., :3]
    shade = np.clip(pixels.max(axis=-1, keepdims=True) / target.max(), 0.4, 1.0) if shaded else 1.0
    return int(np.all(np.abs(pixels - shade * target) <= tol, axis=-1).sum())


def test_preview_path(tmp_path):
    assert preview_path(tmp_path, "AIIB23_7") == tmp_path / "AIIB23_7_preview.png"
    assert str(preview_path("out/preds", "BraTS-GLI-00001-000")) == "out/preds/BraTS-GLI-00001-000_preview.png"


@pytest.mark.parametrize("with_uncertainty,airway_mip", [(False, False), (True, False), (True, True), (False, True)])
def test_png_of_the_expected_size(tmp_path, with_uncertainty, airway_mip):
    image = scan((17, 18, 19))
    prediction = ball(image.shape, (8, 9, 9), 4).astype(np.uint8)
    uncertainty = np.full(image.shape, 0.5, np.float32) if with_uncertainty else None
    path = write_preview(tmp_path / "case_preview.png", image[None], prediction, uncertainty, prediction,
                         spacing=(2.5, 0.7, 0.7), airway_mip=airway_mip)
    assert path == tmp_path / "case_preview.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    width, height = preview_size_px(with_uncertainty, airway_mip)
    assert imread(path).shape[:2] == (height, width)
    assert height == HEADER_PX + ROW_HEIGHT_PX["slices"] + with_uncertainty * ROW_HEIGHT_PX["uncertainty"] \
        + airway_mip * ROW_HEIGHT_PX["mip"]
    assert [p.name for p in tmp_path.iterdir()] == ["case_preview.png"]  # no temporary file left behind


def test_file_stays_small(tmp_path):
    image = scan((100, 100, 100))  # noise on every voxel of the scan: what PNG compresses worst
    prediction = ball(image.shape, (50, 50, 50), 20)
    truth = np.roll(prediction, 4, axis=0)
    uncertainty = ndimage.gaussian_filter((prediction ^ truth).astype(np.float32), 2) * 2
    path = write_preview(tmp_path / "big.png", image, prediction.astype(np.uint8), np.clip(uncertainty, 0, 1),
                         truth.astype(np.uint8), airway_mip=True)
    assert path.stat().st_size < 300_000


def test_prediction_and_truth_outlines_show_in_their_colours(tmp_path):
    image = scan()
    blob = ball(image.shape, (10, 15, 15), 5).astype(np.uint8)
    empty = np.zeros_like(blob)
    panels = slice(None, int(0.8 * preview_size_px(False, False)[0]))  # the slices, not the legend at the right
    with_blob = imread(write_preview(tmp_path / "blob.png", image, blob, title="case"))[:, panels]
    without = imread(write_preview(tmp_path / "empty.png", image, empty, title="case"))[:, panels]
    assert with_blob.shape == without.shape and not np.array_equal(with_blob, without)
    assert count_colour(without, PREDICTION_COLOURS[0]) == 0
    assert count_colour(with_blob, PREDICTION_COLOURS[0]) > 100  # five panels cut through the blob
    changed_rows = np.flatnonzero(np.any(with_blob != without, axis=(1, 2)))
    assert changed_rows.min() >= HEADER_PX - 25  # the title line, above the panels' titles, is the same
    # the ground truth adds its own colour
    truth = imread(write_preview(tmp_path / "truth.png", image, blob, ground_truth=np.roll(blob, 3, axis=2)))
    assert count_colour(truth[:, panels], TRUTH_COLOURS[0]) > 100


def test_uncertainty_changes_only_the_second_row(tmp_path):
    image = scan()
    prediction = ball(image.shape, (10, 15, 15), 5).astype(np.uint8)
    certain = np.zeros(image.shape, np.float32)
    unsure = np.where(ball(image.shape, (10, 15, 15), 6), 1.0, 0.0).astype(np.float32)
    a = imread(write_preview(tmp_path / "a.png", image, prediction, certain, title="case"))
    b = imread(write_preview(tmp_path / "b.png", image, prediction, unsure, title="case"))
    changed_rows = np.flatnonzero(np.any(a != b, axis=(1, 2)))
    assert changed_rows.size > 50
    assert changed_rows.min() >= HEADER_PX + ROW_HEIGHT_PX["slices"] - 10  # nothing in the first row moved


def test_mip_colours_by_hand():
    truth = np.zeros((4, 3, 5), bool)
    truth[:, 1:3, 1] = True  # a tube two voxels deep along y, on the rays (z, x) = (., 1) of a projection along y
    prediction = truth.copy()
    prediction[1, 0, 1] = True  # a false positive in front of the tube: the true positives are the majority
    prediction[2, 0, 3] = True  # a false positive alone on its ray
    truth[3, 2, 4] = True  # a miss alone on its ray, at the far end
    truth[2, 2, 0] = prediction[2, 2, 0] = True
    prediction[2, 0, 0] = True  # one true positive and one false positive: a tie goes to the error
    rgb = airway_mip_rgb(prediction, truth, axis=1)  # (Z, X, 3)
    assert rgb.shape == (4, 5, 3)
    colour = {name: np.asarray(to_rgb(c)) for name, c in MIP_COLOURS.items()}
    # shade = 1 - 0.55 * (y of the first voxel on the ray) / (Y - 1)
    np.testing.assert_allclose(rgb[1, 1], colour["true positive"])  # first voxel at y = 0
    np.testing.assert_allclose(rgb[0, 1], 0.725 * colour["true positive"])  # first voxel at y = 1
    np.testing.assert_allclose(rgb[2, 3], colour["false positive"])
    np.testing.assert_allclose(rgb[3, 4], 0.45 * colour["missed"])
    np.testing.assert_allclose(rgb[2, 0], colour["false positive"])
    np.testing.assert_allclose(rgb[0, 4], to_rgb("#101010"))  # nothing on the ray
    alone = airway_mip_rgb(prediction, None, axis=0)  # (Y, X, 3), the prediction in one colour
    assert len({tuple(np.round(c / c.max(), 6)) for c in alone.reshape(-1, 3) if c.max() > 0.2}) == 1


def test_airway_projection_shows_the_false_positive(tmp_path):
    image = scan()
    truth = np.zeros(image.shape, np.uint8)
    truth[2:18, 14:17, 14:17] = 1  # a "trachea" along z
    leak = truth.copy()
    leak[4:8, 5:9, 4:8] = 1  # a false positive away from it
    mip_row = slice(HEADER_PX + ROW_HEIGHT_PX["slices"], None)
    panels = slice(None, int(0.8 * preview_size_px(False, True)[0]))
    right = imread(write_preview(tmp_path / "right.png", image, truth, ground_truth=truth, airway_mip=True))
    wrong = imread(write_preview(tmp_path / "wrong.png", image, leak, ground_truth=truth, airway_mip=True))
    fp = MIP_COLOURS["false positive"]
    assert count_colour(right[mip_row, panels], fp, shaded=True) == 0
    assert count_colour(wrong[mip_row, panels], fp, shaded=True) > 100
    assert count_colour(wrong[mip_row, panels], MIP_COLOURS["true positive"], shaded=True) > 100
    assert count_colour(wrong[mip_row, panels], MIP_COLOURS["missed"], shaded=True) == 0


@pytest.mark.parametrize("change,message", [
    (dict(prediction=np.zeros((20, 30, 29), np.uint8)), r"prediction of shape \(20, 30, 29\) does not match"),
    (dict(ground_truth=np.zeros((30, 30, 20), np.uint8)), r"ground_truth of shape \(30, 30, 20\)"),
    (dict(uncertainty=np.zeros((20, 30), np.float32)), r"uncertainty of shape \(20, 30\)"),
    (dict(uncertainty=np.full((20, 30, 30), 1.5, np.float32)), r"uncertainty spans \[1.5, 1.5\]"),
    (dict(prediction=np.zeros((20, 30, 30), np.float32)), r"prediction of dtype float32"),
    (dict(prediction=np.full((20, 30, 30), -1, np.int16)), r"prediction holds the label -1"),
    (dict(image=np.zeros((30, 30), np.float32)), r"image of shape \(30, 30\)"),
    (dict(spacing=(1.0, 0.0, 1.0)), r"spacing=\(1.0, 0.0, 1.0\)"),
    (dict(spacing=(1.0, 1.0)), r"spacing=\(1.0, 1.0\)"),
])
def test_bad_input_names_the_argument(tmp_path, change, message):
    arguments = dict(image=scan(), prediction=np.zeros((20, 30, 30), np.uint8), uncertainty=None,
                     ground_truth=None, spacing=(1.0, 1.0, 1.0))
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        write_preview(tmp_path / "bad.png", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_pixel_aspect_from_spacing():
    assert pixel_aspect((2.5, 0.7, 0.7), "coronal") == pytest.approx(2.5 / 0.7)
    assert pixel_aspect((2.5, 0.7, 0.7), "axial") == pytest.approx(1.0)
    assert pixel_aspect((1.0, 0.5, 0.25), "axial") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="view='sagittal'"):
        pixel_aspect((1, 1, 1), "sagittal")


def _panel_boxes(png: np.ndarray, rows: slice) -> list[tuple[int, int]]:
    """(height, width) in pixels of the five slice panels (their black frames), left to right."""
    dark = np.all(png[rows, :, :3] < 0.05, axis=-1)
    labelled, _ = ndimage.label(dark)
    boxes = [b for b in ndimage.find_objects(labelled) if b is not None]
    boxes = sorted(boxes, key=lambda b: (b[0].stop - b[0].start) * (b[1].stop - b[1].start))[-5:]
    return [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in sorted(boxes, key=lambda b: b[1].start)]


def test_coronal_panel_follows_the_spacing(tmp_path):
    shape = (12, 20, 30)  # (z, y, x); a black volume: each panel is one dark rectangle with its frame
    image = np.zeros(shape, np.float32)
    rows = slice(HEADER_PX, HEADER_PX + ROW_HEIGHT_PX["slices"])
    for sz in (1.0, 2.0):
        png = imread(write_preview(tmp_path / f"{sz}.png", image, np.zeros(shape, np.uint8), spacing=(sz, 1.0, 1.0)))
        boxes = _panel_boxes(png, rows)
        axial, coronal = boxes[0], boxes[3]
        assert axial[0] / axial[1] == pytest.approx(20 / 30, abs=0.03)
        assert coronal[0] / coronal[1] == pytest.approx(12 * sz / 30, abs=0.03)


def test_foreground_slices_by_hand():
    foreground = np.zeros((10, 6, 6), bool)
    foreground[3, :2, :2] = True  # 4 voxels at z = 3
    foreground[7, 4:, 4:] = True  # 4 voxels at z = 7
    assert foreground_slices(foreground, 0, (0.15, 0.5, 0.85)) == [3, 3, 7]
    assert foreground_slices(foreground, 1, (0.5, 0.9)) == [1, 5]
    assert foreground_slices(np.zeros((10, 6, 6), bool), 0, (0.2, 0.8)) == [5, 5]


def test_body_box_ignores_noise_and_keeps_the_foreground():
    volume = np.zeros((20, 30, 40), np.float32)
    volume[5:15, 10:20, 8:30] = 1.0  # the body
    volume[0, 0, 0] = volume[19, 29, 39] = 1.0  # single noisy voxels in the air
    foreground = np.zeros(volume.shape, bool)
    foreground[10, 12, 35] = True  # a prediction outside the body still shows
    assert body_box(volume, 0.5, foreground) == (slice(3, 17), slice(8, 22), slice(6, 38))
    assert body_box(np.zeros((4, 5, 6)), 0.5, np.zeros((4, 5, 6), bool)) == (slice(0, 4), slice(0, 5), slice(0, 6))
