"""Password guessing is throttled per client address and username; hashing never starves the rest of the app."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from anyio import CapacityLimiter
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

import database
import keys
import main
import passwords
from config import settings
from conftest import CLIENT_ADDRESS, answer_from, bearer, count_rows, log_in, run_python, sign_up, token_for
from models import LoginFailure, User

ATTACKER = ("203.0.113.7", 50000)


@pytest.fixture
def attacker():
    with TestClient(main.app, client=ATTACKER) as client:
        yield client


def fail(client, times, username="alice"):
    return [log_in(client, username, "not the password").status_code for _ in range(times)]


def test_five_failures_then_429_with_retry_after_until_the_oldest_leaves_the_window(client):
    sign_up(client)

    assert fail(client, 5) == [401] * 5
    refused = log_in(client, password="not the password")

    assert refused.status_code == 429
    assert refused.json() == {
        "detail": f"Too many failed logins: wait {refused.headers['Retry-After']} seconds before trying again"
    }
    assert 898 <= int(refused.headers["Retry-After"]) <= 900


def test_the_right_password_is_refused_while_throttled(client):
    sign_up(client)
    fail(client, 5)

    assert log_in(client).status_code == 429


def test_failures_stop_counting_when_they_leave_the_window(client, clock):
    sign_up(client)
    fail(client, 5)
    clock(899)
    refused = log_in(client)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")

    clock(1)

    assert log_in(client).status_code == 200


def test_failures_outside_the_window_are_deleted(client, clock):
    fail(client, 3, "nobody")
    clock(900)

    fail(client, 1, "nobody")

    assert count_rows(LoginFailure) == 1


def test_an_unknown_username_is_counted_and_refused_exactly_like_a_real_one(client):
    sign_up(client)

    real = [log_in(client, "alice", "not the password") for _ in range(7)]
    unknown = [log_in(client, "nobody", "not the password") for _ in range(7)]

    assert [response.status_code for response in real] == [401] * 5 + [429] * 2
    for real_answer, unknown_answer in zip(real, unknown, strict=True):
        assert unknown_answer.status_code == real_answer.status_code
        assert unknown_answer.headers.keys() == real_answer.headers.keys()
        if real_answer.status_code == 429:
            assert abs(int(unknown_answer.headers["Retry-After"]) - int(real_answer.headers["Retry-After"])) <= 1
        else:
            assert unknown_answer.json() == real_answer.json()
            assert unknown_answer.headers == real_answer.headers


def test_a_successful_login_clears_the_count_of_its_pair(client):
    sign_up(client)
    fail(client, 4)
    assert log_in(client).status_code == 200

    assert fail(client, 5) == [401] * 5
    assert log_in(client).status_code == 429


def test_another_address_can_still_log_in_while_an_attacker_is_refused(client, attacker):
    sign_up(client)

    assert fail(attacker, 6) == [401] * 5 + [429]

    assert log_in(client).status_code == 200
    assert log_in(attacker).status_code == 429


def test_one_address_is_capped_across_usernames(client, attacker, monkeypatch):
    monkeypatch.setattr(settings, "login_max_failures", 2)
    sign_up(client)

    sprayed = [status for number in range(20) for status in fail(attacker, 2, f"user-{number}")]

    assert sprayed == [401] * 40
    assert log_in(attacker, "someone-else").status_code == 429
    assert log_in(attacker).status_code == 429
    assert log_in(client).status_code == 200


def test_a_refused_attempt_runs_no_bcrypt(client, bcrypt_runs):
    sign_up(client)
    fail(client, 5)
    bcrypt_runs.clear()

    assert log_in(client).status_code == 429
    assert bcrypt_runs == []


def test_each_refused_attempt_logs_one_warning_with_address_and_username(attacker, caplog):
    fail(attacker, 5)
    caplog.clear()

    fail(attacker, 2)

    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == ["Login refused for 'alice' from 203.0.113.7: too many failed logins"] * 2
    assert "not the password" not in caplog.text


def test_zero_max_failures_turns_the_throttle_off(client, monkeypatch):
    monkeypatch.setattr(settings, "login_max_failures", 0)
    sign_up(client)

    assert fail(client, 8) == [401] * 8
    assert log_in(client).status_code == 200
    assert count_rows(LoginFailure) == 0


ANOTHER_INSTANCE = f"""
from fastapi.testclient import TestClient
import main
with TestClient(main.app, client=({CLIENT_ADDRESS!r}, 50000)) as client:
    print(client.post("/auth/token", data={{"username": "alice", "password": "correct horse"}}).status_code)
