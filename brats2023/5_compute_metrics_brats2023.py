"""Score BraTS2023 predictions: Dice, HD95 and the BraTS 2023 lesion-wise Dice and HD95 of WT, TC and ET.

Reads the predictions ./prediction_results/<pred>/<case>.nii.gz (or <pred_dir>/<case>.nii.gz; other files
such as <case>_uncertainty.nii.gz are ignored) and the ground truths <raw_dir>/<case>/<case>-seg.nii.gz or
<raw_dir>/<case>/seg.nii.gz (after 1_rename_mri_data_brats2023.py), or <gt_dir>/<case>.nii.gz. Writes
<output_dir>/<pred>.csv (one row per case), <pred>_summary.json (mean, std, median per column) and
<pred>_config.json, and prints one table per region. <pred> is the name of pred_dir's folder when pred_dir is
given. Definitions: light_training/metrics_brats.py.

Examples:
    python brats2023/5_compute_metrics_brats2023.py --pred=diffunet
    python brats2023/5_compute_metrics_brats2023.py --pred_dir=./my_preds --gt_dir=./my_labels --num_processes=2
    python brats2023/5_compute_metrics_brats2023.py --pred=diffunet --missing_predictions=error
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.evaluation.scoring import case_listing, evaluate_folder, format_table, nifti_cases  # noqa: E402
from light_training.evaluation.metrics_brats import BRATS_COLUMNS, REGIONS, brats_case_metrics  # noqa: E402
from light_training.preprocessing.raw_cases import find_raw_cases  # noqa: E402

pred = "diffunet"  # predictions in ./prediction_results/<pred>/; the tables are named <pred>
pred_dir = None  # a folder of <case>.nii.gz predictions instead (the tables take the folder's name)
gt_dir = None  # a folder of <case>.nii.gz ground truths; None: the seg files of raw_dir's case folders
raw_dir = "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"  # one folder per case
output_dir = "./prediction_results/result_metrics"  # <pred>.csv, <pred>_summary.json, <pred>_config.json
# ground-truth cases without a prediction: "skip" (listed, not scored: the default, as only the held-out
# fold is predicted), "empty" (scored as empty predictions), "error" (stop)
missing_predictions = "skip"
num_processes = 4  # worker processes; 0 or 1: none
config = apply_overrides(globals())

SCRIPT = Path(__file__).name
if pred_dir is None:
    pred_dir, name = Path("./prediction_results") / str(pred), str(pred)
else:
    pred_dir = Path(str(pred_dir))
    name = pred_dir.resolve().name
if not pred_dir.is_dir():
    raise SystemExit(f"{SCRIPT}: {pred_dir}: no such folder of predictions "
                     f"(run brats2023/4_predict_brats2023.py first, or give --pred_dir)")

try:
    if gt_dir is not None:
        gt_source, ground_truths = Path(str(gt_dir)), nifti_cases(str(gt_dir))
    else:
        gt_source = Path(raw_dir)
        ground_truths = {raw.case: raw.label_file for raw in find_raw_cases(raw_dir, "brats2023")
                         if raw.label_file is not None and raw.label_file.is_file()}
    result = evaluate_folder(nifti_cases(pred_dir), ground_truths, brats_case_metrics, BRATS_COLUMNS,
                             output_dir, name, missing_predictions, num_processes)
except ValueError as err:
    raise SystemExit(f"{SCRIPT}: {err}") from None
save_config(config, Path(output_dir) / f"{name}_config.json")

print(f"\nBraTS2023 metrics of {pred_dir} against {gt_source} ({len(result.rows)} cases; HD95 in mm)")
for region in REGIONS:
    columns = [column for column in BRATS_COLUMNS if column.startswith(f"{region}_")]
    print(f"\n{region}")
    print(format_table(result.rows, columns, result.summary, headers=[c[len(region) + 1:] for c in columns]))
if result.unscored:
    print(f"\nnot scored, no prediction: {len(result.unscored)} case(s) ({case_listing(result.unscored)})")
if result.scored_as_empty:
    print(f"\nscored as empty predictions: {len(result.scored_as_empty)} case(s) "
          f"({case_listing(result.scored_as_empty)})")
print(f"wrote {result.csv_path} and {result.summary_path}")
