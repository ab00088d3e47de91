"""The offline supply-chain audit: ``.ci/osv_match.py`` (OSV range semantics, names, the ignore
list), ``.ci/pip_audit.py``'s fallback on ``.ci/advisories.json`` and the snapshot's generator
``.ci/advisories_snapshot.py``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CI = Path(__file__).resolve().parents[2] / ".ci"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A script of .ci/ as a module (under another name: ``pip_audit`` is pip-audit's own)."""
    monkeypatch.syspath_prepend(str(CI))
    spec = importlib.util.spec_from_file_location(f"ci_{name}", CI / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def osv(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load("osv_match", monkeypatch)


def advisory(
    ranges: list[list[dict[str, str]]], versions: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    entry = {"id": "PYSEC-1", "aliases": ["CVE-1"], "summary": "s", "ranges": ranges}
    return {**entry, "versions": versions or [], "fixed": [], **extra}


@pytest.mark.parametrize(
    ("version", "affected"),
    [("0.9", False), ("1.0", True), ("1.5.post1", True), ("2.0rc1", True), ("2.0", False)],
)
def test_a_version_is_affected_from_introduced_up_to_fixed_excluded(
    osv: ModuleType, version: str, affected: bool
) -> None:
    entry = advisory([[{"introduced": "1.0"}, {"fixed": "2.0"}]])
    assert osv.affects(entry, version) is affected


def test_introduced_zero_covers_every_version_before_the_fix(osv: ModuleType) -> None:
    entry = advisory([[{"introduced": "0"}, {"fixed": "0.21.0"}]])
    assert osv.affects(entry, "0.0.1") and osv.affects(entry, "0.20.1")
    assert not osv.affects(entry, "0.32.0")


def test_last_affected_is_itself_affected_and_the_next_version_is_not(osv: ModuleType) -> None:
    entry = advisory([[{"introduced": "0"}, {"last_affected": "2.0"}]])
    assert osv.affects(entry, "2.0")
    assert not osv.affects(entry, "2.0.1")


def test_a_range_of_several_spans_leaves_the_gaps_unaffected_in_any_event_order(
    osv: ModuleType,
) -> None:
    spans = [{"introduced": "2.5"}, {"fixed": "2.5.2"}, {"introduced": "0"}, {"fixed": "2.3.2"}]
    entry = advisory([spans])
    verdicts = [osv.affects(entry, v) for v in ("2.3.1", "2.4", "2.5.1", "2.5.2")]
    assert verdicts == [True, False, True, False]


def test_explicit_versions_count_beside_the_ranges_as_pep_440_versions(osv: ModuleType) -> None:
    entry = advisory([[{"introduced": "1.0"}, {"fixed": "1.1"}]], versions=["2015.04.28"])
    assert osv.affects(entry, "2015.4.28")
    assert not osv.affects(entry, "2015.4.29")
    assert osv.affects(advisory([], versions=["not-pep440"]), "not-pep440")
    assert not osv.affects(advisory([[{"introduced": "0"}]]), "not-pep440")


def test_names_are_normalised_as_pep_503_says(osv: ModuleType, tmp_path: Path) -> None:
    assert osv.normalise("Typing_Extensions") == "typing-extensions"
    assert osv.normalise("zope.interface") == "zope-interface"
    assert osv.normalise("PyYAML") == "pyyaml"
    lock = tmp_path / "requirements.lock"
    lock.write_text("Markdown_It.py==3.0.0 \\\n    --hash=sha256:ab\nurllib3==1.26.3\n")
    assert osv.pins(lock) == {"markdown-it-py": "3.0.0", "urllib3": "1.26.3"}


def test_an_advisory_ignored_by_its_id_or_an_alias_is_no_finding(osv: ModuleType) -> None:
    packages = {"jinja2": [advisory([[{"introduced": "0"}, {"fixed": "3.0"}]])]}
    locked = {"jinja2": "2.10", "other": "1.0"}
    assert [(n, v) for n, v, _ in osv.findings(locked, packages, set())] == [("jinja2", "2.10")]
    assert osv.findings(locked, packages, {"PYSEC-1"}) == []
    assert osv.findings(locked, packages, {"CVE-1"}) == []
    assert osv.findings({"jinja2": "3.1.6"}, packages, set()) == []


def offline_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock: str, ignore: str = ""
) -> int:
    """``pip_audit.offline`` on this lock and ignore list, against a one-advisory snapshot."""
    audit = load("pip_audit", monkeypatch)
    urllib3 = advisory([[{"introduced": "1.26.0"}, {"fixed": "1.26.4"}]], fixed=["1.26.4"])
    source = {"repo": "r", "commit": "c" * 40, "date": "2024-10-10T17:35:05Z"}
    snapshot = {"sources": [source], "packages": {"urllib3": [urllib3], "idna": []}}
    for name, text in [("lock", lock), ("snapshot", json.dumps(snapshot)), ("ignore", ignore)]:
        (tmp_path / name).write_text(text)
        monkeypatch.setattr(audit, name.upper(), tmp_path / name)
    verdict: int = audit.offline(audit.ignored_ids())
    return verdict


def test_the_offline_audit_fails_on_a_finding_and_names_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = "urllib3==1.26.3\nidna==3.20\nnew-package==1.0\n"
    verdict = offline_audit(tmp_path, monkeypatch, lock)
    out = capsys.readouterr().out
    assert verdict == 1
    assert "VULNERABLE urllib3 1.26.3: PYSEC-1 (fixed in 1.26.4)" in out
    assert "offline snapshot of 2024-10-10 (r@cccccccccccc): 2 of 3 packages checked" in out
    assert "not in the snapshot (refresh it): new-package" in out
    assert "WARNING: the snapshot is" in out


def test_the_offline_audit_passes_with_the_finding_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    verdict = offline_audit(tmp_path, monkeypatch, "urllib3==1.26.3\n", "CVE-1 not used\n")
    assert verdict == 0
    assert "VULNERABLE" not in capsys.readouterr().out


def git_snapshot(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    subprocess.run(["git", "-C", str(root), *env, "commit", "-qm", "s"], check=True)
    return root


def test_the_generator_keeps_the_locks_packages_once_without_urls_or_covered_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = load("advisories_snapshot", monkeypatch)
    pysec = """id: PYSEC-2023-1
details: Starlette before 0.27 lets a path escape, see https://example.test/x. More text.
aliases: [CVE-2023-1]
affected:
- package: {name: Starlette, ecosystem: PyPI}
  ranges: [{type: ECOSYSTEM, events: [{introduced: '0'}, {fixed: '0.27.0'}]}]
  versions: ['0.26.0', '0.30.0']
- package: {name: left-out, ecosystem: PyPI}
  versions: ['1.0']
"""
    ranges = [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]
    affected = {"package": {"name": "starlette", "ecosystem": "PyPI"}, "ranges": ranges}
    ghsa = {"id": "GHSA-x", "aliases": ["CVE-2023-1"], "summary": "same", "affected": [affected]}
    withdrawn = pysec.replace("2023-1", "2023-2") + "withdrawn: '2023-06-01T00:00:00Z'\n"
    pypa = {
        "vulns/starlette/PYSEC-2023-1.yaml": pysec,
        "vulns/starlette/PYSEC-2023-2.yaml": withdrawn,
    }
    git_snapshot(tmp_path / "pypa", pypa)
    ghsa_path = "advisories/github-reviewed/2023/01/GHSA-x/GHSA-x.json"
    git_snapshot(tmp_path / "gh", {ghsa_path: json.dumps(ghsa)})
    content = generator.snapshot([tmp_path / "pypa", tmp_path / "gh"], {"starlette", "idna"})
    repos = [source["repo"] for source in content["sources"]]
    assert repos == ["pypa/advisory-database", "github/advisory-database"]
    kept = {
        "id": "PYSEC-2023-1",
        "aliases": ["CVE-2023-1"],
        "summary": "Starlette before 0.27 lets a path escape, see. More text.",
        "ranges": [[{"introduced": "0"}, {"fixed": "0.27.0"}]],
        "versions": ["0.30.0"],
        "fixed": ["0.27.0"],
    }
    assert content["packages"] == {"idna": [], "starlette": [kept]}
    assert "://" not in generator.layout(content)
    assert json.loads(generator.layout(content)) == content


def test_the_committed_snapshot_names_its_source_and_flags_an_old_pin(osv: ModuleType) -> None:
    snapshot = json.loads((CI / "advisories.json").read_text())
    assert all(s["repo"] and len(s["commit"]) == 40 and s["date"] for s in snapshot["sources"])
    found = osv.findings({"urllib3": "1.26.3"}, snapshot["packages"], set())
    assert "CVE-2021-28363" in {alias for _, _, entry in found for alias in entry["aliases"]}
