"""The two OAuth 2.0 client libraries Python users pick most, used against the running app as the README shows."""

import time

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError  # type: ignore[import-untyped]  # Authlib has no type hints
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession  # type: ignore[import-untyped]  # as above
from oauthlib.oauth2 import InvalidGrantError, LegacyApplicationClient
from requests_oauthlib import OAuth2Session

from conftest import PASSWORD, child_env, start_server, stop_server, unverified_claims


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

    claims = unverified_claims(token["access_token"])
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

    claims = unverified_claims(token["access_token"])
    assert token.is_expired() is False
    assert abs(token["expires_at"] - claims["exp"]) <= 1
    assert client.get(f"{base_url}/").json() == {"message": "Hello, alice with ID: 1!"}


def test_authlib_raises_invalid_grant_for_a_wrong_password(alice, base_url):
    with pytest.raises(OAuthError) as raised:
        AuthlibSession().fetch_token(f"{base_url}/auth/token", username="alice", password="not the password")

    assert raised.value.error == "invalid_grant"
    assert raised.value.description == "Incorrect username or password"


@pytest.fixture(scope="module")
def short_lived_url():
    """A server whose access tokens last one minute: inside Authlib's 60 s leeway, so it refreshes before each use."""
    server, base_url = start_server(env=child_env(ACCESS_TOKEN_EXPIRE_MINUTES="1"))
    yield base_url
    stop_server(server)


def test_authlib_refreshes_by_itself_when_the_access_token_is_about_to_expire(short_lived_url):
    requests.post(f"{short_lived_url}/auth/", json={"username": "alice", "password": PASSWORD}, timeout=10)
    updated = []
    client = AuthlibSession(
        token_endpoint=f"{short_lived_url}/auth/token",
        update_token=lambda token, refresh_token=None, access_token=None: updated.append(refresh_token),
    )
    first = dict(client.fetch_token(username="alice", password=PASSWORD))
    assert client.token.is_expired() is True

    greeting = client.get(f"{short_lived_url}/")

    assert greeting.json() == {"message": "Hello, alice with ID: 1!"}
    assert updated == [first["refresh_token"]]
    assert client.token["refresh_token"] != first["refresh_token"]
    spent = requests.post(
        f"{short_lived_url}/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        timeout=10,
    )
    assert spent.json()["error"] == "invalid_grant"


def test_authlib_revoke_token_ends_the_session(alice, base_url):
    client = AuthlibSession(token_endpoint=f"{base_url}/auth/token")
    token = client.fetch_token(username="alice", password=PASSWORD)

    revoked = client.revoke_token(f"{base_url}/auth/revoke")

    assert revoked.status_code == 200
    greeting = requests.get(f"{base_url}/", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10)
    assert greeting.status_code == 401
    with pytest.raises(OAuthError) as raised:
        client.refresh_token()
    assert raised.value.error == "invalid_grant"


def test_requests_oauthlib_refreshes_by_itself(alice, base_url, monkeypatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on 127.0.0.1, for the test only
    client = LegacyApplicationClient(client_id="demo")
    first = OAuth2Session(client=client).fetch_token(f"{base_url}/auth/token", username="alice", password=PASSWORD)
    saved: list[dict[str, object]] = []
    session = OAuth2Session(
        client=client,
        token={**first, "expires_at": time.time() - 1},  # as if its 30 minutes had passed
        auto_refresh_url=f"{base_url}/auth/token",
        token_updater=saved.append,
    )

    greeting = session.get(f"{base_url}/")

    assert greeting.json() == {"message": "Hello, alice with ID: 1!"}
    [renewed] = saved
    assert renewed["refresh_token"] != first["refresh_token"]
    assert session.token["access_token"] == renewed["access_token"]
