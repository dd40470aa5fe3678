"""Diff-UNet speed, measured side by side: fp32 eager baseline vs the project's fast settings.

Every row of the printed table is measured in this run: FLOPs of one sampling and one training step
(torch.utils.flop_counter), the device's matmul peak in fp32 and bf16, times of the fp32 eager
baseline and of the fast settings, their ratio and the fraction of the peak reached, the agreement
of the two predictions, mirrored copies batched or not, whole-volume prediction of a synthetic CT and
loader patches per second.

Examples:
    python benchmarks/bench_speed.py --quick=True                 # the 64^3 rows only (CPU: a few minutes)
    python benchmarks/bench_speed.py --json=./logs/bench_speed.json
    python benchmarks/bench_speed.py --device=cuda:0              # 128^3 windows on a GPU
    python benchmarks/bench_speed.py --device=cuda:0 --card_gib=24  # as on a 24 GB card: rows that do not fit are skipped

Rows whose estimated peak (light_training.memory, with cuDNN's benchmark workspace) does not fit the card
(``card_gib``, or the GPU's own memory) are skipped, with the estimate and the card's size as the reason.
The fp32 baseline's math (IEEE or TF32, from torch's fp32_precision switches) is printed beside it.
"""
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import flops_of, fp32_math, matmul_peak, sync, timed  # noqa: E402
from benchmarks.profiling import fp32_kernel_math, kernel_records  # noqa: E402
from diffunet import DiffUNet  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.io import write_json  # noqa: E402
from light_training.training.loss import diffunet_loss  # noqa: E402
from light_training.inference.prediction import InferenceSettings, predict_volume  # noqa: E402
from diffunet.conv import pytorch_choice  # noqa: E402
from light_training.machine import describe_cpu  # noqa: E402
from light_training.memory.estimator import (GIB, estimate_sampling_window, estimate_train_step,  # noqa: E402
                                             estimate_volume)
from light_training.memory.fit import fit_problem  # noqa: E402
from light_training.compilation import compile_for_inference  # noqa: E402
from light_training.runtime import autocast_context, configure_backends, cpu_has_bf16, resolve_precision  # noqa: E402

device = "auto"  # "auto": cuda:0 when present, else cpu
preset = "paper"  # the model measured for the window and training rows
window = None  # window edge; None: 64 on the CPU, 128 on a GPU
steps = 3  # DDIM steps of one sampling
train_batch_size = 2  # patches per training step
fast_precision = "auto"  # autocast of the fast settings: "auto" (bf16 where supported), "bf16", "fp16", "fp32"
fast_channels_last = False  # channels_last_3d memory format in the fast settings (measured slower on CPU with bf16)
fast_compile = True  # torch.compile (inductor, frozen weights) the sampling networks in the fast settings (~1 min once)
repeats = 3  # timed repetitions per row (the median is reported)
quick = False  # only the 64^3 (or 128^3) window and training rows
volume_shape = [200, 256, 256]  # (z, y, x) of the synthetic CT predicted whole
volume_preset = None  # model of the whole-volume rows; None: "paper" on a GPU, "tiny" on the CPU (paper: ~1 h)
volume_patch = None  # sliding-window patch of the whole-volume rows; None: the window
loader_workers = 2  # worker processes of the loader row
card_gib = None  # skip the rows whose estimated peak (light_training.memory) does not fit this many GiB; None: the GPU's own memory (no check on the CPU)
json = None  # also write every row to this JSON file
seed = 0
config = apply_overrides(globals())

