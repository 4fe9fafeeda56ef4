"""Headers on every answer, CORS, and problem documents for what the HTTP parser refuses.

- HSTS (two years) and ``X-Content-Type-Options: nosniff`` on every answer; a ``Server``
  header that names no software version.
- ``Cache-Control: no-store`` unless a handler chose otherwise: answers carry tokens or
  health data, and a shared cache or a browser's disk must keep neither.
- CORS is off unless origins are configured; then only those exact origins (scheme, host,
  port: no wildcard, no suffix match) are answered, without credentials (the API uses
  bearer tokens, not cookies).
- A request the HTTP parser refuses (an over-long header line, say) never reaches the
  application; :class:`ApiRunner` makes those answers problem documents with the same
  headers instead of aiohttp's ``text/plain``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from api.problems import problem_response

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Server": "healthiot",
}
NO_STORE = "no-store"
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600  # how long a browser may keep a preflight answer
_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_origins(setting: str) -> tuple[str, ...]:
    """The exact origins of a comma-separated setting; ValueError for anything that is not
    ``scheme://host[:port]`` (a wildcard, a path, ``null``)."""
    origins = tuple(o.strip() for o in setting.split(",") if o.strip())
    wrong = [o for o in origins if not _ORIGIN.match(o)]
    if wrong:
        raise ValueError(f"CORS origins are scheme://host[:port], exactly: {wrong}")
    return origins


def install(app: web.Application, origins: tuple[str, ...] = ()) -> None:
    """Add the headers to every answer of ``app`` and answer CORS for ``origins``."""
    allowed = frozenset(origins)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", NO_STORE)
        origin = request.headers.get("Origin")
        if allowed:
            response.headers.add("Vary", "Origin")
            if origin in allowed:
                response.headers["Access-Control-Allow-Origin"] = origin

    app.on_response_prepare.append(on_prepare)
    if allowed:
        app.middlewares.append(_preflight(allowed))


def _preflight(allowed: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
                and request.headers.get("Origin") in allowed):
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})
        return await handler(request)
    return middleware


class _ProblemRequestHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status >= 500:
            super().handle_error(request, status, exc, message)  # logs; raises if sent
        elif request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("a response was sent already")
        else:  # a client's malformed request is no error of ours
            log.debug("refused by the HTTP parser: %s", exc)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        detail = "internal error" if status >= 500 else f"the request was refused: {phrase}"
        response = problem_response(status, detail, headers={**SECURITY_HEADERS,
                                                             "Cache-Control": NO_STORE})
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer the HTTP parser's refusals as problems."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        options: dict[str, Any] = dict(server._kwargs)
        return _ProblemServer(server.request_handler, request_factory=server.request_factory,
                              handler_cancellation=server.handler_cancellation,
                              loop=server._loop, **options)
