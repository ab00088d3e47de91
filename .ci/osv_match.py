"""Which advisories of ``.ci/advisories.json`` affect the lock file's pins (OSV semantics).

Shared by ``.ci/pip_audit.py`` (the offline audit) and ``.ci/advisories_snapshot.py`` (which
drops the explicit versions that the ranges already cover). An advisory entry holds OSV's
``ranges`` (each a list of ECOSYSTEM events: ``introduced``, ``fixed``, ``last_affected``) and
``versions`` (affected versions named one by one); a version is affected if any range or the
list says so. Versions compare as PEP 440 versions (``2015.04.28`` is ``2015.4.28``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

Entry = dict[str, Any]
ZERO = Version("0")


def normalise(name: str) -> str:
    """PEP 503: runs of ``-``, ``_`` and ``.`` are one ``-``, case ignored."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def pins(lock: Path) -> dict[str, str]:
    """``{normalised name: version}`` of each ``name==version`` line of a lock file."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock.read_text(), flags=re.MULTILINE)
    return {normalise(name): version for name, version in found}


def in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """OSV's evaluation of one range: the events in version order; affected from an
    ``introduced`` on, until a ``fixed`` (that version excluded) or past a ``last_affected``.
    An event whose version PEP 440 cannot read is left out."""
    steps = [(kind, parse(at)) for event in events for kind, at in event.items()]
    readable = [(kind, at) for kind, at in steps if at is not None]
    affected = False
    for kind, at in sorted(readable, key=lambda step: step[1]):
        if kind == "introduced" and version >= at:
            affected = True
        elif (kind == "fixed" and version >= at) or (kind == "last_affected" and version > at):
            affected = False
    return affected


def affects(entry: Entry, version: str) -> bool:
    parsed = parse(version)
    if parsed is None:  # not PEP 440: only an exact name in the list can match
        return version in entry["versions"]
    if any(parsed == parse(listed) for listed in entry["versions"]):
        return True
    return any(in_range(parsed, events) for events in entry["ranges"])


def findings(
    locked: dict[str, str], packages: dict[str, list[Entry]], ignored: set[str]
) -> list[tuple[str, str, Entry]]:
    """``(name, version, advisory)`` for each advisory affecting a pin, those whose id or an
    alias is in ``ignored`` (``.ci/pip-audit-ignore``) left out, as pip-audit's
    ``--ignore-vuln`` does."""
    return [
        (name, version, entry)
        for name, version in sorted(locked.items())
        for entry in packages.get(name, [])
        if not {entry["id"], *entry["aliases"]} & ignored and affects(entry, version)
    ]
