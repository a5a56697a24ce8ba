"""Sign-up, login and tokens in depth: every rule and every refusal of the walkthrough that test_app.py follows."""

import base64
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urljoin

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from passlib.context import CryptContext
from sqlalchemy import MetaData, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

import auth
import database
import main
import passwords
from config import settings
from conftest import (
    PASSWORD,
    PROJECT,
    TEST_FOLDER,
    bearer,
    child_env,
    claims_for,
    count_rows,
    free_port,
    log_in,
    politely,
    postgres_only,
    run_python,
    serve,
    sign_up,
    signed,
    sqlite_only,
    start_server,
    stop_server,
    token_for,
    unverified_claims,
    verified,
)
from models import User


def stored_hash(username):
    with Session(database.engine) as session:
        return session.scalar(select(User.hashed_password).where(User.username == username))


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# Sign up


def test_sign_up_returns_201_with_id_and_username_only(client):
    response = sign_up(client)

    assert response.status_code == 201
    assert response.json() == {"id": 1, "username": "alice"}


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"username": "al", "password": PASSWORD}, "username", "string_too_short"),
        ({"username": "a" * 65, "password": PASSWORD}, "username", "string_too_long"),
        ({"username": "alice smith", "password": PASSWORD}, "username", "string_pattern_mismatch"),
        ({"username": "' OR 1=1 --", "password": PASSWORD}, "username", "string_pattern_mismatch"),
        ({"username": "alice", "password": "short"}, "password", "string_too_short"),
        ({"username": "alice", "password": "€" * 25}, "password", "value_error"),
        ({"username": "alice", "password": "a" * 73}, "password", "string_too_long"),
        ({"username": "alice", "password": "nul\x00character"}, "password", "value_error"),
        ({"username": "alice"}, "password", "missing"),
        ({"password": PASSWORD}, "username", "missing"),
        ({"username": 12345, "password": PASSWORD}, "username", "string_type"),
        ({"username": "alice", "password": ["not", "a", "string"]}, "password", "string_type"),
        ({"username": "alice", "password": PASSWORD, "is_admin": True}, "is_admin", "extra_forbidden"),
    ],
)
def test_sign_up_refuses_invalid_input_with_the_rule_that_failed(client, body, field, rule):
    response = client.post("/auth/", json=body)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == rule
    assert error["msg"]
    assert count_rows(User) == 0


def test_password_over_72_bytes_says_why(client):
    response = sign_up(client, password="€" * 25)

    assert "at most 72 bytes" in response.json()["detail"][0]["msg"]


def test_duplicate_username_returns_409(client):
    sign_up(client)

    response = sign_up(client, password="another password")

    assert response.status_code == 409
    assert response.json() == {"detail": "Username already registered"}
    assert count_rows(User) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("caf\u00e9", "cafe\u0301"),  # composed and decomposed é
        ("alice", "\uff41\uff4c\uff49\uff43\uff45"),  # full-width letters
    ],
)
def test_look_alike_usernames_are_one_account(client, first, second):
    assert sign_up(client, first).status_code == 201

    assert sign_up(client, second).status_code == 409
    assert log_in(client, second).status_code == 200


@pytest.mark.parametrize("username", ["Ωmega", "日本語", "हिन्दी", "o.neil", "a_b-c.d"])
def test_letters_of_any_script_are_allowed(client, username):
    response = sign_up(client, username)

    assert response.status_code == 201
    assert response.json()["username"] == username


@pytest.mark.parametrize(
    "username",
    ["alice\u200d", "alice\u034f", "alice\ufe0f", "alice\u200c", "alice\u180b", "ali\u17b4ce"],
)
def test_a_new_username_with_an_invisible_character_is_refused(client, username):
    sign_up(client)

    response = sign_up(client, username, "another password")

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, Username must not contain invisible characters"
    assert count_rows(User) == 1


@pytest.mark.parametrize("username", ["\u00adalice", "al\u2060ice", "alice\U000e0041", "al\ufeffice"])
def test_a_new_username_with_an_invisible_character_that_is_no_letter_is_refused_by_the_username_pattern(
    client, username
):
    response = sign_up(client, username)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "string_pattern_mismatch"


