"""The demo in a reduced form: every numbered script of both chains, run as a user would; the GPU preset's
command at a tiny size on the CPU."""
import json
import subprocess
import sys


def test_demo_runs_both_chains(tmp_path, repo_root):
    run = subprocess.run(
        [sys.executable, "demo.py", "--num_cases=5", "--max_epoch_aiib2023=1", "--max_epoch_brats2023=1",
         "--num_iterations_per_epoch=2", "--val_every=1",
         "--patch_size=[16,32,32]", "--shape_aiib2023=(32,40,40)", "--shape_brats2023=(24,32,32)",
         "--num_val_patches=2", "--num_workers=0", f"--workdir={tmp_path / 'data'}",
         f"--logdir={tmp_path / 'logs'}", f"--resultdir={tmp_path / 'results'}"],
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "held-out results of the demo" in run.stdout
    assert "demo wall time" in run.stdout
    assert "s per step" in run.stdout  # the trainer's epoch times, summed up per dataset
    for dataset, column in [("aiib2023", "IoU"), ("brats2023", "WT_Dice")]:
        results = tmp_path / "results" / dataset
        summary = json.loads((results / "result_metrics" / "diffunet_summary.json").read_text())
        assert 0.0 <= summary[column]["mean"] <= 1.0
        header = (results / "result_metrics" / "diffunet.csv").read_text().splitlines()[0]
        assert header.startswith("case,")
        predictions = sorted(p.name for p in (results / "diffunet").glob("*.nii.gz") if "_uncertainty" not in p.name)
        assert len(predictions) == 1  # the held-out fold of 5 cases
        case = predictions[0].removesuffix(".nii.gz")
        preview = results / "diffunet" / f"{case}_preview.png"
        assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"preview: {preview}" in run.stdout
        assert (tmp_path / "logs" / dataset / "model" / "best.pt").is_file()
    assert (tmp_path / "results" / "demo_config.json").is_file()


def test_the_gpu_demo_command_runs_at_a_tiny_size(tmp_path, repo_root):
    """``demo.py --device=cuda:0`` on the CPU (--preset=gpu --device=cpu): the "gpu" preset's values fill what the
    command line leaves open (lr, the preprocessing processes, a loader worker process), shrunk here to a tiny
    size; compiling is left off (tests/test_gpu_check.py compiles the training path, test_prediction the sampling)."""
    run = subprocess.run(
        [sys.executable, "demo.py", "--preset=gpu", "--device=cpu", "--model_preset=tiny", "--num_cases=5",
         "--max_epoch_aiib2023=1", "--max_epoch_brats2023=1", "--num_iterations_per_epoch=2", "--val_every=1",
         "--patch_size=[16,32,32]", "--shape_aiib2023=(32,40,40)", "--shape_brats2023=(24,32,32)",
         "--num_val_patches=2", "--num_workers=1", "--torch_compile=False", f"--workdir={tmp_path / 'data'}",
         f"--logdir={tmp_path / 'logs'}", f"--resultdir={tmp_path / 'results'}"],
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "preset 'gpu' on cpu: tiny network" in run.stdout and "--num_processes=8" in run.stdout
    assert "--lr=0.01" in run.stdout and "--torch_compile=False" in run.stdout
    config = json.loads((tmp_path / "results" / "demo_config.json").read_text())
    assert config["preset"] == "gpu" and config["lr"] == 1e-2 and config["num_processes"] == 8
    for dataset, column in [("aiib2023", "IoU"), ("brats2023", "WT_Dice")]:
        summary = json.loads((tmp_path / "results" / dataset / "result_metrics" / "diffunet_summary.json").read_text())
        assert 0.0 <= summary[column]["mean"] <= 1.0
