"""Print gigamlx's package-level import graph and fail on a cycle or an upward import.

Usage: python scripts/import_graph.py [--root gigamlx] [--json FILE] [--docs FILE | --no-docs]

Nodes are the sub-packages of gigamlx (core, runs, slide, synth, backends, tiling, infer, eval,
train, cli) and its top-level modules (api). Every import inside a function counts too: a lazy
import is still a dependency. Exit status 1 when the graph has a cycle, when a package imports
one at its own layer or above (LAYERS), or when an engine (mlx, torch) is imported outside
backends/.

The package map in docs/architecture.md is checked too, so it cannot drift: every
`gigamlx/...` path it names must exist, and every sub-package of gigamlx (nested ones included)
and every top-level module must be named there (`gigamlx/slide/`, `gigamlx/api.py`).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

# bottom to top: a package may import only packages on a lower layer (and itself)
LAYERS = [
    {"core"},  # the model's maths: spec, geometry, arrays, losses, normalise, units, memory
    {"runs"},  # runs and files: config, checkpoint, outputs, lock, files
    {"slide"},  # readers, stores, NGFF, masks, planes
    {"synth", "backends"},  # the synthetic slide (writes stores); the engines
    {"tiling"},  # budget, prefetch, scheduler
    {"infer", "eval", "report"},  # prediction and outputs; metrics, Dice, baselines; run pages
    {"train"},  # loop, run, session, regions, data
    {"api", "cli"},  # the public Python API; the command line
]
ENGINES = ("mlx", "torch")
# a package or module path as the package map writes it: gigamlx/slide/, gigamlx/api.py
_DOC_PATH = re.compile(r"\bgigamlx(?:/[A-Za-z_][A-Za-z0-9_]*)+(?:\.py|/)")
ENGINE_HOME = "backends"


def _node(module: str) -> str | None:
    """'gigamlx.slide.store' -> 'slide'; 'gigamlx' itself -> None (the lazy root)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "gigamlx" and len(parts) > 1 else None


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def build_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """(package -> packages it imports, engine imports outside backends/ as messages)."""
    graph: dict[str, set[str]] = defaultdict(set)
    misplaced = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        source = _node(module)
        if source is None:
            continue
        graph[source]  # noqa: B018 - every package is a node, even one that imports nothing
        for name in _imports(path, module):
            target = _node(name)
            if target is not None and target != source:
                graph[source].add(target)
            if name.split(".")[0] in ENGINES and source != ENGINE_HOME:
                misplaced.append(f"{path}: imports {name} outside gigamlx/{ENGINE_HOME}/")
    return dict(graph), misplaced


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: n for n, layer in enumerate(LAYERS) for name in layer}
    problems = [
        f"{p}: not in LAYERS (add it to scripts/import_graph.py)" for p in graph if p not in rank
    ]
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if source in rank and target in rank and rank[target] >= rank[source]:
                problems.append(f"{source} -> {target}: imports its own layer or one above")
    return problems


def doc_problems(root: Path, doc: Path) -> list[str]:
    """Where the package map in `doc` and the package under `root` disagree, as messages."""
    if not doc.is_file():
        return [f"{doc}: missing (the package map; or pass --no-docs)"]
    named = {m.group(0) for m in _DOC_PATH.finditer(doc.read_text())}
    problems = []
    for path in sorted(named):
        relative = path.split("/", 1)[1]
        if not (root / relative).exists():
            problems.append(f"{doc.name} names {path}, which does not exist")
    actual = [p.parent for p in root.rglob("__init__.py") if p.parent != root]
    actual = [f"gigamlx/{d.relative_to(root).as_posix()}/" for d in actual]
    actual += [f"gigamlx/{p.name}" for p in root.glob("*.py") if not p.name.startswith("__")]
    for path in sorted(actual):
        if path not in named:
            problems.append(f"{path}: not in the package map of {doc.name} (add a line for it)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).parents[1] / "gigamlx")
    parser.add_argument("--json", type=Path, help="also write the graph and problems here")
    parser.add_argument(
        "--docs",
        type=Path,
        help="the package map to check (default: docs/architecture.md beside --root)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="check the imports only, not the package map"
    )
    args = parser.parse_args(argv)
    graph, problems = build_graph(args.root)
    cycle = find_cycle(graph)
    if cycle:
        problems.insert(0, "cycle: " + " -> ".join(cycle))
    problems += layer_violations(graph)
    if not args.no_docs:
        doc = args.docs or args.root.resolve().parent / "docs" / "architecture.md"
        problems += doc_problems(args.root, doc)
    for layer in reversed(LAYERS):
        for name in sorted(layer & set(graph)):
            print(f"{name:>9} -> {', '.join(sorted(graph[name])) or '(nothing)'}")
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    if args.json:
        report = {"graph": {k: sorted(v) for k, v in graph.items()}, "problems": problems}
        args.json.write_text(json.dumps(report, indent=2))
    ok = "ok: no cycle, imports point down" + ("" if args.no_docs else ", package map current")
    print(ok if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
