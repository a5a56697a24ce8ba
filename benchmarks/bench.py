"""Measure the app on this machine: python benchmarks/bench.py [--quick] [--database-url postgresql://...]

Starts the app with uvicorn on a free loopback port, in a temporary directory with its own
SQLite file (or schemas of its own in the PostgreSQL database given) and a key made for this
run, and beside it a bare FastAPI app with the same uvicorn settings. The targets are ratios
of figures measured in the same run, so a busy machine slows both sides. The login throttle is
off for these figures, so that they keep measuring hashing and the database; the storm and the
flood run on a second instance of the app with its default settings, throttle on; the burst
runs on three more, started at once.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from itertools import repeat, takewhile
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

PROJECT = Path(__file__).resolve().parent.parent  # the project folder: this file is in benchmarks/
BARE_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def hello():
    return {"message": "hello"}


@app.get("/async")
async def hello_async():
    return {"message": "hello"}
"""
PASSWORD = "bench password"
TARGETS = {
    "login_scaling": (1.8, None),
    "protected_vs_bare": (0.5, None),
    "protected_vs_bare_async": (0.62, None),
    "users_me_vs_bare": (0.5, None),
    "health_vs_bare": (0.5, None),
    "refresh_vs_login": (20, None),
    "browser_login_vs_login": (0.8, 1.25),
    "browser_refresh_vs_refresh": (0.8, None),
    "loop_stall": (None, 2),
    "enumeration_timing": (0.8, 1.25),
    "signup_errors": (0, 0),
    "burst_refused": (0, 0),
    "storm_tokens": (100, 100),
    "storm_stall": (None, 10),
    "flood_stall": (None, 25),
    "flood_owner_login_s": (None, 1),
    "abuse_unexpected_answers": (0, 0),
    "deep_page_vs_first": (None, 1.5),
}
# On PostgreSQL the read is a round trip to another process: the protected routes aim lower there.
POSTGRES_TARGETS = {
    "protected_vs_bare": (0.35, None),
    "protected_vs_bare_async": (0.3, None),
    "users_me_vs_bare": (0.35, None),
}
SEEDED_USERS = 100_000
STORM_CLIENTS, FLOOD_CLIENTS, BURST_CLIENTS, REFRESH_CLIENTS = 100, 64, 8, 8
Request = tuple[str, str, bytes, tuple[str, ...]]
Answers = list[tuple[int, float | None]]
T = TypeVar("T")
EXPECTED_UNDER_ABUSE = {200, 401, 429, 503}


