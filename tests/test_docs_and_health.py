"""What people who run the app meet first: /docs with no internet, and a health check for probes and monitors."""

import re
import socket
import socketserver
import threading
import time
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

import database
import main
from config import settings
from conftest import (
    TEST_DATABASE_URL,
    answer_from,
    bearer,
    count_rows,
    free_port,
    lock_out_readers,
    log_in,
    own_sqlite_file,
    postgres_only,
    run_python,
    sign_up,
    token_for,
)
from models import LoginFailure

# /docs


class ReferencedFiles(HTMLParser):
    """Every file a page makes the browser load: scripts, stylesheets, icons and images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "img") and attributes.get("src"):
            self.urls.append(attributes["src"])
        if tag == "link" and attributes.get("href"):
            self.urls.append(attributes["href"])


def files_loaded_by(page):
    parser = ReferencedFiles()
    parser.feed(page)
    return parser.urls


CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def test_the_docs_page_loads_every_file_from_the_app_itself(client):
    answer = client.get("/docs")
    urls = files_loaded_by(answer.text)

    assert answer.status_code == 200
    assert len(urls) >= 2  # the script, and the icon at least
    for url in urls:
        assert urlsplit(url).netloc == "", url
        assert not url.startswith("//"), url
        served = client.get(url)
        assert served.status_code == 200, url
        extension = url[url.rindex(".") :]
        assert served.headers["content-type"].split(";")[0] in CONTENT_TYPES[extension], url


def test_the_docs_page_names_no_other_host_at_all(client):
    page = client.get("/docs").text

    assert re.findall(r"https?://", page) == []


def test_redoc_is_turned_off_since_it_loads_a_logo_from_its_makers_cdn(client):
    assert client.get("/redoc").status_code == 404


def test_swagger_ui_is_a_5_x_release():
    with TestClient(main.app) as client:
        [script] = [url for url in files_loaded_by(client.get("/docs").text) if url.endswith(".js")]
        bundle = client.get(script).text

    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle)


def test_the_oauth2_redirect_page_that_swagger_ui_uses_is_served(client):
    page = client.get("/docs").text
    [redirect_url] = re.findall(r"oauth2RedirectUrl: window\.location\.origin \+ '([^']+)'", page)

    answer = client.get(redirect_url)

    assert answer.status_code == 200
    assert "oauth2" in answer.text
    assert answer.headers["content-type"].startswith("text/html")


# /health


def test_health_answers_ok_with_no_token_no_bcrypt_and_no_throttle(client, bcrypt_runs):
    answers = [client.get("/health") for _ in range(10)]

    assert [(answer.status_code, answer.json()) for answer in answers] == [(200, {"status": "ok"})] * 10
    assert bcrypt_runs == []
    assert count_rows(LoginFailure) == 0
    assert sign_up(client).status_code == 201
    assert log_in(client).status_code == 200


def test_health_is_in_the_openapi_document_with_its_503(client):
    health = client.get("/openapi.json").json()["paths"]["/health"]["get"]

    assert "security" not in health
    assert set(health["responses"]) == {"200", "503"}


class Relay:
    """A TCP relay to the database on a port of its own: stop it and the database is away, start it and it is back."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.sockets = []

    def start(self):
        relay = self

        class Forward(socketserver.BaseRequestHandler):
            def handle(self):
                upstream = socket.create_connection(relay.target)
                relay.sockets += [self.request, upstream]
                threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
                pump(self.request, upstream)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Forward)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        for connection in self.sockets:
            connection.close()
        self.sockets = []


def pump(source, destination):
    try:
        while data := source.recv(65536):
            destination.sendall(data)
    except OSError:
        pass
    finally:
        destination.close()


@pytest.fixture
def outage(monkeypatch):
    """The app's database, and a way to take it away and bring it back while the app runs.

    PostgreSQL goes away as a server does: its port closes and open connections drop. SQLite goes away as a
    file does when another program holds it in exclusive locking mode: no reader gets in until it lets go.
    """
    monkeypatch.setattr(settings, "database_timeout_seconds", 1)
    if TEST_DATABASE_URL:
        relay = Relay(database.engine.url.host, database.engine.url.port)
        relay.start()
        answer_from(monkeypatch, database.make_engine(database.engine.url.set(host="127.0.0.1", port=relay.port)))
        yield relay.stop, relay.start
        relay.stop()
    else:
        path = own_sqlite_file(monkeypatch)
        holders = []
        yield (lambda: holders.append(lock_out_readers(path))), (lambda: holders.pop().close())
        for holder in holders:
            holder.close()
    database.engine.dispose()


def test_health_is_503_while_the_database_is_away_and_200_again_when_it_is_back(outage, caplog):
    take_away, bring_back = outage
    with TestClient(main.app) as client:
        up = client.get("/health")
        take_away()
        caplog.clear()
        away = client.get("/health")
        warnings = [record.getMessage() for record in caplog.records if record.name == "main"]
        bring_back()
        back = client.get("/health")

    assert (up.status_code, up.json()) == (200, {"status": "ok"})
    assert away.status_code == 503
    assert away.json() == {"detail": "The database is unavailable: try again in a few seconds"}
    assert away.headers["Retry-After"] == "1"
    assert len(warnings) == 1
    assert warnings[0].startswith("Database unavailable: ")
    assert (back.status_code, back.json()) == (200, {"status": "ok"})


@postgres_only
def test_after_a_long_outage_reads_come_back_within_two_seconds_of_postgres(outage, monkeypatch):
    """psycopg's pool waits longer between attempts to reconnect the longer the database is away: 64 s after two
    minutes. Starting its wait there stands for such an outage without taking two minutes."""
    from psycopg_pool.base import AttemptWithBackoff  # the postgres extra

    monkeypatch.setattr(AttemptWithBackoff, "INITIAL_DELAY", 64.0)
    take_away, bring_back = outage
    with TestClient(main.app) as client:
        token = token_for(client)
        assert client.get("/", headers=bearer(token)).status_code == 200
        take_away()
        for _ in range(3):
            assert client.get("/", headers=bearer(token)).status_code == 503
        bring_back()
        back = time.monotonic()
        deadline = back + 30
        while client.get("/", headers=bearer(token)).status_code != 200 and time.monotonic() < deadline:
            pass
        came_back_after = time.monotonic() - back
        health = client.get("/health")

    assert came_back_after < 2
    assert health.status_code == 200


@postgres_only
def test_without_psycopg_pool_postgres_is_read_on_worker_threads_with_one_warning():
    """psycopg installed by hand, as many tutorials say, comes without its pool."""
    result = run_python(
        "import sys; sys.modules['psycopg_pool'] = None\n"
        "from fastapi.testclient import TestClient; import main\n"
        "with TestClient(main.app) as client:\n"
        "    client.post('/auth/', json={'username': 'alice', 'password': 'correct horse'})\n"
        "    token = client.post('/auth/token', data={'username': 'alice', 'password': 'correct horse'}).json()\n"
        "    me = {'Authorization': 'Bearer ' + token['access_token']}\n"
        "    print([client.get(path, headers=me).status_code for path in ('/', '/users/me', '/health', '/')])"
    )

    assert result.stdout == "[200, 200, 200, 200]\n", result.stderr
    assert result.stderr.count("psycopg_pool is not installed") == 1
    assert 'pip install -e ".[postgres]"' in result.stderr
