"""The best-configuration stage: score each run's held-out predictions and every pair's ensemble, rank them by the
dataset's headline metric (:mod:`light_training.evaluation.configurations`), and say which to use and how."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import light_training
from light_training.config import find_constants
from light_training.datasets import load_dataset
from light_training.evaluation.configurations import (Configuration, ensemble_probabilities, headline_columns,
                                                      headline_score, pairs_of, rank_configurations)
from light_training.evaluation.scoring import evaluate_folder, nifti_cases
from light_training.inference.ensemble import checkpoint_paths
from light_training.inference.resume import OUTPUT_SETTINGS, postprocessed_cases
from light_training.io import read_json, write_json
from light_training.preprocessing.raw_cases import find_label_files
from light_training.config import settings_from
from light_training.stages import write_config
from light_training.evaluation.metric_sets import metric_for

__all__ = ["BestConfigurationSettings", "predict_command", "find_best_configuration"]

ROOT = Path(light_training.__file__).resolve().parents[1]  # the scripts' folder, to name them in commands
# settings of the held-out predictions that do not carry over to predicting new scans
_NOT_CARRIED = {"fold", "save_probabilities", "save_uncertainty", "save_preview", "postprocessing"}


@dataclass(frozen=True)
class BestConfigurationSettings:
    """The best-configuration tool's constants (their comments say what each does), checked once."""
    dataset: str
    runs: list[str]
    results_dir: str
    raw_dir: str
    gt_dir: str | None
    ensembles: bool
    metric: list[str] | None
    input_dir: str
    output_dir: str
    num_processes: int

    def __post_init__(self):
        if not self.runs or len(set(self.runs)) != len(self.runs):
            raise ValueError(f"runs={list(self.runs)!r}: expected names of prediction folders under "
                             f"{self.results_dir}, each once")

def _predict_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """``(script path relative to the project, its resolved constants)`` of the predictions in ``folder``."""
    found = sorted(folder.glob("*predict*_config.json"))
    if not found:
        raise ValueError(f"{folder}: no <script>_config.json of the prediction script (it writes one beside its "
                         f"predictions): cannot say how to predict with this run")
    stem = re.sub(r"_part\d+$", "", found[0].name.removesuffix("_config.json"))
    scripts = [p for p in [ROOT / f"{stem}.py", *ROOT.glob(f"*/{stem}.py")] if p.is_file()]
    if not scripts:
        raise ValueError(f"{found[0]}: written by {stem}.py, which this project does not have")
    return scripts[0].relative_to(ROOT).as_posix(), read_json(found[0])


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def predict_command(runs: list[Path], input_dir: str, save_dir: str) -> str:
    """The prediction command that predicts ``input_dir`` as the configuration of ``runs`` (folders of
    held-out predictions) did: one run's model (its zip, checkpoints or folds), or all runs' checkpoints
    at once (an ensemble), with the settings the held-out predictions used where they differ from the
    script's defaults."""
    script, config = _predict_config(runs[0])
    defaults = {name: value for name, (value, _) in find_constants((ROOT / script).read_text()).items()}
    args = {}
    if len(runs) == 1 and config.get("model"):
        args["model"] = config["model"]
    elif len(runs) == 1 and config.get("checkpoint"):
        args["checkpoint"] = config["checkpoint"]
    elif len(runs) == 1:
        args.update({k: config[k] for k in ("logdir", "folds", "checkpoint_name") if config.get(k) != defaults.get(k)})
    else:
        paths = []
        for folder in runs:
            _, other = _predict_config(folder)
            if other.get("model"):
                raise ValueError(f"{folder}: predicted with a model zip; an ensemble command needs checkpoints")
            paths += [p.as_posix() for p in checkpoint_paths(other.get("checkpoint"), other.get("folds"),
                                                             other["logdir"], other.get("checkpoint_name", "best"))]
        args["checkpoint"] = paths
    if config.get("dataset") != defaults.get("dataset"):
        args["dataset"] = config["dataset"]
    args.update({k: config[k] for k in OUTPUT_SETTINGS if k not in _NOT_CARRIED and k in config
                 and config[k] != defaults.get(k)})
    args.update(input_dir=input_dir, save_dir=save_dir)
    return f"python {script} " + " ".join(f"--{k}={_value(v)}" for k, v in args.items())


