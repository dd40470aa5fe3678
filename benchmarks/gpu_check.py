"""One command that checks a GPU before a real run: precision, convolutions, training steps, compiled sampling,
a large volume, each measured peak beside the memory estimator's.

On a GPU (about 5 minutes): the device and its compute capability, the precision "auto" resolves to, one
bf16 and one fp16 conv3d, three paper-preset training steps at 2 x 128^3 with and without cudnn.benchmark
(s/step, peak from torch.cuda.max_memory_allocated), one fp16 step with the GradScaler, compiled sampling
of a 256^3 volume with the mirrors batched (and how many graphs torch.compile built), and the tiny model
over a 600 x 512 x 512 volume; and bf16 stability (issue 23: does the library's bf16 conv weight gradient
hold on a 2 x 2 x 2 input, does a 2 x 2 x 2-bottleneck model train in bf16 without skipped steps). With --device=cpu the same checks run at small sizes (tiny preset; peaks
from the CPU allocator's events in torch.profiler), which tests/test_gpu_check.py runs so this script
cannot rot. Paste the table into docs/gpu.md.

Also the training scripts' default on a GPU, the compiled step: seconds to the first step (compiling),
s/step after, graphs compiled at the first and the second validation (the second should compile none).

Examples:
    python benchmarks/gpu_check.py --json=./logs/gpu_check.json            # on a GPU
    python benchmarks/gpu_check.py --device=cuda:1
    python benchmarks/gpu_check.py --device=cpu --torch_compile=False --train_compile=False   # small sizes, about a minute
"""
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffunet import build_network  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.inference.prediction import InferenceSettings, predict_volume  # noqa: E402
from light_training.io import write_json  # noqa: E402
from light_training.memory.estimator import GIB, estimate_train_step, estimate_volume  # noqa: E402
from light_training.memory.live_bytes import measure_cpu_peak  # noqa: E402
from light_training.preprocessing.preprocess import save_case  # noqa: E402
from light_training.compilation import compile_for_inference, compile_for_training, compiled_graphs  # noqa: E402
from light_training.runtime import configure_backends, resolve_device, resolve_precision  # noqa: E402
from light_training.training.dataloading import ValidationPatches  # noqa: E402
from light_training.training.step import TrainSettings  # noqa: E402
from light_training.training.trainer import Trainer  # noqa: E402

device = "cuda:0"  # the GPU to check; "cpu": the same checks at small sizes
precision = "auto"  # what training and prediction would ask for
train_patch = None  # training patch (z, y, x); None: [128, 128, 128] on a GPU, [32, 32, 32] on the CPU
batch_size = 2
steps = 3  # timed training steps per setting (after one warm-up step)
sampling_volume = None  # volume sampled with the paper preset; None: [256, 256, 256] on a GPU, [48, 48, 48] on the CPU
large_volume = None  # volume the tiny model predicts; None: [600, 512, 512] on a GPU, [40, 64, 64] on the CPU
torch_compile = True  # compile the sampling networks (about a minute once)
train_compile = True  # also time the training scripts' default on a GPU: the compiled step (compile_for_training)
train_compile_regional = True  # that step compiled per U-Net stage (the default); False: whole networks
stability_steps = 20  # bf16 stability row: training steps of a 2 x 2 x 2-bottleneck model in bf16 and in fp32
json = None  # also write every row to this JSON file
config = apply_overrides(globals())

dev = resolve_device(device)
gpu = dev.type == "cuda"
preset = "paper" if gpu else "tiny"
patch = list(train_patch or ([128] * 3 if gpu else [32] * 3))
volume = list(sampling_volume or ([256] * 3 if gpu else [48] * 3))
large = list(large_volume or ([600, 512, 512] if gpu else [40, 64, 64]))
resolved = resolve_precision(precision, dev)
rows: list[dict] = []


def add(check: str, setting: str, result: str, seconds: float | None = None, peak_gib: float | None = None,
        estimate_gib: float | None = None) -> None:
    rows.append({"check": check, "setting": setting, "result": result, "seconds": seconds, "peak_gib": peak_gib,
                 "estimate_gib": estimate_gib})
    cell = lambda v, f: ("-" if v is None else f.format(v)).rjust(9)  # noqa: E731
    print(f"{check:<14}{setting:<44}{result:<18}{cell(seconds, '{:.3f}')}{cell(peak_gib, '{:.2f}')}"
          f"{cell(estimate_gib, '{:.2f}')}", flush=True)


