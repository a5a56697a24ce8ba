"""The browser's way in (browser.py): the refresh token in a __Host- cookie, and every other site refused.

These talk HTTP to the app; tests/test_browser_page.py drives the page itself in Chromium.
"""

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

import browser
import main
from config import settings
from conftest import CLIENT_ADDRESS, PASSWORD, admin_tokens_for, bearer, count_rows, log_in, sign_up
from models import LoginFailure, LoginSession

ORIGIN = "https://testserver"
COOKIE = browser.REFRESH_COOKIE


@pytest.fixture
def web():
    """A client on https, as a browser on the app's own origin is: a Secure cookie is kept and sent back."""
    with TestClient(main.app, base_url=ORIGIN, client=(CLIENT_ADDRESS, 50000)) as client:
        yield client


def browser_log_in(client, username="alice", password=PASSWORD, headers=None, **extra):
    body = {"username": username, "password": password, **extra}
    return client.post("/auth/browser/login", json=body, headers=headers)


def set_cookie(response):
    [header] = response.headers.get_list("set-cookie")
    name_and_value, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = name_and_value.partition("=")
    return name, value, {attribute.partition("=")[0].lower(): attribute.partition("=")[2] for attribute in attributes}


def with_cookie(client, value):
    """The headers that send this value as the cookie, as a copy of it would be sent; the client's own is dropped."""
    client.cookies.clear()
    return {"Cookie": f"{COOKIE}={value}"}


def assert_cleared(response):
    name, value, attributes = set_cookie(response)
    assert (name, value.strip('"'), attributes["max-age"]) == (COOKIE, "", "0")
    assert attributes.keys() >= {"httponly", "secure", "path", "samesite"}


def test_a_login_answers_the_access_token_and_puts_the_refresh_token_in_a_host_cookie(web):
    sign_up(web)

    response = browser_log_in(web, headers={"User-Agent": "Firefox/140.0"})

    assert response.status_code == 200
    assert response.json().keys() == {"access_token", "token_type", "expires_in", "scope"}  # no refresh_token
    assert response.headers["Cache-Control"] == "no-store"
    name, value, attributes = set_cookie(response)
    assert name == COOKIE and re.fullmatch(r"[\w-]{22}\.[\w-]{43}", value)
    assert attributes == {"httponly": "", "secure": "", "path": "/", "samesite": "strict", "max-age": "2592000"}
    assert "domain" not in attributes
    sessions = web.get("/users/me/sessions", headers=bearer(response.json()["access_token"])).json()
    assert [(session["user_agent"], session["current"]) for session in sessions] == [("Firefox/140.0", True)]


def test_the_cookie_lives_as_long_as_the_session_has_left(web, clock):
    sign_up(web)
    browser_log_in(web)
    clock(10 * 86_400)

    response = web.post("/auth/browser/refresh")

    assert int(set_cookie(response)[2]["max-age"]) == pytest.approx(20 * 86_400, abs=2)


def test_a_wrong_password_and_an_unknown_user_get_the_password_grants_same_answer_after_the_same_work(web, bcrypt_runs):
    sign_up(web)
    bcrypt_runs.clear()

    wrong_password = browser_log_in(web, password="wrong password")
    runs_for_a_wrong_password = len(bcrypt_runs)
    unknown_user = browser_log_in(web, username="nobody")
    runs_for_an_unknown_user = len(bcrypt_runs) - runs_for_a_wrong_password

    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json() == log_in(web, password="wrong password").json()
    assert wrong_password.json()["error"] == "invalid_grant"
    assert runs_for_a_wrong_password == runs_for_an_unknown_user == 1
    assert "set-cookie" not in wrong_password.headers  # a failed login leaves a signed-in tab alone


def test_failed_browser_logins_are_throttled_with_the_password_grants(web):
    sign_up(web)
    answers = [browser_log_in(web, password="wrong password").status_code for _ in range(3)]
    answers += [log_in(web, password="wrong password").status_code for _ in range(2)]

    refused = browser_log_in(web)

    assert answers == [401] * 5
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0


