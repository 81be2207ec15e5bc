"""The package's shape: mechanisms and experiments in two layers, imports pointing one way, no cycles,
small modules that say what they are."""
import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "kn_utils"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """kn_utils modules that ``path`` imports, at module level or inside functions (both can cycle)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kn_utils")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("kn_utils"):
                continue
            # `from kn_utils import io` names a module; `from kn_utils.io import x` names a module's member
            subs = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found |= subs or {target}
    found = {m for m in found if m in MODULES}
    found.discard(name)
    found.discard("kn_utils")  # the lazy top-level namespace imports nothing at import time
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_import_graph_is_read_correctly():
    # known edges, so an empty graph cannot pass the tests below
    assert "kn_utils.models" in GRAPH["kn_utils.hooks"]
    assert "kn_utils.attribution" in GRAPH["kn_utils.attribution_cache"]
    assert "kn_utils.stats" in GRAPH["kn_utils.evaluation"]
    assert any(m.startswith("kn_utils.experiments.") for m in MODULES)


def test_no_import_cycles():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle in kn_utils: {' -> '.join(e.args[1])}")


def test_mechanisms_never_import_experiments():
    bad = {m: sorted(d for d in deps if d.startswith("kn_utils.experiments"))
           for m, deps in GRAPH.items() if not m.startswith("kn_utils.experiments")}
    assert not {m: d for m, d in bad.items() if d}, "mechanism modules must not import kn_utils.experiments"


def test_each_notebook_has_its_experiment_module():
    notebooks = sorted(p.stem for p in (ROOT.parent / "notebooks").glob("[0-9][0-9]_*.py") if p.stem != "99_report")
    for stem in notebooks:
        topic = stem[3:]
        assert f"kn_utils.experiments.{topic}" in MODULES, f"{stem} has no kn_utils/experiments/{topic}.py"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_says_what_it_is(name):
    path = MODULES[name]
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines; split it (limit {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.splitlines()[0].strip(), f"{path}: start with a docstring whose first line says what it is"
