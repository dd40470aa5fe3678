"""Ablations of Diff-UNet through the numbered scripts: one seed, one budget, one table.

Trains each variant with the dataset's real training script (its own logdir under workdir), predicts the
held-out fold with the prediction script, scores it with the metrics script and prints one table: per
variant, the mean over the held-out cases of the dataset's metrics (AIIB2023: IoU, DLR, DBR, precision;
BraTS2023: WT/TC/ET Dice) and of the uncertainty AUROC (``unc_AUROC``), the training time and the
prediction time per case. Variants:

- ``diffunet``: the full model (MBA, MC-Diff, boundary target "boundary"), PURE step fusion;
- ``no_mba`` (``--mba=False``), ``no_mc_diff`` (``--mc_diff=False``), ``segmentation_boundary``
  (``--boundary_target=segmentation``, the release's): retrained with one option changed;
- ``unet`` (``--model_variant=unet``): the same U-Net fed only the image, DC+CE, one pass;
- ``fusion_mean``, ``fusion_last``: the full model's checkpoint, predicted with ``--fusion=mean`` /
  ``--fusion=last`` (no retraining; ``diffunet`` is trained for them if it is not in the list).

Every run is predicted from its final checkpoint (the same budget for all; the pseudo Dice of a short run
is too noisy to pick a "best"). Quick mode: synthetic data (light_training.synthetic), tiny preset,
32x32x32 patches (two thirds centred on foreground, as in the demo), 10 epochs x 50 steps, CPU, one torch thread
with augmentation in-process, overlap 0.25: all seven variants in 16.4 minutes on a 2-core machine (every variant
reaches IoU 0.65-0.75 on the held-out cases). It shows that the chain runs and what each
variant costs; synthetic data cannot rank methods. Full mode: the real raw data, the paper preset and
budget (1000 epochs x 250 steps, the training script's), a GPU.

Examples:
    python benchmarks/bench_ablations.py                                        # quick mode, AIIB2023, CPU
    python benchmarks/bench_ablations.py --dataset=brats2023 "--variants=['diffunet','unet']" --max_epoch=4
    python benchmarks/bench_ablations.py --quick=False --raw_dir=./data/raw_data/AIIB23_Train_T1 --json=ablations.json
"""
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from light_training.io import read_json, write_json  # noqa: E402
from light_training.stages import load_average, run, run_script, write_config  # noqa: E402

dataset = "aiib2023"  # "aiib2023" or "brats2023"
quick = True  # True: synthetic data, tiny preset, CPU; False: the real data in raw_dir, paper preset and budget
# which rows, in order (the list in the docstring)
variants = ["diffunet", "no_mba", "no_mc_diff", "segmentation_boundary", "unet", "fusion_mean", "fusion_last"]
max_epoch = None  # training epochs of every variant; None: the mode's (quick: 10, full: 1000)
num_iterations_per_epoch = None  # training steps per epoch; None: the mode's (quick: 50, full: 250)
seed = 0  # one seed for data generation, weights, patches and noise of every variant
workdir = "./data/ablations"  # data, runs, predictions and metric tables, in <workdir>/<dataset>/
json = None  # also write the table to this JSON file
device = None  # None: "cpu" in quick mode, "cuda:0" in full mode
raw_dir = None  # full mode: the raw dataset; None: the scripts' default (./data/raw_data/<folder>)
num_cases = 10  # quick mode: synthetic cases (a fifth is held out and scored)
shape = None  # quick mode: (z, y, x) of the synthetic volumes; None: the generator's small default
patch_size = None  # training and sliding-window patch (z, y, x); None: quick [32, 32, 32], full [128, 128, 128]
val_every = None  # validate every this many epochs; None: quick once at the end, full 2
num_val_patches = None  # validation patches for the pseudo Dice; None: quick 8, full 50
num_workers = None  # augmentation worker processes; None: quick 0 (in the training process), full 8
num_threads = None  # torch threads; None: quick one fewer than the cores, full torch's default
checkpoint = "final"  # predicted checkpoint of every run: "final" (the same budget for all), "best" (pseudo Dice)

