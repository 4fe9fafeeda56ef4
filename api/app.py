"""The aiohttp application: middlewares and the route table; handlers live in route modules."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from api import (
    account_routes,
    bulk_export,
    clinician_routes,
    consent_routes,
    day_routes,
    device_routes,
    fhir_routes,
    headers,
    household_routes,
    openapi,
    operator_routes,
    vitals_routes,
)
from api.limits import SignInGuard, TokenBucket, rate_limit_middleware
from api.metrics import ApiMetrics, metrics_middleware
from api.problems import problem_middleware, problem_response
from api.requests import DEPS, ApiDeps, unstorable
from api.tokens import TokenError
from devices.revocation import Revoker
from storage.sessions import Sessions

MAX_BODY_BYTES = 64 * 1024  # no API body is larger; bigger ones get 413

ROUTE_MODULES = (account_routes, vitals_routes, consent_routes, day_routes, clinician_routes,
                 fhir_routes, device_routes, household_routes, bulk_export, operator_routes)


def create_app(deps: ApiDeps, *, revoker: Revoker | None = None,
               cors_origins: tuple[str, ...] = (),
               metrics: ApiMetrics | None = None) -> web.Application:
    """The application; CORS answers only ``cors_origins`` (exact origins; none: off);
    ``metrics`` counts every request and its latency by route template and status.
    ``revoker`` publishes the CRL and ends live sessions when a device
    is unpaired; without one (a process with no CA), unpairing still revokes the device in
    the registry, so the bridge refuses its data, and the CRL waits for the next
    publication."""
    app = web.Application(
        middlewares=[*([metrics_middleware(metrics)] if metrics is not None else []),
                     problem_middleware,
                     rate_limit_middleware(TokenBucket(deps.limits.requests_per_second,
                                                       deps.limits.request_burst)),
                     storable_text_middleware, known_query_middleware,
                     live_session_middleware],
        client_max_size=MAX_BODY_BYTES)
    app[DEPS] = deps
    headers.install(app, cors_origins)
    app[account_routes.GUARD] = SignInGuard(deps.limits)
    app[device_routes.REVOKER] = revoker or Revoker(deps.registry)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    for module in ROUTE_MODULES:
        module.register(app)
    openapi.register(app)
    return app


HEALTH_TIMEOUT_S = 2.0  # a probe that waits longer than this is as good as down


async def healthz(request: web.Request) -> web.Response:
    """Ready when the database answers: without it no route can do its job."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await request.app[DEPS].pool.fetchval("SELECT 1")
    # InternalClientError: what asyncpg raises on a pooled connection the server dropped.
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, TimeoutError):
        return web.json_response({"status": "degraded", "database": "unreachable"},
                                 status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEPS].tokens.jwks())


@web.middleware
async def storable_text_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """A path or query holding a NUL character or an unpaired surrogate (text no handler
    could store or look up) is refused here, once for every route: 400."""
    if unstorable(request.path) or any(unstorable(k) or unstorable(v)
                                       for k, v in request.query.items()):
        detail = "the path or query holds a NUL character or an unpaired surrogate"
        if request.path.startswith("/fhir/"):
            return fhir_routes.outcome(400, detail)
        return problem_response(400, detail)
    return await handler(request)


@web.middleware
async def known_query_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """A query parameter the OpenAPI document does not list for the operation is refused
    (400), as unknown body fields are (422): a misspelt ``form=`` is not silently ignored.
    Under /fhir, R4's rule instead: unknown parameters are ignored unless the client sends
    ``Prefer: handling=strict``."""
    route = request.match_info.route
    resource = route.resource
    lenient = request.path.startswith("/fhir/") and "handling=strict" not in "".join(
        request.headers.getall("Prefer", [])).replace(" ", "").lower()
    if request.query and resource is not None and not lenient:
        known = openapi.query_parameters(resource.canonical, request.method)
        unknown = sorted(set(request.query) - known) if known is not None else []
        if unknown:
            detail = f"unknown query parameters: {', '.join(unknown)}"
            if request.path.startswith("/fhir/"):
                return fhir_routes.outcome(400, detail)
            return problem_response(400, detail)
    return await handler(request)


@web.middleware
async def live_session_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """An access token whose session ended (logout, a reused refresh token) is refused at
    once, not when it expires: one indexed lookup per authenticated request."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        deps = request.app[DEPS]
        try:
            claims = deps.tokens.verify(token)
        except TokenError:
            claims = None  # the handler answers 401 with its own words
        if claims is not None and claims.session_id is not None:
            try:
                session = uuid.UUID(claims.session_id)
            except ValueError:
                return problem_response(401, "the token is not valid")
            if not await Sessions(deps.pool).is_active(session):
                return problem_response(401, "this session has ended; sign in again")
    return await handler(request)
