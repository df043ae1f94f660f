"""Expiring HMAC signatures for URLs: what the API issues and checks for uploads and downloads.

A signed URL is `<path>?expires=<unix time>[&size=<bytes>]&signature=<hex>`, where the
signature is HMAC-SHA256 over the method, the path, the expiry and the size bound,
keyed with `api.signing_secret`. Verification is constant-time and tells why it failed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlencode

from geoworker.errors import GeoworkerError


class SignatureInvalid(GeoworkerError):
    """The URL's signature is missing, wrong or expired."""


@dataclass(frozen=True)
class SignedGrant:
    method: str
    path: str
    expires: int
    size: int | None


def signature(secret: str | bytes, method: str, path: str, expires: int, size: int | None = None) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    message = "\n".join((method.upper(), path, str(int(expires)), "" if size is None else str(int(size))))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign_path(secret: str | bytes, method: str, path: str, expires_in: float, size: int | None = None,
              now: float | None = None) -> str:
    """`path?expires=..[&size=..]&signature=..`, valid for expires_in seconds (for `method` only)."""
    if not secret:
        raise ValueError("a signing secret is required")
    expires = int((time.time() if now is None else now) + expires_in)
    query = {"expires": expires}
    if size is not None:
        query["size"] = int(size)
    query["signature"] = signature(secret, method, path, expires, size)
    return f"{path}?{urlencode(query)}"


def verify(secret: str | bytes, method: str, path: str, query: Mapping[str, str],
           now: float | None = None) -> SignedGrant:
    """Check a signed request.

    Args:
        method, path: the request's (path without the query string).
        query: its query parameters (single values).
    Returns:
        the grant (with the size bound, if any, for capping an upload).
    Raises:
        SignatureInvalid: missing, malformed, altered (other method, path, expiry or size) or expired.
    """
    try:
        expires = int(query["expires"])
        size = int(query["size"]) if query.get("size") not in (None, "") else None
        given = str(query["signature"])
    except (KeyError, ValueError, TypeError):
        raise SignatureInvalid("the URL is not signed (expires and signature are required)") from None
    expected = signature(secret, method, path, expires, size)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureInvalid("the URL's signature does not match")
    if (time.time() if now is None else now) > expires:
        raise SignatureInvalid("the URL has expired")
    return SignedGrant(method.upper(), path, expires, size)
