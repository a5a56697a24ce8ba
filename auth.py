"""Sign up, log in for tokens, refresh them, take them back, and turn an access token into a user."""

import functools
import ipaddress
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import jwt
from anyio import CapacityLimiter
from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import fast_reads
import keys
import sessions
import throttle
from config import settings
from database import in_session
from models import LoginSession, User
from passwords import (
    CORES,
    DUMMY_HASH,
    HAS_USERNAME,
    NewPassword,
    StoredPassword,
    contains_username,
    fold,
    hash_password,
    refuse_if_hashing_is_full,
    verify_password,
)
from roles import ROLE_SCOPE_SETS, ROLE_SCOPES, SCOPES, USER, Role, grant, session_scopes

logger = logging.getLogger(__name__)


# RFC 9068's client_id: the first-party clients (the page, scripts, /docs) share one, since none registers.
CLIENT_ID = "fastapi-jwt-auth-demo"
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a kind of token, not a secret); RFC 9068 §2.1: the JWT header's typ, so that no other kind of JWT passes as one

T = TypeVar("T")


def normalize_username(value: object) -> object:
    """Fold look-alike spellings (composed or decomposed é, full-width letters) into one, as Django does.

    It runs before Pydantic's type check, so whatever is not text passes through to be refused there.
    """
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=64,
        pattern=r"^[\w.-]+$",
        description="3 to 64 letters (any script), digits, '.', '_' or '-'",
        examples=["alice"],
    ),
    BeforeValidator(normalize_username),
]

# Unicode's default-ignorable code points (DerivedCoreProperties.txt): they display as nothing at all.
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def visible(username: str) -> str:
    """RFC 8265: a new name may not hide characters, so that two names that look the same are the same name."""
    if INVISIBLE.search(username):
        raise ValueError("Username must not contain invisible characters")
    for before, character in zip("." + username, username, strict=False):
        if before in "._-" and unicodedata.category(character).startswith("M"):
            raise ValueError("Username must not contain an accent or other mark without a letter before it")
    return username


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[Username, AfterValidator(visible)]
    password: NewPassword

    @field_validator("password")
    @classmethod
    def password_without_username(cls, password: str, info: ValidationInfo) -> str:
        if "username" in info.data and contains_username(password, info.data["username"]):
            raise ValueError(HAS_USERNAME)
        return password


class Credentials(BaseModel):
    """What a login may be: any username and password that sign-up could ever have stored."""

    username: Username
    password: StoredPassword


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str


class SignedInUser(UserPublic):
    """The user an access token speaks for, and the session it belongs to (never sent out)."""

    session_id: str = Field(exclude=True)


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the kind of token, not a secret)
    expires_in: int = Field(description="Seconds until the access token expires", examples=[1800])
    refresh_token: str = Field(description="Trade it once for a new pair with grant_type=refresh_token")
    scope: str = Field(description="The scopes the access token was granted, space-separated", examples=["me account"])
    session_ends_at: float = Field(exclude=True)  # never sent: the browser's cookie lives as long as the session


class TokenForm(BaseModel):
    """RFC 6749's token request: the password grant (§4.3) or the refresh grant (§6)."""

    grant_type: str | None = Field(None, description="`password` (or none) to log in, `refresh_token` to refresh")
    username: str | None = Field(None, description="With the password grant")
    password: str | None = Field(None, description="With the password grant")
    refresh_token: str | None = Field(None, description="With the refresh grant")
    scope: str | None = Field(
        None,
        description="Space-separated scopes to ask for: `me`, `account`, `admin`. None or empty: every scope your "
        "role allows; a refresh: the session's scopes, or fewer",
    )


class RevokeForm(BaseModel):
    """RFC 7009's revocation request: an access or a refresh token."""

    token: str | None = None
    token_type_hint: str | None = Field(None, description="`access_token` or `refresh_token`; either works anyway")


class OAuthError(BaseModel):
    """RFC 6749's error fields for OAuth 2.0 client libraries, and the `detail` that FastAPI clients read."""

    detail: str
    error: Literal["invalid_request", "invalid_grant", "invalid_scope", "unsupported_grant_type"]
    error_description: str


class TokenClaims(BaseModel):
    model_config = ConfigDict(frozen=True)

    sub: str
    id: int
    sid: str
    exp: int
    scope: str  # RFC 9068 §2.2.3; a token from before scopes has none, and is refused

    @functools.cached_property
    def scopes(self) -> frozenset[str]:
        """Worked out once per token: the verified claims are kept (verified_claims below)."""
        return frozenset(self.scope.split())


