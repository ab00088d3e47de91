"""Mutations: every mutating request runs as one unit of work (``MutationRoute``), with its
Idempotency-Key handling; one whose happy path is a single statement tries that first."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from api.auth import presented_key
from api.problems import MEDIA_TYPE, domain_problem
from api.state import AppState, app_state
from shared import idempotency, metrics
from shared.auth.keys import KeyToken
from shared.auth.service import Principal
from shared.db.unit_of_work import Actor, NewJob, UnitOfWork
from shared.errors import DomainError, RequestTimeout

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def replay_response(stored: idempotency.StoredResponse) -> Response:
    headers = dict(stored.headers)
    headers["Idempotent-Replayed"] = "true"
    media = headers.pop("content-type", "application/json")
    return Response(stored.body, status_code=stored.status_code, headers=headers, media_type=media)


@dataclass(slots=True)
class Mutation:
    """The unit of work of one mutating request, with its Idempotency-Key handling.

    Endpoints build their answer with ``respond`` (a model) or ``respond_json`` (JSON the
    service rendered): the response is stored with the key inside the transaction, then the
    transaction commits, then the outbox's jobs are dispatched."""

    uow: UnitOfWork
    principal: Principal
    idempotency_key: str | None
    request_digest: bytes

    async def respond(
        self,
        status_code: int,
        body: BaseModel | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        content = body.model_dump_json().encode() if body is not None else None
        return await self.respond_json(status_code, content, headers)

    async def respond_json(
        self, status_code: int, content: bytes | None, headers: dict[str, str] | None = None
    ) -> Response:
        stored_headers = dict(headers or {})
        if content is not None:
            stored_headers["content-type"] = "application/json"
        body = content or b""
        stored = idempotency.StoredResponse(status_code, stored_headers, body)
        if self.idempotency_key is not None:
            await idempotency.store(
                self.uow.conn,
                self.principal.key_id,
                self.idempotency_key,
                self.request_digest,
                stored,
            )
        media = stored_headers.pop("content-type", None)
        return Response(body, status_code=status_code, headers=stored_headers, media_type=media)


def _stored_problem(exc: DomainError) -> idempotency.StoredResponse:
    """A domain error as stored under its key, so that a retry replays it (as Stripe does)
    rather than running the request again later against different state."""
    response = domain_problem(exc)
    return idempotency.StoredResponse(
        response.status_code, {"content-type": MEDIA_TYPE}, bytes(response.body)
    )


_MUTATION = "stockroom.mutation"


class MutationDependency:
    """What ``mutates(scope)`` puts in an endpoint's signature: the ``Mutation`` that
    ``MutationRoute`` opened for the request. It carries the route's scope and options."""

    def __init__(
        self, scope: str, *, atomic: bool, one_statement: idempotency.OneStatementMutation | None
    ) -> None:
        self.scope = scope
        self.atomic = atomic
        self.one_statement = one_statement

    async def __call__(self, request: Request) -> Mutation:
        try:
            mutation: Mutation = request.scope[_MUTATION]
        except KeyError:
            raise RuntimeError(
                "a mutating endpoint must be on an APIRouter(route_class=MutationRoute)"
            ) from None
        return mutation


def mutates(
    scope: str,
    *,
    atomic: bool = False,
    one_statement: idempotency.OneStatementMutation | None = None,
) -> Any:
    """Marker for ``Annotated[Mutation, mutates(scope)]`` on an endpoint of a router with
    ``route_class=MutationRoute``, which runs the endpoint as a unit of work (see there).
    ``atomic``: the endpoint's service raises domain errors only before it has written
    anything, so the work needs no savepoint (a round trip each way). ``one_statement``: the
    same mutation as one statement, tried first for a valid JSON body; the endpoint runs only
    when that wrote nothing."""
    return Depends(MutationDependency(scope, atomic=atomic, one_statement=one_statement))


def _mutation_dependency(endpoint: Callable[..., Any]) -> MutationDependency | None:
    """The ``mutates(...)`` an endpoint's signature asks for, if any."""
    for hint in get_type_hints(endpoint, include_extras=True).values():
        if get_origin(hint) is Annotated:
            for marker in get_args(hint)[1:]:
                dependency = getattr(marker, "dependency", None)
                if isinstance(dependency, MutationDependency):
                    return dependency
    return None


def _check_one_statement(endpoint: Callable[..., Any], spec: MutationDependency) -> None:
    """A one-statement mutation stands for its endpoint: same scope, same body model."""
    one = spec.one_statement
    if one is None:
        return
    if one.scope != spec.scope:
        raise TypeError(f"{endpoint.__name__}: its one statement is for {one.scope}")
    hints = get_type_hints(endpoint)
    bodies = [name for name in inspect.signature(endpoint).parameters if hints[name] is one.body]
    if len(bodies) != 1:
        raise TypeError(f"{endpoint.__name__}: its one statement takes a {one.body.__name__}")


def _mutation_openapi(scope: str, methods: set[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {"security": [{"HTTPBearer": [scope]}]}
    if "POST" in methods:  # the only method that takes a key (SPEC)
        extra["parameters"] = [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes a retried POST safe: 1-255 characters, kept 24 h.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ]
    return extra


class MutationRoute(APIRoute):
    """A route whose endpoint asks for ``mutates(scope)`` runs as one unit of work:

    the key's form is checked (401) before the body is read; the whole body is read before a
    connection is taken; with ``mutates(..., one_statement=...)`` a valid JSON body is tried
    as that one statement (``idempotency.run_one_statement``), and what follows runs only when
    it wrote nothing. One connection, one transaction; its first statement authenticates the
    caller (401, 403 — before the body is validated) and claims the Idempotency-Key
    (``idempotency.open_mutation``: a stored answer is replayed at once); FastAPI validates
    the body and runs the endpoint; its response is stored under the key; commit; then the
    outbox's jobs are dispatched. With a key, a domain error is stored while the key's lock is
    still held: the work runs in a savepoint that the error rolls back (unless ``atomic``).
    Other endpoints of the router are served as usual."""

    def get_route_handler(self) -> Endpoint:
        inner = super().get_route_handler()
        spec = _mutation_dependency(self.endpoint)
        if spec is None:
            return inner
        _check_one_statement(self.endpoint, spec)
        self.openapi_extra = {
            **(self.openapi_extra or {}),
            **_mutation_openapi(spec.scope, self.methods or set()),
        }

        async def handle(request: Request) -> Response:
            return await _run_mutation(request, spec, inner)

        return handle


async def _read_body(request: Request, within_seconds: float) -> bytes:
    """The whole body, within ``within_seconds`` (408), before a connection is taken: a
    client trickling its upload must not hold a pooled connection in an open transaction
    (Starlette keeps it for the endpoint), nor the process's memory for ever."""
    try:
        async with asyncio.timeout(within_seconds):
            return await request.body()
    except HTTPException:
        raise
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {within_seconds:g} s") from None
    except Exception as exc:  # the client went away mid-body, as FastAPI answers it
        raise HTTPException(400, "There was an error parsing the body") from exc


async def _run_mutation(request: Request, spec: MutationDependency, endpoint: Endpoint) -> Response:
    state = app_state(request)
    key_token = presented_key(request)  # 401 before the body is read: a well-formed key,
    await state.live_keys.check(state.db, key_token)  # and a live one
    body = idempotency.RequestBody(await _read_body(request, state.settings.api_body_read_timeout))
    key = request.headers.get("idempotency-key") if request.method == "POST" else None
    digest = idempotency.fingerprint(request.method, _target(request), body) if key else b""
    if spec.one_statement is not None:
        response = await _try_one_statement(
            request, state, spec.one_statement, key_token, key, digest, body
        )
        if response is not None:
            return response
    opened = _Presented(key_token, key, digest)
    try:
        response, uow = await _unit_of_work(request, state, spec, endpoint, opened)
    except idempotency.KeyStoredMeanwhile:
        # Another request with this key committed after our lookup's snapshot was taken but
        # before we took the key's lock: our work was rolled back. Its answer is visible now.
        response, uow = await _unit_of_work(request, state, spec, endpoint, opened)
    if uow is not None and uow.new_jobs:
        await dispatch_new_jobs(state, uow.new_jobs)
    return response


def _target(request: Request) -> str:
    """The path, and the query string when there is one (``?mode=per_line`` makes another
    request); a path alone stays as it was fingerprinted before queries counted."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    path: str = request.scope["path"]
    return f"{path}?{query}" if query else path


def _json_body(
    body: idempotency.RequestBody, content_type: str, model: type[BaseModel]
) -> BaseModel | None:
    """``body`` as ``model``, validated as FastAPI validates a JSON body; ``None`` for anything
    FastAPI must answer itself (no body, another content type, invalid JSON or values)."""
    media = content_type.partition(";")[0].strip().lower()
    is_json = media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
    if not body.raw or not is_json:
        return None
    value = body.json()
    if value is idempotency.NOT_JSON:
        return None
    try:
        return model.model_validate(value)
    except (ValueError, RecursionError, ValidationError):  # FastAPI's answer, then
        return None


async def _try_one_statement(
    request: Request,
    state: AppState,
    mutation: idempotency.OneStatementMutation,
    key_token: KeyToken,
    key: str | None,
    digest: bytes,
    request_body: idempotency.RequestBody,
) -> Response | None:
    """The request as ``mutation``'s one statement, committed with others queued meanwhile
    (its ``GroupCommitter``): the answer, or ``None`` when it wrote nothing."""
    body = _json_body(request_body, request.headers.get("content-type", ""), mutation.body)
    if body is None:
        return None
    committed = await idempotency.run_one_statement(
        state.group_committer(mutation.sql),
        mutation,
        body,
        getattr(request.state, "request_id", None),
        state.settings.job_max_tries,
        key_token,
        key,
        digest,
    )
    if committed is None:
        return None
    request.state.principal = committed.principal
    if committed.job_id is not None and mutation.job_kind is not None:
        await dispatch_new_jobs(state, [NewJob(id=committed.job_id, kind=mutation.job_kind)])
    return Response(committed.body, status_code=mutation.status_code, media_type="application/json")


@dataclass(frozen=True, slots=True)
class _Presented:
    """What a mutating request presents: its API key, Idempotency-Key and digest."""

    key_token: KeyToken
    key: str | None
    digest: bytes


async def _unit_of_work(
    request: Request,
    state: AppState,
    spec: MutationDependency,
    endpoint: Endpoint,
    presented: _Presented,
) -> tuple[Response, UnitOfWork | None]:
    key, digest = presented.key, presented.digest
    async with state.db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            opened = await idempotency.open_mutation(
                conn, presented.key_token, spec.scope, key, digest
            )
        except BaseException:
            await transaction.rollback()
            raise
        principal = opened.principal
        request.state.principal = principal
        if opened.replay is not None:
            await transaction.rollback()
            return replay_response(opened.replay), None
        uow = UnitOfWork(
            conn,
            Actor(
                key_id=principal.key_id,
                key_name=principal.name,
                request_id=getattr(request.state, "request_id", None),
            ),
            job_max_tries=state.settings.job_max_tries,
            webhooks_enabled=state.settings.webhook_url is not None,
        )
        request.scope[_MUTATION] = Mutation(uow, principal, key, digest)
        savepoint = conn.transaction() if key is not None and not spec.atomic else None
        try:
            if savepoint is not None:
                await savepoint.start()
            response = await endpoint(request)
            if savepoint is not None:
                await savepoint.commit()
        except idempotency.KeyStoredMeanwhile:
            await transaction.rollback()
            raise
        except DomainError as exc:
            if key is None or exc.status >= 500 or exc.status == 429:  # 429: not an answer
                await transaction.rollback()
                raise
            try:
                if savepoint is not None:
                    await savepoint.rollback()
                uow.new_jobs.clear()
                await idempotency.store(conn, principal.key_id, key, digest, _stored_problem(exc))
                await transaction.commit()
            except BaseException:
                await transaction.rollback()
                raise
            raise
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    return response, uow


async def dispatch_new_jobs(state: AppState, jobs: list[NewJob]) -> None:
    """Hand the jobs a committed unit of work wrote to the queue (best effort: the relay
    re-sends what does not arrive)."""
    for job in jobs:
        metrics.JOBS_ENQUEUED.labels(job.kind).inc()
    await state.queue.dispatch(jobs)
