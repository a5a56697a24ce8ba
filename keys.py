"""Signing keys: the key pairs that sign access tokens, published as a JWKS so that other services can verify them.

Each key has a `kid`, its RFC 7638 thumbprint, and a state: `next` (published, not yet signing), `current` (signs)
or `previous` (still verifies). They live in the database, so every worker and host sees the same set, and each
process keeps what it read for at most SIGNING_KEY_CACHE_SECONDS, reading again early, at most once every few
seconds, when a token names a `kid` it does not know. A private key is stored encrypted (AES-GCM, with a key derived
from SECRET_KEY by HKDF), so a copy of the database alone signs nothing; public keys never leave as anything else.

`python manage.py rotate-keys` moves each key one state along; a verifier that has seen `next` in the JWKS already
knows the key that signs after a rotation, so nobody is logged out (see docs/keys.md).
"""

import base64
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from anyio import to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

import database
from config import MAKE_KEY, settings
from models import SigningKey
from roles import SCOPES

logger = logging.getLogger(__name__)

NEXT, CURRENT, PREVIOUS = "next", "current", "previous"
# A token with a kid this process does not know makes it read the keys again, but not more often than this: a flood
# of made-up kids costs one read every few seconds, not one per request.
UNKNOWN_KID_RELOAD_SECONDS = 5
# PostgreSQL's advisory lock for a change of the key set (SQLite: its one write lock).
KEYS_LOCK = 6_020_241_207


def make_random_key() -> str:
    logger.warning(
        "SECRET_KEY is not set: using a random key, so the signing keys are made anew and access tokens stop working "
        f"when the app restarts (refresh tokens go on); put a key in .env with: {MAKE_KEY}"
    )
    return secrets.token_hex(32)


SECRET_KEY_IS_SET = settings.secret_key is not None
SECRET_KEY = settings.secret_key or make_random_key()
# The key that encrypts the private keys at rest, derived from SECRET_KEY for this one purpose.
AT_REST = AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=b"signing keys at rest").derive(SECRET_KEY.encode()))


def thumbprint(public_jwk: dict[str, str]) -> str:
    """RFC 7638: the SHA-256 of the key's required members, in order and without white space."""
    members = ("crv", "kty", "x", "y") if public_jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({name: public_jwk[name] for name in members}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def new_key(state: str, now: float) -> SigningKey:
    """A new key pair of the configured algorithm: its public half as a JWK, its private half encrypted."""
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if settings.algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
        public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)  # public: no d
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    kid = thumbprint(public_jwk)
    public_jwk |= {"kid": kid, "alg": settings.algorithm, "use": "sig"}
    private_der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = secrets.token_bytes(12)
    encrypted = nonce + AT_REST.encrypt(nonce, private_der, kid.encode())  # the kid binds it to its row
    return SigningKey(
        kid=kid,
        algorithm=settings.algorithm,
        state=state,
        since=now,
        public_jwk=json.dumps(public_jwk),
        encrypted_private_key=encrypted,
    )


def private_key_of(key: SigningKey) -> Any | None:
    """The private key, or None if this SECRET_KEY did not encrypt it."""
    nonce, ciphertext = key.encrypted_private_key[:12], key.encrypted_private_key[12:]
    try:
        der = AT_REST.decrypt(nonce, ciphertext, key.kid.encode())
    except InvalidTag:
        return None
    return serialization.load_der_private_key(der, password=None)


def lock_keys(session: Session) -> None:
    """One change of the key set at a time, across every process and host."""
    if not database.took_sqlite_write_lock(session):
        session.execute(select(func.pg_advisory_xact_lock(KEYS_LOCK)))


def ensure(session: Session) -> None:
    """Make a current and a next key if there is no current one this SECRET_KEY can read: on the first start, and
    after SECRET_KEY changed (access tokens signed before are then refused; their refresh tokens still refresh)."""
    lock_keys(session)
    current = session.scalar(select(SigningKey).where(SigningKey.state == CURRENT))
    if current is not None and private_key_of(current) is not None:
        session.rollback()
        return
    if current is not None:
        logger.warning(
            "The signing keys were encrypted with another SECRET_KEY: making new ones "
            "(every worker, host and manage.py needs the same SECRET_KEY)"
        )
    now = time.time()
    session.execute(delete(SigningKey))
    session.add_all([new_key(CURRENT, now), new_key(NEXT, now)])
    session.commit()


@dataclass(frozen=True)
class KeySet:
    """What a process knows of the keys: each published key by kid, and the current one's private half."""

    verifying: dict[str, jwt.PyJWK]
    published: list[dict[str, Any]]
    signing_kid: str | None
    signing_key: Any | None
    loaded_at: float = field(default_factory=time.monotonic)


def load(session: Session) -> KeySet:
    rows = session.scalars(select(SigningKey).order_by(SigningKey.since.desc(), SigningKey.kid)).all()
    published = [json.loads(row.public_jwk) for row in rows]
    current = next((row for row in rows if row.state == CURRENT), None)
    return KeySet(
        verifying={jwk["kid"]: jwt.PyJWK(jwk) for jwk in published},
        published=published,
        signing_kid=current.kid if current else None,
        signing_key=private_key_of(current) if current else None,
    )


cached: KeySet | None = None


def read_again() -> KeySet:
    """Read the keys from the database (on a worker thread: it may wait), making them first if there are none."""
    global cached
    with database.SessionLocal() as session:
        keys = load(session)
        if keys.signing_key is None:
            ensure(session)
            keys = load(session)
    cached = keys
    return keys


