"""The typed plan (light_training.plans) and the stages' settings (light_training.config.settings_from)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from light_training.config import settings_from
from light_training.plans import Plans
from light_training.stages.train import TrainStageSettings


def test_plans_read_typed_and_give_back_the_dict_they_were_read_from():
    network = {"patch_size": [16, 32, 24], "batch_size": 3, "strides": [[1, 1, 1], [2, 2, 2]],
               "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "spacing": [2.0, 1.0, 1.0], "gpu_memory_target_gb": 8.0}
    source = {"dataset": "example", "channel_names": ["MRI"], "labels": [0, 1, 2], "label_names": ["bg", "a", "b"],
              "num_classes": 3, "target_spacing": [2.0, 1.0, 1.0], "num_cases": 1, "network": network,
              "cases": {"c1": {"spacing": [2.0, 1.0, 1.0], "shape": [9, 8, 7], "shape_after_crop": [9, 8, 6],
                               "label_values": [0, 2]}}}
    plans = Plans.from_json(json.loads(json.dumps(source)))
    assert plans.network.patch_size == [16, 32, 24] and plans.network.batch_size == 3
    assert plans.cases["c1"].label_values == [0, 2] and plans.label_names[1] == "a"
    assert plans.to_json() == source and plans.network.to_json() == network  # what checkpoints store


def test_a_release_checkpoints_minimal_plan_reads():
    """A converted release checkpoint (light_training.release) stores names only."""
    plans = Plans.from_json({"dataset": "release", "channel_names": ["CT"], "labels": [0, 1],
                             "label_names": ["background", "class_1"], "num_classes": 2})
    assert plans.network is None and plans.cases == {} and plans.target_spacing is None
    assert Plans.from_json({}).labels == [] and Plans.from_json({"network": None}).network is None


def test_settings_take_the_constants_by_name_and_check_them():
    @dataclass(frozen=True)
    class Example:
        name: str
        size: int = 4

    assert settings_from(Example, {"name": "x", "other": 1}) == Example("x", 4)  # others are not read
    with pytest.raises(TypeError):
        settings_from(Example, {"size": 2})  # a constant the script must define
    with pytest.raises(ValueError, match=r"oversample_foreground=1\.5"):
        settings_from(TrainStageSettings, {f: None for f in TrainStageSettings.__dataclass_fields__}
                      | {"oversample_foreground": 1.5})
