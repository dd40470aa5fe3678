"""Prediction of a folder of full-size scans: seconds per case in each step, wall time and peak memory,
serially and with the worker processes beside the network.

Generates one synthetic chest CT (``light_training.synthetic``, ``shape_ct``; its copies under ``num_cases``
names: the content does not change the time) and one BraTS-size case, saves an untrained tiny-preset
checkpoint for each plan, and runs the prediction script as a user would, once per ``workers`` setting
(num_processes_preprocessing, num_processes_export). Per case: "read + preprocess"
(in a worker or in the main process), "network" and "restore + write", from the cases' records; the wall
time of the whole script (start-up and model loading included) and the peak resident memory of the script
and its workers together (sampled from /proc every 0.1 s). The network is made cheap on purpose (a tiny
model, a large window, no mirroring, low overlap, one DDIM step) so that the CPU steps show; at the paper
preset on a GPU the network time per case is minutes and the CPU steps hide behind it when workers run.
For the same reason the plans' target spacing is ``spacing_factor_ct`` (``_mri``) times the dataset's: the
network sees 1/64 of a CT's voxels, while reading, resampling back onto the full grid and writing work on
the full-size scan (preprocessing resamples to the coarse grid, a little cheaper than to the real one).

Examples:
    python benchmarks/bench_prediction.py                   # 4 CTs of 400 x 512 x 512 + one BraTS case (~10 min)
    python benchmarks/bench_prediction.py --quick=True      # tiny volumes: proves the script runs (a test runs it)
    python benchmarks/bench_prediction.py --workers=[[0,0],[1,1]] --json=bench_prediction.json
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffunet import build_network  # noqa: E402
from light_training.checkpoint import save_checkpoint  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.io import read_json, write_json  # noqa: E402
from light_training.planning.dataset_plan import plan_dataset  # noqa: E402
from light_training.preprocessing.raw_cases import find_raw_cases  # noqa: E402
from light_training.stages import load_average  # noqa: E402
from light_training.synthetic.generate import AIIB_FOLDER, BRATS_FOLDER, generate_aiib2023, generate_brats2023  # noqa

shape_ct = [400, 512, 512]  # (z, y, x) of each synthetic CT
num_cases = 4  # CTs
shape_mri = [155, 240, 240]  # (z, y, x) of the BraTS-size case; [] for none
patch_size = [128, 128, 128]  # the tiny model's window (large: one window per case)
spacing_factor_ct = 4.0  # the network's grid: the dataset's target spacing times this (1: the real one)
spacing_factor_mri = 2.0
overlap = 0.1
steps = 1  # DDIM steps
workers = [[0, 0], [2, 1]]  # (num_processes_preprocessing, num_processes_export) per run
quick = False  # True: tiny volumes and windows, to check that the benchmark runs
device = "cpu"
json = None  # also write the rows to this JSON file
config = apply_overrides(globals())
if quick:
    shape_ct, num_cases, shape_mri, patch_size, workers = [40, 48, 48], 2, [], [32, 32, 32], [[1, 1]]
REPO = Path(__file__).resolve().parent.parent
STEPS = ("read + preprocess", "network", "restore + write")


def tiny_checkpoint(raw_dir: Path, dataset: str, path: Path, spacing_factor: float) -> None:
    """An untrained tiny model for the plan of ``raw_dir`` (target spacing times ``spacing_factor``), in
    the checkpoint format the scripts read."""
    plans = plan_dataset(find_raw_cases(raw_dir, dataset), dataset)
    plans["target_spacing"] = [s * spacing_factor for s in plans["target_spacing"]]
    torch.manual_seed(0)
    model = build_network("diffunet", len(plans["channel_names"]), len(plans["labels"]), preset="tiny")
    save_checkpoint({"model_class": type(model).__name__, "model_config": dict(model.config),
                     "model": model.state_dict(), "plans": plans, "config": {"patch_size": patch_size, "fold": 0}},
                    path)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_prediction(script: str, input_dir: Path, checkpoint: Path, save_dir: Path, pre: int, export: int) -> dict:
    """Run a prediction script; its wall seconds, peak memory of its process tree and the cases' records."""
    args = [sys.executable, script, f"--input_dir={input_dir}", f"--checkpoint={checkpoint}", f"--save_dir={save_dir}",
            f"--device={device}", "--mirror_axes=[]", f"--overlap={overlap}", f"--steps={steps}",
            "--torch_compile=False", f"--num_processes_preprocessing={pre}", f"--num_processes_export={export}"]
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(process.pid))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"bench_prediction.py: {script} failed:\n{err[-3000:]}")
    records = [read_json(p) for p in sorted(save_dir.glob("*_record.json"))]
    return {"wall_s": wall, "peak_rss_gib": peak[0] / 2**30, "records": records}


rows = []
load_start = load_average()
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    datasets = [("aiib2023", "3_predict_aiib2023.py", num_cases, shape_ct)]
    datasets += [("brats2023", "brats2023/4_predict_brats2023.py", 1, shape_mri)] if shape_mri else []
    for dataset, script, n, shape in datasets:
        print(f"generating a synthetic {dataset} case of {tuple(shape)} ...", flush=True)
        if dataset == "aiib2023":
            generate_aiib2023(tmp / dataset, num_cases=1, shape=tuple(shape))
            raw, scans = tmp / dataset / AIIB_FOLDER, tmp / "scans"
            for i in range(n):
                (scans / "img").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(raw / "img" / "AIIB23_1.nii.gz", scans / "img" / f"AIIB23_{i + 1}.nii.gz")
        else:
            generate_brats2023(tmp / dataset, num_cases=n, shape=tuple(shape))
            raw = scans = tmp / dataset / BRATS_FOLDER
        tiny_checkpoint(raw, dataset, tmp / f"{dataset}.pt",
                        spacing_factor_ct if dataset == "aiib2023" else spacing_factor_mri)
        for pre, export in workers:
            print(f"{script}: {pre} preprocessing + {export} export process(es) ...", flush=True)
            result = run_prediction(script, scans, tmp / f"{dataset}.pt", tmp / f"out_{dataset}_{pre}_{export}",
                                    pre, export)
            mean = {s: sum(r["seconds"][s] for r in result["records"]) / len(result["records"]) for s in STEPS}
            rows.append({"dataset": dataset, "cases": n, "shape": "x".join(map(str, shape)),
                         "workers": f"{pre} + {export}", **{f"{s} s/case": round(v, 2) for s, v in mean.items()},
                         "wall s": round(result["wall_s"], 1), "wall s/case": round(result["wall_s"] / n, 1),
                         "peak RSS GiB": round(result["peak_rss_gib"], 2)})

header = list(rows[0])
print("\n| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|")
for row in rows:
    print("| " + " | ".join(str(row[h]) for h in header) + " |")
print(f"(tiny model, window {'x'.join(map(str, patch_size))}, overlap {overlap}, {steps} DDIM step, no mirroring, "
      f"target spacing x {spacing_factor_ct} (CT) / x {spacing_factor_mri} (MRI), "
      f"no torch.compile, on {device}; workers = preprocessing + export processes; wall = the whole script, start-up "
      f"included; peak RSS = the script and its workers)\nmachine: {os.cpu_count()} cores, load average at start "
      f"{load_start}, at end {load_average()}")
if json:
    write_json({"rows": rows, "settings": config}, json)
