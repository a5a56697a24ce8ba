"""Settings come from the environment, then a .env file in the working folder; a bad one stops start-up in one line."""

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

import config
from conftest import PROJECT, TEST_FOLDER, run_python

KEY_FROM_ENV_FILE = "key-from-a-dot-env-file-" + "k" * 16
SHOW_SETTINGS = "import keys; print(keys.SECRET_KEY, keys.settings.access_token_expire_minutes)"


def folder_with_env_file(text):
    workdir = tempfile.mkdtemp(dir=TEST_FOLDER)
    Path(workdir, ".env").write_text(text)
    return workdir


def test_a_dot_env_file_sets_the_key_and_the_expiry():
    workdir = folder_with_env_file(f"SECRET_KEY={KEY_FROM_ENV_FILE}\nACCESS_TOKEN_EXPIRE_MINUTES=7\n")

    result = run_python(SHOW_SETTINGS, workdir, SECRET_KEY=None)

    assert result.stdout.split() == [KEY_FROM_ENV_FILE, "7"]
    assert result.stderr == ""


def test_the_environment_wins_over_the_dot_env_file():
    workdir = folder_with_env_file(f"SECRET_KEY={KEY_FROM_ENV_FILE}\nACCESS_TOKEN_EXPIRE_MINUTES=7\n")

    result = run_python(SHOW_SETTINGS, workdir, SECRET_KEY="key-from-the-environment-" + "e" * 16)

    assert result.stdout.split() == ["key-from-the-environment-" + "e" * 16, "7"]


LOG_IN_AND_PRINT_TOKEN = """
from fastapi.testclient import TestClient
import main
with TestClient(main.app) as client:
    client.post("/auth/", json={"username": "alice", "password": "correct horse"})
    print(client.post("/auth/token", data={"username": "alice", "password": "correct horse"}).json()["access_token"])
"""
GREET_WITH_TOKEN = """
import sys
from fastapi.testclient import TestClient
import main
with TestClient(main.app) as client:
    print(client.get("/", headers={"Authorization": "Bearer " + sys.argv[1]}).status_code)
"""


def test_a_token_survives_a_restart_with_the_key_from_the_dot_env_file():
    workdir = folder_with_env_file(f"SECRET_KEY={KEY_FROM_ENV_FILE}\n")
    token = run_python(LOG_IN_AND_PRINT_TOKEN, workdir, SECRET_KEY=None).stdout.strip()

    restarted = run_python(f"import sys; sys.argv[1:] = [{token!r}]\n" + GREET_WITH_TOKEN, workdir, SECRET_KEY=None)

    assert restarted.stdout.split() == ["200"], restarted.stderr


def test_a_bad_value_in_the_dot_env_file_stops_start_up_with_one_line_naming_it():
    workdir = folder_with_env_file("ACCESS_TOKEN_EXPIRE_MINUTES=soon\n")

    result = run_python("import main", workdir)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "ACCESS_TOKEN_EXPIRE_MINUTES must be a whole number from 1 to 525600, not 'soon'; "
        "change it in the environment or in .env"
    ]


def test_several_bad_settings_give_one_line_each():
    result = run_python("import main", ALGORITHM="none", PORT="0", SECRET_KEY="short")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "SECRET_KEY must be at least 32 characters; make one with: "
        "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env",
        "ALGORITHM must be ES256 or RS256, not 'none'; change it in the environment or in .env",
        "PORT must be a whole number from 1 to 65535, not '0'; change it in the environment or in .env",
    ]


