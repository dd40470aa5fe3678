"""Prediction of a folder (issue 19): resume after SIGKILL, parts and torchrun ranks, fold ensembles,
worker processes, and the out-of-memory retry (issue 18) injected through a model that raises it."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffunet import DiffUNet
from light_training.checkpoint import archive_previous_run, fold_logdir, load_checkpoint, save_checkpoint
from light_training.inference.ensemble import checkpoint_paths, load_ensemble
from light_training.inference.pipeline import (CaseFailed, PipelineError, allocation_failure, default_workers,
                                               oom_next_step, predict_with_fallback, run_pipeline)
from light_training.inference.prediction import InferenceSettings, predict_ensemble
from light_training.inference.resume import case_part, resolve_part
from light_training.io import read_volume, write_volume
from light_training.synthetic.generate import AIIB_FOLDER, generate_aiib2023
from test_predict_checks import tiny_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Four small CTs in a folder, and two tiny checkpoints of different weights."""
    root = tmp_path_factory.mktemp("folder")
    generate_aiib2023(root / "raw", num_cases=4, shape=(20, 28, 28))
    folder = root / "scans"
    for path in sorted((root / "raw" / AIIB_FOLDER / "img").glob("*.nii.gz")):
        write_volume(*read_volume(path), folder / path.name)
    for seed, name in ((0, "a.pt"), (1, "b.pt")):
        torch.manual_seed(seed)
        tiny_checkpoint(root / "raw" / AIIB_FOLDER, root / name)
    return root, folder


def predict_in_process(repo_root, folder, save_dir, *extra):
    """The AIIB prediction script's stage, in this process (no interpreter start-up), with its constants."""
    from light_training.config import apply_overrides
    from light_training.stages.predict import predict

    args = [f"--input_dir={folder}", f"--save_dir={save_dir}", "--device=cpu", "--torch_compile=False",
            "--mirror_axes=[]", *extra]
    return predict(apply_overrides({"__file__": str(repo_root / "3_predict_aiib2023.py")}, args),
                   "3_predict_aiib2023.py")


