"""The whole pipeline on synthetic data, on the CPU, in a few minutes.

Generates a small synthetic AIIB2023 set (chest CT, airway) and a small BraTS2023 set (4 MRI
sequences, glioma), then runs every numbered script of both chains, exactly as a user would,
with a CPU configuration (tiny preset, small patches, a few epochs), and prints both metric tables.
Everything goes under ./data/demo, ./logs/demo and ./prediction_results/demo.

Examples:
    python demo.py
    python demo.py "--datasets=['aiib2023']" --max_epoch=4
    python demo.py --num_cases=6 --max_epoch=1 --num_iterations_per_epoch=2   # a smoke test
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from light_training.config import apply_overrides, save_config  # noqa: E402
from light_training.io import read_json  # noqa: E402
from light_training.inference.prediction import cpu_has_bf16  # noqa: E402
from light_training.synthetic.generate import generate_aiib2023, generate_brats2023  # noqa: E402

datasets = ["aiib2023", "brats2023"]  # which chains to run
num_cases = 10  # synthetic cases per dataset (a fifth is held out for prediction and metrics)
shape_aiib2023 = None  # (z, y, x) of the synthetic CTs; None: the generator's small default
shape_brats2023 = None  # (z, y, x) of the synthetic MRIs; None: the generator's small default
model_preset = "tiny"  # "tiny" for the CPU, "paper" for the real thing
patch_size = [32, 48, 48]  # training and sliding-window patch (z, y, x)
max_epoch = 16  # training epochs per dataset
num_iterations_per_epoch = 50  # training steps per epoch
val_every = 3  # validate (pseudo Dice, best.pt) every this many epochs
batch_size = 2
num_workers = 1  # augmentation worker processes
num_val_patches = 10  # validation patches for the pseudo Dice
cpu_bf16 = None  # bf16 autocast in training (2x faster with AVX512-BF16/AMX); None: where the CPU has it
mirror_axes = []  # test-time mirroring axes; [] keeps the demo fast
torch_compile = False  # compiling the tiny model for two small cases costs more than it saves
workdir = "./data/demo"  # raw and preprocessed data
logdir = "./logs/demo"  # training logs and checkpoints (one folder per dataset)
resultdir = "./prediction_results/demo"  # predictions and metric tables
seed = 0
config = apply_overrides(globals())

CHAINS = {
    "aiib2023": {"scripts": ["1_preprocessing_aiib2023.py", "2_train_diffunet_aiib2023.py",
                             "3_predict_aiib2023.py", "4_compute_metrics_aiib2023.py"],
                 "raw": "AIIB23_Train_T1", "generate": generate_aiib2023, "shape": shape_aiib2023,
                 "headline": ["IoU", "DLR", "DBR"]},
    "brats2023": {"scripts": ["brats2023/1_rename_mri_data_brats2023.py", "brats2023/2_preprocessing_brats2023.py",
                              "brats2023/3_train_diffunet_brats2023.py", "brats2023/4_predict_brats2023.py",
                              "brats2023/5_compute_metrics_brats2023.py"],
                  "raw": "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", "generate": generate_brats2023,
                  "shape": shape_brats2023, "headline": ["WT_Dice", "TC_Dice", "ET_Dice"]},
}
unknown = [d for d in datasets if d not in CHAINS]
if unknown:
    raise SystemExit(f"demo.py: unknown dataset(s) {unknown}; choose from {list(CHAINS)}")


def run(script: str, **overrides) -> None:
    """Run one numbered script from the repository root, as a user would."""
    args = [f"--{k}={v}" for k, v in overrides.items()]
    print(f"\n$ python {script} {' '.join(args)}", flush=True)
    start = time.time()
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"demo.py: {script} failed (exit {result.returncode}); see its output above")
    print(f"[{script} took {time.time() - start:.0f} s]", flush=True)


summaries = {}
for dataset in datasets:
    chain = CHAINS[dataset]
    raw_root = Path(workdir) / dataset / "raw_data"
    raw_dir = raw_root / chain["raw"]
    data_dir = Path(workdir) / dataset / "fullres" / "train"
    run_logdir = Path(logdir) / dataset
    save_dir = Path(resultdir) / dataset / "diffunet"
    metrics_dir = Path(resultdir) / dataset / "result_metrics"
    print(f"\n=== {dataset}: {num_cases} synthetic cases in {raw_dir} ===", flush=True)
    chain["generate"](raw_root, num_cases=num_cases, seed=seed, shape=chain["shape"])
    scripts = list(chain["scripts"])
    if dataset == "brats2023":
        run(scripts.pop(0), data_dir=raw_dir)
    preprocess, train, predict, metrics = scripts
    run(preprocess, raw_dir=raw_dir, output_dir=data_dir, overwrite=True)
    run(train, data_dir=data_dir, logdir=run_logdir, device="cpu", model_preset=model_preset,
        patch_size=patch_size, max_epoch=max_epoch, num_iterations_per_epoch=num_iterations_per_epoch,
        batch_size=batch_size, num_workers=num_workers, val_every=val_every, seed=seed,
        num_val_patches=num_val_patches, cpu_bf16=cpu_has_bf16() if cpu_bf16 is None else cpu_bf16)
    run(predict, data_dir=data_dir, logdir=run_logdir, save_dir=save_dir, device="cpu",
        mirror_axes=mirror_axes, torch_compile=torch_compile)
    run(metrics, pred_dir=save_dir, raw_dir=raw_dir, output_dir=metrics_dir)
    summaries[dataset] = read_json(metrics_dir / "diffunet_summary.json")

save_config(config, Path(resultdir) / "demo_config.json")
print("\n=== held-out results of the demo (synthetic data, tiny model, CPU) ===")
for dataset, summary in summaries.items():
    values = ", ".join(f"{k} {summary[k]['mean']:.3f}" for k in CHAINS[dataset]["headline"] if k in summary)
    print(f"{dataset}: {values}")
