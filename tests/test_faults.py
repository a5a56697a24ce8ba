"""Oversized bodies, a database that is away, and a server killed mid-stream."""

import json
import logging
import os
import re
import signal
import socket
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

import database
import fast_reads
import main
from config import settings
from conftest import (
    PASSWORD,
    TEST_DATABASE_URL,
    TEST_FOLDER,
    answer_from,
    bearer,
    child_env,
    free_port,
    lock_out_readers,
    log_in,
    own_sqlite_file,
    postgres_only,
    sign_up,
    sqlite_only,
    start_server,
    stop_server,
    token_for,
)

TOO_LARGE = {"detail": "Request body too large: the limit is 4096 bytes"}


def chunks(total_bytes):
    for _ in range(total_bytes // 1000):
        yield b"x" * 1000


BODY_ROUTES = [("/auth/", "application/json"), ("/auth/token", "application/x-www-form-urlencoded")]


@pytest.mark.parametrize(("path", "content_type"), BODY_ROUTES)
@pytest.mark.parametrize("declared", [True, False], ids=["with Content-Length", "chunked"])
def test_a_body_over_the_limit_gets_413_with_the_limit(client, bcrypt_runs, path, content_type, declared):
    body = b"x" * 5000 if declared else chunks(5000)

    response = client.post(path, content=body, headers={"Content-Type": content_type})

    assert ("content-length" in response.request.headers) is declared
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert bcrypt_runs == []


def test_the_largest_valid_sign_up_is_under_the_limit(client):
    username, password = "\U0001d400" * 64, "\u0001" * 8 + "\u00e9" * 32
    body = json.dumps({"username": username, "password": password})

    response = client.post("/auth/", content=body, headers={"Content-Type": "application/json"})

    assert 4096 // 4 < len(body.encode()) <= 4096
    assert response.status_code == 201
    assert log_in(client, response.json()["username"], password).status_code == 200


def peak_memory_kb(pid):
    [peak] = re.findall(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(peak)


def send_huge_body(port, path, content_type, declared, total_bytes=100 * 1024 * 1024):
    """Stream a body until the server answers or hangs up; return the status line, the JSON body, the bytes sent."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {total_bytes}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head.encode() + b"\r\n")
        connection.settimeout(0.001)
        answer, sent = b"", 0
        while sent < total_bytes and b"\r\n\r\n" not in answer:
            try:
                connection.sendall(piece if declared else b"10000\r\n" + piece + b"\r\n")
                sent += len(piece)
                answer += connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        connection.settimeout(5)
        while b"}" not in answer:
            received = connection.recv(65536)
            if not received:
                break
            answer += received
    response_head, _, body = answer.partition(b"\r\n\r\n")
    return response_head.split(b"\r\n")[0].decode(), json.loads(body), sent


def test_server_memory_stays_flat_while_a_100_mb_body_is_refused():
    server, base_url = start_server()
    port = int(base_url.rsplit(":", 1)[1])
    try:
        for path in ("/auth/", "/auth/token"):  # warm both routes up, so the peak counts only the refusals
            httpx2.post(f"{base_url}{path}", content=b"x" * 5000)
        before = peak_memory_kb(server.pid)
        answers = [
            send_huge_body(port, path, content_type, declared)
            for path, content_type in BODY_ROUTES
            for declared in (True, False)
        ]
        after = peak_memory_kb(server.pid)
    finally:
        stop_server(server)

    for status_line, body, sent in answers:
        assert status_line.startswith("HTTP/1.1 413 ")
        assert body == TOO_LARGE
        assert sent < 100 * 1024 * 1024
    assert after - before < 5 * 1024


def assert_unavailable(response):
    assert response.status_code == 503
    assert response.json() == {"detail": "The database is unavailable: try again in a few seconds"}
    assert response.headers["Retry-After"] == "5"


@sqlite_only
def test_a_write_lock_held_too_long_gets_503_then_the_next_request_succeeds(client, monkeypatch, caplog):
    token = token_for(client)
    answer_from(monkeypatch, create_engine(database.engine.url, connect_args={"timeout": 0.2}))
    lock_holder = sqlite3.connect(str(database.engine.url.database))
    lock_holder.execute("BEGIN IMMEDIATE")
    caplog.clear()

    locked = sign_up(client, "bob")
    lock_holder.rollback()
    lock_holder.close()

    assert_unavailable(locked)
    [warning] = [record.getMessage() for record in caplog.records if record.name == "main"]
    assert warning == "Database unavailable: OperationalError: database is locked"
    assert sign_up(client, "bob").status_code == 201
    assert client.get("/", headers=bearer(token)).status_code == 200


@postgres_only
def test_postgres_down_gets_503_within_the_timeout_with_one_warning(client, monkeypatch, caplog):
    token = token_for(client)
    down = database.engine.url.set(host="127.0.0.1", port=free_port())
    answer_from(monkeypatch, create_engine(down, pool_pre_ping=True, connect_args={"connect_timeout": 5}))
    caplog.clear()

    started = time.monotonic()
    answers = [client.get("/", headers=bearer(token)), sign_up(client, "bob"), log_in(client)]
    elapsed = time.monotonic() - started

    for response in answers:
        assert_unavailable(response)
    greeting, sign_up_warning, log_in_warning = [
        record.getMessage() for record in caplog.records if record.name == "main"
    ]
    assert greeting == "Database unavailable: PoolTimeout: couldn't get a connection after 5.00 sec"  # psycopg's pool
    for warning in (sign_up_warning, log_in_warning):
        assert warning.startswith("Database unavailable: OperationalError: connection failed")
    assert database.engine.url.password not in caplog.text
    assert elapsed < 15


@postgres_only
def test_cut_postgres_connections_are_replaced_without_a_restart(client):
    token = token_for(client)
    with database.engine.connect() as admin:
        admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
        )

    assert [client.get("/", headers=bearer(token)).status_code for _ in range(10)] == [200] * 10


def test_a_genuine_database_defect_is_still_a_500(caplog):
    with TestClient(main.app, raise_server_exceptions=False) as client:
        token = token_for(client)
        with database.engine.begin() as connection:
            connection.execute(text("DROP TABLE spent_refresh_tokens"))
            connection.execute(text("DROP TABLE sessions"))
        caplog.set_level(logging.ERROR)

        response = client.get("/", headers=bearer(token))

    assert response.status_code == 500
    assert "Database unavailable" not in caplog.text


SIGN_UP_CLIENTS, ENOUGH_SIGN_UPS = 4, 20


def sign_up_until_the_server_dies(base_url, client_number, acknowledged):
    for number in range(100_000):
        username = f"user-{client_number}-{number}"
        try:
            response = httpx2.post(f"{base_url}/auth/", json={"username": username, "password": PASSWORD})
        except httpx2.TransportError:
            return
        if response.status_code == 201:
            acknowledged.append(username)


def test_a_killed_server_loses_no_acknowledged_sign_up_nor_counted_failure():
    workdir = Path(tempfile.mkdtemp(dir=TEST_FOLDER))
    env = child_env()
    if not TEST_DATABASE_URL:
        env["DATABASE_URL"] = f"sqlite:///{workdir}/crash.db"
    server, base_url = start_server(env=env, workdir=workdir)
    acknowledged: list[str] = []
    try:
        for _ in range(5):
            httpx2.post(f"{base_url}/auth/token", data={"username": "victim", "password": "not the password"})
        with ThreadPoolExecutor(SIGN_UP_CLIENTS) as pool:
            for number in range(SIGN_UP_CLIENTS):
                pool.submit(sign_up_until_the_server_dies, base_url, number, acknowledged)
            deadline = time.monotonic() + 120
            while len(acknowledged) <= ENOUGH_SIGN_UPS and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(server.pid, signal.SIGKILL)
    finally:
        stop_server(server)

    server, base_url = start_server(env=env, workdir=workdir)
    try:
        with httpx2.Client(base_url=base_url) as http:
            logins = [http.post("/auth/token", data={"username": name, "password": PASSWORD}) for name in acknowledged]
            victim = http.post("/auth/token", data={"username": "victim", "password": "not the password"})
    finally:
        stop_server(server)

    assert len(acknowledged) > ENOUGH_SIGN_UPS
    assert [response.status_code for response in logins] == [200] * len(acknowledged)
    assert victim.status_code == 429
    if not TEST_DATABASE_URL:
        with sqlite3.connect(workdir / "crash.db") as check:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


class DriverError(Exception):
    """Stands for a psycopg exception, which carries a SQLSTATE."""

    def __init__(self, sqlstate=None):
        super().__init__("driver message")
        if sqlstate:
            self.sqlstate = sqlstate


def sqlite_error(code):
    """An sqlite3 error as the driver raises it, with SQLite's (extended) result code."""
    error = sqlite3.OperationalError("driver message")
    error.sqlite_errorcode = code
    return error


# SQLite's result codes: https://sqlite.org/rescode.html
SQLITE_CODES = {
    "SQLITE_BUSY": (5, True),
    "SQLITE_LOCKED": (6, True),
    "SQLITE_BUSY_RECOVERY": (261, True),
    "SQLITE_BUSY_SNAPSHOT": (517, True),
    "SQLITE_BUSY_TIMEOUT": (773, True),
    "SQLITE_LOCKED_SHAREDCACHE": (262, True),
    "SQLITE_LOCKED_VTAB": (518, True),
    "SQLITE_ERROR (a missing table)": (1, False),
    "SQLITE_READONLY_RECOVERY": (1032, False),
    "SQLITE_IOERR_SHORT_READ": (522, False),
}

DATABASE_ERRORS = {
    "no pooled connection came free": (PoolTimeoutError("QueuePool limit reached"), True),
    "the connection dropped": (OperationalError("SELECT 1", {}, DriverError(), connection_invalidated=True), True),
    **{
        f"SQLite {name}": (OperationalError("INSERT", {}, sqlite_error(code)), unavailable)
        for name, (code, unavailable) in SQLITE_CODES.items()
    },
    "psycopg could not connect": (OperationalError("SELECT", {}, DriverError()), True),
    "PostgreSQL connection failure": (OperationalError("SELECT", {}, DriverError(sqlstate="08006")), True),
    "PostgreSQL too many connections": (OperationalError("SELECT", {}, DriverError(sqlstate="53300")), True),
    "PostgreSQL shutting down": (OperationalError("SELECT", {}, DriverError(sqlstate="57P01")), True),
    "PostgreSQL starting up": (OperationalError("SELECT", {}, DriverError(sqlstate="57P03")), True),
    "PostgreSQL disk full": (OperationalError("INSERT", {}, DriverError(sqlstate="53100")), False),
    "PostgreSQL missing table": (ProgrammingError("SELECT", {}, DriverError(sqlstate="42P01")), False),
    "PostgreSQL duplicate key": (IntegrityError("INSERT", {}, DriverError(sqlstate="23505")), False),
    "a driver error with no SQLSTATE that is not operational": (ProgrammingError("SELECT", {}, DriverError()), False),
    "not a driver error at all": (InvalidRequestError("bad use of the ORM"), False),
}


@pytest.mark.parametrize(("error", "unavailable"), DATABASE_ERRORS.values(), ids=DATABASE_ERRORS.keys())
def test_unavailable_or_busy_is_told_apart_from_a_defect(error, unavailable):
    assert database.is_unavailable(error) is unavailable


def test_no_free_pooled_connection_gets_503(client, monkeypatch):
    sign_up(client)
    one_connection = create_engine(database.engine.url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    answer_from(monkeypatch, one_connection)

    with one_connection.connect():
        answers = [log_in(client), sign_up(client, "bob")]

    for response in answers:
        assert_unavailable(response)
    one_connection.dispose()


def test_the_sqlite_engine_waits_for_the_lock_as_long_as_the_timeout_and_uses_wal(monkeypatch):
    monkeypatch.setattr(settings, "database_timeout_seconds", 3)
    engine = database.make_engine(make_url(f"sqlite:///{tempfile.mkdtemp(dir=TEST_FOLDER)}/other.db"))

    with engine.connect() as connection:
        pragmas = [connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("busy_timeout", "journal_mode")]
        with ThreadPoolExecutor(1) as other_thread:  # threads of the pool share connections
            assert other_thread.submit(lambda: connection.exec_driver_sql("SELECT 1").scalar()).result() == 1

    assert pragmas == [3000, "wal"]
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.timeout() == 3
    engine.dispose()


def test_the_postgres_engine_gives_up_connecting_after_the_timeout_and_pings_connections(monkeypatch):
    pytest.importorskip("psycopg", reason="needs the postgres extra")
    monkeypatch.setattr(settings, "database_timeout_seconds", 3)
    engine = database.make_engine(database.parse_database_url("postgresql://user:password@127.0.0.1:1/app"))
    connect_options = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect, record, arguments, options):
        connect_options.update(options)
        raise ConnectionRefusedError("not for real")

    with pytest.raises(ConnectionRefusedError):
        engine.connect()

    assert connect_options["connect_timeout"] == 3
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.timeout() == 3
    assert engine.pool._pre_ping is True


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "not a url",
            "DATABASE_URL is not a database URL: use e.g. sqlite:///./auth.db or postgresql://user:password@host/dbname",
        ),
        (
            "nosuchdb://user:password@host/db",
            "DATABASE_URL: SQLAlchemy knows no database called 'nosuchdb'; use sqlite:///... or postgresql://...",
        ),
        (
            "mysql://user:password@host/db",
            "DATABASE_URL: the driver for 'mysql' is not installed (MySQLdb); "
            'for PostgreSQL run: pip install -e ".[postgres]"',
        ),
    ],
)
def test_a_database_url_that_cannot_work_stops_with_one_line(url, message):
    with pytest.raises(SystemExit) as stopped:
        database.make_engine(database.parse_database_url(url))

    assert str(stopped.value) == message


