"""What every test file shares: a throwaway database and settings, a client, and the README's requests.

Every test gets empty tables in a throwaway database: a temporary SQLite file, or the PostgreSQL
database named by TEST_DATABASE_URL. The tests run in a temporary working folder, so a developer's
own .env and auth.db are never read or touched.
"""

import atexit
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import bcrypt
import pytest

PROJECT = Path(__file__).resolve().parent.parent  # the project folder: this file is in tests/
TEST_DATABASE_URL = os.getenv("TEST_DATABASE_URL")
if "AUTH_DEMO_TEST_FOLDER" not in os.environ:  # once a process, though pytest may run again in it (mutmut does)
    os.environ["AUTH_DEMO_TEST_FOLDER"] = tempfile.mkdtemp(prefix="auth-demo-tests-")
    atexit.register(shutil.rmtree, os.environ["AUTH_DEMO_TEST_FOLDER"], ignore_errors=True)
    os.environ["DATABASE_URL"] = TEST_DATABASE_URL or f"sqlite:///{os.environ['AUTH_DEMO_TEST_FOLDER']}/test.db"
    os.environ["SECRET_KEY"] = "test-key-made-per-run-" + secrets.token_hex(16)
TEST_FOLDER = os.environ["AUTH_DEMO_TEST_FOLDER"]
INVOKED_IN = os.getcwd()
os.chdir(TEST_FOLDER)  # while the app is imported below: it reads .env from the working folder
os.environ["BCRYPT_ROUNDS"] = "4"
for name in (
    "ALGORITHM",
    "TOKEN_ISSUER",
    "TOKEN_AUDIENCE",
    "SIGNING_KEY_CACHE_SECONDS",
    "ACCESS_TOKEN_EXPIRE_MINUTES",
    "REFRESH_TOKEN_EXPIRE_DAYS",
    "MAX_SESSIONS_PER_USER",
    "PASSWORD_MIN_LENGTH",
    "LOGIN_MAX_FAILURES",
    "LOGIN_WINDOW_SECONDS",
    "DATABASE_TIMEOUT_SECONDS",
    "PUBLIC_ORIGIN",
    "HOST",
    "PORT",
):
    os.environ.pop(name, None)

import jwt
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import database
import fast_reads
import keys
import main
import migrate
import passwords
from models import User

os.chdir(INVOKED_IN)  # pytest finds the tests from where it was started, after this file is imported

postgres_only = pytest.mark.skipif(
    not TEST_DATABASE_URL,
    reason="needs PostgreSQL: run with TEST_DATABASE_URL=postgresql://user:password@host/dbname "
    "(bash .ci/postgres start prints one)",
)
sqlite_only = pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="checks SQLite settings")

PASSWORD = "correct horse"


@pytest.fixture(scope="session", autouse=True)
def in_the_test_folder() -> None:
    """The tests run in the temporary folder too: nothing they start reads or writes the project's files."""
    os.chdir(TEST_FOLDER)


@pytest.fixture(scope="session", autouse=True)
def own_connections() -> None:
    """A process forked with the suite loaded (mutmut forks one per mutant) must not share its parent's connections."""
    database.engine.dispose(close=False)


@pytest.fixture(autouse=True)
def fresh_database() -> None:
    """Empty tables, and signing keys made anew in them, as the app makes them on its first start."""
    database.Base.metadata.drop_all(database.engine)
    database.Base.metadata.create_all(database.engine)
    keys.read_again()


CLIENT_ADDRESS = "192.0.2.1"  # RFC 5737's, for documentation


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(main.app, client=(CLIENT_ADDRESS, 50000)) as client:
        yield client