@pytest.mark.parametrize("username", ["\u0301alice", "a.\u0301b", "al_\u0308ice", "bob-\u20dd"])
def test_a_new_username_with_a_mark_on_no_letter_is_refused(client, username):
    response = sign_up(client, username)

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == (
        "Value error, Username must not contain an accent or other mark without a letter before it"
    )


@pytest.mark.parametrize("username", ["ali\u0301ce", "\u0939\u093f\u0928\u094d\u0926\u0940", "a1\u0301"])
def test_marks_on_a_letter_or_digit_are_allowed(client, username):
    assert sign_up(client, username).status_code == 201


@pytest.mark.parametrize(("first", "second"), [("alice", "Alice"), ("Alice", "ALICE"), ("stra\u00dfe", "STRASSE")])
def test_a_new_username_that_differs_only_by_case_is_taken(client, first, second):
    assert sign_up(client, first).status_code == 201

    response = sign_up(client, second, "another password")

    assert response.status_code == 409
    assert response.json() == {"detail": "Username already registered"}
    assert log_in(client, second, "another password").status_code == 401


def test_logins_stay_by_exact_name(client):
    sign_up(client, "Alice")

    assert log_in(client, "Alice").status_code == 200
    assert log_in(client, "alice").status_code == 401


def test_spaces_in_a_password_count_and_look_alike_forms_are_one_password(client):
    sign_up(client, password=" ｐａｓｓｗｏｒｄ ")

    assert log_in(client, password="password").status_code == 401
    assert log_in(client, password="ｐａｓｓｗｏｒｄ").status_code == 401
    assert log_in(client, password=" ｐａｓｓｗｏｒｄ ").status_code == 200
    assert log_in(client, password=" password ").status_code == 200


COMPOSED, DECOMPOSED = "caf\u00e9 au lait!", "cafe\u0301 au lait!"


@pytest.mark.parametrize(("typed_at_sign_up", "typed_at_login"), [(COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED)])
def test_a_password_typed_on_another_device_logs_in(client, typed_at_sign_up, typed_at_login):
    sign_up(client, password=typed_at_sign_up)

    assert log_in(client, password=typed_at_login).status_code == 200


def test_an_account_whose_password_was_hashed_as_typed_logs_in_and_is_rehashed_normalized(client, bcrypt_runs):
    sign_up(client, password=COMPOSED)
    with Session(database.engine) as session:  # as release 1.1.0 stored it, without normalizing
        session.execute(update(User).values(hashed_password=passwords.password_context.hash(DECOMPOSED)))
        session.commit()

    assert log_in(client, password=DECOMPOSED).status_code == 200
    assert passwords.password_context.verify(COMPOSED, stored_hash("alice"))
    assert log_in(client, password=COMPOSED).status_code == 200


# Log in

WRONG_CREDENTIALS = {
    "detail": "Incorrect username or password",
    "error": "invalid_grant",
    "error_description": "Incorrect username or password",
}


