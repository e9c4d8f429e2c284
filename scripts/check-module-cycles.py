#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

A module that imports another must not be imported by it, directly or through others:
a cycle makes two modules one in all but name, and the layering ARCHITECTURE.md
describes untrue. The unit is a crate's top-level module (`src/x.rs` or `src/x/`):
an edge A -> B is any `crate::B` that a non-test, non-comment line of A names (unit
tests, in `mod tests { ... }` or a `tests.rs`, may reach anywhere).
`main.rs` and `lib.rs` are the root and import everything, so they are left out.

    scripts/check-module-cycles.py [ROOT]     ROOT: the workspace (default: this repo)

Prints each cycle with the imports that make it, and exits 1 if there is one.
"""
import re
import sys
from pathlib import Path

CRATE_PATH = re.compile(r"\bcrate::(\w+)")
GROUPED_USE = re.compile(r"\buse crate::\{([^}]*)\}", re.S)
# Where a file's unit tests begin: what they import is not the module's.
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod \w+\s*\{")


def module_edges(src: Path) -> dict:
    """Top-level module -> the top-level modules its files name."""
    edges = {}
    for path in sorted(src.rglob("*.rs")):
        parts = path.relative_to(src).with_suffix("").parts
        # The root imports everything; `tests.rs` files are unit tests, not the module.
        if parts[0] in ("lib", "main") or parts[-1] == "tests":
            continue
        module = parts[0]
        text = path.read_text(encoding="utf-8")
        text = TEST_MODULE.split(text)[0]
        text = "\n".join(line for line in text.splitlines()
                         if not line.lstrip().startswith("//"))
        names = set(CRATE_PATH.findall(text))
        for group in GROUPED_USE.findall(text):
            names.update(re.findall(r"(?:^|,)\s*(\w+)", group))
        names.discard(module)
        edges.setdefault(module, set()).update(names)
    return edges


def cycles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    failed = False
    crates = sorted(p.parent for p in root.glob("*/Cargo.toml") if (p.parent / "src").is_dir())
    for crate in crates:
        edges = module_edges(crate / "src")
        for component in cycles(edges):
            failed = True
            print(f"{crate.name}: modules import each other in a cycle: {', '.join(component)}")
            for module in component:
                inside = sorted(t for t in edges.get(module, ()) if t in component)
                print(f"    {module} imports {', '.join(inside)}")
    if not failed:
        print(f"no module import cycles in {len(crates)} crates")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
