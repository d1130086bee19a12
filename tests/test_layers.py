"""The shape of the code: plugins see only the contract, no import cycles, small functions.

The layering itself (which package may import which) is `lint-imports`, run by
`make test` with the contracts in pyproject.toml.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shortdrama_worker"
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/*/__init__.py"))
MAX_COMPLEXITY = 15


def _imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_plugin_distributions_import_only_the_contract_of_the_host() -> None:
    assert {p.name for p in PLUGINS} >= {
        "shortdrama_example_plugin",
        "shortdrama_compose",
        "shortdrama_emotion",
    }
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for package in PLUGINS
        for path in package.rglob("*.py")
        for module in _imports(path)
        if module.split(".")[0] == "shortdrama_worker"
        and not module.startswith("shortdrama_worker.contract")
    ]
    assert wrong == []


def test_the_package_has_no_import_cycles() -> None:
    graph = grimp.build_graph("shortdrama_worker", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []


def test_no_function_is_more_complex_than_fifteen() -> None:
    sources = [*PACKAGE.rglob("*.py"), *(p for pkg in PLUGINS for p in pkg.rglob("*.py"))]
    too_complex = [
        f"{path.relative_to(ROOT)}:{block.lineno} {block.fullname} = {block.complexity}"
        for path in sources
        for block in cc_visit(path.read_text(encoding="utf-8"))
        if block.complexity > MAX_COMPLEXITY
    ]
    assert too_complex == []