def test_log_in_returns_a_bearer_token_with_the_expected_claims(client):
    sign_up(client)
    before = int(time.time())

    response = log_in(client)

    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "bearer"
    assert body["scope"] == "me account"
    claims = verified(client, body["access_token"])
    assert claims.keys() == {"iss", "aud", "sub", "client_id", "id", "sid", "iat", "exp", "jti", "scope"}
    assert (claims["iss"], claims["aud"]) == ("http://127.0.0.1:8000", "fastapi-jwt-auth-demo")
    assert claims["scope"] == "me account"
    assert claims["sub"] == "alice"
    assert claims["id"] == 1
    assert claims["sid"] == body["refresh_token"].split(".")[0]
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert abs(claims["exp"] - (time.time() + 30 * 60)) < 5
    assert body["expires_in"] == claims["exp"] - claims["iat"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


def test_token_lifetime_follows_access_token_expire_minutes(client, monkeypatch):
    monkeypatch.setattr(settings, "access_token_expire_minutes", 5)
    token = token_for(client)

    claims = unverified_claims(token)

    assert claims["exp"] - claims["iat"] == 5 * 60


def test_wrong_password_and_unknown_user_get_identical_401s(client):
    sign_up(client)

    wrong_password = log_in(client, password="not the password")
    unknown_user = log_in(client, username="nobody")

    for response in (wrong_password, unknown_user):
        assert response.status_code == 401
        assert response.json() == WRONG_CREDENTIALS
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Pragma"] == "no-cache"
    assert wrong_password.headers == unknown_user.headers


def test_wrong_password_and_unknown_user_each_run_bcrypt_exactly_once(client, bcrypt_runs):
    sign_up(client)
    bcrypt_runs.clear()

    log_in(client, password="not the password")
    assert len(bcrypt_runs) == 1

    log_in(client, username="nobody")
    assert len(bcrypt_runs) == 2


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", PASSWORD + "x" * 72),
        ("alice", "nul\x00character"),
        ("ali\x00ce", PASSWORD),
        ("a" * 65, PASSWORD),
        ("al", PASSWORD),
    ],
    ids=[
        "password over 72 bytes",
        "NUL in the password",
        "NUL in the username",
        "too long a username",
        "too short a username",
    ],
)
def test_credentials_that_sign_up_refuses_get_a_plain_401_without_bcrypt(client, bcrypt_runs, username, password):
    sign_up(client)
    bcrypt_runs.clear()

    response = log_in(client, username, password)

    assert response.status_code == 401
    assert response.json() == WRONG_CREDENTIALS
    assert bcrypt_runs == []


def test_passwords_sharing_their_first_72_bytes_cannot_both_log_in(client):
    password = "p" * 72
    sign_up(client, password=password)

    assert log_in(client, password=password + "!").status_code == 401
    assert log_in(client, password=password).status_code == 200


def test_stored_hash_is_upgraded_at_login_when_the_cost_rises(client, monkeypatch):
    sign_up(client)
    assert stored_hash("alice").startswith("$2b$04$")

    cost_5 = CryptContext(schemes=["bcrypt"], deprecated="auto", bcrypt__rounds=5)
    monkeypatch.setattr(passwords, "password_context", cost_5)
    assert log_in(client).status_code == 200

    assert stored_hash("alice").startswith("$2b$05$")
    assert log_in(client).status_code == 200


def test_sql_in_a_login_username_is_plain_text(client):
    sign_up(client)

    response = log_in(client, username="' OR 1=1 --")

    assert response.status_code == 401
    assert count_rows(User) == 1


# Protected routes


def test_greeting_with_a_valid_token(client):
    token = token_for(client)

    response = client.get("/", headers=bearer(token))

    assert response.status_code == 200
    assert response.json() == {"message": "Hello, alice with ID: 1!"}


def test_users_me_with_a_valid_token(client):
    token = token_for(client)

    response = client.get("/users/me", headers=bearer(token))

    assert response.status_code == 200
    assert response.json() == {"id": 1, "username": "alice"}


NO_TOKEN_HEADERS = {
    "no header": None,
    "Bearer without a token": "Bearer ",
    "Basic credentials": "Basic " + base64.b64encode(b"alice:correct horse").decode(),
}


@pytest.mark.parametrize("header", NO_TOKEN_HEADERS.values(), ids=NO_TOKEN_HEADERS.keys())
@pytest.mark.parametrize("path", ["/", "/users/me"])
def test_no_token_gets_401_with_a_plain_bearer_challenge(client, path, header):
    token_for(client)

    response = client.get(path, headers={"Authorization": header} if header else {})

    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token", error_description="Could not validate credentials"'
BAD_AUTHORIZATION_HEADERS = {
    "garbage": "Bearer not-a-token",
    "bad base64": "Bearer !!!.@@@.###",
    "bad JSON inside": "Bearer " + base64.urlsafe_b64encode(b"{not json").decode() + ".e30.c2ln",
    "alg none": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'alice', 'id': 1, 'exp': 2**40})}.",
}


@pytest.mark.parametrize("header", BAD_AUTHORIZATION_HEADERS.values(), ids=BAD_AUTHORIZATION_HEADERS.keys())
@pytest.mark.parametrize("path", ["/", "/users/me"])
def test_bad_authorization_header_gets_401_invalid_token(client, path, header):
    token_for(client)

    response = client.get(path, headers={"Authorization": header})

    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


