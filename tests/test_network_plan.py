"""The network planner (light_training/planning/network_plan.py) and the training step's memory checks
(light_training/memory/fit.py).

The rules are checked on three fingerprints with a stand-in estimator (1 GiB + 4,500 bytes per patch voxel:
close to the paper network's slope, and instant); the real estimator (light_training/memory/estimator.py, the paper
network on fake tensors) plans the three fingerprints of docs/own_dataset.md below, and the shipped example in
tests/test_own_dataset.py. One real estimate takes about 1.7-2.7 s (Intel Xeon, Sapphire Rapids class, 2 cores,
other processes running beside), and the three plans need 18: they are made once for this file.
"""
import math
from pathlib import Path

import pytest
import torch

from light_training.memory.estimator import GIB
from light_training.memory.fit import check_gpu_memory, memory_verdict, over_budget_warning, settings_to_try
from light_training.planning.network_plan import describe_network, network_topology, plan_network, planned_model_options
from light_training.plans import Plans


def linear_estimator(model_class, model_config, patch_size, batch_size, precision):
    assert model_class == "DiffUNet" and precision == "bf16"
    assert len(model_config["strides"]) == len(model_config["kernel_size"]) == len(model_config["features"])
    return int(GIB + 4500 * batch_size * math.prod(patch_size))


def iso(n):
    return [[3, 3, 3]] * n


