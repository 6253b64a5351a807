"""Size and layering of the package: lines per module, the largest, how many exceed 400
lines, README lines, and import cycles between modules (function-local imports included,
since a local import that closes a cycle only hides it).

    python tools/code_metrics.py [SRC]     # default: the repository's src/
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports (anywhere in its body; TYPE_CHECKING blocks too)."""
    known = modules(src)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in known.items():
        base = name if package else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = base.split(".")
                parts = parts[: len(parts) - node.level + 1] if node.level else []
                target = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in known else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in known and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "src"
    sizes = sorted(
        ((len(path.read_text().splitlines()), name) for name, (path, _) in modules(src).items()),
        reverse=True,
    )
    readme = src.parent / "README.md"
    print(f"modules: {len(sizes)}; largest: {sizes[0][1]} ({sizes[0][0]} lines)")
    print(f"modules over 400 lines: {sum(1 for lines, _ in sizes if lines > 400)}")
    if readme.is_file():
        print(f"README lines: {len(readme.read_text().splitlines())}")
    found = cycles(import_graph(src))
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))


if __name__ == "__main__":
    main()
