"""The whole pipeline on synthetic data, on the CPU in under ten minutes, or on a GPU at full size.

Generates a small synthetic AIIB2023 set (chest CT, airway) and a small BraTS2023 set (4 MRI
sequences, glioma), then runs every numbered script of both chains, exactly as a user would, with a
CPU configuration (tiny preset, small patches, a few epochs), and prints both metric tables, where the
preview pictures are, and the wall time. Everything goes under ./data/demo, ./logs/demo and
./prediction_results/demo.

What the settings trade: a short schedule (450 AIIB and 300 BraTS steps at twice the scripts' learning rate, on
32x32x32 patches, two thirds of them centred on foreground) for a run within 10 minutes on a quiet 2-core CPU, with
or without bf16 units, at the cost of accuracy (AIIB IoU about 0.71); torch threads by the load at the start (both
cores on an idle machine, one beside a busy process, where a second thread would stall the step), augmentation
in-process. It prints the CPU (model, vector units, bf16 or not) beside its wall time: timings differ 2-3x
between CPUs.

On a GPU (``--device=cuda:0``, or ``make demo ARGS="--device=cuda:0"``) the "gpu" preset replaces the settings
marked "preset": the paper's network, full-size cases (AIIB2023 160 x 200 x 200, BraTS2023 4 x 155 x 240 x 240,
cropped by preprocessing), 128^3 patches, compiled training and prediction, 12 loader processes (docs/gpu_training.md).

Examples (the last one a smoke test):
    python demo.py
    python demo.py --device=cuda:0                 # the "gpu" preset, aimed at 6 minutes on an H200
    python demo.py "--datasets=['aiib2023']" --max_epoch_aiib2023=4
    python demo.py --num_cases=6 --max_epoch_aiib2023=1 --max_epoch_brats2023=1 --num_iterations_per_epoch=2
"""
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from light_training.io import read_json  # noqa: E402
from light_training.machine import busy_cores, describe_cpu, threads_for_load  # noqa: E402
from light_training.stages import load_average, run, run_script, write_config  # noqa: E402

datasets = ["aiib2023", "brats2023"]  # which chains to run
device = "cpu"  # "cpu", or a GPU ("cuda:0"): training and prediction run there
preset = None  # the settings marked "preset" below: "cpu" or "gpu" (PRESETS); None: "gpu" on a CUDA device, else "cpu"
num_cases = None  # preset: synthetic cases per dataset (a fifth is held out for prediction and metrics)
shape_aiib2023 = None  # preset: (z, y, x) of the synthetic CTs; None in the "cpu" preset: the generator's small default
shape_brats2023 = None  # preset: (z, y, x) of the synthetic MRIs; None in the "cpu" preset: the generator's small default
model_preset = None  # preset: "tiny" for the CPU, "paper" for the real thing
patch_size = None  # preset: training and sliding-window patch (z, y, x)
max_epoch_aiib2023 = None  # preset: training epochs on AIIB2023 (thin airways: the slower one to learn)
max_epoch_brats2023 = None  # preset: training epochs on BraTS2023 (the whole tumour is learnt in a few hundred steps)
num_iterations_per_epoch = None  # preset: training steps per epoch
lr = None  # preset: initial SGD learning rate
val_every = 2  # validate (pseudo Dice, best.pt) every this many epochs (a few seconds each)
batch_size = 2
num_workers = None  # preset: augmentation worker processes; 0: in the training process
num_processes = None  # preset: processes generating and preprocessing the cases
num_val_patches = 8  # validation patches for the pseudo Dice (picks best.pt: fewer make a noisy choice)
oversample_foreground = 0.66  # share of training patches centred on foreground (the scripts' 0.33): airways sooner
precision = "auto"  # training and prediction: bf16 autocast where the CPU has bf16 units (2x faster), else fp32
num_threads = None  # torch threads; None: the cores other processes leave idle at the start (2 on an idle 2-core machine, 1 beside a busy process)
mirror_axes = []  # test-time mirroring axes; [] keeps the demo fast
overlap = 0.25  # sliding-window overlap (the scripts' 0.5 predicts 2.5x as many windows)
torch_compile = None  # preset: compile training and prediction
save_preview = True  # <case>_preview.png next to each prediction
workdir = "./data/demo"  # raw and preprocessed data
logdir = "./logs/demo"  # training logs and checkpoints (one folder per dataset)
resultdir = "./prediction_results/demo"  # predictions, previews and metric tables
seed = 0