def tampered(token):
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    return f"{header}.{b64(claims)}.{signature}"


ANOTHER_KEY = ec.generate_private_key(ec.SECP256R1())
BAD_TOKENS = {
    "tampered payload": tampered,
    "signed with another key under our kid": lambda token: signed(claims_for(token), key=ANOTHER_KEY),
    "without kid": lambda token: signed(claims_for(token), kid=None),
    "without typ at+jwt": lambda token: signed(claims_for(token), typ=None),
    "of another issuer": lambda token: signed(claims_for(token, iss="https://elsewhere.example")),
    "for another audience": lambda token: signed(claims_for(token, aud="another-service")),
    "without jti": lambda token: signed(claims_for(token, jti=None)),
    "expired": lambda token: signed(claims_for(token, exp=datetime.now(UTC) - timedelta(seconds=1))),
    "without exp": lambda token: signed(claims_for(token, exp=None)),
    "without sub": lambda token: signed(claims_for(token, sub=None)),
    "without id": lambda token: signed(claims_for(token, id=None)),
    "without sid, as before sessions": lambda token: signed(claims_for(token, sid=None)),
    "without scope, as before scopes": lambda token: signed(claims_for(token, scope=None)),
    "for a user who never existed": lambda token: signed(claims_for(token, id=999, sub="ghost")),
    "whose sub does not match the id": lambda token: signed(claims_for(token, sub="bob")),
    "of a session that never existed": lambda token: signed(claims_for(token, sid="no-such-session")),
}


def test_a_token_we_sign_with_the_real_claims_is_accepted_so_each_bad_token_fails_for_its_change(client):
    token = token_for(client)

    assert client.get("/", headers=bearer(signed(claims_for(token)))).status_code == 200


@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_token_gets_401_invalid_token(client, make_token):
    token = token_for(client)

    response = client.get("/", headers=bearer(make_token(token)))

    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


def with_added_to_signature(token, characters, at=10):
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{signature[:at]}{characters}{signature[at:]}"


