"""Peak memory of a training step and of a sampling window, estimated without running a convolution.

The network's own code runs on fake tensors (shapes only) while every storage it creates is counted
(light_training.memory); a row takes a few seconds on any CPU, no GPU needed. "fits" compares the peak,
plus the allocator's margin and the CUDA context and workspaces (light_training.memory.fits_on_card), with
the card sizes. The table in docs/memory.md is this script's default output.

Examples:
    python benchmarks/bench_memory.py                                   # the paper preset: the table in docs/memory.md
    python benchmarks/bench_memory.py --train_patches=[[112,160,128]] --batch_size=2 "--precisions=['bf16']"
    python benchmarks/bench_memory.py --preset=tiny --train_patches=[[32,32,32]] --sampling_patch=[32,32,32] --json=./logs/memory.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffunet import build_network  # noqa: E402
from light_training.config import apply_overrides  # noqa: E402
from light_training.io import write_json  # noqa: E402
from light_training.memory.estimator import estimate_sampling_window, estimate_train_step  # noqa: E402
from light_training.memory.fit import fits_on_card  # noqa: E402

model_variant = "diffunet"  # "diffunet" or "unet" (the plain U-Net baseline)
preset = "paper"  # model preset: "paper" or "tiny"
in_channels = 1  # image channels (AIIB2023: 1, BraTS2023: 4)
num_classes = 2  # classes with background (AIIB2023: 2, BraTS2023: 4)
mc_samples = 3  # MC-Diff passes K per training step
train_patches = [[128, 128, 128], [96, 96, 96], [64, 64, 64]]  # training patch sizes (z, y, x)
batch_size = 2  # patches per training step (per GPU)
precisions = ["bf16", "fp32"]  # resolved precisions: "bf16", "fp16", "fp32"
mc_chunks = [None, 1]  # MC-Diff passes at once (None: all K in one batch), each a row at the first patch size
checkpointing = [False, True]  # activation checkpointing off/on, each a row at the first patch size
sampling_patch = [128, 128, 128]  # sliding-window size (z, y, x); [] for no sampling rows
sampling_batch = 1  # windows per network call (sw_batch_size)
mirrors = [1, 8]  # mirrored copies per window in one call (1, 2, 4, 8)
cards_gib = [24, 40, 80]  # GPU memory sizes for the "fits" columns
json = None  # also write every row to this JSON file
config = apply_overrides(globals())

network = build_network(model_variant, in_channels, num_classes, preset=preset, mc_samples=mc_samples)
model_class, model_config = type(network).__name__, network.config
del network
rows = []


def add(what, patch, batch, precision, estimate, **extra):
    row = {"what": what, "model_class": model_class, "preset": preset, "patch_size": list(patch),
           "batch_size": batch, "precision": precision, **extra, "peak_gib": round(estimate.peak_gib, 3),
           "parameter_gib": round(estimate.parameter_bytes / 2 ** 30, 3),
           "activation_gib": round(estimate.activation_bytes / 2 ** 30, 3),
           "fits_gib": [card for card in cards_gib if fits_on_card(estimate.peak_bytes, card)]}
    rows.append(row)
    options = (f"K={extra['mc_samples']} chunk={extra['mc_chunk'] or 'all'} ckpt={'on' if extra['checkpointing'] else 'off'}"
               if what == "train_step" else f"mirrors={extra['mirrors']}")
    fits = " ".join(("yes" if card in row["fits_gib"] else "no").rjust(6) for card in cards_gib)
    print(f"{what:<16}{'x'.join(map(str, patch)):>12}{batch:>4}{precision:>6}  {options:<28}"
          f"{row['peak_gib']:>9.2f}{row['activation_gib']:>9.2f}  {fits}", flush=True)


print(f"{model_class}({in_channels}, {num_classes}, preset={preset!r}): peak memory per step, GiB (estimated)")
print(f"{'what':<16}{'patch':>12}{'B':>4}{'prec':>6}  {'options':<28}{'peak':>9}{'activ.':>9}  "
      + " ".join(f"{card}G".rjust(6) for card in cards_gib))
for i, patch in enumerate(train_patches):
    options = [(chunk, ckpt) for chunk in mc_chunks for ckpt in checkpointing] if i == 0 else \
        [(mc_chunks[0], checkpointing[0])]
    for precision in precisions:
        for chunk, ckpt in options:
            estimate = estimate_train_step(model_class, model_config, patch, batch_size, precision, mc_chunk=chunk,
                                           checkpointing=ckpt)
            add("train_step", patch, batch_size, precision, estimate, mirrors=1,
                mc_samples=model_config.get("mc_samples"), mc_chunk=chunk, checkpointing=ckpt)
if sampling_patch:
    for precision in precisions:
        for m in mirrors:
            estimate = estimate_sampling_window(model_class, model_config, sampling_patch, sampling_batch, precision,
                                                mirrors=m)
            add("sampling_window", sampling_patch, sampling_batch, precision, estimate, mirrors=m)
print("peak: weights, gradients, momentum, batch, activations kept for backward and transients; "
      "activ.: the last two. fits: peak + 10 % + 1 GiB (CUDA context, workspaces) within the card.")
if json:
    write_json(rows, json)
    print(f"written {json}")
