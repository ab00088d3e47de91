"""The console in a real browser (Debian's headless Chromium, driven by Playwright) against
the real API served by uvicorn and a real worker: sign in with the keyboard, see a failed job
appear without reloading, retry it and watch it complete, cancel a queued one, sign out.
Screenshots of every page, light and dark, go to ``artifacts/console/``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job
from tests.conftest import Env, count
from tests.console.support import key_of
from tests.servers import api_answers, api_process
from tests.worker.receiver import Receiver
from tests.worker_support import WorkerFactory, create_low_stock_jobs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
WAIT_MS = 30_000


@pytest.fixture
def api_url(env: Env) -> Iterator[str]:
    """``stockroom api`` (uvicorn) on a free port, as production runs it."""
    with api_process(env.process_env()) as (url, _):
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def _request_report(url: str, admin: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=url, headers=admin, timeout=10) as client:
        r = await client.post(
            "/api/v1/catalog/products",
            json={
                "sku": "BRW-1",
                "title": "Pallet wrap",
                "unit_price": "12.50",
                "reorder_point": 9,
            },
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/inventory/restock", json={"sku": "BRW-1", "quantity": 4})
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/reports", json={"kind": "low_stock", "format": "csv"})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


async def _create_deferred_job(db: Database, sku: str) -> uuid.UUID:
    """A webhook job due in an hour: queued, and no worker takes it meanwhile."""
    async with db.transaction() as conn:
        job_id = await create_job(
            UnitOfWork(conn, Actor.system()),
            JobKind.webhook,
            {"type": "stock.low", "data": {"sku": sku}},
            5,
        )
        await conn.execute(
            "UPDATE jobs SET run_after = now() + interval '1 hour' WHERE id = $1", job_id
        )
    return job_id


async def _shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_sign_in_retry_a_failed_job_cancel_a_queued_one_and_sign_out(
    env: Env,
    api_url: str,
    browser: Browser,
    admin: dict[str, str],
    db: Database,
    receiver: Receiver,
    start_worker: WorkerFactory,
) -> None:
    receiver.answer(400)  # the first delivery fails for good; the retry's succeeds
    start_worker()
    await api_answers(api_url)
    context = await browser.new_context(
        base_url=api_url, viewport={"width": 1366, "height": 800}, color_scheme="light"
    )
    page = await context.new_page()

    # signed out, the console is its sign-in form; the key is typed and sent by keyboard
    await page.goto("/console")
    await expect(page).to_have_url(f"{api_url}/console/sign-in")
    await expect(page.locator("#api_key")).to_be_focused()
    await _shoot(page, "sign-in")
    await page.keyboard.type(key_of(admin))
    await page.keyboard.press("Enter")
    await expect(page.locator("h1")).to_have_text("Overview")
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
    assert key_of(admin) not in await page.evaluate(
        "JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + location.href"
    )

    # a job fails while the Jobs page is open: it appears without a reload
    await page.goto("/console/jobs?kind=webhook")
    [failing] = await create_low_stock_jobs(db, "BRW-FAIL")
    failed_row = page.locator(f'#job-{failing}[data-status="failed"]')
    await expect(failed_row).to_be_visible(timeout=WAIT_MS)
    await expect(failed_row.locator("td.error")).to_contain_text("receiver answered 400")

    # retry it; its new job completes, seen as the page refreshes itself
    await failed_row.get_by_role("button", name=f"Retry job {failing}").click()
    await expect(page.locator(".banner.notice")).to_contain_text(f"Job {failing} retried")
    retry_sql = "SELECT id FROM jobs WHERE retry_of = $1"
    async with db.pool.acquire() as conn:
        retried = await conn.fetchval(retry_sql, failing)
    done_row = page.locator(f'#job-{retried}[data-status="complete"]')
    await expect(done_row).to_be_visible(timeout=WAIT_MS)
    await expect(done_row.locator("progress")).to_have_attribute("value", "100")

    # a queued job (due in an hour) is cancelled, by keyboard: focus its button, Enter
    waiting = await _create_deferred_job(db, "BRW-WAIT")
    await page.goto("/console/jobs?status=queued")
    cancel = page.get_by_role("button", name=f"Cancel job {waiting}")
    await cancel.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".banner.notice")).to_contain_text("Cancel requested")
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE id = $1 AND status = 'cancelled'", waiting)
        == 1
    )

    # every page, for people to look at
    report_id = await _request_report(api_url, admin)
    await page.goto("/console/reports")
    thumbnail = page.locator(f"#report-{report_id} img")
    await expect(thumbnail).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(f"#report-{report_id} a", has_text="Download CSV")).to_be_visible()
    await page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=await thumbnail.element_handle()
    )
    await _shoot(page, "reports")
    await page.goto("/console/workers")
    await expect(page.locator("tbody tr")).not_to_have_count(0)
    await _shoot(page, "workers")
    await page.goto("/console/audit")
    await expect(page.locator("td", has_text="job.retried")).to_be_visible(timeout=WAIT_MS)
    await _shoot(page, "audit")
    await page.goto("/console/jobs")
    await _shoot(page, "jobs")
    await page.goto("/console")
    await expect(page.locator("#stat-workers")).not_to_have_text("0")
    await _shoot(page, "overview")
    dark = await browser.new_context(
        base_url=api_url,
        viewport={"width": 1366, "height": 800},
        color_scheme="dark",
        storage_state=await context.storage_state(),
    )
    dark_page = await dark.new_page()
    for path, name in (("/console", "overview-dark"), ("/console/jobs", "jobs-dark")):
        await dark_page.goto(path)
        await _shoot(dark_page, name)
    await dark.close()

    # sign out: the session is gone, and the console is its sign-in form again
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{api_url}/console/sign-in")
    assert await count(db, "SELECT count(*) FROM console_sessions") == 0
    await page.goto("/console/jobs")
    await expect(page).to_have_url(f"{api_url}/console/sign-in")
    await context.close()