class Connection:
    """One keep-alive HTTP/1.1 connection, so cheap that the server, not the client, is measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.last_head = b""  # the head of the last answer, for its Set-Cookie

    @classmethod
    async def open(cls, port: int, from_address: str = "127.0.0.1") -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port, local_addr=(from_address, 0)))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: tuple[str, ...] = ()
    ) -> tuple[int, bytes]:
        status, _, response_body = await self.exchange(method, path, body, headers)
        return status, response_body

    async def exchange(
        self, method: str, path: str, body: bytes = b"", headers: tuple[str, ...] = ()
    ) -> tuple[int, float | None, bytes]:
        """Send one request; return its status, its Retry-After (None if absent) and its body."""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *headers]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        response_head = self.last_head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", response_head)
        retry_after = re.search(rb"(?i)retry-after: *(\d+)", response_head)
        response_body = await self.reader.readexactly(int(length.group(1)) if length else 0)
        return int(response_head[9:12]), float(retry_after.group(1)) if retry_after else None, response_body

    def close(self) -> None:
        self.writer.close()


def log_in_request(username: str, password: str) -> Request:
    body = urlencode({"username": username, "password": password}).encode()
    return "POST", "/auth/token", body, ("Content-Type: application/x-www-form-urlencoded",)


def sign_up_request(username: str) -> Request:
    body = json.dumps({"username": username, "password": PASSWORD}).encode()
    return "POST", "/auth/", body, ("Content-Type: application/json",)


def for_seconds(seconds: float, request: Request) -> Iterator[Request]:
    deadline = time.perf_counter() + seconds
    return takewhile(lambda _: time.perf_counter() < deadline, repeat(request))


async def run_requests(port: int, clients: int, requests: Iterable[Request]) -> tuple[float, list[int], list[float]]:
    """Send the requests over this many connections at once; return the seconds taken, the statuses and
    each request's latency."""
    pending = iter(requests)
    statuses: list[int] = []
    latencies: list[float] = []
    connections = [await Connection.open(port) for _ in range(clients)]

    async def client(connection: Connection) -> None:
        for request in pending:
            sent = time.perf_counter()
            status, _ = await connection.request(*request)
            latencies.append(time.perf_counter() - sent)
            statuses.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(client(connection) for connection in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return elapsed, statuses, latencies


async def requests_per_second(
    port: int, clients: int, requests: Iterable[Request], expected_status: int = 200
) -> float:
    elapsed, statuses, _ = await run_requests(port, clients, requests)
    assert set(statuses) == {expected_status}, set(statuses)
    return len(statuses) / elapsed


async def throughput(port: int, clients: int, requests: Iterable[Request]) -> tuple[float, float]:
    """Requests per second, all answered 200, and the 99th percentile of their latency in milliseconds."""
    elapsed, statuses, latencies = await run_requests(port, clients, requests)
    assert set(statuses) == {200}, set(statuses)
    return len(statuses) / elapsed, statistics.quantiles(latencies, n=100)[98] * 1000


async def login_latency(connection: Connection, username: str, password: str) -> float:
    started = time.perf_counter()
    status, _ = await connection.request(*log_in_request(username, password))
    assert status == 401, status
    return time.perf_counter() - started


def refresh_request(refresh_token: str) -> Request:
    body = urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token}).encode()
    return "POST", "/auth/token", body, ("Content-Type: application/x-www-form-urlencoded",)


def browser_log_in_request(username: str, password: str) -> Request:
    body = json.dumps({"username": username, "password": password}).encode()
    return "POST", "/auth/browser/login", body, ("Content-Type: application/json",)


def browser_refresh_request(cookie: str) -> Request:
    return "POST", "/auth/browser/refresh", b"", (f"Cookie: {cookie}",)


def refresh_cookie(head: bytes) -> str:
    """The browser's cookie from an answer's Set-Cookie, as the browser sends it back."""
    found = re.search(rb"(?i)set-cookie: *([^;\r]+)", head)
    assert found, head
    return found.group(1).decode()


async def tokens_for(port: int, username: str) -> dict[str, Any]:
    connection = await Connection.open(port)
    status, body = await connection.request(*log_in_request(username, PASSWORD))
    connection.close()
    assert status == 200, body
    tokens: dict[str, Any] = json.loads(body)
    return tokens


async def refresh_token_for(port: int) -> str:
    refresh_token: str = (await tokens_for(port, "bench-user"))["refresh_token"]
    return refresh_token


async def browser_cookie_for(port: int) -> str:
    connection = await Connection.open(port)
    status, body = await connection.request(*browser_log_in_request("bench-user", PASSWORD))
    connection.close()
    assert status == 200, body
    return refresh_cookie(connection.last_head)


async def token_for(port: int, username: str) -> str:
    token: str = (await tokens_for(port, username))["access_token"]
    return token


async def refreshes_per_second(port: int, seconds: float, pause: float = 0, browser: bool = False) -> float:
    """REFRESH_CLIENTS clients, each with a session of its own, refresh it back to back (or with a pause
    between two refreshes), each time with the refresh token the last refresh gave: in the body with the refresh
    grant, or as a browser does, in the cookie."""
    sessions = [await (browser_cookie_for if browser else refresh_token_for)(port) for _ in range(REFRESH_CLIENTS)]

    async def client(refresh_token: str) -> int:
        connection = await Connection.open(port)
        refreshes, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            request = browser_refresh_request(refresh_token) if browser else refresh_request(refresh_token)
            status, body = await connection.request(*request)
            assert status == 200, body
            refresh_token = refresh_cookie(connection.last_head) if browser else json.loads(body)["refresh_token"]
            refreshes += 1
            await asyncio.sleep(pause)
        connection.close()
        return refreshes

    started = time.perf_counter()
    counts = await asyncio.gather(*(client(refresh_token) for refresh_token in sessions))
    return sum(counts) / (time.perf_counter() - started)


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return round(statistics.median(numerators) / statistics.median(denominators), 2)


