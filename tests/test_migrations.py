"""Schema changes that keep every row: Alembic's revisions, applied at start-up, one process at a time.

Databases of earlier releases are made by running the release itself, from the project's own git history.
"""

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import jwt
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, event, func, make_url, select, text
from sqlalchemy.orm import Session

import database
import keys
import main
import migrate
from conftest import (
    CLIENT_ADDRESS,
    PASSWORD,
    PROJECT,
    TEST_DATABASE_URL,
    TEST_FOLDER,
    admin_tokens_for,
    answer_from,
    child_env,
    count_rows,
    free_port,
    log_in,
    refresh,
    run_python,
    sign_up,
    sqlite_only,
    tokens_for,
)
from models import LoginSession

RELEASES = {"1.0.0": "3b9f306", "1.1.0": "aeafda6", "1.2.0": "6c243dd"}
SCRIPTS = ScriptDirectory.from_config(migrate.alembic_config())
HEAD = SCRIPTS.get_current_head()

# What a user of the release did: three accounts (two whose names differ only by case, as the release allowed),
# four failed logins, and a login whose tokens are printed.
USE_THE_RELEASE = f"""
import json
from fastapi.testclient import TestClient
import main
with TestClient(main.app, client=({CLIENT_ADDRESS!r}, 50000)) as client:
    for name in ("alice", "bob", "Alice"):
        assert client.post("/auth/", json={{"username": name, "password": {PASSWORD!r}}}).status_code == 201
    for _ in range(4):
        assert client.post("/auth/token", data={{"username": "bob", "password": "wrong password"}}).status_code == 401
    print(json.dumps(client.post("/auth/token", data={{"username": "alice", "password": {PASSWORD!r}}}).json()))
"""


def drop_everything(engine):
    """Every table, Alembic's own included, as in a database that nothing has touched."""
    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)


@pytest.fixture
def empty_database():
    """The URL of an empty database: a new SQLite file, or the PostgreSQL test database emptied, then made whole."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{tempfile.mkdtemp(dir=TEST_FOLDER)}/empty.db"
        return
    drop_everything(database.engine)
    yield TEST_DATABASE_URL
    drop_everything(database.engine)
    migrate.upgrade(database.engine)


def use_database(monkeypatch, url):
    if url != TEST_DATABASE_URL:
        answer_from(monkeypatch, database.make_engine(make_url(url)))


def release_folder(version):
    """The project as it was at a release, from git, in a folder of its own."""
    folder = Path(TEST_FOLDER, f"release-{version}")
    if not folder.exists():
        archive = subprocess.run(
            ["git", "-C", str(PROJECT), "archive", RELEASES[version]], capture_output=True, check=True
        ).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
    return folder


def run_release(version, url):
    """Use the release on the database as its users did; return the tokens of alice's login."""
    folder = release_folder(version)
    result = run_python(USE_THE_RELEASE, folder, DATABASE_URL=url, PYTHONPATH=str(folder))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def revision_of(engine):
    with engine.connect() as connection:
        return connection.scalar(text("SELECT version_num FROM alembic_version"))


def test_the_models_and_the_revisions_agree(empty_database):
    """`alembic check` on a database made by the revisions alone: no column or index without its revision."""
    migrate.upgrade(database.make_engine(make_url(empty_database)))

    result = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=PROJECT,
        env=child_env(DATABASE_URL=empty_database),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "No new upgrade operations detected.\n"


def sqlite_definitions(path):
    """Each table as SQLite defines it: its columns, keys and indexes, in no particular order, and AUTOINCREMENT."""
    database = sqlite3.connect(path)
    tables = database.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
        " AND name NOT IN ('alembic_version', 'sqlite_sequence')"
    ).fetchall()
    definitions = {
        name: {
            "AUTOINCREMENT": "AUTOINCREMENT" in sql,
            "columns": sorted(column[1:] for column in database.execute(f"PRAGMA table_info({name})")),
            "foreign keys": sorted(key[2:] for key in database.execute(f"PRAGMA foreign_key_list({name})")),
            "indexes": sorted(
                (index[1], index[2], [column[2] for column in database.execute(f"PRAGMA index_info({index[1]})")])
                for index in database.execute(f"PRAGMA index_list({name})")
            ),
        }
        for name, sql in tables
    }
    database.close()
    return definitions


