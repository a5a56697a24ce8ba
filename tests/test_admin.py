"""Who may do what: roles granted as OAuth2 scopes, disabled accounts, the administrator's API and manage.py."""

import getpass
import logging
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, insert, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import admin
import database
import manage as manage_module
import users
from conftest import (
    PASSWORD,
    PROJECT,
    TEST_FOLDER,
    admin_tokens_for,
    bearer,
    count_rows,
    log_in,
    refresh,
    run_python,
    sign_up,
    tokens_for,
    unverified_claims,
    wait_until_blocked_or_done,
)
from models import LoginSession, User

MANAGE = str(PROJECT / "manage.py")


def log_in_asking(client, scope, username="alice"):
    return client.post("/auth/token", data={"username": username, "password": PASSWORD, "scope": scope})


def scopes_in(access_token):
    return unverified_claims(access_token)["scope"]


def assert_insufficient_scope(response, needed):
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{needed}"'
    assert response.json() == {"detail": f"This route needs the scope '{needed}', which this token was not granted"}


def assert_invalid_scope(response):
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert response.json()["detail"] == response.json()["error_description"]


# Granting scopes at login


def test_an_administrator_is_granted_every_scope_and_a_user_all_but_admin(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    assert root["scope"] == scopes_in(root["access_token"]) == "me account admin"
    assert alice["scope"] == scopes_in(alice["access_token"]) == "me account"


def test_a_login_may_ask_for_fewer_scopes_and_its_token_carries_only_those(client):
    sign_up(client)

    answer = log_in_asking(client, "me").json()

    assert answer["scope"] == scopes_in(answer["access_token"]) == "me"
    assert client.get("/", headers=bearer(answer["access_token"])).status_code == 200


@pytest.mark.parametrize(("asked", "granted"), [("me admin", "me"), ("admin account", "account"), ("", "me account")])
def test_a_login_gets_what_it_asks_for_narrowed_to_what_the_role_allows(client, asked, granted):
    sign_up(client)

    assert log_in_asking(client, asked).json()["scope"] == granted


def test_a_login_asking_only_for_what_the_role_does_not_allow_is_400_invalid_scope(client):
    sign_up(client)

    response = log_in_asking(client, "admin")

    assert_invalid_scope(response)
    assert count_rows(LoginSession) == 0


def test_an_unknown_scope_is_400_invalid_scope_before_any_bcrypt(client, bcrypt_runs):
    sign_up(client)
    bcrypt_runs.clear()

    response = log_in_asking(client, "me everything")

    assert_invalid_scope(response)
    assert response.json()["detail"] == "Unknown scope 'everything': the scopes are me, account, admin"
    assert bcrypt_runs == []


# A refresh keeps its session's scopes, or asks for fewer


def test_a_refresh_may_ask_for_fewer_scopes_and_the_refresh_token_keeps_the_whole_grant(client):
    tokens = tokens_for(client)

    narrowed = client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "me"}
    ).json()
    again = refresh(client, narrowed["refresh_token"]).json()

    assert narrowed["scope"] == scopes_in(narrowed["access_token"]) == "me"
    assert again["scope"] == scopes_in(again["access_token"]) == "me account"


def test_a_refresh_asking_for_more_is_400_invalid_scope_and_the_refresh_token_stays_usable(client):
    sign_up(client)
    tokens = log_in_asking(client, "me").json()

    more = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "me account"},
    )

    assert_invalid_scope(more)
    assert refresh(client, tokens["refresh_token"]).json()["scope"] == "me"


def test_a_refresh_asking_for_scopes_with_a_malformed_token_is_the_usual_invalid_grant(client):
    response = client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "x", "scope": "me"})

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_grant"


def test_a_session_from_before_scopes_refreshes_with_its_users_role_scopes(client):
    root = admin_tokens_for(client)
    with Session(database.engine) as session:
        session.execute(update(LoginSession).values(scopes=None))
        session.commit()

    assert refresh(client, root["refresh_token"]).json()["scope"] == "me account admin"


# A missing scope is 403, a bad token 401

