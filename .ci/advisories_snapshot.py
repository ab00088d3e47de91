"""Write ``.ci/advisories.json``: the advisories that concern the packages of the lock file.

``.ci/pip_audit.py`` falls back on that file where pip-audit's online advisory services cannot
be reached, so CI still audits the lock. It is cut from a git snapshot (a clone, bare or not)
of the Python Packaging Authority's advisory database (``vulns/<package>/PYSEC-*.yaml``) and,
if given too, GitHub's (``advisories/github-reviewed/**/GHSA-*.json``, PyPI entries only); an
advisory met twice under different ids (by its aliases) is kept once. Only what the version
check needs is kept: ids, aliases, a short summary, the ECOSYSTEM ranges, the explicit
versions that the ranges do not already cover (the databases list every version a range
covers: the file stays small, the verdicts stay the same) and the fix versions; no URL.
Refresh it after a change of the lock, and to catch new advisories::

    .venv/bin/python .ci/advisories_snapshot.py /path/to/advisory-database [/path/to/github-db]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # (no stubs in the lock)
from osv_match import Entry, affects, normalise, pins

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-dev.lock"
OUT = ROOT / ".ci" / "advisories.json"
LAYOUTS = {  # path pattern -> the database's name
    re.compile(r"vulns/[^/]+/PYSEC-[^/]+\.yaml"): "pypa/advisory-database",
    re.compile(r"advisories/github-reviewed/.+/GHSA-[^/]+\.json"): "github/advisory-database",
}
URL = re.compile(r"(?:\S+://|\bwww\.)\S*?(?=[.,;:)\]]*(?:\s|$))|<[^>]*>")  # punctuation kept


def git(repo: Path, *args: str, stdin: str | None = None) -> bytes:
    data = stdin.encode() if stdin is not None else None
    run = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True)
    if run.returncode:
        sys.exit(f"git {' '.join(args)} in {repo}: {run.stderr.decode().strip()}")
    return run.stdout


def read_database(repo: Path) -> tuple[dict[str, str], Iterator[dict[str, Any]]]:
    """The snapshot's source, commit and date, and its advisories (parsed OSV documents) in
    path order; the files are read at HEAD through one ``git cat-file --batch``."""
    paths = git(repo, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    wanted = [p for p in sorted(paths) if any(pattern.fullmatch(p) for pattern in LAYOUTS)]
    if not wanted:
        sys.exit(f"{repo}: no PYSEC-*.yaml or GHSA-*.json advisory at HEAD")
    source = next(name for pattern, name in LAYOUTS.items() if pattern.fullmatch(wanted[0]))
    commit, date = git(repo, "log", "-1", "--format=%H %cI", "HEAD").decode().split()
    blob = git(repo, "cat-file", "--batch", stdin="".join(f"HEAD:{p}\n" for p in wanted))

    def documents() -> Iterator[dict[str, Any]]:
        at = 0
        for path in wanted:
            header_end = blob.index(b"\n", at)
            size = int(blob[at:header_end].split()[2])
            text = blob[header_end + 1 : header_end + 1 + size]
            at = header_end + 2 + size
            yield json.loads(text) if path.endswith(".json") else yaml.safe_load(text)

    return {"repo": source, "commit": commit, "date": date}, documents()


def short(advisory: dict[str, Any]) -> str:
    """The summary, else the details' start; no URL, at most 120 characters."""
    text = advisory.get("summary") or advisory.get("details") or ""
    text = re.sub(r"\s+(?=[.,;:)])", "", " ".join(URL.sub("", text).split()))
    return text if len(text) <= 120 else text[:119].rstrip() + "…"


def entries(advisory: dict[str, Any], names: set[str]) -> Iterator[tuple[str, Entry]]:
    """``(package, entry)`` for each affected PyPI package of the lock: the ECOSYSTEM ranges'
    events, the explicit versions outside them and the fix versions."""
    if advisory.get("withdrawn"):
        return
    for affected in advisory.get("affected", []):
        package = affected.get("package", {})
        name = normalise(package.get("name", ""))
        if package.get("ecosystem") != "PyPI" or name not in names:
            continue
        ranges = [
            [{kind: str(v) for kind, v in event.items()} for event in rng["events"]]
            for rng in affected.get("ranges", [])
            if rng.get("type") == "ECOSYSTEM"
        ]
        listed = [str(v) for v in affected.get("versions", [])]
        if not ranges and not listed:
            continue
        fixed = [event["fixed"] for rng in ranges for event in rng if "fixed" in event]
        entry: Entry = {
            "id": advisory["id"],
            "aliases": sorted(set(advisory.get("aliases") or [])),
            "summary": short(advisory),
            "ranges": ranges,
            "versions": [],
            "fixed": sorted(set(fixed), key=fixed.index),
        }
        entry["versions"] = [v for v in listed if not affects(entry, v)]
        yield name, entry


def snapshot(repos: list[Path], names: set[str]) -> dict[str, Any]:
    """The file's content: the sources, then each package of the lock (those without any
    advisory too: the checker knows which packages the snapshot covered) with its advisories."""
    sources: list[dict[str, str]] = []
    packages: dict[str, list[Entry]] = {name: [] for name in sorted(names)}
    seen: dict[str, set[str]] = {name: set() for name in names}
    for repo in repos:
        source, advisories = read_database(repo)
        sources.append(source)
        for advisory in advisories:
            for name, entry in entries(advisory, names):
                known = {entry["id"], *entry["aliases"]}
                if not known & seen[name]:
                    packages[name].append(entry)
                seen[name] |= known
    return {
        "generated_by": ".ci/advisories_snapshot.py",
        "sources": sources,
        "packages": packages,
    }


def layout(content: dict[str, Any]) -> str:
    """JSON, one advisory a line (small, and a refresh reads well in a diff)."""

    def line(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    packages = ",\n".join(
        f" {line(name)}:[" + ",".join(f"\n  {line(entry)}" for entry in entries) + "]"
        for name, entries in content["packages"].items()
    )
    head = ",\n".join(
        f" {line(key)}:{line(value)}" for key, value in content.items() if key != "packages"
    )
    return "{\n" + head + ',\n "packages":{\n' + packages + "\n}}\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    content = snapshot([Path(arg) for arg in argv], set(pins(LOCK)))
    text = layout(content)
    if "://" in text:
        sys.exit("a URL is left in the snapshot: extend URL in this script")
    OUT.write_text(text)
    count = sum(len(entries) for entries in content["packages"].values())
    print(f"{OUT.relative_to(ROOT)}: {count} advisories, {len(text.encode()) // 1000} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
