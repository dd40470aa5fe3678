"""Live bytes: what the ops run under a ``TorchDispatchMode`` hold at once, and the CPU allocator's own peak.

:class:`LiveBytes` adds the bytes of every storage an op creates and subtracts them when the storage is
freed (a ``weakref.finalize`` on the storage object, which lives exactly as long as the storage); the
peak is the largest sum seen right after an op. :class:`FakeLiveBytes` does so under a
``FakeTensorMode`` (shapes, dtypes and devices, no data), keeping the values of tiny integral tensors
that code reads back. :func:`measure_cpu_peak` is the independent check: the profiler's allocator events
of a real run on the CPU.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch._C._profiler import _EventType
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["LiveBytes", "FakeLiveBytes", "storage_bytes", "measure_cpu_peak"]


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


class FakeLiveBytes(LiveBytes):
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


def storage_bytes(tensors) -> int:
    """Bytes of the storages of ``tensors`` (each counted as often as it is given)."""
    return sum(t.untyped_storage().nbytes() for t in tensors)


def measure_cpu_peak(step: Callable[[], Any], live_before: int) -> int:
    """The real peak bytes of running ``step()`` on the CPU: ``live_before`` (what is allocated when it
    starts) plus the highest running sum of the allocations and frees that the CPU allocator reports
    to ``torch.profiler`` (every allocation, including those inside a kernel)."""
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
