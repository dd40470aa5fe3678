"""Where a GPU's time goes in one paper training step and one sampling window, and which settings win.

(a) Kernel time by kind (torch.profiler: convolution forward and backward, normalisation, element-wise,
casts and copies, optimizer, else) of one training step (the trainer's: 2 x 128^3, MC-Diff K=3, loss,
clipping, SGD) and one 128^3 sampling window (T=3), for the fp32 reference and today's eager low precision;
with the float32 math in force and how many fp32 kernels are named TF32 or Winograd (issue 24, item 5).
(b) A sweep of candidate settings (benchmarks/profiling.py: TF32, channels-last 3-D, bf16 autocast vs bf16
weights, torch.compile modes, CUDA graphs, compiling the training step whole or regionally, fp16 with the
GradScaler), each with its time, share of the bf16 matmul peak, peak memory and agreement with the fp32
reference (sampling: same argmax, max |p - p_fp32|; training: the loss and the gradient's direction after
one step from the same weights and noise).

About 5 minutes on an H100/H200 without the compiled training candidates (each compiles its training step
first: minutes). With --device=cpu the same runs at small sizes (tiny preset), which tests/test_gpu_profile.py does.
docs/gpu.md reads the tables.

Examples:
    python benchmarks/gpu_profile.py --json=./logs/gpu_profile.json                 # on a GPU
    python benchmarks/gpu_profile.py "--train_candidates=['fp32','autocast','autocast_cl']" --torch_compile=False
    python benchmarks/gpu_profile.py --device=cpu --torch_compile=False             # small sizes, about a minute
"""
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measure import (flops_of, fp32_math, held_bytes, matmul_peak, peak_bytes, sync,  # noqa: E402
                                timed)
from benchmarks.profiling import (KINDS, SAMPLE_CANDIDATES, TRAIN_CANDIDATES, Candidate,  # noqa: E402
                                  agreement_sample, agreement_train, compile_training, fp32_kernel_math,
                                  kernel_records, skip_reason, time_by_kind)
from diffunet import DiffUNet  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.inference.prediction import (InferenceSettings, predict_ensemble,  # noqa: E402
                                                 prepare_for_inference)
from light_training.io import write_json  # noqa: E402
from light_training.machine import describe_cpu  # noqa: E402
from light_training.memory.estimator import GIB  # noqa: E402
from light_training.compilation import compile_for_inference  # noqa: E402
from light_training.runtime import configure_backends, cpu_has_bf16, resolve_device, resolve_precision  # noqa: E402
from light_training.training.step import TrainSettings  # noqa: E402
from light_training.training.trainer import Trainer  # noqa: E402

device = "auto"  # "auto": cuda:0 when there is one, else the CPU; "cpu": the same at small sizes
preset = None  # model preset; None: "paper" on a GPU, "tiny" on the CPU
patch = None  # edge of the training patch and of the sampling window; None: 128 on a GPU, 32 on the CPU
batch_size = 2  # patches per training step
steps = 3  # DDIM steps of one sampling
repeats = 3  # timed calls per candidate after one warm-up (the median is reported)
torch_compile = True  # run the compiled candidates (each compiles once: tens of seconds, training minutes)
train_candidates = None  # keys of benchmarks/profiling.py's TRAIN_CANDIDATES to run, e.g. ['fp32','autocast']; None: all
sample_candidates = None  # keys of SAMPLE_CANDIDATES to run; None: all
profiled = ["fp32", "autocast"]  # candidates whose kernels are sorted by kind (eager ones: compiled kernels are fused)
matmul_size = None  # edge of the matmuls that measure the peaks; None: 8192 on a GPU, 2048 on the CPU
json = None  # also write every number to this JSON file
seed = 0
config = apply_overrides(globals())

