"""A 2-process torchrun run of the training script (gloo on the CPU): it finishes and only rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from light_training.checkpoint import load_checkpoint


def write_cases(train: Path, num_cases: int = 4) -> None:
    """Preprocessed cases (1 channel, class 1 = a bright block) and plans.json in ``train``'s parent."""
    train.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(num_cases):
        label = np.zeros((18, 20 + i, 17), np.uint8)
        label[4:12, 6:14, 5:11] = 1
        np.save(train / f"c{i}_image.npy", (rng.normal(size=(1, *label.shape)) + label).astype(np.float32))
        np.save(train / f"c{i}_label.npy", label)
        (train / f"c{i}.json").write_text(json.dumps({"case": f"c{i}",
                                                      "class_locations": {"1": np.argwhere(label).tolist()}}))
    (train.parent / "plans.json").write_text(json.dumps(
        {"dataset": "aiib2023", "channel_names": ["CT"], "num_classes": 2, "labels": [0, 1],
         "label_names": ["background", "airway"]}))


def test_torchrun_two_processes_on_cpu(tmp_path: Path, repo_root: Path):
    train, logdir = tmp_path / "fullres" / "train", tmp_path / "logs"
    write_cases(train)
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