async def measure(app_port: int, bare_port: int, quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 3
    await requests_per_second(app_port, 1, [sign_up_request("bench-user")], expected_status=201)
    token = await token_for(app_port, "bench-user")
    routes = {
        "protected": (app_port, ("GET", "/", b"", (f"Authorization: Bearer {token}",))),
        "users_me": (app_port, ("GET", "/users/me", b"", (f"Authorization: Bearer {token}",))),
        "health": (app_port, ("GET", "/health", b"", ())),
        "bare": (bare_port, ("GET", "/", b"", ())),
        "bare_async": (bare_port, ("GET", "/async", b"", ())),
    }
    for port, request in routes.values():
        await requests_per_second(port, 16, [request] * 500)

    login = log_in_request("bench-user", PASSWORD)
    browser_login = browser_log_in_request("bench-user", PASSWORD)
    scaling, logins, browser_logins = [], [], []
    for _ in range(rounds):
        one = await requests_per_second(app_port, 1, [login] * (6 if quick else 10))
        eight = await requests_per_second(app_port, 8, [login] * (24 if quick else 48))
        scaling.append(eight / one)
        logins.append(eight)
        browser_logins.append(await requests_per_second(app_port, 8, [browser_login] * (24 if quick else 48)))

    rates: dict[str, list[float]] = {name: [] for name in routes}
    p99s: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(rounds + 1):
        for name, (port, request) in routes.items():
            rate, p99 = await throughput(port, 16, for_seconds(2 if quick else 4, request))
            rates[name].append(rate)
            p99s[name].append(p99)

    refreshes = await refreshes_per_second(app_port, 3 if quick else 6)
    browser_refreshes = await refreshes_per_second(app_port, 3 if quick else 6, browser=True)
    greeting = routes["protected"][1]
    _, idle = await while_greeting(app_port, greeting, asyncio.sleep(2))
    half_the_capacity = REFRESH_CLIENTS / (refreshes / 2)  # the pause that makes a steady stream of writes
    writes = refreshes_per_second(app_port, 3 if quick else 6, pause=half_the_capacity)
    _, writing = await while_greeting(app_port, greeting, writes)

    unknown, known = [], []
    connection = await Connection.open(app_port)
    for _ in range(40):
        unknown.append(await login_latency(connection, "nobody-here", PASSWORD))
        known.append(await login_latency(connection, "bench-user", "wrong password"))
    connection.close()

    signups = [sign_up_request(f"signup-{number}") for number in range(32 if quick else 80)]
    elapsed, statuses, _ = await run_requests(app_port, 8, signups)

    return {
        "login_scaling": round(statistics.median(scaling), 2),
        "protected_vs_bare": median_ratio(rates["protected"], rates["bare"]),
        "protected_vs_bare_async": median_ratio(rates["protected"], rates["bare_async"]),
        "users_me_vs_bare": median_ratio(rates["users_me"], rates["bare"]),
        "health_vs_bare": median_ratio(rates["health"], rates["bare"]),
        **{f"{name}_rps": round(statistics.median(rates[name])) for name in routes},
        **{f"{name}_p99_ms": round(statistics.median(p99s[name]), 1) for name in routes},
        "refreshes_per_second": round(refreshes, 1),
        "logins_per_second": round(statistics.median(logins), 2),
        "refresh_vs_login": round(refreshes / statistics.median(logins), 1),
        "browser_logins_per_second": round(statistics.median(browser_logins), 2),
        "browser_login_vs_login": median_ratio(browser_logins, logins),
        "browser_refreshes_per_second": round(browser_refreshes, 1),
        "browser_refresh_vs_refresh": round(browser_refreshes / refreshes, 2),
        "loop_stall": round(writing / idle, 1),
        "enumeration_timing": round(statistics.median(unknown) / statistics.median(known), 2),
        "login_ms_known_user": round(statistics.median(known) * 1000, 1),
        "signups_per_second": round(len(signups) / elapsed, 2),
        "signup_errors": sum(1 for status in statuses if not 200 <= status < 300),
    }


async def sample_latency(port: int, greeting: Request, stop: asyncio.Event) -> float:
    """A logged-in user's GET /, one request every 50 ms until told to stop; return the median latency."""
    connection = await Connection.open(port)
    latencies: list[float] = []
    while not stop.is_set() or not latencies:
        started = time.perf_counter()
        status, _ = await connection.request(*greeting)
        assert status == 200, status
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    connection.close()
    return statistics.median(latencies)


async def while_greeting(port: int, greeting: Request, work: Awaitable[T]) -> tuple[T, float]:
    """Do the work while a logged-in user calls GET / every 50 ms; return its result and their median latency."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_latency(port, greeting, stop))
    result = await work
    stop.set()
    return result, await sampler


async def storm(port: int, login: Request, answers: Answers) -> list[float]:
    """STORM_CLIENTS log in at once, each retrying after Retry-After; return when each got its token."""
    started = time.perf_counter()
    deadline = started + 120

    async def client() -> float | None:
        connection = await Connection.open(port)
        try:
            while time.perf_counter() < deadline:
                status, retry_after, _ = await connection.exchange(*login)
                answers.append((status, retry_after))
                if status == 200:
                    return time.perf_counter() - started
                if status not in (429, 503) or retry_after is None:
                    return None
                await asyncio.sleep(min(retry_after, deadline - time.perf_counter()))
            return None
        finally:
            connection.close()

    return [seconds for seconds in await asyncio.gather(*(client() for _ in range(STORM_CLIENTS))) if seconds]


async def flood(port: int, wrong_login: Request, seconds: float, answers: Answers) -> None:
    """FLOOD_CLIENTS post wrong passwords for one account back to back."""

    async def client() -> None:
        connection = await Connection.open(port)
        for request in for_seconds(seconds, wrong_login):
            status, retry_after, _ = await connection.exchange(*request)
            answers.append((status, retry_after))
        connection.close()

    await asyncio.gather(*(client() for _ in range(FLOOD_CLIENTS)))


def unexpected(answers: Answers) -> int:
    """Answers other than 200, 401, 429 and 503, and 429s and 503s without Retry-After."""
    return sum(
        status not in EXPECTED_UNDER_ABUSE or (status in (429, 503) and after is None) for status, after in answers
    )


async def measure_abuse(port: int) -> dict[str, Any]:
    for username in ("bench-user", "flood-target", "greeter"):
        await requests_per_second(port, 1, [sign_up_request(username)], expected_status=201)
    # Not bench-user: its storm of logins goes past MAX_SESSIONS_PER_USER, which ends its least recently used session.
    greeting = ("GET", "/", b"", (f"Authorization: Bearer {await token_for(port, 'greeter')}",))
    _, idle = await while_greeting(port, greeting, asyncio.sleep(2))
    storm_answers: Answers = []
    token_times, storm_latency = await while_greeting(
        port, greeting, storm(port, log_in_request("bench-user", PASSWORD), storm_answers)
    )
    flood_answers: Answers = []
    _, flood_latency = await while_greeting(
        port, greeting, flood(port, log_in_request("flood-target", "wrong password"), 10, flood_answers)
    )

    owner = await Connection.open(port, from_address="127.0.0.2")
    started = time.perf_counter()
    owner_status, _ = await owner.request(*log_in_request("flood-target", PASSWORD))
    owner_seconds = time.perf_counter() - started
    owner.close()
    assert owner_status == 200, owner_status

    return {
        "storm_tokens": len(token_times),
        "storm_seconds": round(max(token_times, default=0), 1),
        "storm_stall": round(storm_latency / idle, 1),
        "flood_answers": {str(status): count for status, count in sorted(Counter(s for s, _ in flood_answers).items())},
        "flood_stall": round(flood_latency / idle, 1),
        "flood_owner_login_s": round(owner_seconds, 2),
        "idle_greeting_ms": round(idle * 1000, 1),
        "abuse_unexpected_answers": unexpected(storm_answers) + unexpected(flood_answers),
    }


def seed_users(database_url: str) -> None:
    """SEEDED_USERS accounts straight into the app's database, with no bcrypt: only their rows are measured."""
    from sqlalchemy import MetaData, Table, create_engine, insert

    engine = create_engine(database_url)
    users = Table("users", MetaData(), autoload_with=engine)
    names = [f"seeded-{number}" for number in range(SEEDED_USERS)]
    with engine.begin() as connection:
        connection.execute(insert(users), [{"username": n, "username_key": n, "hashed_password": "x"} for n in names])
    engine.dispose()


def make_admin(username: str, workdir: Path, env: dict[str, str]) -> None:
    """As an operator does, with manage.py."""
    command = [sys.executable, str(PROJECT / "manage.py"), "make-admin", username, "--password-stdin"]
    subprocess.run(command, cwd=workdir, env=env, input=f"{PASSWORD}\n", text=True, check=True, capture_output=True)


async def page_latency(connection: Connection, after: int, token: str) -> float:
    started = time.perf_counter()
    status, body = await connection.request(
        "GET", f"/admin/users?limit=50&after={after}", b"", (f"Authorization: Bearer {token}",)
    )
    assert status == 200 and len(json.loads(body)["users"]) == 50, body
    return time.perf_counter() - started


async def measure_pages(port: int, quick: bool) -> dict[str, Any]:
    """The first page of GET /admin/users and one after id 99,000, in turns: keyset pagination costs the same."""
    token = await token_for(port, "bench-admin")
    connection = await Connection.open(port)
    first, deep = [], []
    for _ in range(50 if quick else 200):
        first.append(await page_latency(connection, 0, token))
        deep.append(await page_latency(connection, SEEDED_USERS - 1000, token))
    connection.close()
    return {
        "first_page_ms": round(statistics.median(first) * 1000, 2),
        "deep_page_ms": round(statistics.median(deep) * 1000, 2),
        "deep_page_vs_first": round(statistics.median(deep) / statistics.median(first), 2),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(app: str, app_dir: Path, port: int, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start uvicorn; what it prints (a warning per throttled login, in the flood) goes to a file in workdir."""
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    log = (workdir / f"server-{port}.log").open("w")
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_listening(port: int, server: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = (workdir / f"server-{port}.log").read_text()
            sys.exit(f"the server on port {port} exited with code {server.returncode}:\n{output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the server on port {port} did not start within 30 s")


def resident_memory_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


def target_lines(figures: dict[str, Any], targets: dict[str, tuple[Any, Any]]) -> tuple[list[str], bool]:
    lines, all_met = [], True
    for name, (low, high) in targets.items():
        value = figures[name]
        met = (low is None or value >= low) and (high is None or value <= high)
        all_met = all_met and met
        if low is None or high is None:
            wanted = f"<= {high}" if low is None else f">= {low}"
        else:
            wanted = f"= {low}" if low == high else f"{low} to {high}"
        lines.append(f"{name}: {value} (target {wanted}) {'met' if met else 'MISSED'}")
    return lines, all_met


async def burst(ports: list[int]) -> int:
    """On each freshly started instance, BURST_CLIENTS log in at once, three times each; return the refusals."""
    login = log_in_request("bench-user", PASSWORD)
    refused = 0
    for port in ports:
        _, statuses, _ = await run_requests(port, BURST_CLIENTS, [login] * (3 * BURST_CLIENTS))
        refused += sum(status != 200 for status in statuses)
    return refused


@contextlib.contextmanager
def databases(database_url: str | None, workdir: Path) -> Iterator[tuple[str, str]]:
    """The app's database and the abuse instance's: two SQLite files in workdir, or two schemas made for this
    run in the PostgreSQL database given, and dropped after it, so that nothing else in it is touched."""
    if not database_url:
        yield f"sqlite:///{workdir}/bench.db", f"sqlite:///{workdir}/abuse.db"
        return
    from sqlalchemy import create_engine, make_url, text

    url = make_url(database_url).set(drivername="postgresql+psycopg")
    schemas = [f"bench_{secrets.token_hex(4)}_{name}" for name in ("app", "abuse")]
    engine = create_engine(url)
    with engine.begin() as connection:
        for schema in schemas:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        app_url, abuse_url = (
            url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
            for schema in schemas
        )
        yield app_url, abuse_url
    finally:
        with engine.begin() as connection:
            for schema in schemas:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


# The app's own settings are left at their defaults, whatever this shell has set.
APP_SETTINGS = (
    "ALGORITHM",
    "ACCESS_TOKEN_EXPIRE_MINUTES",
    "REFRESH_TOKEN_EXPIRE_DAYS",
    "BCRYPT_ROUNDS",
    "PASSWORD_MIN_LENGTH",
    "DATABASE_TIMEOUT_SECONDS",
    "LOGIN_MAX_FAILURES",
    "LOGIN_WINDOW_SECONDS",
    "MAX_SESSIONS_PER_USER",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL"),
        help="a PostgreSQL database to measure on (default: $TEST_DATABASE_URL, else SQLite files)",
    )
    arguments = parser.parse_args()
    targets = TARGETS | (POSTGRES_TARGETS if arguments.database_url else {})

    with tempfile.TemporaryDirectory(prefix="auth-demo-bench-") as folder:
        workdir = Path(folder)
        (workdir / "bare_app.py").write_text(BARE_APP)
        defaults = {name: value for name, value in os.environ.items() if name not in APP_SETTINGS}
        key = "bench-only-key-" + secrets.token_hex(16)
        with databases(arguments.database_url, workdir) as (app_database, abuse_database):
            # bench-user logs in hundreds of times: past the bound, the session whose token is measured would end.
            env = {**defaults, "DATABASE_URL": app_database, "SECRET_KEY": key, "LOGIN_MAX_FAILURES": "0"}
            env["MAX_SESSIONS_PER_USER"] = "10000"
            abuse_env = {**defaults, "DATABASE_URL": abuse_database, "SECRET_KEY": key}
            ports = {"app": free_port(), "bare": free_port(), "abuse": free_port()}
            servers = {
                "app": start_server("main:app", PROJECT, ports["app"], workdir, env),
                "bare": start_server("bare_app:app", workdir, ports["bare"], workdir, env),
                "abuse": start_server("main:app", PROJECT, ports["abuse"], workdir, abuse_env),
            }
            try:
                for name, server in servers.items():
                    wait_until_listening(ports[name], server, workdir)
                started = time.perf_counter()
                figures = asyncio.run(measure(ports["app"], ports["bare"], arguments.quick))
                figures["server_memory_mb"] = resident_memory_mb(servers["app"].pid)
                figures |= asyncio.run(measure_abuse(ports["abuse"]))
                burst_ports = [free_port() for _ in range(3)]
                servers |= {
                    f"burst-{port}": start_server("main:app", PROJECT, port, workdir, env) for port in burst_ports
                }
                for port in burst_ports:
                    wait_until_listening(port, servers[f"burst-{port}"], workdir)
                figures["burst_refused"] = asyncio.run(burst(burst_ports))
                seed_users(app_database)
                make_admin("bench-admin", workdir, env)
                figures |= asyncio.run(measure_pages(ports["app"], arguments.quick))
                figures["seconds"] = round(time.perf_counter() - started, 1)
            finally:
                for server in servers.values():
                    server.terminate()
                    server.wait(timeout=30)

    figures["database"] = "postgresql" if arguments.database_url else "sqlite"
    figures["cores"] = os.cpu_count()
    for name, value in figures.items():
        print(f"{name}: {value}")
    lines, all_met = target_lines(figures, targets)
    print("\n".join(["", "targets:", *lines, ""]))
    print(json.dumps(figures))
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
