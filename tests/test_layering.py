"""The dependency rules of docs/architecture.md, checked on every import statement of the
package (module level and inside functions): export and engines never import the runtime, the
runtime never imports export (the composition layer, hallo2rt.assemble, joins them), nothing in
the library imports the CLI, the composition layer or the benchmarks, and no module imports a
private name from another package."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> installed package (pyproject.toml's package-dir mapping)
PACKAGES = {
    "export": "hallo2rt.export",
    "engines": "hallo2rt.engines",
    "runtime": "hallo2rt.runtime",
    "benchmarks": "hallo2rt.benchmarks",
    "serve": "hallo2rt.serve",
    "hallo2rt": "hallo2rt",
}
TOP = ("cli", "assemble", "demo", "random_weights")  # hallo2rt's own modules: may import anything
# package -> packages it must never import
FORBIDDEN = {
    "export": {"runtime", "benchmarks", "top"},
    "engines": {"runtime", "export", "benchmarks", "top"},
    "runtime": {"export", "benchmarks", "top"},
}
# the documented exception: the torch backend imports the export wrappers (lazily)
ALLOWED = {("engines/torch_backend.py", "export")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(module: str) -> str | None:
    """Which of our packages ``module`` (absolute) belongs to: export, engines, runtime,
    benchmarks, top (hallo2rt's own modules), or None (not ours)."""
    parts = module.split(".")
    if parts[0] != "hallo2rt":
        return None
    if len(parts) == 1:
        return "top"
    return parts[1] if parts[1] in FORBIDDEN or parts[1] == "benchmarks" else "top"


def _imports(path: Path):
    """(imported absolute module, imported names, line) of every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = importlib.util.resolve_name("." * node.level + module, package)
            yield module, [a.name for a in node.names], node.lineno


def _sources():
    for folder in PACKAGES:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_the_dependency_rules_hold():
    broken = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        mine = rel.split("/")[0]
        for module, _, line in _imports(path):
            theirs = _package_of(module)
            if theirs in FORBIDDEN.get(mine, ()) and (rel, theirs) not in ALLOWED:
                broken.append(f"{rel}:{line} imports {module} ({mine} must not import {theirs})")
    assert broken == []


def test_no_private_name_crosses_a_package():
    broken = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        mine = _package_of(_module_name(path))
        for module, names, line in _imports(path):
            theirs = _package_of(module)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and theirs is not None and theirs != mine:
                broken.append(f"{rel}:{line} imports {private} from {module}")
    assert broken == []


def test_the_rules_see_lazy_and_relative_imports():
    """The checker itself: a relative import two levels up and one inside a function resolve."""
    pipeline = REPO / "runtime" / "pipeline.py"
    found = {m for m, _, _ in _imports(pipeline)}
    assert "hallo2rt.engines.spec" in found and "hallo2rt.runtime.session" in found
    torch_backend = {m for m, _, _ in _imports(REPO / "engines" / "torch_backend.py")}
    assert "hallo2rt.export.graphs" in torch_backend  # imported inside a method
    assert _package_of("hallo2rt.assemble") == "top" and _package_of("numpy") is None