_VARIANTS = {  # variant: (the training run it predicts with, training overrides, prediction overrides)
    "diffunet": ("diffunet", {}, {}),
    "no_mba": ("no_mba", {"mba": False}, {}),
    "no_mc_diff": ("no_mc_diff", {"mc_diff": False}, {}),
    "segmentation_boundary": ("segmentation_boundary", {"boundary_target": "segmentation"}, {}),
    "unet": ("unet", {"model_variant": "unet"}, {}),
    "fusion_mean": ("diffunet", {}, {"fusion": "mean"}),
    "fusion_last": ("diffunet", {}, {"fusion": "last"}),
}
_MODES = {  # what None means in each mode, and the settings a user does not choose here
    "quick": {"max_epoch": 10, "num_iterations_per_epoch": 50, "device": "cpu", "patch_size": [32, 32, 32],
              "batch_size": 2, "val_every": None, "num_val_patches": 8, "num_workers": 0, "model_preset": "tiny",
              "oversample_foreground": 0.66, "mirror_axes": [], "overlap": 0.25, "torch_compile": False,
              "metric_processes": 0},
    "full": {"max_epoch": 1000, "num_iterations_per_epoch": 250, "device": "cuda:0", "patch_size": [128, 128, 128],
             "batch_size": 2, "val_every": 2, "num_val_patches": 50, "num_workers": 8, "model_preset": "paper",
             "oversample_foreground": 0.33, "mirror_axes": [0, 1, 2], "overlap": 0.5, "torch_compile": True,
             "metric_processes": 4},
}
_CHAINS = {  # the dataset's scripts, synthetic generator, raw folder and table columns
    "aiib2023": {"scripts": ("1_preprocessing_aiib2023.py", "2_train_diffunet_aiib2023.py",
                             "3_predict_aiib2023.py", "4_compute_metrics_aiib2023.py"),
                 "generator": "generate_aiib2023", "folder": "AIIB_FOLDER",
                 "columns": ["IoU", "DLR", "DBR", "precision"]},
    "brats2023": {"scripts": ("brats2023/2_preprocessing_brats2023.py", "brats2023/3_train_diffunet_brats2023.py",
                              "brats2023/4_predict_brats2023.py", "brats2023/5_compute_metrics_brats2023.py"),
                  "generator": "generate_brats2023", "folder": "BRATS_FOLDER",
                  "columns": ["WT_Dice", "TC_Dice", "ET_Dice"]},
}
_UNCERTAINTY_COLUMN = "unc_AUROC"
_NOTE_FULL = ("one seed and one fold: a difference within the spread over cases (the std in the metrics "
              "tables) is not evidence")
_NOTE = ("synthetic data cannot rank methods: it shows that every variant trains, predicts and is scored, "
        "and what each costs")


def _call(script: str, overrides: dict[str, Any]) -> float:
    """Run one numbered script from the repository root, as a user would; its wall time in seconds."""
    return run_script(script, overrides, ROOT)


def _settings(c: dict[str, Any]) -> dict[str, Any]:
    """The constants with None replaced by the mode's value, plus the mode's fixed settings."""
    unknown = [v for v in c["variants"] if v not in _VARIANTS]
    if c["dataset"] not in _CHAINS:
        raise ValueError(f"dataset={c['dataset']!r}: choose from {list(_CHAINS)}")
    if unknown or not c["variants"]:
        raise ValueError(f"variants={c['variants']!r}: expected a non-empty list from {list(_VARIANTS)}")
    mode = _MODES["quick" if c["quick"] else "full"]
    s = {**mode, **c}
    for name, value in mode.items():
        if s[name] is None:
            s[name] = value
    if c["checkpoint"] not in ("final", "best"):
        raise ValueError(f"checkpoint={c['checkpoint']!r}: expected \"final\" or \"best\"")
    if s["val_every"] is None:  # quick mode: one validation, after the last epoch (the pseudo and boundary Dice)
        s["val_every"] = s["max_epoch"]
    if s["num_threads"] is None and c["quick"]:
        s["num_threads"] = max(1, (os.cpu_count() or 2) - 1)
    return s


