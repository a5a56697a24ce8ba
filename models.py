from sqlalchemy import ForeignKey, Index, String, false
from sqlalchemy.orm import Mapped, mapped_column

from database import Base
from roles import USER


class User(Base):
    __tablename__ = "users"
    # SQLite would hand the id of a deleted user to the next one, and the old token would open the new account.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # The name case-folded, so that Alice and ALICE cannot both sign up. Null only for an account made before 1.2
    # whose name differed from an older one's only by case: it keeps its name and logs in as before.
    username_key: Mapped[str | None] = mapped_column(String(255), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=USER, server_default=USER)
    disabled: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[float | None]  # seconds since 1970; null for accounts made before 1.2


class LoginSession(Base):
    """One password login. Its tokens work while its row exists: ending a session deletes the row."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random: every refresh token starts with it
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[float]  # seconds since 1970 (time.time()), as in login_failures
    ends_at: Mapped[float] = mapped_column(index=True)
    refresh_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the current refresh token, never the token
    # What the login granted, space-separated; null for sessions from before 1.2, which get their user's role's.
    scopes: Mapped[str | None] = mapped_column(String(64))
    # Where and when it was used, for its owner's list; null where sessions from before 1.2 recorded nothing.
    last_used_at: Mapped[float | None]  # at login and at each refresh; a protected request writes nothing
    client_address: Mapped[str | None] = mapped_column(String(255))
    user_agent: Mapped[str | None] = mapped_column(String(256))  # as the client sent it, never interpreted


class SpentRefreshToken(Base):
    """A refresh token that was traded for a new one, kept while its session lives: if it comes back, someone
    holds a copy, and the session ends (RFC 9700 §4.14.2). Any other string that names a session ends nothing.

    Only a session's latest few are kept (sessions.SPENT_TOKENS_KEPT): an older one is unknown, and ends nothing."""

    __tablename__ = "spent_refresh_tokens"

    refresh_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    spent_at: Mapped[float | None]  # seconds since 1970; null for tokens spent before 1.3, the first to be forgotten


class LoginFailure(Base):
    """One failed login, kept while it counts towards the throttle."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address_username", "client_address", "username"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_address: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[float] = mapped_column(index=True)  # seconds since 1970 (time.time()), the same in every zone


class SigningKey(Base):
    """A key pair that signs access tokens (current), will (next) or did and still verifies (previous): keys.py."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)  # its RFC 7638 thumbprint
    algorithm: Mapped[str] = mapped_column(String(8))  # ES256 or RS256
    state: Mapped[str] = mapped_column(String(8))  # next, current or previous
    since: Mapped[float]  # when it took its state, seconds since 1970
    public_jwk: Mapped[str] = mapped_column(String(2048))  # as the JWKS publishes it
    encrypted_private_key: Mapped[bytes]  # AES-GCM, with a key derived from SECRET_KEY: a nonce, then the ciphertext