@sqlite_only
def test_on_sqlite_the_revisions_make_the_tables_that_the_models_make_autoincrement_included(tmp_path):
    """`alembic check` compares neither AUTOINCREMENT nor column order: a batch copy that loses it shows here."""
    migrate.upgrade(database.make_engine(make_url(f"sqlite:///{tmp_path}/revisions.db")))
    database.Base.metadata.create_all(database.make_engine(make_url(f"sqlite:///{tmp_path}/models.db")))

    made_by_revisions = sqlite_definitions(tmp_path / "revisions.db")

    assert made_by_revisions == sqlite_definitions(tmp_path / "models.db")
    assert made_by_revisions["users"]["AUTOINCREMENT"]


# What a user of 1.2.0 did: three accounts and a login each; carol deleted her own account.
USE_RELEASE_1_2_0 = f"""
import json
from fastapi.testclient import TestClient
import main
tokens = {{}}
with TestClient(main.app) as client:
    for name in ("alice", "bob", "carol"):
        assert client.post("/auth/", json={{"username": name, "password": {PASSWORD!r}}}).status_code == 201
        tokens[name] = client.post("/auth/token", data={{"username": name, "password": {PASSWORD!r}}}).json()
    gone = client.request(
        "DELETE", "/users/me", json={{"password": {PASSWORD!r}}},
        headers={{"Authorization": "Bearer " + tokens["carol"]["access_token"]}},
    )
    assert gone.status_code == 204
print(json.dumps(tokens))
"""


@sqlite_only
def test_a_release_1_2_0_database_gets_autoincrement_back_and_never_hands_an_id_out_twice(empty_database, monkeypatch):
    """1.2.0 lost AUTOINCREMENT: bob deleted by hand with foreign keys off (the sqlite3 shell's default) leaves his
    session, and the next bob got his id, and with it his old session."""
    folder = release_folder("1.2.0")
    result = run_python(USE_RELEASE_1_2_0, folder, DATABASE_URL=empty_database, PYTHONPATH=str(folder))
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    path = str(make_url(empty_database).database)
    by_hand = sqlite3.connect(path)
    by_hand.execute("DELETE FROM users WHERE username = 'bob'")
    by_hand.commit()
    by_hand.close()
    use_database(monkeypatch, empty_database)

    migrate.upgrade(database.engine)

    assert sqlite_definitions(path)["users"]["AUTOINCREMENT"]
    with TestClient(main.app) as client:
        new_bob = sign_up(client, "bob").json()
        assert new_bob["id"] == 3  # past bob's id, which his session still names
        assert client.get("/", headers={"Authorization": f"Bearer {made['bob']['access_token']}"}).status_code == 401
        assert refresh(client, made["bob"]["refresh_token"]).status_code == 401
        assert sign_up(client, "dave").json()["id"] == 4
        dave = log_in(client, "dave").json()
        headers = {"Authorization": f"Bearer {dave['access_token']}"}
        assert client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=headers).status_code == 204
        assert sign_up(client, "erin").json()["id"] == 5  # not dave's 4


def test_on_a_release_1_2_0_database_hs256_tokens_are_refused_and_their_refresh_tokens_refresh_into_es256_ones(
    empty_database, monkeypatch
):
    folder = release_folder("1.2.0")
    result = run_python(USE_RELEASE_1_2_0, folder, DATABASE_URL=empty_database, PYTHONPATH=str(folder))
    assert result.returncode == 0, result.stderr
    alice = json.loads(result.stdout)["alice"]
    use_database(monkeypatch, empty_database)

    migrate.upgrade(database.engine)
    keys.read_again()

    assert jwt.get_unverified_header(alice["access_token"])["alg"] == "HS256"
    with TestClient(main.app) as client:
        old = client.get("/", headers={"Authorization": f"Bearer {alice['access_token']}"})
        renewed = refresh(client, alice["refresh_token"])
        published = client.get("/.well-known/jwks.json").json()["keys"]
        greeting = client.get("/", headers={"Authorization": f"Bearer {renewed.json()['access_token']}"})

    assert old.status_code == 401
    assert 'error="invalid_token"' in old.headers["WWW-Authenticate"]
    assert renewed.status_code == 200
    header = jwt.get_unverified_header(renewed.json()["access_token"])
    assert (header["alg"], header["typ"]) == ("ES256", "at+jwt")
    assert header["kid"] in {key["kid"] for key in published}
    assert greeting.json() == {"message": "Hello, alice with ID: 1!"}


