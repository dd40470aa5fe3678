"""Rename BraTS2023 files as the original release does: BraTS-GLI-xxxxx-000-t1n.nii.gz -> t1n.nii.gz.

Optional: preprocessing accepts both namings. Running it twice is harmless (renamed files are left
alone); a case folder holding both names of one file is an error naming the folder.

Examples:
    python brats2023/1_rename_mri_data_brats2023.py
    python brats2023/1_rename_mri_data_brats2023.py --data_dir=./data/demo/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from light_training.config import apply_overrides, save_config  # noqa: E402

data_dir = "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"  # one folder per case
parts = ["t1n", "t1c", "t2w", "t2f", "seg"]  # the files of a case
config = apply_overrides(globals())

root = Path(data_dir)
if not root.is_dir():
    raise SystemExit(f"{data_dir}: no such folder (expected one folder per BraTS case)")
case_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
plan = []  # every clash is found before anything is renamed
for case_dir in case_dirs:
    for part in parts:
        long_name, short_name = case_dir / f"{case_dir.name}-{part}.nii.gz", case_dir / f"{part}.nii.gz"
        if long_name.exists() and short_name.exists():
            raise SystemExit(f"{case_dir}: holds both {long_name.name} and {short_name.name}; remove one")
        if long_name.exists():
            plan.append((long_name, short_name))
for long_name, short_name in plan:
    long_name.rename(short_name)
save_config(config, root / "1_rename_mri_data_brats2023_config.json")
print(f"{len(plan)} file(s) renamed in {len(case_dirs)} case folder(s) of {data_dir}")
