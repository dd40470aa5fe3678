"""benchmarks/bench_speed.py: rows the estimator says do not fit the card are skipped with the reason, and the
fp32 baseline's math is printed (a tiny run on the CPU; --card_gib stands for a GPU's memory)."""
import json
import subprocess
import sys


def test_rows_that_do_not_fit_the_card_are_skipped(repo_root, tmp_path):
    out = tmp_path / "bench_speed.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_speed.py", "--device=cpu", "--quick=True",
                             "--preset=tiny", "--window=16", "--repeats=1", "--fast_compile=False", "--card_gib=0.5",
                             f"--json={out}"], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["fp32_math"] == {"conv": "ieee", "matmul": "ieee"}
    assert report["sample_16_fast_s"] is None and report["train_step_16_fast_s"] is None
    assert "fp32 baseline's math (conv / matmul)" in result.stdout
    assert result.stdout.count("skipped does not fit: estimated") == 2 and "> the card's 0.5 GiB" in result.stdout