EDGES = [
    ("SECRET_KEY", "k" * 32, "k" * 31),
    ("ALGORITHM", "RS256", "HS256"),
    ("TOKEN_ISSUER", "i", ""),
    ("TOKEN_AUDIENCE", "a", ""),
    ("SIGNING_KEY_CACHE_SECONDS", "1", "0"),
    ("SIGNING_KEY_CACHE_SECONDS", "86400", "86401"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "1", "0"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "525600", "525601"),
    ("REFRESH_TOKEN_EXPIRE_DAYS", "1", "0"),
    ("REFRESH_TOKEN_EXPIRE_DAYS", "365", "366"),
    ("MAX_SESSIONS_PER_USER", "1", "0"),
    ("MAX_SESSIONS_PER_USER", "10000", "10001"),
    ("BCRYPT_ROUNDS", "4", "3"),
    ("BCRYPT_ROUNDS", "31", "32"),
    ("PASSWORD_MIN_LENGTH", "8", "7"),
    ("PASSWORD_MIN_LENGTH", "64", "65"),
    ("LOGIN_MAX_FAILURES", "0", "-1"),
    ("LOGIN_MAX_FAILURES", "1000", "1001"),
    ("LOGIN_WINDOW_SECONDS", "1", "0"),
    ("LOGIN_WINDOW_SECONDS", "86400", "86401"),
    ("DATABASE_TIMEOUT_SECONDS", "1", "0"),
    ("DATABASE_TIMEOUT_SECONDS", "60", "61"),
    ("PORT", "1", "0"),
    ("PORT", "65535", "65536"),
]


@pytest.mark.parametrize(("variable", "edge", "past_the_edge"), EDGES)
def test_every_bound_holds_at_its_edge_and_refuses_one_past_it(monkeypatch, variable, edge, past_the_edge):
    monkeypatch.setenv(variable, edge)
    assert str(getattr(config.load_settings(), variable.lower())) == edge

    monkeypatch.setenv(variable, past_the_edge)
    with pytest.raises(SystemExit) as stopped:
        config.load_settings()

    [line] = str(stopped.value).splitlines()
    assert line.startswith(f"{variable} must be ")
    assert (repr(past_the_edge) in line) is (variable != "SECRET_KEY")


def test_an_empty_secret_key_is_too_short(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "")

    with pytest.raises(SystemExit, match=r"^SECRET_KEY must be at least 32 characters; make one with: echo "):
        config.load_settings()


def readme_configuration_table():
    readme = (PROJECT / "docs" / "operations.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| (.+?) \|", section, re.MULTILINE))


def test_the_readme_table_lists_exactly_the_settings_with_their_defaults():
    table = readme_configuration_table()

    assert list(table) == [name.upper() for name in config.Settings.model_fields]
    for name, field in config.Settings.model_fields.items():
        if field.default is None:
            assert table[name.upper()].startswith("none: ")  # and what that means
        else:
            assert table[name.upper()] == f"`{field.default}`"


def test_the_example_env_file_lists_every_setting_with_its_default():
    lines = (PROJECT / ".env.example").read_text().splitlines()
    settings = dict(re.findall(r"^#? ?([A-Z_]+)=(.*)$", "\n".join(lines), re.MULTILINE))

    assert list(settings) == [name.upper() for name in config.Settings.model_fields]
    for name, field in config.Settings.model_fields.items():
        assert settings[name.upper()] == ("" if field.default is None else str(field.default))


def test_dot_env_is_ignored_by_git_and_never_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=PROJECT, check=False)
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=PROJECT, capture_output=True, text=True, check=False)

    if tracked.returncode != 0:
        pytest.skip("not a git checkout: nothing to say about what the repository holds")
    assert ignored.returncode == 0
    assert tracked.stdout == ""


@pytest.mark.parametrize("value", ["auth.example.com", "https://auth.example.com/", "https://", "ftp://host"])
def test_a_public_origin_that_is_no_origin_stops_start_up_with_one_line(monkeypatch, value):
    monkeypatch.setenv("PUBLIC_ORIGIN", value)

    with pytest.raises(SystemExit) as stopped:
        config.load_settings()

    assert str(stopped.value) == (
        "PUBLIC_ORIGIN must be an origin, scheme://host[:port], such as https://auth.example.com, "
        f"not {value!r}; change it in the environment or in .env"
    )


def test_each_bad_setting_is_explained_in_one_whole_line(monkeypatch):
    monkeypatch.setenv("BCRYPT_ROUNDS", "many")
    monkeypatch.setenv("SECRET_KEY", "short")
    monkeypatch.setenv("ALGORITHM", "none")

    with pytest.raises(SystemExit) as stopped:
        config.load_settings()

    assert str(stopped.value) == (
        "SECRET_KEY must be at least 32 characters; make one with: "
        "echo \"SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')\" >> .env\n"
        "ALGORITHM must be ES256 or RS256, not 'none'; change it in the environment or in .env\n"
        "BCRYPT_ROUNDS must be a whole number from 4 to 31, not 'many'; change it in the environment or in .env"
    )