@pytest.mark.parametrize("characters", ["!", "!!!!", "~~~~", "****", "====", "++++", "////"])
def test_a_valid_token_with_characters_added_to_its_signature_gets_401(client, characters):
    """Only base64url characters, checked before any decoding: no other spelling of a token is ever kept."""
    token = token_for(client)

    response = client.get("/", headers=bearer(with_added_to_signature(token, characters)))

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_thousands_of_spellings_of_one_token_are_refused_and_never_kept(client):
    token = token_for(client)
    assert client.get("/", headers=bearer(token)).status_code == 200
    kept = auth.verified_claims.cache_info().currsize

    answers = {
        client.get("/", headers=bearer(with_added_to_signature(token, "!!!!" * (n // 40 + 1), at=n % 40))).status_code
        for n in range(2048)
    }

    assert answers == {401}
    assert auth.verified_claims.cache_info().currsize == kept


def test_a_token_of_ours_longer_than_the_cap_gets_401(client):
    token = token_for(client)
    long_token = signed(claims_for(token, padding="x" * auth.MAX_TOKEN_LENGTH))

    assert client.get("/", headers=bearer(signed(claims_for(token, padding="x" * 100)))).status_code == 200
    assert client.get("/", headers=bearer(long_token)).status_code == 401


def test_token_of_a_deleted_user_gets_401(client):
    token = token_for(client)
    with Session(database.engine) as session:
        session.delete(session.scalar(select(User)))
        session.commit()

    response = client.get("/", headers=bearer(token))

    assert response.status_code == 401


def test_python_jose_and_ecdsa_are_gone(client):
    """PyJWT with cryptography signs and verifies: python-jose, and the ecdsa it brought (CVE-2024-23342), are not
    even imported."""
    token_for(client)
    assert "jose" not in sys.modules
    assert "ecdsa" not in sys.modules


def test_docs_authorize_button_logs_in_at_the_declared_token_url(client):
    sign_up(client)
    schema = client.get("/openapi.json").json()
    [scheme] = schema["components"]["securitySchemes"].values()
    token_url = urljoin("http://testserver/docs", scheme["flows"]["password"]["tokenUrl"])

    authorize = client.post(
        token_url, data={"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": ""}
    )

    assert token_url == "http://testserver/auth/token"
    assert schema["paths"]["/"]["get"]["security"] == [{"OAuth2PasswordBearer": ["me"]}]
    assert scheme["flows"]["password"]["scopes"] == {  # the checkboxes of the Authorize dialog
        "me": "Read your own account: GET /, GET /users/me and your sessions",
        "account": "Change your password, delete your account, end your sessions",
        "admin": "Manage every account (administrators only)",
    }
    assert authorize.json()["scope"] == "me account"
    assert client.get("/docs").status_code == 200
    assert client.get("/", headers=bearer(authorize.json()["access_token"])).status_code == 200


# Bad input


def test_one_megabyte_username_or_password_is_refused_as_too_large_before_hashing(client, bcrypt_runs):
    huge = "a" * 1_000_000
    answers = [sign_up(client, username=huge), sign_up(client, password=huge), log_in(client, password=huge)]

    for response in answers:
        assert response.status_code == 413
        assert response.json() == {"detail": "Request body too large: the limit is 4096 bytes"}
    assert bcrypt_runs == []
    assert count_rows(User) == 0


@pytest.mark.parametrize(
    ("path", "request_options"),
    [
        ("/auth/", {"content": b'{"username": "alice", ', "headers": {"Content-Type": "application/json"}}),
        ("/auth/", {"data": {"username": "alice", "password": PASSWORD}}),
        ("/auth/token", {"json": {"username": "alice", "password": PASSWORD}}),
    ],
    ids=["malformed JSON", "form sent to the JSON endpoint", "JSON sent to the form endpoint"],
)
def test_malformed_requests_get_422_with_a_detail(client, path, request_options):
    response = client.post(path, **request_options)

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("form", "missing"),
    [({"username": "alice"}, ["password"]), ({"password": PASSWORD}, ["username"]), ({}, ["username", "password"])],
)
def test_a_login_without_username_or_password_gets_fastapis_422_for_each_missing_field(client, form, missing):
    response = client.post("/auth/token", data=form)

    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"type": "missing", "loc": ["body", name], "msg": "Field required"} for name in missing]
    }


def test_passwords_and_hashes_never_appear_in_answers_or_logs(client, caplog):
    caplog.set_level("DEBUG")
    secret = "my-secret-password"
    answers = [
        sign_up(client, password=secret),
        sign_up(client, password=secret),
        sign_up(client, username="al", password=secret),
        sign_up(client, password=secret + "€" * 30),
        log_in(client, password=secret),
        log_in(client, password=secret + "-wrong"),
    ]
    token = answers[4].json()["access_token"]
    answers += [client.get("/", headers=bearer(token)), client.get("/users/me", headers=bearer(token))]

    hashed = stored_hash("alice")
    for text in [answer.text for answer in answers] + [caplog.text]:
        assert secret not in text
        assert hashed not in text
        assert hashed[7:29] not in text  # the salt


# Concurrency, faults and restarts


def test_concurrent_duplicate_signups_give_exactly_one_account(client):
    start = threading.Barrier(20)

    def attempt(number):
        start.wait()
        return number, politely(sign_up, client, "racer", f"password-{number}").status_code

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))

    statuses = sorted(status for _, status in results)
    assert statuses == [201] + [409] * 19
    [winner] = [number for number, status in results if status == 201]
    assert log_in(client, "racer", f"password-{winner}").status_code == 200
    assert log_in(client, "racer", f"password-{(winner + 1) % 20}").status_code == 401
    assert count_rows(User) == 1