def test_an_id_is_never_handed_out_twice_on_a_database_made_by_the_revisions(empty_database, monkeypatch):
    use_database(monkeypatch, empty_database)
    migrate.upgrade(database.engine)

    with TestClient(main.app) as client:
        tokens_for(client)
        bob = tokens_for(client, "bob")
        headers = {"Authorization": f"Bearer {bob['access_token']}"}
        assert client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=headers).status_code == 204

        assert sign_up(client, "carol").json()["id"] == 3


def test_a_downgrade_below_roles_says_in_one_line_what_it_drops(client, caplog):
    admin_tokens_for(client)
    sign_up(client, "bob")
    sign_up(client, "carol")
    with Session(database.engine) as session:
        session.execute(text("UPDATE users SET disabled = true WHERE username <> 'root'"))
        session.commit()

    with migrate.migration_lock(database.engine) as connection:
        command.downgrade(migrate.alembic_config(connection), "c52a7e0b8f3d")
    migrate.upgrade(database.engine)

    assert next(record.getMessage() for record in caplog.records if record.levelname == "WARNING") == (
        "Downgrading below e8a41b7c3d92 drops every role and disabled flag: 1 administrators become users "
        "and 2 disabled accounts can log in again"
    )


def test_an_administrators_token_from_before_a_downgrade_and_upgrade_no_longer_acts_as_one(client):
    """Every user comes back an enabled user; the token still says admin, and is refused."""
    root = admin_tokens_for(client)
    sign_up(client)

    with migrate.migration_lock(database.engine) as connection:
        command.downgrade(migrate.alembic_config(connection), migrate.RELEASE_1_1_0)
    migrate.upgrade(database.engine)
    response = client.patch(
        "/admin/users/2", json={"role": "admin"}, headers={"Authorization": f"Bearer {root['access_token']}"}
    )

    assert response.status_code == 401
    assert log_in(client).json()["scope"] == "me account"


def test_an_empty_database_gets_every_revision_and_serves(empty_database, monkeypatch):
    use_database(monkeypatch, empty_database)

    migrate.upgrade(database.engine)

    assert revision_of(database.engine) == HEAD
    with TestClient(main.app) as client:
        assert client.get("/", headers={"Authorization": f"Bearer {tokens_for(client)['access_token']}"}).json() == {
            "message": "Hello, alice with ID: 1!"
        }


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_a_database_made_by_an_earlier_release_keeps_every_row(version, empty_database, monkeypatch):
    made = run_release(version, empty_database)
    use_database(monkeypatch, empty_database)

    migrate.upgrade(database.engine)

    assert revision_of(database.engine) == HEAD
    with TestClient(main.app, client=(CLIENT_ADDRESS, 50000)) as client:
        assert log_in(client, "alice").status_code == 200  # the old password
        assert log_in(client, "Alice").status_code == 200  # a name that differs only by case keeps its account
        assert log_in(client, "bob", "wrong password").status_code == 401  # the fifth failure
        assert log_in(client, "bob").status_code == 429  # so the four before still count
        assert sign_up(client, "carol").json()["id"] == 4  # ids go on from where they were
        assert sign_up(client, "ALICE", "another password").status_code == 409
        old_access_token = client.get("/", headers={"Authorization": f"Bearer {made['access_token']}"})
        assert old_access_token.status_code == 401  # it has no scope claim: its client refreshes, or logs in again
        assert 'error="invalid_token"' in old_access_token.headers["WWW-Authenticate"]
        if "refresh_token" in made:  # a 1.1.0 session: its refresh token gets the scopes of its user's role
            renewed = refresh(client, made["refresh_token"]).json()
            assert renewed["scope"] == "me account"
            listed = client.get("/users/me/sessions", headers={"Authorization": f"Bearer {renewed['access_token']}"})
            [old_session] = [session for session in listed.json() if session["current"]]
            assert (old_session["client_address"], old_session["user_agent"]) == (None, None)  # nothing was recorded