SCOPED_ROUTES = [
    ("GET", "/", None, "account", "me"),
    ("GET", "/users/me", None, "account", "me"),
    (
        "PATCH",
        "/users/me/password",
        {"current_password": PASSWORD, "new_password": "a new passphrase"},
        "me",
        "account",
    ),
    ("DELETE", "/users/me", {"password": PASSWORD}, "me", "account"),
    ("GET", "/admin/users", None, "me account", "admin"),
    ("GET", "/admin/users/1", None, "me account", "admin"),
    ("PATCH", "/admin/users/1", {"disabled": True}, "me account", "admin"),
    ("DELETE", "/admin/users/1", None, "me account", "admin"),
    ("DELETE", "/admin/users/1/sessions", None, "me account", "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "granted", "needed"), SCOPED_ROUTES)
def test_a_token_without_the_scope_a_route_needs_gets_403_insufficient_scope(
    client, method, path, body, granted, needed
):
    sign_up(client)
    token = log_in_asking(client, granted).json()["access_token"]

    response = client.request(method, path, json=body, headers=bearer(token))

    assert_insufficient_scope(response, needed)
    assert count_rows(User) == 1


@pytest.mark.parametrize(("method", "path", "body", "granted", "needed"), SCOPED_ROUTES)
def test_a_bad_token_on_a_scoped_route_is_still_401(client, method, path, body, granted, needed):
    response = client.request(method, path, json=body, headers=bearer("not-a-token"))

    assert response.status_code == 401


def test_logout_needs_a_valid_token_of_any_scope(client):
    sign_up(client)
    token = log_in_asking(client, "me").json()["access_token"]

    assert client.post("/auth/logout", headers=bearer(token)).status_code == 204
    assert client.get("/", headers=bearer(token)).status_code == 401


def test_the_docs_show_each_routes_scope(client):
    paths = client.get("/openapi.json").json()["paths"]
    needed = {
        (method.upper(), path): operation["security"][0]["OAuth2PasswordBearer"]
        for path, operations in paths.items()
        for method, operation in operations.items()
        if "security" in operation
    }

    for method, path, _, _, scope in SCOPED_ROUTES:
        template = path.replace("/1", "/{user_id}")
        assert needed[method, template] == [scope]
        assert {"401", "403", "503"} <= set(paths[template][method.lower()]["responses"])
    for path, operations in paths.items():
        if path.startswith("/admin"):
            assert all(operation["tags"] == ["admin"] for operation in operations.values())
            assert all("404" in operation["responses"] for operation in operations.values())


# Disabled accounts


def disable(client, root, user_id, disabled=True):
    return client.patch(f"/admin/users/{user_id}", json={"disabled": disabled}, headers=bearer(root["access_token"]))


def test_disabling_an_account_ends_its_sessions_at_once(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    assert disable(client, root, 2).status_code == 200

    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 401
    assert refresh(client, alice["refresh_token"]).status_code == 401


def test_a_disabled_account_with_the_right_password_is_told_so_and_a_wrong_password_gets_todays_answer(client):
    root = admin_tokens_for(client)
    sign_up(client)
    disable(client, root, 2)

    right = log_in(client)
    wrong = log_in(client, password="not the password")

    assert right.status_code == 401
    assert right.json() == {
        "detail": "This account is disabled: ask an administrator",
        "error": "invalid_grant",
        "error_description": "This account is disabled: ask an administrator",
    }
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "Incorrect username or password"
    assert count_rows(LoginSession) == 1  # root's


def test_enabling_an_account_again_lets_it_log_in(client):
    root = admin_tokens_for(client)
    sign_up(client)
    disable(client, root, 2)

    assert disable(client, root, 2, disabled=False).json()["disabled"] is False

    assert log_in(client).status_code == 200


def test_a_login_checked_while_its_account_is_disabled_starts_no_session(client, park_logins):
    root = admin_tokens_for(client)
    sign_up(client)
    hashing, may_finish = park_logins(first_only=True)

    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(log_in, client)
        assert hashing.wait(timeout=10)
        assert disable(client, root, 2).status_code == 200
        may_finish.set()

    assert login.result().status_code == 401
    assert count_rows(LoginSession) == 1  # root's


def test_a_login_that_comes_while_its_account_is_being_disabled_waits_and_starts_no_session(client):
    """The administrator's change is parked after it ended the user's sessions, before it marks the account."""
    root = admin_tokens_for(client)
    sign_up(client)
    parked, may_finish = threading.Event(), threading.Event()

    def park_after_ending_sessions(connection, cursor, statement, *args):
        if statement.startswith("DELETE FROM sessions") and "EXISTS" in statement and not parked.is_set():
            parked.set()
            may_finish.wait(timeout=10)

    event.listen(database.engine, "after_cursor_execute", park_after_ending_sessions)
    try:
        with ThreadPoolExecutor(2) as pool:
            disabling = pool.submit(disable, client, root, 2)
            assert parked.wait(timeout=10)
            login = pool.submit(log_in, client)
            wait_until_blocked_or_done(login)
            may_finish.set()
    finally:
        event.remove(database.engine, "after_cursor_execute", park_after_ending_sessions)

    assert disabling.result().status_code == 200
    assert login.result().status_code == 401
    assert count_rows(LoginSession) == 1  # root's


# The administrator's API


def test_an_administrator_reads_any_account(client):
    root = admin_tokens_for(client)
    tokens_for(client)
    log_in(client)

    answer = client.get("/admin/users/2", headers=bearer(root["access_token"]))

    assert answer.status_code == 200
    body = answer.json()
    assert body.keys() == {"id", "username", "role", "disabled", "created_at", "live_sessions"}
    assert (body["id"], body["username"], body["role"], body["disabled"], body["live_sessions"]) == (
        2,
        "alice",
        "user",
        False,
        2,
    )
    created_at = datetime.fromisoformat(body["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert abs(created_at.timestamp() - datetime.now().timestamp()) < 60


def test_an_account_made_before_this_release_shows_no_creation_time(client):
    root = admin_tokens_for(client)
    with Session(database.engine) as session:
        session.execute(update(User).values(created_at=None))
        session.commit()

    assert client.get("/admin/users/1", headers=bearer(root["access_token"])).json()["created_at"] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/users/99", None),
        ("PATCH", "/admin/users/99", {"role": "admin"}),
        ("DELETE", "/admin/users/99", None),
        ("DELETE", "/admin/users/99/sessions", None),
    ],
)
def test_an_unknown_id_is_404(client, method, path, body):
    root = admin_tokens_for(client)

    response = client.request(method, path, json=body, headers=bearer(root["access_token"]))

    assert response.status_code == 404
    assert response.json() == {"detail": "No user has this id"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/users?after=2147483648", None),
        ("GET", "/admin/users/2147483648", None),
        ("GET", "/admin/users/2147483648/sessions", None),
        ("PATCH", "/admin/users/2799453280", {"role": "user"}),
        ("DELETE", "/admin/users/2147483648", None),
        ("DELETE", "/admin/users/2147483648/sessions", None),
    ],
)
def test_an_id_past_the_largest_a_database_can_hold_is_422_not_a_500(client, method, path, body):
    """PostgreSQL's INTEGER is 32 bits: a larger number in a query is its error, found by schemathesis."""
    root = admin_tokens_for(client)

    response = client.request(method, path, json=body, headers=bearer(root["access_token"]))

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Input should be less than or equal to 2147483647"


def test_the_largest_id_is_an_ordinary_unknown_id(client):
    root = admin_tokens_for(client)

    assert client.get("/admin/users/2147483647", headers=bearer(root["access_token"])).status_code == 404
    assert client.get("/admin/users?after=2147483647", headers=bearer(root["access_token"])).json() == {
        "users": [],
        "next_after": None,
    }


def test_pages_list_every_user_once_in_order_even_while_users_are_added(client):
    root = admin_tokens_for(client)
    for number in range(6):
        sign_up(client, f"user{number}")
    seen, after, pages = [], 0, 0
    while after is not None:
        page = client.get(f"/admin/users?limit=3&after={after}", headers=bearer(root["access_token"])).json()
        seen += [user["username"] for user in page["users"]]
        after = page["next_after"]
        pages += 1
        if pages == 1:
            sign_up(client, "latecomer")  # a new id, after every id seen so far

    assert seen == ["root", *(f"user{number}" for number in range(6)), "latecomer"]
    assert pages == 3


def test_the_first_page_has_fifty_users_and_the_limit_is_checked(client):
    root = admin_tokens_for(client)
    with Session(database.engine) as session:
        session.execute(
            insert(User),
            [{"username": f"u{n}", "username_key": f"u{n}", "hashed_password": "x"} for n in range(60)],
        )
        session.commit()
    headers = bearer(root["access_token"])

    first = client.get("/admin/users", headers=headers).json()

    assert len(first["users"]) == 50
    assert first["next_after"] == 50
    assert client.get("/admin/users?limit=0", headers=headers).status_code == 422
    assert client.get("/admin/users?limit=101", headers=headers).status_code == 422
    assert len(client.get("/admin/users?limit=100", headers=headers).json()["users"]) == 61


def test_a_change_of_role_answers_the_user_and_ends_its_sessions_at_once(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    answer = client.patch("/admin/users/2", json={"role": "admin"}, headers=bearer(root["access_token"]))

    assert answer.status_code == 200
    assert answer.json()["role"] == "admin"
    assert answer.json()["live_sessions"] == 0
    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 401
    assert log_in(client).json()["scope"] == "me account admin"


def test_a_demoted_administrator_keeps_no_admin_right(client):
    root = admin_tokens_for(client)
    other = admin_tokens_for(client, "other")

    client.patch("/admin/users/2", json={"role": "user"}, headers=bearer(root["access_token"]))

    assert client.get("/admin/users", headers=bearer(other["access_token"])).status_code == 401
    assert refresh(client, other["refresh_token"]).status_code == 401
    assert log_in(client, "other").json()["scope"] == "me account"


def test_setting_what_is_already_set_ends_no_session(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    client.patch("/admin/users/2", json={"role": "user", "disabled": False}, headers=bearer(root["access_token"]))

    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"role": "owner"},
        {"disabled": "maybe"},
        {"disabled": "yes"},
        {"disabled": 0},
        {"role": "user", "username": "x"},
        {"role": None, "disabled": None},
        {"role": None, "disabled": True},
    ],
)
def test_a_change_with_nothing_to_do_or_an_unknown_field_or_value_is_422(client, body):
    root = admin_tokens_for(client)
    sign_up(client)

    response = client.patch("/admin/users/2", json=body, headers=bearer(root["access_token"]))

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]
    assert log_in(client).json()["scope"] == "me account"  # nothing changed


