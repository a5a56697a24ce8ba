"""Sign up, log in for a token, and turn a token back into a user."""

import logging
import os
import secrets
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from anyio import CapacityLimiter, WouldBlock, to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from jose import JWTError, jwt
from passlib.context import CryptContext
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import database
import throttle
from config import MAKE_KEY, settings
from database import in_session
from models import User

logger = logging.getLogger(__name__)


def make_random_key() -> str:
    logger.warning(
        "SECRET_KEY is not set: using a random key, so tokens stop working when the app restarts; "
        f"put a key in .env with: {MAKE_KEY}"
    )
    return secrets.token_hex(32)


SECRET_KEY = settings.secret_key or make_random_key()

MAX_PASSWORD_BYTES = 72
password_context = CryptContext(schemes=["bcrypt"], deprecated="auto", bcrypt__rounds=settings.bcrypt_rounds)
hashing_started = time.perf_counter()
DUMMY_HASH = password_context.hash("checked when the username is unknown")
SECONDS_PER_HASH = time.perf_counter() - hashing_started

CORES = os.cpu_count() or 1
hashing_threads = CapacityLimiter(CORES)
# Besides one hash per core, as many may wait as the cores finish in about a second: an accepted request
# waits about that long at most, and the next one is told at once to come back.
MAX_WAITING_HASHES = max(CORES, round(CORES / SECONDS_PER_HASH))
places_to_hash = CapacityLimiter(CORES + MAX_WAITING_HASHES)
login_database_threads = CapacityLimiter(CORES)

T = TypeVar("T")


def normalize_username(value: object) -> object:
    """Fold look-alike spellings (composed or decomposed é, full-width letters) into one, as Django does.

    It runs before Pydantic's type check, so whatever is not text passes through to be refused there.
    """
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


def fits_bcrypt(password: str) -> str:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"Password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8: bcrypt ignores the rest")
    if "\x00" in password:
        raise ValueError("Password must not contain the NUL character: bcrypt cannot hash it")
    return password


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
Password = Annotated[
    str,
    Field(
        min_length=8,
        max_length=MAX_PASSWORD_BYTES,
        description="At least 8 characters and at most 72 bytes in UTF-8",
        examples=["correct horse battery"],
    ),
    AfterValidator(fits_bcrypt),
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the kind of token, not a secret)
    expires_in: int = Field(description="Seconds until the token expires", examples=[1800])


class LoginError(BaseModel):
    """RFC 6749's error fields for OAuth 2.0 client libraries, and the `detail` that FastAPI clients read."""

    detail: str
    error: Literal["invalid_grant"]
    error_description: str


class TokenClaims(BaseModel):
    sub: str
    id: int


class Detail(BaseModel):
    detail: str


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BAD_LOGIN = "Incorrect username or password"
CREDENTIALS_REFUSED = "Could not validate credentials"


def too_busy() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "Too many logins and sign-ups at once: try again in a second",
        headers={"Retry-After": "1"},
    )


def refuse_if_hashing_is_full() -> None:
    """Answer 503 at once, before any database work, when every place to hash is taken."""
    if places_to_hash.available_tokens == 0:
        raise too_busy()


async def hash_off_the_loop(work: Callable[..., T], *args: str) -> T:
    """Hash in one of a bounded number of places, on threads of bcrypt's own (one per core).

    The threads that serve every other request stay free, and a refused login or sign-up never takes a place.
    """
    place = object()
    try:
        places_to_hash.acquire_on_behalf_of_nowait(place)
    except WouldBlock:
        raise too_busy() from None
    try:
        return await to_thread.run_sync(work, *args, limiter=hashing_threads)
    finally:
        places_to_hash.release_on_behalf_of(place)


async def in_login_session(work: Callable[[Session], T]) -> T:
    """Sign-ups and logins talk to the database on a few threads of their own: a flood of them queues there,
    and the threads that serve every other request stay free."""
    return await in_session(work, login_database_threads)


def wrong_credentials() -> JSONResponse:
    """The same answer for an unknown user and a wrong password, so nobody can probe which names exist."""
    body = LoginError(detail=BAD_LOGIN, error="invalid_grant", error_description=BAD_LOGIN)
    return JSONResponse(body.model_dump(), status.HTTP_401_UNAUTHORIZED, {"WWW-Authenticate": "Bearer", **NO_STORE})


