"""Patches per second of the training loader (light_training.training.augmentation.make_training_stream:
batchgenerators' multi-process augmenter over memory-mapped preprocessed cases), per image channel count
and number of worker processes.

A GPU step of 2 x 128^3 patches in 0.1-0.3 s eats 7-20 patches/s: the loader must deliver that or the GPU
waits (the trainer logs the share of each epoch it waited, ``time/data_wait_share``). Writes
``num_cases`` preprocessed cases of ``case_shape`` voxels (noise with a foreground block; the augmentation's
cost does not depend on the content) into a temporary folder, starts the loader with the training
scripts' augmentation, lets every worker fill its queue once (``warmup_per_worker`` batches each,
untimed), then times ``batches_per_worker`` batches per worker: the rate at which the workers produce,
as a training run with a fast GPU sees it. Run it on the GPU host (its cores are what matter).

Examples:
    python benchmarks/bench_loader.py                          # 128^3, CT and MRI, 4/8/16 workers (a 16-core host)
    python benchmarks/bench_loader.py --num_workers=[8,12] "--channels=[4]"
    python benchmarks/bench_loader.py --patch_size=[48,48,48] --case_shape=[64,80,80] --num_workers=[0,1,2]   # CPU
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from light_training.config import apply_overrides  # noqa: E402
from light_training.io import write_json  # noqa: E402
from light_training.preprocessing.preprocess import save_case  # noqa: E402
from light_training.training.augmentation import make_training_stream  # noqa: E402

patch_size = [128, 128, 128]  # training patch (z, y, x)
channels = [1, 4]  # image channels: 1 (CT, AIIB2023), 4 (MRI, BraTS2023)
case_shape = [160, 200, 200]  # (z, y, x) of each preprocessed case (AIIB2023-sized; BraTS crops to ~140x170x140)
num_workers = [4, 8, 16]  # augmentation processes to try (0: in this process)
batch_size = 2
num_cases = 4  # cases the patches are drawn from
augmentation = True  # the training scripts' augmentation (False: cropping only)
warmup_per_worker = 5  # untimed batches per worker first (start-up; more than the 4 batches a worker's queue holds)
batches_per_worker = 8  # timed batches per worker (at least 6 in all)
json = None  # also write the rows to this JSON file
config = apply_overrides(globals())

rows = []
print(f"bench_loader: {os.cpu_count()} CPUs; patch {patch_size}, batch {batch_size}, cases of {case_shape}, "
      f"augmentation {'on' if augmentation else 'off'}")
print(f"{'channels':>8} {'workers':>8} {'batches':>8} {'s':>8} {'patches/s':>10}")
with tempfile.TemporaryDirectory() as tmp:
    for c in channels:
        folder = Path(tmp) / f"{c}ch"
        folder.mkdir()
        rng = np.random.default_rng(0)
        label = np.zeros(case_shape, dtype=np.uint8)
        label[tuple(slice(n // 3, 2 * n // 3) for n in case_shape)] = 1
        locations = np.argwhere(label == 1)[::997].tolist()
        cases = [f"case{i}" for i in range(num_cases)]
        for case in cases:
            image = rng.standard_normal((c, *case_shape), dtype=np.float32) + label
            save_case(folder, case, image, label, {"class_locations": {"1": locations}})
        for workers in num_workers:
            stream = make_training_stream(folder, cases, patch_size, batch_size, augmentation, workers, seed=0)
            try:
                for _ in range(warmup_per_worker * max(workers, 1)):
                    next(stream)
                count = max(batches_per_worker * max(workers, 1), 6)
                start = time.perf_counter()
                for _ in range(count):
                    next(stream)
                seconds = time.perf_counter() - start
            finally:
                stream.close()
            rate = count * batch_size / seconds
            rows.append({"channels": c, "workers": workers, "batches": count, "seconds": seconds,
                         "patches_per_s": rate})
            print(f"{c:>8} {workers:>8} {count:>8} {seconds:>8.2f} {rate:>10.2f}", flush=True)
if json:
    write_json({"cpus": os.cpu_count(), "config": config, "rows": rows}, json)
    print(f"written {json}")
