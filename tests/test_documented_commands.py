"""Every command the documentation shows names a script that exists and constants that script has.

A user copies these lines; an override the script does not know stops it at once ("unknown constant").
Read from the README, docs/*.md, the Makefile and the docstrings of the numbered scripts, the demo and the benchmarks.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# "python[3] SCRIPT.py ARGS" or "torchrun --nproc_per_node=N SCRIPT.py ARGS", up to a comment or a backtick
_COMMAND = re.compile(r"(?:python3?|torchrun(?: --\S+)*) ((?:[\w./-]+/)?\w+\.py)([^`#\n]*)")
_MAKE_DEMO = re.compile(r'make demo ARGS="([^"]*)"')
_OVERRIDE = re.compile(r"--(\w+)")


def _documents() -> list[Path]:
    scripts = [*ROOT.glob("[0-9]_*.py"), *ROOT.glob("brats2023/[0-9]_*.py"), *ROOT.glob("your_dataset/[0-9]_*.py"),
               ROOT / "demo.py", *ROOT.glob("benchmarks/*.py")]
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), ROOT / "Makefile", *sorted(scripts)]


def _text(path: Path) -> str:
    """The README, docs and Makefile whole; of a Python file, its docstring (the examples users copy)."""
    if path.suffix != ".py":
        return path.read_text()
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, script, override names)`` for every command shown."""
    found = []
    for doc in _documents():
        for line_number, line in enumerate(_text(doc).splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{line_number}"
            for script, args in _COMMAND.findall(line):
                found.append((where, script, _OVERRIDE.findall(args)))
            for args in _MAKE_DEMO.findall(line):
                found.append((where, "demo.py", _OVERRIDE.findall(args)))
    return found


def constants(script: Path) -> set[str]:
    """The names a script's top level assigns: its constants (plus imports' names, harmless here)."""
    names = set()
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


COMMANDS = documented_commands()


def test_the_documentation_shows_commands():
    scripts = {script for _, script, _ in COMMANDS}
    assert {"3_predict_aiib2023.py", "brats2023/3_train_diffunet_brats2023.py", "demo.py",
            "benchmarks/bench_ablations.py"} <= scripts
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("where, script, overrides", COMMANDS, ids=[f"{w} {s}" for w, s, _ in COMMANDS])
def test_documented_command_names_real_constants(where, script, overrides):
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    unknown = [name for name in overrides if name != "help" and name not in constants(path)]
    assert not unknown, f"{where}: {script} has no constant(s) {unknown}"
