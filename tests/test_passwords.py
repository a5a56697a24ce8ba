"""Passwords nobody guesses first: the common ones and those containing the username are refused when chosen."""

import secrets

import pytest
from passlib.context import CryptContext
from sqlalchemy import insert

import auth
import database
import passwords
from config import settings
from conftest import log_in, run_python, sign_up
from models import User

COMMON = ["password", "12345678", "qwertyuiop", "iloveyou", "sunshine", "football", "1qaz2wsx", "trustno1"]
IN_ANOTHER_CASE = [
    "PASSWORD",
    "Password1",
    "IloveYou",
    "QWERTYUIOP",
    "\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24",
]


def assert_refused_for(response, rule):
    """422 with the rule in words, and nothing else: the password is never sent back."""
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"type": "value_error", "loc": ["body", "password"], "msg": f"Value error, {rule}", "ctx": {"error": {}}}
        ]
    }


@pytest.mark.parametrize("password", COMMON + IN_ANOTHER_CASE)
def test_a_common_password_is_refused_in_any_case_and_never_echoed(client, password):
    response = sign_up(client, password=password)

    assert_refused_for(response, passwords.TOO_COMMON)
    assert "one of the most common passwords" in passwords.TOO_COMMON


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "alice2024"),
        ("alice", "ALICE!secret"),
        ("alice", "my-\uff41\uff4c\uff49\uff43\uff45-pw"),
        ("bob", "1-bob-2-bob"),
    ],
    ids=["suffix", "other case", "full-width letters", "twice"],
)
def test_a_password_containing_the_username_is_refused(client, username, password):
    response = sign_up(client, username, password)

    assert_refused_for(response, passwords.HAS_USERNAME)


@pytest.mark.parametrize(
    "password",
    ["Abcd-123", "p\u00e4ssw\u00f6rd-\u5bc6\u7801-\U0001f511-ok", secrets.token_urlsafe(54)[:72], "correct horse"],
    ids=["short and plain", "Unicode", "random 72 bytes", "two words"],
)
def test_a_password_on_no_list_and_of_the_right_length_is_accepted(client, password):
    assert sign_up(client, password=password).status_code == 201
    assert log_in(client, password=password).status_code == 200


def test_the_list_holds_at_least_the_10_000_most_common_passwords():
    assert len(passwords.COMMON_PASSWORDS) >= 10_000
    assert {"123456", "password", "qwerty", "dragon", "letmein"} <= passwords.COMMON_PASSWORDS


def test_an_account_whose_password_is_now_on_the_list_still_logs_in(client, bcrypt_runs):
    with database.engine.begin() as connection:
        connection.execute(
            insert(User).values(username="alice", hashed_password=passwords.password_context.hash("password"))
        )
    bcrypt_runs.clear()

    assert log_in(client, password="password").status_code == 200
    assert len(bcrypt_runs) == 1


MINIMUM_15 = """
from fastapi.testclient import TestClient
import main
with TestClient(main.app) as client:
    answers = [
        client.post("/auth/", json={"username": "bob", "password": "fourteen-chars"}),
        client.post("/auth/", json={"username": "carol", "password": "fifteen-letters"}),
        client.post("/auth/token", data={"username": "carol", "password": "fifteen-letters"}),
        client.post("/auth/token", data={"username": "alice", "password": "8 chars!"}),
    ]
    print(*[answer.status_code for answer in answers])
"""


def test_password_min_length_refuses_shorter_new_passwords_and_old_accounts_still_log_in(client):
    assert sign_up(client, password="8 chars!").status_code == 201

    result = run_python(MINIMUM_15, PASSWORD_MIN_LENGTH="15")

    assert result.stdout.split() == ["422", "201", "200", "200"], result.stderr


@pytest.mark.parametrize("value", ["7", "65", "fifteen"])
def test_a_bad_password_min_length_stops_start_up_with_one_line(value):
    result = run_python("import main", PASSWORD_MIN_LENGTH=value)

    assert result.returncode == 1
    assert result.stderr == (
        f"PASSWORD_MIN_LENGTH must be a whole number from 8 to 64, not {value!r}; "
        "change it in the environment or in .env\n"
    )


def test_docs_show_the_rules_in_the_password_field(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    for model, field in (("UserCreate", "password"), ("PasswordChange", "new_password")):
        description = schemas[model]["properties"][field]["description"]
        assert "At least 8 characters" in description
        assert "30,000 most common passwords" in description
        assert "not containing the username" in description


def test_a_wrong_password_costs_the_current_cost_even_against_a_hash_of_an_older_cheaper_cost(
    client, monkeypatch, bcrypt_work
):
    """Else, after BCRYPT_ROUNDS is raised, a quick 401 would tell a known user (old hash) from an unknown one."""
    sign_up(client)  # at cost 4
    monkeypatch.setattr(settings, "bcrypt_rounds", 6)
    monkeypatch.setattr(passwords, "password_context", CryptContext(schemes=["bcrypt"], bcrypt__rounds=6))
    monkeypatch.setattr(auth, "DUMMY_HASH", passwords.password_context.hash("checked when the username is unknown"))

    bcrypt_work.clear()
    assert log_in(client, password="a wrong password").status_code == 401
    known_user = sum(bcrypt_work)
    bcrypt_work.clear()
    assert log_in(client, "nobody", "a wrong password").status_code == 401
    unknown_user = sum(bcrypt_work)

    assert known_user == unknown_user == 2**6