def test_the_schema_of_a_change_allows_neither_null_nor_an_empty_change(client):
    """What the schema allows, the route takes: a client generated from it never sends what gets 422."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AccountChange"]

    assert schema["minProperties"] == 1
    assert schema["properties"]["role"]["enum"] == ["user", "admin"]
    assert schema["properties"]["disabled"]["type"] == "boolean"
    assert "anyOf" not in str(schema)  # no null alternative


def test_deleting_an_account_frees_its_name_ends_its_sessions_and_never_reuses_its_id(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    assert client.delete("/admin/users/2", headers=bearer(root["access_token"])).status_code == 204

    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 401
    assert sign_up(client).json()["id"] == 3
    assert count_rows(LoginSession) == 1


def test_ending_a_users_sessions_keeps_the_account(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    assert client.delete("/admin/users/2/sessions", headers=bearer(root["access_token"])).status_code == 204

    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 401
    assert log_in(client).status_code == 200


# Never zero administrators


@pytest.mark.parametrize(
    ("method", "body"), [("PATCH", {"role": "user"}), ("PATCH", {"disabled": True}), ("DELETE", None)]
)
def test_the_last_administrator_cannot_be_demoted_disabled_or_deleted_even_by_themselves(client, method, body):
    root = admin_tokens_for(client)

    response = client.request(method, "/admin/users/1", json=body, headers=bearer(root["access_token"]))

    assert response.status_code == 409
    assert response.json() == {"detail": "This would leave no enabled administrator: make another one first"}
    assert client.get("/admin/users/1", headers=bearer(root["access_token"])).json()["role"] == "admin"


def test_with_another_administrator_one_may_step_down(client):
    root = admin_tokens_for(client)
    admin_tokens_for(client, "other")

    assert (
        client.patch("/admin/users/1", json={"role": "user"}, headers=bearer(root["access_token"])).status_code == 200
    )


def test_a_disabled_administrator_does_not_count(client):
    root = admin_tokens_for(client)
    admin_tokens_for(client, "other")
    disable(client, root, 2)

    assert disable(client, root, 1).status_code == 409


def test_two_administrators_demoting_each_other_at_once_leave_one(client, monkeypatch):
    """The first is parked after its change, while it holds the lock; the second waits for the lock, then counts."""
    root = admin_tokens_for(client)
    other = admin_tokens_for(client, "other")
    parked, may_finish = threading.Event(), threading.Event()
    real_check = users.refuse_if_no_administrator_left

    def check_then_park(session):
        real_check(session)
        if not parked.is_set():
            parked.set()
            may_finish.wait(timeout=10)

    monkeypatch.setattr(admin, "refuse_if_no_administrator_left", check_then_park)

    def demote(tokens, user_id):
        return client.patch(f"/admin/users/{user_id}", json={"role": "user"}, headers=bearer(tokens["access_token"]))

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(demote, root, 2)
        assert parked.wait(timeout=10)
        second = pool.submit(demote, other, 1)
        wait_until_blocked_or_done(second)
        may_finish.set()

    assert first.result().status_code == 200
    assert second.result().status_code in (401, 409)  # its own session ended with its demotion, or 409
    with Session(database.engine) as session:
        assert session.execute(text("SELECT count(*) FROM users WHERE role = 'admin'")).scalar() == 1


def delete_own_account(client, tokens):
    return client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=bearer(tokens["access_token"]))


def test_the_last_enabled_administrator_cannot_delete_their_own_account(client):
    root = admin_tokens_for(client)
    alice = tokens_for(client)

    response = delete_own_account(client, root)

    assert response.status_code == 409
    assert response.json() == {"detail": users.LAST_ADMINISTRATOR}
    assert log_in(client, "root").status_code == 200
    assert delete_own_account(client, alice).status_code == 204  # a user's own deletion needs no administrator


def test_an_administrator_with_another_one_may_delete_their_own_account(client):
    root = admin_tokens_for(client)
    admin_tokens_for(client, "other")

    assert delete_own_account(client, root).status_code == 204
    assert log_in(client, "root").status_code == 401


def checked_then_changed_meanwhile(monkeypatch, checked, change):
    """Run the request `checked` through its checks (token, password) to where it takes the lock, and park it there;
    run the request `change` until it has counted the administrators, holding the lock; then let `checked` go on to
    wait for that lock, and `change` commit. Return both answers."""
    checked_at_lock, checked_may_go = threading.Event(), threading.Event()
    change_counted, change_may_commit = threading.Event(), threading.Event()
    real_check, real_lock = users.refuse_if_no_administrator_left, users.lock_accounts

    def lock(session, *user_ids):
        if not checked_at_lock.is_set():
            checked_at_lock.set()
            checked_may_go.wait(timeout=10)
        real_lock(session, *user_ids)

    def check_then_park(session):
        real_check(session)
        if not change_counted.is_set():
            change_counted.set()
            change_may_commit.wait(timeout=10)

    for module in (admin, users):
        monkeypatch.setattr(module, "lock_accounts", lock)
        monkeypatch.setattr(module, "refuse_if_no_administrator_left", check_then_park)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(checked)
        assert checked_at_lock.wait(timeout=10)
        second = pool.submit(change)
        assert change_counted.wait(timeout=10)
        checked_may_go.set()
        wait_until_blocked_or_done(first)
        change_may_commit.set()
        return first.result(timeout=30), second.result(timeout=30)


def test_two_administrators_deleting_their_own_accounts_at_once_leave_one(client, monkeypatch):
    root = admin_tokens_for(client)
    other = admin_tokens_for(client, "other")

    first, second = checked_then_changed_meanwhile(
        monkeypatch, lambda: delete_own_account(client, root), lambda: delete_own_account(client, other)
    )

    assert (first.status_code, second.status_code) == (409, 204)
    assert log_in(client, "root").json()["scope"] == "me account admin"
    assert log_in(client, "other").status_code == 401


def test_an_administrator_deleting_their_own_account_while_the_other_is_demoted_is_refused(client, monkeypatch):
    root = admin_tokens_for(client)
    other = admin_tokens_for(client, "other")

    first, second = checked_then_changed_meanwhile(
        monkeypatch,
        lambda: delete_own_account(client, root),
        lambda: client.patch("/admin/users/2", json={"role": "user"}, headers=bearer(root["access_token"])),
    )

    assert (first.status_code, second.status_code) == (409, 200)
    assert log_in(client, "root").json()["scope"] == "me account admin"
    assert client.get("/", headers=bearer(other["access_token"])).status_code == 401  # demoted: its sessions ended


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/admin/users/3", {"disabled": True}),
        ("DELETE", "/admin/users/3", None),
        ("DELETE", "/admin/users/3/sessions", None),
    ],
)
@pytest.mark.parametrize("taken_away", [{"role": "user"}, {"disabled": True}])
def test_an_administrators_change_that_waited_while_they_were_demoted_or_disabled_changes_nothing(
    client, monkeypatch, method, path, body, taken_away
):
    """This administrator's request is past the token check when the other administrator takes their right away;
    it waits for that change's lock, then finds it has no right left."""
    root = admin_tokens_for(client)
    other = admin_tokens_for(client, "other")
    alice = tokens_for(client)

    first, second = checked_then_changed_meanwhile(
        monkeypatch,
        lambda: client.request(method, path, json=body, headers=bearer(other["access_token"])),
        lambda: client.patch("/admin/users/2", json=taken_away, headers=bearer(root["access_token"])),
    )

    assert first.status_code == 401
    assert second.status_code == 200
    assert client.get("/", headers=bearer(alice["access_token"])).status_code == 200  # alice is untouched
    assert log_in(client).status_code == 200


