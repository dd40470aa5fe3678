"""Rename BraTS2023 files as the original release does: <case>/BraTS-GLI-xxxxx-000-t1n.nii.gz -> <case>/t1n.nii.gz.

The same for t1c, t2w, t2f and seg (the first and last naming of the description's raw layout). Optional:
preprocessing reads both namings. Running it twice is harmless. A case folder that holds both names of
one file is an error naming the folder, found before anything is renamed.

Examples:
    python brats2023/1_rename_mri_data_brats2023.py
    python brats2023/1_rename_mri_data_brats2023.py --data_dir=./data/other/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.stages import run  # noqa: E402
from light_training.stages.preprocess import rename  # noqa: E402

dataset = "brats2023"  # the description whose raw layout names the files
data_dir = "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"  # one folder per case

run(rename, globals())
