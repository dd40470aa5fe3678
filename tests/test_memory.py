"""The memory estimator (light_training.memory) against the real peak of the same step on the CPU.

The real peak is measured independently of the estimator's storage counting: the running sum of the
CPU allocator's allocation and free events recorded by torch.profiler, which sees every allocation,
including those inside a kernel. Training batches of 2 or more (or bf16): with one fp32 patch the CPU's
convolution backward takes its slow path, whose column buffers (inside the kernel, absent on CUDA) the
estimator does not count.
"""
import json
import subprocess
import sys

import pytest
import torch

from diffunet import build_network
from light_training.inference.prediction import InferenceSettings, predict_volume
from light_training.memory.estimator import (estimate_sampling_window, estimate_train_step, estimate_volume,
                                             sampling_window, sampling_window_setup, train_step, train_step_setup)
from light_training.memory.fit import fit_problem, fits_on_card
from light_training.memory.live_bytes import LiveBytes, measure_cpu_peak
from light_training.training.step import TrainSettings


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _tiny(variant: str = "diffunet"):
    net = build_network(variant, 1, 3, preset="tiny")
    return type(net).__name__, net.config


def test_the_estimate_runs_the_trainers_optimizer():
    """The estimated step's optimizer is the trainer's (training.step.make_optimizer) with the given settings."""
    model_class, config = _tiny()
    settings = TrainSettings(lr=0.5, momentum=0.9, weight_decay=1e-4)
    _, optimizer, _, _ = train_step_setup(model_class, config, (16, 16, 16), 1, settings=settings)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"] and group["foreach"]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.9, 1e-4)


@pytest.mark.parametrize("variant,patch,batch,precision", [
    ("diffunet", (16, 24, 24), 2, "fp32"),
    ("diffunet", (24, 16, 32), 3, "bf16"),
    ("unet", (16, 24, 24), 2, "fp32"),
])
def test_train_step_estimate_matches_the_cpu_peak(variant, patch, batch, precision):
    model_class, config = _tiny(variant)
    estimate = estimate_train_step(model_class, config, patch, batch, precision)
    torch.manual_seed(0)
    model, optimizer, image, label = train_step_setup(model_class, config, patch, batch)
    momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert estimate.parameter_bytes == estimate.gradient_bytes == estimate.optimizer_bytes == _bytes(momentum)
    before = _bytes([*model.parameters(), *momentum, image, label])
    real = measure_cpu_peak(lambda: train_step(model, optimizer, image, label, precision), before)
    assert abs(estimate.peak_bytes / real - 1) < 0.15, (estimate.peak_bytes, real)
    assert estimate.activation_bytes > 3 * estimate.parameter_bytes  # the activations dominate


def test_sampling_window_estimate_matches_the_cpu_peak():
    model_class, config = _tiny()
    estimate = estimate_sampling_window(model_class, config, (16, 24, 24), 1, "bf16", mirrors=8)
    model, windows = sampling_window_setup(model_class, config, (16, 24, 24), 1)
    real = measure_cpu_peak(lambda: sampling_window(model, windows, "bf16", 8),
                            _bytes([*model.parameters(), windows]))
    assert abs(estimate.peak_bytes / real - 1) < 0.15, (estimate.peak_bytes, real)
    fewer = estimate_sampling_window(model_class, config, (16, 24, 24), 1, "bf16", mirrors=2)
    assert fewer.peak_bytes < estimate.peak_bytes


def test_live_bytes_counts_each_storage_once_while_it_lives():
    with LiveBytes() as tracker:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[10:]  # shares a's storage
        a.add_(1)  # in place: no new storage
        b = a * 2  # 4000 more
        assert tracker.current == 8000
        del a
        assert tracker.current == 8000  # the view keeps a's storage alive
        del view
        assert tracker.current == 4000
    assert tracker.peak == 8000
    del b
    assert tracker.current == 0


