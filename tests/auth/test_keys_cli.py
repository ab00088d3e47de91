"""``stockroom keys``: create prints the secret once, storage is hashed, list never shows
secrets, revoke takes effect on the next request."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from shared.db.database import Database
from tests.conftest import Env


def stockroom(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=env.process_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


async def test_create_list_revoke(client: httpx.AsyncClient, env: Env, db: Database) -> None:
    out = stockroom(
        env,
        "keys",
        "create",
        "--name",
        "dock-7",
        "--scopes",
        "inventory:write,catalog:read",
        "--json",
    )
    info = json.loads(out.stdout)
    assert set(info) == {"id", "name", "scopes", "key"}
    assert info["name"] == "dock-7"
    assert info["scopes"] == ["catalog:read", "inventory:write"]
    key = info["key"]
    assert key.startswith("sr_") and len(key) > 40

    # stored hashed: the secret appears nowhere in the table
    async with db.pool.acquire() as conn:
        dump = await conn.fetchval("SELECT string_agg(t::text, '|') FROM api_keys t")
    assert key.split("_", 2)[2] not in dump

    listed = stockroom(env, "keys", "list").stdout
    assert info["id"] in listed and "dock-7" in listed
    assert key not in listed and key.split("_", 2)[2] not in listed
    listed_json = json.loads(stockroom(env, "keys", "list", "--json").stdout)
    assert [k["id"] for k in listed_json] == [info["id"]]

    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/api/v1/catalog/products", headers=headers)).status_code == 200
    stockroom(env, "keys", "revoke", info["id"])
    assert (await client.get("/api/v1/catalog/products", headers=headers)).status_code == 401
    again = stockroom(env, "keys", "revoke", info["id"], check=False)
    assert again.returncode == 1


def test_bad_scopes_and_names_are_refused(env: Env) -> None:
    r = stockroom(
        env, "keys", "create", "--name", "x", "--scopes", "catalog:read,root", check=False
    )
    assert r.returncode == 2 and "root" in r.stderr
    r = stockroom(env, "keys", "create", "--name", " ", "--scopes", "admin", check=False)
    assert r.returncode == 2
    r = stockroom(env, "keys", "revoke", "not-a-uuid", check=False)
    assert r.returncode == 2


def test_human_output_shows_the_key_once(env: Env) -> None:
    out = stockroom(env, "keys", "create", "--name", "h", "--scopes", "admin").stdout
    assert out.count("sr_") == 1 and "shown once" in out
