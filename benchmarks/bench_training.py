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
    python benchmarks/bench_training.py "--presets=['tiny']" --patch_cpu=[32,64,64] --batch_sizes=[1,2] --precision=fp32 --loader_batches=0   # batch 1's backward

At batch 1 on a CPU a second row times the step with PyTorch's own choice of backward kernel (the native,
single-threaded ``Slow3d`` where its heuristic says so; the forward stays oneDNN's): the state before
``diffunet.conv`` ran that backward through oneDNN at batch 2.
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
from diffunet.conv import pytorch_choice  # noqa: E402
from light_training.training.augmentation import make_training_stream  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.machine import describe_cpu  # noqa: E402
from light_training.compilation import compile_for_training  # noqa: E402
from light_training.training.step import TrainSettings  # noqa: E402
from light_training.training.trainer import Trainer  # noqa: E402

presets = ["tiny", "paper"]  # model presets to time
patch_cpu = [64, 64, 64]  # patch (z, y, x) on the CPU
patch_gpu = [128, 128, 128]  # patch on a GPU
batch_sizes = [2]  # patches per step, each timed; [1, 2] adds batch 1 (and its PyTorch-backward baseline)
precision = "auto"  # the trainer's: "auto" (bf16 on a CPU with bf16 units), "fp32", "bf16"
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

import contextlib  # noqa: E402

runs = [(p, c, b, choice) for p in presets for c in compile_modes for b in batch_sizes
        for choice in (["ours", "pytorch"] if b == 1 and device.type == "cpu" and not c else ["ours"])]
for preset, compiled, batch_size, choice in runs:
    torch.manual_seed(0)
    model = DiffUNet(in_channels, num_classes, preset=preset)
    model.check_patch_size(patch)
    if compiled:
        compile_for_training(model)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = Trainer(model, TrainSettings(max_epoch=1000, batch_size=batch_size, precision=precision), logdir, None, {}, device)
        label = torch.zeros(batch_size, *patch, dtype=torch.uint8)
        label[:, patch[0] // 4:-patch[0] // 4, patch[1] // 3:-patch[1] // 3, patch[2] // 3:-patch[2] // 3] = 1
        batch = {"image": torch.randn(batch_size, in_channels, *patch) + label[:, None], "label": label}
        with pytorch_choice(forward=False) if choice == "pytorch" else contextlib.nullcontext():
            start = time.perf_counter()
            for _ in range(max(warmup, 2 if compiled else 0)):  # compiled: the first steps compile (MC-Diff's batch too)
                trainer.train_step(batch, 0)
            first = time.perf_counter() - start
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                trainer.train_step(batch, 0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        seconds = min(times)  # the least disturbed step (a shared machine's other processes only add time)
    resolved = trainer.precision
    rows.append([f"train step{f' compiled (first steps {first:.0f} s)' if compiled else ''}"
                 f"{', PyTorch backward' if choice == 'pytorch' else ''}", preset,
                 f"{batch_size}x" + "x".join(map(str, patch)), f"{where}, {resolved}",
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
        batch_size = batch_sizes[-1]
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