class Detail(BaseModel):
    detail: str


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BAD_LOGIN = "Incorrect username or password"
STALE_REFRESH = "The refresh token is not valid: log in again"
ACCOUNT_DISABLED = "This account is disabled: ask an administrator"
CREDENTIALS_REFUSED = "Could not validate credentials"


def oauth_error(status_code: int, error: str, description: str) -> JSONResponse:
    """An answer that OAuth 2.0 clients read by its `error` and FastAPI clients by its `detail`; never cached."""
    body = {"detail": description, "error": error, "error_description": description}
    challenge = {"WWW-Authenticate": "Bearer"} if status_code == status.HTTP_401_UNAUTHORIZED else {}
    return JSONResponse(body, status_code, {**challenge, **NO_STORE})


def wrong_credentials() -> JSONResponse:
    """The same answer for an unknown user and a wrong password, so nobody can probe which names exist."""
    return oauth_error(status.HTTP_401_UNAUTHORIZED, "invalid_grant", BAD_LOGIN)


def invalid_scope(description: str) -> JSONResponse:
    return oauth_error(status.HTTP_400_BAD_REQUEST, "invalid_scope", description)


def requested_scopes(scope: str | None) -> list[str] | JSONResponse:
    """The scopes a token request asks for (none: all it may have), or RFC 6749 §5.2's refusal of an unknown one."""
    requested = (scope or "").split()
    for name in requested:
        if name not in SCOPES:
            return invalid_scope(f"Unknown scope {name!r}: the scopes are {', '.join(SCOPES)}")
    return requested


def missing_fields(*names: str) -> RequestValidationError:
    """The 422 that FastAPI gives for a missing form field, for fields that only one grant needs."""
    return RequestValidationError(
        [{"type": "missing", "loc": ("body", name), "msg": "Field required"} for name in names]
    )


login_database_threads = CapacityLimiter(CORES)


async def in_login_session(work: Callable[[Session], T]) -> T:
    """Sign-ups, logins and session changes talk to the database on a few threads of their own: a flood of them
    queues there, and the threads that serve every other request stay free."""
    return await in_session(work, login_database_threads)


# The longest address in text: IPv6 (45 characters) with a zone as Linux names its interfaces (% and 15 more).
MAX_ADDRESS_LENGTH = 61


def client_address(request: Request) -> str:
    """The client's address, or with uvicorn --proxy-headers, the one the trusted proxy says (X-Forwarded-For).

    uvicorn passes that header on unchecked: what does not parse as an IP address is no address, "". Failed logins
    from no address are throttled together, and a session from no address records none."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host)) if len(host) <= MAX_ADDRESS_LENGTH else ""
    except ValueError:
        return ""


class Client(BaseModel):
    """Where a login comes from, as its session records it for its owner's list."""

    address: str
    user_agent: str | None

    @classmethod
    def of(cls, request: Request) -> "Client":
        """The User-Agent is kept as text, cut to 256 characters, never interpreted; PostgreSQL refuses NUL in text."""
        user_agent = request.headers.get("user-agent")
        return cls(
            address=client_address(request),
            user_agent=user_agent.replace("\x00", "")[:256] if user_agent is not None else None,
        )


def check_throttle_and_find_user(
    session: Session, client_address: str, username: str
) -> tuple[int | None, User | None]:
    wait = throttle.seconds_to_wait(session, client_address, username)
    if wait is not None:
        return wait, None
    return None, session.scalar(select(User).where(User.username == username))


def record_success(session: Session, client_address: str, user: User, new_hash: str | None) -> bool:
    """Clear the pair's failures, and store the new hash if the one that was checked is still there. False if it is
    not: the password changed while it was being checked, and what was checked no longer holds."""
    throttle.clear_failures(session, client_address, user.username)
    if not new_hash:
        return True
    still_verified = User.id == user.id, User.hashed_password == user.hashed_password
    rehashed = session.execute(
        update(User).where(*still_verified).values(hashed_password=new_hash).returning(User.id)
    ).first()
    session.commit()
    if rehashed:
        user.hashed_password = new_hash
    return rehashed is not None


