"""A regular install, as a wheel, a Docker image or a deployment tool makes one: not editable, used from a folder
that holds nothing of the project."""

import os
import subprocess
import sys
import sysconfig

import httpx2

from conftest import PASSWORD, PROJECT, bearer, free_port, serve, stop_server


def install_as_a_wheel(folder):
    """Build the project's wheel and install it alone into a new virtual environment; return its Python. The
    dependencies come from this environment's site-packages, so that only the project itself is installed."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder / "wheels", PROJECT],
        check=True,
        capture_output=True,
    )
    [wheel] = (folder / "wheels").glob("*.whl")
    subprocess.run([sys.executable, "-m", "venv", folder / "venv"], check=True)
    python = folder / "venv" / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A path in a .pth file is added as it is: the .pth files there, such as this project's editable install, are not
    # read, so the project comes only from the wheel.
    (folder / "venv" / site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], check=True, capture_output=True)
    return python


LOCATIONS = "f('migrations').submodule_search_locations"


def test_a_regular_install_serves_a_sign_up_a_login_the_greeting_and_the_page_from_an_empty_folder(tmp_path):
    python = install_as_a_wheel(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "DATABASE_URL")}
    installed = subprocess.run(
        [
            python,
            "-c",
            f"from importlib.util import find_spec as f; print(f('main').origin, *{LOCATIONS})",
        ],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all("/venv/lib/" in path for path in installed), installed  # not the project folder's

    port = free_port()
    server, base_url = serve(["-m", "uvicorn", "main:app", "--port", str(port)], port, env, empty, python)
    try:
        signed_up = httpx2.post(f"{base_url}/auth/", json={"username": "alice", "password": PASSWORD})
        tokens = httpx2.post(f"{base_url}/auth/token", data={"username": "alice", "password": PASSWORD}).json()
        greeting = httpx2.get(f"{base_url}/", headers=bearer(tokens["access_token"]))
        page = [httpx2.get(f"{base_url}{path}") for path in ("/app", "/app/files/app.js", "/app/files/app.css")]
    finally:
        log = stop_server(server)

    assert signed_up.json() == {"id": 1, "username": "alice"}
    assert greeting.json() == {"message": "Hello, alice with ID: 1!"}
    assert [answer.status_code for answer in page] == [200] * 3  # the browser page ships with the package
    assert "navigator.locks" in page[1].text
    assert "Upgrading the database from revision none (empty)" in log
    assert (empty / "auth.db").exists()  # the default DATABASE_URL, in the folder it runs in