def test_a_database_at_the_newest_revision_is_left_alone():
    statements = []

    def record(connection, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        migrate.upgrade(database.engine)
    finally:
        event.remove(database.engine, "before_cursor_execute", record)

    assert "SELECT" in statements
    assert not {"INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP"} & set(statements)


def test_a_downgrade_to_release_1_1_0_and_an_upgrade_again_lose_nothing(client):
    tokens = tokens_for(client)
    tokens = refresh(client, tokens["refresh_token"]).json()
    sign_up(client, "bob")

    with migrate.migration_lock(database.engine) as connection:
        command.downgrade(migrate.alembic_config(connection), migrate.RELEASE_1_1_0)
    with Session(database.engine) as session:
        assert session.execute(text("SELECT username FROM users ORDER BY id")).scalars().all() == ["alice", "bob"]
        assert session.execute(text("SELECT count(*) FROM sessions")).scalar() == 1
    migrate.upgrade(database.engine)

    assert revision_of(database.engine) == HEAD
    assert count_rows(LoginSession) == 1
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert log_in(client, "bob").status_code == 200
    assert sign_up(client, "BOB", "another password").status_code == 409


@contextmanager
def another_process_migrating(url):
    """Hold what a migrating process holds: PostgreSQL's advisory lock, or SQLite's write lock."""
    if TEST_DATABASE_URL:
        with database.engine.connect() as connection:
            connection.execute(select(func.pg_advisory_lock(migrate.MIGRATION_LOCK)))
            yield
            connection.execute(select(func.pg_advisory_unlock(migrate.MIGRATION_LOCK)))
        return
    holder = sqlite3.connect(str(make_url(url).database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield
    holder.execute("COMMIT")
    holder.close()


def waiting_for_the_lock(server, url):
    """How many processes wait for the migration lock that this test holds: on PostgreSQL, the advisory lock's
    waiters; on SQLite, the server's child processes that have the file open (BEGIN IMMEDIATE holds them there)."""
    if TEST_DATABASE_URL:
        with database.engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
    path = Path(str(make_url(url).database)).resolve()
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return sum(path in open_files(pid) for pid in children)


def open_files(pid):
    """The files a process has open now. One that it closes while they are read, or its own end, is no error."""
    files = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                files.add(Path(os.readlink(f"/proc/{pid}/fd/{fd}")))
    return files


def stop(server):
    server.terminate()
    server.wait(timeout=30)


def test_four_workers_starting_together_on_a_release_1_1_0_database_upgrade_it_once(empty_database):
    """The test holds the lock until all four workers wait for it, so that they all reach it together."""
    run_release("1.1.0", empty_database)
    log = Path(tempfile.mkdtemp(dir=TEST_FOLDER), "server.log")
    port = free_port()
    engine = database.make_engine(make_url(empty_database))
    deadline = time.monotonic() + 120
    with log.open("w") as output, another_process_migrating(empty_database):
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--workers", "4"],
            env=child_env(DATABASE_URL=empty_database),
            cwd=TEST_FOLDER,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            while waiting_for_the_lock(server, empty_database) < 4:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        except BaseException:
            stop(server)
            raise
    try:
        while log.read_text().count("Application startup complete") < 4:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        credentials = {"username": "alice", "password": PASSWORD}
        answers = [httpx2.post(f"http://127.0.0.1:{port}/auth/token", data=credentials).status_code for _ in range(8)]
    finally:
        stop(server)

    started = log.read_text()
    assert [line for line in started.splitlines() if not line.startswith("INFO:")] == [
        f"Upgrading the database from revision {migrate.RELEASE_1_1_0} to {HEAD}"
    ], started
    assert "died" not in started  # no worker failed and was started again
    assert answers == [200] * 8
    assert revision_of(engine) == HEAD
    engine.dispose()


def test_a_database_newer_than_the_code_stops_start_up_with_one_line_and_is_not_touched(empty_database):
    engine = database.make_engine(make_url(empty_database))
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d0000cafe'"))

    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(free_port())],
        env=child_env(DATABASE_URL=empty_database),
        cwd=TEST_FOLDER,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "The database is at revision f00d0000cafe, which this code does not know: a newer release upgraded it; "
        "run that release, or downgrade the database with it (alembic downgrade) first"
    )
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr
    assert revision_of(engine) == "f00d0000cafe"
    engine.dispose()


def test_the_alembic_command_upgrades_downgrades_and_tells_the_revision(empty_database):
    def alembic(*arguments):
        return subprocess.run(
            [sys.executable, "-m", "alembic", *arguments],
            cwd=PROJECT,
            env=child_env(DATABASE_URL=empty_database),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert alembic("upgrade", "head").returncode == 0
    assert alembic("current").stdout == f"{HEAD} (head)\n"
    assert alembic("downgrade", "-1").returncode == 0
    assert alembic("current").stdout == f"{SCRIPTS.get_revision('head').down_revision}\n"
    assert alembic("upgrade", "head").returncode == 0
    assert alembic("current").stdout == f"{HEAD} (head)\n"
