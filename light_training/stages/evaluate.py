"""The metrics stage: score a folder of predictions with the metric set of the dataset's description."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from light_training.datasets import load_dataset
from light_training.evaluation.metric_sets import metric_for
from light_training.preprocessing.raw_cases import find_label_files
from light_training.stages import write_config

__all__ = ["evaluate"]


def evaluate(config: dict[str, Any], script: str) -> Any:
    """Score ``<results_dir>/<pred>/`` (or ``pred_dir``) against the ground truths of ``raw_dir`` (or ``gt_dir``).

    Writes ``<output_dir>/<pred>.csv``, ``<pred>_summary.json`` and ``<pred>_config.json``; prints one
    table per region and the cases that could not be scored with the reason.
    """
    from light_training.evaluation.scoring import format_table, format_unscored, nifti_cases
    from light_training.evaluation.uncertainty import UNCERTAINTY_COLUMNS, evaluate_folder_with_uncertainty

    c = config
    description = load_dataset(c["dataset"])
    if c["pred_dir"] is None:
        pred_dir, name = Path(c["results_dir"]) / str(c["pred"]), str(c["pred"])
    else:
        pred_dir = Path(str(c["pred_dir"]))
        name = pred_dir.resolve().name
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: no such folder of predictions (run the prediction script first, or give "
                         f"--pred_dir)")
    if c["gt_dir"] is not None:
        gt_source, ground_truths = Path(str(c["gt_dir"])), nifti_cases(str(c["gt_dir"]))
    else:
        gt_source = Path(c["raw_dir"])
        ground_truths = find_label_files(gt_source, description)
    if not ground_truths:
        raise ValueError(f"{gt_source}: no ground truth found (give --raw_dir or --gt_dir)")
    case_metric, columns, groups = metric_for(description)
    # with uncertainty maps beside the predictions, also how well they rank wrong voxels
    result = evaluate_folder_with_uncertainty(nifti_cases(pred_dir), ground_truths, case_metric, columns,
                                              c["output_dir"], name, missing_predictions=c["missing_predictions"],
                                              num_processes=c["num_processes"], strict=c["strict"])
    has_uncertainty = UNCERTAINTY_COLUMNS[0] in result.columns
    write_config(c, script, c["output_dir"], stem=name)  # <pred>_config.json beside <pred>.csv
    print(f"\n{description.name} metrics ({description.metrics}) of {pred_dir} against {gt_source} "
          f"({len(result.rows)} cases scored)")
    for group in groups + ([list(UNCERTAINTY_COLUMNS)] if has_uncertainty else []):
        print()
        print(format_table(result.rows, group, result.summary))
    if result.unscored:
        print(f"\nnot scored: {len(result.unscored)} case(s)\n{format_unscored(result.unscored)}")
    print(f"wrote {result.csv_path} and {result.summary_path}")
    return result