def sync() -> None:
    if gpu:
        torch.cuda.synchronize(dev)


def peak_of(fn, live_before: int = 0) -> tuple[object, float, float]:
    """``fn()``'s result, its seconds and its peak GiB (CUDA: max_memory_allocated; CPU: the profiler's
    allocator events on top of ``live_before`` bytes)."""
    if gpu:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - start, torch.cuda.max_memory_allocated(dev) / GIB
    box = []
    start = time.perf_counter()
    peak = measure_cpu_peak(lambda: box.append(fn()), live_before)
    return box[0], time.perf_counter() - start, peak / GIB


def timed(fn) -> tuple[object, float]:
    """``fn()``'s result and its seconds (no memory measured: the CPU's profiler would slow a compile down)."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def held_bytes(*tensors) -> int:
    """What is allocated before a measured call: CUDA's count; on the CPU the storages of ``tensors``."""
    if gpu:
        return torch.cuda.memory_allocated(dev)
    return sum(t.untyped_storage().nbytes() for t in {id(t): t for t in tensors}.values())


name = torch.cuda.get_device_name(dev) if gpu else "CPU"
capability = ".".join(map(str, torch.cuda.get_device_capability(dev))) if gpu else "-"
print(f"gpu_check on {dev} ({name}), torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"{'check':<14}{'setting':<44}{'result':<18}{'s':>9}{'peak GiB':>9}{'est. GiB':>9}")
add("device", f"{name}, capability {capability}", "ok")
add("precision", f"{precision!r} resolves to", resolved)

# --------------------------------------------------------------------------- one conv3d per low precision
for dtype in (torch.bfloat16, torch.float16):
    x = torch.randn(2, 32, *[p // 2 for p in patch], device=dev, dtype=dtype)
    weight = torch.randn(32, 32, 3, 3, 3, device=dev, dtype=dtype) * 0.05
    try:
        torch.nn.functional.conv3d(x, weight, padding=1)  # warm-up
        out, seconds, _ = peak_of(lambda: torch.nn.functional.conv3d(x, weight, padding=1))
        add("conv3d", f"{str(dtype)[6:]} 2x32x{'x'.join(str(p // 2) for p in patch)}",
            "ok" if torch.isfinite(out).all() else "NaN/Inf", seconds)
    except RuntimeError as err:  # e.g. no bf16 convolutions on this GPU
        add("conv3d", str(dtype)[6:], f"error: {str(err).splitlines()[0][:60]}")

# --------------------------------------------------------------------------- bf16 on a 2 x 2 x 2 bottleneck (issue 23)
def bf16_stability(trials: int = 10, num_steps: int = 20) -> Iterator[tuple[str, str]]:
    """(setting, result) rows, each yielded when measured (a GPU without bf16 convolutions keeps the rows before
    the error): does the library's bf16 conv weight gradient hold on an input smaller than the
    kernel (oneDNN's does not at some CPU ISA levels, docs/precision.md; cuDNN's is what a GPU run answers),
    and does the trainer's bf16 run of a model with a 2 x 2 x 2 bottleneck skip steps where fp32's does not.

    The conv is plain ``torch.nn.Conv3d`` (the library, unguarded): 64 -> 64 channels, kernel 3, random
    2 x 64 x 2 x 2 x 2 and 2 x 64 x 2 x 4 x 4 inputs, ``trials`` each; a bf16 weight gradient is wrong when
    it is off fp32's by more than 5 % of fp32's largest. The model is the tiny preset on a 16^3 patch
    (strides 1, 2, 2, 2), ``num_steps`` trainer steps on random batches, no clipping, from the same weights."""
    torch.manual_seed(0)
    conv, wrong, largest = torch.nn.Conv3d(64, 64, 3, padding=1).to(dev), 0, [0.0, 0.0]
    for size in [(2, 2, 2), (2, 4, 4)] * trials:
        x, g = torch.randn(2, 64, *size, device=dev), torch.randn(2, 64, *size, device=dev)
        grads = []
        for dtype in (torch.float32, torch.bfloat16):
            conv.weight.grad = None
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                y = conv(x)
            y.backward(g.to(y.dtype))
            grads.append(conv.weight.grad.float())
        error = torch.nan_to_num((grads[1] - grads[0]).abs().max(), nan=float("inf")).item()
        wrong += not error < 0.05 * grads[0].abs().max().item()
        largest = [max(largest[0], grads[0].abs().max().item()),
                   max(largest[1], torch.nan_to_num(grads[1].abs().max(), nan=float("inf")).item())]
    yield (f"conv3d dW, 2x64x{{2x2x2,2x4x4}}, {2 * trials} trials",
           f"{'ok' if wrong == 0 else 'library fault'}: {wrong} wrong; max |dW| {largest[1]:.3g} bf16, "
           f"{largest[0]:.3g} fp32")
    runs = {}
    for step_precision in ("bf16", "fp32"):
        torch.manual_seed(0)
        model = build_network("diffunet", 1, 3, preset="tiny")
        generator, skipped, peak = torch.Generator().manual_seed(1), 0, 0.0
        with tempfile.TemporaryDirectory() as logdir:
            settings = TrainSettings(max_epoch=num_steps, batch_size=2, lr=0.02, grad_clip=1e9, precision=step_precision)
            trainer = Trainer(model, settings, logdir, None, {}, dev)
            for _ in range(num_steps):
                label = torch.randint(0, 3, (2, 16, 16, 16), generator=generator)
                batch = {"image": torch.randn(2, 1, 16, 16, 16, generator=generator) + label[:, None], "label": label}
                if trainer.train_step(batch, 0) is None:
                    skipped, peak = skipped + 1, max(peak, trainer.last_skip.largest)
                else:
                    peak = max(peak, max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None))
        runs[step_precision] = (skipped, peak)
        del trainer, model
    (skipped, peak), (skipped32, peak32) = runs["bf16"], runs["fp32"]
    verdict = "ok" if skipped == skipped32 == 0 and peak < 10 * peak32 else "UNSTABLE"
    yield (f"tiny 2x2x2 bottleneck, {num_steps} steps vs fp32",
           f"{verdict}: {skipped} (fp32 {skipped32}) skipped; max |grad| {peak:.3g} vs {peak32:.3g}")


try:
    for setting, result in bf16_stability(num_steps=stability_steps):
        add("bf16 2x2x2", setting, result)
except (RuntimeError, ValueError) as err:  # no bf16 convolutions on this GPU
    add("bf16 2x2x2", "conv3d and tiny steps", f"error: {str(err).splitlines()[0][:60]}")

# --------------------------------------------------------------------------- training steps (the trainer's)
label = torch.zeros(batch_size, *patch, dtype=torch.uint8)
label[:, patch[0] // 4:-patch[0] // 4, patch[1] // 3:-patch[1] // 3, patch[2] // 3:-patch[2] // 3] = 1
batch = {"image": torch.randn(batch_size, 1, *patch) + label[:, None], "label": label}
# cudnn.benchmark off and on (the CPU has no cuDNN: one run), then fp16 with the GradScaler
runs = ([(resolved, False), (resolved, True)] if gpu else [(resolved, False)]) + \
    ([("fp16", gpu)] if resolved != "fp16" else [])
for step_precision, benchmark in runs:
    torch.manual_seed(0)
    model = build_network("diffunet", 1, 2, preset=preset)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = Trainer(model, TrainSettings(batch_size=batch_size, precision=step_precision), logdir, None, {}, dev)
        configure_backends(dev, step_precision)
        torch.backends.cudnn.benchmark = benchmark
        trainer.train_step(batch, 0)  # warm-up: cuDNN's algorithm search, the momentum buffers
        momentum = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
        terms, seconds, peak = peak_of(lambda: [trainer.train_step(batch, 0) for _ in range(steps)],
                                       held_bytes(*trainer.model.parameters(), *momentum, *batch.values()))
    estimate = estimate_train_step("DiffUNet", model.config, patch, batch_size, step_precision,
                                   cudnn_benchmark=benchmark).peak_gib
    scaler = ", GradScaler" if step_precision == "fp16" else ""
    finite = all(t is not None for t in terms)
    add("train step", f"{preset} {batch_size}x{'x'.join(map(str, patch))} {step_precision}{scaler}",
        ("ok" if finite else "skipped (NaN)") + (", benchmark" if benchmark else ""), seconds / steps, peak,
        estimate)
    del trainer, model
configure_backends(dev, resolved)


# --------------------------------------------------------------------------- the compiled training path
def compiled_training(regional: bool) -> None:
    """The training scripts' default on a GPU, as the trainer runs it: :func:`compile_for_training`, then
    the seconds to the first step (it compiles forward and backward), s/step after, and the graphs that
    the first validation compiles (sampling, once) and a second one (0: no recompiles). Validation samples
    three patches at batch ``batch_size``, so its last batch is short (the trainer pads it)."""
    torch.manual_seed(0)
    model = compile_for_training(build_network("diffunet", 1, 2, preset=preset), regional)
    kind = "regional" if regional else "whole networks"
    with tempfile.TemporaryDirectory() as folder:
        labels = label[0].numpy()
        save_case(folder, "case", batch["image"][0].numpy(), labels,
                  {"class_locations": {"1": np.argwhere(labels == 1)[::97].tolist()}})
        validation = ValidationPatches(folder, ["case"], patch, num_patches=2 * batch_size - 1)
        trainer = Trainer(model, TrainSettings(batch_size=batch_size, precision=resolved), folder,
                          None, {}, dev)
        graphs = compiled_graphs()
        _, first = timed(lambda: trainer.train_step(batch, 0))
        add("compiled step", f"{preset} {batch_size}x{'x'.join(map(str, patch))} {resolved} {kind}, 1st",
            f"ok, {compiled_graphs() - graphs} graphs", first)
        graphs = compiled_graphs()
        _, seconds = timed(lambda: [trainer.train_step(batch, 0) for _ in range(steps)])
        add("compiled step", "s/step after the first", f"ok, {compiled_graphs() - graphs} recompiles",
            seconds / steps)
        for which in ("first", "second"):
            graphs = compiled_graphs()
            _, seconds = timed(lambda: trainer.validate(validation))
            add("compiled val", f"{which} validation, {len(validation)} patches at batch {batch_size}",
                f"ok, {compiled_graphs() - graphs} graphs", seconds)


if train_compile:
    compiled_training(train_compile_regional)

# --------------------------------------------------------------------------- sampling a volume, compiled
window = [min(p, v) for p, v in zip(patch, volume)]
model = build_network("diffunet", 1, 2, preset=preset).to(dev).eval()
if torch_compile:
    compile_for_inference(model)
settings = InferenceSettings(patch_size=window, mirror_axes=(0, 1, 2), precision=resolved, batch_mirrors=True,
                             progress=False)
image = np.random.default_rng(0).normal(size=(1, *volume)).astype(np.float32)
predict_volume(model, np.zeros((1, *window), dtype=np.float32), settings, dev)  # warm-up: compiles
graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
(probs, _), seconds, peak = peak_of(lambda: predict_volume(model, image, settings, dev),
                                    held_bytes(*model.parameters()))
recompiles = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
estimate = estimate_volume("DiffUNet", model.config, volume, window, resolved, mirrors=8,
                           cudnn_benchmark=gpu).peak_gib
add("sampling", f"{preset} {'x'.join(map(str, volume))}, 8 mirrors in one call",
    f"ok, {recompiles} recompiles" if torch_compile else "ok (eager)", seconds, peak, estimate)
del model, probs

# --------------------------------------------------------------------------- a large volume, tiny model
model = build_network("diffunet", 1, 2, preset="tiny").to(dev).eval()
large_window = [min(p, v) for p, v in zip(patch, large)]
settings = InferenceSettings(patch_size=large_window, mirror_axes=(), precision=resolved, progress=False)
image = np.zeros((1, *large), dtype=np.float32)
(probs, _), seconds, peak = peak_of(lambda: predict_volume(model, image, settings, dev),
                                    held_bytes(*model.parameters()))
estimate = estimate_volume("DiffUNet", model.config, large, large_window, resolved, cudnn_benchmark=gpu).peak_gib
add("large volume", f"tiny {'x'.join(map(str, large))}, no mirrors", "ok", seconds, peak, estimate)
print("peak: measured (CUDA: max_memory_allocated; CPU: the profiler's allocator events); est.: "
      "light_training.memory, for one training step or the whole volume (a window and the inferer's buffers), "
      "with cuDNN's workspace where cudnn.benchmark is on")
if json:
    write_json({"device": str(dev), "name": name, "capability": capability, "torch": torch.__version__,
                "precision": resolved, "rows": rows}, json)
    print(f"written {json}")
