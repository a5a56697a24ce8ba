"""Who may do what: every user has a role, and a role allows a set of OAuth2 scopes, which a token carries.

Each name is defined here once. A token is granted at most its user's role's scopes, and fewer when the client
asks for fewer (RFC 6749 §3.3); each route says which scope it needs.
"""

from typing import Literal

Role = Literal["user", "admin"]
USER: Role = "user"
ADMIN: Role = "admin"

SCOPES = {
    "me": "Read your own account: GET /, GET /users/me and your sessions",
    "account": "Change your password, delete your account, end your sessions",
    "admin": "Manage every account (administrators only)",
}
ROLE_SCOPES: dict[str, tuple[str, ...]] = {USER: ("me", "account"), ADMIN: ("me", "account", "admin")}
ROLE_SCOPE_SETS = {role: frozenset(scopes) for role, scopes in ROLE_SCOPES.items()}  # for the check of every request


def scope_text(scopes: tuple[str, ...] | list[str]) -> str:
    """Scopes as OAuth 2.0 writes them, space-separated, in the order they are declared above."""
    return " ".join(scope for scope in SCOPES if scope in scopes)


def grant(requested: list[str], allowed: tuple[str, ...] | list[str]) -> str:
    """RFC 6749 §3.3: what was asked for, narrowed to what is allowed; all of it when nothing was asked for."""
    return scope_text([scope for scope in requested or allowed if scope in allowed])


def session_scopes(granted: str | None, role: str) -> str:
    """A session's scopes: what its login granted, or for a session from before scopes, its user's role's; either
    way only those that the role allows now, however it changed (a database edit, a restore from backup)."""
    allowed = ROLE_SCOPES.get(role, ())
    return scope_text([scope for scope in (granted.split() if granted else allowed) if scope in allowed])
