"""benchmarks/bench_loader.py at a tiny size: every row (channels x workers) runs and is a rate."""
import json
import subprocess
import sys


def test_bench_loader_prints_patches_per_second(repo_root, tmp_path):
    out = tmp_path / "loader.json"
    result = subprocess.run([sys.executable, "benchmarks/bench_loader.py", "--patch_size=[16,16,16]",
                             "--case_shape=[20,24,17]", "--num_workers=[0,1]", "--num_cases=2",
                             "--warmup_per_worker=1", "--batches_per_worker=1", f"--json={out}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["channels"], r["workers"]) for r in rows] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    assert all(r["batches"] == 6 and r["patches_per_s"] > 0 for r in rows)
    assert "patches/s" in result.stdout
