"""The best configuration on cross-validation (issue 27): three runs with known Dice and their pairs' ensembles
ranked correctly, and the winner's prediction command."""
import json

import numpy as np
import pytest

from light_training.config import apply_overrides
from light_training.evaluation.configurations import Configuration, rank_configurations
from light_training.io import Geometry, read_json, write_volume
from light_training.stages.best_configuration import find_best_configuration, predict_command

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (11, 12, 13))
SCRIPT = "tools/find_best_configuration.py"


def cube(depth: int) -> np.ndarray:
    """A 6 x 6 organ of ``depth`` slices from z = 2: the truth is depth 6; a smaller one lies inside it."""
    volume = np.zeros(GEOMETRY.shape, np.uint8)
    volume[2:2 + depth, 3:9, 3:9] = 1
    return volume


@pytest.fixture
def runs(tmp_path):
    """Held-out predictions of three runs: "good" (Dice 1), "mid" (depth 4: Dice 2*4/(4+6) = 0.8) and "bad"
    (depth 2: 0.5), on two cases, with one-hot probabilities; each with its prediction constants."""
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"name": "Toy", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                   "labels": {"background": 0, "organ": 1}}))
    results = tmp_path / "prediction_results"
    for name, depth in (("good", 6), ("mid", 4), ("bad", 2)):
        folder = results / name
        for case in ("toy_1", "toy_2"):
            write_volume(cube(6), GEOMETRY, tmp_path / "labels" / f"{case}.nii.gz")
            prediction = cube(depth)
            write_volume(prediction, GEOMETRY, folder / f"{case}.nii.gz")
            probabilities = np.stack([1 - prediction, prediction]).astype(np.float32)
            np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
        constants = {"dataset": str(dataset), "logdir": f"./logs/{name}", "folds": [0, 1], "checkpoint": None,
                     "model": None, "checkpoint_name": "best", "overlap": 0.5, "steps": 5 if name == "good" else None,
                     "fold": None, "save_probabilities": True, "postprocessing": False}
        (folder / "3_predict_config.json").write_text(json.dumps(constants))
    return tmp_path, dataset, results


def test_three_runs_and_their_ensembles_ranked_by_dice(runs, repo_root):
    tmp_path, dataset, results = runs
    args = [f"--dataset={dataset}", "--runs=[bad,good,mid]", f"--results_dir={results}",
            f"--gt_dir={tmp_path / 'labels'}", f"--output_dir={tmp_path / 'best'}", "--num_processes=0"]
    best = find_best_configuration(apply_overrides({"__file__": str(repo_root / SCRIPT)}, args), SCRIPT)
    assert best.name == "good"
    written = read_json(tmp_path / "best" / "best_configuration.json")
    # the ensemble of two one-hot predictions is their intersection (a 0.5/0.5 tie goes to the background):
    # good+mid predicts as mid, and at equal scores the single run ranks first (fewer models to run)
    assert [(r["name"], round(r["score"], 4)) for r in written["ranking"]] == [
        ("good", 1.0), ("mid", 0.8), ("good+mid", 0.8), ("bad", 0.5), ("bad+good", 0.5), ("bad+mid", 0.5)]
    assert written["headline"] == ["organ_Dice"] and written["cases"] == 2
    assert written["command"] == (f"python your_dataset/3_predict.py --logdir=./logs/good --folds=[0,1] "
                                  f"--dataset={dataset} --steps=5 --input_dir=./my_scans "
                                  f"--save_dir={results / 'good_test'}")
    assert (tmp_path / "best" / "ensembles" / "good+mid" / "toy_1.nii.gz").is_file()


def test_an_ensemble_command_lists_every_checkpoint(runs):
    _, _, results = runs
    command = predict_command([results / "mid", results / "bad"], "./scans", "./out")
    assert ("--checkpoint=[logs/mid/model/best.pt,logs/mid/fold_1/model/best.pt,logs/bad/model/best.pt,"
            "logs/bad/fold_1/model/best.pt]") in command


def test_ranking_puts_nan_last():
    ranked = rank_configurations([Configuration("a", ("a",), float("nan")), Configuration("b", ("b",), 0.1)])
    assert [c.name for c in ranked] == ["b", "a"]


def test_postprocessed_predictions_are_refused(runs, repo_root):
    """An ensemble averages the raw probabilities; a run whose label maps were postprocessed would be compared
    on other terms, so it is refused, naming the folder and what to do."""
    tmp_path, dataset, results = runs
    (results / "mid" / "toy_1_record.json").write_text(json.dumps({"postprocessing": {"foreground": True}}))
    args = [f"--dataset={dataset}", "--runs=[good,mid]", f"--results_dir={results}",
            f"--gt_dir={tmp_path / 'labels'}", f"--output_dir={tmp_path / 'best'}", "--num_processes=0"]
    with pytest.raises(ValueError, match=r"mid: 1 prediction\(s\) were postprocessed .*--postprocessing=False"):
        find_best_configuration(apply_overrides({"__file__": str(repo_root / SCRIPT)}, args), SCRIPT)
