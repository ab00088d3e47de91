#!/usr/bin/env python3
"""The restock benchmark (``bench/restock.py``, what ``bench/restock.sh`` runs) several times
in a row, and the spread of its ratios.

On a 2-core machine one run's restock/ceiling moves by ±0.08 between runs of the same build
(the ceiling alone by ±10 %): a single run cannot tell a change of a few per cent from noise.
This runs the whole benchmark ``--runs`` times (each with its own database, warm-up and
correctness audit) and prints every run's figures, then the median and range of each.

    .venv/bin/python bench/restock_runs.py [--runs 5] [-- restock.py options...]

Exit status: 1 if any run failed its correctness audit or errored, else 0 (the performance
targets are for the reader to judge from the medians: they are printed beside them).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The lines of bench/restock.py's table read here: (label, regex on its output, group).
FIGURES = (
    ("ceiling req/s", r"^ceiling  GET /healthz\s+(\d+)", 1),
    ("restock req/s (random SKUs)", r"^restock  random SKUs\s+(\d+)", 1),
    ("API CPU ms per restock", r"^restock  random SKUs(?:\s+[\d.]+){3}\s+([\d.]+)", 1),
    ("DB CPU ms per restock", r"^restock  random SKUs(?:\s+[\d.]+){4}\s+([\d.]+)", 1),
    ("restock/ceiling (target >= 0.5)", r"^restock/ceiling\s+([\d.]+)", 1),
    ("restock/pgbench", r"^restock/pgbench\s+([\d.]+)", 1),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    rows: list[dict[str, float]] = []
    failed = 0
    for n in range(1, args.runs + 1):
        run = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "restock.py"), *passthrough],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode not in (0, 3):  # 3: data right, a performance target missed
            failed += 1
            print(f"run {n}: FAILED ({run.returncode})\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
            continue
        row = {}
        for label, pattern, group in FIGURES:
            found = re.search(pattern, run.stdout, re.MULTILINE)
            row[label] = float(found.group(group)) if found else float("nan")
        quiet = re.search(r"other processes on this machine used up to ([\d.]+)", run.stdout)
        row["other processes (cores)"] = float(quiet.group(1)) if quiet else float("nan")
        rows.append(row)
        print(f"run {n}: " + ", ".join(f"{k} {v:g}" for k, v in row.items()), flush=True)
    if rows:
        print(
            f"\n{len(rows)} runs of bench/restock.sh{' ' + ' '.join(passthrough) if passthrough else ''}"
        )
        print(f"{'figure':34} {'median':>8} {'min':>8} {'max':>8}")
        for label in rows[0]:
            values = [row[label] for row in rows if row[label] == row[label]]  # NaN: not read
            if not values:
                continue
            print(f"{label:34} {statistics.median(values):8g} {min(values):8g} {max(values):8g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
