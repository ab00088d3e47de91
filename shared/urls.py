"""The URLs the API exposes, in one place: its prefix, and the paths answers link to (the
API's routers are mounted under ``API_PREFIX``; services build links with these)."""

from __future__ import annotations

import uuid

API_PREFIX = "/api/v1"


def job_path(job_id: uuid.UUID | str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def report_path(report_id: uuid.UUID | str) -> str:
    return f"{API_PREFIX}/reports/{report_id}"


def product_path(sku: str) -> str:
    return f"{API_PREFIX}/catalog/products/{sku}"
