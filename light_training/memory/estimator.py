"""Peak memory of a training step and of a sampling window, without running a convolution.

The network's real code runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes and
devices, no data, no arithmetic) under :class:`~light_training.memory.live_bytes.LiveBytes`, a
``TorchDispatchMode`` that adds the bytes of
every storage an op creates and subtracts them when the storage is freed (a ``weakref.finalize`` on the
storage object, which lives exactly as long as the storage). The peak is the largest sum seen right after
an op: what the allocator must hold at once, counting weights, gradients, the SGD momentum buffers,
activations kept for backward and transients. It is not a formula, so it follows the code: MC-Diff's K
passes, autocast's casts, the loss, the optimizer. The code is the trainer's and the inferer's own: the
step recipe of :mod:`light_training.training.step` with a :class:`TrainSettings`, and
:class:`~light_training.inference.prediction.MirroredSampler`.

The fake tensors are CPU tensors (fake CUDA tensors need a CUDA build for their random ops and autocast),
so autocast follows its CPU op lists. For this network's ops they cast alike on CUDA: convolutions,
transposed convolutions and linear layers run in the low precision, instance norm and LeakyReLU keep
their input's dtype, and the code itself casts to float32 where it needs it (softmax, losses, MBA). The
optimizer is SGD's multi-tensor ("foreach") form, CUDA's default, whose step holds two temporary copies
of the gradients. Convolutions take PyTorch's own kernel choice (``diffunet.conv.pytorch_choice``: the
CUDA path; the CPU's direct oneDNN calls have no fake-tensor kernels).

With ``cudnn_benchmark`` (what the stages set on CUDA) the estimate adds cuDNN's workspace: the algorithm
that ``cudnn.benchmark`` finds fastest may ask for a workspace as large as the step's largest convolution
output, counted once (:attr:`MemoryEstimate.workspace_bytes`; on an H200, issue 24, the benchmark step
held 0.71 GiB more than without, about one such output of the MC-Diff passes). fp16's GradScaler runs in
the step as in the trainer (it unscales in place: no copies; its extra 0.7 GiB on the H200 is the fp16
algorithms' workspace, which this term covers to within 10 %). :func:`estimate_volume` adds the
sliding-window inferer's whole-volume buffers to a window's estimate.

Not counted (add them when sizing a card): the CUDA context (about 0.3-0.6 GiB), cuBLAS workspaces,
the caching allocator's rounding and fragmentation (typically 5-15 %), and memory that kernels allocate
inside one op (oneDNN scratchpads on the CPU). ``tests/test_memory.py`` checks the estimate against the
peak of the same step on real CPU tensors, measured independently by the profiler's allocator events
(:func:`~light_training.memory.live_bytes.measure_cpu_peak`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from diffunet import network_from_config, set_memory_options
from diffunet.conv import pytorch_choice
from diffunet.uncertainty import SampleOutput
from light_training.inference.prediction import InferenceSettings, MirroredSampler, predict_ensemble
from light_training.memory.live_bytes import FakeLiveBytes, storage_bytes
from light_training.training.step import (TrainSettings, backward, clip_gradients, forward_loss, make_grad_scaler,
                                          make_optimizer)

__all__ = ["GIB", "MemoryEstimate", "estimate_train_step", "estimate_sampling_window", "estimate_volume",
           "mirror_axes_for", "train_step_setup", "train_step", "sampling_window_setup", "sampling_window"]

GIB = 1024 ** 3
# the estimated step's place in the schedule: past the first epoch, so every loss term is weighted
ESTIMATE_EPOCH, ESTIMATE_MAX_EPOCH = 1, 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one step. ``peak_bytes``: the most held at once (everything below included);
    ``parameter_bytes``: the weights; ``gradient_bytes``: their gradients (0 when sampling);
    ``optimizer_bytes``: SGD's momentum buffers (0 when sampling); ``input_bytes``: the batch itself;
    ``workspace_bytes``: cuDNN's with ``cudnn_benchmark``; ``buffer_bytes``: the inferer's whole-volume
    buffers held while the windows run (:func:`estimate_volume`)."""
    peak_bytes: int
    parameter_bytes: int
    gradient_bytes: int = 0
    optimizer_bytes: int = 0
    input_bytes: int = 0
    workspace_bytes: int = 0
    buffer_bytes: int = 0

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def activation_bytes(self) -> int:
        """The rest of the peak: activations kept for backward and transients."""
        return (self.peak_bytes - self.parameter_bytes - self.gradient_bytes - self.optimizer_bytes - self.input_bytes
                - self.workspace_bytes - self.buffer_bytes)


def mirror_axes_for(mirrors: int) -> tuple[int, ...]:
    """The spatial axes whose flip combinations give ``mirrors`` copies (1, 2, 4 or 8)."""
    axes = {1: (), 2: (0,), 4: (0, 1), 8: (0, 1, 2)}
    if mirrors not in axes:
        raise ValueError(f"mirrors={mirrors!r}: expected 1, 2, 4 or 8 (flips of 0-3 axes)")
    return axes[mirrors]


