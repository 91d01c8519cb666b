"""Imports run one way: core <- backends <- builders <- harnesses <- server <- cluster <- CLI, and nothing but
tests and the dev tools import the dev tools. Every ``import`` in firm_lite/ is read (function-level
ones included); a wrong-way import fails with its file:line.

To place a new module, add its name (or its package's) to :data:`LAYERS`; a module this test
cannot place fails too, so the map never silently goes out of date."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "firm_lite"

# Layer rank -> module names (a name covers its submodules). Lower ranks never import higher ones.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("firm_lite", "firm_lite.errors", "firm_lite.records", "firm_lite.cme", "firm_lite.prompts",
        "firm_lite.parsing", "firm_lite.images", "firm_lite.manifest", "firm_lite.device", "firm_lite.sources",
        "firm_lite.generation", "firm_lite.engine", "firm_lite.settings", "firm_lite.critic",
        "firm_lite.artifact", "firm_lite.recipes", "firm_lite.plan", "firm_lite.scoring",
        "firm_lite.configs", "firm_lite.data", "firm_lite.quiet", "firm_lite.variants.registry",
        "firm_lite.teacher_forcing", "firm_lite.shards", "firm_lite.merge"),
    # backends: load what builders made, or score elsewhere (remote)
    1: ("firm_lite.variants", "firm_lite.onnx", "firm_lite.vllm_backend", "firm_lite.remote"),
    2: ("firm_lite.export",),  # builders
    3: ("firm_lite.calibration", "firm_lite.bench", "firm_lite.report"),  # harnesses
    4: ("firm_lite.server",),
    5: ("firm_lite.cluster",),  # Ray Data scoring, and the server's app on Ray Serve replicas
    6: ("firm_lite.cli",),
}
LAYER_NAMES = {0: "core", 1: "backends", 2: "builders", 3: "harnesses", 4: "server", 5: "cluster", 6: "cli"}
DEV = "firm_lite.dev"  # the tiny critic's builder/trainer, comparison heads, the edit-set generator
# Modules a lower layer may name although they sit higher: none. (Keep it that way.)


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(module: str) -> int | None:
    if module == DEV or module.startswith(DEV + "."):
        return None
    best = None
    for rank, names in LAYERS.items():
        for name in names:
            covers = module == name or (name != "firm_lite" and module.startswith(name + "."))
            if covers and (best is None or len(name) > len(best[1])):
                best = (rank, name)
    return best[0] if best else -1


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return sorted({(name, line) for name, line in out if name.split(".")[0] == "firm_lite"})


def _known(name: str, modules: set[str]) -> str:
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def wrong_way_imports(package: Path = PACKAGE) -> list[str]:
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    problems = []
    for module, path in sorted(modules.items()):
        here = _rank(module)
        if here == -1:
            problems.append(f"{path}: module {module} is in no layer (add it to LAYERS in {__file__})")
            continue
        seen = set()
        for name, line in _imports(path, module):
            target = _known(name, set(modules))
            if (target, line) in seen:
                continue
            seen.add((target, line))
            there = _rank(target)
            where = f"{path.relative_to(package.parent)}:{line}"
            if there is None and here is not None:
                problems.append(f"{where}: {module} imports the dev tool {target}")
            elif here is not None and there is not None and there > here:
                problems.append(f"{where}: {module} ({LAYER_NAMES[here]}) imports {target} "
                                f"({LAYER_NAMES[there]})")
    return problems


def test_imports_run_one_way() -> None:
    problems = wrong_way_imports()
    assert not problems, "wrong-way imports:\n" + "\n".join(problems)


def test_the_check_catches_a_wrong_way_import(tmp_path: Path) -> None:
    fake = tmp_path / "firm_lite"
    (fake / "cli").mkdir(parents=True)
    (fake / "dev").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli" / "__init__.py").write_text("")
    (fake / "dev" / "__init__.py").write_text("")
    (fake / "images.py").write_text("def f():\n    from firm_lite.cli import main\n")
    (fake / "records.py").write_text("import firm_lite.dev\n")
    (fake / "stray.py").write_text("")
    problems = "\n".join(wrong_way_imports(fake))
    assert "firm_lite/images.py:2: firm_lite.images (core) imports firm_lite.cli (cli)" in problems
    assert "firm_lite/records.py:1: firm_lite.records imports the dev tool firm_lite.dev" in problems
    assert "module firm_lite.stray is in no layer" in problems
