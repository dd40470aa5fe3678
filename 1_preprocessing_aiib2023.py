"""Preprocess AIIB2023 (chest CT, airway): plan the dataset, then crop, normalise and resample every case.

Reads <raw_dir>/img/<case>.nii.gz (CT in HU) and <raw_dir>/gt/<case>.nii.gz (1 = airway); writes the plan
<output_dir>/../plans.json, then <output_dir>/<case>_image.npy, <case>_label.npy and <case>.json.
Cases already done with the same plan are skipped; run it again after an interruption.

Examples:
    python 1_preprocessing_aiib2023.py
    python 1_preprocessing_aiib2023.py --num_processes=2 --overwrite=True    # on CPU
    python 1_preprocessing_aiib2023.py --target_spacing=[] --skip_bad_cases=True   # median spacing; go past bad cases
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.preprocessing.raw_cases import find_raw_cases  # noqa: E402
from light_training.preprocessing.planning import plans_path, prepare_plans  # noqa: E402
from light_training.preprocessing.preprocess import preprocess_dataset  # noqa: E402

raw_dir = "./data/raw_data/AIIB23_Train_T1"  # img/<case>.nii.gz and gt/<case>.nii.gz
output_dir = "./data/fullres/train"  # preprocessed cases; the plan goes to its parent folder (plans.json)
target_spacing = [0.5, 0.70410156, 0.70410156]  # (z, y, x) mm, the original's; [] or None: the median spacing
num_processes = 8  # worker processes (the original used 16; each needs a few GB for a full CT); 0 or 1: none
overwrite = False  # True: plan again and redo every case; False: skip cases already done with this plan
skip_bad_cases = False  # True: leave out unreadable or invalid cases and list them at the end; False: stop
config = apply_overrides(globals())

try:
    raw_cases = find_raw_cases(raw_dir, "aiib2023")
    if not raw_cases:
        raise ValueError(f"{raw_dir}: no case found (expected img/<case>.nii.gz and gt/<case>.nii.gz)")
    plans = prepare_plans(plans_path(output_dir), raw_cases, "aiib2023", target_spacing, num_processes,
                          overwrite, skip_bad_cases)
    print(f"plan: {plans_path(output_dir)} (target spacing {plans['target_spacing']}, {plans['num_cases']} cases)")
    summary = preprocess_dataset(raw_cases, plans, output_dir, num_processes, overwrite, skip_bad_cases)
except ValueError as err:
    raise SystemExit(f"1_preprocessing_aiib2023.py: {err}") from None
save_config(config, Path(output_dir) / "1_preprocessing_aiib2023_config.json")
print(summary.report())