FINGERPRINTS = {  # median shape after resampling (z, y, x), spacing (z, y, x) mm -> patch, strides, kernels
    "brain MRI, 1 mm isotropic": ((138, 170, 138), (1.0, 1.0, 1.0), [128, 128, 128],
                                  [[1, 1, 1]] + [[2, 2, 2]] * 5, iso(6)),
    # 0.7 x 0.7 mm in plane, 0.5 mm slices: within a factor 2, so isotropic pooling and kernels; the patch keeps
    # the image's aspect (z longest) and y, x stop pooling when 7 voxels remain
    "chest CT, 0.5 x 0.7 x 0.7 mm": ((640, 512, 512), (0.5, 0.7, 0.7), [160, 112, 112],
                                     [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[2, 1, 1]], iso(6)),
    # 5 mm slices: in-plane pooling first (z is more than twice the in-plane spacing until 3.2 mm), 1x3x3
    # kernels on the two top stages, z pooled twice, y and x five times
    "pelvis MRI, 5 x 0.8 x 0.8 mm": ((24, 320, 320), (5.0, 0.8, 0.8), [24, 320, 288],
                                     [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                                     [[1, 3, 3], [1, 3, 3]] + iso(4)),
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_plans_of_three_fingerprints(name):
    median, spacing, patch, strides, kernels = FINGERPRINTS[name]
    plan = plan_network(median, spacing, 1, 2, gpu_memory_target_gb=20, num_cases=100, estimator=linear_estimator)
    assert (plan["patch_size"], plan["strides"], plan["kernel_sizes"]) == (patch, strides, kernels)
    assert plan["batch_size"] == 2 and plan["estimated_peak_gib"] <= 20
    assert all(p <= m for p, m in zip(plan["patch_size"], median))  # never larger than the median image
    assert plan["estimator_calls"] <= 12  # a handful of estimates, not a scan
    assert plan["features"] == [32, 64, 128, 256, 320, 320]
    total = [math.prod(s[a] for s in strides) for a in range(3)]
    assert all(p % t == 0 and p // t >= 4 for p, t in zip(patch, total))  # at least 4 bottleneck voxels per axis


# the table of plans made with the real estimator for 20 GiB (docs/own_dataset.md, "The planned network"):
# median image after resampling (z, y, x), spacing (z, y, x) mm -> patch, strides, kernels (batch 2)
DOCUMENTED_PLANS = {
    "brain MRI, 138 x 170 x 138": ((138, 170, 138), (1.0, 1.0, 1.0), [128, 160, 128],
                                   [[1, 1, 1]] + [[2, 2, 2]] * 5, iso(6)),
    "chest CT, 640 x 512 x 512": ((640, 512, 512), (0.5, 0.7, 0.7), [160, 128, 128],
                                  [[1, 1, 1]] + [[2, 2, 2]] * 5, iso(6)),
    "pelvis MRI, 24 x 320 x 320": ((24, 320, 320), (5.0, 0.8, 0.8), [24, 320, 288],
                                   [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                                   [[1, 3, 3], [1, 3, 3]] + iso(4)),
}


@pytest.fixture(scope="module")
def real_plans():
    """The three plans by the real estimator (the planner's default), made once."""
    return {name: plan_network(median, spacing, 1, 2, gpu_memory_target_gb=20, num_cases=100)
            for name, (median, spacing, *_) in DOCUMENTED_PLANS.items()}


def _documented_row(start: str) -> str:
    """The table row that starts with ``start`` in README.md or docs/*.md (wherever the table lives)."""
    root = Path(__file__).resolve().parents[1]
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if line.startswith(start):
                return line
    raise AssertionError(f"no row starting with {start!r} in README.md or docs/*.md")


@pytest.mark.parametrize("name", sorted(DOCUMENTED_PLANS))
def test_real_estimator_plans_what_the_docs_show(name, real_plans):
    median, spacing, patch, strides, kernels = DOCUMENTED_PLANS[name]
    plan = real_plans[name]
    assert (plan["patch_size"], plan["strides"], plan["kernel_sizes"]) == (patch, strides, kernels)
    assert plan["batch_size"] == 2
    assert plan["estimated_peak_gib"] <= 20 and plan["estimator_calls"] <= 12
    row = _documented_row(f"| {name} | {' x '.join(f'{s:g}' for s in spacing)} | {' x '.join(map(str, patch))} x 2 |")
    assert row.endswith(f"| {plan['estimated_peak_gib']:.1f} GiB |"), row


def test_smaller_target_smaller_patch_and_whole_image_raises_batch():
    median, spacing = (138, 170, 138), (1.0, 1.0, 1.0)
    small = plan_network(median, spacing, 1, 2, 8, 100, linear_estimator)
    assert math.prod(small["patch_size"]) < 128 ** 3 and small["estimated_peak_gib"] <= 8
    # a small image fits whole: the patch is the (floored) median image and the batch grows, within the caps
    plan = plan_network((64, 80, 72), (1, 1, 1), 1, 2, 20, 1000, linear_estimator)
    assert plan["patch_size"] == [64, 80, 64] and plan["batch_size"] > 2 and plan["estimated_peak_gib"] <= 20
    assert plan_network((64, 80, 72), (1, 1, 1), 1, 2, 20, 5, linear_estimator)["batch_size"] == 2  # 5 % cap
    with pytest.raises(ValueError, match="gpu_memory_target_gb"):
        plan_network(median, spacing, 1, 2, 0.5, 100, linear_estimator)


def test_topology_rules():
    # thick slices, 4 x 1 x 1 mm: 1x3x3 only at full resolution (at 4 x 2 x 2 mm z is within the factor 2)
    strides, kernels = network_topology((32, 64, 64), (4.0, 1.0, 1.0))
    assert strides == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[1, 3, 3]] + iso(4)
    # an axis too short to pool keeps its full extent; pooling stops at MAX_STAGES
    strides, _ = network_topology((6, 256, 256), (1.0, 1.0, 1.0))
    assert all(s[0] == 1 for s in strides) and len(strides) == 6
    options = planned_model_options({"strides": strides, "kernel_sizes": iso(6)}, "tiny")
    assert options["features"] == [8, 16, 32, 64, 80, 80] and options["kernel_size"] == iso(6)


def test_over_budget_warning_names_the_plan():
    network = plan_network((138, 170, 138), (1, 1, 1), 1, 2, 20, 100, linear_estimator)
    assert over_budget_warning(19 * GIB, network, [128] * 3, 2) is None
    warning = over_budget_warning(30 * GIB, network, [160] * 3, 2, describe_network(network))
    assert "30.0 GiB" in warning and "gpu_memory_target_gb=20" in warning and "patch [128, 128, 128] x batch 2" in warning
    assert over_budget_warning(30 * GIB, None, [160] * 3, 2) is None


def test_memory_verdict_stops_with_the_settings_that_fit():
    tried = settings_to_try([128, 128, 128], 2, [32, 32, 32], {"mc_chunk": None, "checkpointing": False,
                                                              "accumulate_steps": 1})
    names = [name for name, *_ in tried]
    assert names[:3] == ["--mc_chunk=1", "--checkpointing=True", "--batch_size=1 --accumulate_steps=2"]
    assert names[3:] == ["--patch_size=[96, 128, 128]", "--patch_size=[96, 96, 128]",
                         "--patch_size=[96, 96, 96]"]  # until half the voxels or fewer
    assert tried[2][2] == 1 and tried[0][3]["mc_chunk"] == 1 and tried[1][3]["checkpointing"] is True
    assert memory_verdict(10 * GIB, 13 * GIB, []) is None  # 10 GiB + 10 % + 1 GiB left out of the estimate
    assert memory_verdict(10 * GIB, 11 * GIB, []) is not None
    message = memory_verdict(20 * GIB, 12 * GIB, [("--mc_chunk=1", 14 * GIB), ("--checkpointing=True", 9 * GIB),
                                                  ("--patch_size=[96, 128, 128]", 10 * GIB)])
    assert "20.0 GiB" in message and "12.0 GiB free" in message and "before the data loaders start" in message
    assert "--checkpointing=True (9.0 GiB)" in message and "--patch_size=[96, 128, 128] (10.0 GiB)" in message
    assert "--mc_chunk=1" not in message.split("\n")[1]  # 14 GiB does not fit 12 GiB
    assert "None of" in memory_verdict(20 * GIB, 4 * GIB, [("--mc_chunk=1", 14 * GIB)])
    # already chunked and checkpointed, batch 1: only smaller patches are left to try
    tried = settings_to_try([64, 64, 64], 1, [16, 16, 16], {"mc_chunk": 1, "checkpointing": True, "accumulate_steps": 2})
    assert [name for name, *_ in tried] == ["--patch_size=[48, 64, 64]", "--patch_size=[48, 48, 64]",
                                             "--patch_size=[48, 48, 48]"]


def test_check_gpu_memory_estimates_the_alternatives_only_when_needed():
    calls = []

    def estimate(patch, batch, options):  # 12 GiB at 128^3 x 2; mc_chunk=1 saves a third, checkpointing half
        calls.append((tuple(patch), batch, dict(options)))
        scale = (2 / 3 if options.get("mc_chunk") == 1 else 1) * (0.5 if options.get("checkpointing") else 1)
        return int(12 * GIB * scale * batch / 2 * math.prod(patch) / 128 ** 3)

    options = {"mc_chunk": None, "checkpointing": False, "accumulate_steps": 1}
    cpu = torch.device("cpu")
    assert check_gpu_memory(cpu, estimate, [128] * 3, 2, [32] * 3, options) is None and not calls  # no GPU, no estimate
    assert check_gpu_memory(cpu, estimate, [128] * 3, 2, [32] * 3, options, free_bytes=16 * GIB) is None
    assert len(calls) == 1
    calls.clear()
    message = check_gpu_memory(cpu, estimate, [128] * 3, 2, [32] * 3, options, free_bytes=10 * GIB)
    assert "12.0 GiB" in message and "10.0 GiB free" in message
    assert "--mc_chunk=1 (8.0 GiB)" in message and "--checkpointing=True (6.0 GiB)" in message
    assert "--batch_size=1 --accumulate_steps=2 (6.0 GiB)" in message
    assert len(calls) == 4  # the step, then alternatives until three fit


def _train_settings(**constants):
    """The training script's settings with ``constants`` in place of its own."""
    from light_training.config import find_constants, settings_from
    from light_training.stages.train import TrainStageSettings

    script = Path(__file__).resolve().parents[1] / "2_train_diffunet_aiib2023.py"
    defaults = {name: value for name, (value, _) in find_constants(script.read_text()).items()}
    return settings_from(TrainStageSettings, {**defaults, **constants})


def test_training_takes_the_plans_patch_and_batch(tmp_path):
    from diffunet import build_network
    from light_training.stages.train import build_training_network, patch_and_batch

    network = plan_network((24, 56, 44), (4.0, 1.0, 1.0), 1, 2, 20, 5, linear_estimator)
    plans = Plans.from_json({"dataset": "example", "channel_names": ["MRI"], "num_classes": 2, "network": network})
    config = dict(model_variant="unet", model_preset="tiny", mba=True, mc_diff=True, boundary_target="boundary",
                  planned_network=True, patch_size=None, batch_size=None)
    model = build_training_network(_train_settings(**config), plans)
    assert model.config["strides"] == network["strides"] and model.config["kernel_size"] == network["kernel_sizes"]
    assert model.config["features"] == [8, 16, 32, 64]
    assert patch_and_batch(_train_settings(**config), plans, model) == (network["patch_size"], network["batch_size"])
    assert patch_and_batch(_train_settings(**{**config, "patch_size": [8, 16, 16], "batch_size": 3}), plans,
                           model) == ([8, 16, 16], 3)
    with pytest.raises(ValueError, match="multiple"):
        patch_and_batch(_train_settings(**{**config, "patch_size": [10, 16, 16]}), plans, model)
    paper = build_network("unet", 1, 2)  # the paper's network (total stride 32) cannot divide the plan's 24 x 56 x 40
    with pytest.raises(ValueError, match="patch_size=None takes the plan's patch"):
        patch_and_batch(_train_settings(**{**config, "planned_network": False}), plans, paper)
    with pytest.raises(ValueError, match="holds no planned network"):
        build_training_network(_train_settings(**config), Plans.from_json({**plans.to_json(), "network": None}))


def test_the_network_is_in_the_plans_hash():
    from light_training.plans import plans_hash

    base = {"dataset": "example", "channel_names": ["MRI"], "labels": [0, 1], "normalization": ["ZScore"],
            "target_spacing": [4.0, 1.0, 1.0], "intensity_properties": [None], "resampling": {}}
    network = plan_network((24, 56, 44), (4.0, 1.0, 1.0), 1, 2, 20, 5, linear_estimator)
    hashes = {plans_hash({**base, "network": n}) for n in (None, network, {**network, "batch_size": 3},
                                                           {**network, "kernel_sizes": iso(4)})}
    assert len(hashes) == 4


def test_a_smaller_patch_gets_the_topology_the_plans_rules_derive_for_it(tmp_path):
    """Issue 23's thick-slice brain MRI (1 x 1 x 2.5 mm, about 66 x 217 x 173 voxels): the plan pools y and x
    five times, so its strides on a [32, 64, 64] patch would leave a 2 x 2 x 2 bottleneck."""
    from light_training.checkpoint import build_model, load_checkpoint, save_checkpoint
    from light_training.planning.network_plan import network_for_patch
    from light_training.stages.train import build_training_network, training_topology

    network = plan_network((66, 217, 173), (2.5, 1.0, 1.0), 2, 4, 40, 8, linear_estimator)
    assert len(network["strides"]) == 6 and network["patch_size"][1] >= 128
    plans = Plans.from_json({"dataset": "example", "channel_names": ["T1", "FLAIR"], "num_classes": 4,
                             "network": network})
    config = dict(model_variant="diffunet", model_preset="tiny", mba=True, mc_diff=True, boundary_target="boundary",
                  planned_network=True, patch_size=[32, 64, 64], batch_size=2)
    derived = training_topology(_train_settings(**config), plans)
    assert derived["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert derived["kernel_sizes"][0] == [1, 3, 3] and derived["derived_from_patch"] == network["patch_size"]
    total = [math.prod(s[a] for s in derived["strides"]) for a in range(3)]
    assert [p // t for p, t in zip([32, 64, 64], total)] == [4, 4, 4]  # the bottleneck: no axis below 4 voxels
    model = build_training_network(_train_settings(**config), plans)
    assert model.config["strides"] == derived["strides"] and model.config["features"] == [8, 16, 32, 64, 80]
    model.check_patch_size([32, 64, 64])
    # what prediction does: the checkpoint written and read back, its network rebuilt from model_config alone
    save_checkpoint({"model_class": "DiffUNet", "model_config": model.config, "model": model.state_dict(),
                     "plans": plans.to_json(), "config": {"patch_size": [32, 64, 64]}}, tmp_path / "best.pt")
    rebuilt = build_model(load_checkpoint(tmp_path / "best.pt"))  # strict: every weight's key and shape match
    assert rebuilt.config == model.config and rebuilt.config["kernel_size"] == derived["kernel_sizes"]
    torch.manual_seed(0)
    x = torch.randn(1, 2, 32, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.boundary(x)[0], model.eval().boundary(x)[0])  # the same network, the same logits
    # the plan's own patch: its topology
    assert training_topology(_train_settings(**{**config, "patch_size": None}), plans) is network
    assert network_for_patch(network, network["patch_size"]) is network
    with pytest.raises(ValueError, match=r"patch_size=\[36, 64, 64\].*set --patch_size=\[32, 64, 64\]"):
        training_topology(_train_settings(**{**config, "patch_size": [36, 64, 64]}), plans)
    with pytest.raises(ValueError, match="spacing is not recorded.*--planned_network=False"):
        training_topology(_train_settings(**config), Plans.from_json({**plans.to_json(),
                                                                       "network": {**network, "spacing": None}}))
