"""A 2-process torchrun run of the training script (gloo on the CPU): it finishes and only rank 0 writes."""
import os
import subprocess
import sys
from pathlib import Path

from light_training.checkpoint import load_checkpoint
from light_training.preprocessing.raw_cases import find_raw_cases
from light_training.planning.dataset_plan import prepare_plans
from light_training.plans import plans_path
from light_training.preprocessing.preprocess import preprocess_dataset
from light_training.synthetic.generate import generate_aiib2023


def preprocessed_synthetic(root: Path, num_cases: int = 4) -> Path:
    """Synthetic AIIB2023 cases, preprocessed as 1_preprocessing_aiib2023.py does; returns the data folder."""
    generate_aiib2023(root / "raw_data", num_cases=num_cases, seed=1, shape=(18, 22, 22))
    raw_cases = find_raw_cases(root / "raw_data" / "AIIB23_Train_T1", "aiib2023")
    train = root / "fullres" / "train"
    preprocess_dataset(raw_cases, prepare_plans(plans_path(train), raw_cases, "aiib2023", None, 0), train, 0)
    return train


def test_torchrun_two_processes_on_cpu(tmp_path: Path, repo_root: Path):
    train, logdir = preprocessed_synthetic(tmp_path), tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "2_train_diffunet_aiib2023.py", f"--data_dir={train}", f"--logdir={logdir}", "--device=cpu",
           "--model_preset=tiny", "--patch_size=[16,16,16]", "--max_epoch=2", "--num_iterations_per_epoch=2",
           "--num_workers=1", "--val_every=1", "--num_val_patches=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # rank 0 alone prints, logs and saves
    assert result.stdout.count("epoch 1/2 |") == 1 and result.stdout.count("epoch 2/2 |") == 1
    assert "cpu x 2" in result.stdout
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    assert len(list(logdir.glob("*_config.json"))) == 1 and not (logdir / "previous_runs").exists()
    assert sorted(p.name for p in (logdir / "model").iterdir()) == ["best.pt", "final.pt", "latest.pt"]
    final = load_checkpoint(logdir / "model" / "final.pt")
    assert final["world_size"] == 2 and final["epoch"] == 2
    assert (tmp_path / "fullres" / "splits.json").is_file()
