"""Peak memory of a training step and of a sampling window, without running a convolution.

The network's real code runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes and
devices, no data, no arithmetic) under :class:`LiveBytes`, a ``TorchDispatchMode`` that adds the bytes of
every storage an op creates and subtracts them when the storage is freed (a ``weakref.finalize`` on the
storage object, which lives exactly as long as the storage). The peak is the largest sum seen right after
an op: what the allocator must hold at once, counting weights, gradients, the SGD momentum buffers,
activations kept for backward and transients. It is not a formula, so it follows the code: MC-Diff's K
passes, autocast's casts, the loss, the optimizer.

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
inside one op (oneDNN scratchpads on the CPU). ``tests/test_memory.py`` checks the estimate against the peak of the same step on real CPU
tensors, measured independently by the profiler's allocator events.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from diffunet.conv import pytorch_choice

__all__ = ["GIB", "CUDA_RESERVED_GIB", "ALLOCATOR_MARGIN", "fits_on_card", "fit_problem", "MemoryEstimate",
           "LiveBytes", "estimate_train_step", "estimate_sampling_window", "estimate_volume", "mirror_axes_for",
           "train_step_setup", "train_step", "sampling_window_setup", "sampling_window", "measure_cpu_peak"]

GIB = 1024 ** 3
CUDA_RESERVED_GIB = 1.0  # CUDA context, cuDNN/cuBLAS workspaces: not in an estimate
ALLOCATOR_MARGIN = 0.10  # the caching allocator's rounding and fragmentation, as a share of the peak


def fits_on_card(peak_bytes: int, card_gib: float, reserved_gib: float = CUDA_RESERVED_GIB,
                 margin: float = ALLOCATOR_MARGIN) -> bool:
    """Whether a step whose estimated peak is ``peak_bytes`` fits a GPU of ``card_gib`` GiB (a "24 GB"
    card has 24 GiB): ``peak (1 + margin) + reserved <= card``."""
    return peak_bytes * (1 + margin) / GIB + reserved_gib <= card_gib


def fit_problem(peak_bytes: int, card_gib: float, reserved_gib: float = CUDA_RESERVED_GIB,
                margin: float = ALLOCATOR_MARGIN) -> str | None:
    """None when :func:`fits_on_card`, else why not, with the numbers (for a row that is skipped)."""
    if fits_on_card(peak_bytes, card_gib, reserved_gib, margin):
        return None
    need = peak_bytes * (1 + margin) / GIB + reserved_gib
    return (f"does not fit: estimated {peak_bytes / GIB:.1f} GiB + {margin:.0%} allocator + {reserved_gib:g} GiB "
            f"context = {need:.1f} GiB > the card's {card_gib:.1f} GiB")


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


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that the ops run under it create, while they live.

    ``current``: bytes alive now; ``peak``: the most alive right after any op (since the last
    :meth:`reset_peak`). Views and in-place results share their input's storage and are not counted
    twice. Tensors made before the mode was entered are not counted unless passed to :meth:`track`.
    Works on real tensors (any device) and on fake ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}  # storage address (cdata) -> bytes
        self.current = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self._sizes.pop(key, 0)

    def track(self, tensors: Any) -> None:
        """Count the storages of ``tensors`` (a tensor or any nesting of lists/tuples/dicts of them)."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, size = StorageWeakRef(storage).cdata, storage.nbytes()
                if key not in self._sizes:
                    weakref.finalize(storage, self._freed, key)
                    self._sizes[key] = 0
                self.current += size - self._sizes[key]  # a resized storage counts its new size
                self._sizes[key] = size
        self.peak = max(self.peak, self.current)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(out)
        return out


