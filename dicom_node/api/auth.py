"""Token authentication of the admin API and dashboard.

A caller presents its token as ``Authorization: Bearer <token>`` (API clients)
or in the ``llnm_token`` cookie the dashboard's login page sets. The node keeps
only each token's SHA-256 (settings ``api.tokens``) and compares in constant
time; the token's name is who the audit trail says acted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dicom_node.settings import ApiToken

COOKIE = "llnm_token"


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


def presented_token(request: Request) -> str | None:
    """The bearer token of the request, else its dashboard cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


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
    caller = identify(presented_token(request), request.app.state.settings.api.tokens)
    if caller is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid API token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller
