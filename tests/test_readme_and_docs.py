"""The README and docs/: every relative link leads somewhere, the picture of the modules matches the code, and
the commands they give work from the project folder."""

import ast
import json
import re
import subprocess
import sys

import httpx2
import pytest

from conftest import PROJECT, child_env, free_port, log_in, serve, sign_up, stop_server

PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
APP_MODULES = sorted(path.stem for path in PROJECT.glob("*.py") if not path.name.startswith("test_"))


def anchors(page):
    """GitHub's anchor for each heading: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def relative_links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # links in code are not links
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_leads_to_a_file_and_a_heading_there(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)

    assert broken == []


def test_the_readme_is_short_and_links_every_page_of_docs():
    readme = (PROJECT / "README.md").read_text()

    assert len(readme.splitlines()) <= 250
    assert {path.name for path in (PROJECT / "docs").glob("*.md")} <= {
        target.removeprefix("docs/") for target in relative_links(PROJECT / "README.md")
    }


def test_the_readme_maps_every_module_of_the_app():
    readme = (PROJECT / "README.md").read_text()

    assert {module for module in APP_MODULES if f"`{module}.py`" in readme} == set(APP_MODULES)


def imports_between_app_modules():
    edges = set()
    for module in APP_MODULES:
        for node in ast.walk(ast.parse((PROJECT / f"{module}.py").read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            edges |= {(module, name) for name in names if name in APP_MODULES}
    return edges


def test_the_picture_of_the_modules_draws_exactly_who_imports_whom():
    page = (PROJECT / "docs" / "development.md").read_text()
    [picture] = re.findall(r"```mermaid\nflowchart TD\n(.*?)```", page, re.DOTALL)

    drawn = set(re.findall(r"^\s*(\w+) --> (\w+)$", picture, re.MULTILINE))

    assert drawn == imports_between_app_modules()


def test_the_sessions_page_draws_the_login_a_refresh_and_a_password_change():
    page = (PROJECT / "docs" / "sessions.md").read_text()

    titles = re.findall(r"```mermaid\nsequenceDiagram\n\s+title (.+)\n", page)

    assert titles[:3] == [
        "A login",
        "A refresh, with rotation and reuse detection",
        "A password change ends the other sessions",
    ]


EXAMPLE_TOKEN_ANSWER = re.compile(r"^# (\{\"access_token\".*\})$", re.MULTILINE)
REFRESH_TOKEN = re.compile(r"[\w-]{22}\.[\w-]{43}")  # a session id, a dot, a secret


def test_every_example_of_a_token_answer_looks_like_a_real_one_and_the_readmes_is_one(client):
    """The same fields, an access token that begins alike (ES256, a kid), a refresh token of the same shape; and
    the README's other values are those of a login that asks for no scope."""
    sign_up(client)
    answer = log_in(client).json()
    shown_in = set()

    for page in PAGES:
        for shown in map(json.loads, EXAMPLE_TOKEN_ANSWER.findall(page.read_text())):
            shown_in.add(page.name)
            assert shown.keys() == answer.keys(), shown
            assert answer["access_token"].startswith(shown["access_token"].removesuffix("...")), shown
            assert REFRESH_TOKEN.fullmatch(shown["refresh_token"]), shown
            if page.name == "README.md":
                assert (shown["token_type"], shown["expires_in"], shown["scope"]) == (
                    answer["token_type"],
                    answer["expires_in"],
                    answer["scope"],
                )

    assert REFRESH_TOKEN.fullmatch(answer["refresh_token"])
    assert shown_in == {"README.md", "sessions.md", "administrators.md"}


def run_in_project(*command, **env):
    return subprocess.run(
        [*command], cwd=PROJECT, env=child_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


def test_the_operators_commands_work_from_the_project_folder():
    manage = run_in_project(sys.executable, "manage.py", "--help")
    alembic = run_in_project(sys.executable, "-m", "alembic", "current")
    bench = run_in_project(sys.executable, "benchmarks/bench.py", "--help")

    assert (manage.returncode, alembic.returncode, bench.returncode) == (0, 0, 0), manage.stderr + alembic.stderr
    assert "make-admin" in manage.stdout
    assert "(head)" in alembic.stdout
    assert "--database-url" in bench.stdout


def test_python_main_py_serves_from_the_project_folder():
    port = free_port()
    server, base_url = serve(["main.py"], port, child_env(PORT=str(port)), workdir=PROJECT)
    try:
        health = httpx2.get(f"{base_url}/health")
    finally:
        stop_server(server)

    assert health.json() == {"status": "ok"}


def test_test_app_py_is_short_and_runs_alone_beside_the_app(tmp_path):
    """What a tutorial reader copies: the file alone, with no conftest.py, in a folder of its own."""
    walkthrough = (PROJECT / "test_app.py").read_text()
    (tmp_path / "test_app.py").write_text(walkthrough)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        env=child_env(AUTH_DEMO_TEST_FOLDER=None, DATABASE_URL=None),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert len(walkthrough.splitlines()) <= 150
    assert result.returncode == 0, result.stdout
    assert "9 passed" in result.stdout
