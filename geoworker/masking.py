"""Secrets out of what geoworker prints: DSN passwords, URL credentials and query strings.

Its own module because both config (`geoworker config` masks what it shows) and the
storage and HTTP code (every URL in a log line or an error) need it, and storage must
not import config: config imports the storage backend registry.
"""

from __future__ import annotations

import urllib.parse as up

MASK = "********"


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced, for logs and `geoworker config`."""
    if not dsn:
        return dsn
    try:
        # psycopg2 here, not at the top: the storage code imports this module and needs no driver
        from psycopg2.extensions import make_dsn, parse_dsn

        parts = parse_dsn(dsn)
    except Exception:
        return MASK
    if "password" in parts:
        parts["password"] = MASK
    if dsn.startswith(("postgres://", "postgresql://")):
        # keep the URL shape operators wrote
        u = up.urlsplit(dsn)
        netloc = u.netloc
        userinfo, at, hostport = netloc.rpartition("@")
        if at and ":" in userinfo:  # by hand: urlsplit's .port raises on a port that is not a number
            netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hostport}"
        # a password may also sit in the query string (?password=...)
        query = up.urlencode([(k, MASK if k.lower() == "password" else v)
                              for k, v in up.parse_qsl(u.query, keep_blank_values=True)], safe="/*")
        return up.urlunsplit((u.scheme, netloc, u.path, query, u.fragment))
    return make_dsn(**parts)


def strip_url_secrets(url: str) -> str:
    """A URL without its query string and credentials: signatures and tokens live there."""
    try:
        u = up.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    query = "?<redacted>" if u.query else ""
    return up.urlunsplit((u.scheme, host, u.path, "", "")) + query
