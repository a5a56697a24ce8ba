"""The browser's way in, and the page at /app: the refresh token in a cookie no script can read.

This is RFC 10017's token-mediating backend, on the app's own origin. A browser must not use the password grant
nor keep tokens in web storage (RFC 9700 §2.4, RFC 10017), so the page logs in with JSON here. The refresh token
goes into an HttpOnly `__Host-` cookie that only these three routes read, and the short-lived access token into
the page's memory, sent as a Bearer token like any client's. /auth/token, /auth/revoke and the Bearer routes never
set nor read a cookie.

A cookie is sent by the browser whoever asks, so these routes refuse every request that another site makes:
Fetch Metadata (`Sec-Fetch-Site`) and `Origin` must name this origin when the browser sends them, and a body
must be JSON, which no HTML form can send (login CSRF). Curl and test clients send neither header, and pass.
"""

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Cookie, Depends, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

import auth
import sessions
from config import settings

REFRESH_COOKIE = "__Host-refresh"  # __Host-: the browser keeps it only if Secure, Path=/ and no Domain
PAGE = Path(__file__).with_name("static")  # beside this module in the project folder and in an install alike
CROSS_SITE = "Cross-site request refused: this route answers only the app's own pages"

# The page runs only its own files: no inline script, nothing from another host, never inside a frame.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def own_origin(request: Request) -> str:
    """PUBLIC_ORIGIN, or the request's scheme (after uvicorn's --proxy-headers) and its Host header."""
    return settings.public_origin or f"{request.url.scheme}://{request.headers.get('host', '')}"


def same_origin(request: Request) -> None:
    """Go's CrossOriginProtection, in short: a browser says where a request comes from, and only this origin
    (or the user, typing an address: `none`) may call these routes. A request that says nothing is no browser's."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, CROSS_SITE)
    if origin is not None and origin.lower() != own_origin(request).lower():
        raise HTTPException(status.HTTP_403_FORBIDDEN, CROSS_SITE)


class BrowserLogin(BaseModel):
    """The password grant's fields, as JSON: whatever sign-up could never have stored gets a wrong password's answer."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(examples=["alice"])
    password: str = Field(examples=["correct horse"])
    scope: str | None = Field(None, description="Space-separated scopes, as with /auth/token; none: all your role's")


class Empty(BaseModel):
    """Refresh and logout take no fields: an empty body, or `{}`."""

    model_config = ConfigDict(extra="forbid")


class BrowserToken(BaseModel):
    """The token answer without the refresh token, which is in the cookie (ASVS 5.0, 3.3.4)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the kind of token, not a secret)
    expires_in: int = Field(description="Seconds until the access token expires: refresh before then")
    scope: str = Field(description="The scopes the access token was granted, space-separated")


def set_refresh_cookie(response: Response, value: str, max_age: int) -> None:
    response.set_cookie(REFRESH_COOKIE, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def with_cookie(token: auth.Token | JSONResponse) -> JSONResponse:
    """The access token in the body, the refresh token in the cookie, for as long as the session lasts; a refusal
    as it is."""
    if isinstance(token, JSONResponse):
        return token
    body = BrowserToken(access_token=token.access_token, expires_in=token.expires_in, scope=token.scope)
    response = JSONResponse(body.model_dump(), headers=auth.NO_STORE)
    set_refresh_cookie(response, token.refresh_token, max(0, round(token.session_ends_at - time.time())))
    return response


RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"model": auth.Detail, "description": "Sent by another site"},
    **auth.BUSY_RESPONSE,
}
router = APIRouter(prefix="/auth/browser", tags=["browser"], dependencies=[Depends(same_origin)], responses=RESPONSES)


@router.post(
    "/login",
    response_model=BrowserToken,
    responses={
        status.HTTP_400_BAD_REQUEST: {"model": auth.OAuthError, "description": "A scope unknown or not allowed"},
        status.HTTP_401_UNAUTHORIZED: {"model": auth.OAuthError, "description": auth.BAD_LOGIN},
        **auth.THROTTLED_RESPONSE,
    },
)
async def log_in(credentials: BrowserLogin, request: Request) -> JSONResponse:
    """The password grant's checks, throttle and answers; on success the refresh token goes into the cookie."""
    requested = auth.requested_scopes(credentials.scope)
    if isinstance(requested, JSONResponse):
        return requested
    form = auth.TokenForm(username=credentials.username, password=credentials.password)
    return with_cookie(await auth.log_in(form, requested, auth.Client.of(request)))


RefreshCookie = Annotated[str | None, Cookie(alias=REFRESH_COOKIE, include_in_schema=False)]


@router.post(
    "/refresh",
    response_model=BrowserToken,
    responses={status.HTTP_401_UNAUTHORIZED: {"model": auth.OAuthError, "description": auth.STALE_REFRESH}},
)
async def refresh(cookie: RefreshCookie = None, body: Empty | None = None) -> JSONResponse:
    """Rotate the cookie exactly as the refresh grant rotates a refresh token, spent-token reuse detection included.
    No cookie, or one that is spent, ended or garbage: 401, and the cookie is cleared."""
    token = await auth.refresh(cookie, []) if cookie else None
    if not isinstance(token, auth.Token):
        refused = auth.oauth_error(status.HTTP_401_UNAUTHORIZED, "invalid_grant", auth.STALE_REFRESH)
        set_refresh_cookie(refused, "", 0)
        return refused
    return with_cookie(token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def log_out(response: Response, cookie: RefreshCookie = None, body: Empty | None = None) -> None:
    """End the cookie's session and clear the cookie; with no cookie, or a spent one, just clear it."""
    if cookie and sessions.session_id_of(cookie):
        await auth.in_login_session(lambda session: sessions.end_by_refresh_token(session, cookie))
    set_refresh_cookie(response, "", 0)


page_router = APIRouter(include_in_schema=False)


@page_router.get("/app")
async def page() -> FileResponse:
    """The page: plain HTML, one stylesheet, one module, all from this app. No token needed to load it."""
    return FileResponse(PAGE / "app.html", headers=PAGE_HEADERS)
