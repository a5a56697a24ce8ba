"""The app: its routers, its error answers, the greeting, a health check, and `python main.py`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

import admin
import auth
import browser
import database
import fast_reads
import keys
import migrate
import users
from auth import BAD_TOKEN_RESPONSE, BUSY_RESPONSE, SCOPE_RESPONSE, Detail, Reader
from config import settings
from database import is_unavailable
from models import User

logger = logging.getLogger(__name__)

# The largest valid request, a sign-up with every character of a 64-character name and a 72-byte password
# escaped in JSON, is about 1.3 KB: 4 KiB leaves room for any client, and nothing bigger is ever read.
MAX_BODY_BYTES = 4096


# Before the app is made, and not in its lifespan: an error here stops start-up with one line, where Starlette
# would print a whole traceback for the same error raised in the lifespan.
migrate.upgrade_or_exit(database.engine)
keys.read_again()  # the signing keys, made on the first start


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await fast_reads.close()


# FastAPIOffline is FastAPI with /docs served from files that pip installs with it, not from a CDN. /redoc is off:
# ReDoc loads its maker's logo from their CDN as it runs, and /docs already does everything it does.
app: FastAPI = FastAPIOffline(
    redoc_url=None,
    title="FastAPI JWT auth demo",
    version="1.3.0",
    description=(
        "Sign up with `POST /auth/`, then press **Authorize**, log in with the same "
        "username and password, and try `GET /`."
    ),
    lifespan=lifespan,
)


@app.exception_handler(RequestValidationError)
async def validation_error_without_input(request: Request, error: RequestValidationError) -> JSONResponse:
    """Say which rule failed, but never echo the rejected value: it may be a password."""
    errors = [{key: value for key, value in item.items() if key != "input"} for item in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


TOO_LARGE = JSONResponse({"detail": f"Request body too large: the limit is {MAX_BODY_BYTES} bytes"}, 413)


@app.exception_handler(status.HTTP_413_CONTENT_TOO_LARGE)
async def body_too_large(request: Request, error: HTTPException) -> JSONResponse:
    """max_body_size stops reading a body at the limit; this says what the limit is."""
    return TOO_LARGE


class DeclaredTooLarge:
    """Answer a Content-Length over the limit at once, in JSON: Starlette would answer it in plain text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await TOO_LARGE(scope, receive, send)
        else:
            await self.app(scope, receive, send)


app.add_middleware(DeclaredTooLarge)


@app.exception_handler(SQLAlchemyError)
async def database_unavailable(request: Request, error: SQLAlchemyError) -> JSONResponse:
    """Down, restarting or busy is a 503 to try again later; any other database error is a defect, a 500."""
    if not is_unavailable(error):
        raise error
    cause = getattr(error, "orig", None) or error
    logger.warning("Database unavailable: %s: %s", type(cause).__name__, " ".join(str(cause).split()))
    return JSONResponse(
        {"detail": "The database is unavailable: try again in a few seconds"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(settings.database_timeout_seconds)},
    )


class Message(BaseModel):
    message: str


@app.get("/", responses=BAD_TOKEN_RESPONSE | SCOPE_RESPONSE | BUSY_RESPONSE)
async def greet(user: Reader) -> Message:
    return Message(message=f"Hello, {user.username} with ID: {user.id}!")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


A_TRIVIAL_READ = select(User.id).limit(1)


@app.get(
    "/health",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Detail, "description": "The database is away"}},
)
async def health() -> Health:
    """For load balancers, probes and monitors: 200 while the database answers a trivial read, else 503."""
    await fast_reads.read_row(A_TRIVIAL_READ)
    return Health()


# The routers come after GET / and /health, so that the most frequent requests find their route first.
for router in (auth.router, browser.router, users.router, admin.router, keys.router):
    app.include_router(
        router,
        max_body_size=MAX_BODY_BYTES,
        responses={
            status.HTTP_413_CONTENT_TOO_LARGE: {"model": Detail, "description": f"Body over {MAX_BODY_BYTES} bytes"}
        },
    )
# The browser page (browser.py): the HTML at /app, its stylesheet and module beside it.
app.include_router(browser.page_router)
app.mount("/app/files", StaticFiles(directory=browser.PAGE), name="page-files")


if __name__ == "__main__":
    uvicorn.run(app, host=settings.host, port=settings.port)