class _FakeLiveBytes(LiveBytes):
    """:class:`LiveBytes` under a FakeTensorMode, with the values of tiny tensors kept: an op whose tensor
    inputs all have known values (or that has none, like ``torch.arange(2, 5)``) and whose result is
    integral with at most ``_SMALL`` elements is also run (on the CPU) on real tensors, so that code reading such a value back
    (``.tolist()``, ``int(t)``; MONAI's Dice loss does) gets it. Every large tensor stays fake."""

    _SMALL = 64
    _CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                     torch.ops.aten.conv3d.default, torch.ops.aten.conv_transpose3d.input)  # the last two: inference

    def __init__(self) -> None:
        super().__init__()
        self._values: WeakIdKeyDictionary = WeakIdKeyDictionary()  # fake tensor -> its real value
        self.largest_convolution = 0  # bytes of the largest tensor a convolution (or its backward) made

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        inputs = [a for a in flat if isinstance(a, torch.Tensor)]
        known = all(a in self._values for a in inputs)
        if func is torch.ops.aten._local_scalar_dense.default and known and inputs:
            with unset_fake_temporarily():
                return self._values[inputs[0]].item()
        out = super().__torch_dispatch__(func, types, args, kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if func in self._CONVOLUTIONS:
            self.largest_convolution = max([self.largest_convolution, *(t.nbytes for t in outputs)])
        if known and outputs and all(t.numel() <= self._SMALL and not t.is_floating_point() for t in outputs):
            real_args, real_kwargs = tree_map(lambda a: self._values[a] if isinstance(a, torch.Tensor) else a,
                                              (args, kwargs))
            if "device" in real_kwargs:  # the values are kept on the CPU
                real_kwargs["device"] = torch.device("cpu")
            with unset_fake_temporarily():
                real_out = func(*real_args, **real_kwargs)
            for fake, real in zip(outputs, [t for t in tree_flatten(real_out)[0] if isinstance(t, torch.Tensor)]):
                self._values[fake] = real
        return out


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


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
    from diffunet import network_from_config

    model = network_from_config(model_class, model_config)
    model.check_patch_size(patch)
    return model


def train_step_setup(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int], batch_size: int,
                     *, mc_chunk: int | None = None, checkpointing: bool = False):
    """The network, its SGD optimizer with momentum buffers (as after a first step) and one random batch
    (image ``(B, C, *patch)``, label ``(B, *patch)``) on the CPU: what :func:`train_step` runs on."""
    patch = tuple(int(p) for p in patch_size)
    from diffunet import set_memory_options

    model = _network(model_class, model_config, patch)
    set_memory_options(model, mc_chunk=mc_chunk, checkpointing=checkpointing)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5, foreach=True)
    for p in params:  # one step on zero gradients: the momentum buffers of every later step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    image = torch.randn(int(batch_size), model.config["in_channels"], *patch)
    label = torch.randint(0, model.num_classes, (int(batch_size), *patch))
    model.train()
    return model, optimizer, image, label


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor,
               precision: str) -> int:
    """The trainer's step without its checks: forward and loss under autocast, backward (fp16: through the
    GradScaler, unscaled before clipping), gradient clipping, optimizer step. Returns the bytes of the
    gradients (freed before returning)."""
    from light_training.runtime import autocast_context
    from light_training.training.loss import training_loss

    scaler = torch.amp.GradScaler(image.device.type, enabled=precision == "fp16")
    with autocast_context(image.device, precision):
        output = model(image, label)
        loss = training_loss(output, label, 1, 2)["loss"]
    del output
    scaler.scale(loss).backward()
    del loss
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 12.0)
    optimizer.step()  # not scaler.step: it reads whether a gradient was inf, a value fake tensors do not have
    gradient_bytes = _bytes([p.grad for p in params if p.grad is not None])
    optimizer.zero_grad(set_to_none=True)
    return gradient_bytes


def estimate_train_step(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int],
                        batch_size: int, precision: str, *, mc_chunk: int | None = None,
                        checkpointing: bool = False, cudnn_benchmark: bool = False) -> MemoryEstimate:
    """Peak memory of one steady-state training step (momentum buffers already there) of the network
    ``model_class`` (a checkpoint's name: "DiffUNet", "PlainUNet") built from ``model_config`` on a batch
    of ``batch_size`` patches ``patch_size`` (z, y, x) in ``precision`` ("fp32", "bf16", "fp16").

    The step is the trainer's (:func:`train_step`): forward and loss under autocast, backward, gradient
    clipping, SGD (Nesterov, weight decay, foreach). ``mc_chunk``/``checkpointing``: the memory options
    of the training constants; ``cudnn_benchmark``: add cuDNN's workspace (the module docstring).
    """
    patch = _check(patch_size, batch_size, precision)
    tracker = _FakeLiveBytes()
    with FakeTensorMode(), tracker, pytorch_choice():
        model, optimizer, image, label = train_step_setup(model_class, model_config, patch, batch_size,
                                                          mc_chunk=mc_chunk, checkpointing=checkpointing)
        tracker.reset_peak()
        gradient_bytes = train_step(model, optimizer, image, label, precision)
        momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
        workspace = tracker.largest_convolution if cudnn_benchmark else 0
        return MemoryEstimate(tracker.peak + workspace, _bytes(model.parameters()), gradient_bytes, _bytes(momentum),
                              _bytes([image, label]), workspace)


def sampling_window_setup(model_class: str, model_config: dict[str, Any], patch_size: Sequence[int],
                          batch_size: int):
    """The network in eval mode and ``batch_size`` random windows ``(B, C, *patch)`` on the CPU."""
    patch = tuple(int(p) for p in patch_size)
    model = _network(model_class, model_config, patch).eval()
    return model, torch.randn(int(batch_size), model.config["in_channels"], *patch)


def sampling_window(model: torch.nn.Module, windows: torch.Tensor, precision: str, mirrors: int = 1) -> None:
    """One network call of the sliding-window prediction on ``windows`` (N, C, *patch), its ``mirrors``
    copies batched, with the mirrors' averaging; the outputs are dropped."""
    from light_training.inference.prediction import InferenceSettings, _MirroredSampler

    settings = InferenceSettings(patch_size=tuple(windows.shape[2:]), mirror_axes=mirror_axes_for(mirrors),
                                 sw_batch_size=windows.shape[0], precision=precision, batch_mirrors=True,
                                 progress=False)
    with torch.inference_mode():
        _MirroredSampler(model, settings, windows.device)(windows)


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
    tracker = _FakeLiveBytes()
    with FakeTensorMode(), tracker, pytorch_choice():
        model, windows = sampling_window_setup(model_class, model_config, patch, batch_size)
        tracker.reset_peak()
        sampling_window(model, windows, precision, mirrors)
        workspace = tracker.largest_convolution if cudnn_benchmark else 0
        return MemoryEstimate(tracker.peak + workspace, _bytes(model.parameters()), input_bytes=_bytes([windows]),
                              workspace_bytes=workspace)


class _WindowStandIn(torch.nn.Module):
    """The network's place in :func:`estimate_volume`: each call allocates and frees ``transient`` bytes (what
    the real call holds on top of its weights and input) and returns outputs of the real call's shapes."""

    def __init__(self, num_classes: int, transient: int):
        super().__init__()
        self.num_classes, self.transient = num_classes, transient

    def sample_members(self, image: torch.Tensor, steps: int | None = None, fusion: str | None = None):
        from diffunet.uncertainty import SampleOutput

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
    from light_training.inference.prediction import InferenceSettings, predict_ensemble

    patch, volume = _check(patch_size, sw_batch_size, precision), tuple(int(v) for v in volume_shape)
    if len(volume) != len(patch) or any(v < p for v, p in zip(volume, patch)):
        raise ValueError(f"volume_shape={list(volume)}: expected at least one window {list(patch)} in every axis")
    window = estimate_sampling_window(model_class, model_config, patch, sw_batch_size, precision, mirrors=mirrors,
                                      cudnn_benchmark=cudnn_benchmark)
    transient = window.peak_bytes - window.parameter_bytes - window.input_bytes
    settings = InferenceSettings(patch_size=patch, mirror_axes=mirror_axes_for(mirrors), sw_batch_size=sw_batch_size,
                                 precision="fp32", batch_mirrors=True, uncertainty=uncertainty or "total",
                                 with_uncertainty=uncertainty is not None, progress=False)
    tracker = _FakeLiveBytes()
    with FakeTensorMode(), tracker:
        image = torch.zeros(model_config["in_channels"], *volume)  # the device's copy of the volume
        weights = torch.ones(1, 1, *patch)  # the inferer's Gaussian window weights (MONAI computes them from values)
        predict_ensemble([(_WindowStandIn(model_config["num_classes"], transient), settings)], image,
                         torch.device("cpu"), roi_weight_map=weights)
    peak = tracker.peak + window.parameter_bytes
    return MemoryEstimate(peak, window.parameter_bytes, input_bytes=_bytes([image]),
                          workspace_bytes=window.workspace_bytes, buffer_bytes=max(0, peak - window.peak_bytes))


def measure_cpu_peak(step: Callable[[], Any], live_before: int) -> int:
    """The real peak bytes of running ``step()`` on the CPU: ``live_before`` (what is allocated when it
    starts) plus the highest running sum of the allocations and frees that the CPU allocator reports
    to ``torch.profiler`` (every allocation, including those inside a kernel)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    running = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        running += size
        peak = max(peak, running)
    return live_before + peak
