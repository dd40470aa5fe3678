"""Training speed: optimisation steps per second per model preset, and patches per second of the loader.

Steps are the trainer's own (forward with the MC-Diff passes, loss, backward, clipping, SGD; AMP on CUDA)
on a fixed random batch, so they measure the network, not the loader. The loader reads patches from
memory-mapped cases written to a temporary folder in the preprocessed format (a CT-sized single-channel
case by default) and runs nnU-Net's augmentation, in this process ("per worker") and in ``num_workers``
processes ("total").

Examples:
    python benchmarks/bench_training.py                         # tiny and paper at 64^3 on the CPU, 128^3 on a GPU
    python benchmarks/bench_training.py --presets=['tiny'] --steps=5
    python benchmarks/bench_training.py --patch_cpu=[48,48,48] --num_workers=2 --case_shape=[96,128,128]   # quick
    python benchmarks/bench_training.py "--presets=['tiny']" --patch_cpu=[32,32,32] --compile_modes=[False,True] --loader_batches=0
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffunet import DiffUNet  # noqa: E402
from light_training.training.augmentation import make_training_stream  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.machine import describe_cpu  # noqa: E402
from light_training.runtime import compile_for_training  # noqa: E402
from light_training.training.trainer import Trainer, TrainSettings  # noqa: E402

presets = ["tiny", "paper"]  # model presets to time
patch_cpu = [64, 64, 64]  # patch (z, y, x) on the CPU
patch_gpu = [128, 128, 128]  # patch on a GPU
batch_size = 2
steps = 3  # timed optimisation steps per preset (after warmup)
warmup = 1  # untimed steps first
in_channels = 1  # image channels (AIIB2023: 1, BraTS2023: 4)
num_classes = 2
case_shape = [200, 256, 256]  # (z, y, x) of each benchmark case for the loader (a cropped, resampled chest CT)
num_cases = 2
loader_batches = 8  # timed batches per loader measurement
num_workers = 2  # worker processes for the "total" loader rate
compile_modes = [False]  # time the steps eager (False) and/or torch.compile'd (True: the training scripts' torch_compile)
device = "cuda:0"  # falls back to the CPU when CUDA is absent
config = apply_overrides(globals())

if device.startswith("cuda") and not torch.cuda.is_available():
    print("note: CUDA is not available; timing on the CPU")
    device = "cpu"
device = torch.device(device)
patch = patch_gpu if device.type == "cuda" else patch_cpu
where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
print(f"on {where if device.type == 'cuda' else describe_cpu()}; {torch.get_num_threads()} torch threads")
rows = []

for preset, compiled in [(p, c) for p in presets for c in compile_modes]:
    torch.manual_seed(0)
    model = DiffUNet(in_channels, num_classes, preset=preset)
    model.check_patch_size(patch)
    if compiled:
        compile_for_training(model)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = Trainer(model, TrainSettings(max_epoch=1000, batch_size=batch_size), logdir, {}, {}, device)
        label = torch.zeros(batch_size, *patch, dtype=torch.uint8)
        label[:, patch[0] // 4:-patch[0] // 4, patch[1] // 3:-patch[1] // 3, patch[2] // 3:-patch[2] // 3] = 1
        batch = {"image": torch.randn(batch_size, in_channels, *patch) + label[:, None], "label": label}
        start = time.perf_counter()
        for _ in range(max(warmup, 2 if compiled else 0)):  # compiled: the first steps compile (MC-Diff's batch too)
            trainer.train_step(batch, 0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    precision = trainer.precision
    rows.append([f"train step{f' compiled (first steps {first:.0f} s)' if compiled else ''}", preset,
                 "x".join(map(str, patch)), f"{where}, {precision}",
                 f"{1 / seconds:.3f} steps/s", f"{batch_size / seconds:.2f} patches/s"])
    print(rows[-1], flush=True)
    del model, trainer

with tempfile.TemporaryDirectory() as tmp:
    data_dir = Path(tmp) / "train"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(num_cases):
        label = np.zeros(case_shape, np.uint8)
        z, y, x = (s // 2 for s in case_shape)
        label[z - 20:z + 20, y - 5:y + 5, x - 40:x + 40] = 1
        np.save(data_dir / f"c{i}_image.npy", rng.normal(size=(in_channels, *case_shape)).astype(np.float32))
        np.save(data_dir / f"c{i}_label.npy", label)
        locations = np.argwhere(label)[:: max(1, int(label.sum()) // 10000)].tolist()
        (data_dir / f"c{i}.json").write_text(json.dumps({"case": f"c{i}", "class_locations": {"1": locations}}))
    cases = [f"c{i}" for i in range(num_cases)]
    for workers, augmentation in ((0, False), (0, True), (num_workers, True)) if loader_batches else ():
        with make_training_stream(data_dir, cases, patch, batch_size, augmentation, workers, seed=0) as stream:
            np.random.seed(0)
            next(stream)  # starts the workers
            start = time.perf_counter()
            for _ in range(loader_batches):
                next(stream)
            rate = loader_batches * batch_size / (time.perf_counter() - start)
        label = ("in this process (per worker)" if workers == 0 else f"{workers} workers (total)")
        rows.append(["loader", "augmented" if augmentation else "plain", "x".join(map(str, patch)),
                     f"{label}, {in_channels} ch, case {'x'.join(map(str, case_shape))}", "",
                     f"{rate:.2f} patches/s" + (f" ({rate / workers:.2f}/worker)" if workers else "")])
        print(rows[-1], flush=True)

header = ["what", "preset / mode", "patch", "where", "steps/s", "patches/s"]
widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
print()
for row in [header, ["-" * w for w in widths], *rows]:
    print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