# Rights as they are now, however they changed


@pytest.mark.parametrize(
    ("edit", "route"),
    [
        ("UPDATE users SET role = 'user' WHERE id = 1", "/admin/users"),
        ("UPDATE users SET role = 'user' WHERE id = 1", "/"),
        ("UPDATE users SET disabled = true WHERE id = 1", "/"),
        ("UPDATE users SET role = 'owner' WHERE id = 1", "/"),  # a role this code does not know allows nothing
    ],
)
def test_a_token_is_refused_once_its_users_role_or_flag_changed_by_any_means(client, edit, route):
    """Not through the admin API, which ends the sessions too: an edit of the database, or a restore of a backup."""
    root = admin_tokens_for(client)
    assert client.get(route, headers=bearer(root["access_token"])).status_code == 200

    with Session(database.engine) as session:
        session.execute(text(edit))
        session.commit()
    response = client.get(route, headers=bearer(root["access_token"]))

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_refresh_after_a_demotion_by_hand_gets_only_what_the_role_allows_now(client):
    root = admin_tokens_for(client)
    with Session(database.engine) as session:
        session.execute(text("UPDATE users SET role = 'user' WHERE id = 1"))
        session.commit()

    asking_for_admin = client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": root["refresh_token"], "scope": "admin"}
    )
    renewed = refresh(client, root["refresh_token"])  # not spent by the refusal

    assert_invalid_scope(asking_for_admin)
    assert renewed.json()["scope"] == "me account"


