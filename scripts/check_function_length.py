#!/usr/bin/env python3
"""Fail on any function of 80 lines or more in api/, shared/ and worker/ (migrations aside).

A function's length runs from its ``def`` line (decorators excluded) to its last line,
docstring and comments included. Run from anywhere: ``python scripts/check_function_length.py``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "shared", "worker")
EXCLUDED = ("shared/db/migrations",)
LIMIT = 80


def python_files(root: Path) -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if not relative.startswith(EXCLUDED):
                yield path


def long_functions(path: Path, limit: int = LIMIT) -> Iterator[tuple[int, str, int]]:
    """``(line, qualified name, length)`` of each function in ``path`` of ``limit`` lines or
    more, nested ones and methods included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length >= limit:
                    yield child.lineno, name, length
                yield from visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def main() -> int:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name} is {length} lines (limit {LIMIT - 1})"
        for path in python_files(ROOT)
        for line, name, length in long_functions(path)
    ]
    for message in found:
        print(message)
    if found:
        print(f"{len(found)} function(s) of {LIMIT} lines or more: split them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