def find_best_configuration(config: dict[str, Any], script: str) -> Configuration:
    """Rank ``runs`` (folders of held-out predictions under ``results_dir``) and, with ``ensembles``, every pair's
    ensemble; write ``<output_dir>/best_configuration.json`` (the ranking, the winner and its command) and
    each configuration's metrics tables; print the ranking and the command."""
    c = settings_from(BestConfigurationSettings, config)
    description = load_dataset(c.dataset)
    runs = list(c.runs)
    folders = {run: Path(c.results_dir) / run for run in runs}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise ValueError(f"no such prediction folder(s) {missing}: predict each run's held-out folds first")
    ground_truths = (nifti_cases(c.gt_dir) if c.gt_dir else find_label_files(Path(c.raw_dir), description))
    predictions = {run: nifti_cases(folder) for run, folder in folders.items()}
    for run, folder in folders.items():  # an ensemble averages raw probabilities: every run is compared raw
        if done := postprocessed_cases(folder, list(predictions[run])):
            raise ValueError(f"{folder}: {len(done)} prediction(s) were postprocessed (e.g. {done[0]}), the "
                             f"ensembles' probabilities are not; predict the held-out folds again with "
                             f"--postprocessing=False to compare them")
    common = [case for case in ground_truths if all(case in p for p in predictions.values())]
    if not common:
        raise ValueError(f"no case has a ground truth and a prediction of every run ({', '.join(runs)})")
    left_out = sorted({case for p in predictions.values() for case in p} - set(common))
    if left_out:
        print(f"note: {len(left_out)} case(s) not predicted by every run (or without ground truth) left out, "
              f"e.g. {left_out[:3]}")
    case_metric, columns, _ = metric_for(description)
    headline = list(c.metric) if c.metric else headline_columns(description, columns)
    output = Path(c.output_dir)
    truths = {case: ground_truths[case] for case in common}

    def score(name: str, members: tuple[str, ...], files: dict[str, Path]) -> Configuration:
        result = evaluate_folder(files, truths, case_metric, columns, output, name, num_processes=c.num_processes)
        return Configuration(name, members, headline_score(result.summary, headline), result.summary)

    configurations = [score(run, (run,), {case: predictions[run][case] for case in common}) for run in runs]
    for pair in (pairs_of(runs) if c.ensembles else []):
        name, folder = "+".join(pair), output / "ensembles" / "+".join(pair)
        files = {case: ensemble_probabilities([folders[r] for r in pair], case, folder) for case in common}
        configurations.append(score(name, pair, files))
    ranked = rank_configurations(configurations)
    best = ranked[0]
    try:
        command = predict_command([folders[r] for r in best.runs], c.input_dir,
                                  str(Path(c.results_dir) / f"{best.name}_test"))
    except ValueError as err:
        command = f"(no command: {err})"
    write_json({"dataset": description.name, "headline": headline, "cases": len(common),
                "ranking": [x.to_dict() for x in ranked], "best": best.name, "command": command},
               output / "best_configuration.json")
    write_config(config, script, output)
    width = max(len(x.name) for x in ranked)
    print(f"\n{len(ranked)} configuration(s) on {len(common)} held-out case(s), ranked by the mean of {headline}:")
    for i, x in enumerate(ranked, 1):
        print(f"  {i}. {x.name:<{width}}  {x.score:.4f}")
    print(f"\nbest: {best.name}; predict with it:\n  {command}")
    if len(best.runs) > 1:
        print("  (an ensemble of checkpoints applies no postprocessing; choose one on its held-out predictions)")
    print(f"wrote {output / 'best_configuration.json'}")
    return best
