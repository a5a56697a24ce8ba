"""Every setting the app reads, from environment variables or a .env file in the working folder."""

from typing import Literal, get_args, get_origin

from annotated_types import Ge, Le, MinLen
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

MAKE_KEY = "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env"


class Settings(BaseSettings):
    """The environment wins over .env; a missing .env is fine."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    secret_key: str | None = Field(
        None,
        min_length=32,
        repr=False,
        description="the key that encrypts the signing keys at rest; unset: a random key per process",
    )
    algorithm: Literal["ES256", "RS256"] = Field(
        "ES256", description="how access tokens are signed: ES256, or RS256 for clients that need it"
    )
    token_issuer: str = Field(
        "http://127.0.0.1:8000",
        min_length=1,
        description="every access token's iss: the URL clients reach the app at, as /.well-known documents it",
    )
    token_audience: str = Field(
        "fastapi-jwt-auth-demo", min_length=1, description="every access token's aud: the services that accept it"
    )
    signing_key_cache_seconds: int = Field(
        300, ge=1, le=86_400, description="how long a process keeps the signing keys it read; the JWKS's max-age"
    )
    access_token_expire_minutes: int = Field(
        30, ge=1, le=525_600, description="how long an access token lives, in minutes"
    )
    refresh_token_expire_days: int = Field(
        30, ge=1, le=365, description="how long a login session lasts, in days, however often it is refreshed"
    )
    max_sessions_per_user: int = Field(
        100,
        ge=1,
        le=10_000,
        description="live sessions one user may have; a login past it ends the least recently used",
    )
    bcrypt_rounds: int = Field(12, ge=4, le=31, description="bcrypt's cost; each step doubles the hashing time")
    password_min_length: int = Field(
        8, ge=8, le=64, description="the fewest characters a new password may have; NIST asks 15 for a password alone"
    )
    login_max_failures: int = Field(
        5, ge=0, le=1000, description="failed logins per address and username before 429; 0 turns the throttle off"
    )
    login_window_seconds: int = Field(
        900, ge=1, le=86_400, description="how long a failed login counts against its address and username"
    )
    database_url: str = Field("sqlite:///./auth.db", description="any SQLAlchemy URL; postgresql://… uses psycopg 3")
    database_timeout_seconds: int = Field(
        5, ge=1, le=60, description="longest wait to connect or for a lock before answering 503"
    )
    public_origin: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+$",
        description="the browser page's origin (scheme://host[:port]) behind a proxy that rewrites Host; "
        "unset: the request's own scheme and Host",
    )
    host: str = Field("127.0.0.1", description="where python main.py listens")
    port: int = Field(8000, ge=1, le=65535, description="the port python main.py listens on")


def allowed_values(field: FieldInfo) -> str:
    """Say in words what a field's own type and bounds allow, so each rule is written once."""
    if get_origin(field.annotation) is Literal:
        *others, last = get_args(field.annotation)
        return f"{', '.join(others)} or {last}"
    bounds = {type(rule): rule for rule in field.metadata}
    if any(getattr(rule, "pattern", None) for rule in field.metadata):
        return "an origin, scheme://host[:port], such as https://auth.example.com"
    if MinLen in bounds:
        return f"at least {bounds[MinLen].min_length} characters"
    return f"a whole number from {bounds[Ge].ge} to {bounds[Le].le}"


def explain(error: ErrorDetails) -> str:
    name = str(error["loc"][0])
    field = Settings.model_fields[name]
    shown = f", not {error['input']!r}" if field.repr else ""
    fix = f"make one with: {MAKE_KEY}" if name == "secret_key" else "change it in the environment or in .env"
    return f"{name.upper()} must be {allowed_values(field)}{shown}; {fix}"


def load_settings() -> Settings:
    """Read the settings, or stop with one line per bad setting instead of Pydantic's report."""
    try:
        return Settings()
    except ValidationError as error:
        raise SystemExit("\n".join(explain(item) for item in error.errors())) from None


settings = load_settings()
