"""Preprocess AIIB2023 (chest CT, airway): plan the dataset, then crop, normalise and resample every case.

Reads <raw_dir> (img/<case>.nii.gz and gt/<case>.nii.gz); writes the plan <output_dir>/../plans.json, then
<output_dir>/<case>_image.npy, <case>_label.npy and <case>.json. Cases already done with the same plan are
skipped; run it again after an interruption.

Examples:
    python 1_preprocessing_aiib2023.py
    python 1_preprocessing_aiib2023.py --num_processes=2 --overwrite=True    # on CPU
    python 1_preprocessing_aiib2023.py --target_spacing=[] --skip_bad_cases=True   # median spacing; go past bad cases
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
from light_training.stages import run  # noqa: E402
from light_training.stages.preprocess import preprocess  # noqa: E402

dataset = "aiib2023"  # a shipped description (aiib2023, brats2023) or a dataset.json
raw_dir = "./data/raw_data/AIIB23_Train_T1"  # the raw cases, laid out as the description's raw_layout says
output_dir = "./data/fullres/train"  # preprocessed cases; the plan goes to its parent folder (plans.json)
target_spacing = None  # (z, y, x) mm; None: the description's (or the median spacing without one); []: the median spacing
gpu_memory_target_gb = 20.0  # GiB a training step may take: the planned patch, strides, kernels and batch fit it (a 24 GB card, with headroom)
num_processes = 8  # worker processes (each needs a few GB for a full CT); 0 or 1: none
overwrite = False  # True: plan again and redo every case; False: skip cases already done with this plan
skip_bad_cases = False  # True: leave out unreadable or invalid cases and list them at the end; False: stop

run(preprocess, globals())