def test_concurrent_distinct_signups_lose_nobody(client):
    def sign_up_ten(thread):
        return [politely(sign_up, client, f"user-{thread}-{number}").status_code for number in range(10)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [status for batch in pool.map(sign_up_ten, range(8)) for status in batch]

    assert statuses == [201] * 80
    assert count_rows(User) == 80


def test_a_failed_request_leaves_no_lock_and_no_half_written_user(monkeypatch):
    def flush_then_fail(session):
        session.flush()
        raise RuntimeError("the database went away")

    monkeypatch.setattr(Session, "commit", flush_then_fail)
    with TestClient(main.app, raise_server_exceptions=False) as client:
        assert sign_up(client).status_code == 500
    monkeypatch.undo()

    assert isinstance(database.engine.pool, QueuePool)
    assert database.engine.pool.checkedout() == 0
    assert count_rows(User) == 0
    with TestClient(main.app) as client:
        assert sign_up(client, "bob").status_code == 201


def test_login_hashing_does_not_hold_up_other_requests(client, park_logins):
    token = token_for(client, "bob")
    hashing, may_finish = park_logins()
    with ThreadPoolExecutor(2) as pool:
        login = pool.submit(log_in, client, "bob")
        assert hashing.wait(timeout=10)
        greeting = pool.submit(client.get, "/", headers=bearer(token))
        answered_while_hashing = greeting.result(timeout=5).status_code
        may_finish.set()
        assert login.result(timeout=10).status_code == 200
    assert answered_while_hashing == 200


RESTARTED_APP = """
import os
from fastapi.testclient import TestClient
import main
with TestClient(main.app) as client:
    greeting = client.get("/", headers={"Authorization": "Bearer " + os.environ["TOKEN"]})
    login = client.post("/auth/token", data={"username": "alice", "password": "correct horse"})
    print(greeting.status_code, login.status_code)
"""


def test_users_and_tokens_survive_a_restart(client):
    token = token_for(client)

    restarted = run_python(RESTARTED_APP, TOKEN=token)

    assert restarted.stdout.split() == ["200", "200"], restarted.stderr


# Configuration


SECRET_LOOKING = {
    "a long hex string": r"\b[0-9a-fA-F]{32,}\b",
    "a signed JWT": r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]{20,}",
    "a private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
}


def test_no_file_in_the_repository_holds_a_secret():
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=PROJECT, capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()) != PROJECT:
        pytest.skip("not a git checkout of the project: nothing to say about what the repository holds")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, text=True, check=True)
    files = [PROJECT / name for name in listing.stdout.split("\0") if name]
    assert PROJECT / "auth.py" in files

    found = [
        f"{path.name}: {what}"
        for path in files
        for what, pattern in SECRET_LOOKING.items()
        if re.search(pattern, path.read_text(errors="replace"))
    ]
    assert found == []


def test_without_secret_key_each_process_makes_its_own_and_warns():
    code = "import keys; print(keys.SECRET_KEY)"
    first, second = run_python(code, SECRET_KEY=None), run_python(code, SECRET_KEY=None)

    assert first.returncode == second.returncode == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert first.stdout != second.stdout
    assert first.stderr == (
        "SECRET_KEY is not set: using a random key, so the signing keys are made anew and access tokens stop "
        "working when the app restarts (refresh tokens go on); put a key in .env with: "
        "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env\n"
    )


def test_bcrypt_cost_defaults_to_12():
    code = "import passwords; print(passwords.settings.bcrypt_rounds, passwords.DUMMY_HASH[:7])"
    result = run_python(code, BCRYPT_ROUNDS=None)

    assert result.stdout.split() == ["12", "$2b$12$"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "soon",
            "ACCESS_TOKEN_EXPIRE_MINUTES must be a whole number from 1 to 525600, not 'soon'; "
            "change it in the environment or in .env",
        ),
        (
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "0",
            "ACCESS_TOKEN_EXPIRE_MINUTES must be a whole number from 1 to 525600, not '0'; "
            "change it in the environment or in .env",
        ),
        (
            "SECRET_KEY",
            "too-short",
            "SECRET_KEY must be at least 32 characters; make one with: "
            "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env",
        ),
        (
            "ALGORITHM",
            "HS256",
            "ALGORITHM must be ES256 or RS256, not 'HS256'; change it in the environment or in .env",
        ),
        (
            "BCRYPT_ROUNDS",
            "3",
            "BCRYPT_ROUNDS must be a whole number from 4 to 31, not '3'; change it in the environment or in .env",
        ),
        (
            "DATABASE_URL",
            "not a url",
            "DATABASE_URL is not a database URL: use e.g. sqlite:///./auth.db or postgresql://user:password@host/dbname",
        ),
        (
            "DATABASE_URL",
            "postgresql://user:hunter2hunter2@host:port/db",
            "DATABASE_URL is not a database URL: use e.g. sqlite:///./auth.db or postgresql://user:password@host/dbname",
        ),
        (
            "DATABASE_URL",
            "nosuchdb://user:hunter2hunter2@host/db",
            "DATABASE_URL: SQLAlchemy knows no database called 'nosuchdb'; use sqlite:///... or postgresql://...",
        ),
        (
            "DATABASE_URL",
            "mysql://user:hunter2hunter2@host/db",
            "DATABASE_URL: the driver for 'mysql' is not installed (MySQLdb); "
            'for PostgreSQL run: pip install -e ".[postgres]"',
        ),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(variable, value, message):
    result = run_python("import main", **{variable: value})

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr
    assert result.stderr == message + "\n"
    assert "hunter2" not in result.stderr