def _check(patch_size: Sequence[int], batch_size: int, precision: str) -> tuple[int, ...]:
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r}: expected a resolved precision, 'fp32', 'bf16' or 'fp16'")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tuple(int(p) for p in patch_size)


def _network(model_class: str, model_config: dict[str, Any], patch: tuple[int, ...]) -> torch.nn.Module:
    model = network_from_config(model_class, model_config)
    model.check_patch_size(patch)
    return model


def train_step_setup(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int], batch_size: int,
                     *, mc_chunk: int | None = None, checkpointing: bool = False,
                     settings: TrainSettings | None = None):
    """The network, the trainer's optimizer (:func:`~light_training.training.step.make_optimizer` with
    ``settings``, default :class:`TrainSettings`'s, in its multi-tensor form: CUDA's default) with momentum
    buffers (as after a first step) and one random batch (image ``(B, C, *patch)``, label ``(B, *patch)``)
    on the CPU: what :func:`train_step` runs on."""
    patch = tuple(int(p) for p in patch_size)
    model = _network(model_class, model_config, patch)
    set_memory_options(model, mc_chunk=mc_chunk, checkpointing=checkpointing)
    params = list(model.parameters())
    optimizer = make_optimizer(params, settings or TrainSettings(), foreach=True)
    for p in params:  # one step on zero gradients: the momentum buffers of every later step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    image = torch.randn(int(batch_size), model.config["in_channels"], *patch)
    label = torch.randint(0, model.num_classes, (int(batch_size), *patch))
    model.train()
    return model, optimizer, image, label


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor,
               precision: str, settings: TrainSettings | None = None) -> int:
    """The trainer's step (:mod:`light_training.training.step`) without its checks: forward and loss under
    autocast, backward (fp16: through the GradScaler, unscaled before clipping), gradient clipping at
    ``settings.grad_clip``, optimizer step. Returns the bytes of the gradients (freed before returning)."""
    settings = settings or TrainSettings()
    scaler = make_grad_scaler(image.device, precision)
    loss = forward_loss(model, image, label, precision, ESTIMATE_EPOCH, ESTIMATE_MAX_EPOCH)["loss"]
    backward(scaler, loss)
    del loss
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip_gradients(params, settings)
    optimizer.step()  # not scaler.step: it reads whether a gradient was inf, a value fake tensors do not have
    gradient_bytes = storage_bytes([p.grad for p in params if p.grad is not None])
    optimizer.zero_grad(set_to_none=True)
    return gradient_bytes


def estimate_train_step(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int],
                        batch_size: int, precision: str, *, mc_chunk: int | None = None,
                        checkpointing: bool = False, cudnn_benchmark: bool = False,
                        settings: TrainSettings | None = None) -> MemoryEstimate:
    """Peak memory of one steady-state training step (momentum buffers already there) of the network
    ``model_class`` (a checkpoint's name: "DiffUNet", "PlainUNet") built from ``model_config`` on a batch
    of ``batch_size`` patches ``patch_size`` (z, y, x) in ``precision`` ("fp32", "bf16", "fp16").

    The step is the trainer's (:func:`train_step`): forward and loss under autocast, backward, gradient
    clipping, SGD (Nesterov, weight decay, foreach). ``mc_chunk``/``checkpointing``: the memory options
    of the training constants; ``cudnn_benchmark``: add cuDNN's workspace (the module docstring);
    ``settings``: the recipe (optimizer, clipping; default :class:`TrainSettings`'s).
    """
    patch = _check(patch_size, batch_size, precision)
    tracker = FakeLiveBytes()
    with FakeTensorMode(), tracker, pytorch_choice():
        model, optimizer, image, label = train_step_setup(model_class, model_config, patch, batch_size,
                                                          mc_chunk=mc_chunk, checkpointing=checkpointing,
                                                          settings=settings)
        tracker.reset_peak()
        gradient_bytes = train_step(model, optimizer, image, label, precision, settings)
        momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
        workspace = tracker.largest_convolution if cudnn_benchmark else 0
        return MemoryEstimate(tracker.peak + workspace, storage_bytes(model.parameters()), gradient_bytes,
                              storage_bytes(momentum), storage_bytes([image, label]), workspace)


def sampling_window_setup(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int],
                          batch_size: int):
    """The network in eval mode and ``batch_size`` random windows ``(B, C, *patch)`` on the CPU."""
    patch = tuple(int(p) for p in patch_size)
    model = _network(model_class, model_config, patch).eval()
    return model, torch.randn(int(batch_size), model.config["in_channels"], *patch)