"""


def test_counts_are_shared_with_another_app_instance_and_kept_across_a_restart(client):
    sign_up(client)
    fail(client, 5)

    another = run_python(ANOTHER_INSTANCE)

    assert another.stdout.split() == ["429"], another.stderr


def test_signup_and_login_get_503_with_retry_after_when_the_hashing_backlog_is_full(client, monkeypatch, park_logins):
    token = token_for(client)
    monkeypatch.setattr(passwords, "hashing_threads", CapacityLimiter(1))
    monkeypatch.setattr(passwords, "places_to_hash", CapacityLimiter(2))
    hashing, may_finish = park_logins()
    with ThreadPoolExecutor(2) as pool:
        hashing_now = pool.submit(log_in, client)
        assert hashing.wait(timeout=10)
        waiting = pool.submit(log_in, client)
        deadline = time.monotonic() + 10
        while passwords.hashing_threads.statistics().tasks_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

        refused = [log_in(client), sign_up(client, "bob"), log_in(client, "nobody")]
        greeting = client.get("/", headers=bearer(token))
        may_finish.set()
        assert [hashing_now.result(timeout=10).status_code, waiting.result(timeout=10).status_code] == [200, 200]

    for response in refused:
        assert response.status_code == 503
        assert response.json() == {"detail": "Too many logins and sign-ups at once: try again in a second"}
        assert response.headers["Retry-After"] == "1"
    assert greeting.status_code == 200
    assert count_rows(LoginFailure) == 0


def test_no_database_connection_is_held_while_bcrypt_runs(client, monkeypatch, park_logins):
    token = token_for(client, "bob")
    one_connection = create_engine(database.engine.url, pool_size=1, max_overflow=0, pool_timeout=5)
    answer_from(monkeypatch, one_connection)
    hashing, may_finish = park_logins()
    with ThreadPoolExecutor(2) as pool:
        logging_in = pool.submit(log_in, client, "bob")
        assert hashing.wait(timeout=10)
        assert isinstance(one_connection.pool, QueuePool)
        pool_in_use = one_connection.pool.checkedout()
        greeting = client.get("/", headers=bearer(token))
        may_finish.set()
        assert logging_in.result(timeout=10).status_code == 200

    assert greeting.status_code == 200
    assert pool_in_use == 0
    one_connection.dispose()


def test_the_token_of_a_deleted_account_does_not_open_a_new_account_of_the_same_name(client):
    sign_up(client, "bob")
    token = token_for(client)
    with Session(database.engine) as session:
        session.execute(delete(User).where(User.username == "alice"))
        session.commit()

    again = sign_up(client)

    assert again.status_code == 201
    assert again.json()["id"] != 2
    assert client.get("/users/me", headers=bearer(token)).status_code == 401


def test_a_missing_secret_key_is_replaced_by_a_random_one_with_a_warning(caplog):
    first, second = keys.make_random_key(), keys.make_random_key()

    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert first != second
    assert (
        caplog.messages
        == [
            "SECRET_KEY is not set: using a random key, so the signing keys are made anew and access tokens stop "
            "working when the app restarts (refresh tokens go on); "
            "put a key in .env with: "
            "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env"
        ]
        * 2
    )


SLOW_FIRST_HASH = """
import time
ticks = iter(range(0, 10**9, 10))  # every reading of the clock is 10 s after the last, as on a very busy machine
time.perf_counter = lambda: float(next(ticks))
import passwords
print(passwords.SECONDS_PER_HASH, passwords.CORES, passwords.places_to_hash.total_tokens)
"""


def test_a_slow_hash_at_start_up_still_leaves_room_for_a_handful_of_logins_at_once():
    result = run_python(SLOW_FIRST_HASH)

    seconds_per_hash, cores, places = result.stdout.split()
    assert float(seconds_per_hash) >= 10, result.stderr
    assert int(places) == int(cores) + 16
