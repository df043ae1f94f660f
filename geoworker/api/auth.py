"""Who is calling: a platform user (Bearer JWT) or a geoworker worker (Worker token + its id).

Users: `Authorization: Bearer <JWT>`, HS256 with api.jwt_secret; the signature, `exp`
(required) and `sub` (required: the owner of the jobs the user creates and sees) are
checked, with no leeway beyond a few seconds of clock skew. A token with the claim
`"role": "operator"` is an operator's: it sees and acts on every job, and reads the
service-wide routes (overview, workers); everyone else sees their own jobs only.

Workers: `Authorization: Worker <api.worker_token>`, compared in constant time, plus
`X-Geoworker-Worker: <worker id>`, the id the worker holds its jobs under (locked_by).
Every worker shares the token, so the token is the trust boundary, as the DSN is in
database mode: a worker may act for another worker id (a supervisor settles its
children's jobs that way).
"""

from __future__ import annotations

import hmac
import re
import warnings
from dataclasses import dataclass

import jwt
from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from geoworker.api.errors import ApiError, unauthorized
from geoworker.api.wire import WORKER_HEADER, WORKER_ID_PATTERN, WORKER_SCHEME
from geoworker.tokens import MAX_SUBJECT, OPERATOR_ROLE

CLOCK_SKEW = 5  # seconds of leeway on exp/nbf/iat

# documented in the OpenAPI document; the checks below read the header themselves for precise answers
bearer_scheme = HTTPBearer(auto_error=False, bearerFormat="JWT", scheme_name="UserJWT",
                           description="A JWT signed with HS256 (api.jwt_secret); `sub` is the user.")
worker_scheme = APIKeyHeader(name="Authorization", auto_error=False, scheme_name="WorkerToken",
                             description="`Worker <token>` (api.worker_token).")
_WORKER_ID = re.compile(WORKER_ID_PATTERN)


def _split(request: Request) -> tuple[str, str]:
    raw = request.headers.get("authorization", "")
    scheme, _, credentials = raw.strip().partition(" ")
    return scheme.lower(), credentials.strip()


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a user (their own jobs) or an operator (every job).

    Attributes:
        sub: the token's subject, the owner of the jobs the viewer creates.
        operator: the token carries "role": "operator".
        expires: the token's exp (unix time): a live stream ends then.
    """

    sub: str
    operator: bool = False
    expires: float = 0.0

    @property
    def scope(self) -> str | None:
        """The owner filter for this viewer's reads: None (every job) for an operator."""
        return None if self.operator else self.sub

    @property
    def actor(self) -> str:
        """What the viewer's actions are recorded as in a job's events."""
        return f"{'operator' if self.operator else 'user'}:{self.sub}"

    def may_see(self, owner: str | None) -> bool:
        return self.operator or owner == self.sub


def _claims(request: Request) -> dict:
    """The claims of a valid Bearer token; 401 otherwise."""
    scheme, token = _split(request)
    if scheme != "bearer" or not token:
        said = f"a {scheme.title()} credential" if scheme else "no credentials"
        raise unauthorized(f"this route needs Authorization: Bearer <JWT> (got {said})", "Bearer")
    secret = request.app.state.api.settings.api.jwt_secret
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns on short keys; the server says so once at start
            claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=CLOCK_SKEW,
                                options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise unauthorized("the token has expired", 'Bearer error="invalid_token"') from None
    except jwt.InvalidSignatureError:
        raise unauthorized("the token's signature is not valid", 'Bearer error="invalid_token"') from None
    except jwt.MissingRequiredClaimError as exc:
        raise unauthorized(f"the token has no {exc.claim!r} claim", 'Bearer error="invalid_token"') from None
    except jwt.InvalidTokenError:
        raise unauthorized("the token is not a valid HS256 JWT", 'Bearer error="invalid_token"') from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT or "\x00" in subject:
        raise unauthorized("the token's sub must be a non-empty string", 'Bearer error="invalid_token"')
    return claims


def current_user(request: Request, _credentials=Security(bearer_scheme)) -> str:
    """The `sub` of a valid Bearer token; 401 otherwise."""
    return _claims(request)["sub"]


def current_viewer(request: Request, _credentials=Security(bearer_scheme)) -> Viewer:
    """The viewer a valid Bearer token names (user or operator); 401 otherwise."""
    claims = _claims(request)
    exp = claims["exp"]
    return Viewer(claims["sub"], claims.get("role") == OPERATOR_ROLE,
                  float(exp) if isinstance(exp, (int, float)) else 0.0)


def current_operator(viewer: Viewer = Depends(current_viewer)) -> Viewer:
    """An operator's viewer; 403 for anyone else (the route is not about their jobs)."""
    if not viewer.operator:
        raise ApiError(403, 'this route is for operators (a token with "role": "operator")')
    return viewer


def check_worker_token(request: Request, _credentials=Security(worker_scheme)) -> None:
    """401 unless the request carries `Worker <api.worker_token>` (constant-time compare)."""
    scheme, token = _split(request)
    if scheme != WORKER_SCHEME.lower() or not token:
        said = f"a {scheme.title()} credential" if scheme else "no credentials"
        raise unauthorized(f"this route needs Authorization: {WORKER_SCHEME} <token> (got {said})", WORKER_SCHEME)
    expected = request.app.state.api.settings.api.worker_token
    if not expected:
        raise ApiError(403, "worker routes are off: api.worker_token (WORKER_AUTH_TOKEN) is not set on the API")
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode()):
        raise unauthorized("the worker token is not valid", WORKER_SCHEME)


def current_worker(_token=Depends(check_worker_token),
                   worker: str = Header(alias=WORKER_HEADER, pattern=WORKER_ID_PATTERN, max_length=200,
                                        description="the calling worker's id (what it holds jobs under)")) -> str:
    """The calling worker's id; the token is checked first, so a bad token is 401 whatever the headers."""
    return worker


def valid_worker_id(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not _WORKER_ID.match(value):
        raise ApiError(422, f"{field}: not a worker id (letters, digits and ._:@- only, at most 200)", field=field)
    return value
