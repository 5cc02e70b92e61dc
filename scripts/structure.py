#!/usr/bin/env python3
"""Checks the crate's shape (issue 10): no import cycle among src/ modules, no function in src/
longer than 80 lines, lib.rs under 100 lines. Prints the module graph; exits 1 on a violation."""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FN = 80
problems = []


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3]
    top = rel.split(os.sep)[0]
    return top


graph = {}
for root, _, files in os.walk(SRC):
    for f in files:
        if not f.endswith(".rs") or f in ("main.rs", "lib.rs", "tests.rs"):
            continue
        path = os.path.join(root, f)
        mod = module_of(path)
        text = open(path).read()
        # Unit tests may reach anywhere; only the crate's own code counts for the tree.
        code = re.split(r"#\[cfg\(test\)\]\s*mod tests \{", text)[0]
        code = "\n".join(l for l in code.split("\n") if not l.lstrip().startswith("//"))
        deps = set(re.findall(r"crate::([a-z_]+)", code))
        deps |= {d for group in re.findall(r"crate::\{([^}]*)\}", code) for d in re.findall(r"([a-z_]+)", group)}
        deps.discard(mod)
        if os.path.basename(root) != "src" or True:
            graph.setdefault(mod, set()).update(d for d in deps if os.path.exists(os.path.join(SRC, d + ".rs")) or os.path.isdir(os.path.join(SRC, d)))
        # Function lengths: from a `fn` line to the closing brace at the same indentation.
        lines = text.split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)(pub(\([a-z]+\))? )?(async )?fn ([a-z_0-9]+)", line)
            if not m or line.rstrip().endswith(";"):
                continue
            indent = m.group(1)
            for j in range(i + 1, len(lines)):
                if lines[j] == indent + "}":
                    if j - i + 1 > MAX_FN:
                        problems.append(f"{os.path.relpath(path, SRC)}:{i+1}: fn {m.group(5)} is {j-i+1} lines")
                    break

# Cycle check (DFS).
state = {}


def visit(n, stack):
    state[n] = 1
    for d in sorted(graph.get(n, ())):
        if state.get(d) == 1:
            problems.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"cycle via {n} -> {d}")
        elif d not in state:
            visit(d, stack + [d])
    state[n] = 2


for n in sorted(graph):
    if n not in state:
        visit(n, [n])
lib = open(os.path.join(SRC, "lib.rs")).read().count("\n")
if lib >= 100:
    problems.append(f"lib.rs is {lib} lines")
for n in sorted(graph):
    print(f"{n:10} -> {', '.join(sorted(graph[n])) or '-'}")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
