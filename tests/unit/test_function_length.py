"""``scripts/check_function_length.py``: the CI check that no function in api/, shared/ or
worker/ reaches 80 lines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_function_length.py"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_function_length", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def function(name: str, lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))
    return f"{indent}def {name}() -> None:\n{body}"


def test_functions_of_80_lines_or_more_are_flagged_with_their_qualified_names(
    tmp_path: Path,
) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        function("short", 79)
        + "\n\nclass Holder:\n"
        + function("long_method", 80, indent="    ")
        + "\n\n"
        + function("outer", 3).rstrip("\n")
        + "\n"
        + textwrap.indent(function("inner_async", 85).replace("def ", "async def ", 1), "    ")
    )
    checker = load_checker()
    found = [(name, length) for _, name, length in checker.long_functions(source)]
    # the outer function holds the long inner one, so it is long too
    assert found == [("Holder.long_method", 80), ("outer", 88), ("outer.inner_async", 85)]


def test_the_repository_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
