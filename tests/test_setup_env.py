"""tools/setup_env.sh: the torch build it chooses, and that a second run installs nothing.

Nothing is installed: the plan is printed (--print-plan), or run against a stand-in python3 that
only records its arguments. `nvidia-smi` is looked up on a PATH made in tmp_path.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

BASH = shutil.which("bash")
SCRIPT = "tools/setup_env.sh"
# Records how it was called; `-m venv DIR` also makes DIR/bin/python, a copy of itself.
FAKE_PYTHON = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_PYTHON_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def print_plan(repo: Path, path: str, **env: str) -> list[str]:
    """The plan's lines, run with PATH=path and nothing else in the environment but env."""
    result = subprocess.run([BASH, SCRIPT, "--print-plan"], cwd=repo, env={"PATH": path, **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def requirement_names(lines: list[str]) -> set[str]:
    return {line.split(">")[0].split("=")[0].strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.fixture
def repo_copy(repo_root, tmp_path) -> Path:
    """The script and requirements.txt in a folder of their own, for runs that write .venv."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(repo_root / SCRIPT, repo / SCRIPT)
    shutil.copy(repo_root / "requirements.txt", repo)
    return repo


@pytest.fixture
def no_nvidia_smi(tmp_path) -> str:
    """A PATH holding only an empty folder: no nvidia-smi, and nothing else."""
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


@pytest.fixture
def working_nvidia_smi(tmp_path) -> str:
    return str(executable(tmp_path / "gpu" / "nvidia-smi", "#!/bin/sh\necho 'NVIDIA-SMI 550.54'\n").parent)


def test_no_nvidia_smi_takes_the_cpu_wheel_first(repo_root, no_nvidia_smi):
    plan = print_plan(repo_root, no_nvidia_smi)
    assert plan[0] == "python3 -m venv .venv"
    torch_line = plan.index(".venv/bin/python -m pip install torch==2.13.0")
    requirements_line = next(i for i, line in enumerate(plan) if "pip install -r" in line)
    assert torch_line < requirements_line  # else `torch>=2.1` pulls a CUDA build
    assert "pip install -r requirements.txt" not in "\n".join(plan)


def test_failing_nvidia_smi_means_cpu(repo_root, tmp_path):
    # A driver that is installed but does not answer: the CUDA build would not run.
    failing = executable(tmp_path / "broken" / "nvidia-smi", "#!/bin/sh\nexit 9\n").parent
    plan = print_plan(repo_root, str(failing))
    assert ".venv/bin/python -m pip install torch==2.13.0" in plan


def test_working_nvidia_smi_takes_the_tested_torch_then_requirements(repo_root, working_nvidia_smi):
    plan = print_plan(repo_root, working_nvidia_smi)
    assert plan == ["python3 -m venv .venv", ".venv/bin/python -m pip install torch==2.13.0",
                    ".venv/bin/python -m pip install -r requirements.txt"]  # the tested version, CUDA build


def test_torch_build_overrides_the_detection(repo_root, working_nvidia_smi, no_nvidia_smi):
    assert ".venv/bin/python -m pip install torch==2.13.0" in print_plan(repo_root, working_nvidia_smi,
                                                                        TORCH_BUILD="cpu")
    assert ".venv/bin/python -m pip install -r requirements.txt" in print_plan(repo_root, no_nvidia_smi,
                                                                              TORCH_BUILD="cuda")
    result = subprocess.run([BASH, SCRIPT, "--print-plan"], cwd=repo_root, capture_output=True, text=True,
                            env={"PATH": no_nvidia_smi, "TORCH_BUILD": "gpu"}, timeout=30)
    assert result.returncode != 0
    assert "TORCH_BUILD=gpu" in result.stderr and "auto, cpu or cuda" in result.stderr


def test_cpu_plan_installs_every_requirement(repo_root, tmp_path, no_nvidia_smi):
    """Run the plan's filter on a copy of requirements.txt: all of it is installed, timm's one without deps."""
    plan = print_plan(repo_root, no_nvidia_smi)
    work = tmp_path / "work"
    (work / ".venv").mkdir(parents=True)
    shutil.copy(repo_root / "requirements.txt", work)
    filter_line = next(line for line in plan if line.startswith("grep "))
    subprocess.run(filter_line, shell=True, cwd=work, check=True)
    filtered_file = filter_line.split("> ")[1]
    filtered = requirement_names((work / filtered_file).read_text().splitlines())
    assert any(line.endswith(f"pip install -r {filtered_file}") for line in plan)

    no_deps_line = next(line for line in plan if "--no-deps" in line)
    no_deps = no_deps_line.split("--no-deps ")[1].strip("'")
    assert no_deps.startswith("dynamic_network_architectures")
    assert no_deps in (repo_root / "requirements.txt").read_text()  # the version bound comes along
    assert "dynamic_network_architectures" not in filtered
    assert filtered | requirement_names([no_deps]) == requirement_names(
        (repo_root / "requirements.txt").read_text().splitlines())


def test_second_run_installs_nothing_until_requirements_change(repo_copy, tmp_path):
    repo = repo_copy
    fake_bin = executable(tmp_path / "bin" / "python3", FAKE_PYTHON).parent
    log = tmp_path / "calls.log"
    env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "FAKE_PYTHON_LOG": str(log), "TORCH_BUILD": "cpu"}

    def run() -> tuple[str, list[str]]:
        result = subprocess.run([BASH, SCRIPT], cwd=repo, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout, log.read_text().splitlines()

    out, calls = run()
    installs = [call for call in calls if " pip install " in call]
    assert len(installs) == 3 and "ready" in out
    out, calls_again = run()
    assert calls_again == calls and "up to date" in out
    with open(repo / "requirements.txt", "a") as f:
        f.write("pyyaml\n")
    out, calls_after_change = run()
    assert len([call for call in calls_after_change if " pip install " in call]) == 6


def test_missing_venv_module_is_said_clearly(repo_copy, tmp_path):
    no_venv = executable(tmp_path / "bin" / "python3", "#!/bin/sh\nexit 1\n").parent
    result = subprocess.run([BASH, SCRIPT], cwd=repo_copy, capture_output=True, text=True, timeout=30,
                            env={"PATH": f"{no_venv}{os.pathsep}{os.environ['PATH']}", "TORCH_BUILD": "cpu",
                                 "PYTHON": str(no_venv / "python3")})
    assert result.returncode == 1
    assert not (repo_copy / ".venv").exists()
    assert "-m venv' is not available" in result.stderr and "python3-venv" in result.stderr


def test_the_pinned_torch_is_the_one_the_tests_run_on(repo_root):
    import torch

    line = next(l for l in (repo_root / SCRIPT).read_text().splitlines() if l.startswith("TESTED_TORCH="))
    assert line.split('"')[1] == f"torch=={torch.__version__.split('+')[0]}"
