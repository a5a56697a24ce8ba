"""Measure the app on this machine: python bench.py [--quick]

Starts the app with uvicorn on a free loopback port, in a temporary directory with its own
SQLite file and a key made for this run, and beside it a bare FastAPI app with the same
uvicorn settings. The targets are ratios of figures measured in the same run, so a busy
machine slows both sides.
"""

import argparse
import asyncio
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
from collections.abc import Iterable, Iterator
from itertools import repeat, takewhile
from pathlib import Path
from urllib.parse import urlencode

PROJECT = Path(__file__).resolve().parent
BARE_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello():
    return {"message": "hello"}
"""
PASSWORD = "bench password"
TARGETS = {
    "login_scaling": (1.8, None),
    "protected_vs_bare": (0.6, None),
    "enumeration_timing": (0.8, 1.25),
    "signup_errors": (0, 0),
}


class Connection:
    """One keep-alive HTTP/1.1 connection, so cheap that the server, not the client, is measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: tuple[str, ...] = ()
    ) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *headers]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", response_head)
        response_body = await self.reader.readexactly(int(length.group(1)) if length else 0)
        return int(response_head[9:12]), response_body

    def close(self) -> None:
        self.writer.close()


def log_in_request(username: str, password: str) -> tuple:
    body = urlencode({"username": username, "password": password}).encode()
    return "POST", "/auth/token", body, ("Content-Type: application/x-www-form-urlencoded",)


def sign_up_request(username: str) -> tuple:
    body = json.dumps({"username": username, "password": PASSWORD}).encode()
    return "POST", "/auth/", body, ("Content-Type: application/json",)


def for_seconds(seconds: float, request: tuple) -> Iterator[tuple]:
    deadline = time.perf_counter() + seconds
    return takewhile(lambda _: time.perf_counter() < deadline, repeat(request))


async def run_requests(port: int, clients: int, requests: Iterable[tuple]) -> tuple[float, list[int]]:
    """Send the requests over this many connections at once; return the seconds taken and the statuses."""
    pending = iter(requests)
    statuses: list[int] = []
    connections = [await Connection.open(port) for _ in range(clients)]

    async def client(connection: Connection) -> None:
        for request in pending:
            status, _ = await connection.request(*request)
            statuses.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(client(connection) for connection in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return elapsed, statuses


async def requests_per_second(port: int, clients: int, requests: Iterable[tuple], expected_status: int = 200) -> float:
    elapsed, statuses = await run_requests(port, clients, requests)
    assert set(statuses) == {expected_status}, set(statuses)
    return len(statuses) / elapsed


async def login_latency(connection: Connection, username: str, password: str) -> float:
    started = time.perf_counter()
    status, _ = await connection.request(*log_in_request(username, password))
    assert status == 401, status
    return time.perf_counter() - started


async def token_for(port: int, username: str) -> str:
    connection = await Connection.open(port)
    status, body = await connection.request(*log_in_request(username, PASSWORD))
    connection.close()
    assert status == 200, body
    return json.loads(body)["access_token"]


async def measure(app_port: int, bare_port: int, quick: bool) -> dict:
    rounds = 2 if quick else 3
    await requests_per_second(app_port, 1, [sign_up_request("bench-user")], expected_status=201)
    greeting = ("GET", "/", b"", (f"Authorization: Bearer {await token_for(app_port, 'bench-user')}",))
    hello = ("GET", "/", b"", ())
    await requests_per_second(app_port, 16, [greeting] * 500)
    await requests_per_second(bare_port, 16, [hello] * 500)

    login = log_in_request("bench-user", PASSWORD)
    scaling = []
    for _ in range(rounds):
        one = await requests_per_second(app_port, 1, [login] * (6 if quick else 10))
        eight = await requests_per_second(app_port, 8, [login] * (24 if quick else 48))
        scaling.append(eight / one)

    protected, bare = [], []
    for _ in range(rounds + 1):
        protected.append(await requests_per_second(app_port, 16, for_seconds(2 if quick else 4, greeting)))
        bare.append(await requests_per_second(bare_port, 16, for_seconds(2 if quick else 4, hello)))

    unknown, known = [], []
    connection = await Connection.open(app_port)
    for _ in range(40):
        unknown.append(await login_latency(connection, "nobody-here", PASSWORD))
        known.append(await login_latency(connection, "bench-user", "wrong password"))
    connection.close()

    signups = [sign_up_request(f"signup-{number}") for number in range(32 if quick else 80)]
    elapsed, statuses = await run_requests(app_port, 8, signups)

    return {
        "login_scaling": round(statistics.median(scaling), 2),
        "protected_vs_bare": round(statistics.median(protected) / statistics.median(bare), 2),
        "protected_rps": round(statistics.median(protected)),
        "bare_rps": round(statistics.median(bare)),
        "enumeration_timing": round(statistics.median(unknown) / statistics.median(known), 2),
        "login_ms_known_user": round(statistics.median(known) * 1000, 1),
        "signups_per_second": round(len(signups) / elapsed, 2),
        "signup_errors": sum(1 for status in statuses if not 200 <= status < 300),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app: str, app_dir: Path, port: int, workdir: Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(command, cwd=workdir, env=env)


def wait_until_listening(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server on port {port} exited with code {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the server on port {port} did not start within 30 s")


def resident_memory_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024, 1)


def target_lines(figures: dict) -> tuple[list[str], bool]:
    lines, all_met = [], True
    for name, (low, high) in TARGETS.items():
        value = figures[name]
        met = value >= low and (high is None or value <= high)
        all_met = all_met and met
        wanted = f">= {low}" if high is None else (f"= {low}" if low == high else f"{low} to {high}")
        lines.append(f"{name}: {value} (target {wanted}) {'met' if met else 'MISSED'}")
    return lines, all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    quick = parser.parse_args().quick

    with tempfile.TemporaryDirectory(prefix="auth-demo-bench-") as workdir:
        workdir = Path(workdir)
        (workdir / "bare_app.py").write_text(BARE_APP)
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir}/bench.db",
            "SECRET_KEY": "bench-only-key-" + secrets.token_hex(16),
        }
        env.pop("BCRYPT_ROUNDS", None)
        app_port, bare_port = free_port(), free_port()
        app_server = start_server("main:app", PROJECT, app_port, workdir, env)
        bare_server = start_server("bare_app:app", workdir, bare_port, workdir, env)
        try:
            wait_until_listening(app_port, app_server)
            wait_until_listening(bare_port, bare_server)
            started = time.perf_counter()
            figures = asyncio.run(measure(app_port, bare_port, quick))
            figures["server_memory_mb"] = resident_memory_mb(app_server.pid)
            figures["seconds"] = round(time.perf_counter() - started, 1)
        finally:
            for server in (app_server, bare_server):
                server.terminate()
                server.wait(timeout=30)

    figures["cores"] = os.cpu_count()
    for name, value in figures.items():
        print(f"{name}: {value}")
    lines, all_met = target_lines(figures)
    print("\n".join(["", "targets:", *lines, ""]))
    print(json.dumps(figures))
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
