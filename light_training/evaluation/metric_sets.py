"""Which metric set a dataset gets: a function of its description (``metrics``, and the regions it scores).

``"aiib2023"`` and ``"brats2023"`` are the challenges' definitions; ``"dice_hd95"`` (the default) Dice and
HD95 per label and region of the description.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

from light_training.datasets import DatasetDescription
from light_training.evaluation.metrics_aiib import AIIB_COLUMNS, aiib_case_metrics
from light_training.evaluation.metrics_brats import brats_case_metrics, brats_columns
from light_training.evaluation.metrics_regions import region_case_metrics, region_columns

__all__ = ["metric_for"]


def metric_for(description: DatasetDescription) -> tuple[Callable, tuple[str, ...], list[list[str]]]:
    """``(case metric, its columns, column groups to print as one table each)`` of a description."""
    regions = description.evaluation_regions()
    if description.metrics == "aiib2023":
        return aiib_case_metrics, tuple(AIIB_COLUMNS), [list(AIIB_COLUMNS)]
    if description.metrics == "brats2023":
        columns = brats_columns(regions)
        return partial(brats_case_metrics, regions=regions), columns, _groups(columns, regions)
    columns = region_columns(regions)
    return partial(region_case_metrics, regions=regions), columns, _groups(columns, regions)


def _groups(columns: Sequence[str], regions: dict[str, list[int]]) -> list[list[str]]:
    """One group per region: the metric columns come region by region, as many per region (by name prefix,
    region "liver" would also claim "liver_tumour_Dice")."""
    per_region = len(columns) // len(regions)
    return [list(columns[i:i + per_region]) for i in range(0, len(columns), per_region)]
