"""Choose the postprocessing on cross-validation (nnU-Net's ``determine_postprocessing``): keep only the largest
connected component (:mod:`light_training.postprocessing`) where that raises the mean Dice of the
held-out predictions.

The criterion is the mean Dice over the dataset's evaluated regions (its description's ``evaluate``: the
airway for AIIB2023, WT/TC/ET for BraTS2023, every label and region of a dataset of one's own), averaged over
the cases: the Dice the metrics tables report. The rules act on what prediction writes, the plain labels
(for BraTS: NCR, ED, ET); each is judged by its effect on the regions (removing an ET component changes ET,
TC and WT alike). As in nnU-Net:

1. the foreground rule (all labels > 0 as one mask) is kept if it raises the mean Dice over the baseline;
2. then each label's rule, on top of the decision of step 1 and each tested alone, is kept if it raises
   the mean Dice over that result; the kept label rules are applied together (and their joint mean recorded).

Ties keep nothing: a rule must raise the mean strictly.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np

from light_training.evaluation.primitives import dice
from light_training.evaluation.scoring import CasePair, evaluate_pairs
from light_training.postprocessing import Postprocessing, apply_postprocessing

__all__ = ["candidate_rules", "candidates_dice", "decide_postprocessing", "determine_postprocessing"]

BASELINE = "none"


def candidate_rules(labels: Sequence[int]) -> dict[str, Postprocessing]:
    """Every rule set the decision may need: none, the foreground, each label alone with and without it."""
    candidates = {BASELINE: Postprocessing(), "foreground": Postprocessing(foreground=True)}
    for value in labels:
        candidates[f"label_{value}"] = Postprocessing(labels=(value,))
        candidates[f"foreground+label_{value}"] = Postprocessing(foreground=True, labels=(value,))
    return candidates


def candidates_dice(prediction: np.ndarray, ground_truth: np.ndarray, spacing: Sequence[float],
                    candidates: Mapping[str, Postprocessing], regions: Mapping[str, Sequence[int]]
                    ) -> dict[str, float]:
    """``{"<candidate>|<region>": Dice}`` of one case ``(Z, Y, X)`` under every candidate rule set (a case
    metric for :func:`~light_training.evaluation.scoring.evaluate_pairs`; ``spacing`` plays no part)."""
    gt_masks = {name: np.isin(ground_truth, values) for name, values in regions.items()}
    row = {}
    for key, rules in candidates.items():
        processed = apply_postprocessing(prediction, rules)
        for name, values in regions.items():
            row[f"{key}|{name}"] = dice(np.isin(processed, values), gt_masks[name])
    return row


def _means(rows: Sequence[Mapping[str, Any]], key: str, regions: Sequence[str]) -> dict[str, Any]:
    per_region = {name: float(np.mean([row[f"{key}|{name}"] for row in rows])) for name in regions}
    return {"mean": float(np.mean(list(per_region.values()))), "per_region": per_region}


def decide_postprocessing(rows: Sequence[Mapping[str, Any]], labels: Sequence[int], regions: Sequence[str]
                          ) -> tuple[Postprocessing, dict[str, Any]]:
    """The rules the rows of :func:`candidates_dice` choose (module docstring), and the numbers that chose them."""
    baseline = _means(rows, BASELINE, regions)
    foreground = {**_means(rows, "foreground", regions), "compared_with": baseline["mean"]}
    foreground["kept"] = foreground["mean"] > baseline["mean"]
    base_key, base = ("foreground", foreground) if foreground["kept"] else (BASELINE, baseline)
    decisions, kept = {}, []
    for value in labels:
        key = f"foreground+label_{value}" if foreground["kept"] else f"label_{value}"
        result = {**_means(rows, key, regions), "compared_with": base["mean"]}
        result["kept"] = result["mean"] > base["mean"]
        decisions[str(value)] = result
        if result["kept"]:
            kept.append(value)
    decision = {"criterion": f"mean Dice over {list(regions)} of {len(rows)} held-out case(s); a rule is kept "
                             f"where it raises it", "cases": len(rows), "baseline": baseline,
                "foreground": foreground, "labels": decisions}
    return Postprocessing(foreground["kept"], tuple(kept), decision), decision


def determine_postprocessing(pairs: Sequence[CasePair], labels: Sequence[int], regions: Mapping[str, Sequence[int]],
                             num_processes: int = 0) -> Postprocessing:
    """Choose the rules on the pairs of held-out predictions and ground truths; the returned rules carry the
    numbers (``decision``: the mean Dice of the baseline and of each rule, and of the chosen rules together).
    ``ValueError`` when no case can be read."""
    candidates = candidate_rules(labels)
    columns = [f"{key}|{name}" for key in candidates for name in regions]
    metric = partial(candidates_dice, candidates=candidates, regions=dict(regions))
    rows, unscored = evaluate_pairs(pairs, metric, columns, num_processes, desc="postprocessing candidates")
    if not rows:
        raise ValueError(f"no case could be read to choose the postprocessing: {dict(list(unscored.items())[:3])}")
    rules, decision = decide_postprocessing(rows, labels, list(regions))
    decision["unscored"] = unscored
    if len(rules.labels) > 1:  # the kept label rules together: their joint result, for the record
        final = {"chosen": rules}
        metric = partial(candidates_dice, candidates=final, regions=dict(regions))
        rows, _ = evaluate_pairs(pairs, metric, [f"chosen|{n}" for n in regions], num_processes, desc="chosen rules")
        decision["chosen"] = _means(rows, "chosen", list(regions))
    else:
        key = ("foreground" if rules.foreground else BASELINE) + (f"+label_{rules.labels[0]}" if rules.labels else "")
        decision["chosen"] = _means(rows, key.removeprefix(f"{BASELINE}+"), list(regions))
    return rules
