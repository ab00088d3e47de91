"""Dependencies as ``Annotated`` aliases: settings, a read connection, the caller and its
scope, and the unit of work every mutation runs in."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from api.problems import MEDIA_TYPE, domain_problem
from shared import idempotency, metrics
from shared.auth.keys import KeyMaterial, parse_token
from shared.auth.service import Principal, authenticate
from shared.db.connection import Connection
from shared.db.database import Database
from shared.db.unit_of_work import Actor, NewJob, UnitOfWork
from shared.errors import DomainError, Forbidden, Unauthenticated
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


async def read_connection(state: StateDep) -> AsyncIterator[Connection]:
    """A pooled connection for the request's reads (autocommit; each statement sees a
    consistent snapshot)."""
    async with state.db.acquire() as conn:
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
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        conn: ConnDep,
    ) -> Principal:
        # ``conn`` is the request's own connection (FastAPI caches ConnDep per request): a
        # second checkout while holding the first deadlocks once every connection is held by
        # a request waiting for its second.
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
        principal = await authenticate(conn, credentials.credentials)
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


_MUTATION = "stockroom.mutation"


class MutationDependency:
    """What ``mutates(scope)`` puts in an endpoint's signature: the ``Mutation`` that
    ``MutationRoute`` opened for the request. It carries the route's scope and options."""

    def __init__(self, scope: str, *, atomic: bool, at_once: idempotency.AtOnce | None) -> None:
        self.scope = scope
        self.atomic = atomic
        self.at_once = at_once

    async def __call__(self, request: Request) -> Mutation:
        try:
            mutation: Mutation = request.scope[_MUTATION]
        except KeyError:
            raise RuntimeError(
                "a mutating endpoint must be on an APIRouter(route_class=MutationRoute)"
            ) from None
        return mutation


