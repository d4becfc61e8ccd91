#!/usr/bin/env python3
"""Prints the import graph of the crate's modules (one level below each top-level module too)
and exits 1 if it has a cycle. `crate::a::b` in src/x/y.rs is an edge x::y -> a::b (the
longest known module prefix). Used by the test suite: the house rule "no import cycles"."""
import os, re, sys
from collections import defaultdict

root = os.path.join(os.path.dirname(__file__), "..", "src")
mods = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dp, f), root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        if rel and ("tests" in rel or rel[-1].endswith("_tests")):
            continue
        # Modules at depth <= 2 are nodes; deeper files belong to their depth-2 ancestor.
        node = "::".join(rel[:2]) if rel else "crate"
        mods.setdefault(node, []).append(os.path.join(dp, f))

def resolve(path):
    parts = path.split("::")
    for n in (2, 1):
        cand = "::".join(parts[:n])
        if cand in mods:
            return cand
    return None

edges = defaultdict(set)
for node, files in mods.items():
    for f in files:
        text = open(f).read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
        # Comments name modules for the reader; only code makes a dependency.
        text = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"crate::((?:[a-z_]+::)*[a-z_]+)", text):
            tgt = resolve(m.group(1))
            if tgt and tgt != node and not tgt.startswith(node + "::") and not node.startswith(tgt + "::"):
                edges[node].add(tgt)
        # `super::x` from a depth-2 module means a sibling.
        if "::" in node:
            parent = node.split("::")[0]
            for m in re.finditer(r"\bsuper::([a-z_]+)", text):
                tgt = parent + "::" + m.group(1)
                if tgt in mods and tgt != node:
                    edges[node].add(tgt)

# Top-level graph and per-parent sibling graphs.
def find_cycle(nodes, succ):
    state, stack = {}, []
    def dfs(n):
        state[n] = 1; stack.append(n)
        for m in sorted(succ(n)):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = dfs(m)
                if c: return c
        state[n] = 2; stack.pop()
        return None
    for n in sorted(nodes):
        if n not in state:
            c = dfs(n)
            if c: return c
    return None

top = lambda n: n.split("::")[0]
top_nodes = {top(n) for n in mods}
top_succ = lambda n: {top(t) for s in mods if top(s) == n for t in edges[s] if top(t) != n}
cycles = []
c = find_cycle(top_nodes, top_succ)
if c: cycles.append(c)
for parent in top_nodes:
    kids = {n for n in mods if n.startswith(parent + "::")} | ({parent} if parent in mods else set())
    c = find_cycle(kids, lambda n: {t for t in edges[n] if t in kids})
    if c: cycles.append(c)
if "-v" in sys.argv:
    for n in sorted(top_nodes):
        print(f"{n} -> {', '.join(sorted(top_succ(n)))}")
for c in cycles:
    print("import cycle: " + " -> ".join(c))
sys.exit(1 if cycles else 0)