def test_a_token_with_only_the_scopes_the_role_still_allows_keeps_working(client):
    root = admin_tokens_for(client)
    reader = log_in_asking(client, "me", "root").json()

    with Session(database.engine) as session:
        session.execute(text("UPDATE users SET role = 'user' WHERE id = 1"))
        session.commit()

    assert client.get("/", headers=bearer(reader["access_token"])).status_code == 200
    assert client.get("/", headers=bearer(root["access_token"])).status_code == 401


# Every action is logged


def test_every_administrator_action_writes_one_line_saying_who_did_what_to_whom(client, caplog):
    root = admin_tokens_for(client)
    sign_up(client)
    headers = bearer(root["access_token"])
    caplog.set_level(logging.WARNING, logger="admin")

    client.patch("/admin/users/2", json={"role": "admin", "disabled": True}, headers=headers)
    client.delete("/admin/users/2/sessions", headers=headers)
    client.delete("/admin/users/2", headers=headers)

    assert [record.getMessage() for record in caplog.records if record.name == "admin"] == [
        "Administrator root (id 1) set role=admin, disabled=True on user alice (id 2)",
        "Administrator root (id 1) ended every session of user alice (id 2)",
        "Administrator root (id 1) deleted user alice (id 2)",
    ]
    assert PASSWORD not in caplog.text