def check_throttle_and_find_user(
    session: Session, client_address: str, username: str
) -> tuple[int | None, User | None]:
    wait = throttle.seconds_to_wait(session, client_address, username)
    if wait is not None:
        return wait, None
    return None, session.scalar(select(User).where(User.username == username))


def record_success(session: Session, client_address: str, user: User, new_hash: str | None) -> None:
    throttle.clear_failures(session, client_address, user.username)
    if new_hash:
        session.execute(update(User).where(User.id == user.id).values(hashed_password=new_hash))
        session.commit()


def create_access_token(user: User) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": user.username,
        "id": user.id,
        "iat": now,
        "exp": now + timedelta(minutes=settings.access_token_expire_minutes),
    }
    return jwt.encode(claims, SECRET_KEY, algorithm=settings.algorithm)


def unauthorized(challenge: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, CREDENTIALS_REFUSED, headers={"WWW-Authenticate": challenge})


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="auth/token", auto_error=False)


async def get_current_user(token: Annotated[str | None, Depends(oauth2_scheme)]) -> UserPublic:
    """Accept only our own unexpired tokens, for a user who still exists.

    Checking the token is quick work for the event loop; loading the user is the one trip to a worker thread.
    """
    if not token:
        raise unauthorized("Bearer")
    invalid_token = unauthorized(f'Bearer error="invalid_token", error_description="{CREDENTIALS_REFUSED}"')
    try:
        payload = jwt.decode(token, SECRET_KEY, algorithms=[settings.algorithm], options={"require_exp": True})
        claims = TokenClaims.model_validate(payload)
    except (JWTError, ValidationError):
        raise invalid_token from None
    user = await to_thread.run_sync(find_public_user, claims.id)
    if user is None or user.username != claims.sub:
        raise invalid_token
    return user


def find_public_user(user_id: int) -> UserPublic | None:
    """Every protected request comes here: a plain connection does it in a quarter of an ORM session's time."""
    with database.engine.connect() as connection:
        row = connection.execute(select(User.id, User.username).where(User.id == user_id)).first()
    return UserPublic.model_validate(row) if row else None


CurrentUser = Annotated[UserPublic, Depends(get_current_user)]
BAD_TOKEN_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "Missing, invalid or expired token"}
}
BUSY_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Detail, "description": "Too busy, or the database is away"}
}

router = APIRouter(prefix="/auth", tags=["auth"])


def add_user(session: Session, username: str, hashed_password: str) -> User:
    user = User(username=username, hashed_password=hashed_password)
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
    hashed_password = await hash_off_the_loop(password_context.hash, new_user.password)
    return await in_login_session(lambda session: add_user(session, new_user.username, hashed_password))


@router.post(
    "/token",
    response_model=Token,
    responses={
        status.HTTP_401_UNAUTHORIZED: {"model": LoginError, "description": BAD_LOGIN},
        status.HTTP_429_TOO_MANY_REQUESTS: {"model": Detail, "description": "Too many failed logins: wait"},
        **BUSY_RESPONSE,
    },
)
async def log_in(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, response: Response
) -> Token | JSONResponse:
    """Each step holds only what it needs: a pooled connection to read, a hashing thread to hash, then to write.

    Credentials that sign-up refuses belong to nobody (and some make bcrypt raise), so they stop first.
    """
    try:
        credentials = UserCreate(username=form.username, password=form.password)
    except ValidationError:
        return wrong_credentials()
    refuse_if_hashing_is_full()
    address, username = (request.client.host if request.client else "", credentials.username)
    wait, user = await in_login_session(lambda session: check_throttle_and_find_user(session, address, username))
    if wait is not None:
        logger.warning("Login refused for %r from %s: too many failed logins", username, address)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins: wait {wait} seconds before trying again",
            headers={"Retry-After": str(wait)},
        )
    stored_hash = user.hashed_password if user else DUMMY_HASH
    matches, new_hash = await hash_off_the_loop(password_context.verify_and_update, credentials.password, stored_hash)
    if user is None or not matches:
        await in_login_session(lambda session: throttle.record_failure(session, address, username))
        return wrong_credentials()
    await in_login_session(lambda session: record_success(session, address, user, new_hash))
    response.headers.update(NO_STORE)
    expires_in = settings.access_token_expire_minutes * 60
    return Token(access_token=create_access_token(user), expires_in=expires_in)
