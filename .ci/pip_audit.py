"""Supply chain: pip-audit on the hash-pinned lock file (every package, the tools included).

Fails on any known vulnerability not explained in ``.ci/pip-audit-ignore`` (one ``ID reason``
a line). pip-audit asks PyPI's JSON API for each package's advisories: where that service
cannot be reached (a mirror without it, no network), it skips every package. Then the lock's
pins are checked offline instead, against ``.ci/advisories.json``: the advisories of the
lock's packages, cut from a snapshot of the advisory databases by
``.ci/advisories_snapshot.py`` (same verdicts, same ignore list). The output names the
snapshot's date and warns when it is old: advisories published since are not in it. Where
pip-audit fails outright (no network at all) the snapshot is used too. Only where neither
works does this say so loudly (BLOCKED) instead of counting it as a clean audit.
STOCKROOM_AUDIT_STRICT=1 makes that a failure, and also a snapshot older than
STALE_AFTER_DAYS or missing some of the lock's packages: nothing current was audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from osv_match import findings, pins

ROOT = Path(__file__).resolve().parent.parent
IGNORE = ROOT / ".ci" / "pip-audit-ignore"
LOCK = ROOT / "requirements-dev.lock"
SNAPSHOT = ROOT / ".ci" / "advisories.json"
STALE_AFTER_DAYS = 90


def ignored_ids() -> set[str]:
    return {
        line.split()[0]
        for line in IGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def report(name: str, version: str, vuln_id: str, fixed: list[str]) -> None:
    print(f"VULNERABLE {name} {version}: {vuln_id} (fixed in {', '.join(fixed) or 'none yet'})")


def offline(ignored: set[str]) -> int | None:
    """The audit against the committed snapshot: 1 on any unexplained finding, else 0; None
    without a snapshot. Packages of the lock the snapshot does not know (added since it was
    cut) are named, not counted as checked."""
    if not SNAPSHOT.exists():
        return None
    snapshot = json.loads(SNAPSHOT.read_text())
    locked = pins(LOCK)
    covered = {name: v for name, v in locked.items() if name in snapshot["packages"]}
    found = findings(covered, snapshot["packages"], ignored)
    for name, version, entry in found:
        report(name, version, entry["id"], entry["fixed"])
    sources = snapshot["sources"]
    taken = min(datetime.fromisoformat(source["date"]) for source in sources)
    names = ", ".join(f"{s['repo']}@{s['commit'][:12]}" for s in sources)
    print(
        f"pip-audit: audited with the offline snapshot of {taken.date()} ({names}):"
        f" {len(covered)} of {len(locked)} packages checked, {len(found)} vulnerable"
    )
    if missing := sorted(set(locked) - set(covered)):
        print("pip-audit: not in the snapshot (refresh it): " + ", ".join(missing))
    age = (datetime.now(UTC) - taken).days
    if age > STALE_AFTER_DAYS:
        print(
            f"pip-audit: WARNING: the snapshot is {age} days old; advisories published since"
            " are not checked (refresh it: docs/security.md)"
        )
    incomplete = bool(missing) or age > STALE_AFTER_DAYS
    return 1 if found or (incomplete and strict()) else 0


def strict() -> bool:
    return os.environ.get("STOCKROOM_AUDIT_STRICT") == "1"


def online(ignored: set[str]) -> dict[str, Any] | None:
    """pip-audit's JSON report, or None (said) if it failed."""
    cmd = [
        str(ROOT / ".venv" / "bin" / "pip-audit"),
        "-r", str(LOCK),
        "--require-hashes", "--disable-pip", "--progress-spinner", "off", "-f", "json",
        *[arg for vuln in sorted(ignored) for arg in ("--ignore-vuln", vuln)],
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    try:
        result: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed ({run.returncode}):\n{run.stderr[-2000:]}")
        return None
    return result


def main() -> int:
    ignored = ignored_ids()
    result = online(ignored)
    deps = result["dependencies"] if result is not None else []
    found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    skipped = [d for d in deps if "skip_reason" in d]
    audited = len(deps) - len(skipped)
    if result is None or (skipped and not audited):
        if skipped:
            why = skipped[0]["skip_reason"]
            print(f"pip-audit: the advisory service answered for no package ({why})")
        verdict = offline(ignored)
        if verdict is not None:
            return verdict
        print(f"pip-audit: BLOCKED: no {SNAPSHOT.name} either; nothing was audited")
        return 1 if result is None or strict() else 0
    for name, version, vuln in found:
        report(name, version, vuln["id"], vuln.get("fix_versions", []))
    print(f"pip-audit: {audited} of {len(deps)} packages audited, {len(found)} vulnerable")
    if skipped:
        print("pip-audit: not audited: " + ", ".join(d["name"] for d in skipped))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