@pytest.fixture
def bcrypt_runs(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Count the times bcrypt itself runs (passlib calls bcrypt.hashpw to hash and to verify)."""
    runs: list[bytes] = []
    real_hashpw = bcrypt.hashpw

    def counting_hashpw(password: bytes, salt: bytes) -> bytes:
        runs.append(password)
        return real_hashpw(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", counting_hashpw)
    return runs


@pytest.fixture
def bcrypt_work(monkeypatch) -> list[int]:
    """The work bcrypt does, added up over its runs: a run at cost c does 2**c rounds (the cost is in the salt)."""
    work: list[int] = []
    real_hashpw = bcrypt.hashpw

    def counting_hashpw(password: bytes, salt: bytes) -> bytes:
        work.append(2 ** int(salt.split(b"$")[2]))
        return real_hashpw(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", counting_hashpw)
    return work


@pytest.fixture
def park_logins(monkeypatch):
    """Call it to make password checks stop inside bcrypt (only the first one, with first_only=True); it returns an
    event set once one is there, and one to let it go."""
    events = threading.Event(), threading.Event()

    def park(first_only=False):
        real_verify = passwords.password_context.verify_and_update

        def parked_verify(*args):
            hashing, may_finish = events
            if not (first_only and hashing.is_set()):
                hashing.set()
                may_finish.wait(timeout=10)
            return real_verify(*args)

        monkeypatch.setattr(passwords.password_context, "verify_and_update", parked_verify)
        return events

    yield park
    events[1].set()


def answer_from(monkeypatch, engine):
    """Make the app talk to the database through this engine for the rest of the test."""
    monkeypatch.setattr(database, "engine", engine)
    monkeypatch.setattr(database, "SessionLocal", sessionmaker(engine, expire_on_commit=False))


def own_sqlite_file(monkeypatch):
    """Make the app use an SQLite file of this test's own, which no other connection has open; return its path."""
    path = f"{tempfile.mkdtemp(dir=TEST_FOLDER)}/own.db"
    answer_from(monkeypatch, database.make_engine(make_url(f"sqlite:///{path}")))
    migrate.upgrade(database.engine)
    return path


def lock_out_readers(path):
    """Close the app's connections, then hold the file as a program in exclusive locking mode does after a write:
    no reader gets in until the connection returned is closed."""
    anyio.run(fast_reads.close)
    database.engine.dispose()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("DELETE FROM login_failures")
    holder.execute("COMMIT")
    return holder


def count_rows(model):
    with Session(database.engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def unverified_claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def claims_for(token, **changes):
    """The claims of a real token, with some changed (None leaves one out), for a token we sign ourselves."""
    claims = {**unverified_claims(token), "exp": int(time.time()) + 300, **changes}
    return {name: value for name, value in claims.items() if value is not None}


def verified(client, token):
    """The claims of a token, verified as another service verifies them: with the key the JWKS publishes for its
    kid, that key's algorithm, and the app's issuer and audience."""
    published = client.get("/.well-known/jwks.json").json()["keys"]
    [key] = [jwt.PyJWK(jwk) for jwk in published if jwk["kid"] == jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience="fastapi-jwt-auth-demo",
        issuer="http://127.0.0.1:8000",
    )


def signed(claims, key=None, algorithm=None, **header):
    """A token signed as the app signs, with the current key and its kid, unless told otherwise (None leaves a
    header field out)."""
    kid, signing_key = keys.for_signing()
    headers = {name: value for name, value in {"kid": kid, "typ": "at+jwt", **header}.items() if value is not None}
    return jwt.encode(claims, signing_key if key is None else key, algorithm=algorithm or "ES256", headers=headers)


def sign_up(client, username="alice", password=PASSWORD):
    return client.post("/auth/", json={"username": username, "password": password})


def log_in(client, username="alice", password=PASSWORD):
    return client.post("/auth/token", data={"username": username, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def tokens_for(client, username="alice", password=PASSWORD):
    """Sign up and log in; return the whole answer: an access token and a refresh token."""
    assert sign_up(client, username, password).status_code == 201
    return log_in(client, username, password).json()


def token_for(client, username="alice", password=PASSWORD):
    return tokens_for(client, username, password)["access_token"]


def make_admin(username="root"):
    """What `python manage.py make-admin` does for an existing user, straight in the database."""
    with Session(database.engine) as session:
        session.execute(update(User).where(User.username == username).values(role="admin", disabled=False))
        session.commit()


def admin_tokens_for(client, username="root"):
    """Sign up, become an administrator, and log in: tokens with every scope."""
    assert sign_up(client, username).status_code == 201
    make_admin(username)
    return log_in(client, username).json()


def refresh(client, refresh_token):
    return client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})


@pytest.fixture
def clock(monkeypatch):
    """Call it with a number of seconds to make time.time() that much later, as if they had passed."""
    real_time, offset = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])

    def move(seconds):
        offset[0] += seconds

    return move


def politely(request, *args, **kwargs):
    """Send a request again after its Retry-After while the app answers 503, as a polite client does."""
    for _ in range(100):
        response = request(*args, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers["Retry-After"]))
    raise AssertionError("still 503 after 100 tries")


def wait_until_blocked_or_done(request):
    """Until a request (a future) waits for a lock that another one holds, or has its answer. PostgreSQL shows its
    waiters in pg_locks; SQLite makes a second writer wait for the first in any case, so there is nothing to see."""
    if not TEST_DATABASE_URL:
        return
    deadline = time.monotonic() + 10
    while not request.done():
        with database.engine.connect() as connection:
            if connection.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                return
        assert time.monotonic() < deadline, "the request neither waited for a lock nor ended"
        time.sleep(0.01)


def child_env(**changes):
    """This process's environment, with these changes (None removes a variable), for a child in another folder.

    mutmut's first pass maps tests to functions in the test process only; a child would look for its settings.
    """
    mutmut_stats = {"MUTANT_UNDER_TEST": None} if os.environ.get("MUTANT_UNDER_TEST") == "stats" else {}
    env = {**os.environ, "PYTHONPATH": str(PROJECT), **mutmut_stats, **changes}
    return {name: value for name, value in env.items() if value is not None}


def run_python(code, workdir=None, stdin=None, **env_changes):
    """Run code in a new Python process, in a working folder of its own unless one is given."""
    workdir = workdir or tempfile.mkdtemp(dir=TEST_FOLDER)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(**env_changes),
        cwd=workdir,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*uvicorn_options, env=None, workdir=None):
    """Start uvicorn with the app on a free port; return the process and its address once it answers."""
    port = free_port()
    command = ["-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port), *uvicorn_options]
    return serve(command, port, env or child_env(), workdir)


def serve(python_arguments, port, env, workdir=None, python=sys.executable):
    """Run Python with these arguments until it answers on the port; a server that exits fails the test at once."""
    import httpx2

    server = subprocess.Popen(
        [python, *python_arguments],
        cwd=workdir or TEST_FOLDER,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with code {server.returncode}:\n{server.communicate()[0]}")
        try:
            httpx2.get(f"{base_url}/openapi.json")
            return server, base_url
        except httpx2.TransportError:
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError(f"the server did not answer in 30 s:\n{server.communicate()[0]}") from None
            time.sleep(0.1)


def stop_server(server):
    server.terminate()
    output, _ = server.communicate(timeout=30)
    return output
