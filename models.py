from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from database import Base


class User(Base):
    __tablename__ = "users"
    # SQLite would hand the id of a deleted user to the next one, and the old token would open the new account.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String(255))


class LoginFailure(Base):
    """One failed login, kept while it counts towards the throttle."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address_username", "client_address", "username"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_address: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[float] = mapped_column(index=True)  # seconds since 1970 (time.time()), the same in every zone
