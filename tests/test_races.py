"""Races: a write that depends on a verified password commits only if what was verified still holds.

Each test parks one request inside bcrypt, after it read the stored hash and before it writes, and lets the other
request run to its end meanwhile: the interleaving happens every time, with no sleep.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
from passlib.context import CryptContext
from sqlalchemy import select
from sqlalchemy.orm import Session

import database
import passwords
from config import settings
from conftest import PASSWORD, bearer, count_rows, log_in, refresh, tokens_for
from models import LoginSession, User

FIRST, SECOND = "owner's new passphrase", "intruder's new passphrase"


def change_password(client, tokens, new_password, current_password=PASSWORD):
    body = {"current_password": current_password, "new_password": new_password}
    return client.patch("/users/me/password", json=body, headers=bearer(tokens["access_token"]))


def while_parked(park_logins, parked_request, other_request):
    """Run parked_request until it is inside bcrypt, run other_request to its end, then let the first one finish."""
    hashing, may_finish = park_logins(first_only=True)
    with ThreadPoolExecutor(1) as pool:
        parked = pool.submit(parked_request)
        assert hashing.wait(timeout=10)
        other = other_request()
        may_finish.set()
        return parked.result(timeout=30), other


def stored_hash():
    with Session(database.engine) as session:
        return session.scalar(select(User.hashed_password))


def test_of_two_password_changes_made_with_one_old_password_exactly_one_succeeds(client, park_logins):
    owner = tokens_for(client)
    intruder = log_in(client).json()

    intruders, owners = while_parked(
        park_logins, lambda: change_password(client, intruder, SECOND), lambda: change_password(client, owner, FIRST)
    )

    assert owners.status_code == 204
    assert intruders.status_code == 401  # the owner's change ended the intruder's session
    assert log_in(client, password=FIRST).status_code == 200
    assert log_in(client, password=SECOND).status_code == 401


def test_a_second_change_from_the_same_session_with_a_stale_password_is_403_and_writes_nothing(client, park_logins):
    tokens = tokens_for(client)

    stale, first = while_parked(
        park_logins, lambda: change_password(client, tokens, SECOND), lambda: change_password(client, tokens, FIRST)
    )

    assert first.status_code == 204
    assert stale.status_code == 403
    assert stale.json() == {"detail": "The password is not correct"}
    assert log_in(client, password=FIRST).status_code == 200


def test_a_login_that_overlaps_a_password_change_leaves_no_live_session(client, park_logins):
    owner = tokens_for(client)

    login, change = while_parked(park_logins, lambda: log_in(client), lambda: change_password(client, owner, FIRST))

    assert change.status_code == 204
    assert login.status_code == 401
    assert login.json()["error"] == "invalid_grant"
    assert count_rows(LoginSession) == 1  # the owner's own


@pytest.mark.parametrize("path", ["/users/me", "/users/me/sessions"], ids=["account deletion", "ending sessions"])
def test_a_deletion_confirmed_by_password_that_overlaps_a_password_change_deletes_nothing(client, park_logins, path):
    owner = tokens_for(client)
    intruder = log_in(client).json()

    def delete_with_the_old_password():
        body = {"password": PASSWORD}
        return client.request("DELETE", path, json=body, headers=bearer(intruder["access_token"]))

    deletion, changed = while_parked(
        park_logins, delete_with_the_old_password, lambda: change_password(client, owner, FIRST)
    )

    assert changed.status_code == 204
    assert deletion.status_code == 401  # the change ended the intruder's session first
    assert count_rows(User) == 1
    assert client.get("/", headers=bearer(owner["access_token"])).status_code == 200


def test_a_rehash_that_overlaps_a_password_change_never_undoes_it(client, park_logins, monkeypatch):
    owner = tokens_for(client)
    old_cost_hash = stored_hash()
    monkeypatch.setattr(settings, "bcrypt_rounds", 5)
    monkeypatch.setattr(
        passwords, "password_context", CryptContext(schemes=["bcrypt"], deprecated="auto", bcrypt__rounds=5)
    )

    login, change = while_parked(park_logins, lambda: log_in(client), lambda: change_password(client, owner, FIRST))

    assert change.status_code == 204
    assert login.status_code == 401
    assert stored_hash() not in (old_cost_hash, None)
    assert log_in(client, password=FIRST).status_code == 200
    assert log_in(client, password=PASSWORD).status_code == 401


def test_a_refresh_of_a_session_that_a_password_change_ended_is_refused(client):
    owner = tokens_for(client)
    other = log_in(client).json()

    assert change_password(client, owner, FIRST).status_code == 204

    assert refresh(client, other["refresh_token"]).status_code == 401
