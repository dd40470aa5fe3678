"""Score predictions of AIIB2023 (chest CT, airway) with the metrics its description names.

Reads <results_dir>/<pred>/<case>.nii.gz (or <pred_dir>/<case>.nii.gz) and the ground truths of raw_dir (or
<gt_dir>/<case>.nii.gz); writes <output_dir>/<pred>.csv (one row per case), <pred>_summary.json (mean, std,
median per column, and the cases that could not be scored, with the reason) and <pred>_config.json. With
<case>_uncertainty.nii.gz beside the predictions, also how well the uncertainty ranks wrong voxels.

Examples:
    python 4_compute_metrics_aiib2023.py --pred=diffunet
    python 4_compute_metrics_aiib2023.py --pred=diffunet --determine_postprocessing=True   # held-out folds: choose the postprocessing
    python 4_compute_metrics_aiib2023.py --pred_dir=./my_predictions --gt_dir=./my_labels --num_processes=2   # on CPU
    python 4_compute_metrics_aiib2023.py --pred=diffunet --missing_predictions=empty --strict=True
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
from light_training.stages import run  # noqa: E402
from light_training.stages.evaluate import evaluate  # noqa: E402

dataset = "aiib2023"  # which metrics, labels and regions (the description's)
pred = "diffunet"  # predictions in <results_dir>/<pred>/; the tables are named <pred>
pred_dir = None  # a folder of <case>.nii.gz predictions instead (the tables take the folder's name)
gt_dir = None  # a folder of <case>.nii.gz ground truths; None: the labels of raw_dir
raw_dir = "./data/raw_data/AIIB23_Train_T1"  # the raw dataset, where the ground truth is by default
results_dir = "./prediction_results"  # where <pred>/ is looked for
output_dir = "./prediction_results/result_metrics"  # <pred>.csv, <pred>_summary.json, <pred>_config.json
# ground-truth cases without a prediction: "skip" (listed, not scored: the default, as only the held-out
# fold is predicted), "empty" (scored as empty predictions), "error" (stop)
missing_predictions = "skip"
strict = False  # True: any case that cannot be scored is an error; False: score the others and list it
# True (on the held-out predictions of a training run's folds, predicted with --postprocessing=False): choose the
# postprocessing (largest connected component of the foreground / of each label, kept where it raises the mean
# Dice) and write postprocessing.json and these tables beside the run's folds
determine_postprocessing = False
logdir = None  # the training run, for determine_postprocessing; None: the one the predictions' constants name
num_processes = 4  # worker processes (each holds one case: a few GB for a full CT); 0 or 1: none

run(evaluate, globals())
