"""The export stage: a training run's folds (or checkpoint files) as one model zip
(:mod:`light_training.inference.model_package`), with the run's postprocessing and cross-validation metrics."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from light_training.checkpoint import CHECKPOINT_NAMES
from light_training.inference.ensemble import checkpoint_paths, find_folds, load_ensemble
from light_training.inference.model_package import CROSSVAL_FOLDER, export_model, open_model
from light_training.config import settings_from
from light_training.plans import Plans
from light_training.postprocessing import read_postprocessing
from light_training.stages import write_config

__all__ = ["ExportStageSettings", "export"]


@dataclass(frozen=True)
class ExportStageSettings:
    """The export tool's constants (their comments say what each does), checked once."""
    logdir: str | None
    folds: list[int] | None
    checkpoint_name: str
    checkpoint: str | list[str] | None
    metrics: str | list[str] | None
    output: str

    def __post_init__(self):
        if self.checkpoint_name not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint_name={self.checkpoint_name!r}: expected one of {list(CHECKPOINT_NAMES)}")

def _metrics_files(metrics: str | list[str] | None, logdir: Path | None) -> list[Path]:
    """The metrics files to include: those named (a ``<pred>_summary.json`` brings its ``<pred>.csv``), else
    ``<logdir>/crossval/*`` where they exist."""
    if metrics:
        named = [Path(m) for m in ([metrics] if isinstance(metrics, str) else metrics)]
        files = named + [p.with_name(p.name.removesuffix("_summary.json") + ".csv") for p in named
                         if p.name.endswith("_summary.json")]
        missing = [str(p) for p in named if not p.is_file()]
        if missing:
            raise ValueError(f"metrics={metrics!r}: no such file(s) {missing} (the metrics script writes "
                             f"<output_dir>/<pred>_summary.json)")
        return [p for p in dict.fromkeys(files) if p.is_file()]
    folder = None if logdir is None else logdir / CROSSVAL_FOLDER
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder is not None and folder.is_dir() else []


def export(config: dict[str, Any], script: str) -> Path:
    """Write ``output``: the folds of ``logdir`` (``folds``, None: every fold found; ``checkpoint_name``) or the
    ``checkpoint`` file(s), their plan, description and training constants, ``<logdir>/postprocessing.json``
    and the cross-validation metrics; then open it again as prediction will (a check) and write the constants."""
    c = settings_from(ExportStageSettings, config)
    logdir = None if c.checkpoint else Path(c.logdir)
    folds = c.folds
    if logdir is not None and not folds:
        folds = find_folds(logdir, c.checkpoint_name)
        if not folds:
            raise ValueError(f"{logdir}: no fold's {c.checkpoint_name}.pt found (expected {logdir}/model/"
                             f"{c.checkpoint_name}.pt, {logdir}/fold_<k>/model/...): train first, or set --logdir")
    paths = checkpoint_paths(c.checkpoint, folds if logdir is not None else None, c.logdir,
                             c.checkpoint_name)
    loaded = load_ensemble(paths, None, torch.device("cpu"))  # every file read and rebuilt: only models that load are exported
    checkpoints = [checkpoint for _, checkpoint in loaded]
    if logdir is None:  # checkpoint files: their own folds (a converted release checkpoint has none: 0, 1, ...)
        folds = [ckpt.get("config", {}).get("fold", i) for i, ckpt in enumerate(checkpoints)]
    rules = read_postprocessing(logdir)
    metrics = _metrics_files(c.metrics, logdir)
    output = export_model(paths, checkpoints, list(folds), c.output, c.checkpoint_name, rules, metrics)
    package = open_model(output, Plans.from_json(checkpoints[0]["plans"]).dataset)
    write_config(config, script, Path(output).parent, stem=f"{Path(output).stem}_export")
    size = Path(output).stat().st_size / 2 ** 20
    print(f"wrote {output} ({size:.1f} MiB): dataset {package.info['dataset']!r}, folds {package.info['folds']} "
          f"({c.checkpoint_name}), postprocessing {rules.rules() if rules else None}, "
          f"{len(metrics)} metrics file(s)")
    print(f"predict with it: --model={output} (the prediction scripts)")
    return Path(output)
