"""The numbered scripts: constants and one call, the chains differing in constants only, folders kept apart."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from light_training.config import find_constants

CHAINS = {
    "aiib2023": ["1_preprocessing_aiib2023.py", "2_train_diffunet_aiib2023.py", "3_predict_aiib2023.py",
                 "4_compute_metrics_aiib2023.py"],
    "brats2023": ["brats2023/2_preprocessing_brats2023.py", "brats2023/3_train_diffunet_brats2023.py",
                  "brats2023/4_predict_brats2023.py", "brats2023/5_compute_metrics_brats2023.py"],
    "own": ["your_dataset/1_preprocessing.py", "your_dataset/2_train_diffunet.py", "your_dataset/3_predict.py",
            "your_dataset/4_compute_metrics.py"],
}
FOLDER_CONSTANTS = ("output_dir", "data_dir", "logdir", "save_dir")  # what the scripts write (results_dir is read)


def code_without_constants(path: Path) -> str:
    """The script's syntax tree without its docstring and constants (the sys.path line differs by depth only)."""
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body[1:] if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant | ast.List))]
    return "\n".join(ast.dump(node) for node in body if "parents" not in ast.dump(node))


@pytest.mark.parametrize("stage", range(4))
def test_chains_differ_in_constants_only(repo_root, stage):
    scripts = [repo_root / CHAINS[chain][stage] for chain in CHAINS]
    codes = {code_without_constants(path) for path in scripts}
    assert len(codes) == 1, [s.name for s in scripts]
    constants = [list(find_constants(path.read_text())) for path in scripts]
    assert all(c == constants[0] for c in constants), constants  # the same names, in the same order
    assert len(scripts[0].read_text().splitlines()) < 80


def test_default_folders_keep_the_chains_apart(repo_root):
    folders = {chain: {Path(value).as_posix() for path in scripts
                       for name, (value, _) in find_constants((repo_root / path).read_text()).items()
                       if name in FOLDER_CONSTANTS and value} for chain, scripts in CHAINS.items()}
    assert "data/fullres/train" in folders["aiib2023"] and "logs/diffunet" in folders["aiib2023"]
    assert "prediction_results/diffunet" in folders["aiib2023"]  # the original's documented paths
    for a in CHAINS:
        for b in CHAINS:
            if a < b:
                for x in folders[a]:
                    for y in folders[b]:
                        # no folder of one chain is, or lies inside, a folder another chain writes
                        assert not (x == y or x.startswith(y + "/") or y.startswith(x + "/")), (a, x, b, y)


def test_a_docstring_mentioning_the_call_changes_nothing(tmp_path, repo_root):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent('''
        """Mentions run(stage, globals()) and apply_overrides(globals()) in its docstring."""
        from light_training.config import apply_overrides
        lr = 0.01  # the learning rate
        max_epoch = 3
        config = apply_overrides(globals())
        print(config)
    '''))
    result = subprocess.run([sys.executable, str(script), "--lr=0.5"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(repo_root), "PATH": ""}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'lr': 0.5" in result.stdout and "'max_epoch': 3" in result.stdout


@pytest.mark.parametrize("script", CHAINS["own"])  # the other chains run the same code (test above)
def test_help_lists_the_constants(repo_root, script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0 and "--dataset " in result.stdout, result.stderr
