"""The two OAuth 2.0 client libraries Python users pick most, used against the running app as the README shows."""

import time

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError  # type: ignore[import-untyped]  # Authlib has no type hints
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession  # type: ignore[import-untyped]  # as above
from jose import jwt
from oauthlib.oauth2 import InvalidGrantError, LegacyApplicationClient
from requests_oauthlib import OAuth2Session

from auth import SECRET_KEY
from conftest import PASSWORD, start_server, stop_server


@pytest.fixture(scope="module")
def base_url():
    server, base_url = start_server()
    yield base_url
    stop_server(server)


@pytest.fixture
def alice(base_url):
    assert (
        requests.post(f"{base_url}/auth/", json={"username": "alice", "password": PASSWORD}, timeout=10).status_code
        == 201
    )


@pytest.fixture
def requests_oauthlib(base_url, monkeypatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on 127.0.0.1, for the test only
    return OAuth2Session(client=LegacyApplicationClient(client_id="demo"))


def test_requests_oauthlib_gets_a_token_that_opens_the_greeting(alice, base_url, requests_oauthlib):
    before = time.time()

    token = requests_oauthlib.fetch_token(f"{base_url}/auth/token", username="alice", password=PASSWORD)

    claims = jwt.get_unverified_claims(token["access_token"])
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == 1800
    assert before + 1800 - 1 <= token["expires_at"] <= time.time() + 1800 + 1  # oauthlib rounds the time
    assert abs(token["expires_at"] - claims["exp"]) <= 1
    greeting = requests_oauthlib.get(f"{base_url}/")
    assert greeting.json() == {"message": "Hello, alice with ID: 1!"}


def test_requests_oauthlib_raises_invalid_grant_for_a_wrong_password(alice, base_url, requests_oauthlib):
    with pytest.raises(InvalidGrantError) as raised:
        requests_oauthlib.fetch_token(f"{base_url}/auth/token", username="alice", password="not the password")

    assert raised.value.description == "Incorrect username or password"


def test_authlib_gets_a_token_that_is_not_expired_and_opens_the_greeting(alice, base_url):
    client = AuthlibSession()

    token = client.fetch_token(f"{base_url}/auth/token", username="alice", password=PASSWORD)

    claims = jwt.decode(token["access_token"], SECRET_KEY, algorithms=["HS256"])
    assert token.is_expired() is False
    assert abs(token["expires_at"] - claims["exp"]) <= 1
    assert client.get(f"{base_url}/").json() == {"message": "Hello, alice with ID: 1!"}


def test_authlib_raises_invalid_grant_for_a_wrong_password(alice, base_url):
    with pytest.raises(OAuthError) as raised:
        AuthlibSession().fetch_token(f"{base_url}/auth/token", username="alice", password="not the password")

    assert raised.value.error == "invalid_grant"
    assert raised.value.description == "Incorrect username or password"