def test_the_declared_size_check_passes_other_requests_through(client):
    assert client.post("/auth/", json={"username": "alice", "password": PASSWORD}).status_code == 201
    assert client.post("/auth/", content=b"x" * 4097, headers={"Content-Type": "application/json"}).status_code == 413
    assert client.post("/auth/", content=b"x" * 4096, headers={"Content-Type": "application/json"}).status_code == 422


def test_the_declared_size_check_hands_every_other_request_to_the_app():
    """The app builds its middleware once; this builds it again, so a change to it shows."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    async def receive():
        return {"type": "http.request"}

    async def send(message):
        raise AssertionError("the check answered a request it should have passed on")

    scopes: list[dict[str, Any]] = [
        {"type": "http", "path": "/small", "headers": [(b"content-length", b"4096")]},
        {"type": "lifespan", "path": "/"},
    ]
    for scope in scopes:
        anyio.run(main.DeclaredTooLarge(app), scope, receive, send)

    assert seen == ["/small", "/"]


# The one read of every protected request, on the event loop when SQLite can answer at once


@pytest.fixture
def thread_reads(monkeypatch):
    """The reads that went to a worker thread rather than being answered on the event loop."""
    reads = []
    real_read = fast_reads.read_in_thread

    def counted(statement, params):
        reads.append(params)
        return real_read(statement, params)

    monkeypatch.setattr(fast_reads, "read_in_thread", counted)
    return reads


def test_protected_routes_and_the_health_check_read_without_a_worker_thread(client, thread_reads):
    token = token_for(client)

    answers = [client.get(path, headers=bearer(token)) for path in ("/", "/users/me", "/health")]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert thread_reads == []


@sqlite_only
def test_the_sqlite_reader_on_the_event_loop_has_no_busy_timeout_and_only_reads(client):
    client.get("/health")

    reader = fast_reads.sqlite_reader(database.engine.url.database)

    assert reader is not None
    assert reader.execute("PRAGMA busy_timeout").fetchall() == [(0,)]
    assert reader.execute("PRAGMA query_only").fetchall() == [(1,)]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM users")


@pytest.mark.parametrize("path", [None, ":memory:"])
def test_an_sqlite_database_in_memory_has_no_file_to_read_on_the_event_loop(path):
    assert fast_reads.sqlite_reader(path) is None


def test_any_other_database_is_read_on_a_worker_thread(client, monkeypatch, thread_reads):
    token = token_for(client)
    monkeypatch.setattr(database.engine.dialect, "name", "another database")

    assert client.get("/", headers=bearer(token)).status_code == 200
    assert len(thread_reads) == 1


@sqlite_only
def test_get_answers_from_the_event_loop_while_another_connection_holds_the_write_lock(client, thread_reads):
    token = token_for(client)
    holder = sqlite3.connect(str(database.engine.url.database))
    holder.execute("BEGIN IMMEDIATE")
    try:
        greeting = client.get("/", headers=bearer(token))
        docs = client.get("/docs")
    finally:
        holder.rollback()
        holder.close()

    assert (greeting.status_code, docs.status_code) == (200, 200)
    assert thread_reads == []


@sqlite_only
def test_a_lock_that_readers_wait_for_sends_the_read_to_a_thread_while_the_event_loop_goes_on(
    monkeypatch, thread_reads
):
    monkeypatch.setattr(settings, "database_timeout_seconds", 60)
    path = own_sqlite_file(monkeypatch)
    with TestClient(main.app) as client, ThreadPoolExecutor(1) as pool:
        token = token_for(client)
        holder = lock_out_readers(path)
        greeting = pool.submit(client.get, "/", headers=bearer(token))
        deadline = time.monotonic() + 30
        while not thread_reads and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        docs = client.get("/docs")
        docs_seconds, greeting_was_waiting = time.monotonic() - started, not greeting.done()
        holder.close()
        assert greeting.result(timeout=60).status_code == 200

    assert len(thread_reads) == 1
    assert docs.status_code == 200
    assert greeting_was_waiting
    assert docs_seconds < 10  # answered by the event loop while the read waited on its thread (up to 60 s)


class BusyReader:
    """Stands for the event loop's SQLite connection while another process holds a lock: every read fails at once."""

    def __init__(self, code):
        self.code = code

    def execute(self, *args):
        raise sqlite_error(self.code)


@sqlite_only
@pytest.mark.parametrize(
    "code", [5, 261, 517, 6, 262], ids=["BUSY", "BUSY_RECOVERY", "BUSY_SNAPSHOT", "LOCKED", "LOCKED_SHAREDCACHE"]
)
def test_a_busy_sqlite_file_with_any_extended_code_sends_the_read_to_a_thread(client, monkeypatch, thread_reads, code):
    token = token_for(client)
    monkeypatch.setattr(fast_reads, "sqlite_reader", lambda path: BusyReader(code))

    assert client.get("/", headers=bearer(token)).status_code == 200
    assert client.get("/health").status_code == 200
    assert len(thread_reads) == 2


@sqlite_only
def test_any_other_sqlite_error_on_the_event_loop_is_not_hidden(monkeypatch, thread_reads):
    monkeypatch.setattr(fast_reads, "sqlite_reader", lambda path: BusyReader(1))

    with TestClient(main.app, raise_server_exceptions=False) as client:
        assert client.get("/health").status_code == 500
    assert thread_reads == []
