"""The page at /app, driven in real Chromium by Playwright, against the app served by uvicorn.

They need a Chromium on PATH, such as Debian's (`apt-get install chromium`): Playwright's own browser download is
not used. Without one these tests are skipped, saying how to install it, unless BROWSER_TESTS_REQUIRED is set, as
CI sets it: then they fail.
"""

import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from playwright.sync_api import expect, sync_playwright

import browser
import users
from conftest import PASSWORD, bearer, count_rows, free_port, make_admin, start_server, stop_server
from models import LoginSession

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = "needs Chromium: sudo apt-get install chromium (Debian, Ubuntu), or put a chromium on PATH"
if CHROMIUM is None and os.environ.get("BROWSER_TESTS_REQUIRED"):
    raise RuntimeError(f"BROWSER_TESTS_REQUIRED is set, but the browser tests cannot run: {MISSING}")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=MISSING)

# As this machine's probe ran it: headless, as root, and with nothing that reaches for the network on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as playwright:
        browser_process = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser_process
        browser_process.close()


@pytest.fixture
def app_url():
    """The app on http://localhost: Chromium keeps Secure cookies there, as on https."""
    server, base_url = start_server()
    yield base_url.replace("127.0.0.1", "localhost")
    stop_server(server)


@pytest.fixture
def context(chromium):
    context = chromium.new_context()
    yield context
    context.close()


def open_page(context, app_url):
    page = context.new_page()
    page.goto(f"{app_url}/app")
    return page


def sign_in(page, username="alice", password=PASSWORD, button="Log in"):
    form = page.get_by_role("form", name="Sign in")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name=button).click()


def greeting(page):
    return page.get_by_text("Hello, ")


def api_sign_up(app_url, username="alice"):
    assert httpx2.post(f"{app_url}/auth/", json={"username": username, "password": PASSWORD}).status_code == 201


def api_log_in(app_url, username="alice"):
    return httpx2.post(f"{app_url}/auth/token", data={"username": username, "password": PASSWORD}).json()


def test_sign_up_log_in_and_stay_signed_in_across_reloads_with_no_token_a_script_can_read(context, app_url):
    page = open_page(context, app_url)

    sign_in(page, button="Sign up")
    expect(greeting(page)).to_have_text("Hello, alice with ID: 1!")
    page.reload()

    expect(greeting(page)).to_have_text("Hello, alice with ID: 1!")
    [cookie] = context.cookies()
    assert (cookie["name"], cookie["domain"], cookie["path"]) == (browser.REFRESH_COOKIE, "localhost", "/")
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.url == f"{app_url}/app"
    sessions = page.get_by_role("region", name="Sessions")
    expect(sessions.get_by_role("row")).to_have_count(2)  # the heading row and this session
    expect(sessions.get_by_role("row").nth(1)).to_contain_text("This session")
    expect(page.get_by_role("region", name="Users")).to_have_count(0)  # a plain user has no Users section


def test_errors_show_in_an_alert_in_words(context, app_url):
    page = open_page(context, app_url)
    alert = page.get_by_role("alert")

    sign_in(page, password="short", button="Sign up")
    expect(alert).to_contain_text("password: String should have at least 8 characters")
    api_sign_up(app_url)
    sign_in(page, password="wrong password")
    expect(alert).to_have_text("Incorrect username or password")
    for _ in range(4):
        with page.expect_response("**/auth/browser/login"):  # one answered before the next is sent
            sign_in(page, password="wrong password")
    sign_in(page)
    expect(alert).to_contain_text("Too many failed logins: wait")
    assert "{" not in alert.inner_text()


LOCKS = "async () => (await navigator.locks.query())"


def test_two_tabs_reloading_at_once_take_turns_to_refresh_and_stay_signed_in_on_one_session(context, app_url):
    """Each round, the first tab's refresh is held on its way to the app; the second tab, reloaded meanwhile, must
    wait for the page's lock rather than send the same cookie at the same time (which would end the session)."""
    first = open_page(context, app_url)
    sign_in(first, button="Sign up")
    expect(greeting(first)).to_be_visible()  # the cookie is set
    second = open_page(context, app_url)
    expect(greeting(second)).to_be_visible()
    held: list[Any] = []  # the round's first refresh, until it is let go (then None)
    overlapping: list[Any] = []

    def hold_the_first(route):
        if not held:
            held.append(route)  # the round's first refresh waits here until the test lets it go
            return
        if held[0] is not None:
            overlapping.append(route)  # another refresh while the first is held: the tabs did not take turns
        route.continue_()

    context.route("**/auth/browser/refresh", hold_the_first)
    for _ in range(5):
        held.clear()
        first.reload(wait_until="commit")
        first.wait_for_function(f"{LOCKS}.held.length === 1")  # the first tab holds the lock, its refresh held
        second.reload(wait_until="commit")
        second.wait_for_function(f"{LOCKS}.pending.length === 1")  # the second tab waits for it
        held[0].continue_()
        held[0] = None  # let go
        for tab in (first, second):
            expect(greeting(tab)).to_have_text("Hello, alice with ID: 1!")

    assert overlapping == []
    assert count_rows(LoginSession) == 1


