"""benchmarks/gpu_check.py --device=cpu: the GPU check's every row runs (at small sizes; the compiled training
path compiles the tiny model), so the script cannot rot before a GPU is at hand."""
import json
import subprocess
import sys


def test_gpu_check_runs_on_the_cpu(repo_root, tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device=cpu", "--torch_compile=False",
                             "--steps=1", "--train_patch=[16,16,16]", "--sampling_volume=[16,16,24]",
                             "--large_volume=[16,16,16]", "--stability_steps=3", f"--json={out}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["precision"] in ("bf16", "fp32")
    checks = [row["check"] for row in report["rows"]]
    assert checks[:4] == ["device", "precision", "conv3d", "conv3d"]
    assert {"train step", "sampling", "large volume"} <= set(checks)
    stability = [row for row in report["rows"] if row["check"] == "bf16 2x2x2"]
    assert len(stability) == 2, stability
    # the plain library conv may show oneDNN's fault on this CPU (docs/precision.md); the trainer's steps may not
    assert stability[0]["result"].startswith(("ok: 0 wrong", "library fault")), stability[0]
    assert stability[1]["result"].startswith("ok: 0 (fp32 0) skipped"), stability[1]
    assert all(row["result"].startswith("ok") for row in report["rows"][2:] if row not in stability)
    measured = [row for row in report["rows"] if row["peak_gib"] is not None]
    assert len(measured) == 4 and all(row["estimate_gib"] > 0 for row in measured)
    # the volume rows: the window and the inferer's whole-volume buffers, estimated and measured alike
    volumes = [row for row in measured if row["check"] in ("sampling", "large volume")]
    assert len(volumes) == 2 and all(abs(row["estimate_gib"] / row["peak_gib"] - 1) < 0.1 for row in volumes), volumes
    # the resolved precision's training step: estimated and measured agree (fp16 on a CPU without fp16 units
    # converts inside its kernels, which the estimate does not count)
    step = measured[0]
    assert step["check"] == "train step" and abs(step["estimate_gib"] / step["peak_gib"] - 1) < 0.15, step
    assert "fp16, GradScaler" in result.stdout  # the fp16 step runs with the scaler
    # the compiled training path (regional): compiled by its first step, no recompiles after it, and
    # validation compiles once (its short last batch padded), not again at the second validation
    first_step, after, first_val, second_val = [row for row in report["rows"]
                                                if row["check"] in ("compiled step", "compiled val")]
    assert "regional, 1st" in first_step["setting"] and int(first_step["result"].split()[1]) > 0
    assert after["result"] == "ok, 0 recompiles" and after["seconds"] > 0
    assert int(first_val["result"].split()[1]) > 0 and second_val["result"] == "ok, 0 graphs"
