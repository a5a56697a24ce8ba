"""Passwords: the rules a new one must meet, and bcrypt, on threads of its own and never too many at once."""

import os
import time
import unicodedata
from collections.abc import Callable
from typing import Annotated, TypeVar

import bcrypt
from anyio import CapacityLimiter, WouldBlock, to_thread
from fastapi import HTTPException, status
from passlib.context import CryptContext
from pydantic import AfterValidator, Field
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from config import settings

MAX_PASSWORD_BYTES = 72
# Every account ever made here had at least this many characters, whatever PASSWORD_MIN_LENGTH says now.
SHORTEST_STORED_PASSWORD = 8

password_context = CryptContext(schemes=["bcrypt"], deprecated="auto", bcrypt__rounds=settings.bcrypt_rounds)
hashing_started = time.perf_counter()
DUMMY_HASH = password_context.hash("checked when the username is unknown")
SECONDS_PER_HASH = time.perf_counter() - hashing_started

CORES = os.cpu_count() or 1
hashing_threads = CapacityLimiter(CORES)
# Besides one hash per core, as many may wait as the cores finish in about a second: an accepted request
# waits about that long at most, and the next one is told at once to come back. The floor keeps a first
# hash that ran slowly (a busy machine at start-up) from leaving the bound low for the life of the process.
MIN_WAITING_HASHES = 16
MAX_WAITING_HASHES = max(MIN_WAITING_HASHES, round(CORES / SECONDS_PER_HASH))
places_to_hash = CapacityLimiter(CORES + MAX_WAITING_HASHES)

T = TypeVar("T")


def too_busy() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "Too many logins and sign-ups at once: try again in a second",
        headers={"Retry-After": "1"},
    )


def refuse_if_hashing_is_full() -> None:
    """Answer 503 at once, before any database work, when every place to hash is taken."""
    if places_to_hash.available_tokens == 0:
        raise too_busy()


async def hash_off_the_loop(work: Callable[..., T], *args: str) -> T:
    """Hash in one of a bounded number of places, on threads of bcrypt's own (one per core).

    The threads that serve every other request stay free, and a refused login or sign-up never takes a place.
    """
    place = object()
    try:
        places_to_hash.acquire_on_behalf_of_nowait(place)
    except WouldBlock:
        raise too_busy() from None
    try:
        return await to_thread.run_sync(work, *args, limiter=hashing_threads)
    finally:
        places_to_hash.release_on_behalf_of(place)


async def hash_password(password: str) -> str:
    return await hash_off_the_loop(password_context.hash, password)


def normalized(password: str) -> str:
    """NIST SP 800-63B-4: é typed as one code point (most keyboards) or as e and an accent (some macOS paths)
    is one password."""
    return unicodedata.normalize("NFKC", password)


def rounds_of(stored_hash: str) -> int:
    return int(stored_hash.split("$")[2])  # $2b$12$…


def verify_and_update(password: str, stored_hash: str) -> tuple[bool, str | None]:
    """Whether the password matches, and a new hash when the stored one should be replaced.

    The normalized form is tried first, then the form as typed, for accounts made before passwords were
    normalized; such an account gets the normalized hash. A failed check against a hash of an older, cheaper cost
    is padded with bcrypt runs up to the current cost's work, so that a wrong password for a known user takes
    as long as one for an unknown user, whose check runs against a dummy hash at the current cost.
    """
    both = dict.fromkeys([normalized(password), password])  # one form when they are the same
    forms = [form for form in both if len(form.encode()) <= MAX_PASSWORD_BYTES]
    for form in forms:
        matches, new_hash = password_context.verify_and_update(form, stored_hash)
        if matches:
            return True, new_hash if form == forms[0] else password_context.hash(forms[0])
        for rounds in range(rounds_of(stored_hash), settings.bcrypt_rounds):  # 2^c + 2^c + … + 2^(C-1) = 2^C
            bcrypt.hashpw(b"", bcrypt.gensalt(rounds))
    return False, None


async def verify_password(password: str, stored_hash: str) -> tuple[bool, str | None]:
    return await hash_off_the_loop(verify_and_update, password, stored_hash)


def fold(text: str) -> str:
    """Compare text as people read it: NFKC folds look-alike forms (full-width letters), casefold drops case."""
    return unicodedata.normalize("NFKC", text).casefold()


# zxcvbn's 30,000 most common passwords, ranked from Xato's 10 million leaked passwords (MIT licence).
COMMON_PASSWORDS = frozenset(fold(password) for password in FREQUENCY_LISTS["passwords"])
TOO_COMMON = "Password is one of the most common passwords, the first that attackers try: choose another"
HAS_USERNAME = "Password must not contain the username"


def fits_bcrypt(password: str) -> str:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"Password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8: bcrypt ignores the rest")
    if "\x00" in password:
        raise ValueError("Password must not contain the NUL character: bcrypt cannot hash it")
    return password


def not_common(password: str) -> str:
    if fold(password) in COMMON_PASSWORDS:
        raise ValueError(TOO_COMMON)
    return password


def contains_username(password: str, username: str) -> bool:
    return fold(username) in fold(password)


StoredPassword = Annotated[
    str,
    Field(
        min_length=SHORTEST_STORED_PASSWORD,
        max_length=MAX_PASSWORD_BYTES,
        description="The password as it was chosen",
        examples=["correct horse battery"],
    ),
    AfterValidator(fits_bcrypt),
]
NewPassword = Annotated[
    str,
    Field(
        min_length=settings.password_min_length,
        max_length=MAX_PASSWORD_BYTES,
        description=(
            f"At least {settings.password_min_length} characters and at most {MAX_PASSWORD_BYTES} bytes in UTF-8; "
            f"not one of the {len(COMMON_PASSWORDS):,} most common passwords, and not containing the username "
            "(case and look-alike letters are ignored); any characters, no other rule"
        ),
        examples=["correct horse battery"],
    ),
    AfterValidator(normalized),
    AfterValidator(fits_bcrypt),
    AfterValidator(not_common),
]
