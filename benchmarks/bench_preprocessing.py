"""Seconds per case of preprocessing (planning, processing, the inverse) at realistic sizes.

Generates synthetic cases (light_training.synthetic) into a temporary folder: a chest CT of
256 x 256 x 200 voxels (resampled to AIIB2023's target spacing) and a BraTS2023 case of 240 x 240 x 155
(4 sequences, already at 1 mm), runs the planning and the processing as the numbered scripts do, maps
the label back with restore_to_original as prediction does, and prints a table.

Examples:
    python benchmarks/bench_preprocessing.py
    python benchmarks/bench_preprocessing.py --num_cases=2 --num_processes=2
    python benchmarks/bench_preprocessing.py --shape_ct=[100,128,128] --datasets=['aiib2023']   # quick look
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from light_training.config import apply_overrides  # noqa: E402
from light_training.io import read_label  # noqa: E402
from light_training.preprocessing.raw_cases import find_raw_cases  # noqa: E402
from light_training.preprocessing.preprocess import load_case, preprocess_dataset, restore_to_original  # noqa: E402
from light_training.planning.dataset_plan import prepare_plans  # noqa: E402
from light_training.plans import plans_path  # noqa: E402
from light_training.synthetic.generate import generate_aiib2023, generate_brats2023  # noqa: E402

datasets = ["aiib2023", "brats2023"]  # which datasets to time
shape_ct = [200, 256, 256]  # (z, y, x) of the synthetic CT
shape_mri = [155, 240, 240]  # (z, y, x) of the synthetic BraTS case
num_cases = 1  # cases per dataset (the table shows the mean per case)
num_processes = 1  # worker processes (1: in this process, the time of one case)
workdir = ""  # where to generate; "": a temporary folder, removed at the end
config = apply_overrides(globals())

SETUP = {"aiib2023": (generate_aiib2023, shape_ct, "AIIB23_Train_T1", [0.5, 0.70410156, 0.70410156]),
         "brats2023": (generate_brats2023, shape_mri, "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", [1, 1, 1])}
unknown = [d for d in datasets if d not in SETUP]
if unknown:
    raise SystemExit(f"bench_preprocessing.py: unknown dataset(s) {unknown}; choose from {list(SETUP)}")

rows = []
with tempfile.TemporaryDirectory(dir=workdir or None) as tmp:
    for dataset in datasets:
        generate, shape, raw_name, target_spacing = SETUP[dataset]
        root = Path(tmp) / dataset
        print(f"generating {num_cases} synthetic {dataset} case(s) of {tuple(shape)} ...", flush=True)
        generate(root / "raw_data", num_cases=num_cases, seed=0, shape=tuple(shape))
        raw_cases = find_raw_cases(root / "raw_data" / raw_name, dataset)
        out = root / "fullres" / "train"
        start = time.perf_counter()
        plans = prepare_plans(plans_path(out), raw_cases, dataset, target_spacing, num_processes)
        planning = (time.perf_counter() - start) / len(raw_cases)
        start = time.perf_counter()
        summary = preprocess_dataset(raw_cases, plans, out, num_processes)
        processing = (time.perf_counter() - start) / len(raw_cases)
        start = time.perf_counter()
        for raw in raw_cases:
            _, seg, properties = load_case(out, raw.case)
            restored = restore_to_original(seg, properties, is_label=True)
        restoring = (time.perf_counter() - start) / len(raw_cases)
        original, geometry = read_label(raw_cases[-1].label_file)
        agree = (restored == original).mean()
        case = plans["cases"][raw_cases[-1].case]
        rows.append([dataset, "x".join(map(str, geometry.shape)),
                     "x".join(map(str, properties["shape_after_resample"])),
                     " ".join(f"{s:.3g}" for s in case["spacing"]), f"{planning:.2f}", f"{processing:.2f}",
                     f"{restoring:.2f}", f"{agree:.4f}"])

header = ["dataset", "shape z,y,x", "preprocessed", "spacing mm", "planning s/case", "processing s/case",
          "restore label s/case", "restored == original"]
widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
print("\n| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in rows:
    print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
print(f"({num_processes} process(es), {num_cases} case(s) per dataset; processing = read + crop + normalise + "
      f"resample + save)")
