"""The ablation benchmark in a reduced form: two variants through the real numbered scripts, one table."""
import json
import subprocess
import sys


def test_bench_ablations_prints_one_row_per_variant(tmp_path, repo_root):
    variants = ["unet", "fusion_last"]  # fusion_last trains diffunet without a row of its own
    table_json = tmp_path / "table.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_ablations.py", f"--variants={variants}", "--num_cases=5", "--max_epoch=1",
         "--num_iterations_per_epoch=2", "--val_every=1", "--patch_size=[16,32,32]", "--shape=[32,40,40]",
         "--num_val_patches=2", "--num_workers=0", f"--workdir={tmp_path / 'work'}", f"--json={table_json}"],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(table_json.read_text())
    assert [row["variant"] for row in result["rows"]] == variants
    assert [row["trained_as"] for row in result["rows"]] == ["unet", "diffunet"]
    assert result["columns"] == ["IoU", "DLR", "DBR", "precision", "unc_AUROC"]
    for row in result["rows"]:
        assert row["cases"] == 1 and row["unscored"] == {}  # one held-out case of five, scored
        for column in result["columns"]:
            assert 0.0 <= row[column] <= 1.0, (row["variant"], column, row[column])
        assert row["train_s"] > 0 and row["predict_s_per_case"] > 0
    # the printed table: a header naming the machine and the budget, then one line per variant
    out = run.stdout
    assert "cores, load average at start" in out and "budget: 1 epochs x 2 steps" in out
    assert "synthetic data cannot rank methods" in out
    lines = out.splitlines()
    table = lines[[line.split()[:2] for line in lines].index(["variant", "IoU"]):]
    assert table[0].split() == ["variant", *result["columns"], "train_s", "predict_s/case", "cases"]
    assert [line.split()[0] for line in table[2:2 + len(variants)]] == variants
    assert table[3].split()[len(result["columns"]) + 1] == "(diffunet)"  # the shared training run, not timed twice
    assert (tmp_path / "work" / "aiib2023" / "runs" / "diffunet" / "model" / "best.pt").is_file()
    assert not (tmp_path / "work" / "aiib2023" / "runs" / "fusion_last").exists()