dev = torch.device(("cuda:0" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
window = window or (128 if dev.type == "cuda" else 64)
torch.manual_seed(seed)
rows: list[tuple[str, str, str]] = []  # (row, value, unit)
results: dict = {"settings": dict(config, device=str(dev), window=window, torch=torch.__version__,
                                  threads=torch.get_num_threads(),
                                  cpu=describe_cpu() if dev.type == "cpu" else torch.cuda.get_device_name(dev))}


def backends(precision: str) -> None:
    """CUDA: cudnn.benchmark, and TF32 off for the fp32 rows (IEEE fp32 against the fp32 peak), on for the fast ones."""
    configure_backends(dev, resolve_precision(precision, dev))


def reset_peak() -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def add_peak(key: str, label: str) -> None:
    """CUDA: the peak allocation since :func:`reset_peak` (the CPU has no such counter)."""
    if dev.type == "cuda":
        add(key, label, torch.cuda.max_memory_allocated(dev) / 2 ** 30, "GiB", "{:.2f}")


def add(key: str, label: str, value: float, unit: str, fmt: str = "{:.3f}") -> None:
    results[key] = value
    rows.append((label, fmt.format(value), unit))


card = card_gib if card_gib is not None else (
    torch.cuda.get_device_properties(dev).total_memory / GIB if dev.type == "cuda" else None)


def too_big(estimate: Callable[[], object]) -> str | None:
    """Why a row cannot run on this card (its estimated peak, ``estimate()``'s, does not fit), or None;
    the estimate is only made when there is a card to check (``card_gib``, or the GPU's memory)."""
    return None if card is None else fit_problem(estimate().peak_bytes, card)


def skip(key: str, label: str, reason: str) -> None:
    results[key] = None
    rows.append((label, "skipped", reason))


def fast_model(model: torch.nn.Module, compile: bool = fast_compile) -> torch.nn.Module:
    if fast_channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if compile and not model.training:
        compile_for_inference(model)
    return model


def fast_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if fast_channels_last else x


# --------------------------------------------------------------------------- peaks
backends("fp32")  # IEEE fp32 for the fp32 peak and baseline (CUDA: TF32 off)
math = fp32_math(dev.type)  # what the switches say the fp32 baseline runs as (gpu_profile.py: which kernels ran)
results["fp32_math"] = math
rows.append(("fp32 baseline's math (conv / matmul)", f"{math['conv']} / {math['matmul']}",
             "(torch's fp32_precision switches)"))
fast_resolved = resolve_precision(fast_precision, dev)  # what "auto" means here: fp32 on a CPU without bf16 units
# a CPU without bf16 units only emulates bf16 (0.0003 TFLOP/s measured): no peak to compare with, n/a
native_bf16 = dev.type == "cuda" or cpu_has_bf16()
peak32 = matmul_peak(dev, torch.float32)
add("peak_fp32_tflops", "matmul peak fp32", peak32, "TFLOP/s")
if native_bf16:
    peak16 = matmul_peak(dev, torch.bfloat16)
    add("peak_bf16_tflops", "matmul peak bf16", peak16, "TFLOP/s")
else:
    results["peak_bf16_tflops"] = None
    rows.append(("matmul peak bf16", "n/a", "(no bf16 units: emulated)"))
# the fast settings' share is of the peak of the precision they run in
fast_peak, fast_peak_name = (peak32, "fp32") if fast_resolved == "fp32" or not native_bf16 else (peak16, "bf16")

# --------------------------------------------------------------------------- one window: sampling
w = window
gpu = dev.type == "cuda"
model = DiffUNet(1, 2, preset=preset, steps=steps).to(dev).eval()
# the window in fp32 and in the fast precision, each with cuDNN's benchmark workspace on CUDA
sample_skip = too_big(lambda: max((estimate_sampling_window("DiffUNet", model.config, [w] * 3, 1, precision,
                                                            cudnn_benchmark=gpu)
                                   for precision in ("fp32", fast_resolved)), key=lambda e: e.peak_bytes))
if sample_skip:
    skip(f"sample_{w}_fast_s", f"sampling {w}^3: fp32 eager and fast settings", sample_skip)
else:
    image = torch.randn(1, 1, w, w, w, device=dev)
    gflop = flops_of(lambda: model.sample(image))
    add(f"sample_{w}_gflop", f"sampling {w}^3 ({preset}, T={steps}): work", gflop, "GFLOP", "{:.1f}")

    def sample_fp32() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.sample(image)

    def sample_fast() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        with torch.inference_mode(), autocast_context(dev, fast_precision):
            return model.sample(image_fast)

    base_s = timed(sample_fp32, dev, repeats)
    reference = sample_fp32()
    if gpu:  # the math the baseline's kernels did: cuDNN's TF32 kernels carry "tf32" in their names
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:  # CPU too: kernels are found by their op
            sample_fp32()
            sync(dev)
        kernels = fp32_kernel_math([name for name, _, _ in kernel_records(prof, "cuda")])
        results["fp32_kernels"] = kernels
        rows.append((f"sampling {w}^3: fp32 kernels named tf32 / winograd", f"{kernels['tf32']} / "
                     f"{kernels['winograd']}", "(0 tf32: IEEE fp32)"))
    if dev.type == "cpu":  # PyTorch's own kernel choice: its native slow path for fp32 batch-1 convolutions
        with pytorch_choice():
            add(f"sample_{w}_fp32_pytorch_choice_s",
                f"sampling {w}^3: fp32 eager, PyTorch's kernel choice (slow path)", timed(sample_fp32, dev, repeats), "s")
        add(f"sample_{w}_onednn_speedup", f"sampling {w}^3: oneDNN at batch 1 vs PyTorch's choice",
            results[f"sample_{w}_fp32_pytorch_choice_s"] / base_s, "x", "{:.2f}")
    backends(fast_precision)
    image_fast = fast_input(image)
    if fast_compile and (fast_resolved != "fp32" or fast_channels_last):  # the fast settings without torch.compile
        model = fast_model(model, compile=False)
        add(f"sample_{w}_fast_eager_s", f"sampling {w}^3: fast settings without torch.compile",
            timed(sample_fast, dev, repeats), "s")
    model = fast_model(model)
    fast_s = timed(sample_fast, dev, repeats)  # the warm-up call compiles
    reset_peak()
    fast = sample_fast()
    add_peak(f"sample_{w}_fast_peak_gib", f"sampling {w}^3: fast, peak memory")
    add(f"sample_{w}_fp32_eager_s", f"sampling {w}^3: fp32 eager", base_s, "s")
    add(f"sample_{w}_fast_s", f"sampling {w}^3: fast settings", fast_s, "s")
    add(f"sample_{w}_speedup", f"sampling {w}^3: speed-up", base_s / fast_s, "x", "{:.2f}")
    add(f"sample_{w}_fp32_peak_fraction", f"sampling {w}^3: fp32 eager, share of fp32 peak",
        gflop / base_s / 1e3 / peak32, "", "{:.1%}")
    add(f"sample_{w}_fast_peak_fraction", f"sampling {w}^3: fast, share of {fast_peak_name} peak",
        gflop / fast_s / 1e3 / fast_peak, "", "{:.1%}")
    add("argmax_agreement", "agreement: same argmax, fast vs fp32",
        float((fast[0].argmax(1) == reference[0].argmax(1)).float().mean()), "", "{:.4%}")
    add("max_abs_prob_diff", "agreement: max |p_fast - p_fp32|", float((fast[0] - reference[0]).abs().max()), "")

mirror_skip = None if quick else too_big(lambda: estimate_sampling_window(
    "DiffUNet", model.config, [w] * 3, 1, fast_resolved, mirrors=8, cudnn_benchmark=gpu))
if mirror_skip:
    skip(f"mirrors_{w}_one_call_s", f"8 mirrors of one {w}^3 window", mirror_skip)
elif not quick:  # test-time mirroring of one window: the 8 copies in one network call, or one call each
    one_window = torch.randn(1, w, w, w, device=dev)
    for batched in (False, True):
        mirror_settings = InferenceSettings(patch_size=[w, w, w], mirror_axes=(0, 1, 2), precision=fast_precision,
                                            channels_last=fast_channels_last, batch_mirrors=batched, progress=False)
        add(f"mirrors_{w}_{'one_call' if batched else 'call_each'}_s",
            f"8 mirrors of one {w}^3 window: {'one call of 8' if batched else '8 calls of 1'}",
            timed(lambda: predict_volume(model, one_window, mirror_settings, dev), dev, 1), "s")

# --------------------------------------------------------------------------- one training step
model = DiffUNet(1, 2, preset=preset, steps=steps).to(dev).train()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
images = torch.randn(train_batch_size, 1, w, w, w, device=dev)
labels = (images[:, 0] > 0.5).long()


scalers = {p: torch.amp.GradScaler(dev.type, enabled=p == "fp16") for p in ("fp32", "bf16", "fp16")}


def train_step(x: torch.Tensor, precision: str) -> None:
    """The trainer's step (fp16: with its GradScaler)."""
    scaler = scalers[resolve_precision(precision, dev)]
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(dev, precision):
        loss = diffunet_loss(model(x, labels), labels, 1, 10)["loss"]
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
    scaler.step(optimizer)
    scaler.update()


# the fp32 step and the fast one, each estimated (cuDNN's benchmark workspace on CUDA): a card may fit only the fast
train_skip = {precision: too_big(lambda: estimate_train_step("DiffUNet", model.config, [w] * 3, train_batch_size,
                                                             resolve_precision(precision, dev), cudnn_benchmark=gpu))
              for precision in ("fp32", fast_precision)}
fast_differs = fast_resolved != "fp32" or fast_channels_last  # else the fast training step is the fp32 one
counted = "fp32" if not train_skip["fp32"] else fast_precision  # the FLOPs are the same in any precision
if train_skip[counted]:
    skip(f"train_step_{w}_fast_s", f"training step {w}^3: fp32 and fast", train_skip[counted])
else:
    train_gflop = flops_of(lambda: train_step(images, counted))
    add(f"train_step_{w}_gflop", f"training step {w}^3 x{train_batch_size} (MC-Diff K=3): work", train_gflop,
        "GFLOP", "{:.1f}")
train_repeats = 1 if quick else max(1, repeats - 1)  # a training step is slow: fewer repetitions
if train_skip["fp32"]:
    if not train_skip[counted]:
        skip(f"train_step_{w}_fp32_eager_s", f"training step {w}^3: fp32 eager", train_skip["fp32"])
else:
    backends("fp32")
    train_base = timed(lambda: train_step(images, "fp32"), dev, train_repeats)
    add(f"train_step_{w}_fp32_eager_s", f"training step {w}^3: fp32 eager", train_base, "s")
    add(f"train_step_{w}_fp32_peak_fraction", f"training step {w}^3: fp32 eager, share of fp32 peak",
        train_gflop / train_base / 1e3 / peak32, "", "{:.1%}")
if fast_differs and not train_skip[fast_precision]:
    backends(fast_precision)
    model = fast_model(model)
    images_fast = fast_input(images)
    train_fast = timed(lambda: train_step(images_fast, fast_precision), dev, train_repeats)
    reset_peak()
    train_step(images_fast, fast_precision)
    add_peak(f"train_step_{w}_fast_peak_gib", f"training step {w}^3: fast, peak memory")
    add(f"train_step_{w}_fast_s", f"training step {w}^3: fast settings", train_fast, "s")
    if not train_skip["fp32"]:
        add(f"train_step_{w}_speedup", f"training step {w}^3: speed-up", train_base / train_fast, "x", "{:.2f}")
    add(f"train_step_{w}_fast_peak_fraction", f"training step {w}^3: fast, share of {fast_peak_name} peak",
        train_gflop / train_fast / 1e3 / fast_peak, "", "{:.1%}")
elif fast_differs and train_skip["fp32"] is None:
    skip(f"train_step_{w}_fast_s", f"training step {w}^3: fast settings", train_skip[fast_precision])
del model, optimizer

if not quick:
    # ----------------------------------------------------------------------- whole volume, loader
    from light_training.training.augmentation import make_training_stream
    from light_training.io import read_image
    from light_training.preprocessing.raw_cases import find_raw_cases
    from light_training.planning.dataset_plan import plan_dataset
    from light_training.preprocessing.preprocess import preprocess_case, save_case
    from light_training.synthetic.generate import generate_aiib2023
    vpreset = volume_preset or ("paper" if dev.type == "cuda" else "tiny")
    vpatch = volume_patch or [w, w, w]
    with tempfile.TemporaryDirectory() as tmp:
        generate_aiib2023(Path(tmp) / "raw", num_cases=1, seed=seed, shape=tuple(volume_shape))
        raw = find_raw_cases(Path(tmp) / "raw" / "AIIB23_Train_T1", "aiib2023")
        plans = plan_dataset(raw, "aiib2023", target_spacing=None)  # the median spacing: no resampling
        image, geometry = read_image(raw[0].image_files)
        label = read_image([raw[0].label_file])[0][0].astype(np.uint8)
        data, seg, properties = preprocess_case(image, geometry, label, plans, case=raw[0].case)
        save_case(Path(tmp) / "train", raw[0].case, data, seg, properties)
        model = fast_model(DiffUNet(1, 2, preset=vpreset, steps=steps).to(dev).eval())
        for mirror in [(), (0, 1, 2)]:
            key, what = ("volume_mirror_s", "8 mirrors") if mirror else ("volume_s", "no mirroring")
            reason = too_big(lambda: estimate_volume("DiffUNet", model.config, data.shape[1:], vpatch, fast_resolved,
                                                     mirrors=8 if mirror else 1, cudnn_benchmark=gpu))
            if reason:
                skip(key, f"whole CT ({vpreset}, patch {vpatch[0]}, {what})", reason)
                continue
            settings = InferenceSettings(patch_size=vpatch, overlap=0.5, mirror_axes=mirror,
                                         precision=fast_precision, channels_last=fast_channels_last, progress=False)
            # warm-up on one window: torch.compile compiles here, not in the timed run
            predict_volume(model, np.zeros((1, *vpatch), dtype=np.float32), settings, dev)
            sync(dev)
            reset_peak()
            start = time.perf_counter()
            predict_volume(model, data, settings, dev)
            sync(dev)
            add(key, f"whole CT {'x'.join(map(str, data.shape[1:]))} ({vpreset}, patch {vpatch[0]}, {what})",
                time.perf_counter() - start, "s", "{:.1f}")
            add_peak("volume_mirror_peak_gib" if mirror else "volume_peak_gib", "  peak memory")
        del model
        batches = 8
        with make_training_stream(Path(tmp) / "train", [raw[0].case], [w, w, w], 2, True, loader_workers,
                                  seed=seed) as stream:
            next(stream)  # starts the workers
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            rate = batches * 2 / (time.perf_counter() - start)
    add("loader_patches_per_s", f"loader: augmented {w}^3 patches/s ({loader_workers} workers)", rate, "1/s", "{:.1f}")

print(f"\nDiff-UNet speed on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else describe_cpu()}, "
      f"{torch.get_num_threads()} threads, load average {' / '.join(f'{v:.2f}' for v in os.getloadavg()[:2])}), "
      f"fast = {fast_precision} ({fast_resolved}) autocast"
      f"{', channels_last_3d' if fast_channels_last else ''}{', torch.compile' if fast_compile else ''}"
      ", inference_mode")
width = max(len(r[0]) for r in rows)
for label, value, unit in rows:
    print(f"  {label:<{width}}  {value:>10} {unit}")
if json:
    write_json(results, json)
    print(f"written {json}")
