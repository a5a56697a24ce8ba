"""The command line for an operator: make an administrator, and list, rotate or revoke the signing keys.

It works on the database in DATABASE_URL, with the settings the app reads, while the server runs or not: nobody
edits the database by hand, and no administrator's password sits in a setting.
"""

import argparse
import getpass
import logging
import sys
from collections.abc import Callable

from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import database
import migrate
from models import User
from passwords import fold, password_context
from roles import ADMIN

# keys warns as it is imported when SECRET_KEY is unset: these commands say so themselves where it matters.
logging.getLogger("keys").disabled = True
import keys  # noqa: E402
from auth import UserCreate, Username, add_user  # noqa: E402

logging.getLogger("keys").disabled = False


def refusal(error: ValidationError) -> str:
    """Which rule failed, as sign-up's 422 says it, in one line."""
    problem = error.errors()[0]
    field = problem["loc"][0] if problem["loc"] else "username"
    return f"Not a valid {field}: {problem['msg'].removeprefix('Value error, ')}"


def ask_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")  # a line ends with \n, or with \r\n on Windows
    password = getpass.getpass("Password for the new administrator: ")
    if getpass.getpass("The same password again: ") != password:
        raise SystemExit("The two passwords differ: nothing was changed")
    return password


def make_admin(username: str, password_from_stdin: bool) -> str:
    """Make an existing user an enabled administrator, or create one; return what was done, in one line."""
    try:
        name = TypeAdapter(Username).validate_python(username)
    except ValidationError as error:
        raise SystemExit(refusal(error)) from None
    migrate.upgrade_or_exit(database.engine)
    with Session(database.engine) as session:
        promote = update(User).where(User.username == name).values(role=ADMIN, disabled=False).returning(User.id)
        if (user_id := session.scalar(promote)) is not None:
            session.commit()
            return f"{name} (id {user_id}) is now an enabled administrator: they log in again to get the admin scope"
        if taken := session.scalar(select(User.username).where(User.username_key == fold(name))):
            raise SystemExit(f"{name}: the user {taken} has this name but for case; give that name")
    try:
        new = UserCreate(username=name, password=ask_password(password_from_stdin))
    except ValidationError as error:
        raise SystemExit(refusal(error)) from None
    with database.SessionLocal() as session:
        try:
            user = add_user(session, new.username, password_context.hash(new.password), role=ADMIN)
        except HTTPException:  # made meanwhile, by a sign-up
            raise SystemExit(f"{name}: a user of this name, or of this name but for case, exists; try again") from None
    return f"Created {user.username} (id {user.id}) as an enabled administrator"


def change_keys(change: Callable[[Session], str]) -> str:
    """A change of the signing keys: it encrypts a new private key with SECRET_KEY, which must be the app's."""
    if not keys.SECRET_KEY_IS_SET:
        raise SystemExit("SECRET_KEY is not set: the keys are encrypted with it; set the app's SECRET_KEY first")
    migrate.upgrade_or_exit(database.engine)
    with database.SessionLocal() as session:
        keys.ensure(session)
        return change(session)


def list_keys() -> str:
    migrate.upgrade_or_exit(database.engine)
    with database.SessionLocal() as session:
        return keys.listing(session) or "No signing keys yet: the app makes them as it starts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-admin", help="make a user an administrator, creating it if it does not exist")
    make.add_argument("username", help="a name that starts with - goes after --: make-admin -- -hal")
    make.add_argument("--password-stdin", action="store_true", help="read a new user's password from standard input")
    commands.add_parser("keys", help="list the signing keys: kid, algorithm, state and since when")
    commands.add_parser("rotate-keys", help="next becomes current, current previous; a new next; the old previous goes")
    # A kid is base64url, so one in 64 starts with "-": this command takes no option, so nothing here is one.
    revoke = commands.add_parser(
        "revoke-key",
        prefix_chars="+",
        add_help=False,
        help="drop a leaked key at once (a current one is replaced by next)",
    )
    revoke.add_argument("kid")
    arguments = parser.parse_args()
    try:
        if arguments.command == "make-admin":
            print(make_admin(arguments.username, arguments.password_stdin))
        elif arguments.command == "keys":
            print(list_keys())
        elif arguments.command == "rotate-keys":
            print(change_keys(keys.rotate))
        else:
            print(change_keys(lambda session: keys.revoke(session, arguments.kid)))
    except OperationalError as error:
        raise SystemExit(f"Cannot use the database in DATABASE_URL: {error.orig}") from None


if __name__ == "__main__":
    main()
