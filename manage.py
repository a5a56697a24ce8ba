"""The command line for an operator: `python manage.py make-admin USERNAME`.

It works on the database in DATABASE_URL, with the settings the app reads, while the server runs or not: nobody
edits the database by hand, and no administrator's password sits in a setting.
"""

import argparse
import getpass
import logging
import sys

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

# auth warns as it is imported when SECRET_KEY is unset: this command signs no token, so the warning is not for it.
logging.getLogger("auth").disabled = True
from auth import UserCreate, Username, add_user  # noqa: E402

logging.getLogger("auth").disabled = False


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-admin", help="make a user an administrator, creating it if it does not exist")
    make.add_argument("username", help="a name that starts with - goes after --: make-admin -- -hal")
    make.add_argument("--password-stdin", action="store_true", help="read a new user's password from standard input")
    arguments = parser.parse_args()
    try:
        print(make_admin(arguments.username, arguments.password_stdin))
    except OperationalError as error:
        raise SystemExit(f"Cannot use the database in DATABASE_URL: {error.orig}") from None


if __name__ == "__main__":
    main()
