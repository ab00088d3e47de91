"""The OpenAPI document, completed once for every route: each status a route can answer, errors
as ``application/problem+json`` with the Problem schema, and the headers the API reads and
writes (``Idempotency-Key``, ``If-Match``, ``ETag``, ``Location``, ``Retry-After``,
``RateLimit``, ``RateLimit-Policy``), so that generated clients and schema-driven fuzzers find
no undocumented answer (SPEC §4 Errors). Routes declare only what is theirs (a 409's meaning,
a 410); what every route of a kind can answer is declared here, by rule:

- every operation: 422 (a parameter, body or text PostgreSQL cannot store: ``api.text_guard``);
- under ``/api/v1``: 401, 403 and 429 (the key, its scope, its rate limit) and 503 (the
  database unreachable);
- a path parameter: 404; a request body: 400 (an unreadable body) and 413; a POST: 400 (an
  ``Idempotency-Key`` over 255 characters) and 409 (the same key still in flight); an
  ``If-Match``: 412;
- links from a created product to its reads, its restock and its update, and from a restock
  to its audit job and its stock (``LINKS``)."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from api.problems import MEDIA_TYPE

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Validation errors (422): where, what, which kind.",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

_STRING = {"schema": {"type": "string"}}
HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": 'The key\'s quota: `"default";q=<requests>;w=<window seconds>`.',
        **_STRING,
    },
    "RateLimit": {
        "description": 'What is left: `"default";r=<remaining>;t=<seconds to the reset>`.',
        **_STRING,
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "ETag": {"description": 'The product version, for `If-Match`: `"<id>.<version>"`.', **_STRING},
    "Location": {"description": "Where the created resource (or the job) is.", **_STRING},
    "Idempotent-Replayed": {"description": "`true`: the first answer to this key.", **_STRING},
}

_WHY = {
    400: "The body could not be read, or the Idempotency-Key is over 255 characters",
    401: "No API key, or one that is unknown or revoked",
    403: "The API key lacks the scope",
    404: "Not found",
    409: "Conflict: the Idempotency-Key is still in flight, or the state forbids it",
    412: "If-Match does not match the current ETag",
    413: "The body is over MAX_BODY_BYTES",
    422: "Validation error: a parameter, body field, cursor, ETag or date this API cannot take",
    429: "Over the API key's rate limit (or a quota): see Retry-After",
    503: "The database is unreachable: see Retry-After",
}
_CURSOR = (
    "Opaque: the `next_cursor` of the previous page, passed back unchanged. A cursor this API"
    " did not issue for this list → 422."
)


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    params = {p["name"].lower() for p in operation.get("parameters", [])}
    statuses = {422}
    if path.startswith("/api/"):
        statuses |= {401, 403, 429, 503}
    if "{" in path:
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413}
    if method == "post":
        statuses |= {400, 409}
    if "if-match" in params:
        statuses.add(412)
    return statuses


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status in _statuses(path, method, operation):
        responses.setdefault(str(status), {"description": _WHY[status]})
    secured = path.startswith("/api/")
    for code, response in responses.items():
        status = int(code) if code.isdigit() else 0
        headers: dict[str, Any] = response.setdefault("headers", {})
        if status >= 400:
            response["content"] = {MEDIA_TYPE: {"schema": _PROBLEM_REF}}
            response.setdefault("description", HTTPStatus(status).phrase)
        if secured and status != 401:
            headers.setdefault("RateLimit-Policy", HEADERS["RateLimit-Policy"])
            headers.setdefault("RateLimit", HEADERS["RateLimit"])
        if status in (429, 503) or (status == 200 and path.endswith("/jobs/{job_id}")):
            headers.setdefault("Retry-After", HEADERS["Retry-After"])
        if status in (201, 202) and method == "post":
            headers.setdefault("Location", HEADERS["Location"])
        if status < 300 and "/catalog/products" in path and method != "delete":
            headers.setdefault("ETag", HEADERS["ETag"])
        if status < 500 and method == "post":
            headers.setdefault("Idempotent-Replayed", HEADERS["Idempotent-Replayed"])
        if not headers:
            del response["headers"]
    for param in operation.get("parameters", []):
        if param["name"] == "cursor":
            param["description"] = _CURSOR


# Links, for clients and for stateful fuzzing (create a product → restock it → read it):
# (source operation, its status, link name, target operation, parameters, request body).
_PRODUCT = "/api/v1/catalog/products"
_RESTOCK = "/api/v1/inventory/restock"
_SKU = "$response.body#/sku"
_LEVELS = "/api/v1/inventory/{sku}"
LINKS: list[tuple[str, str, str, str, dict[str, str], dict[str, Any] | None]] = [
    (f"post {_PRODUCT}", "201", "GetProduct", f"get {_PRODUCT}/{{sku}}", {"path.sku": _SKU}, None),
    # one unit at MAIN, as a first receipt
    (
        f"post {_PRODUCT}",
        "201",
        "Restock",
        f"post {_RESTOCK}",
        {},
        {"sku": _SKU, "quantity": 1, "location_code": "MAIN"},
    ),
    (f"post {_PRODUCT}", "201", "GetLevels", f"get {_LEVELS}", {"path.sku": _SKU}, None),
    (
        f"post {_PRODUCT}",
        "201",
        "UpdateProduct",
        f"patch {_PRODUCT}/{{sku}}",
        {"path.sku": _SKU, "header.If-Match": "$response.header.ETag"},
        None,
    ),
    (
        f"post {_RESTOCK}",
        "201",
        "GetAuditJob",
        "get /api/v1/jobs/{job_id}",
        {"path.job_id": "$response.body#/audit_job/id"},
        None,
    ),
    (
        f"post {_RESTOCK}",
        "201",
        "GetStock",
        f"get {_LEVELS}",
        {"path.sku": "$response.body#/stock/sku"},
        None,
    ),
]


def _add_links(paths: dict[str, Any]) -> None:
    def operation(key: str) -> dict[str, Any] | None:
        method, _, path = key.partition(" ")
        found: dict[str, Any] | None = paths.get(path, {}).get(method)
        return found

    for source, status, name, target, parameters, body in LINKS:
        source_op, target_op = operation(source), operation(target)
        if source_op is None or target_op is None or "operationId" not in target_op:
            continue
        link: dict[str, Any] = {"operationId": target_op["operationId"]}
        if parameters:
            link["parameters"] = parameters
        if body is not None:
            link["requestBody"] = body
        response = source_op["responses"].setdefault(status, {"description": "Created"})
        response.setdefault("links", {})[name] = link


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's) completed as the module says; a new dictionary."""
    document = deepcopy(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, replaced
        schemas.pop(name, None)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(path, method, operation)
    _add_links(document.get("paths", {}))
    readyz = document.get("paths", {}).get("/readyz", {}).get("get")
    if readyz is not None:  # its 503 is its own JSON body, not a problem
        readyz["responses"]["503"] = {
            "description": "PostgreSQL or Redis does not answer",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return document


def install(app: FastAPI) -> None:
    """Serve the completed document (built once, on first request, as FastAPI does)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
