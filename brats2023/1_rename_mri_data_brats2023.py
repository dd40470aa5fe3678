"""Rename BraTS2023 files as the original release does: <case>/BraTS-GLI-xxxxx-000-t1n.nii.gz -> <case>/t1n.nii.gz.

The same for t1c, t2w, t2f and seg. Optional: preprocessing reads both namings. Running it twice is
harmless (files already renamed are left alone). A case folder that holds both names of one file
is an error naming the folder, found before anything is renamed.

Examples:
    python brats2023/1_rename_mri_data_brats2023.py
    python brats2023/1_rename_mri_data_brats2023.py --data_dir=./data/other/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from light_training.config import apply_overrides, save_config  # noqa: E402

data_dir = "./data/raw_data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"  # one folder per case
config = apply_overrides(globals())

PARTS = ("t1n", "t1c", "t2w", "t2f", "seg")  # the files of a case (seg is absent from validation data)

root = Path(data_dir)
if not root.is_dir():
    raise SystemExit(f"1_rename_mri_data_brats2023.py: {data_dir}: no such folder (expected one folder per BraTS case)")
case_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
if not case_dirs:
    raise SystemExit(f"1_rename_mri_data_brats2023.py: {data_dir}: no case folder found")

renames, already, missing, clashes = [], 0, [], []
for case_dir in case_dirs:
    for part in PARTS:
        long_name, short_name = case_dir / f"{case_dir.name}-{part}.nii.gz", case_dir / f"{part}.nii.gz"
        if long_name.exists() and short_name.exists():
            clashes.append(f"{case_dir}: holds both {long_name.name} and {short_name.name}")
        elif long_name.exists():
            renames.append((long_name, short_name))
        elif short_name.exists():
            already += 1
        else:
            missing.append(f"{case_dir.name}: {part}")
if clashes:
    raise SystemExit("1_rename_mri_data_brats2023.py: nothing renamed; remove one file of each pair:\n  "
                     + "\n  ".join(clashes))

for long_name, short_name in renames:
    long_name.rename(short_name)
save_config(config, root / "1_rename_mri_data_brats2023_config.json")
print(f"{len(case_dirs)} case folder(s) in {data_dir}: {len(renames)} file(s) renamed, "
      f"{already} already renamed, {len(missing)} missing")
if missing:
    print("missing: " + ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