def cpu_preset() -> dict[str, Any]:
    """A 2-core CPU in under ten minutes: a short schedule (450 AIIB and 300 BraTS steps at twice the scripts'
    learning rate, on 32x32x32 patches, half the voxels of 32x48x48: twice the steps) for the tiny network on
    small cases, at the cost of accuracy (AIIB IoU about 0.71); augmentation in the training process (beside a
    busy process faster than a worker); no compiling (it costs more than it saves for two small cases)."""
    return {"num_cases": 10, "shape_aiib2023": None, "shape_brats2023": None, "model_preset": "tiny",
            "patch_size": [32, 32, 32], "max_epoch_aiib2023": 9, "max_epoch_brats2023": 6,
            "num_iterations_per_epoch": 50, "lr": 2e-2, "num_workers": 0, "num_processes": 2,
            "torch_compile": False}


def gpu_preset() -> dict[str, Any]:
    """One large GPU (aimed at 6 minutes on an H200 with 16 cores; not yet timed there): the paper's network on
    full-size cases (AIIB2023 as the issue's H200 run, BraTS2023 at the challenge's 155 x 240 x 240, which
    preprocessing crops to the brain), 128^3 patches, 300 AIIB and 200 BraTS steps at the scripts' learning
    rate, compiled training and prediction, 12 loader processes (one delivers about a patch per second at
    128^3: docs/gpu_training.md), 6 cases per dataset (generating a full-size case takes 10-20 s)."""
    return {"num_cases": 6, "shape_aiib2023": [160, 200, 200], "shape_brats2023": [155, 240, 240],
            "model_preset": "paper", "patch_size": [128, 128, 128], "max_epoch_aiib2023": 6,
            "max_epoch_brats2023": 4, "num_iterations_per_epoch": 50, "lr": 1e-2, "num_workers": 12,
            "num_processes": 8, "torch_compile": True}


PRESETS = {"cpu": cpu_preset, "gpu": gpu_preset}


def resolve_settings(c: dict[str, Any]) -> dict[str, Any]:
    """The constants ``c`` with every None of a preset setting replaced by the preset's value (``preset``:
    None takes "gpu" for a CUDA device, else "cpu"); ``ValueError`` for an unknown preset."""
    name = c["preset"] or ("gpu" if str(c["device"]).startswith("cuda") else "cpu")
    if name not in PRESETS:
        raise ValueError(f"preset={c['preset']!r}: expected one of {list(PRESETS)} or None")
    values = PRESETS[name]()
    return {**c, "preset": name, **{k: v for k, v in values.items() if c.get(k) is None}}


CHAINS = {
    "aiib2023": {"scripts": ["1_preprocessing_aiib2023.py", "2_train_diffunet_aiib2023.py",
                             "3_predict_aiib2023.py", "4_compute_metrics_aiib2023.py"],
                 "generator": "generate_aiib2023", "folder": "AIIB_FOLDER", "shape": "shape_aiib2023",
                 "headline": ["IoU", "DLR", "DBR", "unc_AUROC"]},
    "brats2023": {"scripts": ["brats2023/1_rename_mri_data_brats2023.py", "brats2023/2_preprocessing_brats2023.py",
                              "brats2023/3_train_diffunet_brats2023.py", "brats2023/4_predict_brats2023.py",
                              "brats2023/5_compute_metrics_brats2023.py"],
                  "generator": "generate_brats2023", "folder": "BRATS_FOLDER", "shape": "shape_brats2023",
                  "headline": ["WT_Dice", "TC_Dice", "ET_Dice", "unc_AUROC"]},
}


def _script(script: str, **overrides: Any) -> None:
    """Run one numbered script from the repository root, as a user would."""
    run_script(script, overrides, ROOT)


def _machine() -> str:
    return f"{describe_cpu()}; load average {load_average()}"


