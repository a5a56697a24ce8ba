"""Sign up, log in for a token, and turn a token back into a user."""

import logging
import os
import secrets
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from jose import JWTError, jwt
from passlib.context import CryptContext
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from database import SessionDep
from models import User


def read_int_setting(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = os.getenv(name, str(default))
    try:
        value = int(raw)
        if minimum <= value <= maximum:
            return value
    except ValueError:
        pass
    raise SystemExit(f"{name} must be a whole number from {minimum} to {maximum}, not {raw!r}")


MAKE_KEY = 'python -c "import secrets; print(secrets.token_hex(32))"'
SECRET_KEY = os.getenv("SECRET_KEY")
if SECRET_KEY is None:
    SECRET_KEY = secrets.token_hex(32)
    logging.getLogger(__name__).warning(
        "SECRET_KEY is not set: using a random key, so tokens stop working when the app restarts; "
        f"set one with: export SECRET_KEY=$({MAKE_KEY})"
    )
elif len(SECRET_KEY) < 32:
    raise SystemExit(f"SECRET_KEY must be at least 32 characters; make one with: {MAKE_KEY}")

ALGORITHM = os.getenv("ALGORITHM", "HS256")
if ALGORITHM not in ("HS256", "HS384", "HS512"):
    raise SystemExit(f"ALGORITHM must be HS256, HS384 or HS512 (signed with SECRET_KEY), not {ALGORITHM!r}")

ACCESS_TOKEN_EXPIRE_MINUTES = read_int_setting("ACCESS_TOKEN_EXPIRE_MINUTES", 30, 1, 525_600)
BCRYPT_ROUNDS = read_int_setting("BCRYPT_ROUNDS", 12, 4, 31)

MAX_PASSWORD_BYTES = 72
password_context = CryptContext(schemes=["bcrypt"], deprecated="auto", bcrypt__rounds=BCRYPT_ROUNDS)
DUMMY_HASH = password_context.hash("checked when the username is unknown")


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
    token_type: str


class TokenClaims(BaseModel):
    sub: str
    id: int


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Run exactly one bcrypt check whether the user exists or not, so the answer time tells nothing.

    Credentials that sign-up refuses belong to nobody (and some make bcrypt raise), so they stop first.
    """
    try:
        credentials = UserCreate(username=username, password=password)
    except ValidationError:
        return None
    user = session.scalar(select(User).where(User.username == credentials.username))
    stored_hash = user.hashed_password if user else DUMMY_HASH
    matches, new_hash = password_context.verify_and_update(credentials.password, stored_hash)
    if user is None or not matches:
        return None
    if new_hash:
        user.hashed_password = new_hash
        session.commit()
    return user


def create_access_token(user: User) -> str:
    now = datetime.now(timezone.utc)
    claims = {
        "sub": user.username,
        "id": user.id,
        "iat": now,
        "exp": now + timedelta(minutes=ACCESS_TOKEN_EXPIRE_MINUTES),
    }
    return jwt.encode(claims, SECRET_KEY, algorithm=ALGORITHM)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="auth/token", auto_error=False)


def get_current_user(token: Annotated[str | None, Depends(oauth2_scheme)], session: SessionDep) -> User:
    """Accept only our own unexpired tokens, for a user who still exists."""
    if token is None:
        raise unauthorized("Could not validate credentials")
    try:
        payload = jwt.decode(token, SECRET_KEY, algorithms=[ALGORITHM], options={"require_exp": True})
        claims = TokenClaims.model_validate(payload)
    except (JWTError, ValidationError):
        raise unauthorized("Could not validate credentials") from None
    user = session.get(User, claims.id)
    if user is None or user.username != claims.sub:
        raise unauthorized("Could not validate credentials")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
BAD_TOKEN_RESPONSE = {status.HTTP_401_UNAUTHORIZED: {"description": "Missing, invalid or expired token"}}

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses={status.HTTP_409_CONFLICT: {"description": "Username already registered"}},
)
def sign_up(new_user: UserCreate, session: SessionDep) -> User:
    user = User(username=new_user.username, hashed_password=password_context.hash(new_user.password))
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already registered") from None
    return user


@router.post("/token", responses={status.HTTP_401_UNAUTHORIZED: {"description": "Incorrect username or password"}})
def log_in(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep) -> Token:
    user = authenticate(session, form.username, form.password)
    if user is None:
        raise unauthorized("Incorrect username or password")
    return Token(access_token=create_access_token(user), token_type="bearer")
