"""The prediction stage: one or several checkpoints' models over the held-out fold or a folder of raw scans.

With ``skip_bad_cases=False`` every input is found and checked before the first window is predicted:
unreadable or truncated files, wrong dimensionality, missing sequences, channel count, NaN/Inf,
sequences of one case on different grids; all problems are listed at once, by case and file. The check
reads and preprocesses each scan once, and the network takes the checked copies (preprocessed float32,
kept in ``<save_dir>/.checked_inputs_part<K>`` until then; the run prints the check's seconds, each case's
record its "read + preprocess" and "load checked input"). With ``skip_bad_cases=True`` each scan is read
once, by the pipeline, and the bad ones are listed at the end.

The engines: :mod:`light_training.inference.ensemble` (which models), :mod:`~light_training.inference.resume`
(which cases: this part, not done yet), :mod:`~light_training.inference.pipeline` (workers, out-of-memory
retry) and :mod:`~light_training.inference.cases` (one case's CPU work).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from light_training.compilation import compile_for_inference
from light_training.datasets import DatasetDescription, load_dataset
from light_training.inference import resume
from light_training.inference.cases import (CaseInput, CasePrediction, ExportRun, check_input, export_case, load_input,
                                           read_scan, remove_stale_temporaries, take_checked_input)
from light_training.inference.ensemble import load_models, load_predictor
from light_training.inference.pipeline import (PipelineError, WorkerPools, check_all, default_workers,
                                               predict_with_fallback, run_pipeline)
from light_training.fast_paths import resolve_fast_paths
from light_training.inference.prediction import InferenceSettings, prepare_for_inference
from light_training.parallel import map_cases
from light_training.config import settings_from
from light_training.plans import Plans, plans_path
from light_training.preprocessing.raw_cases import RawCase, find_raw_cases
from light_training.runtime import configure_backends, rank_device, resolve_device, resolve_precision, set_cpu_threads
from light_training.stages import StageFailed, write_config
from light_training.training.splits import held_out_cases

__all__ = ["NONFINITE_POLICIES", "PredictStageSettings", "load_predictor", "check_scans", "predict"]

NONFINITE_POLICIES = ("error", "replace")  # NaN/Inf in a scan to predict: refuse it, or use the scan's minimum


@dataclass(frozen=True)
class PredictStageSettings:
    """The prediction script's constants (their comments say what each does), checked once."""
    dataset: str
    logdir: str | None
    model: str | None
    checkpoint: str | list[str] | None
    folds: list[int] | None
    checkpoint_name: str
    data_dir: str | None
    input_dir: str | None
    save_dir: str
    fold: int | None
    overlap: float
    mirror_axes: list[int]
    sw_batch_size: int
    precision: str
    steps: int | None
    fusion: str | None
    uncertainty: str
    seed: int | None
    torch_compile: bool
    save_probabilities: bool
    save_uncertainty: bool
    save_preview: bool
    postprocessing: bool
    overwrite: bool
    num_parts: int
    part_id: int
    num_processes_preprocessing: int | None
    num_processes_export: int | None
    skip_bad_cases: bool
    nonfinite: str
    device: str
    num_threads: int | None = None
    compile_mode: str | None = None
    channels_last: bool | None = None
    cast_weights: bool | None = None

    def __post_init__(self):
        if self.input_dir and self.nonfinite not in NONFINITE_POLICIES:  # only scans of input_dir are checked
            raise ValueError(f"nonfinite={self.nonfinite!r}: expected one of {list(NONFINITE_POLICIES)}")


