"""benchmarks/bench_training.py at a tiny size: the batch-1 rows (oneDNN's backward at batch 2, and PyTorch's own
choice beside it, issue 25.2) run and print a rate in the precision asked for."""
import re
import subprocess
import sys


def test_bench_training_times_batch_1_both_ways(repo_root):
    result = subprocess.run([sys.executable, "benchmarks/bench_training.py", "--presets=['tiny']",
                             "--patch_cpu=[16,32,32]", "--batch_sizes=[1]", "--precision=fp32", "--steps=1",
                             "--warmup=0", "--loader_batches=0", "--device=cpu"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("train step")]
    assert [line.split("|")[0].strip() for line in table] == ["train step", "train step, PyTorch backward"]
    assert all("fp32" in line and re.search(r"\d+\.\d+ steps/s", line) for line in table)
