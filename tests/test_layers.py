"""The package's import graph: no cycles among module-level imports (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "meaning_transform"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports at module level (imports inside functions are lazy)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x import y
            base = _module_name(path).split(".")
            base = base[: len(base) - node.level + (path.name == "__init__.py")]
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_no_import_cycles():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    known = set(files)
    graph = {m: _imports(p, known) - {m} for m, p in files.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(graph) > 30  # the walk saw the package


#: docs/architecture.md "Layers": each module's layer; a module imports only from its layer or above
LAYERS = [
    (
        "foundation",
        (
            "errors",
            "messages",
            "io",
            "containers",
            "lazy",
            "rundir",
            "console",
            "kl_schedule",
            "config",
            "registry",
            "",
        ),
    ),
    ("declarations", ("schema", "grid")),
    ("data", ("data",)),
    ("model", ("models", "losses", "metrics", "baselines")),
    (
        "training",
        (
            "module",
            "callbacks",
            "assemble",
            "compile_step",
            "training",
            "run_summary",
            "failures",
            "checkpoint_reader",
            "model_loading",
        ),
    ),
    (
        "commands",
        (
            "cli",
            "api",
            "entry",
            "train",
            "evaluate",
            "codec",
            "report",
            "sweep_callback",
            "test_training",
        ),
    ),
]


def _layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for i, (_, prefixes) in enumerate(LAYERS):
        if first in prefixes:
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def test_layers_import_only_from_above():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    known = set(files)
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, p in sorted(files.items())
        for d in sorted(_imports(p, known))
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)
