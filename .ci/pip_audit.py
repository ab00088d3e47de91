"""Supply chain: pip-audit on the hash-pinned lock file (every package, the tools included).

Fails on any known vulnerability not explained in ``.ci/pip-audit-ignore`` (one ``ID reason``
a line). pip-audit asks PyPI's JSON API for each package's advisories: where that service
cannot be reached (a mirror without it, no network), it skips every package, and this says
so loudly (BLOCKED) instead of counting it as a clean audit; set STOCKROOM_AUDIT_STRICT=1 to
make that a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = ROOT / ".ci" / "pip-audit-ignore"


def main() -> int:
    ignored = [
        line.split()[0]
        for line in IGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    cmd = [
        str(ROOT / ".venv" / "bin" / "pip-audit"),
        "-r", str(ROOT / "requirements-dev.lock"),
        "--require-hashes", "--disable-pip", "--progress-spinner", "off", "-f", "json",
        *[arg for vuln in ignored for arg in ("--ignore-vuln", vuln)],
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed ({run.returncode}):\n{run.stderr[-2000:]}")
        return 1
    deps = report["dependencies"]
    found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    skipped = [d for d in deps if "skip_reason" in d]
    for name, version, vuln in found:
        fixed = ", ".join(vuln.get("fix_versions", [])) or "none yet"
        print(f"VULNERABLE {name} {version}: {vuln['id']} (fixed in {fixed})")
    audited = len(deps) - len(skipped)
    print(f"pip-audit: {audited} of {len(deps)} packages audited, {len(found)} vulnerable")
    if skipped and not audited:
        print(
            "pip-audit: BLOCKED: the advisory service answered for no package"
            f" ({skipped[0]['skip_reason']}); nothing was audited"
        )
        if os.environ.get("STOCKROOM_AUDIT_STRICT") == "1":
            return 1
    elif skipped:
        print("pip-audit: not audited: " + ", ".join(d["name"] for d in skipped))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
