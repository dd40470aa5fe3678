"""--name=value overrides of script constants."""
import json
import subprocess
import sys
import textwrap

import pytest

from light_training.config import apply_overrides, find_constants, parse_value, save_config

SCRIPT = textwrap.dedent('''
    """A demo script."""
    from light_training.config import apply_overrides
    data_dir = "./data/fullres/train"  # where the cases are
    # the initial learning rate
    lr = 1e-2
    max_epoch = 1000
    augmentation = True
    patch_size = [128, 128, 128]
    checkpoint = None  # None: the best checkpoint
    config = apply_overrides(globals())
    derived = max_epoch * 2
''')


def run(tmp_path, repo_root, *args):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT + "import json; print(json.dumps(config))\n")
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(repo_root), "PATH": ""}, cwd=tmp_path)


def test_find_constants_with_comments():
    constants = find_constants(SCRIPT)
    # `config = ...` and `derived = max_epoch * 2` are not literals, so not constants
    assert list(constants) == ["data_dir", "lr", "max_epoch", "augmentation", "patch_size", "checkpoint"]
    assert constants["data_dir"] == ("./data/fullres/train", "where the cases are")
    assert constants["lr"] == (0.01, "the initial learning rate")


def test_good_values(tmp_path, repo_root):
    result = run(tmp_path, repo_root, "--lr=1", "--patch_size=(64,64,32)", "--data_dir=./x",
                 "--augmentation=False", "--checkpoint=./m.pt", "--max_epoch=2")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config == {"data_dir": "./x", "lr": 1.0, "max_epoch": 2, "augmentation": False,
                      "patch_size": [64, 64, 32], "checkpoint": "./m.pt"}
    assert isinstance(config["lr"], float)


@pytest.mark.parametrize("arg, message", [
    ("--max_epoch=2.5", "expected an int"),
    ("--augmentation=1", "expected True or False"),
    ("--patch_size=64", "expected a list"),
    ("--lr=fast", "not a Python literal"),
    ("--max_epochs=3", "did you mean --max_epoch?"),
    ("positional", "unexpected argument"),
])
def test_bad_values_are_rejected(tmp_path, repo_root, arg, message):
    result = run(tmp_path, repo_root, arg)
    assert result.returncode != 0
    assert message in result.stderr


def test_help_lists_every_constant(tmp_path, repo_root):
    result = run(tmp_path, repo_root, "--help")
    assert result.returncode == 0
    for name, comment in [("data_dir", "where the cases are"), ("lr", "the initial learning rate"),
                          ("max_epoch", ""), ("checkpoint", "None: the best checkpoint")]:
        line = next(line for line in result.stdout.splitlines() if f"--{name} " in line)
        assert comment in line
    assert "A demo script." in result.stdout
    assert "derived" not in result.stdout


def test_parse_value_types():
    assert parse_value("x", "3", 1.5) == 3.0
    assert parse_value("x", "[1, 2]", (3, 4)) == (1, 2)
    assert parse_value("x", "'quoted'", "plain") == "quoted"
    assert parse_value("x", "None", None) is None
    with pytest.raises(ValueError):
        parse_value("x", "True", 1)


def test_a_list_of_names_needs_no_quotes():
    assert parse_value("runs", "[diffunet,unet]", ["a"]) == ["diffunet", "unet"]  # what a shell leaves of ['..']
    assert parse_value("runs", "['diffunet', 'unet']", ["a"]) == ["diffunet", "unet"]
    with pytest.raises(ValueError, match="not a Python literal"):
        parse_value("mirror_axes", "[x,y]", [0, 1, 2])  # numbers stay numbers


def test_apply_overrides_in_process_and_save(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(SCRIPT)
    namespace = {"__file__": str(path), "lr": 0.01, "max_epoch": 1000}
    config = apply_overrides(namespace, ["--max_epoch=5"])
    assert namespace["max_epoch"] == 5 and config["max_epoch"] == 5
    save_config(config, tmp_path / "out" / "config.json")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_epoch"] == 5
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.json"]
