import os
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from auth import BAD_TOKEN_RESPONSE, CurrentUser, UserPublic, read_int_setting, router
from database import create_tables
from models import User


@asynccontextmanager
async def lifespan(app: FastAPI):
    try:
        create_tables()
    except OperationalError as error:
        raise SystemExit(f"Cannot open the database in DATABASE_URL: {error.orig}") from None
    yield


app = FastAPI(
    title="FastAPI JWT auth demo",
    version="1.0.0",
    description=(
        "Sign up with `POST /auth/`, then press **Authorize**, log in with the same "
        "username and password, and try `GET /`."
    ),
    lifespan=lifespan,
)
app.include_router(router)


@app.exception_handler(RequestValidationError)
async def validation_error_without_input(request: Request, error: RequestValidationError) -> JSONResponse:
    """Say which rule failed, but never echo the rejected value: it may be a password."""
    errors = [{key: value for key, value in item.items() if key != "input"} for item in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


class Message(BaseModel):
    message: str


@app.get("/", responses=BAD_TOKEN_RESPONSE)
async def greet(user: CurrentUser) -> Message:
    return Message(message=f"Hello, {user.username} with ID: {user.id}!")


@app.get("/users/me", response_model=UserPublic, responses=BAD_TOKEN_RESPONSE)
async def read_current_user(user: CurrentUser) -> User:
    return user


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=read_int_setting("PORT", 8000, 1, 65535))
