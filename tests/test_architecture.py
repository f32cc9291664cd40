"""The layer rule of docs/architecture.md, checked on the source: every import of a pifair
module is at module level (no late import), goes down the layers or stays in its own package,
and the module graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pifair"

# lowest first; a module may import its own package and any package of a lower layer
LAYERS: list[set[str]] = [
    {"errors"},
    {"extras", "atomic", "config_types"},
    {"runs"},
    {"data", "relu"},
    {"models"},
    {"training"},
    {"fairness"},
    {"reduce", "dp", "secure"},
    {"report"},
    {"workflows"},
    {"demo"},
    {"he", "mpc"},
    {"cli", "__init__"},
    {"__main__"},
]
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    """``pifair.reduce.snl`` -> ``reduce``; ``pifair`` (the root ``__init__``) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def pifair_imports(path: Path, module: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported pifair module, line, at module level) for every import in ``path``, read as
    pifair module ``module`` (default: the module that ``path`` is)."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level try/if are module level too
        if isinstance(node, ast.If | ast.Try) and not (
            isinstance(node, ast.If) and _is_type_checking(node)
        ):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "pifair" or name.startswith("pifair."):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))


def test_every_package_has_a_layer():
    packages = {_package(_module_name(p)) for p in _sources()}
    assert packages <= set(LAYER_OF), f"add {sorted(packages - set(LAYER_OF))} to LAYERS"


def test_no_late_imports():
    late = [
        f"{p.relative_to(SRC.parent)}:{line} imports {name} inside a function"
        for p in _sources()
        for name, line, top in pifair_imports(p)
        if not top
    ]
    assert not late, "\n".join(late)


def test_imports_go_down_the_layers():
    wrong = []
    for p in _sources():
        here = _package(_module_name(p))
        for name, line, _ in pifair_imports(p):
            there = _package(name)
            if there == here or LAYER_OF[there] < LAYER_OF[here]:
                continue
            wrong.append(
                f"{p.relative_to(SRC.parent)}:{line}: {here} (layer {LAYER_OF[here]}) imports "
                f"{name} (layer {LAYER_OF[there]})"
            )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = {_module_name(p): p for p in _sources()}

    def resolve(name: str) -> str | None:
        while name and name not in modules:  # ``pifair.relu.sites.count_relus`` -> the module
            name = name.rpartition(".")[0]
        return name or None

    graph = {
        m: {t for n, _, _ in pifair_imports(p) if (t := resolve(n)) and t != m}
        for m, p in modules.items()
    }
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rule test must be able to fail: a relu module importing the reductions is caught."""
    bad = tmp_path / "_rule_probe.py"  # read as a module of pifair.relu; never in the package
    source = (
        "from ..reduce.snl import SearchSettings\n\n\ndef f():\n    from ..training import fit\n"
    )
    bad.write_text(source)
    found = pifair_imports(bad, module="pifair.relu._rule_probe")
    assert ("pifair.reduce.snl", 1, True) in found
    assert ("pifair.training", 5, False) in found
    assert LAYER_OF[_package(found[0][0])] > LAYER_OF["relu"]


def _long_functions(paths: list[Path], limit: int) -> list[str]:
    long = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > limit:
                    long.append(f"{p.relative_to(SRC.parent)}:{node.lineno} {node.name}")
    return long


def test_no_function_is_over_80_lines():
    """A function that long mixes concerns; split it where the concerns part."""
    long = _long_functions(_sources(), 80)
    assert not long, f"functions over 80 lines: {long}"


def test_cli_functions_are_short_and_nothing_skips_the_formatter():
    long = []
    for p in (SRC / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{p.name}:{node.lineno} {node.name}")
    assert not long, f"CLI functions over 60 lines: {long}"
    skips = [str(p) for p in SRC.rglob("*.py") if "fmt: " + "skip" in p.read_text()]
    assert not skips, f"formatter skipped in {skips}"