def test_a_disabled_account_and_a_scope_not_allowed_are_refused_as_by_the_password_grant(web):
    root = admin_tokens_for(web)
    sign_up(web)

    assert browser_log_in(web, scope="admin").json()["error"] == "invalid_scope"
    unknown = browser_log_in(web, scope="superuser")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_scope")
    assert browser_log_in(web, scope="me").json()["scope"] == "me"
    web.patch("/admin/users/2", json={"disabled": True}, headers=bearer(root["access_token"]))
    disabled = browser_log_in(web)
    assert disabled.status_code == 401
    assert disabled.json()["detail"] == "This account is disabled: ask an administrator"


def test_a_refresh_rotates_the_cookie_and_a_spent_cookie_ends_the_session(web):
    sign_up(web)
    browser_log_in(web)
    first = web.cookies[COOKIE]

    renewed = web.post("/auth/browser/refresh")
    second = web.cookies[COOKIE]
    replayed = web.post("/auth/browser/refresh", headers=with_cookie(web, first))  # a copy of the spent one

    assert renewed.status_code == 200 and second != first
    assert renewed.json().keys() == {"access_token", "token_type", "expires_in", "scope"}
    assert replayed.status_code == 401
    assert_cleared(replayed)
    assert web.get("/", headers=bearer(renewed.json()["access_token"])).status_code == 401  # the session ended
    assert count_rows(LoginSession) == 0


@pytest.mark.parametrize("cookie", [None, "", "garbage", "A" * 22 + "." + "B" * 43])
def test_a_refresh_without_a_live_cookie_is_401_clears_it_and_ends_nothing(web, cookie):
    sign_up(web)
    browser_log_in(web)
    headers = with_cookie(web, cookie) if cookie is not None else with_cookie(web, "") | {"Cookie": ""}

    response = web.post("/auth/browser/refresh", headers=headers)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_grant"
    assert_cleared(response)
    assert count_rows(LoginSession) == 1


@pytest.mark.parametrize(
    ("content", "headers"),
    [(None, {}), (b"{}", {"Content-Type": "application/json"}), (b"", {"Content-Type": "application/json"})],
)
def test_refresh_and_logout_take_an_empty_body_or_an_empty_json_object(web, content, headers):
    sign_up(web)
    browser_log_in(web)

    refreshed = web.post("/auth/browser/refresh", content=content, headers=headers)
    logged_out = web.post("/auth/browser/logout", content=content, headers=headers)

    assert (refreshed.status_code, logged_out.status_code) == (200, 204)


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"token=x", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"{}", {"Content-Type": "text/plain"}),
        (b"{}", {}),
        (b'{"refresh_token": "x"}', {"Content-Type": "application/json"}),
    ],
)
@pytest.mark.parametrize("path", ["/auth/browser/refresh", "/auth/browser/logout"])
def test_refresh_and_logout_refuse_any_body_but_an_empty_json_object_and_change_nothing(web, path, content, headers):
    sign_up(web)
    browser_log_in(web)
    cookie = web.cookies[COOKIE]

    response = web.post(path, content=content, headers=headers)

    assert response.status_code == 422
    assert web.cookies[COOKIE] == cookie
    assert web.post("/auth/browser/refresh").status_code == 200  # the cookie was neither spent nor ended


def test_logout_ends_the_session_and_clears_the_cookie(web):
    sign_up(web)
    token = browser_log_in(web).json()["access_token"]

    response = web.post("/auth/browser/logout")

    assert response.status_code == 204
    assert_cleared(response)
    assert COOKIE not in web.cookies
    assert web.get("/", headers=bearer(token)).status_code == 401
    assert count_rows(LoginSession) == 0


def test_logout_without_a_cookie_or_with_a_spent_one_is_204_clears_it_and_ends_nothing(web):
    sign_up(web)
    browser_log_in(web)
    spent = web.cookies[COOKIE]
    token = web.post("/auth/browser/refresh").json()["access_token"]
    current = web.cookies[COOKIE]

    with_a_spent_cookie = web.post("/auth/browser/logout", headers=with_cookie(web, spent))
    without_a_cookie = web.post("/auth/browser/logout")

    assert with_a_spent_cookie.status_code == without_a_cookie.status_code == 204
    assert_cleared(with_a_spent_cookie)
    assert_cleared(without_a_cookie)
    assert web.get("/", headers=bearer(token)).status_code == 200
    assert web.post("/auth/browser/refresh", headers=with_cookie(web, current)).status_code == 200


# Other sites


CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": ORIGIN},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver"},  # another scheme is another origin
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://testserver:8443"},
]
SAME_ORIGIN = [
    {},
    {"Sec-Fetch-Site": "same-origin", "Origin": ORIGIN},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
    {"Origin": "HTTPS://TESTSERVER"},
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=str)
def test_every_browser_route_refuses_another_site_and_spends_nothing(web, bcrypt_runs, headers):
    sign_up(web)
    browser_log_in(web)
    cookie = web.cookies[COOKIE]
    bcrypt_runs.clear()

    answers = [
        browser_log_in(web, password="wrong password", headers=headers),
        web.post("/auth/browser/refresh", headers=headers),
        web.post("/auth/browser/logout", headers=headers),
    ]

    assert [answer.status_code for answer in answers] == [403] * 3
    assert {answer.json()["detail"] for answer in answers} == {browser.CROSS_SITE}
    assert bcrypt_runs == []
    assert count_rows(LoginFailure) == 0
    assert web.cookies[COOKIE] == cookie
    assert web.post("/auth/browser/refresh").status_code == 200  # not spent, not ended


@pytest.mark.parametrize("headers", SAME_ORIGIN, ids=str)
def test_the_apps_own_origin_and_clients_that_send_neither_header_pass(web, headers):
    sign_up(web)

    logged_in = browser_log_in(web, headers=headers)
    refreshed = web.post("/auth/browser/refresh", headers=headers)
    logged_out = web.post("/auth/browser/logout", headers=headers)

    assert (logged_in.status_code, refreshed.status_code, logged_out.status_code) == (200, 200, 204)


def test_behind_a_proxy_that_rewrites_host_the_origin_is_the_setting(web, monkeypatch):
    sign_up(web)
    monkeypatch.setattr(settings, "public_origin", "https://auth.example.com")

    assert browser_log_in(web, headers={"Origin": "https://auth.example.com"}).status_code == 200
    assert web.post("/auth/browser/refresh", headers={"Origin": ORIGIN}).status_code == 403


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (f"username=alice&password={PASSWORD}", "application/x-www-form-urlencoded"),
        (f'{{"username": "alice", "password": "{PASSWORD}"}}', "text/plain"),
        (f"username=alice\r\npassword={PASSWORD}", "multipart/form-data; boundary=x"),
    ],
)
def test_a_login_from_an_html_form_is_refused_before_any_work(web, bcrypt_runs, content, content_type):
    """No HTML form can send JSON: so another site's form cannot log this browser into an account (login CSRF)."""
    sign_up(web)
    bcrypt_runs.clear()

    response = web.post("/auth/browser/login", content=content, headers={"Content-Type": content_type})

    assert response.status_code == 422
    assert bcrypt_runs == []
    assert count_rows(LoginSession) == 0
    assert COOKIE not in web.cookies


def test_the_password_grant_and_the_bearer_routes_neither_set_nor_read_the_cookie(web):
    sign_up(web)
    browser_log_in(web)

    token_answer = log_in(web)
    refresh_without_a_token = web.post("/auth/token", data={"grant_type": "refresh_token"})
    greeting = web.get("/", headers=bearer(token_answer.json()["access_token"]))

    assert "set-cookie" not in token_answer.headers
    assert refresh_without_a_token.status_code == 400  # the cookie is not read as a refresh token
    assert "set-cookie" not in greeting.headers
    assert web.get("/").status_code == 401  # the cookie alone opens no Bearer route


# The page


class PageParts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value]


def test_the_page_is_served_without_a_token_with_a_strict_content_security_policy(web):
    response = web.get("/app")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_the_page_has_no_inline_script_and_loads_only_its_own_files(web):
    page = PageParts()
    page.feed(web.get("/app").text)

    assert page.scripts == [{"type": "module", "src": "/app/files/app.js"}]
    assert all(url.startswith("/app/files/") for url in page.urls), page.urls
    for url in page.urls:
        assert web.get(url).status_code == 200


def test_the_module_keeps_no_token_in_web_storage_cookies_or_the_url(web):
    module = re.sub(r"//.*", "", web.get("/app/files/app.js").text)  # the code, not what its comments say

    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "location.hash", "history.", "innerHTML"):
        assert forbidden not in module
    assert "navigator.locks.request" in module