def _data(s: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """``(raw_dir, preprocessed data_dir)``: synthetic cases in quick mode, then the preprocessing script."""
    from light_training.synthetic import generate

    chain = _CHAINS[s["dataset"]]
    folder = getattr(generate, chain["folder"])
    if s["quick"]:
        raw = root / "raw_data" / folder
        print(f"=== {s['num_cases']} synthetic {s['dataset']} cases in {raw} ===", flush=True)
        getattr(generate, chain["generator"])(raw.parent, num_cases=s["num_cases"], seed=s["seed"], shape=s["shape"])
    else:
        raw = Path(s["raw_dir"] or Path("./data/raw_data") / folder).resolve()
        if not raw.is_dir():
            raise ValueError(f"raw_dir={str(raw)!r} is not a folder: full mode needs the real {s['dataset']} data "
                             f"(--raw_dir=PATH), or run quick mode (--quick=True) on synthetic data")
    data_dir = root / "fullres" / "train"
    _call(chain["scripts"][0], {"raw_dir": raw, "output_dir": data_dir, "overwrite": s["quick"],
                                "num_processes": 2 if s["quick"] else 8})
    return raw, data_dir


def _train(s: dict[str, Any], script: str, data_dir: Path, logdir: Path, options: dict[str, Any]) -> float:
    keys = ("max_epoch", "num_iterations_per_epoch", "batch_size", "patch_size", "val_every", "num_val_patches",
            "num_workers", "seed", "device", "model_preset", "oversample_foreground")
    overrides = {"data_dir": data_dir, "logdir": logdir, **{k: s[k] for k in keys}, **options}
    if s["num_threads"] is not None:
        overrides["num_threads"] = s["num_threads"]
    return _call(script, overrides)


def _predict(s: dict[str, Any], script: str, data_dir: Path, logdir: Path, save_dir: Path,
             options: dict[str, Any]) -> tuple[float, list[str]]:
    """Predict the held-out fold; ``(seconds per case, the cases)``, the script's start-up included."""
    overrides = {"data_dir": data_dir, "logdir": logdir, "checkpoint": logdir / "model" / f"{s['checkpoint']}.pt",
                 "save_dir": save_dir, "device": s["device"],
                 "mirror_axes": s["mirror_axes"], "overlap": s["overlap"], "torch_compile": s["torch_compile"],
                 "save_uncertainty": True,
                 "seed": s["seed"], **options}
    if s["num_threads"] is not None:
        overrides["num_threads"] = s["num_threads"]
    if save_dir.exists():  # a stale case of an earlier run would be scored again
        for old in save_dir.glob("*.nii.gz"):
            old.unlink()
    seconds = _call(script, overrides)
    cases = sorted(p.name[:-len(".nii.gz")] for p in save_dir.glob("*.nii.gz")
                   if not p.name.endswith("_uncertainty.nii.gz"))
    if not cases:
        raise ValueError(f"{script} wrote no prediction to {save_dir}")
    return seconds / len(cases), cases


def _row(variant: str, trained_as: str, summary: dict[str, Any], columns: list[str], train_s: float,
         predict_s: float, predicted: list[str]) -> dict[str, Any]:
    """One table row; ``cases``: the predicted cases that were scored (the training cases have no prediction)."""
    unscored = {case: why for case, why in summary.get("unscored", {}).items() if case in predicted}
    means = {k: summary[k]["mean"] if k in summary else None for k in columns}
    return {"variant": variant, "trained_as": trained_as, **means, "train_s": train_s,
            "predict_s_per_case": predict_s, "cases": len(predicted) - len(unscored), "unscored": unscored}


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as an aligned plain-text table: variant, metric means, training and prediction time."""
    def cell(value: Any, digits: int) -> str:
        if value is None or value != value:  # None, or NaN for a column no case could fill
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = ["variant", *columns, "train_s", "predict_s/case", "cases"]
    body = [[r["variant"], *(cell(r[k], 3) for k in columns),
             cell(r["train_s"], 0) if r["trained_as"] == r["variant"] else f"({r['trained_as']})",
             cell(r["predict_s_per_case"], 1), cell(r["cases"], 0)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [[h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(line, widths))]
             for line in [header, *body]]
    lines.insert(1, ["-" * w for w in widths])
    return "\n".join("  ".join(line).rstrip() for line in lines)


def bench(c: dict[str, Any], script: str) -> list[dict[str, Any]]:
    s = _settings(c)
    chain = _CHAINS[s["dataset"]]
    _, train_script, predict_script, metrics_script = chain["scripts"]
    load_start, start = load_average(), time.perf_counter()
    print(f"machine: {os.cpu_count()} cores, load average {load_start}; other processes share these cores", flush=True)
    root = Path(s["workdir"]).resolve() / s["dataset"]  # the scripts run from the repository root
    raw, data_dir = _data(s, root)
    train_seconds: dict[str, float] = {}
    for run_name in dict.fromkeys(_VARIANTS[v][0] for v in s["variants"]):  # each training run once, in order
        print(f"\n=== train {run_name} ===", flush=True)
        train_seconds[run_name] = _train(s, train_script, data_dir, root / "runs" / run_name, _VARIANTS[run_name][1])
    rows, summaries = [], {}
    for variant in s["variants"]:
        trained_as, _, options = _VARIANTS[variant]
        print(f"\n=== predict and score {variant} ===", flush=True)
        save_dir = root / "predictions" / variant
        predict_s, cases = _predict(s, predict_script, data_dir, root / "runs" / trained_as, save_dir, options)
        _call(metrics_script, {"pred_dir": save_dir, "raw_dir": raw, "output_dir": root / "metrics",
                               "num_processes": s["metric_processes"]})
        summaries[variant] = read_json(root / "metrics" / f"{variant}_summary.json")
        rows.append((variant, trained_as, predict_s, cases))
    with_uncertainty = any(_UNCERTAINTY_COLUMN in summary for summary in summaries.values())
    columns = chain["columns"] + ([_UNCERTAINTY_COLUMN] if with_uncertainty else [])
    table = [_row(v, t, summaries[v], columns, train_seconds[t], p, n) for v, t, p, n in rows]
    wall = time.perf_counter() - start
    where = (f"{s['device']}, {s['num_threads']} torch threads" if s["num_threads"] else s["device"])
    budget = (f"{s['max_epoch']} epochs x {s['num_iterations_per_epoch']} steps, batch {s['batch_size']}, patch "
              f"{'x'.join(map(str, s['patch_size']))}, {s['model_preset']} preset, seed {s['seed']}, {where}, "
              f"foreground patches {s['oversample_foreground']:.0%}, mirror axes {s['mirror_axes']}, overlap "
              f"{s['overlap']}, {s['checkpoint']}.pt predicted")
    data = f"{s['num_cases']} synthetic cases" if s["quick"] else f"{raw}"
    header = [f"=== ablations on {s['dataset']} ({data}; held-out fold; means over its cases) ===",
              f"machine: {os.cpu_count()} cores, load average at start {load_start}, at end {load_average()}",
              f"budget: {budget}; wall time {wall:.0f} s ({wall / 60:.1f} min)",
              "train_s: wall time of the training script (validation included); predict_s/case: wall time of the "
              "prediction script over the cases (start-up and model loading included)"]
    header.append(f"note: {_NOTE if s['quick'] else _NOTE_FULL}")
    text = "\n".join(header) + "\n" + format_table(table, columns)
    print("\n" + text, flush=True)
    for row in table:
        if row["unscored"]:
            print(f"{row['variant']}: predicted but not scored: {row['unscored']}")
    if s["json"]:
        write_json({"dataset": s["dataset"], "quick": s["quick"], "header": header, "columns": columns,
                    "rows": table, "wall_s": wall, "settings": s}, s["json"])
        print(f"table written to {s['json']}")
    write_config(c, script, root)
    return table


run(bench, globals())
