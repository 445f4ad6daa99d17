"""One name per shared MLflow key: a key one module writes and another reads is a constant, never a literal.

Read from the source, as the architecture test is: the keys each module writes to MLflow (the keys of
``log_metric``, ``set_tag``, ``log_params``, ``log_batch``, ``RunLogger.tags``, ... and the artifact files
of ``log_text``, ``log_table``, ...) as string literals must not stand as literals in any other module of
``src/`` or ``analysis/``; and no module but :mod:`bigimage.tracking.names` (and :mod:`~bigimage.tracking.judged`) spells a compound key
(``spark.deploy``, ``startup_seconds``) in a module that reads runs back (one that imports
:mod:`bigimage.tracking.query`).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bigimage.config import PROJECT_ROOT
from bigimage.tracking import judged, names

ROOTS = (PROJECT_ROOT / "src", PROJECT_ROOT / "analysis")
CONTRACTS = {Path(module.__file__).resolve() for module in (names, judged)}
KEY_CALLS = {"log_metric", "log_param", "set_tag", "Metric", "Param", "RunTag"}  # (run id,) key, value
MAPPING_CALLS = {"log_metrics", "log_params", "set_tags", "log_batch", "metrics", "params", "tags"}
ARTIFACT_CALLS = {"log_text", "log_dict", "log_table", "log_figure", "log_image"}  # ..., artifact file
ROW_PREFIXES = ("tags.", "params.", "metrics.")  # how query.load_runs names a run's keys


def _name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _text(node: ast.AST | None) -> list[str]:
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _mapping_keys(node: ast.expr, assigned: dict[str, list[ast.expr]]) -> Iterable[str]:
    """The literal keys of a mapping argument: a dict display, ``dict(k=...)``, or a local name built from them."""
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            yield from _text(key) if key is not None else _mapping_keys(value, assigned)
    elif isinstance(node, ast.Call) and _name(node.func) == "dict":
        yield from (keyword.arg for keyword in node.keywords if keyword.arg)
    elif isinstance(node, ast.Name):
        for value in assigned.get(node.id, []):
            yield from _mapping_keys(value, {})


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """Name -> what the scope assigns to it: ``x = {...}``, ``x[key] = ...`` and ``x.update({...})``."""
    assigned: dict[str, list[ast.expr]] = defaultdict(list)
    for node in ast.walk(scope):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    assigned[target.id].append(node.value)
                elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                    assigned[target.value.id].append(ast.Dict(keys=[target.slice], values=[node.value]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name)
        ):
            assigned[node.func.value.id].extend(node.args)
    return assigned


def written_keys(tree: ast.Module) -> set[str]:
    """The keys and artifact files a module writes to MLflow as string literals."""
    keys: set[str] = set()
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assigned = _assignments(scope)
        for call in (node for node in ast.walk(scope) if isinstance(node, ast.Call)):
            name = _name(call.func)
            if name in KEY_CALLS:
                keys.update(text for arg in call.args[:-1] for text in _text(arg))
                keys.update(text for kw in call.keywords if kw.arg == "key" for text in _text(kw.value))
            elif name in MAPPING_CALLS:
                for arg in [*call.args, *(keyword.value for keyword in call.keywords)]:
                    keys.update(_mapping_keys(arg, assigned))
            elif name in ARTIFACT_CALLS:
                keys.update(_text(call.args[-1]) if call.args else [])
                keys.update(text for kw in call.keywords if kw.arg == "artifact_file" for text in _text(kw.value))
    return keys


def literals(tree: ast.Module) -> set[str]:
    """Every string literal of a module, with a runs table's ``tags.``/``params.``/``metrics.`` taken off."""
    found = set()
    for node in ast.walk(tree):
        for text in _text(node):
            found.add(next((text[len(p) :] for p in ROW_PREFIXES if text.startswith(p)), text))
    return found


def _modules() -> dict[Path, ast.Module]:
    return {path.resolve(): ast.parse(path.read_text()) for root in ROOTS for path in sorted(root.rglob("*.py"))}


def shared_literals(modules: dict[Path, ast.Module]) -> list[str]:
    """``key: written in A, also a literal in B`` for every key written as a literal and spelt again elsewhere."""
    spelt = {path: literals(tree) for path, tree in modules.items()}
    found = []
    for writer, tree in modules.items():
        for key in sorted(written_keys(tree)):
            others = sorted(
                str(p.relative_to(PROJECT_ROOT)) for p, seen in spelt.items() if p != writer and key in seen
            )
            if others:
                found.append(f"{key}: written in {writer.relative_to(PROJECT_ROOT)}, also a literal in {others}")
    return found


def test_no_key_written_as_a_literal_is_spelt_again_in_another_module() -> None:
    assert shared_literals(_modules()) == []


def _reads_runs(tree: ast.Module) -> bool:
    """Whether a module reads runs back: it imports :mod:`bigimage.tracking.query`, the analysis's door."""
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return any(
        node.module == "bigimage.tracking.query"
        or (node.module == "bigimage.tracking" and any(alias.name == "query" for alias in node.names))
        for node in imports
    )


def test_no_reader_of_runs_spells_a_compound_name_that_names_defines() -> None:
    defined = {
        value
        for module in (names, judged)
        for value in vars(module).values()
        if isinstance(value, str) and ("." in value or "_" in value)
    }
    spelt = [
        f"{value}: {path.relative_to(PROJECT_ROOT)}"
        for path, tree in _modules().items()
        if path not in CONTRACTS and _reads_runs(tree)
        for value in sorted(literals(tree) & defined)
    ]
    assert spelt == []


def test_the_scan_finds_a_key_written_in_one_module_and_read_in_another() -> None:
    writer = ast.parse("import mlflow\ndef log(x):\n    mlflow.set_tag('spark.deploy', x)\n")
    metrics = ast.parse("def log(client, run, s):\n    m = {'startup_seconds': s}\n    client.log_batch(run, m)\n")
    reader = ast.parse("def read(row):\n    return row.get('tags.spark.deploy'), row['metrics.startup_seconds']\n")
    modules = {PROJECT_ROOT / "w.py": writer, PROJECT_ROOT / "m.py": metrics, PROJECT_ROOT / "r.py": reader}
    assert shared_literals(modules) == [
        "spark.deploy: written in w.py, also a literal in ['r.py']",
        "startup_seconds: written in m.py, also a literal in ['r.py']",
    ]