def test_log_out_then_reload_shows_the_sign_in_form(context, app_url):
    page = open_page(context, app_url)
    sign_in(page, button="Sign up")
    expect(greeting(page)).to_be_visible()

    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.reload()

    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(greeting(page)).to_be_hidden()
    assert context.cookies() == []
    assert count_rows(LoginSession) == 0


def test_a_session_ended_from_elsewhere_signs_the_tab_out_on_its_next_refresh(context, app_url):
    page = open_page(context, app_url)
    sign_in(page, button="Sign up")
    expect(greeting(page)).to_be_visible()
    other = api_log_in(app_url)

    ended = httpx2.request(
        "DELETE", f"{app_url}/users/me/sessions", json={"password": PASSWORD}, headers=bearer(other["access_token"])
    )
    page.reload()

    assert ended.status_code == 204
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(greeting(page)).to_be_hidden()


def test_log_out_everywhere_else_ends_the_other_devices_sessions(chromium, context, app_url):
    laptop = open_page(context, app_url)
    sign_in(laptop, button="Sign up")
    expect(greeting(laptop)).to_be_visible()
    phone_context = chromium.new_context()
    phone = open_page(phone_context, app_url)
    sign_in(phone)
    expect(greeting(phone)).to_be_visible()
    laptop.reload()
    sessions = laptop.get_by_role("region", name="Sessions")
    expect(sessions.get_by_role("button", name="End")).to_have_count(1)

    sessions.get_by_label("Current password").fill(PASSWORD)
    sessions.get_by_role("button", name="Log out everywhere else").click()

    expect(laptop.get_by_role("status")).to_contain_text("those sessions have ended")
    expect(sessions.get_by_role("button", name="End")).to_have_count(0)
    phone.reload()
    expect(phone.get_by_role("button", name="Log in")).to_be_visible()
    phone_context.close()


def test_an_administrator_disables_a_user_from_the_users_table_and_a_refusal_shows_its_detail(context, app_url):
    api_sign_up(app_url, "root")
    make_admin("root")
    api_sign_up(app_url, "bob")
    bob = api_log_in(app_url, "bob")
    page = open_page(context, app_url)
    sign_in(page, "root")
    table = page.get_by_role("region", name="Users")
    bob_row = table.get_by_role("row").filter(has_text="bob")

    bob_row.get_by_role("button", name="Disable").click()

    expect(bob_row.get_by_role("button", name="Enable")).to_be_visible()
    expect(bob_row.get_by_role("cell").nth(2)).to_have_text("yes")
    assert httpx2.get(f"{app_url}/", headers=bearer(bob["access_token"])).status_code == 401
    table.get_by_role("row").filter(has_text="root").get_by_role("button", name="Make user").click()
    expect(page.get_by_role("alert")).to_have_text(users.LAST_ADMINISTRATOR)


def test_the_users_table_pages_with_next(context, app_url):
    api_sign_up(app_url, "root")
    make_admin("root")
    for number in range(11):
        api_sign_up(app_url, f"user{number:02}")
    page = open_page(context, app_url)
    sign_in(page, "root")
    table = page.get_by_role("region", name="Users")
    expect(table.get_by_role("row")).to_have_count(11)  # the heading row and ten users

    table.get_by_role("button", name="Next").click()

    expect(table.get_by_role("row")).to_have_count(3)
    expect(table.get_by_role("row").nth(2)).to_contain_text("user10")
    expect(table.get_by_role("button", name="Next")).to_be_hidden()