def mutates(scope: str, *, atomic: bool = False, at_once: idempotency.AtOnce | None = None) -> Any:
    """Marker for ``Annotated[Mutation, mutates(scope)]`` on an endpoint of a router with
    ``route_class=MutationRoute``, which runs the endpoint as a unit of work (see there).
    ``atomic``: the endpoint's service raises domain errors only before it has written
    anything, so the work needs no savepoint (a round trip each way). ``at_once``: the same
    mutation as one statement, tried first for a valid JSON body (``idempotency.at_once``);
    the endpoint runs only when that wrote nothing."""
    return Depends(MutationDependency(scope, atomic=atomic, at_once=at_once))


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


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
    """A route whose endpoint asks for ``mutates(scope)`` runs as one unit of work, with no
    dependency machinery on the hot path:

    one connection, one transaction; its first statement authenticates the caller (401, 403
    — before the body is validated) and claims the Idempotency-Key (``idempotency.
    open_mutation``: a stored answer is replayed at once); the body is validated and the
    endpoint runs (see ``_direct_endpoint``); its response is stored under the key; commit;
    then the outbox's jobs are dispatched. With a key, a domain error is stored while the
    key's lock is still held: the work runs in a savepoint that the error rolls back (unless
    ``atomic``). With ``mutates(..., at_once=...)``, a valid JSON body is first tried as that
    one statement (``idempotency.at_once``), and all of the above runs only when it wrote
    nothing; ``api.lanes`` serves that statement before the framework's stack, and hands the
    request here (marked ``AT_ONCE_TRIED``) when it wrote nothing. Other endpoints of the
    router are served as usual."""

    def _mutation_dependency(self) -> MutationDependency | None:
        found = [
            d.call for d in self.dependant.dependencies if isinstance(d.call, MutationDependency)
        ]
        return found[0] if found else None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        spec = self._mutation_dependency()
        if spec is None:
            return inner
        self.openapi_extra = {
            **(self.openapi_extra or {}),
            **_mutation_openapi(spec.scope, self.methods or set()),
        }
        validate = self._body_validator()
        endpoint = inner if validate is None else self._direct_endpoint(inner, validate)
        at_once = self.at_once_runner()

        async def handle(request: Request) -> Response:
            return await _run_mutation(request, spec, endpoint, at_once)

        return handle

    def at_once_runner(self) -> AtOnceRunner | None:
        """What runs the route's ``mutates(..., at_once=...)`` statement, if it has one; also
        served before the framework's stack by ``api.lanes``."""
        spec = self._mutation_dependency()
        if spec is None or spec.at_once is None:
            return None
        validate = self._body_validator()
        if validate is None:
            raise TypeError(f"{self.name}: at_once needs an endpoint taking only a JSON body")
        if spec.at_once.scope != spec.scope:
            raise TypeError(f"{self.name}: at_once is for {spec.at_once.scope}")
        return AtOnceRunner(spec.at_once, validate)

    def _body_validator(self) -> BodyValidator | None:
        """For an endpoint taking only a JSON body and the mutation (restock and the like):
        the body parsed and validated as FastAPI does (its own field, so the same rules), or
        ``INVALID`` for anything FastAPI must answer itself (no body, another content type,
        invalid JSON, validation errors). ``None`` for other endpoints."""
        dependant = self.dependant
        field = self.body_field
        if (
            field is None
            or len(dependant.body_params) != 1
            or len(dependant.dependencies) != 1
            or dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or self._embed_body_fields
        ):
            return None

        def validate(raw: bytes, content_type: str) -> Any:
            if raw and _is_json(content_type):
                try:
                    value, errors = field.validate(json.loads(raw), {}, loc=("body",))
                except Exception:  # invalid JSON, nesting too deep...: FastAPI's answer
                    return INVALID
                if not errors:
                    return value
            return INVALID

        return validate

    def _direct_endpoint(
        self, inner: Callable[[Request], Coroutine[Any, Any, Response]], validate: BodyValidator
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Call the endpoint directly with the validated body — FastAPI's per-request handler
        machinery measured ~8 % of a restock — or through FastAPI's handler, which answers
        an invalid body exactly as it always does."""
        dependant = self.dependant
        call = dependant.call
        body_name = dependant.body_params[0].name
        mutation_name = dependant.dependencies[0].name
        assert call is not None and mutation_name is not None

        async def direct(request: Request) -> Response:
            value = validate(await request.body(), request.headers.get("content-type", ""))
            if value is INVALID:
                return await inner(request)
            response = await call(**{body_name: value, mutation_name: request.scope[_MUTATION]})
            if not isinstance(response, Response):
                raise TypeError(f"{call.__name__} must return a Response (m.respond)")
            return response

        return direct


INVALID: Any = object()
"""What a ``BodyValidator`` returns for a body that FastAPI's own handler must answer."""
BodyValidator = Callable[[bytes, str], Any]


@dataclass(frozen=True, slots=True)
class AtOnceRunner:
    """Runs a route's ``at_once`` statement and dispatches its outbox job: the mutation's
    answer, or ``None`` when it wrote nothing and the general way must run."""

    mutation: idempotency.AtOnce
    validate: BodyValidator

    async def __call__(
        self,
        state: AppState,
        content_type: str,
        request_id: str | None,
        material: KeyMaterial,
        key: str | None,
        print_: bytes,
        raw: bytes,
    ) -> idempotency.Done | None:
        value = self.validate(raw, content_type)
        if value is INVALID:
            return None
        params = self.mutation.params(value, request_id, state.settings.job_max_tries)
        # on the first connection free, committed with the others queued there meanwhile
        # (``Database.fetchrow``'s group commit), in the order they lock rows in
        fetchrow = functools.partial(state.db.fetchrow, order=self.mutation.order(value))
        done = await idempotency.run_at_once(fetchrow, self.mutation, params, material, key, print_)
        if done is not None and done.job_id is not None and self.mutation.job_kind is not None:
            await _dispatch(state, [NewJob(id=done.job_id, kind=self.mutation.job_kind)])
        return done

    def response(self, done: idempotency.Done) -> Response:
        """The answer of a mutation run at once, whichever way the request came."""
        return Response(
            done.body, status_code=self.mutation.status_code, media_type="application/json"
        )


AT_ONCE_TRIED = "stockroom.at_once_tried"
"""Set in the request's scope by ``api.lanes`` when it ran the route's ``at_once`` statement
and that wrote nothing: the general way then runs without trying it again."""


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _run_mutation(
    request: Request,
    spec: MutationDependency,
    endpoint: Callable[[Request], Coroutine[Any, Any, Response]],
    at_once: AtOnceRunner | None,
) -> Response:
    state: AppState = request.app.state.stockroom
    headers = request.headers
    token = bearer_token(headers.get("authorization"))
    material = parse_token(token) if token else None
    if material is None:  # before taking a connection
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    # The whole body before a connection is taken: a client trickling its upload must not
    # hold a pooled connection in an open transaction (Starlette keeps it for the endpoint).
    try:
        raw = await request.body()
    except HTTPException:
        raise
    except Exception as exc:  # the client went away mid-body, as FastAPI answers it
        raise HTTPException(400, "There was an error parsing the body") from exc
    key = headers.get("idempotency-key") if request.method == "POST" else None
    print_ = idempotency.fingerprint(request.method, request.url.path, raw) if key else b""
    if at_once is not None and not request.scope.get(AT_ONCE_TRIED):
        done = await at_once(
            state,
            headers.get("content-type", ""),
            getattr(request.state, "request_id", None),
            material,
            key,
            print_,
            raw,
        )
        if done is not None:
            request.state.principal = done.principal
            return at_once.response(done)
    try:
        response, uow = await _unit_of_work(request, state, spec, endpoint, material, key, print_)
    except idempotency.KeyStoredMeanwhile:
        # Another request with this key committed after our lookup's snapshot was taken but
        # before we took the key's lock: our work was rolled back. Its answer is visible now.
        response, uow = await _unit_of_work(request, state, spec, endpoint, material, key, print_)
    if uow is not None and uow.new_jobs:
        await _dispatch(state, uow.new_jobs)
    return response


async def _unit_of_work(
    request: Request,
    state: AppState,
    spec: MutationDependency,
    endpoint: Callable[[Request], Coroutine[Any, Any, Response]],
    material: KeyMaterial,
    key: str | None,
    print_: bytes,
) -> tuple[Response, UnitOfWork | None]:
    async with state.db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            opened = await idempotency.open_mutation(conn, material, spec.scope, key, print_)
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
        request.scope[_MUTATION] = Mutation(uow, principal, key, print_)
        work = conn.transaction() if key is not None and not spec.atomic else None
        try:
            if work is not None:
                await work.start()
            response = await endpoint(request)
            if work is not None:
                await work.commit()
        except idempotency.KeyStoredMeanwhile:
            await transaction.rollback()
            raise
        except DomainError as exc:
            if key is None or exc.status >= 500 or exc.status == 429:  # 429: not an answer
                await transaction.rollback()
                raise
            try:
                if work is not None:
                    await work.rollback()
                uow.new_jobs.clear()
                await idempotency.store(conn, principal.key_id, key, print_, _stored_problem(exc))
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


async def _dispatch(state: AppState, jobs: list[NewJob]) -> None:
    for job in jobs:
        metrics.JOBS_ENQUEUED.labels(job.kind).inc()
    await state.queue.dispatch(jobs)
