"""The README's walkthrough as a test: sign up, log in, the greeting, and what must fail.

Copy it beside main.py and run `pytest test_app.py`: it needs nothing else. FastAPI's TestClient calls the app
without a server, and the app gets a throwaway database of its own. The deeper tests are in tests/.
"""

import os
import tempfile
import time

# The app reads its settings as it is imported, so they come first. A whole-suite run has already set them up
# in tests/conftest.py, with a database of its own: this file then uses that one.
if "AUTH_DEMO_TEST_FOLDER" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/test_app.db"
os.environ.setdefault("BCRYPT_ROUNDS", "4")  # bcrypt's cheapest cost: a test hashes many passwords

import pytest
from fastapi.testclient import TestClient

import database
import main

PASSWORD = "correct horse"


@pytest.fixture
def client():
    """Every test starts from empty tables."""
    database.Base.metadata.drop_all(database.engine)
    database.Base.metadata.create_all(database.engine)
    with TestClient(main.app) as client:
        yield client


def sign_up(client, username="alice", password=PASSWORD):
    return client.post("/auth/", json={"username": username, "password": password})


def log_in(client, username="alice", password=PASSWORD):
    """The form that /docs' Authorize button sends: OAuth2's password grant, as form fields, not JSON."""
    return client.post("/auth/token", data={"username": username, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_sign_up_answers_the_new_users_id_and_name_and_nothing_else(client):
    response = sign_up(client)

    assert response.status_code == 201
    assert response.json() == {"id": 1, "username": "alice"}


def test_a_name_that_is_taken_is_409(client):
    sign_up(client)

    response = sign_up(client, password="another password")

    assert response.status_code == 409
    assert response.json() == {"detail": "Username already registered"}


def test_a_bad_username_is_422_naming_the_rule_and_never_repeating_the_password(client):
    response = sign_up(client, username="al")

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "username"]
    assert PASSWORD not in response.text


def test_log_in_with_the_form_to_get_an_access_token_and_a_refresh_token(client):
    sign_up(client)

    response = log_in(client)

    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 30 * 60
    assert tokens["access_token"].count(".") == 2  # a JWT: header, claims, signature
    assert tokens["refresh_token"]
    assert response.headers["Cache-Control"] == "no-store"  # no proxy keeps it


def test_the_access_token_opens_the_greeting_and_the_account(client):
    sign_up(client)
    token = log_in(client).json()["access_token"]

    assert client.get("/", headers=bearer(token)).json() == {"message": "Hello, alice with ID: 1!"}
    assert client.get("/users/me", headers=bearer(token)).json() == {"id": 1, "username": "alice"}


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(client):
    sign_up(client)

    wrong_password = log_in(client, password="wrong password")
    unknown_user = log_in(client, username="nobody")

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json()
    assert wrong_password.json()["detail"] == "Incorrect username or password"


def test_no_token_is_401_with_a_bearer_challenge(client):
    response = client.get("/")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Could not validate credentials"}


def test_a_token_that_is_not_ours_is_401_invalid_token(client):
    response = client.get("/", headers=bearer("not-a-token"))

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_an_expired_token_is_401_invalid_token(client, monkeypatch):
    sign_up(client)
    token = log_in(client).json()["access_token"]
    thirty_one_minutes_later = time.time() + 31 * 60
    monkeypatch.setattr(time, "time", lambda: thirty_one_minutes_later)

    response = client.get("/", headers=bearer(token))

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
