"""Dataset descriptions: the shipped ones, a user's own, and bad ones named by file and field."""
import json

import pytest

from light_training.datasets import load_dataset, parse_description
from light_training.preprocessing.raw_cases import find_raw_cases
from light_training.synthetic.generate import EXAMPLE_FOLDER, example_description, generate_example

GOOD = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2, "ab": [1, 2]},
        "numTraining": 3, "file_ending": ".nii.gz"}


def test_shipped_descriptions():
    aiib, brats = load_dataset("aiib2023"), load_dataset("brats2023")
    assert aiib.channel_names == ("CT",) and aiib.normalization == ("CT",) and aiib.metrics == "aiib2023"
    assert aiib.target_spacing == (0.5, 0.70410156, 0.70410156)
    assert brats.channel_names == ("t1n", "t1c", "t2w", "t2f") and brats.normalization == ("ZScore",) * 4
    assert brats.label_values == [0, 1, 2, 3] and brats.label_names == ["background", "NCR", "ED", "ET"]
    assert brats.evaluation_regions() == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def test_nnunet_defaults_and_regions():
    d = parse_description(GOOD, "x/dataset.json")
    assert d.raw_layout["images"] == ("imagesTr/{case}_{channel_index}{ext}",)
    assert d.normalization == ("ZScore", "ZScore") and d.target_spacing is None and d.metrics == "dice_hd95"
    assert d.evaluation_regions() == {"a": [1], "b": [2], "ab": [1, 2]}
    assert d.num_classes == 3 and d.name == "x"


@pytest.mark.parametrize("change, field, words", [
    ({"labels": {"background": 0, "a": 1, "r": [1, 5]}}, "labels", "region 'r'"),
    ({"labels": {"background": 0, "a": 2}}, "labels", "0, 1, ..., K-1"),
    ({"channel_names": {"1": "T2"}}, "channel_names", "keys 0..C-1"),
    ({"file_ending": "nii"}, "file_ending", "'.nii.gz'"),
    ({"metrics": "iou"}, "metrics", "dice_hd95"),
    ({"evaluate": ["c"]}, "evaluate", "'c'"),
    ({"raw_layout": {"images": ["img/{cas}{ext}"]}}, "raw_layout.images", "placeholders"),
    ({"target_spacing": [1, 0, 1]}, "target_spacing", "three positive"),
    ({"normalization": {"0": "CT"}}, "normalization", "per channel"),
    # nnU-Net v2's region-based training format, as its documentation writes it
    ({"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3},
      "regions_class_order": [1, 2, 3]}, "regions_class_order", "region-based training"),
])
def test_bad_descriptions_name_the_file_and_field(tmp_path, change, field, words):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ValueError) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and f"field {field!r}" in str(err.value) and words in str(err.value)


def test_missing_field_and_unknown_name(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({k: v for k, v in GOOD.items() if k != "labels"}))
    with pytest.raises(ValueError, match="field 'labels': missing"):
        load_dataset(tmp_path)  # a folder holding dataset.json
    with pytest.raises(ValueError, match="not a shipped description"):
        load_dataset("kits23")


def test_example_layout_is_found(tmp_path):
    cases = generate_example(tmp_path, num_cases=3, shape=(16, 24, 20), num_test=1)
    root = tmp_path / EXAMPLE_FOLDER
    description = load_dataset(root / "dataset.json")
    assert json.loads((root / "dataset.json").read_text()) == example_description(3)
    found = find_raw_cases(root, description)
    assert [c.case for c in found] == cases
    assert [p.name for p in found[0].image_files] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    for folder in (root, root / "imagesTs"):
        assert [c.case for c in find_raw_cases(folder, description, with_labels=False)] == ["test_000"]
