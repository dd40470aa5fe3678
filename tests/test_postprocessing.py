"""Postprocessing chosen on cross-validation (issue 27): on cases built for it, the rule that helps is kept and the
rules that hurt are not; the metrics script writes the decision beside the folds."""
import json

import numpy as np
import pytest

from light_training.config import apply_overrides
from light_training.evaluation.choose_postprocessing import candidate_rules, candidates_dice, decide_postprocessing
from light_training.postprocessing import Postprocessing, apply_postprocessing, read_postprocessing
from light_training.io import Geometry, write_volume
from light_training.stages.evaluate import evaluate

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (13, 14, 15))
REGIONS = {"organ": [1], "lesion": [2]}


def case(spurious_organ: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: an organ cube (label 1) and two separate lesions (label 2, both real). Prediction: the same,
    plus (``spurious_organ``) a false organ blob far away, which keeping the largest organ component removes.
    Keeping the largest lesion, or the largest foreground component (the organ), removes a real lesion."""
    truth = np.zeros(GEOMETRY.shape, np.uint8)
    truth[1:7, 1:7, 1:7] = 1  # 216 voxels
    truth[10:12, 10:12, 2:4] = 2  # 8 voxels
    truth[10:12, 2:4, 11:13] = 2  # 8 voxels, apart from the other lesion and from the organ
    prediction = truth.copy()
    if spurious_organ:
        prediction[9:12, 10:13, 10:13] = 1  # 27 voxels of false organ
    return prediction, truth


def test_largest_component_rules_by_hand():
    prediction, truth = case(spurious_organ=True)
    organ_only = apply_postprocessing(prediction, Postprocessing(labels=(1,)))
    np.testing.assert_array_equal(organ_only, truth)  # the false blob removed, the lesions kept
    foreground = apply_postprocessing(prediction, Postprocessing(foreground=True))
    assert (foreground == 2).sum() == 0 and (foreground == 1).sum() == 216  # the organ is the largest component
    assert apply_postprocessing(prediction, None) is prediction
    row = candidates_dice(prediction, truth, (1, 1, 1), candidate_rules([1, 2]), REGIONS)
    assert row["none|organ"] == pytest.approx(2 * 216 / (243 + 216)) and row["none|lesion"] == 1.0
    assert row["label_1|organ"] == 1.0 and row["label_2|lesion"] == pytest.approx(2 * 8 / (8 + 16))
    assert row["foreground|lesion"] == 0.0  # empty prediction of a present lesion


def test_a_rule_that_helps_is_kept_and_those_that_hurt_are_not(tmp_path, repo_root):
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"name": "Toy", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                   "labels": {"background": 0, "organ": 1, "lesion": 2}}))
    pred_dir, gt_dir, logdir = tmp_path / "held_out", tmp_path / "labels", tmp_path / "logs"
    for name, spurious in (("toy_1", True), ("toy_2", False), ("toy_3", True)):
        prediction, truth = case(spurious)
        write_volume(prediction, GEOMETRY, pred_dir / f"{name}.nii.gz")
        write_volume(truth, GEOMETRY, gt_dir / f"{name}.nii.gz")
    args = [f"--dataset={dataset}", f"--pred_dir={pred_dir}", f"--gt_dir={gt_dir}", f"--logdir={logdir}",
            f"--output_dir={tmp_path / 'metrics'}", "--determine_postprocessing=True", "--num_processes=0"]
    script = "your_dataset/4_compute_metrics.py"
    evaluate(apply_overrides({"__file__": str(repo_root / script)}, args), script)
    rules = read_postprocessing(logdir)
    assert rules.rules() == {"foreground": False, "labels": [1]}
    numbers = rules.decision
    organ = 2 * 216 / (243 + 216)  # Dice of the organ with the false blob
    assert numbers["baseline"]["mean"] == pytest.approx((2 / 3 * organ + 1 / 3 + 1) / 2)
    assert numbers["foreground"]["kept"] is False and numbers["labels"]["2"]["kept"] is False
    assert numbers["labels"]["1"]["mean"] == pytest.approx(1.0) and numbers["chosen"]["mean"] == pytest.approx(1.0)
    assert sorted(p.name for p in (logdir / "crossval").iterdir()) == ["held_out.csv", "held_out_summary.json"]

    (pred_dir / "toy_1_record.json").write_text(json.dumps({"postprocessing": {"foreground": False, "labels": [1]}}))
    with pytest.raises(ValueError, match="postprocessed already .*--postprocessing=False"):
        evaluate(apply_overrides({"__file__": str(repo_root / script)}, args), script)


def test_decision_on_known_numbers():
    """Two cases' Dice given directly: the foreground rule raises the mean (kept); label 1 on top of it lowers it."""
    rows = [{"none|a": 0.5, "foreground|a": 0.7, "foreground+label_1|a": 0.6, "label_1|a": 0.9},
            {"none|a": 0.5, "foreground|a": 0.7, "foreground+label_1|a": 0.7, "label_1|a": 0.9}]
    rules, numbers = decide_postprocessing(rows, [1], ["a"])
    assert rules.rules() == {"foreground": True, "labels": []}
    assert numbers["labels"]["1"]["compared_with"] == pytest.approx(0.7) and numbers["labels"]["1"]["kept"] is False
