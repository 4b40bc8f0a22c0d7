"""The house's shape: data flows one way through the package.

Every module has a layer; a module may import only from its own layer or the layers
below it (function-level imports included), and the import graph has no circle. The
recipe loader sits at the bottom and imports neither torch nor any stage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diladiff_cli"

# Lowest first. A module not listed here fails the test: place it when you add it.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "structs", "files", "locks", "config"),  # recipes and types, torch-free
    (
        "hub",
        "oracle",
        "data",
        "checkpoint",
        "distributed",
        "objective",
        "tracking",
    ),  # files, processes
    ("models",),  # networks
    ("diffusion",),  # noise processes and samplers
    ("train",),  # the one training loop
    ("mdlm", "encoder", "latent_shards"),  # stages ...
    ("ae",),
    ("encode", "prior", "judge", "export"),
    ("sample",),  # generation, above the stages it drives
    ("metrics", "evaluate"),  # evaluation
    ("frontier", "plots", "pareto", "analysis"),  # sweeps and analysis
    ("pipeline",),  # the Python API over sampling, encoding, scoring and export
    ("cli", "__main__"),  # the command line
]


def _name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"diladiff_cli.{module} has no layer in tests/test_layers.py")


def _imports(path: Path) -> set[str]:
    """Package modules imported anywhere in ``path`` (``diladiff_cli.`` stripped)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "diladiff_cli":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("diladiff_cli."):
                found.add(node.module.removeprefix("diladiff_cli."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("diladiff_cli.")
                for a in node.names
                if a.name.startswith("diladiff_cli.")
            }
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path):
            # `from diladiff_cli.config import X` names the package; keep the module itself
            targets.add(target if target in modules else f"{target}.__init__")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


# The package's lazy facade: `from diladiff_cli import Pipeline` imports the pipeline on
# first use of the attribute (module __getattr__), never on `import diladiff_cli`.
FACADE = {("__init__", "pipeline")}


def test_no_import_climbs_a_layer():
    climbing = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, targets in _graph().items()
        for dst in targets
        if _layer(dst) > _layer(src) and (src, dst) not in FACADE
    ]
    assert not climbing, "\n".join(climbing)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_loading_a_recipe_imports_no_torch():
    code = (
        "import sys, diladiff_cli.config as c; c.load_recipe(); "
        "bad = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
