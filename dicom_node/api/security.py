"""HTTP hardening of the admin API and dashboard.

Headers
    Every answer carries a Content Security Policy that allows only the node's
    own scripts, styles and images (the dashboard has no inline code), refuses
    framing (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), and
    ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``.
Cross-site requests
    A state-changing request (POST, PUT, PATCH, DELETE) to a dashboard page, or
    one that carries the dashboard's session cookie, and has no bearer token,
    must come from the node's own pages: its ``Origin`` (else its ``Referer``)
    must name the host the request was sent to. Anything else is refused with
    403 before it reaches a route. Bearer-token clients are not browsers
    carrying ambient credentials and are not checked; a request with neither
    is left to authentication (401).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse

from dicom_node.api.auth import COOKIE, bearer_token

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (else Referer) names the host it was sent to."""
    source = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host")
    if not source or not host or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host.lower()


def install(app: FastAPI) -> None:
    """Add the headers and the cross-site check to every request of ``app``."""

    @app.middleware("http")
    async def harden(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        browser = COOKIE in request.cookies or request.url.path.startswith("/ui/")
        cross_site = (
            request.method in UNSAFE_METHODS
            and browser
            and bearer_token(request) is None
            and not same_origin(request)
        )
        if cross_site:
            response: Response = JSONResponse(
                {"detail": "cross-site request refused"}, status_code=status.HTTP_403_FORBIDDEN
            )
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response
