#!/usr/bin/env python3
"""The house rules that a linter does not check, checked: module and function size, positional parameters.

- no module over 400 lines;
- no function over 60 lines;
- no public function (or public method) with more than 6 parameters that are not keyword-only
  (``self``/``cls`` not counted): the model and the data positional, everything else keyword-only.

Tables are exempt: a function or module whose first line (the ``def`` line, or line 1 of the file)
carries ``# layout: table`` is a table of data, not logic. Tests are not checked.

Usage: ``python scripts/check_layout.py [PATH ...]`` (default: edgekit device_agent benchmarks scripts).
Prints one line per violation and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6
EXEMPT = "# layout: table"
DEFAULT_ROOTS = ("edgekit", "device_agent", "benchmarks", "scripts")


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if is_method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def check_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    problems: list[str] = []
    module_exempt = bool(lines) and EXEMPT in lines[0]
    if len(lines) > MAX_MODULE_LINES and not module_exempt:
        problems.append(f"{path}: {len(lines)} lines (at most {MAX_MODULE_LINES}); split it by responsibility")
    tree = ast.parse(text, filename=str(path))

    def visit(node: ast.AST, public_scope: bool, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, public_scope and _is_public(child.name), True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                exempt = EXEMPT in lines[child.lineno - 1]
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > MAX_FUNCTION_LINES and not exempt:
                    problems.append(f"{path}:{child.lineno}: function {child.name}() is {length} lines "
                                    f"(at most {MAX_FUNCTION_LINES})")
                npos = _positional(child, in_class)
                if public_scope and _is_public(child.name) and npos > MAX_POSITIONAL:
                    problems.append(f"{path}:{child.lineno}: public {child.name}() takes {npos} positional parameters "
                                    f"(at most {MAX_POSITIONAL}); make the rest keyword-only (after *)")
                visit(child, False, False)  # nested functions are private to their parent
            else:
                visit(child, public_scope, in_class)

    visit(tree, True, False)
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(r) for r in DEFAULT_ROOTS if Path(r).exists()]
    files = sorted(p for r in roots for p in ([r] if r.is_file() else r.rglob("*.py")) if "tests" not in p.parts)
    problems = [p for f in files for p in check_file(f)]
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layout problem(s) in {len(files)} files")
        return 1
    print(f"layout: {len(files)} files within the rules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
