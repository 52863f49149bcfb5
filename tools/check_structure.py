"""Check the project's structure from the source alone (nothing is imported or run).

    python tools/check_structure.py          # exit 1 and one line per violation

Three rules, each from the README's architecture section:

1. Imports run one way: `core` <- `trainer` <- `compress`; `core` <- `benchmarks`;
   `core` <- `serve`; the `tinyship` API on top. A package may import itself and what `ALLOWED` lists, nothing else of
   the project (function-level imports count: they run too).
2. No cycle between files, counting every import except those under `if TYPE_CHECKING:`.
3. The manifest is read through `core.manifest`'s typed fields: no `something.manifest[...]`,
   `manifest[...]` or `manifest.get(...)` outside `core/`.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "trainer", "compress", "benchmarks", "serve", "tinyship")
ALLOWED = {
    "core": {"core"},
    "trainer": {"core", "trainer"},
    "compress": {"core", "trainer", "compress"},
    "benchmarks": {"core", "benchmarks"},
    "serve": {"core", "serve"},
    # The Python API for notebooks, above everything (and imported by nothing).
    "tinyship": {"core", "trainer", "compress", "benchmarks", "tinyship"},
}
MANIFEST_OWNER = "core"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files(root: Path = REPO) -> dict[str, Path]:
    """module name -> file, for every .py file of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """Project modules imported by `module`, resolved to files where the name is a module."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.append((sub if sub in modules else base, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def check_direction(modules: dict[str, Path]) -> list[Violation]:
    out = []
    for module, path in modules.items():
        pkg = module.split(".")[0]
        for target, line in imports_of(module, path, modules):
            if target.split(".")[0] not in ALLOWED[pkg]:
                out.append(Violation(_rel(path), line, "import direction",
                                     f"{pkg} may import {sorted(ALLOWED[pkg])}, not {target}"))
    return out


def check_cycles(modules: dict[str, Path]) -> list[Violation]:
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for target, _ in imports_of(module, path, modules):
            # `import pkg.sub` also runs pkg/__init__; an edge to the package file is enough.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    cycles, seen = [], set()
    for start in sorted(graph):
        cycle = _find_cycle(graph, start)
        if cycle and frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            cycles.append(Violation(_rel(modules[start]), 1, "import cycle",
                                    " -> ".join(cycle + [cycle[0]])))
    return cycles


def _find_cycle(graph: dict[str, set[str]], start: str) -> list[str] | None:
    # Depth-first search for a path from start back to start; packages' __init__ files that
    # only import their own submodules are edges like any other.
    stack, on_path = [(start, iter(sorted(graph[start])))], [start]
    visited = {start}
    while stack:
        node, children = stack[-1]
        for child in children:
            if child == start:
                return list(on_path)
            if child not in visited and child in graph:
                visited.add(child)
                stack.append((child, iter(sorted(graph[child]))))
                on_path.append(child)
                break
        else:
            stack.pop()
            on_path.pop()
    return None


def _is_manifest(node: ast.AST) -> bool:
    return ((isinstance(node, ast.Name) and node.id == "manifest")
            or (isinstance(node, ast.Attribute) and node.attr == "manifest"))


def check_manifest_access(modules: dict[str, Path]) -> list[Violation]:
    out = []
    for module, path in modules.items():
        if module.split(".")[0] == MANIFEST_OWNER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            raw = None
            if isinstance(node, ast.Subscript) and _is_manifest(node.value):
                raw = ast.unparse(node)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("get", "setdefault", "update", "pop")
                  and _is_manifest(node.func.value)):
                raw = ast.unparse(node)
            if raw:
                out.append(Violation(_rel(path), node.lineno, "raw manifest access",
                                     f"{raw} (use the typed fields of core.manifest.Manifest)"))
    return out


def _rel(path: Path) -> str:
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def check(root: Path = REPO) -> list[Violation]:
    modules = project_files(root)
    return check_direction(modules) + check_cycles(modules) + check_manifest_access(modules)


def main() -> int:
    violations = check()
    for v in violations:
        print(v)
    print(f"{len(violations)} violation(s) in {len(project_files())} files", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