# python manage.py make-admin


def manage(*args, stdin=None, **env):
    """Run the command as an operator does, in a process of its own."""
    code = (
        f"import runpy, sys; sys.argv = ['manage.py', *{list(args)!r}]; runpy.run_path({MANAGE!r}, run_name='__main__')"
    )
    return run_python(code, stdin=stdin, **env)


def test_make_admin_makes_an_existing_user_an_enabled_administrator(client):
    root = admin_tokens_for(client)
    sign_up(client, "bob")
    disable(client, root, 2)

    result = manage("make-admin", "bob")

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "bob (id 2) is now an enabled administrator: they log in again to get the admin scope\n"
    assert log_in(client, "bob").json()["scope"] == "me account admin"


def test_make_admin_creates_a_new_administrator_with_a_password_from_standard_input(client):
    result = manage("make-admin", "root", "--password-stdin", stdin="a fine passphrase\n", SECRET_KEY=None)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "Created root (id 1) as an enabled administrator\n"
    answer = client.post("/auth/token", data={"username": "root", "password": "a fine passphrase"})
    assert answer.json()["scope"] == "me account admin"


def test_make_admin_asks_a_new_password_twice_without_echo(client, monkeypatch):
    answers = iter(["a fine passphrase", "a fine passphrase"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))

    assert (
        manage_module.make_admin("root", password_from_stdin=False) == "Created root (id 1) as an enabled administrator"
    )


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("x", None, "Not a valid username: String should have at least 3 characters"),
        ("alice\u200d", "a fine passphrase", "Not a valid username: Username must not contain invisible characters"),
        (
            "root",
            "password",
            "Not a valid password: Password is one of the most common passwords, the first that "
            "attackers try: choose another",
        ),
        ("root", "short", "Not a valid password: String should have at least 8 characters"),
        ("ALICE", None, "ALICE: the user alice has this name but for case; give that name"),
    ],
)
def test_make_admin_refuses_with_one_line_and_changes_nothing(client, username, password, message):
    sign_up(client)

    result = manage("make-admin", username, "--password-stdin", stdin=f"{password}\n")

    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"{message}\n")
    assert count_rows(User) == 1


