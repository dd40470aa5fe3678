"""The metrics stage: score a folder of predictions with the metric set of the dataset's description."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from light_training.datasets import DatasetDescription, load_dataset
from light_training.evaluation.metric_sets import metric_for
from light_training.evaluation.choose_postprocessing import determine_postprocessing
from light_training.evaluation.scoring import format_table, format_unscored, nifti_cases, pair_cases
from light_training.evaluation.uncertainty import UNCERTAINTY_COLUMNS, evaluate_folder_with_uncertainty
from light_training.inference.model_package import CROSSVAL_FOLDER
from light_training.inference.resume import postprocessed_cases
from light_training.io import atomic_path, read_json
from light_training.postprocessing import write_postprocessing
from light_training.preprocessing.raw_cases import find_label_files
from light_training.config import settings_from
from light_training.stages import write_config

__all__ = ["EvaluateStageSettings", "evaluate"]


@dataclass(frozen=True)
class EvaluateStageSettings:
    """The metrics script's constants (their comments say what each does)."""
    dataset: str
    pred: str
    pred_dir: str | None
    gt_dir: str | None
    raw_dir: str
    results_dir: str
    output_dir: str
    missing_predictions: str
    strict: bool
    determine_postprocessing: bool
    logdir: str | None
    num_processes: int

def evaluate(config: dict[str, Any], script: str) -> Any:
    """Score ``<results_dir>/<pred>/`` (or ``pred_dir``) against the ground truths of ``raw_dir`` (or ``gt_dir``).

    Writes ``<output_dir>/<pred>.csv``, ``<pred>_summary.json`` and ``<pred>_config.json``; prints one
    table per region and the cases that could not be scored with the reason. With ``determine_postprocessing``
    (held-out predictions of a training run), chooses the postprocessing and writes it beside the run's folds.
    """
    c = settings_from(EvaluateStageSettings, config)
    description = load_dataset(c.dataset)
    if c.pred_dir is None:
        pred_dir, name = Path(c.results_dir) / str(c.pred), str(c.pred)
    else:
        pred_dir = Path(str(c.pred_dir))
        name = pred_dir.resolve().name
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: no such folder of predictions (run the prediction script first, or give "
                         f"--pred_dir)")
    if c.gt_dir is not None:
        gt_source, ground_truths = Path(str(c.gt_dir)), nifti_cases(str(c.gt_dir))
    else:
        gt_source = Path(c.raw_dir)
        ground_truths = find_label_files(gt_source, description)
    if not ground_truths:
        raise ValueError(f"{gt_source}: no ground truth found (give --raw_dir or --gt_dir)")
    case_metric, columns, groups = metric_for(description)
    # with uncertainty maps beside the predictions, also how well they rank wrong voxels
    result = evaluate_folder_with_uncertainty(nifti_cases(pred_dir), ground_truths, case_metric, columns,
                                              c.output_dir, name, missing_predictions=c.missing_predictions,
                                              num_processes=c.num_processes, strict=c.strict)
    has_uncertainty = UNCERTAINTY_COLUMNS[0] in result.columns
    write_config(config, script, c.output_dir, stem=name)  # <pred>_config.json beside <pred>.csv
    print(f"\n{description.name} metrics ({description.metrics}) of {pred_dir} against {gt_source} "
          f"({len(result.rows)} cases scored)")
    for group in groups + ([list(UNCERTAINTY_COLUMNS)] if has_uncertainty else []):
        print()
        print(format_table(result.rows, group, result.summary))
    if result.unscored:
        print(f"\nnot scored: {len(result.unscored)} case(s)\n{format_unscored(result.unscored)}")
    print(f"wrote {result.csv_path} and {result.summary_path}")
    if c.determine_postprocessing:
        _determine(c, description, pred_dir, ground_truths, result)
    return result


def _training_run(logdir: str | None, pred_dir: Path) -> Path:
    """Where postprocessing.json goes: ``logdir``, else the run the predictions' own constants name."""
    if logdir:
        return Path(logdir)
    for path in sorted(pred_dir.glob("*predict*_config.json")):
        config = read_json(path)
        if config.get("logdir") and not config.get("model") and not config.get("checkpoint"):
            return Path(config["logdir"])
    raise ValueError(f"{pred_dir}: no prediction constants name the training run (its folds' held-out predictions "
                     f"are scored here); give --logdir")


def _determine(c: EvaluateStageSettings, description: DatasetDescription, pred_dir: Path,
               ground_truths: dict[str, Path], result: Any) -> None:
    """Choose the postprocessing on these held-out predictions; write ``<logdir>/postprocessing.json`` and the
    tables to ``<logdir>/crossval/``."""
    logdir = _training_run(c.logdir, pred_dir)
    predictions = nifti_cases(pred_dir)
    done = postprocessed_cases(pred_dir, list(predictions))
    if done:
        raise ValueError(f"{pred_dir}: {len(done)} prediction(s) were postprocessed already (e.g. {done[0]}); "
                         f"predict the held-out folds again with --postprocessing=False to choose it")
    pairs, _ = pair_cases(predictions, ground_truths, "skip")
    rules = determine_postprocessing(pairs, description.label_values[1:], description.evaluation_regions(),
                                     c.num_processes)
    path = write_postprocessing(rules, logdir)
    for table in (result.csv_path, result.summary_path):  # the cross-validation metrics, exported with the model
        with atomic_path(Path(logdir) / CROSSVAL_FOLDER / table.name) as tmp:
            shutil.copyfile(table, tmp)
    d = rules.decision
    print(f"\npostprocessing ({d['criterion']}): mean Dice {d['baseline']['mean']:.4f} without, "
          f"{d['foreground']['mean']:.4f} with the largest foreground component only"
          f" ({'kept' if rules.foreground else 'not kept'})")
    for value, numbers in d["labels"].items():
        print(f"  label {value}: largest component only {numbers['mean']:.4f} vs {numbers['compared_with']:.4f} "
              f"({'kept' if numbers['kept'] else 'not kept'})")
    print(f"chosen: {rules.rules()}, mean Dice {d['chosen']['mean']:.4f}; wrote {path} (prediction applies it) and "
          f"the tables to {Path(logdir) / CROSSVAL_FOLDER}")