def fresh() -> KeySet | None:
    """The keys this process read, if they are recent enough to use without reading them again."""
    if cached is not None and time.monotonic() - cached.loaded_at < settings.signing_key_cache_seconds:
        return cached
    return None


def for_signing() -> tuple[str, Any]:
    """The current key's kid and private key, for code already on a worker thread (a login or a refresh)."""
    keys = fresh()
    keys = keys if keys is not None else read_again()
    if keys.signing_kid is None or keys.signing_key is None:  # pragma: no cover (read_again makes one)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "No signing key: try again in a few seconds")
    return keys.signing_kid, keys.signing_key


async def current() -> KeySet:
    """The keys, read again on a worker thread once they are older than SIGNING_KEY_CACHE_SECONDS."""
    keys = fresh()
    return keys if keys is not None else await to_thread.run_sync(read_again)


async def verifying_key(kid: str) -> jwt.PyJWK | None:
    """The published key with this kid. An unknown kid reads the keys again, at most once every few seconds:
    a key that another worker or host just made current is known at once."""
    keys = await current()
    if kid not in keys.verifying and time.monotonic() - keys.loaded_at >= UNKNOWN_KID_RELOAD_SECONDS:
        keys = await to_thread.run_sync(read_again)
    return keys.verifying.get(kid)


# The operator's commands (manage.py): each changes the set in one locked transaction.


def last_change(session: Session) -> float:
    return session.scalar(select(func.max(SigningKey.since))) or 0.0


def rotate(session: Session) -> str:
    """next becomes current, current becomes previous, a new next is made, and the old previous goes. Refused while
    a verifier may not yet have seen the last change: twice SIGNING_KEY_CACHE_SECONDS (the JWKS's max-age and
    each worker's cache)."""
    lock_keys(session)
    now = time.time()
    may_run_at = last_change(session) + 2 * settings.signing_key_cache_seconds
    if now < may_run_at:
        session.rollback()
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(may_run_at))
        raise SystemExit(
            f"The last key change was too recent for every verifier to have seen it: rotate again at {when} "
            f"(twice SIGNING_KEY_CACHE_SECONDS after it)"
        )
    session.execute(delete(SigningKey).where(SigningKey.state == PREVIOUS))
    session.execute(update(SigningKey).where(SigningKey.state == CURRENT).values(state=PREVIOUS, since=now))
    session.execute(update(SigningKey).where(SigningKey.state == NEXT).values(state=CURRENT, since=now))
    made = new_key(NEXT, now)
    session.add(made)
    session.commit()
    signing = session.scalar(select(SigningKey.kid).where(SigningKey.state == CURRENT))
    return f"Rotated: {signing} signs now and {made.kid} is next; the key before still verifies until the next rotation"


def revoke(session: Session, kid: str) -> str:
    """Drop a leaked key at once; a current one is first replaced by next, and a new next is made."""
    lock_keys(session)
    key = session.get(SigningKey, kid)
    if key is None:
        session.rollback()
        raise SystemExit(f"No signing key has the kid {kid!r}: python manage.py keys lists them")
    now = time.time()
    session.delete(key)
    if key.state == CURRENT:
        session.execute(update(SigningKey).where(SigningKey.state == NEXT).values(state=CURRENT, since=now))
    if key.state in (CURRENT, NEXT):
        session.add(new_key(NEXT, now))
    session.commit()
    return (
        f"Revoked {kid} (it was {key.state}): every worker refuses its tokens within "
        f"{settings.signing_key_cache_seconds} seconds (SIGNING_KEY_CACHE_SECONDS)"
    )


def listing(session: Session) -> str:
    rows = session.scalars(select(SigningKey).order_by(SigningKey.since, SigningKey.state)).all()
    return "\n".join(
        f"{row.kid} {row.algorithm} {row.state} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(row.since))}"
        for row in rows
    )


# What other services read: the public keys, and where everything is (RFC 8414).

router = APIRouter(prefix="/.well-known", tags=["keys"])


class JsonWebKeySet(BaseModel):
    keys: list[dict[str, Any]] = Field(description="The public keys of the next, current and previous states")


@router.get("/jwks.json", response_model=JsonWebKeySet)
async def json_web_key_set() -> JSONResponse:
    """RFC 7517: the keys that verify this app's access tokens, by kid; never a private part. Cache it for at most
    max-age seconds: a rotation waits twice that long, so a verifier always knows the key that signs next."""
    published = (await current()).published
    return JSONResponse(
        {"keys": published},
        media_type="application/jwk-set+json",
        headers={"Cache-Control": f"public, max-age={settings.signing_key_cache_seconds}"},
    )


class ServerMetadata(BaseModel):
    issuer: str
    token_endpoint: str
    revocation_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    scopes_supported: list[str]
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]


@router.get("/oauth-authorization-server")
async def server_metadata() -> ServerMetadata:
    """RFC 8414: the issuer that every access token names, and its endpoints, for clients and resource servers."""
    issuer = settings.token_issuer.rstrip("/")
    return ServerMetadata(
        issuer=settings.token_issuer,
        token_endpoint=f"{issuer}/auth/token",
        revocation_endpoint=f"{issuer}/auth/revoke",
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        grant_types_supported=["password", "refresh_token"],
        scopes_supported=list(SCOPES),
        response_types_supported=[],  # no authorization endpoint: see docs/limits.md
        token_endpoint_auth_methods_supported=["none"],
        revocation_endpoint_auth_methods_supported=["none"],
    )