def test_make_admin_refuses_two_passwords_that_differ(monkeypatch):
    answers = iter(["a fine passphrase", "another passphrase"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))

    with pytest.raises(SystemExit, match=r"^The two passwords differ: nothing was changed$"):
        manage_module.make_admin("root", password_from_stdin=False)
    assert count_rows(User) == 0


def test_make_admin_says_in_one_line_when_the_database_cannot_be_reached():
    result = manage("make-admin", "root", DATABASE_URL=f"sqlite:///{TEST_FOLDER}/no-such-folder/auth.db")

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "Cannot open the database in DATABASE_URL: unable to open database file\n"


def test_make_admin_says_in_one_line_when_the_database_fails_after_opening(monkeypatch):
    def locked(*args):
        raise OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(manage_module, "make_admin", locked)
    monkeypatch.setattr(sys, "argv", ["manage.py", "make-admin", "root"])

    with pytest.raises(SystemExit, match=r"^Cannot use the database in DATABASE_URL: database is locked$"):
        manage_module.main()


def test_make_admin_refuses_a_name_taken_but_for_case_before_asking_a_password(client, monkeypatch):
    sign_up(client)
    monkeypatch.setattr(getpass, "getpass", lambda prompt: pytest.fail("asked for a password"))

    with pytest.raises(SystemExit, match=r"^ALICE: the user alice has this name but for case; give that name$"):
        manage_module.make_admin("ALICE", password_from_stdin=False)


def test_make_admin_refuses_a_name_taken_while_it_asked_for_the_password(client, monkeypatch):
    def sign_up_meanwhile(prompt):
        sign_up(client, "Root")
        return "a fine passphrase"

    monkeypatch.setattr(getpass, "getpass", sign_up_meanwhile)

    with pytest.raises(
        SystemExit, match=r"^root: a user of this name, or of this name but for case, exists; try again$"
    ):
        manage_module.make_admin("root", password_from_stdin=False)
    assert count_rows(User) == 1


def test_make_admin_reads_a_password_piped_with_a_windows_line_ending(client):
    result = manage("make-admin", "root", "--password-stdin", stdin="a fine passphrase\r\n")

    assert (result.returncode, result.stderr) == (0, "")
    assert log_in(client, "root", "a fine passphrase").status_code == 200


def test_make_admin_takes_a_name_that_starts_with_a_dash_after_two_dashes(client):
    sign_up(client, "-hal")  # argparse alone would read -h and print its help

    result = manage("make-admin", "--", "-hal")

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("-hal (id 1) is now an enabled administrator")
    assert "make-admin -- -hal" in " ".join(manage("make-admin", "--help").stdout.split())