def test_unreachable_database_stops_start_up_with_a_clear_message():
    result = run_python(
        f"import runpy; runpy.run_path({str(PROJECT / 'main.py')!r}, run_name='__main__')",
        DATABASE_URL=f"sqlite:///{TEST_FOLDER}/no-such-folder/auth.db",
        PORT=str(free_port()),
    )

    assert result.returncode == 1
    assert result.stderr == "Cannot open the database in DATABASE_URL: unable to open database file\n"


def test_uvicorn_stops_with_one_line_when_the_database_cannot_be_opened():
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(free_port())],
        env=child_env(DATABASE_URL=f"sqlite:///{TEST_FOLDER}/no-such-folder/auth.db"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "Cannot open the database in DATABASE_URL: unable to open database file"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_sqlite_database_in_memory_works_for_the_life_of_the_process(url):
    result = run_python(
        "from fastapi.testclient import TestClient; import main\n"
        "with TestClient(main.app) as client:\n"
        "    client.post('/auth/', json={'username': 'alice', 'password': 'correct horse'})\n"
        "    token = client.post('/auth/token', data={'username': 'alice', 'password': 'correct horse'}).json()\n"
        "    print(client.get('/', headers={'Authorization': 'Bearer ' + token['access_token']}).json())",
        DATABASE_URL=url,
    )

    assert result.stdout == "{'message': 'Hello, alice with ID: 1!'}\n", result.stderr


def test_port_setting_is_checked():
    result = run_python(
        f"import runpy; runpy.run_path({str(PROJECT / 'main.py')!r}, run_name='__main__')", PORT="eighty"
    )

    assert result.returncode == 1
    assert "PORT must be a whole number from 1 to 65535" in result.stderr
    assert result.stderr == (
        "PORT must be a whole number from 1 to 65535, not 'eighty'; change it in the environment or in .env\n"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgres://me:pw@db.example.com/app",
        "postgresql://me:pw@db.example.com/app",
        "postgresql+psycopg://me:pw@db.example.com/app",
    ],
)
def test_hosting_provider_postgres_urls_use_psycopg_3(url):
    parsed = database.parse_database_url(url)

    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == ("me", "pw", "db.example.com", "app")


def test_sqlite_urls_are_kept_as_they_are():
    assert database.parse_database_url("sqlite:///./auth.db").drivername == "sqlite"


@sqlite_only
def test_sqlite_waits_for_the_writer_lock_uses_wal_and_checks_foreign_keys():
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@postgres_only
def test_postgres_engine_uses_psycopg_3_and_pings_connections():
    assert database.engine.dialect.driver == "psycopg"
    assert database.engine.pool._pre_ping is True


ACCESS_LOG_WITH_PROCESS_ID = {
    "version": 1,
    "formatters": {
        "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": "%(process)d %(request_line)s %(status_code)s"}
    },
    "handlers": {"access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"}},
    "loggers": {"uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False}},
}


