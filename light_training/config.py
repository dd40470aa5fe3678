"""Script constants with ``--name=value`` command-line overrides (nanoGPT's configurator, made safe).

A numbered script defines its constants as plain top-level assignments, then calls::

    run(stage, globals())      # light_training.stages.run, which calls apply_overrides(globals())

which reads the script's own source to find the constants and their comments, applies the
overrides from ``sys.argv`` (values parsed as Python literals, never evaluated as code), checks each
value against the type of the constant, and rebinds the names in the script's namespace.
"""
from __future__ import annotations

import ast
import difflib
import io
import sys
import tokenize
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

from light_training.io import write_json

__all__ = ["apply_overrides", "find_constants", "save_config", "parse_value", "settings_from"]

Settings = TypeVar("Settings")


def find_constants(source: str, stop_line: int | None = None) -> dict[str, tuple[Any, str]]:
    """Top-level constants of a script source: ``{name: (value, comment)}`` in definition order.

    A constant is a top-level ``name = <literal>`` (or ``name: type = <literal>``) above ``stop_line``.
    Its comment is the trailing ``# ...`` on its line, else the comment lines right above it.
    """
    tree = ast.parse(source)
    comments: dict[int, str] = {}
    comment_only: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.line.strip().startswith("#"):
                comment_only.add(tok.start[0])
    constants: dict[str, tuple[Any, str]] = {}
    for node in tree.body:
        if stop_line is not None and node.lineno >= stop_line:
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value_node = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value_node = node.target, node.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id.startswith("_"):
            continue
        try:
            value = ast.literal_eval(value_node)
        except ValueError:
            continue
        comment = comments.get(node.lineno, "") if node.lineno not in comment_only else ""
        if not comment:
            above, line = [], node.lineno - 1
            while line in comment_only:
                above.insert(0, comments[line])
                line -= 1
            comment = " ".join(above)
        constants[target.id] = (value, comment)
    return constants


def parse_value(name: str, raw: str, default: Any) -> Any:
    """Parse the text of ``--name=raw`` against the constant's ``default``; raises ``ValueError``."""
    if raw == "None":  # any constant may be switched off with --name=None
        return None
    if isinstance(default, str):
        # Paths and names need no quotes; a quoted value is accepted too.
        try:
            value = ast.literal_eval(raw)
            return value if isinstance(value, str) else raw
        except (ValueError, SyntaxError):
            return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if default is None:
            return raw
        if _is_list_of_str(default) and raw.startswith("[") and raw.endswith("]"):
            # --runs=[diffunet,unet]: names without the quotes a shell would strip
            return type(default)(p.strip().strip("'\"") for p in raw[1:-1].split(",") if p.strip())
        raise ValueError(f"--{name}={raw}: not a Python literal (expected {type(default).__name__}, "
                         f"e.g. --{name}={default!r})") from None
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--{name}={raw}: expected True or False")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"--{name}={raw}: expected an int, got {type(value).__name__}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"--{name}={raw}: expected a number, got {type(value).__name__}")
        return float(value)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"--{name}={raw}: expected a list like {list(default)!r}")
        return type(default)(value)
    if not isinstance(value, type(default)):
        raise ValueError(f"--{name}={raw}: expected {type(default).__name__}, got {type(value).__name__}")
    return value


def _is_list_of_str(default: Any) -> bool:
    return isinstance(default, (list, tuple)) and bool(default) and all(isinstance(v, str) for v in default)


def _help_text(script: str, doc: str | None, constants: dict[str, tuple[Any, str]]) -> str:
    lines = [doc.strip(), ""] if doc else []
    lines.append(f"Constants of {script} (override any as --name=value):")
    width = max((len(n) for n in constants), default=0)
    for name, (value, comment) in constants.items():
        lines.append(f"  --{name:<{width}} = {value!r}" + (f"    # {comment}" if comment else ""))
    return "\n".join(lines)


def _passes_globals(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and any(
        isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "globals" for arg in node.args)


def _call_line(source: str) -> int | None:
    """The line of the first top-level statement that calls a function with ``globals()`` (the script's
    ``run(stage, globals())`` or ``apply_overrides(globals())``): the constants are the assignments above
    it. Found in the syntax tree, so a docstring or comment that mentions the call changes nothing."""
    for node in ast.parse(source).body:
        if any(_passes_globals(child) for child in ast.walk(node)):
            return node.lineno
    return None


def apply_overrides(namespace: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """Apply ``--name=value`` overrides to the constants of the script whose ``globals()`` is given.

    ``argv`` defaults to ``sys.argv[1:]``. ``--help`` prints every constant with its value and
    comment and exits 0. A bad name or value exits with a message naming it (and the closest
    valid name). Returns the resolved constants ``{name: value}``; the namespace is updated too.
    """
    argv = sys.argv[1:] if argv is None else argv
    script = namespace.get("__file__")
    if script is None:
        raise RuntimeError("apply_overrides(globals()) must be called from a script file")
    source = Path(script).read_text()
    constants = find_constants(source, _call_line(source))
    name_of_script = Path(script).name
    if any(arg in ("-h", "--help") for arg in argv):
        print(_help_text(name_of_script, namespace.get("__doc__"), constants))
        raise SystemExit(0)
    resolved = {name: namespace.get(name, value) for name, (value, _) in constants.items()}
    for arg in argv:
        if not arg.startswith("--"):
            raise SystemExit(f"{name_of_script}: unexpected argument {arg!r}; use --name=value (see --help)")
        name, has_value, raw = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in constants:
            close = difflib.get_close_matches(name, list(constants), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise SystemExit(f"{name_of_script}: unknown constant --{name}{hint} (see --help for all)")
        default = constants[name][0]
        if not has_value:
            if not isinstance(default, bool):
                raise SystemExit(f"{name_of_script}: --{name} needs a value, e.g. --{name}={default!r}")
            raw = "True"
        try:
            resolved[name] = parse_value(name, raw, default)
        except ValueError as err:
            raise SystemExit(f"{name_of_script}: {err}") from None
    namespace.update(resolved)
    return resolved


def save_config(config: dict[str, Any], path: str | Path) -> None:
    """Write the resolved constants as JSON (atomically) next to a script's outputs."""
    write_json(config, path)


def settings_from(cls: type[Settings], constants: Mapping[str, Any]) -> Settings:
    """A stage's settings ``cls`` (a dataclass that validates itself) built once from the script's resolved
    constants: each field takes the constant of its name, its default where the script has none."""
    names = {f.name for f in fields(cls)}
    return cls(**{name: value for name, value in constants.items() if name in names})