class AnotherSite(BaseHTTPRequestHandler):
    """A page on another origin that tries every way a page can to use the app's browser routes."""

    page = ""

    def do_GET(self):
        body = self.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def another_sites_page(app_url):
    """Forms (a login as text/plain JSON, the classic CSRF trick, and as a plain form; refresh; logout) submitted
    into frames, and fetch() calls with the browser's cookies, simple ones and ones that need CORS's leave."""
    forms = [
        ("login", "text/plain", '<input name=\'{"username":"mallory","password":"correct horse","x":"\' value=\'"}\'>'),
        ("login", "application/x-www-form-urlencoded", '<input name="username" value="mallory">'),
        ("refresh", "application/x-www-form-urlencoded", ""),
        ("logout", "application/x-www-form-urlencoded", ""),
    ]
    html = "".join(
        f'<iframe name="f{n}"></iframe><form target="f{n}" method="post" enctype="{kind}" '
        f'action="{app_url}/auth/browser/{route}">{fields}</form>'
        for n, (route, kind, fields) in enumerate(forms)
    )
    script = f"""
        for (const form of document.forms) form.submit();
        const body = JSON.stringify({{username: "mallory", password: "correct horse"}});
        for (const route of ["login", "refresh", "logout"]) {{
            fetch("{app_url}/auth/browser/" + route, {{method: "POST", mode: "no-cors", credentials: "include", body}});
            fetch("{app_url}/auth/browser/" + route, {{method: "POST", credentials: "include", body,
                headers: {{"Content-Type": "application/json"}}}});
        }}
    """
    return f"<!doctype html><title>another site</title>{html}<script>{script}</script>"


def test_a_page_on_another_site_changes_nothing(context, app_url):
    """The app on localhost, the other site on 127.0.0.1: another site, to the browser."""
    api_sign_up(app_url, "mallory")
    page = open_page(context, app_url)
    sign_in(page, button="Sign up")
    expect(greeting(page)).to_be_visible()
    [cookie_before] = context.cookies()
    AnotherSite.page = another_sites_page(app_url)
    other_site = ThreadingHTTPServer(("127.0.0.1", free_port()), AnotherSite)
    threading.Thread(target=other_site.serve_forever, daemon=True).start()

    visit = context.new_page()
    attempts = []  # each of the ten requests, once it has had its answer or been stopped by the browser
    visit.on("requestfinished", lambda request: attempts.append(request.url))
    visit.on("requestfailed", lambda request: attempts.append(request.url))
    answers = []
    visit.on("response", lambda response: answers.append((response.request.method, response.status)))
    deadline = time.monotonic() + 30
    try:
        visit.goto(f"http://127.0.0.1:{other_site.server_port}/")
        while sum("/auth/browser/" in url for url in attempts) < 10:
            assert time.monotonic() < deadline, attempts
            visit.wait_for_timeout(20)
    finally:
        other_site.shutdown()
    cookies_after_the_visit = context.cookies()  # before the reload, whose own refresh rotates the cookie
    page.reload()

    # The four forms and the three simple fetches reached the app and were refused; the three fetches with a JSON
    # body never left the browser, which asks the app first (CORS) and is given no leave.
    assert answers == [("GET", 200)] + [("POST", 403)] * 7
    assert cookies_after_the_visit == [cookie_before]  # neither refreshed, nor cleared, nor replaced by mallory's
    expect(greeting(page)).to_have_text("Hello, alice with ID: 2!")  # the reload refreshed with alice's cookie
    assert count_rows(LoginSession) == 1  # alice's only: no login of mallory's


def test_end_one_other_session_change_the_password_and_delete_the_account(context, app_url):
    api_sign_up(app_url)
    other = api_log_in(app_url)
    page = open_page(context, app_url)
    sign_in(page)
    sessions = page.get_by_role("region", name="Sessions")
    password = page.get_by_role("region", name="Password")

    sessions.get_by_label("Current password").fill(PASSWORD)
    sessions.get_by_role("button", name="End").click()
    expect(sessions.get_by_role("button", name="End")).to_have_count(0)
    password.get_by_label("Current password").fill("wrong password")
    password.get_by_label("New password").fill("a brand new passphrase")
    password.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_have_text("The password is not correct")
    password.get_by_label("Current password").fill(PASSWORD)
    password.get_by_label("New password").fill("a brand new passphrase")
    password.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Password changed")
    password.get_by_label("Password to delete the account").fill("a brand new passphrase")
    password.get_by_role("button", name="Delete account").click()
    expect(page.get_by_role("alert")).to_contain_text("Tick the box")
    password.get_by_label("Yes, delete my account").check()
    password.get_by_role("button", name="Delete account").click()

    expect(page.get_by_role("status")).to_have_text("Your account has been deleted.")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert httpx2.get(f"{app_url}/", headers=bearer(other["access_token"])).status_code == 401
    assert context.cookies() == []
    assert count_rows(LoginSession) == 0