@postgres_only
def test_two_workers_share_tokens_honour_each_others_logout_and_allow_one_account_per_name():
    every_table = MetaData()
    every_table.reflect(database.engine)
    every_table.drop_all(database.engine)  # Alembic's own too: the workers find an empty database
    log_config = Path(TEST_FOLDER, "log-config.json")
    log_config.write_text(json.dumps(ACCESS_LOG_WITH_PROCESS_ID))
    server, base_url = start_server("--workers", "2", "--log-config", str(log_config))
    try:
        assert httpx2.post(f"{base_url}/auth/", json={"username": "alice", "password": PASSWORD}).status_code == 201
        token = httpx2.post(f"{base_url}/auth/token", data={"username": "alice", "password": PASSWORD}).json()[
            "access_token"
        ]
        greetings = [httpx2.get(f"{base_url}/", headers=bearer(token)).status_code for _ in range(30)]
        logout = httpx2.post(f"{base_url}/auth/logout", headers=bearer(token)).status_code
        after_logout = [httpx2.get(f"{base_url}/", headers=bearer(token)).status_code for _ in range(30)]

        start = threading.Barrier(10)

        def attempt(number):
            start.wait()
            return httpx2.post(
                f"{base_url}/auth/", json={"username": "racer", "password": f"password-{number}"}
            ).status_code

        with ThreadPoolExecutor(10) as pool:
            race = sorted(pool.map(attempt, range(10)))
    finally:
        output = stop_server(server)

    assert greetings == [200] * 30
    assert (logout, after_logout) == (204, [401] * 30)
    assert race == [201] + [409] * 9
    for status in (200, 401):
        workers = set(re.findall(rf"^(\d+) GET / HTTP/1.1 {status}", output, re.MULTILINE))
        assert len(workers) == 2, output


SERVE_WITHOUT_SERVING = """
import runpy, sys, uvicorn
uvicorn.run = lambda app, **options: print(options)
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_python_main_py_listens_on_127_0_0_1_port_8000_by_default():
    result = run_python(f"import sys; sys.argv[1:] = [{str(PROJECT / 'main.py')!r}]\n" + SERVE_WITHOUT_SERVING)

    assert result.stdout == "{'host': '127.0.0.1', 'port': 8000}\n", result.stderr


def test_python_main_py_listens_where_host_and_port_say():
    code = f"import sys; sys.argv[1:] = [{str(PROJECT / 'main.py')!r}]\n" + SERVE_WITHOUT_SERVING

    result = run_python(code, HOST="::1", PORT="8123")

    assert result.stdout == "{'host': '::1', 'port': 8123}\n", result.stderr


def test_python_main_py_serves_the_app():
    port = free_port()
    server, base_url = serve([str(PROJECT / "main.py")], port, child_env(PORT=str(port)))
    try:
        answer = httpx2.get(f"{base_url}/openapi.json")
    finally:
        output = stop_server(server)

    assert answer.json()["info"]["title"] == "FastAPI JWT auth demo", output
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output


def test_the_default_database_is_auth_db_in_the_working_folder():
    workdir = tempfile.mkdtemp(dir=TEST_FOLDER)

    result = run_python("import main, database; print(database.engine.url)", workdir, DATABASE_URL=None)

    assert result.stdout == "sqlite:///./auth.db\n", result.stderr
    assert Path(workdir, "auth.db").is_file()


@pytest.mark.parametrize(
    ("username", "password"),
    [("abc", PASSWORD), ("a" * 64, PASSWORD), ("alice", "8 chars!"), ("alice", "\u00e9" * 36)],
    ids=["3-character name", "64-character name", "8-character password", "72-byte password"],
)
def test_the_shortest_and_longest_valid_credentials_sign_up_and_log_in(client, username, password):
    assert len(password.encode()) in (8, 72, len(PASSWORD))

    assert sign_up(client, username, password).json() == {"id": 1, "username": username}
    assert log_in(client, username, password).status_code == 200


def test_usernames_are_unique_and_indexed():
    [index] = [
        index for index in inspect(database.engine).get_indexes("users") if index["column_names"] == ["username"]
    ]

    assert index["unique"]


def test_the_openapi_document_is_the_one_documented(client):
    """What a tester sees in /docs: routes, answers, models, descriptions and examples, compared whole."""
    expected = json.loads((PROJECT / "docs" / "openapi.json").read_text())

    assert client.get("/openapi.json").json() == expected
