"""Preprocess BraTS2023 (glioma, MRI t1n, t1c, t2w, t2f): plan the dataset, then crop, normalise, resample every case.

Reads <raw_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz, or {t1n,...,seg}.nii.gz after
brats2023/1_rename_mri_data_brats2023.py (both namings work); writes the plan <output_dir>/../plans.json,
then <output_dir>/<case>_image.npy, <case>_label.npy and <case>.json. Labels: 1 NCR, 2 ED, 3 ET.
Cases already done with the same plan are skipped; run it again after an interruption.

Examples:
    python brats2023/2_preprocessing_brats2023.py
    python brats2023/2_preprocessing_brats2023.py --num_processes=2 --overwrite=True    # on CPU
    python brats2023/2_preprocessing_brats2023.py --output_dir=./data/fullres_brats2023/train   # beside AIIB2023
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.preprocessing.raw_cases import find_raw_cases  # noqa: E402
from light_training.preprocessing.planning import plans_path, prepare_plans  # noqa: E402
from light_training.preprocessing.preprocess import preprocess_dataset  # noqa: E402

raw_dir = "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"  # one folder per case
output_dir = "./data/fullres/train"  # preprocessed cases; the plan goes to its parent folder (plans.json)
target_spacing = [1, 1, 1]  # (z, y, x) mm, the original's; [] or None: the median spacing
num_processes = 8  # worker processes (the original used 16); 0 or 1: none
overwrite = False  # True: plan again and redo every case; False: skip cases already done with this plan
skip_bad_cases = False  # True: leave out unreadable or invalid cases and list them at the end; False: stop
config = apply_overrides(globals())

try:
    raw_cases = find_raw_cases(raw_dir, "brats2023")
    if not raw_cases:
        raise ValueError(f"{raw_dir}: no case found (expected one folder per case with "
                         f"<case>-{{t1n,t1c,t2w,t2f,seg}}.nii.gz or {{t1n,t1c,t2w,t2f,seg}}.nii.gz)")
    plans = prepare_plans(plans_path(output_dir), raw_cases, "brats2023", target_spacing, num_processes,
                          overwrite, skip_bad_cases)
    print(f"plan: {plans_path(output_dir)} (target spacing {plans['target_spacing']}, {plans['num_cases']} cases)")
    summary = preprocess_dataset(raw_cases, plans, output_dir, num_processes, overwrite, skip_bad_cases)
except ValueError as err:
    raise SystemExit(f"2_preprocessing_brats2023.py: {err}") from None
save_config(config, Path(output_dir) / "2_preprocessing_brats2023_config.json")
print(summary.report())
