"""The reports API: validation, scopes, idempotency and audit, not-ready and expired files,
the size cap."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.db.database import Database
from tests.conftest import KeyFactory, count

WINDOW = {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kind": "forecast", "format": "csv"}, ["body"]),
        ({"kind": "valuation", "format": "pdf"}, ["body", "valuation", "format"]),
        ({"kind": "valuation", "format": "csv", "extra": 1}, ["body", "valuation", "extra"]),
        (
            {"kind": "valuation", "format": "csv", "params": {"colour": "red"}},
            ["body", "valuation", "params", "colour"],
        ),
        (
            {"kind": "low_stock", "format": "csv", "params": {"location_code": "MAIN"}},
            ["body", "low_stock", "params", "location_code"],
        ),
        ({"kind": "movements", "format": "csv"}, ["body", "movements", "params"]),
        (
            {
                "kind": "movements",
                "format": "csv",
                "params": {"since": "2026-01-01T00:00:00", "until": "2026-02-01T00:00:00Z"},
            },
            ["body", "movements", "params", "since"],
        ),
        (
            {
                "kind": "movements",
                "format": "csv",
                "params": {**WINDOW, "until": "2026-01-01T00:00:00Z"},
            },
            ["body", "movements", "params"],
        ),
        (
            {"kind": "movements", "format": "csv", "params": {**WINDOW, "sku": "x"}},
            ["body", "movements", "params", "sku"],
        ),
    ],
)
async def test_invalid_requests_are_422(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    db: Database,
    body: dict[str, Any],
    loc: list[str],
) -> None:
    r = await client.post("/api/v1/reports", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert any(e["loc"][: len(loc)] == loc for e in r.json()["errors"]), r.json()
    assert await count(db, "SELECT count(*) FROM jobs") == 0


async def test_unknown_filter_references_are_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for params, field in [
        ({"location_code": "NOWHERE"}, "location_code"),
        ({**WINDOW, "sku": "NO-SUCH"}, "sku"),
    ]:
        kind = "movements" if "since" in params else "valuation"
        r = await client.post(
            "/api/v1/reports", json={"kind": kind, "format": "csv", "params": params}, headers=admin
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["body", "params", field]


async def test_scopes(client: httpx.AsyncClient, make_key: KeyFactory) -> None:
    reader = await make_key("reports:read")
    writer = await make_key("reports:write")
    body = {"kind": "valuation", "format": "csv"}
    assert (await client.post("/api/v1/reports", json=body)).status_code == 401
    assert (await client.post("/api/v1/reports", json=body, headers=reader)).status_code == 403
    r = await client.post("/api/v1/reports", json=body, headers=writer)
    assert r.status_code == 202
    report = f"/api/v1/reports/{r.json()['id']}"
    assert (await client.get(report, headers=writer)).status_code == 403
    assert (await client.get(report, headers=reader)).status_code == 200


async def test_request_is_idempotent_audited_and_not_downloadable_until_complete(
    client: httpx.AsyncClient, admin: dict[str, str], db: Database
) -> None:
    body = {
        "kind": "movements",
        "format": "xlsx",
        "params": {"since": "2026-01-01T01:00:00+01:00", "until": "2026-01-02T00:00:00Z"},
    }
    headers = {**admin, "Idempotency-Key": "report-1"}
    first = await client.post("/api/v1/reports", json=body, headers=headers)
    again = await client.post("/api/v1/reports", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert (
        again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    )
    job = first.json()
    assert job["kind"] == "report" and job["status"] == "queued"
    assert job["links"]["report"] == f"/api/v1/reports/{job['id']}"
    assert await count(db, "SELECT count(*) FROM jobs WHERE kind = 'report'") == 1
    assert (
        await count(
            db,
            "SELECT count(*) FROM jobs"
            " WHERE kind = 'audit' AND payload->>'action' = 'report.requested'",
        )
        == 1
    )

    meta = (await client.get(f"/api/v1/reports/{job['id']}", headers=admin)).json()
    assert meta == {
        "id": job["id"],
        "kind": "movements",
        "format": "xlsx",
        "params": {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
        "status": "queued",
        "row_count": None,
        "size_bytes": None,
        "created_at": job["created_at"],
        "expires_at": None,
        "links": {
            "self": f"/api/v1/reports/{job['id']}",
            "job": f"/api/v1/jobs/{job['id']}",
            "download": f"/api/v1/reports/{job['id']}/download",
            "chart": f"/api/v1/reports/{job['id']}/chart.png",
        },
    }
    for link in ("download", "chart"):
        r = await client.get(meta["links"][link], headers=admin)
        assert r.status_code == 409 and r.json()["type"].endswith("/report-not-ready")
    unknown = "/api/v1/reports/00000000-0000-0000-0000-000000000000"
    assert (await client.get(unknown, headers=admin)).status_code == 404
    assert (await client.get(unknown + "/download", headers=admin)).status_code == 404
