"""Another service that accepts the app's access tokens, checking them with the app's public keys alone.

It holds no secret of the app's, so it can verify tokens but never make one. Run it beside the app:

    python main.py                                                       # the app, on port 8000
    uvicorn resource_server:app --app-dir examples --port 8001           # this service
    curl http://127.0.0.1:8001/hello -H "Authorization: Bearer $TOKEN"    # a token from the app's /auth/token

It learns of a logout, a password change or a disabled account only when the token expires: it never asks the app
about sessions. Pick ACCESS_TOKEN_EXPIRE_MINUTES for that: the 30-minute default means a revoked session may still
be served here for up to half an hour; 5 minutes, with clients refreshing, keeps that short.
"""

import os
from typing import Annotated, Any

import jwt
from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

ISSUER = os.environ.get("TOKEN_ISSUER", "http://127.0.0.1:8000")
AUDIENCE = os.environ.get("TOKEN_AUDIENCE", "fastapi-jwt-auth-demo")
# PyJWKClient keeps the key set for `lifespan` seconds: at most the JWKS's max-age, the app's SIGNING_KEY_CACHE_SECONDS.
# The app publishes a key that long before it signs with it (its `next`), so a rotation finds it here already.
app_keys = jwt.PyJWKClient(
    os.environ.get("JWKS_URL", f"{ISSUER}/.well-known/jwks.json"),
    lifespan=int(os.environ.get("JWKS_CACHE_SECONDS", "300")),
)
bearer = HTTPBearer(auto_error=False)
app = FastAPI(title="A resource server")


def refused(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


async def verified_claims(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Any:
    """The token's claims, if the app signed it for this audience and it has not expired (RFC 9068 §4)."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "A Bearer token is needed", {"WWW-Authenticate": "Bearer"})
    token = credentials.credentials
    try:
        # PyJWKClient reads the JWKS with blocking urllib: on a worker thread, so the event loop never waits.
        key = await to_thread.run_sync(app_keys.get_signing_key_from_jwt, token)
        if jwt.get_unverified_header(token).get("typ") != "at+jwt":
            raise refused("Not an access token")
        return jwt.decode(
            token,
            key,
            algorithms=[key.algorithm_name],  # the key's own algorithm, never the one the token names
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "scope"]},
        )
    except jwt.PyJWKClientConnectionError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "The app's keys cannot be read now") from None
    except jwt.PyJWTError:
        raise refused("Could not validate credentials") from None


@app.get("/hello")
async def hello(claims: Annotated[Any, Depends(verified_claims)]) -> dict[str, str]:
    """Needs the `me` scope, as the app's own GET / does."""
    if "me" not in claims["scope"].split():
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "This route needs the scope 'me'",
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="me"'},
        )
    return {"message": f"Hello from another service, {claims['sub']}!"}