async def check_password(address: str, username: str, password: str) -> User | None:
    """The user if the password is theirs, else None: throttled per address and username, one bcrypt run
    whether the user exists or not, and the failure counted. Each step holds only what it needs.

    The user comes back with the hash the password matched (or its rehash): a write that depends on this check
    must commit only if that hash is still the stored one."""
    refuse_if_hashing_is_full()
    wait, user = await in_login_session(lambda session: check_throttle_and_find_user(session, address, username))
    if wait is not None:
        logger.warning("Login refused for %r from %s: too many failed logins", username, address)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins: wait {wait} seconds before trying again",
            headers={"Retry-After": str(wait)},
        )
    stored_hash = user.hashed_password if user else DUMMY_HASH
    matches, new_hash = await verify_password(password, stored_hash)
    if user is None or not matches:
        await in_login_session(lambda session: throttle.record_failure(session, address, username))
        return None
    still_verified = await in_login_session(lambda session: record_success(session, address, user, new_hash))
    return user if still_verified else None


def issue_tokens(
    user_id: int, username: str, session_id: str, session_ends_at: float, refresh_token: str, scopes: str
) -> Token:
    """An access token as RFC 9068 describes one, signed with the current key, that ends with its session at the
    latest and carries its scopes; and the session's refresh token. Called on a worker thread (keys may be read).

    `jti` tells apart two access tokens issued in the same second, so that a refresh never hands back the same one.
    """
    issued_at = int(time.time())
    expires_at = min(issued_at + settings.access_token_expire_minutes * 60, int(session_ends_at))
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": username,
        "client_id": CLIENT_ID,
        "id": user_id,
        "sid": session_id,
        "iat": issued_at,
        "exp": expires_at,
        "jti": secrets.token_urlsafe(8),
        "scope": scopes,
    }
    kid, signing_key = keys.for_signing()
    headers = {"kid": kid, "typ": ACCESS_TOKEN_TYPE}
    access_token = jwt.encode(claims, signing_key, algorithm=settings.algorithm, headers=headers)
    return Token(
        access_token=access_token,
        expires_in=expires_at - issued_at,
        refresh_token=refresh_token,
        scope=scopes,
        session_ends_at=session_ends_at,
    )


def start_session(session: Session, user: User, scopes: str, client: Client) -> Token | None:
    """None if the account changed (password, role, disabled or deleted) since the password was checked."""
    started = sessions.start(session, user, scopes, client.address, client.user_agent)
    if started is None:
        return None
    session_id, ends_at, refresh_token = started
    return issue_tokens(user.id, user.username, session_id, ends_at, refresh_token, scopes)


def refresh_session(session: Session, refresh_token: str, requested: list[str]) -> Token | JSONResponse | None:
    """A refresh may ask for fewer scopes than its session's: the new access token carries only those, and the
    refresh token keeps the session's (RFC 6749 §6). Asking for more is refused before the token is spent."""
    if requested and (granted := sessions.scopes_of(session, refresh_token)) is not None:
        if not set(requested) <= set(granted.split()):
            return invalid_scope(f"A refresh may ask for this session's scopes ({granted}) or fewer: log in for more")
    rotated = sessions.rotate(session, refresh_token)
    if rotated is None:
        return None
    renewed, next_refresh_token = rotated
    scopes = grant(requested, session_scopes(renewed.scopes, renewed.role).split())
    return issue_tokens(renewed.user_id, renewed.username, renewed.id, renewed.ends_at, next_refresh_token, scopes)


def unauthorized(challenge: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, CREDENTIALS_REFUSED, headers={"WWW-Authenticate": challenge})


def invalid_token() -> HTTPException:
    return unauthorized(f'Bearer error="invalid_token", error_description="{CREDENTIALS_REFUSED}"')


# A compact JWS of base64url characters, and short: nothing else is decoded, or kept by the caches below. Ours are
# about 500 bytes.
ACCESS_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_TOKEN_LENGTH = 2048


def has_access_token_shape(token: str) -> bool:
    return len(token) <= MAX_TOKEN_LENGTH and ACCESS_TOKEN_SHAPE.fullmatch(token) is not None


