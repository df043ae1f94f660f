"""Dashboard and API tokens: HS256 JWTs signed with api.jwt_secret, as the platform issues them.

`geoworker token` mints one for a person (`sub`), optionally an operator's (`"role":
"operator"`: every job, the overview, the workers), and prints it or the dashboard's sign-in
link. The link carries the token in the URL fragment, which browsers never send to the
server, so it reaches neither the API's access log nor a proxy's.
"""

from __future__ import annotations

import time
import warnings

import jwt

OPERATOR_ROLE = "operator"
DEFAULT_TTL = 8 * 3600  # seconds: a working day
MAX_TTL = 366 * 86400  # seconds: a year; the platform issues its users' long-lived tokens itself
MAX_SUBJECT = 200  # characters of `sub` (the API refuses a longer one)


def mint(secret: str, user: str, *, operator: bool = False, ttl: float = DEFAULT_TTL,
         now: float | None = None) -> str:
    """A signed token for `user`, valid `ttl` seconds.

    Raises:
        ValueError: an empty secret or user, a user name too long, a ttl not within (0, MAX_TTL].
    """
    if not secret:
        raise ValueError("api.jwt_secret is empty (GEOWORKER_API_JWT_SECRET)")
    if not user or len(user) > MAX_SUBJECT or "\x00" in user:
        raise ValueError(f"the user name must be 1 to {MAX_SUBJECT} characters")
    if not 0 < ttl <= MAX_TTL:  # NaN fails too
        raise ValueError(f"the ttl must be more than 0 and at most {MAX_TTL} seconds (a year)")
    issued = int(time.time() if now is None else now)
    claims = {"sub": user, "iat": issued, "exp": issued + int(ttl)}
    if operator:
        claims["role"] = OPERATOR_ROLE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns on short keys; `geoworker api` says so at start
        return jwt.encode(claims, secret, algorithm="HS256")


def sign_in_link(api_base: str, token: str) -> str:
    """The dashboard's sign-in URL: the token rides in the fragment, never sent to the server."""
    return f"{api_base.rstrip('/')}/ui#token={token}"
