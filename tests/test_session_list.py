"""Where am I logged in? The list of one's sessions, ending any of them, and a bound on how many there are."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

import database
import main
import sessions
from config import settings
from conftest import (
    CLIENT_ADDRESS,
    PASSWORD,
    admin_tokens_for,
    bearer,
    count_rows,
    log_in,
    refresh,
    sign_up,
    start_server,
    stop_server,
    tokens_for,
    unverified_claims,
    wait_until_blocked_or_done,
)
from models import LoginFailure, LoginSession

NO_SUCH_SESSION = {"detail": "No live session of yours has this id"}


def list_sessions(client, tokens):
    response = client.get("/users/me/sessions", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    return response.json()


def session_id_of(tokens):
    return unverified_claims(tokens["access_token"])["sid"]


def end_session(client, tokens, session_id, password=PASSWORD):
    return client.request(
        "DELETE",
        f"/users/me/sessions/{session_id}",
        json={"password": password},
        headers=bearer(tokens["access_token"]),
    )


def greet(client, tokens):
    return client.get("/", headers=bearer(tokens["access_token"])).status_code


def timestamp(text):
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0)  # UTC, and it says so
    return moment.timestamp()


# What a session records


def test_a_login_records_where_it_came_from_and_when(client):
    assert sign_up(client).status_code == 201
    tokens = client.post(
        "/auth/token", data={"username": "alice", "password": PASSWORD}, headers={"User-Agent": "curl/8.5.0"}
    ).json()

    [session] = list_sessions(client, tokens)

    assert session.keys() == {"id", "started_at", "last_used_at", "ends_at", "client_address", "user_agent", "current"}
    assert session["id"] == session_id_of(tokens)
    assert (session["client_address"], session["user_agent"], session["current"]) == (
        CLIENT_ADDRESS,
        "curl/8.5.0",
        True,
    )
    assert timestamp(session["last_used_at"]) == timestamp(session["started_at"])
    assert timestamp(session["ends_at"]) - timestamp(session["started_at"]) == pytest.approx(30 * 86_400)


@pytest.mark.parametrize(("sent", "recorded"), [(None, None), ("x" * 1000, "x" * 256), ("curl/8.5.0", "curl/8.5.0")])
def test_the_user_agent_is_kept_as_text_cut_to_256_characters_and_may_be_missing(client, sent, recorded):
    sign_up(client)
    request = client.build_request("POST", "/auth/token", data={"username": "alice", "password": PASSWORD})
    del request.headers["User-Agent"]
    if sent is not None:
        request.headers["User-Agent"] = sent

    tokens = client.send(request).json()

    assert list_sessions(client, tokens)[0]["user_agent"] == recorded


def test_behind_a_trusted_proxy_the_address_is_the_real_clients_if_it_is_an_address():
    """uvicorn passes X-Forwarded-For on unchecked: 300 characters were a 500 on PostgreSQL, with either password."""
    server, base_url = start_server("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1")
    try:
        httpx2.post(f"{base_url}/auth/", json={"username": "alice", "password": PASSWORD})

        def log_in_from(address, password=PASSWORD):
            credentials = {"username": "alice", "password": password}
            return httpx2.post(f"{base_url}/auth/token", data=credentials, headers={"X-Forwarded-For": address})

        wrong = log_in_from("x" * 300, "wrong password")
        listed = []
        for address in ("203.0.113.7", "x" * 300):
            tokens = log_in_from(address).json()
            listed += httpx2.get(f"{base_url}/users/me/sessions", headers=bearer(tokens["access_token"])).json()
    finally:
        stop_server(server)

    assert wrong.status_code == 401
    assert [session["client_address"] for session in listed if session["current"]] == ["203.0.113.7", None]


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("<script>alert(1)</script>", None),
        ("x" * 4000, None),
        ("fe80::1%" + "x" * 300, None),
        ("unknown", None),
        ("", None),
    ],
)
def test_only_an_ip_address_is_recorded(given, recorded):
    with TestClient(main.app, client=(given, 50000)) as client:
        tokens = tokens_for(client)
        wrong = log_in(client, password="wrong password")

        [session] = list_sessions(client, tokens)

    assert wrong.status_code == 401
    assert session["client_address"] == recorded
    with Session(database.engine) as session:
        assert session.scalar(select(LoginFailure.client_address)) == (recorded or "")


def test_logins_from_no_address_are_throttled_together(client):
    sign_up(client)
    answers = [
        log_in(TestClient(main.app, client=(f"<not an address {attempt}>", 50000)), password="wrong password")
        for attempt in range(6)
    ]

    assert [answer.status_code for answer in answers] == [401] * 5 + [429]


# The list


def test_the_list_is_most_recently_used_first_and_only_the_askers_session_is_current(client, clock):
    first = tokens_for(client)
    clock(60)
    second = log_in(client).json()
    clock(60)
    third = log_in(client).json()
    clock(60)
    first = refresh(client, first["refresh_token"]).json()

    listed = list_sessions(client, second)

    assert [session["id"] for session in listed] == [session_id_of(t) for t in (first, third, second)]
    assert [session["current"] for session in listed] == [False, False, True]


def test_last_used_moves_on_a_refresh_and_not_on_a_protected_request(client, clock):
    tokens = tokens_for(client)
    [before] = list_sessions(client, tokens)

    clock(120)
    assert greet(client, tokens) == 200
    [after_greeting] = list_sessions(client, tokens)
    clock(120)
    tokens = refresh(client, tokens["refresh_token"]).json()
    [after_refresh] = list_sessions(client, tokens)

    assert after_greeting["last_used_at"] == before["last_used_at"]
    assert timestamp(after_refresh["last_used_at"]) - timestamp(before["last_used_at"]) == pytest.approx(240, abs=2)
    assert after_refresh["started_at"] == before["started_at"]


def test_sessions_that_have_run_out_are_not_listed(client, clock, monkeypatch):
    monkeypatch.setattr(settings, "refresh_token_expire_days", 1)
    old = tokens_for(client)
    clock(86_400 - 600)
    new = log_in(client).json()
    clock(700)

    assert [session["id"] for session in list_sessions(client, new)] == [session_id_of(new)]
    assert session_id_of(old) != session_id_of(new)


def test_another_users_sessions_are_not_listed(client):
    alice = tokens_for(client)
    tokens_for(client, "bob")

    assert len(list_sessions(client, alice)) == 1


# Ending one session, or all the others


def test_ending_a_session_with_the_password_stops_its_tokens_on_their_next_request(client):
    laptop = tokens_for(client)
    phone = log_in(client).json()

    assert end_session(client, laptop, session_id_of(phone)).status_code == 204

    assert greet(client, phone) == 401
    assert refresh(client, phone["refresh_token"]).status_code == 401
    assert greet(client, laptop) == 200


def test_ending_the_current_session_works_as_a_logout(client):
    tokens = tokens_for(client)

    assert end_session(client, tokens, session_id_of(tokens)).status_code == 204

    assert greet(client, tokens) == 401


def test_a_wrong_password_is_403_ends_nothing_and_is_throttled_as_logins_are(client):
    laptop = tokens_for(client)
    phone = log_in(client).json()

    answers = [end_session(client, laptop, session_id_of(phone), "not the password").status_code for _ in range(6)]

    assert answers == [403] * 5 + [429]
    assert greet(client, phone) == 200


@pytest.mark.parametrize("which", ["someone else's", "ended", "garbage", "nul"])
def test_an_id_that_is_not_a_live_session_of_the_callers_is_the_same_404_and_ends_nothing(client, which):
    alice = tokens_for(client)
    bob = tokens_for(client, "bob")
    ended = log_in(client).json()
    client.post("/auth/logout", headers=bearer(ended["access_token"]))
    session_id = {
        "someone else's": session_id_of(bob),
        "ended": session_id_of(ended),
        "garbage": "garbage",
        "nul": "%00" * 22,
    }[which]

    response = end_session(client, alice, session_id)

    assert response.status_code == 404
    assert response.json() == NO_SUCH_SESSION
    assert (greet(client, alice), greet(client, bob)) == (200, 200)


def test_ending_every_other_session_keeps_the_current_one(client):
    laptop = tokens_for(client)
    others = [log_in(client).json() for _ in range(3)]
    bob = tokens_for(client, "bob")

    response = client.request(
        "DELETE", "/users/me/sessions", json={"password": PASSWORD}, headers=bearer(laptop["access_token"])
    )

    assert response.status_code == 204
    assert [greet(client, tokens) for tokens in others] == [401] * 3
    assert (greet(client, laptop), greet(client, bob)) == (200, 200)


def test_ending_every_other_session_needs_the_password(client):
    laptop = tokens_for(client)
    phone = log_in(client).json()

    response = client.request(
        "DELETE", "/users/me/sessions", json={"password": "not the password"}, headers=bearer(laptop["access_token"])
    )

    assert response.status_code == 403
    assert greet(client, phone) == 200


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/users/me/sessions"), ("DELETE", "/users/me/sessions/x")])
def test_ending_sessions_needs_the_account_scope(client, method, path):
    sign_up(client)
    token = client.post("/auth/token", data={"username": "alice", "password": PASSWORD, "scope": "me"}).json()

    response = client.request(method, path, json={"password": PASSWORD}, headers=bearer(token["access_token"]))

    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", scope="account"'


# A bound on sessions


def test_a_login_past_the_bound_ends_the_least_recently_used_session(client, clock, monkeypatch):
    monkeypatch.setattr(settings, "max_sessions_per_user", 3)
    oldest = tokens_for(client)
    clock(1)
    middle = log_in(client).json()
    clock(1)
    newest = log_in(client).json()
    clock(1)
    oldest = refresh(client, oldest["refresh_token"]).json()  # now the most recently used
    clock(1)

    fourth = log_in(client).json()

    assert count_rows(LoginSession) == 3
    assert refresh(client, middle["refresh_token"]).json()["error"] == "invalid_grant"
    assert [greet(client, tokens) for tokens in (oldest, newest, fourth)] == [200, 200, 200]


def test_the_bound_holds_when_many_logins_of_one_user_arrive_at_once(client, monkeypatch):
    monkeypatch.setattr(settings, "max_sessions_per_user", 3)
    sign_up(client)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: log_in(client).status_code, range(12)))

    assert answers == [200] * 12
    assert count_rows(LoginSession) == 3


# The administrator's list


def test_an_administrator_sees_a_users_sessions_without_current(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    listed = client.get("/admin/users/2/sessions", headers=bearer(root["access_token"])).json()

    assert [session["id"] for session in listed] == [session_id_of(alice)]
    assert "current" not in listed[0]
    assert client.get("/admin/users/99/sessions", headers=bearer(root["access_token"])).status_code == 404
    assert client.get("/admin/users/2/sessions", headers=bearer(alice["access_token"])).status_code == 403


def test_the_bound_holds_when_a_second_login_comes_while_the_first_is_ending_sessions(client, monkeypatch):
    """The first login is parked after it ended its least recently used session, before it commits."""
    monkeypatch.setattr(settings, "max_sessions_per_user", 2)
    tokens_for(client)
    log_in(client)
    parked, may_finish = threading.Event(), threading.Event()
    real_end = sessions.end_least_recently_used

    def end_then_park(session, user_id):
        real_end(session, user_id)
        if not parked.is_set():
            parked.set()
            may_finish.wait(timeout=10)

    monkeypatch.setattr(sessions, "end_least_recently_used", end_then_park)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(log_in, client)
        assert parked.wait(timeout=10)
        second = pool.submit(log_in, client)
        wait_until_blocked_or_done(second)
        may_finish.set()

    assert (first.result().status_code, second.result().status_code) == (200, 200)
    assert count_rows(LoginSession) == 2