def sampling_window(model: torch.nn.Module, windows: torch.Tensor, precision: str, mirrors: int = 1) -> None:
    """One network call of the sliding-window prediction on ``windows`` (N, C, *patch), its ``mirrors``
    copies batched, with the mirrors' averaging; the outputs are dropped."""
    settings = InferenceSettings(patch_size=tuple(windows.shape[2:]), mirror_axes=mirror_axes_for(mirrors),
                                 sw_batch_size=windows.shape[0], precision=precision, batch_mirrors=True,
                                 progress=False)
    with torch.inference_mode():
        MirroredSampler(model, settings, windows.device)(windows)


def estimate_sampling_window(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int],
                             batch_size: int, precision: str, *, mirrors: int = 1,
                             cudnn_benchmark: bool = False) -> MemoryEstimate:
    """Peak memory of one network call of the sliding-window prediction: ``batch_size`` windows
    ``patch_size`` (z, y, x) times ``mirrors`` mirrored copies (1, 2, 4, 8) in one batch (as on CUDA),
    sampled in ``precision`` without gradients, with the mirrors' averaging; ``cudnn_benchmark``: with
    cuDNN's workspace (the module docstring). The whole-volume buffers of the inferer (the image, the
    blended outputs and their weights) are :func:`estimate_volume`'s."""
    patch = _check(patch_size, batch_size, precision)
    mirror_axes_for(mirrors)
    tracker = FakeLiveBytes()
    with FakeTensorMode(), tracker, pytorch_choice():
        model, windows = sampling_window_setup(model_class, model_config, patch, batch_size)
        tracker.reset_peak()
        sampling_window(model, windows, precision, mirrors)
        workspace = tracker.largest_convolution if cudnn_benchmark else 0
        return MemoryEstimate(tracker.peak + workspace, storage_bytes(model.parameters()),
                              input_bytes=storage_bytes([windows]), workspace_bytes=workspace)


class _WindowStandIn(torch.nn.Module):
    """The network's place in :func:`estimate_volume`: each call allocates and frees ``transient`` bytes (what
    the real call holds on top of its weights and input) and returns outputs of the real call's shapes."""

    def __init__(self, num_classes: int, transient: int):
        super().__init__()
        self.num_classes, self.transient = num_classes, transient

    def sample_members(self, image: torch.Tensor, steps: int | None = None, fusion: str | None = None):
        scratch = torch.empty(self.transient, dtype=torch.uint8, device=image.device)
        del scratch
        n, _, *spatial = image.shape
        probs = torch.zeros(n, self.num_classes, *spatial, device=image.device)
        return SampleOutput(probs, torch.zeros_like(probs), torch.zeros(n, *spatial, device=image.device), 1)


def estimate_volume(model_class: str, model_config: dict[str, Any], volume_shape: Sequence[int],
                    patch_size: Sequence[int], precision: str, *, mirrors: int = 1, sw_batch_size: int = 1,
                    uncertainty: str | None = "total", cudnn_benchmark: bool = False) -> MemoryEstimate:
    """Peak memory of predicting one whole volume ``(C, *volume_shape)`` (z, y, x; at least one window in
    every axis) with windows ``patch_size``, as :func:`light_training.inference.prediction.predict_volume`
    does with the buffers on the device: the inferer's own code (MONAI's sliding window, the mirrors'
    averaging, the final means and the ``uncertainty`` map; None: none) runs on fake tensors, with a stand-in
    for the network whose every call holds what :func:`estimate_sampling_window` puts over the weights and
    the input. ``buffer_bytes``: what the volume adds to the window's peak. The mirrored copies of a window
    are counted twice (by the window and by the inferer): a few MiB."""
    patch, volume = _check(patch_size, sw_batch_size, precision), tuple(int(v) for v in volume_shape)
    if len(volume) != len(patch) or any(v < p for v, p in zip(volume, patch)):
        raise ValueError(f"volume_shape={list(volume)}: expected at least one window {list(patch)} in every axis")
    window = estimate_sampling_window(model_class, model_config, patch, sw_batch_size, precision, mirrors=mirrors,
                                      cudnn_benchmark=cudnn_benchmark)
    transient = window.peak_bytes - window.parameter_bytes - window.input_bytes
    settings = InferenceSettings(patch_size=patch, mirror_axes=mirror_axes_for(mirrors), sw_batch_size=sw_batch_size,
                                 precision="fp32", batch_mirrors=True, uncertainty=uncertainty or "total",
                                 with_uncertainty=uncertainty is not None, progress=False)
    tracker = FakeLiveBytes()
    with FakeTensorMode(), tracker:
        image = torch.zeros(model_config["in_channels"], *volume)  # the device's copy of the volume
        weights = torch.ones(1, 1, *patch)  # the inferer's Gaussian window weights (MONAI computes them from values)
        predict_ensemble([(_WindowStandIn(model_config["num_classes"], transient), settings)], image,
                         torch.device("cpu"), roi_weight_map=weights)
    peak = tracker.peak + window.parameter_bytes
    return MemoryEstimate(peak, window.parameter_bytes, input_bytes=storage_bytes([image]),
                          workspace_bytes=window.workspace_bytes, buffer_bytes=max(0, peak - window.peak_bytes))


