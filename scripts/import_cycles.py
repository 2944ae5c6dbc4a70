#!/usr/bin/env python3
"""Import cycles between the files of each crate: prints every group of files that import each
other (directly or round a loop) and exits 1 when there is one, 0 when imports run one way.

An import is a `crate::a::b` or `super::...` path in a file's code (comments and inline
`#[cfg(test)] mod tests` blocks left out), resolved to the file that defines module `a::b`.
The crate root (lib.rs, main.rs) only declares modules and re-exports names: arrows to and
from it are not counted. Usage: python3 scripts/import_cycles.py [crates/NAME ...]
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
GROUP = re.compile(r"\b(crate|super)::\{([^}]*)\}", re.S)


def modules(src: Path) -> dict:
    """Module path (tuple) -> file, for every .rs file under src."""
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        mods[tuple(parts)] = f
    return mods


def code_of(f: Path) -> str:
    text = f.read_text(encoding="utf-8", errors="replace")
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def targets(f: Path, here: tuple, mods: dict) -> set:
    code = code_of(f)
    paths = []
    for m in GROUP.finditer(code):
        for item in re.split(r",", m.group(2)):
            first = item.strip().split("::")
            if first and first[0]:
                paths.append((m.group(1), [p for p in first if p and p != "self"]))
    for m in PATH.finditer(code):
        if m.group(2) == "::{":
            continue
        paths.append((m.group(1), [p for p in m.group(2).split("::") if p]))
    found = set()
    for root, parts in paths:
        base = list(here[:-1]) if root == "super" else []
        if root == "super" and f.stem in ("mod", "lib", "main"):
            base = list(here[:-1])
        full = base + parts
        for n in range(len(full), 0, -1):
            t = mods.get(tuple(full[:n]))
            if t is not None and t != f:
                found.add(t)
                break
    return found


def cycles(crate: Path) -> list:
    src = crate / "src"
    mods = modules(src)
    roots = {src / "lib.rs", src / "main.rs"}
    edges = {}
    for path, f in mods.items():
        if f in roots:
            continue
        edges[f] = {t for t in targets(f, path, mods) if t not in roots}
    # Tarjan's strongly connected components.
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [(c, {a: sorted(edges[a] & set(c)) for a in c}) for c in out]


def main() -> int:
    crates = [Path(a) for a in sys.argv[1:]] or sorted(
        p.parent for p in Path("crates").glob("*/src")
    )
    bad = 0
    for crate in crates:
        for comp, ties in cycles(crate):
            bad += 1
            print(f"cycle in {crate}: {len(comp)} files")
            for a in comp:
                for b in ties[a]:
                    print(f"  {a} -> {b}")
    if bad == 0:
        print(f"no import cycles in {len(crates)} crates")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
