"""Sessions: refresh tokens that rotate, logout, revocation, password change and account deletion."""

import hashlib
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from anyio import CapacityLimiter
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, select, text
from sqlalchemy.orm import Session

import auth
import database
import passwords
import sessions
from config import settings
from conftest import (
    PASSWORD,
    bearer,
    claims_for,
    count_rows,
    log_in,
    refresh,
    sign_up,
    signed,
    tokens_for,
    unverified_claims,
)
from models import LoginSession, SpentRefreshToken, User

NEW_PASSWORD = "a brand new passphrase"
STALE_REFRESH = {
    "detail": "The refresh token is not valid: log in again",
    "error": "invalid_grant",
    "error_description": "The refresh token is not valid: log in again",
}


def greet(client, tokens):
    return client.get("/", headers=bearer(tokens["access_token"])).status_code


def assert_refused(response):
    assert response.status_code == 401
    assert response.json() == STALE_REFRESH
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Cache-Control"] == "no-store"


# Refresh


def test_a_refresh_gives_a_new_pair_in_the_same_session(client):
    tokens = tokens_for(client)

    response = refresh(client, tokens["refresh_token"])

    assert response.status_code == 200
    renewed = response.json()
    assert renewed.keys() == tokens.keys()
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert renewed["access_token"] != tokens["access_token"]
    assert renewed["expires_in"] == 1800
    assert unverified_claims(renewed["access_token"])["sid"] == unverified_claims(tokens["access_token"])["sid"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert greet(client, renewed) == 200
    assert count_rows(LoginSession) == 1


def test_a_spent_refresh_token_is_refused_and_ends_its_whole_session(client):
    tokens = tokens_for(client)
    renewed = refresh(client, tokens["refresh_token"]).json()

    reused = refresh(client, tokens["refresh_token"])

    assert_refused(reused)
    assert greet(client, renewed) == 401
    assert greet(client, tokens) == 401
    assert_refused(refresh(client, renewed["refresh_token"]))
    assert count_rows(LoginSession) == 0


def test_a_spent_refresh_token_ends_only_its_own_session(client):
    first = tokens_for(client)
    second = log_in(client).json()
    refresh(client, first["refresh_token"])

    refresh(client, first["refresh_token"])

    assert greet(client, second) == 200
    assert refresh(client, second["refresh_token"]).status_code == 200


def test_of_concurrent_refreshes_with_one_token_exactly_one_succeeds_and_the_session_ends(client):
    tokens = tokens_for(client)
    start = threading.Barrier(8)

    def attempt(_):
        start.wait()
        return refresh(client, tokens["refresh_token"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(attempt, range(8)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [401] * 7
    [winner] = [answer.json() for answer in answers if answer.status_code == 200]
    assert greet(client, winner) == 401
    assert_refused(refresh(client, winner["refresh_token"]))


@pytest.mark.parametrize(
    "refresh_token",
    ["garbage", "", "no-such-session.abc", "." * 200, "\u00e9" * 50],
    ids=["garbage", "empty", "unknown session", "dots", "not ASCII"],
)
def test_an_unknown_refresh_token_gets_the_answer_of_a_wrong_password_and_ends_nothing(client, refresh_token):
    tokens = tokens_for(client)

    response = client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})

    if refresh_token:
        assert_refused(response)
    else:
        assert response.status_code == 400
    assert greet(client, tokens) == 200


def session_id_in(tokens):
    return unverified_claims(tokens["access_token"])["sid"]


def made_up_refresh_token(tokens):
    """The session's id, readable in any of its access tokens, and a secret of the right shape, never issued."""
    return f"{session_id_in(tokens)}.{secrets.token_urlsafe(32)}"


@pytest.mark.parametrize("secret", ["made up", "anything", ""], ids=["right shape", "short", "empty"])
def test_a_refresh_token_made_up_from_a_session_id_is_refused_and_ends_nothing(client, secret):
    tokens = tokens_for(client)
    made_up = made_up_refresh_token(tokens) if secret == "made up" else f"{session_id_in(tokens)}.{secret}"

    assert_refused(refresh(client, made_up))

    assert greet(client, tokens) == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize("made_up", [session_id_in, made_up_refresh_token], ids=["bare session id", "made-up secret"])
def test_revoking_a_session_id_without_its_secret_ends_nothing(client, made_up):
    tokens = tokens_for(client)

    assert revoke(client, made_up(tokens)).status_code == 200

    assert greet(client, tokens) == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_revoking_a_spent_refresh_token_ends_nothing(client):
    tokens = tokens_for(client)
    renewed = refresh(client, tokens["refresh_token"]).json()

    assert revoke(client, tokens["refresh_token"]).status_code == 200

    assert greet(client, renewed) == 200


def test_a_session_keeps_only_its_latest_spent_refresh_tokens_and_an_older_one_ends_nothing(client):
    tokens = tokens_for(client)
    spent = []
    for _ in range(400):
        spent.append(tokens["refresh_token"])
        tokens = refresh(client, tokens["refresh_token"]).json()

    assert count_rows(SpentRefreshToken) == sessions.SPENT_TOKENS_KEPT
    assert refresh(client, spent[0]).status_code == 401  # too old to be known: refused, and ends nothing
    assert greet(client, tokens) == 200
    assert refresh(client, spent[-sessions.SPENT_TOKENS_KEPT]).status_code == 401  # the oldest kept: ends the session
    assert greet(client, tokens) == 401


def test_spent_refresh_tokens_are_kept_only_while_their_session_lives(client):
    tokens = tokens_for(client)
    for _ in range(3):
        tokens = refresh(client, tokens["refresh_token"]).json()
    assert count_rows(SpentRefreshToken) == 3

    client.post("/auth/logout", headers=bearer(tokens["access_token"]))

    assert count_rows(SpentRefreshToken) == 0


@pytest.mark.parametrize("value", ["\x00", "\x00.x", f"{'A' * 22}.\x00{'A' * 42}", "%00"])
def test_a_nul_character_in_a_refresh_token_or_a_revocation_is_an_ordinary_refusal(client, value):
    """PostgreSQL refuses NUL in text: such a value must never reach a query."""
    tokens = tokens_for(client)

    assert_refused(refresh(client, value))
    assert revoke(client, value).status_code == 200
    assert greet(client, tokens) == 200


def test_a_refresh_without_a_refresh_token_is_400_invalid_request(client):
    response = client.post("/auth/token", data={"grant_type": "refresh_token"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"] == response.json()["error_description"]


@pytest.mark.parametrize("grant_type", ["client_credentials", "authorization_code", "PASSWORD", "x" * 100])
def test_an_unknown_grant_type_is_400_unsupported_grant_type(client, grant_type):
    tokens_for(client)

    response = client.post("/auth/token", data={"grant_type": grant_type, "username": "alice", "password": PASSWORD})

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    assert response.headers["Cache-Control"] == "no-store"


def test_the_password_grant_may_name_itself(client):
    sign_up(client)

    response = client.post("/auth/token", data={"grant_type": "password", "username": "alice", "password": PASSWORD})

    assert response.status_code == 200


def test_a_refresh_runs_no_bcrypt_and_is_not_throttled(client, bcrypt_runs, monkeypatch):
    monkeypatch.setattr(settings, "login_max_failures", 1)
    tokens = tokens_for(client)
    assert log_in(client, password="not the password").status_code == 401
    assert log_in(client).status_code == 429
    bcrypt_runs.clear()

    response = refresh(client, tokens["refresh_token"])

    assert response.status_code == 200
    assert bcrypt_runs == []


def test_a_refresh_token_is_stored_only_as_its_sha_256(client):
    tokens = tokens_for(client)
    secret = tokens["refresh_token"].split(".", 1)[1]

    with database.engine.connect() as connection:
        rows = [
            str(value)
            for table in ("users", "sessions", "login_failures")
            for row in connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 (names from this list)
            for value in row
        ]

    assert hashlib.sha256(tokens["refresh_token"].encode()).hexdigest() in rows
    assert not [value for value in rows if secret in value]
    assert len(secret) >= 43  # 256 bits in URL-safe base64


# The absolute end of a session


def test_a_session_ends_its_days_after_the_login_however_often_it_is_refreshed(client, clock, monkeypatch):
    monkeypatch.setattr(settings, "refresh_token_expire_days", 1)
    tokens = tokens_for(client)
    for _ in range(3):
        clock(7 * 3600)
        tokens = refresh(client, tokens["refresh_token"]).json()
        assert greet(client, tokens) == 200

    clock(3 * 3600)

    assert greet(client, tokens) == 401
    assert_refused(refresh(client, tokens["refresh_token"]))


def test_an_access_token_never_outlives_its_session(client, clock, monkeypatch):
    monkeypatch.setattr(settings, "refresh_token_expire_days", 1)
    monkeypatch.setattr(settings, "access_token_expire_minutes", 3 * 24 * 60)
    tokens = tokens_for(client)
    ends_at = unverified_claims(tokens["access_token"])["exp"]
    assert tokens["expires_in"] == 24 * 3600

    clock(23 * 3600)
    renewed = refresh(client, tokens["refresh_token"]).json()

    claims = unverified_claims(renewed["access_token"])
    assert claims["exp"] == ends_at
    assert renewed["expires_in"] == claims["exp"] - claims["iat"]
    assert 3599 <= renewed["expires_in"] <= 3600


def test_a_verified_token_is_still_checked_for_expiry_on_every_use(client, clock):
    tokens = tokens_for(client)
    assert greet(client, tokens) == 200

    clock(30 * 60 + 1)

    assert greet(client, tokens) == 401


def test_a_login_whose_account_was_deleted_after_its_password_was_checked_starts_no_session():
    with database.SessionLocal() as session:
        ghost = User(id=999, username="ghost", hashed_password="x", role="user")
        assert auth.start_session(session, ghost, "me account", auth.Client(address="", user_agent=None)) is None

    assert count_rows(LoginSession) == 0


def test_sessions_that_have_run_out_are_deleted_at_the_next_login(client, clock):
    tokens_for(client)
    clock(30 * 24 * 3600)

    assert log_in(client).status_code == 200

    assert count_rows(LoginSession) == 1


# Logout


def test_logout_ends_this_session_only(client):
    laptop = tokens_for(client)
    phone = log_in(client).json()

    response = client.post("/auth/logout", headers=bearer(laptop["access_token"]))

    assert response.status_code == 204
    assert response.content == b""
    assert greet(client, laptop) == 401
    assert_refused(refresh(client, laptop["refresh_token"]))
    assert greet(client, phone) == 200
    assert refresh(client, phone["refresh_token"]).status_code == 200


def test_logout_needs_a_live_token(client):
    tokens = tokens_for(client)
    client.post("/auth/logout", headers=bearer(tokens["access_token"]))

    assert client.post("/auth/logout").status_code == 401
    assert client.post("/auth/logout", headers=bearer(tokens["access_token"])).status_code == 401


# Revocation (RFC 7009)


def revoke(client, token, **fields):
    return client.post("/auth/revoke", data={"token": token, **fields})


@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
@pytest.mark.parametrize("with_hint", [True, False], ids=["with a hint", "without a hint"])
def test_revoking_either_token_ends_its_session(client, kind, with_hint):
    tokens = tokens_for(client)
    other = log_in(client).json()

    response = revoke(client, tokens[kind], **({"token_type_hint": kind} if with_hint else {}))

    assert response.status_code == 200
    assert greet(client, tokens) == 401
    assert_refused(refresh(client, tokens["refresh_token"]))
    assert greet(client, other) == 200


def test_revoking_an_expired_access_token_still_ends_its_session(client):
    tokens = tokens_for(client)
    expired = signed(claims_for(tokens["access_token"], exp=int(time.time()) - 60))

    assert revoke(client, expired).status_code == 200

    assert_refused(refresh(client, tokens["refresh_token"]))


@pytest.mark.parametrize(
    ("key", "algorithm", "kid"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES256", None),
        (ec.generate_private_key(ec.SECP256R1()), "ES256", "not-our-kid"),
        ("a secret of someone else's, 32 bytes", "HS256", None),
    ],
    ids=["signed with another key under our kid", "of another kid", "HMAC"],
)
def test_revoking_a_token_that_names_the_session_but_is_not_ours_ends_nothing(client, key, algorithm, kid):
    tokens = tokens_for(client)
    header = {"kid": kid} if kid else {}

    assert revoke(client, signed(claims_for(tokens["access_token"]), key, algorithm, **header)).status_code == 200

    assert greet(client, tokens) == 200


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "no-such-session.abc"], ids=["garbage", "looks like a JWT", "unknown session"]
)
def test_revoking_what_is_not_our_token_is_200_and_ends_nothing(client, token):
    tokens = tokens_for(client)

    response = revoke(client, token)

    assert response.status_code == 200
    assert greet(client, tokens) == 200


def test_revoking_a_token_of_ours_whose_sid_is_not_text_is_200_and_ends_nothing(client):
    tokens = tokens_for(client)
    forged = signed(claims_for(tokens["access_token"], sid=["not", "a", "session", "id"]))

    assert revoke(client, forged).status_code == 200
    assert greet(client, tokens) == 200


def test_revoking_without_a_token_is_400_invalid_request(client):
    response = client.post("/auth/revoke", data={"token_type_hint": "access_token"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# Password change


def change_password(client, tokens, current=PASSWORD, new=NEW_PASSWORD):
    return client.patch(
        "/users/me/password",
        json={"current_password": current, "new_password": new},
        headers=bearer(tokens["access_token"]),
    )


def test_a_password_change_ends_every_other_session_and_keeps_this_one(client):
    laptop = tokens_for(client)
    phone = log_in(client).json()

    response = change_password(client, laptop)

    assert response.status_code == 204
    assert greet(client, laptop) == 200
    assert refresh(client, laptop["refresh_token"]).status_code == 200
    assert greet(client, phone) == 401
    assert_refused(refresh(client, phone["refresh_token"]))
    assert log_in(client).status_code == 401
    assert log_in(client, password=NEW_PASSWORD).status_code == 200


def test_a_password_change_hashes_the_new_password_with_bcrypt(client, bcrypt_runs):
    tokens = tokens_for(client)
    bcrypt_runs.clear()

    change_password(client, tokens)

    assert bcrypt_runs == [PASSWORD.encode(), NEW_PASSWORD.encode()]
    with Session(database.engine) as session:
        stored = session.scalar(select(User.hashed_password))
    assert stored is not None
    assert passwords.password_context.verify(NEW_PASSWORD, stored)


def test_a_wrong_current_password_is_403_and_counted_until_429(client):
    tokens = tokens_for(client)

    answers = [change_password(client, tokens, current="not the password") for _ in range(5)]
    throttled = change_password(client, tokens)

    assert [answer.status_code for answer in answers] == [403] * 5
    assert answers[0].json() == {"detail": "The password is not correct"}
    assert throttled.status_code == 429
    assert "Retry-After" in throttled.headers
    assert log_in(client).status_code == 429
    assert greet(client, tokens) == 200


@pytest.mark.parametrize(
    ("new_password", "rule"),
    [("seven77", "string_too_short"), ("password1", "value_error"), ("ALICE-forever", "value_error")],
    ids=["too short", "common", "contains the username"],
)
def test_a_new_password_follows_the_sign_up_rules(client, bcrypt_runs, new_password, rule):
    tokens = tokens_for(client)
    bcrypt_runs.clear()

    response = change_password(client, tokens, new=new_password)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "new_password"], rule)
    assert new_password not in response.text
    assert bcrypt_runs == []
    assert log_in(client).status_code == 200


def every_place_taken():
    async def taken():
        limiter = CapacityLimiter(1)
        limiter.acquire_on_behalf_of_nowait("a request that is hashing")
        return limiter

    return anyio.run(taken)


def test_a_password_change_is_503_when_every_place_to_hash_is_taken(client, monkeypatch):
    tokens = tokens_for(client)
    monkeypatch.setattr(passwords, "places_to_hash", every_place_taken())

    response = change_password(client, tokens)

    monkeypatch.undo()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert log_in(client).status_code == 200


# Account deletion


def delete_account(client, tokens, password=PASSWORD):
    return client.request("DELETE", "/users/me", json={"password": password}, headers=bearer(tokens["access_token"]))


def test_deleting_the_account_ends_every_session_frees_the_name_and_never_reuses_the_id(client):
    tokens_for(client, "bob")
    laptop = tokens_for(client)
    phone = log_in(client).json()

    response = delete_account(client, laptop)

    assert response.status_code == 204
    for tokens in (laptop, phone):
        assert greet(client, tokens) == 401
        assert_refused(refresh(client, tokens["refresh_token"]))
    with Session(database.engine) as session:
        assert session.scalars(select(LoginSession.user_id)).all() == [1]  # bob's only
    again = sign_up(client)
    assert again.status_code == 201
    assert again.json()["id"] == 3
    assert greet(client, laptop) == 401


def test_a_wrong_password_does_not_delete_the_account_and_is_counted_until_429(client):
    tokens = tokens_for(client)

    answers = [delete_account(client, tokens, "not the password") for _ in range(5)]
    throttled = delete_account(client, tokens)

    assert [answer.status_code for answer in answers] == [403] * 5
    assert throttled.status_code == 429
    assert greet(client, tokens) == 200


# Upgrading from 1.0.0, which had no sessions


def release_1_0_schema():
    """The tables as release 1.0.0 made them."""
    metadata = MetaData()
    Table(
        "users",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("username", String(64), unique=True, index=True),
        Column("hashed_password", String(255)),
        sqlite_autoincrement=True,
    )
    Table(
        "login_failures",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("client_address", String(255)),
        Column("username", String(64)),
        Column("failed_at", Float, index=True),
        Index("ix_login_failures_address_username", "client_address", "username"),
    )
    return metadata


def test_the_new_routes_are_in_the_docs_and_those_that_need_a_token_show_the_lock(client):
    paths = client.get("/openapi.json").json()["paths"]
    locked = {
        (path, method): operation["security"][0]["OAuth2PasswordBearer"]
        for path, operations in paths.items()
        for method, operation in operations.items()
        if "security" in operation
    }

    assert locked["/auth/logout", "post"] == []  # any valid token: ending one's own session is always allowed
    assert locked["/users/me/password", "patch"] == locked["/users/me", "delete"] == ["account"]
    assert ("/auth/revoke", "post") not in locked
    assert set(paths["/auth/token"]["post"]["responses"]) >= {"200", "400", "401", "422", "429", "503"}
    assert set(paths["/auth/revoke"]["post"]["responses"]) >= {"200", "400", "503"}
    for path, method in (("/users/me/password", "patch"), ("/users/me", "delete")):
        assert set(paths[path][method]["responses"]) >= {"204", "401", "403", "422", "429", "503"}