def check_scans(raw_cases: list[RawCase], description: DatasetDescription, nonfinite: str = "error",
                num_processes: int = 0) -> tuple[list[RawCase], dict[str, str]]:
    """Read and check every scan (in ``num_processes`` worker processes; 0 or 1: in this one):
    ``(usable cases, {case: problem})``. Nothing is predicted here."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={nonfinite!r}: expected one of {list(NONFINITE_POLICIES)}")
    check = functools.partial(read_scan, description=description, nonfinite=nonfinite)
    _, failures = map_cases(functools.partial(_checked, check=check), raw_cases, num_processes, "checking scans",
                            skip_bad_cases=True)
    bad = {raw.case: failures[raw.case].removeprefix(f"{raw.case}: ") for raw in raw_cases if raw.case in failures}
    return [raw for raw in raw_cases if raw.case not in bad], bad


def _checked(raw: RawCase, check: functools.partial) -> None:
    check(raw)  # the image is dropped here: only the problems travel back


def _listing(problems: dict[str, str]) -> str:
    return "\n".join(f"  {case}: {why}" for case, why in problems.items())


def _find_cases(c: PredictStageSettings, description: DatasetDescription, checkpoints: list[dict]
                ) -> tuple[dict[str, RawCase | None], dict[str, list[int]]]:
    """``({case: raw case or None (preprocessed)}, {case: indices of the models that predict it})``: every
    scan of ``input_dir`` with every model, or the held-out fold of each model (the cases it never saw;
    ``fold`` overrides the checkpoints' own)."""
    everyone = list(range(len(checkpoints)))
    if c.input_dir:
        raw_cases = find_raw_cases(c.input_dir, description, with_labels=False)
        if not raw_cases:
            raise ValueError(f"{c.input_dir}: no scans found (expected "
                             f"{' or '.join(description.raw_layout['unlabeled_images'])})")
        return {raw.case: raw for raw in raw_cases}, {raw.case: everyone for raw in raw_cases}
    members: dict[str, list[int]] = {}
    for i, checkpoint in enumerate(checkpoints):
        fold = checkpoint["config"].get("fold") if c.fold is None else c.fold
        if fold is None:  # a converted release checkpoint: no training fold of ours
            raise ValueError(f"checkpoint {i + 1} of {len(checkpoints)} was not trained on a fold of {c.data_dir} "
                             f"(e.g. a converted release): give --input_dir=SCANS to predict, or --fold=K")
        for name in held_out_cases(c.data_dir, fold):
            members.setdefault(name, []).append(i)
    missing = [n for n in members if not (Path(c.data_dir) / f"{n}.json").is_file()]
    if missing:
        raise ValueError(f"{c.data_dir}: no preprocessed case(s) {missing}; run the preprocessing script")
    return {n: None for n in sorted(members)}, members


def _check_first(c: PredictStageSettings, todo: list[str], sources: dict[str, RawCase | None],
                 description: DatasetDescription, plans: Plans, folder: Path, pools: WorkerPools) -> float:
    """With ``skip_bad_cases=False``: every scan to predict read, checked and preprocessed before any work (in
    the loading workers), all problems at once; the results wait in ``folder`` for the network (each scan is
    read once). The seconds it took."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    check = functools.partial(check_input, description=description, plans=plans, nonfinite=c.nonfinite,
                              folder=str(folder))
    _, bad = check_all([(n, (n, sources[n])) for n in todo], check, pools)
    if bad:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError(f"{len(bad)} of {len(todo)} scan(s) cannot be predicted; nothing was predicted:\n"
                         f"{_listing(bad)}\n(fix or remove them, or run with --skip_bad_cases=True to predict "
                         f"the others)")
    return time.perf_counter() - start


def _stamp(c: PredictStageSettings, name: str, raw: RawCase | None) -> list[list]:
    data = Path(c.data_dir)
    return resume.source_stamp(raw.image_files if raw is not None else [data / f"{name}_image.npy",
                                                                         data / f"{name}.json"])


def predict(config: dict[str, Any], script: str) -> list[Path]:
    """Predict the held-out fold(s) of ``data_dir`` (or every scan of ``input_dir``) into ``save_dir``:
    this process's part of the cases, those not done by the same run already (unless ``overwrite``).

    The models: a model zip (``model``), checkpoint files, or the folds of ``logdir``; their postprocessing
    (the zip's or ``<logdir>/postprocessing.json``) is applied to each label map unless ``postprocessing``
    is False. Writes ``<case>.nii.gz`` on the source image's geometry, and on request ``<case>_uncertainty.nii.gz``,
    ``<case>.npz`` and ``<case>_preview.png``; then ``<case>_record.json``; then the resolved constants.
    """
    c = settings_from(PredictStageSettings, config)
    set_cpu_threads(c.num_threads)
    device = rank_device(resolve_device(c.device), os.environ)  # CUDA untouched: device_count asks NVML
    num_parts, part_id = resume.resolve_part(c.num_parts, c.part_id, os.environ)
    resume.case_part([], num_parts, part_id)  # checks the two constants before any work
    pre, export = default_workers(device.type, os.cpu_count() or 1)
    pre = pre if c.num_processes_preprocessing is None else c.num_processes_preprocessing
    export = export if c.num_processes_export is None else c.num_processes_export
    with WorkerPools(pre, export) as pools:  # forked now, before a model touches the GPU
        return _predict_part(c, config, script, device, num_parts, part_id, pools)


def _predict_part(c: PredictStageSettings, constants: dict[str, Any], script: str, device: torch.device,
                  num_parts: int, part_id: int, pools: WorkerPools) -> list[Path]:
    """:func:`predict` once the device, the part and the worker ``pools`` are settled; ``constants`` (the
    script's, which ``c`` was built from) are only hashed into the run's fingerprint and written beside the
    outputs. The first call that touches CUDA (its capability, for the precision) comes after the fork."""
    configure_backends(device, resolve_precision(c.precision, device))  # cudnn.benchmark; TF32 only under bf16/fp16
    models = load_models(c.model, c.checkpoint, c.folds, c.logdir, c.checkpoint_name, c.dataset,
                         device, None if c.input_dir else plans_path(c.data_dir), c.postprocessing)
    loaded, paths, rules = models.members, models.sources, models.postprocessing
    plans = Plans.from_json(loaded[0][1]["plans"])
    description = load_dataset(plans.description)
    sources, case_members = _find_cases(c, description, [ckpt for _, ckpt in loaded])
    mine = resume.case_part(list(sources), num_parts, part_id)
    fingerprint = resume.run_fingerprint(models.digests, {**constants, "postprocessing": rules and rules.rules()})
    outputs = {n: resume.case_outputs(c.save_dir, n, c.save_probabilities, c.save_uncertainty,
                                      c.save_preview) for n in mine}
    stamps = {n: _stamp(c, n, sources[n]) for n in mine}
    done = [] if c.overwrite else [n for n in mine if resume.is_done(c.save_dir, n, fingerprint, stamps[n],
                                                                          outputs[n])]
    todo = [n for n in mine if n not in done]
    checked = Path(c.save_dir) / f".checked_inputs_part{part_id}"  # the checked scans, until the network takes them
    shutil.rmtree(checked, ignore_errors=True)  # what a killed run left
    load = functools.partial(_load, sources=sources, description=description, plans=plans, nonfinite=c.nonfinite,
                             data_dir=c.data_dir)
    if c.input_dir and not c.skip_bad_cases and todo:  # promise: nothing is predicted while a scan is bad
        seconds = _check_first(c, todo, sources, description, plans, checked, pools)
        print(f"checked {len(todo)} scan(s) in {seconds:.1f} s (each read, checked and preprocessed once; the "
              f"network takes them from {checked})", flush=True)
        load = functools.partial(take_checked_input, folder=str(checked))
    remove_stale_temporaries(c.save_dir, todo)  # what a killed run left half-written
    part = f" (part {part_id} of {num_parts}: {len(mine)} of {len(sources)} cases)" if num_parts > 1 else ""
    print(f"{len(todo)} case(s) to predict with {len(paths)} model(s){part}"
          + (f", postprocessing {rules.rules()}" if rules else "")
          + (f"; {len(done)} already done, skipped (--overwrite=True redoes them)" if done else ""), flush=True)
    fast = resolve_fast_paths("predict", device.type, resolve_precision(c.precision, device),
                              c.channels_last, c.cast_weights, c.compile_mode)
    members = [(model, InferenceSettings(
        patch_size=ckpt["config"]["patch_size"], overlap=c.overlap, mirror_axes=c.mirror_axes,
        sw_batch_size=c.sw_batch_size, precision=c.precision, steps=c.steps, fusion=c.fusion,
        uncertainty=c.uncertainty, with_uncertainty=c.save_uncertainty or c.save_preview,
        channels_last=fast.channels_last, cast_weights=fast.cast_weights))
        for model, ckpt in loaded]
    for model, settings in members:  # the weights' layout and dtype first: torch.compile freezes them
        prepare_for_inference(model, settings, device)
        if c.torch_compile and todo:
            compile_for_inference(model, fast.compile_mode)

    run = ExportRun(str(c.save_dir), c.save_probabilities, c.save_uncertainty, c.save_preview, plans,
                    description, fingerprint, rules)

    def network(case: CaseInput) -> CasePrediction:
        for note in case.notes:
            print(f"warning: {case.name}: {note}")
        chosen, start = [members[i] for i in case_members[case.name]], time.perf_counter()
        probabilities, uncertainty, notes = predict_with_fallback(chosen, case.image, device, c.seed, case.name)
        probabilities = probabilities.cpu().numpy()  # the device's copies are freed here, before the next case
        uncertainty = None if uncertainty is None else uncertainty.cpu().numpy()
        seconds = {**case.seconds, "network": time.perf_counter() - start}  # .cpu(): synchronised
        if not c.save_preview:
            case = dataclasses.replace(case, image=case.image[:0])  # the image is not sent to the writer
        return CasePrediction(case, probabilities, uncertainty, outputs[case.name], stamps[case.name],
                              [str(paths[i]) for i in case_members[case.name]], notes, seconds)

    try:
        written, bad, failed = run_pipeline([(n, n) for n in todo], load, network,
                                            functools.partial(export_case, run=run),
                                            skip_bad_input=c.skip_bad_cases, pools=pools)
    except PipelineError as err:
        raise StageFailed(f"{err}\n(the cases written so far are kept; run again to predict the rest)") from None
    finally:
        shutil.rmtree(checked, ignore_errors=True)
    skipped = bad
    write_config(constants, script, c.save_dir, None if num_parts == 1 else f"{Path(script).stem}_part{part_id}")
    print(f"{len(written)} prediction(s) written to {c.save_dir}" + (f", {len(done)} done before" if done else ""))
    if c.save_preview and written:
        print(f"previews: {Path(c.save_dir) / '<case>_preview.png'}")
    if skipped:
        print(f"skipped {len(skipped)} scan(s) that cannot be predicted:\n{_listing(skipped)}")
    if failed:
        raise StageFailed(f"{len(failed)} case(s) failed, the others were predicted:\n{_listing(failed)}")
    return [Path(c.save_dir) / f"{n}.nii.gz" for n in written]


def _load(name: str, sources: dict[str, RawCase | None], description: DatasetDescription, plans: Plans,
          nonfinite: str, data_dir: str | None) -> CaseInput:
    return load_input(name, sources[name], description, plans, nonfinite, data_dir)