@functools.lru_cache(maxsize=4096)
def key_id(token: str) -> str | None:
    """The kid of a token's header, if it has the header of one of our access tokens (typ at+jwt)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return None
    kid = header.get("kid")
    return kid if header.get("typ") == ACCESS_TOKEN_TYPE and isinstance(kid, str) else None


@functools.lru_cache(maxsize=4096)
def verified_claims(token: str, key: jwt.PyJWK) -> TokenClaims:
    """Check a token's signature once, with the key its kid names and that key's algorithm (never the one the token
    says), its issuer and its audience, and keep the answer: the same string always carries the same signature.
    `exp` is checked again on every use, and the key and the session on every request: none of them is kept."""
    payload = jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience=settings.token_audience,
        issuer=settings.token_issuer,
        # exp is checked on every use instead (get_current_user), against the app's own clock, not once here.
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"], "verify_exp": False, "verify_iat": False},
    )
    return TokenClaims.model_validate(payload)


async def claims_of(token: str) -> TokenClaims | None:
    """The verified claims of one of our access tokens, expired or not; None for anything else. The key is looked up
    by kid among the published keys: a token signed by a key that was revoked, or never ours, has none."""
    kid = key_id(token) if has_access_token_shape(token) else None
    key = await keys.verifying_key(kid) if kid else None
    if key is None:
        return None
    try:
        return verified_claims(token, key)
    except (jwt.InvalidTokenError, ValidationError):
        return None


# The user of a live session, as the account is now: a logout, a password change, a deleted or disabled account, or a
# role taken away by any means (the admin API, a database edit, a restore from backup) takes effect on the next request.
SESSION_USER = (
    select(User.username, User.role, User.disabled)
    .join(LoginSession, LoginSession.user_id == User.id)
    .where(LoginSession.id == bindparam("session_id"), User.id == bindparam("user_id"))
)

# The scopes declared here are the checkboxes of /docs' Authorize dialog.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="auth/token", auto_error=False, scopes=SCOPES)


async def get_current_user(
    security_scopes: SecurityScopes, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> SignedInUser:
    """Accept only our own unexpired tokens, of a live session, for a user who still exists, is enabled and whose
    role still allows every scope the token carries, and granted every scope the route needs (FastAPI collects them
    in security_scopes).

    An access token's `exp` is never later than its session's end, so a session that has run out needs no check
    of its own; one that has ended has no row. The one read skips the trip to a worker thread (fast_reads.py).
    """
    if not token:
        raise unauthorized("Bearer")
    claims = await claims_of(token)
    if claims is None or claims.exp < time.time():
        raise invalid_token()
    account = await fast_reads.read_row(SESSION_USER, session_id=claims.sid, user_id=claims.id)
    if account is None:
        raise invalid_token()
    username, role, disabled = account
    if username != claims.sub or disabled or not claims.scopes <= ROLE_SCOPE_SETS.get(role, frozenset()):
        raise invalid_token()
    if not claims.scopes.issuperset(security_scopes.scopes):
        raise insufficient_scope(security_scopes.scope_str)
    return SignedInUser(id=claims.id, username=claims.sub, session_id=claims.sid)


def insufficient_scope(needed: str) -> HTTPException:
    """RFC 6750 §3.1: the token is good, but not for this: 403, and the challenge names the scope that was missing."""
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"This route needs the scope {needed!r}, which this token was not granted",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
    )


# Who may call a route: the holder of any valid token, or of one granted the scope named.
CurrentUser = Annotated[SignedInUser, Security(get_current_user)]
Reader = Annotated[SignedInUser, Security(get_current_user, scopes=["me"])]
AccountOwner = Annotated[SignedInUser, Security(get_current_user, scopes=["account"])]
Administrator = Annotated[SignedInUser, Security(get_current_user, scopes=["admin"])]
BAD_TOKEN_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "Missing, invalid or expired token, or an ended session"}
}
SCOPE_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"model": Detail, "description": "The token was not granted the scope this route needs"}
}
BUSY_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Detail, "description": "Too busy, or the database is away"}
}
THROTTLED_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_429_TOO_MANY_REQUESTS: {"model": Detail, "description": "Too many failed logins: wait"}
}

router = APIRouter(prefix="/auth", tags=["auth"])


def add_user(session: Session, username: str, hashed_password: str, role: Role = USER) -> User:
    """A name that differs from another only by case is taken too: its username_key is the same."""
    key = fold(username)
    user = User(username=username, username_key=key, hashed_password=hashed_password, role=role, created_at=time.time())
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already registered") from None
    return user


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses={
        status.HTTP_409_CONFLICT: {"model": Detail, "description": "Username already registered"},
        **BUSY_RESPONSE,
    },
)
async def sign_up(new_user: UserCreate) -> User:
    hashed_password = await hash_password(new_user.password)
    return await in_login_session(lambda session: add_user(session, new_user.username, hashed_password))


@router.post(
    "/token",
    response_model=Token,
    responses={
        status.HTTP_400_BAD_REQUEST: {
            "model": OAuthError,
            "description": "Unknown grant_type, no refresh_token, or a scope that is unknown or not allowed",
        },
        status.HTTP_401_UNAUTHORIZED: {"model": OAuthError, "description": f"{BAD_LOGIN}, or {STALE_REFRESH}"},
        **THROTTLED_RESPONSE,
        **BUSY_RESPONSE,
    },
)
async def log_in_or_refresh(
    form: Annotated[TokenForm, Form()], request: Request, response: Response
) -> Token | JSONResponse:
    """Log in with a username and password, or trade a refresh token for a new pair (RFC 6749 §4.3 and §6)."""
    if form.grant_type not in (None, "password", "refresh_token"):
        return oauth_error(
            status.HTTP_400_BAD_REQUEST, "unsupported_grant_type", "grant_type must be password or refresh_token"
        )
    requested = requested_scopes(form.scope)
    if isinstance(requested, JSONResponse):
        return requested
    if form.grant_type == "refresh_token":
        token = await refresh(form.refresh_token, requested)
    else:
        token = await log_in(form, requested, Client.of(request))
    if isinstance(token, Token):
        response.headers.update(NO_STORE)
    return token


async def log_in(form: TokenForm, requested: list[str], client: Client) -> Token | JSONResponse:
    """Credentials that sign-up could never have stored belong to nobody (and some make bcrypt raise): they stop
    first. Nothing else of sign-up's rules applies, so an account keeps the password it was made with.

    Only the right password learns that an account is disabled, or that its role allows none of the scopes asked.
    """
    if form.username is None or form.password is None:
        raise missing_fields(*(name for name in ("username", "password") if getattr(form, name) is None))
    try:
        credentials = Credentials(username=form.username, password=form.password)
    except ValidationError:
        return wrong_credentials()
    user = await check_password(client.address, credentials.username, credentials.password)
    if user is None:
        return wrong_credentials()
    if user.disabled:
        return oauth_error(status.HTTP_401_UNAUTHORIZED, "invalid_grant", ACCOUNT_DISABLED)
    allowed = ROLE_SCOPES[user.role]
    scopes = grant(requested, allowed)
    if not scopes:
        return invalid_scope(f"None of the scopes asked for is allowed to the role {user.role!r}: {' '.join(allowed)}")
    token = await in_login_session(lambda session: start_session(session, user, scopes, client))
    return token or wrong_credentials()


async def refresh(refresh_token: str | None, requested: list[str]) -> Token | JSONResponse:
    """No bcrypt runs here, so neither the throttle nor the limit on hashing applies."""
    if not refresh_token:
        return oauth_error(status.HTTP_400_BAD_REQUEST, "invalid_request", "refresh_token is required to refresh")
    token = await in_login_session(lambda session: refresh_session(session, refresh_token, requested))
    return token or oauth_error(status.HTTP_401_UNAUTHORIZED, "invalid_grant", STALE_REFRESH)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=BAD_TOKEN_RESPONSE | BUSY_RESPONSE)
async def log_out(user: CurrentUser) -> None:
    """End this token's session: its access tokens and its refresh token stop working at once. Other sessions
    of the same user (other devices) go on."""
    await in_login_session(lambda session: sessions.end(session, user.session_id))


@router.post(
    "/revoke",
    response_class=Response,
    responses={
        status.HTTP_200_OK: {"description": "Revoked, or not a live token of ours: the answer is the same"},
        status.HTTP_400_BAD_REQUEST: {"model": OAuthError, "description": "No token"},
        **BUSY_RESPONSE,
    },
)
async def revoke(form: Annotated[RevokeForm, Form()]) -> Response:
    """RFC 7009: end the session of an access token that we signed (even an expired one), or of its current refresh
    token. Anything else, a spent refresh token or a session's bare id included, ends nothing and gets the same 200,
    so the answer says nothing about it; no client authentication (public clients)."""
    token = form.token
    if not token:
        return oauth_error(status.HTTP_400_BAD_REQUEST, "invalid_request", "token is required")
    if sessions.session_id_of(token):
        await in_login_session(lambda session: sessions.end_by_refresh_token(session, token))
    elif claims := await claims_of(token):  # one of our access tokens, even an expired one
        await in_login_session(lambda session: sessions.end(session, claims.sid))
    return Response()