dev = resolve_device(("cuda:0" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
gpu = dev.type == "cuda"
preset = preset or ("paper" if gpu else "tiny")
p = int(patch or (128 if gpu else 32))
low = resolve_precision("auto", dev)  # bf16 (or fp16 on GPUs before Ampere); fp32 on a CPU without bf16 units
if torch_compile:  # compiled candidates draw the same random t and noise as eager ones: agreement is measurable
    import torch._inductor.config as inductor_config
    inductor_config.fallback_random = True
name = torch.cuda.get_device_name(dev) if gpu else describe_cpu()
results: dict = {"settings": dict(config, device=str(dev), preset=preset, patch=p, low_precision=low, name=name,
                                  torch=torch.__version__, cuda=torch.version.cuda,
                                  cudnn=torch.backends.cudnn.version() if gpu else None)}

# --------------------------------------------------------------------------- peaks, fp32 math
configure_backends(dev, "fp32")  # the reference's backends: IEEE fp32 on CUDA
math = fp32_math(dev.type)
peak32 = matmul_peak(dev, torch.float32, matmul_size)
native_low = gpu or cpu_has_bf16()  # a CPU without bf16 units only emulates it: no peak to compare with
peak_low = matmul_peak(dev, torch.bfloat16 if low != "fp16" else torch.float16, matmul_size) if native_low else None
peak, peak_name = (peak_low, low) if peak_low else (peak32, "fp32")
results.update(fp32_math=math, peak_fp32_tflops=peak32, peak_low_tflops=peak_low)
print(f"gpu_profile on {dev} ({name}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{preset} preset, patch {p}^3, batch {batch_size}, T={steps}; 'low' = {low}")
print(f"fp32 reference's math (torch's fp32_precision switches): convolutions {math['conv']}, matmuls "
      f"{math['matmul']}; matmul peak fp32 {peak32:.1f} TFLOP/s" +
      (f", {low} {peak_low:.1f} TFLOP/s" if peak_low else ", no bf16 units"))

# --------------------------------------------------------------------------- what every candidate runs
torch.manual_seed(seed)
initial = DiffUNet(1, 2, preset=preset, steps=steps).state_dict()  # every candidate starts from these weights
label = torch.zeros(batch_size, p, p, p, dtype=torch.uint8)
label[:, p // 4:-p // 4, p // 3:-p // 3, p // 3:-p // 3] = 1
batch = {"image": torch.randn(batch_size, 1, p, p, p) + label[:, None], "label": label}
window = torch.randn(1, p, p, p, device=dev)  # (C, Z, Y, X): one sampling window


def precision_of(candidate: Candidate) -> str:
    return low if candidate.precision == "low" else candidate.precision


def backends(candidate: Candidate) -> None:
    """cuDNN's settings of the candidate's precision (configure_backends), TF32 where it asks for it."""
    configure_backends(dev, precision_of(candidate), tf32=True if candidate.tf32 else None)


def fresh_model() -> DiffUNet:
    model = DiffUNet(1, 2, preset=preset, steps=steps)
    model.load_state_dict(initial)
    return model


def train_setup(candidate: Candidate, logdir: str) -> tuple[Callable[[], object], Trainer]:
    """The trainer's step in the candidate's settings, and the trainer (its model, optimizer)."""
    model = fresh_model()
    if candidate.compile:
        compile_training(model, candidate.compile)
    settings = TrainSettings(batch_size=batch_size, precision=precision_of(candidate),
                             channels_last=candidate.channels_last, seed=seed)
    trainer = Trainer(model, settings, logdir, None, {}, dev)
    return lambda: trainer.train_step(batch, 0), trainer


def sample_setup(candidate: Candidate) -> tuple[Callable[[], torch.Tensor], DiffUNet]:
    """One window's sampling (the predictor's path: the noise reset to ``seed``) in the candidate's settings:
    returns the probabilities (K, *window)."""
    settings = InferenceSettings(patch_size=[p] * 3, mirror_axes=(), precision=precision_of(candidate),
                                 channels_last=candidate.channels_last, cast_weights=candidate.cast_weights,
                                 with_uncertainty=False, progress=False)
    model = prepare_for_inference(fresh_model().to(dev).eval(), settings, dev)
    if candidate.compile:
        compile_for_inference(model, candidate.compile)
    return lambda: predict_ensemble([(model, settings)], window, dev, seed=seed)[0], model


# --------------------------------------------------------------------------- work per step
with tempfile.TemporaryDirectory() as logdir:
    step, trainer = train_setup(TRAIN_CANDIDATES[0], logdir)
    step()  # the momentum buffers exist from here on, as in every later step
    train_gflop = flops_of(step)
    del step, trainer
sample, model = sample_setup(SAMPLE_CANDIDATES[0])
sample_gflop = flops_of(sample)
del sample, model
results.update(train_gflop=train_gflop, sample_gflop=sample_gflop)
print(f"work: training step {train_gflop:.1f} GFLOP, sampling window {sample_gflop:.1f} GFLOP\n")


# --------------------------------------------------------------------------- (a) kernel time by kind
def profile_kinds(fn: Callable[[], object]) -> tuple[dict[str, float], float, list[str]]:
    """Seconds per kind of one call of ``fn`` (after a warm-up), the call's wall seconds, the kernel names."""
    fn()
    sync(dev)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(dev)
    records = kernel_records(prof, dev.type)
    wall = (max(e.time_range.end for e in prof.events()) - min(e.time_range.start for e in prof.events())) / 1e6
    return time_by_kind(records), wall, [r[0] for r in records]


kinds: dict = {"train": {}, "sample": {}}
for stage, candidates in (("train", TRAIN_CANDIDATES), ("sample", SAMPLE_CANDIDATES)):
    for candidate in [c for c in candidates if c.key in profiled]:
        if skip_reason(candidate, dev.type, low, False):
            continue
        backends(candidate)
        torch.manual_seed(seed)
        try:
            with tempfile.TemporaryDirectory() as logdir:
                fn = train_setup(candidate, logdir)[0] if stage == "train" else sample_setup(candidate)[0]
                seconds, wall, names = profile_kinds(fn)
                del fn
        except Exception as err:  # noqa: BLE001 -- a failing profile must not cost the sweep
            print(f"(a) {stage} {candidate.key}: failed: {type(err).__name__}: {str(err)[:120]}")
            continue
        label_text = candidate.label.format(low=low).split(",")[0]
        kinds[stage][candidate.key] = {"label": label_text, "seconds": seconds, "wall_s": wall,
                                       "fp32_kernel_math": fp32_kernel_math(names) if gpu else None}
    if kinds[stage]:
        columns = list(kinds[stage].values())
        what = "training step" if stage == "train" else "sampling window"
        unit = "GPU kernel ms" if gpu else "CPU op self ms"
        print(f"(a) {what}: {unit} by kind (% of the summed time)")
        print(f"  {'kind':<18}" + "".join(f"{c['label']:>26}" for c in columns))
        for kind in KINDS:
            cells = []
            for c in columns:
                total = sum(c["seconds"].values()) or 1.0
                cells.append(f"{c['seconds'][kind] * 1e3:>15.1f} ({c['seconds'][kind] / total:>6.1%})")
            print(f"  {kind:<18}" + "".join(f"{cell:>26}" for cell in cells))
        print(f"  {'sum / wall (busy)':<18}" + "".join(  # busy < 100 %: the device waits for the host
            f"{sum(c['seconds'].values()) * 1e3:.1f} / {c['wall_s'] * 1e3:.1f} "
            f"({sum(c['seconds'].values()) / c['wall_s']:.0%})".rjust(26) for c in columns))
        if gpu:
            print("  kernels named tf32 / winograd: " + ", ".join(
                f"{c['label']}: {c['fp32_kernel_math']['tf32']} / {c['fp32_kernel_math']['winograd']}"
                for c in columns))
        print()
results["kinds"] = kinds


# --------------------------------------------------------------------------- (b) the sweep
def first_train_call(fn: Callable[[], object], trainer: Trainer) -> tuple[float | None, torch.Tensor]:
    """The loss of the first step and its gradient (flattened, unscaled), from the initial weights."""
    torch.manual_seed(seed)
    terms = fn()
    grads = [q.grad.detach().flatten().float() for q in trainer.model.parameters() if q.grad is not None]
    return (None if terms is None else float(terms["loss"])), torch.cat(grads)


def measure(stage: str, candidate: Candidate, reference: object) -> tuple[dict, str, object]:
    """One candidate: its first call (compiles; the agreement with ``reference``), then its time and peak.
    Returns the row's numbers, the agreement's text and the first call's output (the reference's, on the host)."""
    torch._dynamo.reset()  # each candidate compiles afresh: no recompile limit reached across them
    backends(candidate)
    with tempfile.TemporaryDirectory() as logdir:
        if stage == "train":
            fn, trainer = train_setup(candidate, logdir)
            out = first_train_call(fn, trainer)  # compiles here
            numbers, agreement = agreement_train(out, reference)
            held = held_bytes([*trainer.model.parameters(), *batch.values(),
                               *[s["momentum_buffer"] for s in trainer.optimizer.state.values()]])
            out = (out[0], out[1].cpu())
        else:
            fn, model = sample_setup(candidate)
            out = fn()  # compiles here
            numbers, agreement = agreement_sample(out, reference)
            held = held_bytes([*model.parameters(), window])
            out = out.cpu()
        seconds = timed(fn, dev, repeats)
        numbers.update(seconds=seconds, peak_share=(train_gflop if stage == "train" else sample_gflop) / seconds
                       / 1e3 / peak, peak_gib=peak_bytes(fn, dev, held) / GIB)
    return numbers, agreement, out


sweep: dict = {"train": [], "sample": []}
for stage, candidates, wanted in (("train", TRAIN_CANDIDATES, train_candidates),
                                  ("sample", SAMPLE_CANDIDATES, sample_candidates)):
    reference = None
    print(f"(b) {'training step' if stage == 'train' else 'sampling window'}: the sweep")
    print(f"  {'candidate':<58}{'s':>9}{f'% {peak_name} peak':>15}{'peak GiB':>10}  agreement with fp32")
    for candidate in candidates:
        if wanted is not None and candidate.key not in wanted:
            continue
        label_text = candidate.label.format(low=low)
        row = {"key": candidate.key, "label": label_text}
        reason = skip_reason(candidate, dev.type, low, torch_compile)
        if reason:
            sweep[stage].append({**row, "skipped": reason})
            print(f"  {label_text:<58}  skipped: {reason}")
            continue
        try:
            numbers, agreement, out = measure(stage, candidate, reference)
        except Exception as err:  # noqa: BLE001 -- one candidate failing on a GPU must not cost the others
            failure = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
            sweep[stage].append({**row, "failed": failure})
            print(f"  {label_text:<58}  failed: {failure}", flush=True)
            if gpu:
                torch.cuda.empty_cache()
            continue
        if candidate.key == "fp32":
            reference = out
        sweep[stage].append({**row, **numbers})
        print(f"  {label_text:<58}{numbers['seconds']:>9.4f}{numbers['peak_share']:>15.1%}"
              f"{numbers['peak_gib']:>10.2f}  {agreement}", flush=True)
    print()
results["sweep"] = sweep
configure_backends(dev, low)
if json:
    write_json(results, json)
    print(f"written {json}")