def test_parts_are_disjoint_cover_the_folder_and_follow_torchrun_ranks():
    names = [f"case_{i}" for i in (3, 11, 0, 7, 5, 9, 1)]
    parts = [case_part(names, 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(names) and sum(len(p) for p in parts) == len(names)
    assert parts == [case_part(list(reversed(names)), 3, k) for k in range(3)]  # not the listing's order
    assert resolve_part(1, 0, {}) == (1, 0)
    assert resolve_part(1, 0, {"WORLD_SIZE": "4", "RANK": "2"}) == (4, 2)
    assert resolve_part(2, 1, {"WORLD_SIZE": "4", "RANK": "3"}) == (8, 7)  # two machines' parts, 4 ranks each
    with pytest.raises(ValueError, match="part_id=3"):
        case_part(names, 3, 3)


def test_worker_and_oom_decisions():
    assert default_workers("cpu", 64) == (0, 0)
    assert default_workers("cuda", 16) == (2, 1) and default_workers("cuda", 2) == (1, 1)
    for who, error in ALLOCATION_FAILURES.items():
        assert allocation_failure(error) == who
        assert oom_next_step(error, buffers_on_cpu=False) == "retry_buffers_on_cpu"
        assert oom_next_step(error, buffers_on_cpu=True) == "fail"
    for other in (RuntimeError("other"), RuntimeError("CUDNN_STATUS_BAD_PARAM"), ValueError("out of memory?")):
        assert allocation_failure(other) is None and oom_next_step(other, buffers_on_cpu=False) == "raise"


# each way a GPU reports a failed allocation (the messages as torch 2.x words them)
ALLOCATION_FAILURES = {
    "torch": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"),
    "cuDNN": RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "cuBLAS": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "CUDA": RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
}


class OutOfMemoryAtFirst(torch.nn.Module):
    """A real tiny Diff-UNet whose first ``failures`` sampling calls raise ``error`` (CUDA's out-of-memory
    error by default; no GPU here to run out of)."""

    def __init__(self, model, failures, error=ALLOCATION_FAILURES["torch"]):
        super().__init__()
        self.model, self.failures, self.error = model, failures, error

    def sample_members(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.model.sample_members(*args, **kwargs)


@pytest.mark.parametrize("who", sorted(ALLOCATION_FAILURES))
def test_every_allocation_failure_is_retried_with_a_note(who, capsys):
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny").eval()
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(), precision="fp32", progress=False, steps=1)
    image = torch.randn(1, 16, 16, 16)
    error = ALLOCATION_FAILURES[who]
    _, _, notes = predict_with_fallback([(OutOfMemoryAtFirst(model, 1, error), settings)], image, CPU, 0, "case_7")
    assert len(notes) == 1 and notes[0].startswith(f"case_7: out of memory on cpu ({who}: {type(error).__name__}")
    assert str(error).splitlines()[0] in notes[0] and "buffers on the CPU" in capsys.readouterr().out
    with pytest.raises(CaseFailed, match=f"case_7: out of memory on cpu \\({who}\\)"):
        predict_with_fallback([(OutOfMemoryAtFirst(model, 2, error), settings)], image, CPU, 0, "case_7")


def test_out_of_memory_is_retried_with_buffers_on_the_cpu_then_listed(capsys):
    torch.manual_seed(0)
    model = DiffUNet(1, 2, preset="tiny").eval()
    settings = InferenceSettings(patch_size=(16, 16, 16), mirror_axes=(), precision="fp32", progress=False)
    image = torch.randn(1, 18, 16, 20)
    expected, _ = predict_ensemble([(model, settings)], image, CPU, seed=0)
    probs, _, notes = predict_with_fallback([(OutOfMemoryAtFirst(model, 1), settings)], image, CPU, 0, "big_case")
    torch.testing.assert_close(probs, expected)
    assert "big_case: out of memory" in notes[0] and "buffers on the CPU" in capsys.readouterr().out
    with pytest.raises(CaseFailed, match="even with the whole-volume buffers on the CPU"):
        predict_with_fallback([(OutOfMemoryAtFirst(model, 2), settings)], image, CPU, 0, "big_case")

    def predict(name):  # the second case runs out of memory twice: listed, and the third still predicted
        members = [(OutOfMemoryAtFirst(model, 2 if name == "b" else 0), settings)]
        return predict_with_fallback(members, image, CPU, 0, name)[0]
    written, bad, failed = run_pipeline([(n, n) for n in "abc"], str, predict, lambda p: p.shape, progress=False)
    assert written == ["a", "c"] and not bad and list(failed) == ["b"]


def _load_or_break(name):
    if name == "broken":
        raise OSError(f"{name}.nii.gz: disk read error")
    time.sleep(0.2)
    return np.full(3, len(name))


def _write(array):
    return int(array.sum())


def _check(name):
    if name == "bad":
        raise ValueError(f"{name}.nii.gz: not 3-D")
    return len(name)


def test_a_worker_error_names_the_case_and_stops_cleanly():
    items = [(n, n) for n in ("one", "two", "broken", "four", "five")]
    done = []
    written, bad, failed = run_pipeline(items[:2], _load_or_break, lambda a: a * 2, _write, 2, 1, progress=False)
    assert written == ["one", "two"]
    with pytest.raises(PipelineError, match=r"broken: reading and preprocessing failed \(OSError: broken.nii.gz"):
        run_pipeline(items, _load_or_break, lambda a: done.append(a) or a, _write, 2, 1, progress=False)
    assert len(done) == 2  # the cases before the broken one went through
    assert not multiprocessing.active_children()  # every worker joined


def test_worker_pools_fork_when_made_and_the_pipeline_runs_in_them():
    """The stage makes the pools before its models go to the GPU: the workers must exist once they are made (a
    fork pool otherwise forks at its first task, after the models), and a pipeline run in them leaves them up."""
    from light_training.inference.pipeline import WorkerPools, check_all

    with WorkerPools(1, 1) as pools:
        workers = {p.pid for p in multiprocessing.active_children()}
        assert len(workers) == 2
        results, bad = check_all([(n, n) for n in ("one", "bad", "two")], _check, pools)  # every case, bad or not
        assert results == {"one": 3, "two": 3} and bad == {"bad": "bad.nii.gz: not 3-D"}
        with pytest.raises(PipelineError, match="broken: checking failed"):  # not a bad input: the run stops
            check_all([("broken", "broken")], _load_or_break, pools)
        written, _, _ = run_pipeline([("one", "one"), ("two", "two")], _load_or_break, lambda a: a * 2, _write,
                                     pools=pools, progress=False)
        assert written == ["one", "two"] and {p.pid for p in multiprocessing.active_children()} == workers
    assert not multiprocessing.active_children()


def test_fold_folders_side_by_side(tmp_path):
    logdir = tmp_path / "logs"
    assert fold_logdir(logdir, 0) == logdir and fold_logdir(logdir, 3) == logdir / "fold_3"
    for fold in (0, 1):
        (fold_logdir(logdir, fold) / "model").mkdir(parents=True)
        (fold_logdir(logdir, fold) / "model" / "best.pt").write_bytes(b"x")
    moved = archive_previous_run(logdir)  # fold 0 trained again: only its own run moves
    assert (moved / "model" / "best.pt").is_file() and (logdir / "fold_1" / "model" / "best.pt").is_file()
    assert checkpoint_paths(None, [0, 1], logdir) == [logdir / "model/best.pt", logdir / "fold_1/model/best.pt"]
    assert checkpoint_paths(None, None, logdir, "final") == [logdir / "model/final.pt"]
    assert checkpoint_paths("[a.pt, b.pt]", None, logdir) == [Path("a.pt"), Path("b.pt")]
    with pytest.raises(ValueError, match="not both"):
        checkpoint_paths("a.pt", [0], logdir)


def test_ensemble_is_the_mean_of_its_members(scans, repo_root, tmp_path):
    root, folder = scans
    outputs = {}
    for name, checkpoint in (("a", root / "a.pt"), ("b", root / "b.pt"), ("ab", f"[{root / 'a.pt'},{root / 'b.pt'}]")):
        written = predict_in_process(repo_root, folder, tmp_path / name, f"--checkpoint={checkpoint}",
                                     "--save_probabilities=True", "--seed=5", "--num_parts=4", "--part_id=1")
        (npz,) = (tmp_path / name).glob("*.npz")  # one case: part 1 of 4
        assert len(written) == 1 and npz.name == written[0].name.replace(".nii.gz", ".npz")
        outputs[name] = np.load(npz)["probabilities"]
    assert np.abs(outputs["a"] - outputs["b"]).max() > 1e-3  # two different models
    np.testing.assert_allclose(outputs["ab"], (outputs["a"] + outputs["b"]) / 2, atol=1e-4)
    other = load_checkpoint(root / "b.pt")
    other["plans"]["target_spacing"] = [2.0, 2.0, 2.0]
    save_checkpoint(other, tmp_path / "other_plans.pt")
    with pytest.raises(ValueError, match=r"other_plans.pt was trained with other plans than .*a.pt.*target_spacing"):
        load_ensemble([root / "a.pt", tmp_path / "other_plans.pt"], "aiib2023", CPU)


def test_killed_prediction_resumes_without_redoing_finished_cases(scans, repo_root, tmp_path, capsys):
    root, folder = scans
    save_dir = tmp_path / "out"
    settings = [f"--checkpoint={root / 'a.pt'}", "--save_uncertainty=True", "--mirror_axes=[]", "--overlap=0.25"]
    args = [sys.executable, "3_predict_aiib2023.py", f"--input_dir={folder}", f"--save_dir={save_dir}",
            "--device=cpu", "--torch_compile=False", *settings]
    process = subprocess.Popen(args, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(save_dir.glob("*_record.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = sorted(save_dir.glob("*_record.json"))
    assert first, "the first case was never written"
    stamps = {p: p.stat().st_mtime_ns for p in save_dir.glob("*.nii.gz")}
    predict_in_process(repo_root, folder, save_dir, *settings)  # started again
    assert f"{len(first)} already done, skipped" in capsys.readouterr().out
    cases = sorted(p.name.removesuffix(".nii.gz") for p in folder.glob("*.nii.gz"))
    assert sorted(p.name.removesuffix("_record.json") for p in save_dir.glob("*_record.json")) == cases
    assert sorted(p.name for p in save_dir.glob("*.nii.gz")) == sorted(
        [f"{c}.nii.gz" for c in cases] + [f"{c}_uncertainty.nii.gz" for c in cases])
    for record in first:  # not redone
        name = record.name.removesuffix("_record.json")
        assert stamps[save_dir / f"{name}.nii.gz"] == (save_dir / f"{name}.nii.gz").stat().st_mtime_ns
    assert not [p for p in save_dir.iterdir() if p.name.startswith(".")]  # no partial or temporary file
    part = ["--num_parts=4", "--part_id=0"]  # one case, to keep the test short
    assert len(predict_in_process(repo_root, folder, save_dir, *settings, *part, "--overwrite=True")) == 1


def test_torchrun_ranks_split_the_folder(scans, repo_root, tmp_path):
    root, folder = scans
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "3_predict_aiib2023.py", f"--input_dir={folder}", f"--save_dir={tmp_path / 'out'}",
           f"--checkpoint={root / 'a.pt'}", "--device=cpu", "--torch_compile=False", "--mirror_axes=[]"]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "(part 0 of 2: 2 of 4 cases)" in result.stdout and "(part 1 of 2: 2 of 4 cases)" in result.stdout
    assert len(list((tmp_path / "out").glob("*_record.json"))) == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("*_config.json")) == [
        "3_predict_aiib2023_part0_config.json", "3_predict_aiib2023_part1_config.json"]


def test_held_out_mode_gives_each_case_the_model_that_did_not_see_it(tmp_path, repo_root):
    from test_ddp import preprocessed_synthetic

    from light_training.config import apply_overrides, settings_from
    from light_training.datasets import load_dataset
    from light_training.stages.predict import PredictStageSettings, _find_cases
    from light_training.training.splits import fold_cases

    train = preprocessed_synthetic(tmp_path, num_cases=6)
    checkpoints = [{"config": {"fold": 0}}, {"config": {"fold": 3}}]
    config = apply_overrides({"__file__": str(repo_root / "3_predict_aiib2023.py")}, [f"--data_dir={train}"])
    sources, members = _find_cases(settings_from(PredictStageSettings, config), load_dataset("aiib2023"), checkpoints)
    held_out = {0: fold_cases(train, 0)[1], 3: fold_cases(train, 3)[1]}
    assert sorted(sources) == sorted(held_out[0] + held_out[3])
    assert all(members[c] == [0] for c in held_out[0]) and all(members[c] == [1] for c in held_out[3])
    _, members = _find_cases(settings_from(PredictStageSettings, {**config, "fold": 3}), load_dataset("aiib2023"),
                             checkpoints)
    assert sorted(members) == sorted(held_out[3]) and all(m == [0, 1] for m in members.values())


def test_bench_prediction_quick(tmp_path, repo_root):
    import json

    result = subprocess.run([sys.executable, "benchmarks/bench_prediction.py", "--quick=True",
                             f"--json={tmp_path / 'rows.json'}"], cwd=repo_root, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["dataset"], r["workers"], r["cases"]) for r in rows] == [("aiib2023", "1 + 1", 2)]
    for row in rows:
        assert row["network s/case"] > 0 and row["wall s"] > row["network s/case"] and row["peak RSS GiB"] > 0.1
    assert "| dataset | cases |" in result.stdout and "load average at start" in result.stdout


def _counting_reader(log: Path):
    """``read_image`` that appends the file it reads to ``log`` (a file: the workers are other processes)."""
    from light_training.io import read_image

    def read(paths):
        with open(log, "a") as file:
            file.writelines(f"{Path(p).name}\n" for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        return read_image(paths)
    return read


def test_each_scan_is_read_once_and_the_workers_start_before_the_models_load(scans, repo_root, tmp_path,
                                                                           monkeypatch, capsys):
    """The up-front check (skip_bad_cases=False, the default) is the only reading of a scan: the network takes
    the checked copies; and the worker processes exist before any model is loaded onto the device."""
    import light_training.preprocessing.raw_cases as raw_cases
    import light_training.stages.predict as stage

    root, folder = scans
    log = tmp_path / "reads.txt"
    monkeypatch.setattr(raw_cases, "read_image", _counting_reader(log))
    workers_at_load, workers_at_backends = [], []

    def load_models(*args, **kwargs):
        workers_at_load.append(len(multiprocessing.active_children()))
        return real_load(*args, **kwargs)

    def configure_backends(*args, **kwargs):  # the first call that asks CUDA something (its capability)
        workers_at_backends.append(len(multiprocessing.active_children()))
        return real_configure(*args, **kwargs)
    real_load, real_configure = stage.load_models, stage.configure_backends
    monkeypatch.setattr(stage, "load_models", load_models)
    monkeypatch.setattr(stage, "configure_backends", configure_backends)
    written = predict_in_process(repo_root, folder, tmp_path / "out", f"--checkpoint={root / 'a.pt'}",
                                 "--num_parts=2", "--part_id=0", "--num_processes_preprocessing=1",
                                 "--num_processes_export=1")
    assert len(written) == 2
    reads = log.read_text().split()
    assert sorted(reads) == sorted(p.name for p in written), reads  # each scan once (a case's file: its name)
    assert workers_at_load == [2]  # 1 loading + 1 writing process, forked before the models were loaded
    assert workers_at_backends == [2]  # ... and before the precision is resolved (on CUDA: the first CUDA call)
    assert "checked 2 scan(s) in" in capsys.readouterr().out
    for path in written:
        seconds = json.loads(path.with_name(path.name.replace(".nii.gz", "_record.json")).read_text())["seconds"]
        assert set(seconds) == {"read + preprocess", "load checked input", "network", "restore + write"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # the checked copies are gone