def test_bad_requests_are_refused():
    model_class, config = _tiny()
    with pytest.raises(ValueError, match="resolved precision"):
        estimate_train_step(model_class, config, (16, 24, 24), 2, "auto")
    with pytest.raises(ValueError, match="mirrors"):
        estimate_sampling_window(model_class, config, (16, 24, 24), 1, "fp32", mirrors=3)
    with pytest.raises(ValueError, match="patch size"):
        estimate_train_step(model_class, config, (15, 24, 24), 2, "fp32")


def test_fits_on_card():
    gib = 2 ** 30
    assert fits_on_card(20 * gib, 24) and not fits_on_card(21 * gib, 24)  # 20 * 1.1 + 1 = 23 <= 24 < 24.1
    assert fit_problem(20 * gib, 24) is None
    assert fit_problem(26.5 * gib, 24) == ("does not fit: estimated 26.5 GiB + 10% allocator + 1 GiB context = "
                                           "30.2 GiB > the card's 24.0 GiB")


def test_volume_estimate_matches_the_cpu_peak():
    """The whole volume: the window's peak on top of the inferer's buffers (its image, blended sums, weights,
    the final means and the uncertainty map), measured by the profiler on a real prediction."""
    model_class, config = _tiny()
    volume, patch = (24, 40, 32), (16, 16, 16)
    estimate = estimate_volume(model_class, config, volume, patch, "fp32")
    torch.manual_seed(0)
    model = build_network("diffunet", 1, 3, preset="tiny").eval()
    settings = InferenceSettings(patch_size=patch, mirror_axes=(), precision="fp32", progress=False)
    image = torch.zeros(1, *volume)
    real = measure_cpu_peak(lambda: predict_volume(model, image, settings, torch.device("cpu")),
                            _bytes(model.parameters()))
    assert abs(estimate.peak_bytes / real - 1) < 0.1, (estimate.peak_bytes, real)
    window = estimate_sampling_window(model_class, config, patch, 1, "fp32")
    assert estimate.buffer_bytes > 0 and estimate.peak_bytes == window.peak_bytes + estimate.buffer_bytes
    with pytest.raises(ValueError, match="at least one window"):
        estimate_volume(model_class, config, (8, 40, 32), patch, "fp32")


def test_cudnn_benchmark_adds_the_largest_convolution_output():
    model_class, config = _tiny()
    plain = estimate_train_step(model_class, config, (16, 16, 16), 2, "bf16")
    benchmark = estimate_train_step(model_class, config, (16, 16, 16), 2, "bf16", cudnn_benchmark=True)
    # the largest convolution output: the MC-Diff passes' top decoder stage, K x B x 8 channels, bf16
    assert benchmark.workspace_bytes == 3 * 2 * 8 * 16 ** 3 * 2
    assert benchmark.peak_bytes == plain.peak_bytes + benchmark.workspace_bytes and plain.workspace_bytes == 0
    window = estimate_sampling_window(model_class, config, (16, 16, 16), 1, "bf16", mirrors=8, cudnn_benchmark=True)
    assert window.workspace_bytes == 8 * 8 * 16 ** 3 * 2  # 8 mirrors x 8 channels at the top stage, bf16


def test_bench_memory_writes_its_rows(repo_root, tmp_path):
    out = tmp_path / "memory.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_memory.py", "--preset=tiny", "--train_patches=[[16,24,24]]",
                             "--precisions=['fp32']", "--mc_chunks=[None,1]", "--checkpointing=[False]",
                             "--sampling_patch=[16,24,24]", "--mirrors=[1]", f"--json={out}"],
                            cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["what"] for r in rows] == ["train_step", "train_step", "sampling_window"]
    assert [r["mc_chunk"] for r in rows[:2]] == [None, 1] and rows[1]["peak_gib"] < rows[0]["peak_gib"]
    for row in rows:
        assert {"what", "preset", "patch_size", "batch_size", "precision", "mirrors", "peak_gib"} <= set(row)
        assert row["preset"] == "tiny" and row["patch_size"] == [16, 24, 24] and row["peak_gib"] > 0
    assert rows[0]["peak_gib"] > rows[2]["peak_gib"]  # training keeps activations, gradients, momentum
