"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise to answer with a problem document; ``title`` is fixed per ``status``."""

    def __init__(self, status: int, detail: str, *, kind: str = "about:blank",
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.extra = status, detail, kind, extra or {}


def problem_response(status: int, detail: str, *, kind: str = "about:blank",
                     extra: dict[str, Any] | None = None,
                     headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": kind, "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **(extra or {})}
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_TYPE,
                        headers=headers)


@web.middleware
async def problem_middleware(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                             ) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(exc.status, exc.detail, kind=exc.kind, extra=exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = ("allow", "www-authenticate", "retry-after")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in keep}
        return problem_response(exc.status, exc.reason, headers=headers)
    except Exception:
        # Never a traceback or internal detail to the client; the log has the request id.
        log.exception("unhandled error", extra={"path": request.path})
        return problem_response(500, "internal error")