def _training_time(checkpoint: Path, steps_per_epoch: int) -> str:
    """The trainer's per-epoch wall times (the history in its final checkpoint), as one line."""
    from light_training.checkpoint import load_checkpoint

    history = load_checkpoint(checkpoint)["history"]
    validated = {epoch for epoch, _ in history.get("val/pseudo_dice", [])}
    seconds = [s for _, s in history["time/epoch_s"]]
    plain = sorted(s for epoch, s in history["time/epoch_s"] if epoch not in validated)
    median = sorted(plain or seconds)[len(plain or seconds) // 2]
    return (f"{len(seconds)} epochs in {sum(seconds):.0f} s; median {median:.1f} s per epoch "
            f"{'without' if plain else 'with'} validation ({median / steps_per_epoch:.2f} s per step)")


def demo(c: dict[str, Any], script: str) -> None:
    from light_training.synthetic import generate

    c = resolve_settings(c)
    unknown = [d for d in c["datasets"] if d not in CHAINS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {list(CHAINS)}")
    busy = busy_cores()
    threads = c["num_threads"] or threads_for_load(os.cpu_count() or 1, busy)
    start = time.time()
    print(f"machine: {_machine()}; {busy:.1f} cores busy at the start: torch threads {threads}", flush=True)
    print(f"preset {c['preset']!r} on {c['device']}: {c['model_preset']} network, patch {c['patch_size']}, "
          f"{c['num_cases']} cases per dataset, compile {c['torch_compile']}, {c['num_workers']} loader processes",
          flush=True)
    summaries, previews, timings = {}, {}, {}
    for dataset in c["datasets"]:
        chain = CHAINS[dataset]
        raw_root = Path(c["workdir"]) / dataset / "raw_data"
        raw_dir = raw_root / getattr(generate, chain["folder"])
        data_dir = Path(c["workdir"]) / dataset / "fullres" / "train"
        run_logdir = Path(c["logdir"]) / dataset
        save_dir = Path(c["resultdir"]) / dataset / "diffunet"
        metrics_dir = Path(c["resultdir"]) / dataset / "result_metrics"
        print(f"\n=== {dataset}: {c['num_cases']} synthetic cases in {raw_dir} ===", flush=True)
        getattr(generate, chain["generator"])(raw_root, num_cases=c["num_cases"], seed=c["seed"],
                                              shape=c[chain["shape"]], processes=c["num_processes"])
        scripts = list(chain["scripts"])
        if len(scripts) == 5:
            _script(scripts.pop(0), data_dir=raw_dir)
        preprocess, train, predict, metrics = scripts
        _script(preprocess, raw_dir=raw_dir, output_dir=data_dir, overwrite=True, num_processes=c["num_processes"])
        _script(train, data_dir=data_dir, logdir=run_logdir, device=c["device"], model_preset=c["model_preset"],
                patch_size=c["patch_size"], max_epoch=c[f"max_epoch_{dataset}"],
                num_iterations_per_epoch=c["num_iterations_per_epoch"], batch_size=c["batch_size"], lr=c["lr"],
                num_workers=c["num_workers"], val_every=c["val_every"], seed=c["seed"],
                num_val_patches=c["num_val_patches"], oversample_foreground=c["oversample_foreground"],
                precision=c["precision"], num_threads=threads, torch_compile=c["torch_compile"])
        timings[dataset] = _training_time(run_logdir / "model" / "final.pt", c["num_iterations_per_epoch"])
        print(f"training {dataset}: {timings[dataset]}", flush=True)
        _script(predict, data_dir=data_dir, logdir=run_logdir, save_dir=save_dir, device=c["device"],
                mirror_axes=c["mirror_axes"], overlap=c["overlap"], torch_compile=c["torch_compile"],
                precision=c["precision"], save_uncertainty=True, save_preview=c["save_preview"], num_threads=threads,
                seed=c["seed"])
        _script(metrics, pred_dir=save_dir, raw_dir=raw_dir, output_dir=metrics_dir, num_processes=0)
        summaries[dataset] = read_json(metrics_dir / "diffunet_summary.json")
        previews[dataset] = sorted(save_dir.glob("*_preview.png"))
    write_config(c, script, c["resultdir"])
    print(f"\n=== held-out results of the demo (synthetic data, {c['model_preset']} model, {c['device']}) ===")
    for dataset, summary in summaries.items():
        values = ", ".join(f"{k} {summary[k]['mean']:.3f}" for k in CHAINS[dataset]["headline"]
                           if k in summary and summary[k]["mean"] is not None)
        print(f"{dataset}: {values}")
    for dataset, timing in timings.items():
        print(f"training {dataset}: {timing}")
    for dataset, files in previews.items():
        for path in files:
            print(f"preview: {path}")
    print(f"demo wall time: {time.time() - start:.0f} s ({(time.time() - start) / 60:.1f} min); machine now: "
          f"{_machine()}")


run(demo, globals())
