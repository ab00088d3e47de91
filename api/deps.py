"""Dependencies as ``Annotated`` aliases: settings, a read connection, the caller and its
scope, and the unit of work every mutation runs in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.responses import Response

from api.problems import MEDIA_TYPE, domain_problem
from shared import idempotency, metrics
from shared.auth.service import Principal, authenticate
from shared.db.connection import Connection
from shared.db.database import Database
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.errors import DomainError, Forbidden, Unauthenticated
from shared.jobs.outbox import mark_enqueued
from shared.queue import Queue
from shared.settings import Settings

log = logging.getLogger("stockroom.api")


@dataclass(slots=True)
class AppState:
    """What the API process holds for its lifetime, built in the lifespan."""

    settings: Settings
    db: Database
    queue: Queue


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in the thread pool, a hop per
    # request that measured as a large share of the restock path's CPU.
    state: AppState = request.app.state.stockroom
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def read_connection(state: StateDep) -> AsyncIterator[Connection]:
    """A pooled connection for the request's reads (autocommit; each statement sees a
    consistent snapshot)."""
    async with state.db.pool.acquire() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(read_connection, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sr_...`")


class RequireScope:
    """Authenticates the caller and checks one scope: 401 without a valid key, 403 without
    the scope (``admin`` holds every scope)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        state: StateDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
        principal = await authenticate(state.db.pool, credentials.credentials)
        if principal is None:
            raise Unauthenticated("the API key is unknown or revoked")
        if not principal.allows(self.scope):
            raise Forbidden(f"this API key lacks the '{self.scope}' scope")
        request.state.principal = principal
        return principal


def requires(scope: str) -> Any:
    """Dependency marker for ``Annotated[Principal, requires(scope)]``: authenticate, check
    ``scope``; OpenAPI lists the scope as the operation's security requirement."""
    return params.Security(dependency=RequireScope(scope), scopes=[scope])


class ReplayStored(Exception):
    """The request repeats an Idempotency-Key: answer with the stored response."""

    def __init__(self, stored: idempotency.StoredResponse) -> None:
        self.stored = stored


def replay_response(stored: idempotency.StoredResponse) -> Response:
    headers = dict(stored.headers)
    headers["Idempotent-Replayed"] = "true"
    media = headers.pop("content-type", "application/json")
    return Response(stored.body, status_code=stored.status_code, headers=headers, media_type=media)


@dataclass(slots=True)
class Mutation:
    """The unit of work of one mutating request, with its Idempotency-Key handling.

    Endpoints build their answer with ``respond``: the response is stored with the key inside
    the transaction, then the transaction commits, then the outbox's jobs are dispatched."""

    uow: UnitOfWork
    principal: Principal
    idempotency_key: str | None
    fingerprint: bytes
    responses: list[idempotency.StoredResponse] = field(default_factory=list)

    async def respond(
        self,
        status_code: int,
        body: BaseModel | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        content = body.model_dump_json().encode() if body is not None else b""
        stored_headers = dict(headers or {})
        if body is not None:
            stored_headers["content-type"] = "application/json"
        stored = idempotency.StoredResponse(status_code, stored_headers, content)
        if self.idempotency_key is not None:
            await idempotency.store(
                self.uow.conn,
                self.principal.key_id,
                self.idempotency_key,
                self.fingerprint,
                stored,
            )
        media = stored_headers.pop("content-type", None)
        return Response(content, status_code=status_code, headers=stored_headers, media_type=media)


def _stored_problem(exc: DomainError) -> idempotency.StoredResponse:
    """A domain error as stored under its key, so that a retry replays it (as Stripe does)
    rather than running the request again later against different state."""
    response = domain_problem(exc)
    return idempotency.StoredResponse(
        response.status_code, {"content-type": MEDIA_TYPE}, bytes(response.body)
    )


class MutationScope:
    """The unit-of-work dependency of a mutating endpoint needing ``scope``."""

    def __init__(self, scope: str) -> None:
        self.require = RequireScope(scope)

    async def __call__(
        self,
        request: Request,
        state: StateDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Makes a retried POST safe: 1-255 characters, kept 24 h.",
            ),
        ] = None,
    ) -> AsyncIterator[Mutation]:
        principal = await self.require(request, state, credentials)
        key = idempotency.validate_key(idempotency_key) if request.method == "POST" else None
        print_ = (
            idempotency.fingerprint(request.method, request.url.path, await request.body())
            if key is not None
            else b""
        )
        actor = Actor(
            key_id=principal.key_id,
            key_name=principal.name,
            request_id=getattr(request.state, "request_id", None),
        )
        async with state.db.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            uow = UnitOfWork(
                conn,
                actor,
                job_max_tries=state.settings.job_max_tries,
                webhooks_enabled=state.settings.webhook_url is not None,
            )
            stored = None
            if key is not None:
                try:
                    stored = await idempotency.claim(conn, principal.key_id, key, print_)
                except BaseException:
                    await transaction.rollback()
                    raise
            if stored is not None:
                await transaction.rollback()
                raise ReplayStored(stored)
            # With a key, the work runs inside a savepoint: a domain error rolls back to it
            # and its answer is stored under the key while the transaction, and so the
            # key's lock, is still held — no same-key request can slip in between.
            work = conn.transaction() if key is not None else None
            try:
                if work is not None:
                    await work.start()
                yield Mutation(uow, principal, key, print_)
                if work is not None:
                    await work.commit()
            except DomainError as exc:
                if key is None or exc.status >= 500 or work is None:
                    await transaction.rollback()
                    raise
                try:
                    await work.rollback()
                    uow.new_jobs.clear()
                    await idempotency.store(
                        conn, principal.key_id, key, print_, _stored_problem(exc)
                    )
                    await transaction.commit()
                except BaseException:
                    await transaction.rollback()
                    raise
                raise
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
        for job in uow.new_jobs:
            metrics.JOBS_ENQUEUED.labels(job.kind).inc()
        if uow.new_jobs:
            handed = await state.queue.dispatch(uow.new_jobs)
            if handed:
                try:
                    async with state.db.pool.acquire() as conn:
                        await mark_enqueued(conn, handed)
                except Exception as exc:  # the relay re-sends; ARQ drops duplicates by id
                    log.warning("could not mark jobs enqueued: %s", exc)


def mutates(scope: str) -> Any:
    """Dependency marker for ``Annotated[Mutation, mutates(scope)]``. Its exit code (commit,
    then dispatch) runs before the response is sent."""
    return params.Security(dependency=MutationScope(scope), scopes=[scope], scope="function")
