"""Score AIIB2023 airway predictions with the challenge's metrics: IoU, DLR, DBR, precision, leakages.

Reads the predictions ./prediction_results/<pred>/<case>.nii.gz (or <pred_dir>/<case>.nii.gz; other files
such as <case>_uncertainty.nii.gz are ignored) and the ground truths <raw_dir>/gt/<case>.nii.gz (or
<gt_dir>/<case>.nii.gz). Writes <output_dir>/<pred>.csv (one row per case), <pred>_summary.json (mean, std,
median per column) and <pred>_config.json, and prints the table. <pred> is the name of pred_dir's folder
when pred_dir is given. Definitions, and what an empty prediction scores: light_training/metrics_aiib.py.

Examples:
    python 4_compute_metrics_aiib2023.py --pred=diffunet
    python 4_compute_metrics_aiib2023.py --pred_dir=./my_predictions --gt_dir=./my_labels --num_processes=2   # on CPU
    python 4_compute_metrics_aiib2023.py --pred=diffunet --missing_predictions=empty   # unpredicted cases score 0
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.evaluation.scoring import case_listing, evaluate_folder, format_table, nifti_cases  # noqa: E402
from light_training.evaluation.metrics_aiib import AIIB_COLUMNS, aiib_case_metrics  # noqa: E402

pred = "diffunet"  # predictions in ./prediction_results/<pred>/; the tables are named <pred>
pred_dir = None  # a folder of <case>.nii.gz predictions instead (the tables take the folder's name)
gt_dir = None  # a folder of <case>.nii.gz ground truths; None: <raw_dir>/gt/<case>.nii.gz
raw_dir = "./data/raw_data/AIIB23_Train_T1"  # the raw dataset (img/ and gt/), where the ground truth is by default
output_dir = "./prediction_results/result_metrics"  # <pred>.csv, <pred>_summary.json, <pred>_config.json
# ground-truth cases without a prediction: "skip" (listed, not scored: the default, as only the held-out
# fold is predicted), "empty" (scored as empty predictions: 0), "error" (stop)
missing_predictions = "skip"
num_processes = 4  # worker processes (each holds one case: a few GB for a full CT); 0 or 1: none
config = apply_overrides(globals())

SCRIPT = Path(__file__).name
if pred_dir is None:
    pred_dir, name = Path("./prediction_results") / str(pred), str(pred)
else:
    pred_dir = Path(str(pred_dir))
    name = pred_dir.resolve().name
gt_dir = Path(str(gt_dir)) if gt_dir is not None else Path(raw_dir) / "gt"
if not pred_dir.is_dir():
    raise SystemExit(f"{SCRIPT}: {pred_dir}: no such folder of predictions "
                     f"(run 3_predict_aiib2023.py first, or give --pred_dir)")
if not gt_dir.is_dir():
    raise SystemExit(f"{SCRIPT}: {gt_dir}: no such folder of ground truths (give --raw_dir or --gt_dir)")

try:
    result = evaluate_folder(nifti_cases(pred_dir), nifti_cases(gt_dir), aiib_case_metrics, AIIB_COLUMNS,
                             output_dir, name, missing_predictions, num_processes)
except ValueError as err:
    raise SystemExit(f"{SCRIPT}: {err}") from None
save_config(config, Path(output_dir) / f"{name}_config.json")

print(f"\nAIIB2023 metrics of {pred_dir} against {gt_dir} ({len(result.rows)} cases)")
print(format_table(result.rows, AIIB_COLUMNS, result.summary))
if result.unscored:
    print(f"not scored, no prediction: {len(result.unscored)} case(s) ({case_listing(result.unscored)})")
if result.scored_as_empty:
    print(f"scored as empty predictions: {len(result.scored_as_empty)} case(s) "
          f"({case_listing(result.scored_as_empty)})")
print(f"wrote {result.csv_path} and {result.summary_path}")
