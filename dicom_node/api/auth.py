"""Token authentication of the admin API and dashboard.

An API client presents its token as ``Authorization: Bearer <token>``. The
dashboard's login page checks a token once and opens a server-side session: its
cookie ``llnm_session`` holds a random session id, never the token; the session
ends after ``api.session_minutes`` or at logout. The node keeps only each
token's SHA-256 (settings ``api.tokens``) and compares in constant time; the
token's name is who the audit trail says acted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dicom_node.settings import ApiToken

COOKIE = "llnm_session"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    name: str


def token_digest(token: str) -> str:
    """The SHA-256 hex digest settings keep of ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def identify(token: str | None, tokens: list[ApiToken]) -> Caller | None:
    """The caller ``token`` belongs to, or None."""
    if not token:
        return None
    digest = token_digest(token)
    found = None
    for known in tokens:  # no early exit: the time does not tell which entry matched
        if hmac.compare_digest(digest, known.sha256):
            found = Caller(known.name)
    return found


class Sessions:
    """Dashboard sessions in the API's memory: id -> caller and expiry (thread-safe)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self._open: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def open(self, caller: Caller) -> str:
        """A new session of ``caller``; its id."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._open[session_id] = (caller, time.monotonic() + self.seconds)
        return session_id

    def caller(self, session_id: str | None) -> Caller | None:
        """Who session ``session_id`` belongs to, if it is open and has not expired."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, (_, ends) in self._open.items() if ends <= now]:
                del self._open[stale]
            found = self._open.get(session_id)
        return None if found is None else found[0]

    def close(self, session_id: str | None) -> None:
        """End session ``session_id`` (logout)."""
        with self._lock:
            self._open.pop(session_id or "", None)


def bearer_token(request: Request) -> str | None:
    """The request's ``Authorization: Bearer`` token, if any."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def presented_caller(request: Request) -> Caller | None:
    """The caller of a bearer token, else of the dashboard session cookie, else None."""
    token = bearer_token(request)
    if token is not None:
        return identify(token, request.app.state.settings.api.tokens)
    sessions: Sessions = request.app.state.sessions
    return sessions.caller(request.cookies.get(COOKIE))


# Declares the bearer scheme in the OpenAPI schema; the cookie stays the dashboard's.
_BEARER = HTTPBearer(auto_error=False, description="An API token (`llnm-node api-token NAME`).")


def require_caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Caller:
    """FastAPI dependency: the authenticated caller.

    Raises
    ------
    HTTPException
        401 when no valid token was presented.
    """
    caller = presented_caller(request)
    if caller is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid API token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller
