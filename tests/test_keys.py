"""Signing keys (keys.py): the JWKS, the metadata document, every token that must be refused, and rotation without
logging anybody out, in this process and across several workers and a separate resource server."""

import base64
import dataclasses
import hashlib
import hmac
import json
import subprocess
import sys
import time

import httpx2
import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

import database
import keys
from config import settings
from conftest import (
    PASSWORD,
    PROJECT,
    bearer,
    child_env,
    claims_for,
    free_port,
    refresh,
    serve,
    signed,
    start_server,
    stop_server,
    tokens_for,
    unverified_claims,
    verified,
)
from models import SigningKey

PRIVATE_PARTS = {"d", "p", "q", "dp", "dq", "qi", "k"}


def states():
    with Session(database.engine) as session:
        return dict(session.execute(select(SigningKey.kid, SigningKey.state)).all())


def as_if_the_last_change_was_long_ago():
    """What waiting twice SIGNING_KEY_CACHE_SECONDS does, without the wait."""
    with Session(database.engine) as session:
        session.execute(update(SigningKey).values(since=SigningKey.since - 2 * settings.signing_key_cache_seconds - 1))
        session.commit()


def rotate():
    as_if_the_last_change_was_long_ago()
    with database.SessionLocal() as session:
        return keys.rotate(session)


def read_long_ago(seconds):
    assert keys.cached is not None
    keys.cached = dataclasses.replace(keys.cached, loaded_at=time.monotonic() - seconds)


def forget_the_cache():
    """As if SIGNING_KEY_CACHE_SECONDS had passed since this process read the keys."""
    read_long_ago(settings.signing_key_cache_seconds)


def signed_by_the_new_current(claims):
    """Signed with the key that is current in the database now, whatever this process read before."""
    with database.SessionLocal() as session:
        now = keys.load(session)
    assert now.signing_key is not None
    return jwt.encode(claims, now.signing_key, algorithm="ES256", headers={"kid": now.signing_kid, "typ": "at+jwt"})


def b64(data):
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hmac_signed(claims, secret, **header):
    """A token signed with HS256 by hand: PyJWT itself refuses a public key as an HMAC secret."""
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'at+jwt', **header})}.{b64(claims)}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


# The JWKS and the metadata document


def test_the_jwks_publishes_next_and_current_with_no_private_part(client):
    response = client.get("/.well-known/jwks.json")

    assert response.headers["Content-Type"] == "application/jwk-set+json"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    published = response.json()["keys"]
    assert {key["kid"]: key for key in published}.keys() == states().keys()
    assert sorted(states().values()) == ["current", "next"]
    for key in published:
        assert not PRIVATE_PARTS & key.keys()
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
        members = json.dumps({name: key[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        assert key["kid"] == b64(hashlib.sha256(members.encode()).digest())  # its RFC 7638 thumbprint


def test_after_a_rotation_the_jwks_publishes_all_three_states(client):
    rotate()
    forget_the_cache()

    published = client.get("/.well-known/jwks.json").json()["keys"]

    assert sorted(states().values()) == ["current", "next", "previous"]
    assert {key["kid"] for key in published} == states().keys()
    assert all(not PRIVATE_PARTS & key.keys() for key in published)


def test_rs256_keys_publish_n_and_e_only(client, monkeypatch):
    monkeypatch.setattr(settings, "algorithm", "RS256")
    with Session(database.engine) as session:
        session.execute(delete(SigningKey))
        session.commit()
    keys.read_again()

    token = tokens_for(client)["access_token"]
    published = client.get("/.well-known/jwks.json").json()["keys"]

    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert {(key["kty"], key["alg"]) for key in published} == {("RSA", "RS256")}
    assert all(not PRIVATE_PARTS & key.keys() and {"n", "e"} <= key.keys() for key in published)
    assert verified(client, token)["sub"] == "alice"


def test_a_token_verifies_with_pyjwt_against_the_jwks_alone(client):
    token = tokens_for(client)["access_token"]
    header = jwt.get_unverified_header(token)

    claims = verified(client, token)

    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")
    assert claims.keys() >= {"iss", "aud", "sub", "client_id", "iat", "exp", "jti", "scope", "id", "sid"}


def test_the_metadata_documents_urls_work(client, monkeypatch):
    monkeypatch.setattr(settings, "token_issuer", "http://testserver")

    metadata = client.get("/.well-known/oauth-authorization-server").json()
    tokens = tokens_for(client)
    jwks = client.get(metadata["jwks_uri"])
    refreshed = client.post(metadata["token_endpoint"], data={"grant_type": "refresh_token", **tokens})
    revoked = client.post(metadata["revocation_endpoint"], data={"token": refreshed.json()["refresh_token"]})

    assert metadata == {
        "issuer": "http://testserver",
        "token_endpoint": "http://testserver/auth/token",
        "revocation_endpoint": "http://testserver/auth/revoke",
        "jwks_uri": "http://testserver/.well-known/jwks.json",
        "grant_types_supported": ["password", "refresh_token"],
        "scopes_supported": ["me", "account", "admin"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
    }
    assert jwks.status_code == 200
    assert unverified_claims(tokens["access_token"])["iss"] == "http://testserver"
    assert refreshed.status_code == revoked.status_code == 200
    assert refresh(client, refreshed.json()["refresh_token"]).status_code == 401  # revoked


# Tokens that must be refused


def assert_invalid_token(client, token):
    response = client.get("/", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def our_public_key():
    kid, private_key = keys.for_signing()
    return kid, private_key.public_key()


def test_alg_none_is_refused(client):
    token = tokens_for(client)["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]

    assert_invalid_token(client, f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{b64(claims_for(token))}.")


@pytest.mark.parametrize("encoding", ["PEM", "DER", "JWK"])
def test_hs256_signed_with_our_public_key_is_refused(client, encoding):
    token = tokens_for(client)["access_token"]
    kid, public_key = our_public_key()
    secret = {
        "PEM": lambda: public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "DER": lambda: public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "JWK": lambda: jwt.algorithms.ECAlgorithm.to_jwk(public_key).encode(),
    }[encoding]()

    assert_invalid_token(client, hmac_signed(claims_for(token), secret, kid=kid))


def test_an_unknown_kid_is_refused(client):
    token = tokens_for(client)["access_token"]

    assert_invalid_token(client, signed(claims_for(token), ec.generate_private_key(ec.SECP256R1()), kid="unknown"))


def test_our_kid_with_another_algorithm_is_refused(client):
    token = tokens_for(client)["access_token"]

    assert_invalid_token(client, signed(claims_for(token), rsa.generate_private_key(65537, 2048), "RS256"))


def test_junk_after_the_signature_is_refused(client):
    token = tokens_for(client)["access_token"]

    assert client.get("/", headers=bearer(token)).status_code == 200
    assert_invalid_token(client, token + "AAAA")


def test_an_unknown_crit_header_is_refused(client):
    token = tokens_for(client)["access_token"]

    assert_invalid_token(client, signed(claims_for(token), crit=["urn:example:must-understand"]))


def test_another_typ_is_refused(client):
    token = tokens_for(client)["access_token"]

    assert_invalid_token(client, signed(claims_for(token), typ="JWT"))


def test_a_flood_of_unknown_kids_reads_the_keys_once(client, monkeypatch):
    token = tokens_for(client)["access_token"]
    reads = []
    real_read_again = keys.read_again

    def counted_read_again():
        reads.append(1)
        return real_read_again()

    monkeypatch.setattr(keys, "read_again", counted_read_again)
    read_long_ago(keys.UNKNOWN_KID_RELOAD_SECONDS)
    other_key = ec.generate_private_key(ec.SECP256R1())

    answers = {client.get("/", headers=bearer(signed(claims_for(token), other_key, kid=f"k{n}"))).status_code
               for n in range(50)}  # fmt: skip

    assert answers == {401}
    assert len(reads) == 1


# Rotation and revocation, in this process


def test_a_token_works_after_one_rotation_and_not_after_two_and_its_refresh_token_still_refreshes(client):
    tokens = tokens_for(client)

    rotate()
    forget_the_cache()
    after_one = client.get("/", headers=bearer(tokens["access_token"]))
    rotate()
    forget_the_cache()
    after_two = client.get("/", headers=bearer(tokens["access_token"]))
    renewed = refresh(client, tokens["refresh_token"])

    assert after_one.status_code == 200
    assert after_two.status_code == 401
    assert renewed.status_code == 200
    assert client.get("/", headers=bearer(renewed.json()["access_token"])).status_code == 200


def test_a_second_rotation_right_after_the_first_is_refused_and_changes_nothing(client, clock):
    rotate()
    before = states()

    with database.SessionLocal() as session, pytest.raises(SystemExit) as refused:
        keys.rotate(session)
    clock(2 * settings.signing_key_cache_seconds)
    with database.SessionLocal() as session:
        keys.rotate(session)

    assert str(refused.value).startswith("The last key change was too recent for every verifier to have seen it")
    assert before != states()


def test_tokens_of_the_new_current_key_verify_where_the_keys_were_read_before_the_step(client):
    tokens = tokens_for(client)
    rotate()  # this process still holds the keys it read before

    token = signed_by_the_new_current(claims_for(tokens["access_token"]))

    assert client.get("/", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("state", ["current", "previous"])
def test_a_revoked_key_stops_verifying_once_the_cache_runs_out(client, state):
    tokens = tokens_for(client)
    if state == "previous":
        rotate()
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    with database.SessionLocal() as session:
        line = keys.revoke(session, kid)

    within_the_cache = client.get("/", headers=bearer(tokens["access_token"]))
    forget_the_cache()
    after = client.get("/", headers=bearer(tokens["access_token"]))

    assert line.startswith(f"Revoked {kid} (it was {state})")
    assert within_the_cache.status_code == 200
    assert after.status_code == 401
    assert kid not in states()
    assert sorted(states().values()) == ["current", "next"]  # a revoked current one was replaced by next
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_a_database_alone_signs_nothing(client):
    """The private keys are stored encrypted: another SECRET_KEY reads none of them."""
    with Session(database.engine) as session:
        stored = session.scalars(select(SigningKey)).all()

    assert all(keys.private_key_of(key) is not None for key in stored)
    assert all(b"PRIVATE" not in key.encrypted_private_key for key in stored)
    other = AESGCM(b"o" * 32)
    for key in stored:
        with pytest.raises(InvalidTag):
            other.decrypt(key.encrypted_private_key[:12], key.encrypted_private_key[12:], key.kid.encode())


def test_keys_made_with_another_secret_key_are_made_anew_at_start_up(client):
    """As when SECRET_KEY changes: access tokens signed before are refused; refresh tokens refresh."""
    tokens = tokens_for(client)
    with Session(database.engine) as session:
        session.execute(update(SigningKey).values(encrypted_private_key=b"\0" * 12 + b"not ours" * 8))
        session.commit()
    before = set(states())

    keys.read_again()

    assert not before & set(states())
    assert client.get("/", headers=bearer(tokens["access_token"])).status_code == 401
    assert refresh(client, tokens["refresh_token"]).status_code == 200


# manage.py, and several workers


def manage(*arguments, **env):
    return subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *arguments],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_manage_py_lists_rotates_and_revokes_keys_in_one_line_each(client):
    as_if_the_last_change_was_long_ago()

    listed = manage("keys")
    rotated = manage("rotate-keys")
    again = manage("rotate-keys")
    previous = next(kid for kid, state in states().items() if state == "previous")
    revoked = manage("revoke-key", previous)
    unknown = manage("revoke-key", "no-such-kid")
    without_secret = manage("rotate-keys", SECRET_KEY=None)

    assert [line.split()[2] for line in listed.stdout.splitlines()] == ["current", "next"]
    assert all(" ES256 " in line and " since 20" in line for line in listed.stdout.splitlines())
    assert (rotated.returncode, len(rotated.stdout.splitlines()), rotated.stderr) == (0, 1, "")
    assert rotated.stdout.startswith("Rotated: ")
    assert (again.returncode, again.stdout, len(again.stderr.splitlines())) == (1, "", 1)
    assert "rotate again at " in again.stderr
    assert (revoked.returncode, revoked.stdout) == (
        0,
        f"Revoked {previous} (it was previous): every worker refuses its tokens within 300 seconds "
        "(SIGNING_KEY_CACHE_SECONDS)\n",
    )
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "No signing key has the kid 'no-such-kid': python manage.py keys lists them\n",
    )
    assert without_secret.returncode == 1
    assert without_secret.stderr.startswith("SECRET_KEY is not set")


def test_manage_py_revokes_a_key_whose_kid_starts_with_a_dash(client):
    """A kid is base64url: one in 64 starts with "-", which a command line would otherwise take for an option."""
    dashed = next(key for key in iter(lambda: keys.new_key(keys.PREVIOUS, time.time()), None) if key.kid[0] == "-")
    kid = dashed.kid
    with Session(database.engine) as session:
        session.add(dashed)
        session.commit()

    revoked = manage("revoke-key", kid)

    assert (revoked.returncode, revoked.stderr) == (0, "")
    assert revoked.stdout.startswith(f"Revoked {kid} (it was previous): ")
    assert kid not in states()
    after_dashes = manage("revoke-key", "--", kid)  # the usual way to say "not an option" still works
    assert (after_dashes.returncode, after_dashes.stderr) == (
        1,
        f"No signing key has the kid {kid!r}: python manage.py keys lists them\n",
    )
    assert manage("revoke-key").returncode == 2


def statuses(base_url, token, count=12):
    return {httpx2.get(f"{base_url}/", headers=bearer(token)).status_code for _ in range(count)}


def refused_everywhere_within(base_url, token, seconds):
    """How long until every worker refuses the token, polling until a bound past `seconds`."""
    started = time.monotonic()
    while statuses(base_url, token) != {401}:
        assert time.monotonic() - started < seconds + 2, "a worker still accepts it"
    return time.monotonic() - started


def test_rotation_and_revocation_across_several_workers():
    """Two workers, keys kept for a second: on SQLite or PostgreSQL, as TEST_DATABASE_URL says."""
    env = child_env(SIGNING_KEY_CACHE_SECONDS="1")
    server, base_url = start_server("--workers", "2", env=env)
    try:
        httpx2.post(f"{base_url}/auth/", json={"username": "alice", "password": PASSWORD})
        tokens = httpx2.post(f"{base_url}/auth/token", data={"username": "alice", "password": PASSWORD}).json()
        first_kid = jwt.get_unverified_header(tokens["access_token"])["kid"]

        as_if_the_last_change_was_long_ago()
        assert manage("rotate-keys", SIGNING_KEY_CACHE_SECONDS="1").returncode == 0
        by_the_new_key = signed_by_the_new_current(claims_for(tokens["access_token"]))
        assert statuses(base_url, by_the_new_key) == {200}  # at once, on every worker
        assert statuses(base_url, tokens["access_token"]) == {200}  # its key is previous now

        as_if_the_last_change_was_long_ago()
        assert manage("rotate-keys", SIGNING_KEY_CACHE_SECONDS="1").returncode == 0
        assert first_kid not in states()
        refused_everywhere_within(base_url, tokens["access_token"], 1)
        renewed = httpx2.post(
            f"{base_url}/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        ).json()
        assert statuses(base_url, renewed["access_token"]) == {200}

        revoked_kid = jwt.get_unverified_header(by_the_new_key)["kid"]
        assert manage("revoke-key", revoked_kid, SIGNING_KEY_CACHE_SECONDS="1").returncode == 0
        refused_everywhere_within(base_url, by_the_new_key, 1)
    finally:
        stop_server(server)


def test_the_resource_server_example_accepts_refuses_and_follows_a_rotation():
    app_server, app_url = start_server(env=child_env(SIGNING_KEY_CACHE_SECONDS="1"))
    port = free_port()
    env = child_env(JWKS_URL=f"{app_url}/.well-known/jwks.json", JWKS_CACHE_SECONDS="1")
    example, example_url = serve(
        ["-m", "uvicorn", "resource_server:app", "--app-dir", str(PROJECT / "examples"), "--port", str(port)], port, env
    )

    def log_in_to_the_app():
        return httpx2.post(f"{app_url}/auth/token", data={"username": "alice", "password": PASSWORD}).json()

    def hello(token):
        return httpx2.get(f"{example_url}/hello", headers=bearer(token))

    try:
        httpx2.post(f"{app_url}/auth/", json={"username": "alice", "password": PASSWORD})
        token = log_in_to_the_app()["access_token"]
        accepted = hello(token)
        wrong_audience = hello(signed(claims_for(token, aud="another-service")))
        without_me = hello(signed(claims_for(token, scope="account")))
        rotate()
        rotate()  # the key that signs now was not in the key set the example read first
        signing_now = next(kid for kid, state in states().items() if state == "current")
        deadline = time.monotonic() + 10
        while jwt.get_unverified_header(token := log_in_to_the_app()["access_token"])["kid"] != signing_now:
            assert time.monotonic() < deadline, "the app did not read its keys again"
        while (after_rotations := hello(token)).status_code != 200 and time.monotonic() < deadline:
            pass  # until the example's key set, kept for a second here, is read again
    finally:
        stop_server(example)
        stop_server(app_server)

    assert accepted.json() == {"message": "Hello from another service, alice!"}
    assert wrong_audience.status_code == 401
    assert without_me.status_code == 403
    assert after_rotations.json() == {"message": "Hello from another service, alice!"}
