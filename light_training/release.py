"""The original Diff-UNet release (github.com/ge-xing/DiffUNet) and its state dicts: how to recognise one, and
how it becomes a checkpoint of ours.

The converted checkpoint loads like any checkpoint of this project (:func:`light_training.checkpoint.load_checkpoint`
+ ``build_model``). Its model config reproduces the release's inference: log-SNR(t) as the time input when
sampling, the mean of the step logits ("mean" fusion) plus the boundary logits, the boundary branch trained
on the segmentation; so, from the same starting noise, ``DiffUNet.sample`` gives the release's
``softmax(model(x, ddim=True))``. The architecture (stages, features, strides, classes, channels) is read
from the tensor shapes. The command line: ``tools/convert_release.py``.

What changes on the way: the release's decoders hold their encoder as a submodule, so each encoder tensor
appears under two keys (``*.encoder.*`` and ``*.decoder.encoder.*``): both are checked to be equal and
mapped once. Modules the release builds but never calls are dropped and listed: the 1x1x1 MBA conv at the
bottleneck (the bottleneck uses the parameter-free affinity fusion) and the deep-supervision heads of the
four lower decoder stages of both U-Nets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from diffunet.model import DiffUNet

__all__ = ["RELEASE_EDGE_PREFIX", "RELEASE_DENOISE_PREFIX", "RELEASE_INFERENCE", "RELEASE_PATCH_SIZE", "ConversionReport",
           "is_release_state", "release_tensors", "release_architecture", "map_release_key", "convert_state_dict",
           "release_checkpoint"]

# a state dict of the original release: its two networks' key prefixes
RELEASE_EDGE_PREFIX, RELEASE_DENOISE_PREFIX = "edge_model.", "denoise_model."
# the release's inference, as options of ours (diffunet/diffunet_model.py and nnunet3d_denoise.py there)
RELEASE_PATCH_SIZE = [128, 128, 128]  # the paper's training patch: the sliding window a converted checkpoint predicts with
RELEASE_INFERENCE = {"sampling_time_input": "logsnr", "fusion": "mean", "add_boundary_logits": True,
                     "boundary_target": "segmentation", "steps": 3, "rand_steps": 1, "mc_samples": 3,
                     "bit_scale": 0.001}


@dataclass
class ConversionReport:
    """``dropped``: release keys left out, with the reason; ``dropped_parameters``: their parameter count
    (each tensor once); ``aliases``: release keys naming a tensor that another key names, checked equal."""
    dropped: list[str] = field(default_factory=list)
    dropped_parameters: int = 0
    aliases: list[str] = field(default_factory=list)


def is_release_state(obj: Any) -> bool:
    """Whether a loaded file is a state dict of the original release (as the converter accepts it)."""
    try:
        release_tensors(obj)
    except (ValueError, AttributeError):  # AttributeError: not a dict at all
        return False
    return True


def release_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a release file: a plain state dict, or one under "state_dict"/"model"/"module";
    a DataParallel "module." prefix is removed."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state.get(key), dict):
            state = state[key]
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key[len("module."):] if key.startswith("module.") else key] = value
    if not any(k.startswith(RELEASE_EDGE_PREFIX) for k in out) or not any(k.startswith(RELEASE_DENOISE_PREFIX) for k in out):
        raise ValueError(f"not a state dict of the original Diff-UNet release: expected keys under "
                         f"{RELEASE_EDGE_PREFIX!r} and {RELEASE_DENOISE_PREFIX!r}, got e.g. {sorted(out)[:3]}")
    return out


def release_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``in_channels``, ``num_classes`` and our shape options, read from the release's tensor shapes."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"release state dict lacks {key!r}")
        return tuple(state[key].shape)

    stage_ids = {int(m.group(1)) for k in state if (m := re.match(r"edge_model\.encoder\.stages\.(\d+)\.", k))}
    n = len(stage_ids)
    if n < 2 or stage_ids != set(range(n)):
        raise ValueError(f"release encoder stages {sorted(stage_ids)} are not 0..n-1 with n >= 2")
    first = shape("edge_model.encoder.stages.0.0.convs.0.conv.weight")  # (F0, C, k, k, k)
    convs = len({k for k in state if re.match(r"edge_model\.encoder\.stages\.0\.0\.convs\.\d+\.conv\.weight$", k)})
    strides: list[Any] = [1]  # nnU-Net's first stage never down-samples (the release: [1, 1, 1])
    for s in range(1, n):  # a transposed conv's kernel equals its stride; transpconvs.0 undoes the bottleneck
        kernel = shape(f"edge_model.decoder.transpconvs.{n - 1 - s}.weight")[2:]
        strides.append(kernel[0] if len(set(kernel)) == 1 else list(kernel))
    return {
        "in_channels": first[1],
        "num_classes": shape(RELEASE_DENOISE_PREFIX + "embedding_table.weight")[0],
        "features": [shape(f"edge_model.encoder.stages.{s}.0.convs.0.conv.weight")[0] for s in range(n)],
        "strides": strides,
        "convs_per_stage": convs,
        "kernel_size": first[-1],
        "time_dim": shape(RELEASE_DENOISE_PREFIX + "time_mlp.1.weight")[0],
        "time_fourier_dim": 2 * shape(RELEASE_DENOISE_PREFIX + "time_mlp.0.weights")[0],
    }


def map_release_key(key: str, num_stages: int) -> tuple[str | None, str]:
    """Our name for a release key, or None and why it is dropped. ``num_stages``: encoder stages."""
    top_head = str(num_stages - 2)  # seg_layers[-1]: the head of the top decoder stage
    rules = (  # (release pattern, our name); the first that matches applies
        (r"edge_model\.(?:decoder\.)?encoder\.(.*)", r"boundary.encoder.\1"),
        (r"edge_model\.decoder\.stages\.(.*)", r"boundary.decoder.blocks.\1"),
        (r"edge_model\.decoder\.transpconvs\.(.*)", r"boundary.decoder.up.\1"),
        (rf"edge_model\.decoder\.seg_layers\.{top_head}\.(.*)", r"boundary.decoder.head.\1"),
        (r"denoise_model\.(?:decoder\.)?encoder\.stages\.(\d+)\.0\.conv0\.(.*)", r"denoiser.stages.\1.first.\2"),
        (r"denoise_model\.(?:decoder\.)?encoder\.stages\.(\d+)\.0\.convs\.(.*)", r"denoiser.stages.\1.rest.\2"),
        (r"denoise_model\.(?:decoder\.)?encoder\.stages\.(\d+)\.0\.temb_proj\.(.*)", r"denoiser.stages.\1.time_proj.1.\2"),
        (r"denoise_model\.decoder\.stages\.(\d+)\.conv0\.(.*)", r"denoiser.decoder.blocks.\1.first.\2"),
        (r"denoise_model\.decoder\.stages\.(\d+)\.convs\.(.*)", r"denoiser.decoder.blocks.\1.rest.\2"),
        (r"denoise_model\.decoder\.stages\.(\d+)\.temb_proj\.(.*)", r"denoiser.decoder.blocks.\1.time_proj.1.\2"),
        (r"denoise_model\.decoder\.transpconvs\.(.*)", r"denoiser.decoder.up.\1"),
        (rf"denoise_model\.decoder\.seg_layers\.{top_head}\.(.*)", r"denoiser.decoder.head.\1"),
        (r"denoise_model\.embedding_table\.(.*)", r"label_embedding.table.\1"),
        (r"denoise_model\.time_mlp\.0\.weights", "denoiser.time_embedding.freqs"),
        (r"denoise_model\.time_mlp\.1\.(.*)", r"denoiser.time_embedding.mlp.0.\1"),
        (r"denoise_model\.time_mlp\.3\.(.*)", r"denoiser.time_embedding.mlp.2.\1"),
    )
    bottleneck = num_stages - 1
    if re.fullmatch(rf"denoise_model\.(?:decoder\.)?encoder\.transforms\.{bottleneck}\..*", key):
        return None, "MBA conv at the bottleneck, never called (the bottleneck uses affinity fusion)"
    if m := re.fullmatch(r"denoise_model\.(?:decoder\.)?encoder\.transforms\.(\d+)\.(.*)", key):
        return f"denoiser.mba.convs.{m.group(1)}.{m.group(2)}", ""
    if re.fullmatch(rf"(edge|denoise)_model\.decoder\.seg_layers\.(?!{top_head}\.)\d+\..*", key):
        return None, "deep-supervision head of a lower decoder stage, never called"
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key), ""
    return None, "unknown key"


def convert_state_dict(release: dict[str, Any]) -> tuple[DiffUNet, ConversionReport]:
    """Our :class:`DiffUNet` with the release's weights (loaded with ``strict=True``) and a report of the
    keys dropped and of the aliases (release keys that name a tensor another key already names: the
    decoders' copy of their encoder, and the ``all_modules`` views of nnU-Net's conv blocks), every alias
    checked equal to the first key of its tensor. Raises ValueError on
    an unknown key, on two keys of one tensor that differ, or on a tensor of ours left without a value."""
    state = release_tensors(release)
    arch = release_architecture(state)
    in_channels, num_classes = arch.pop("in_channels"), arch.pop("num_classes")
    model = DiffUNet(in_channels, num_classes, preset="paper", **arch, **RELEASE_INFERENCE)
    ours = model.state_dict()
    tensor_of = {}  # our key -> the first of our keys naming the same tensor
    for key, value in ours.items():
        tensor_of[key] = next(k for k in ours if ours[k].data_ptr() == value.data_ptr()
                              and ours[k].shape == value.shape)
    sources: dict[str, list[str]] = {}  # one of our tensors -> the release keys that name it
    report, dropped_tensors = ConversionReport(), {}
    for key in state:
        mapped, why = map_release_key(key, len(arch["features"]))
        if mapped is None:
            if why == "unknown key":
                raise ValueError(f"release key {key!r} has no counterpart here")
            report.dropped.append(f"{key} {tuple(state[key].shape)}: {why}")
            dropped_tensors[key.replace("decoder.encoder.", "encoder.")] = state[key].numel()
        elif mapped not in ours:
            raise ValueError(f"release key {key!r} maps to {mapped!r}, which this DiffUNet does not have")
        else:
            sources.setdefault(tensor_of[mapped], []).append(key)
    converted = {}
    for key in ours:
        keys = sources.get(tensor_of[key])
        if not keys:
            raise ValueError(f"no release tensor for {key!r}")
        converted[key] = state[keys[0]]
    for keys in sources.values():
        for other in keys[1:]:
            if not torch.equal(state[keys[0]], state[other]):
                raise ValueError(f"release keys {keys[0]!r} and {other!r} should hold the same tensor but differ")
            report.aliases.append(f"{other} = {keys[0]}")
    report.dropped_parameters = sum(dropped_tensors.values())
    model.load_state_dict(converted, strict=True)
    return model.eval(), report


def release_checkpoint(release: dict[str, Any], source: str = "", plans: dict[str, Any] | None = None,
                       dataset: str = "release", channel_names: Sequence[str] | None = None,
                       label_names: Sequence[str] | None = None, patch_size: Sequence[int] | None = None
                       ) -> tuple[dict[str, Any], ConversionReport]:
    """A checkpoint dict of ours (``model_class``, ``model_config``, ``model``, ``plans``, ``config``) from a
    release state dict, and the report of :func:`convert_state_dict`. ``plans``: a full plan of ours to
    store (then prediction can preprocess raw images like our training data); otherwise a minimal one
    from ``dataset``, ``channel_names`` and ``label_names`` (labels 0..K-1). ``patch_size`` (z, y, x): the
    sliding window prediction uses (the checkpoint's training patch, as for our own checkpoints); None: the
    plan's planned patch, else :data:`RELEASE_PATCH_SIZE`."""
    model, report = convert_state_dict(release)
    c = model.config
    if plans is None:
        channels = list(channel_names or [f"channel_{i}" for i in range(c["in_channels"])])
        names = list(label_names or ["background"] + [f"class_{k}" for k in range(1, c["num_classes"])])
        plans = {"dataset": dataset, "channel_names": channels, "labels": list(range(c["num_classes"])),
                 "label_names": names, "num_classes": c["num_classes"]}
    if len(plans["channel_names"]) != c["in_channels"] or len(plans["labels"]) != c["num_classes"]:
        raise ValueError(f"the release network takes {c['in_channels']} channel(s) and predicts {c['num_classes']} "
                         f"classes; the plan names {len(plans['channel_names'])} channel(s) and "
                         f"{len(plans['labels'])} label(s)")
    if patch_size is None:
        patch_size = (plans.get("network") or {}).get("patch_size", RELEASE_PATCH_SIZE)
    patch_size = [int(p) for p in patch_size]
    model.check_patch_size(patch_size)
    checkpoint = {"model_class": type(model).__name__, "model_config": dict(c), "model": model.state_dict(),
                  "plans": plans, "config": {"converted_from": source, "dropped": report.dropped,
                                             "patch_size": patch_size}}
    return checkpoint, report
