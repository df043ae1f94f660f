"""Fetching from and uploading to URLs without becoming a proxy into the worker's network.

The rules, each with a test in tests/test_storage_urls.py:

- Scheme https; plain http only with `storage.allow_http = true`. No user:password@ in URLs.
- The host must be listed in `storage.allowed_hosts` (exact names, or `*.example.com` for the
  subdomains of example.com). An empty list means no URL inputs at all.
- Every address the host resolves to must be public: loopback, private (RFC 1918, ULA),
  link-local (169.254.169.254, the cloud metadata service), shared (100.64/10), multicast,
  reserved, documentation and unspecified addresses are refused, IPv4-mapped IPv6 included.
  The check runs inside the connection (`_GuardedConnection._new_conn`) on the very addresses
  the socket then connects to, so DNS rebinding between a check and the connect cannot happen.
- Redirects are followed here, one hop at a time, and every hop is checked again (host and
  addresses), at most `TransferPolicy.max_redirects` of them.
- Proxies from the environment and ~/.netrc are ignored (`trust_env = False`): a proxy would
  hide where the request really goes.
- The platform's own origin (scheme, host and port of `api.base_url`) is trusted as the
  operator configured it: the signed URLs it issues may point at a private address.
- A URL's query string (where signatures live) never reaches a log line or an error
  message: everything printed goes through `geoworker.masking.strip_url_secrets`.

Transfers use connect and read timeouts, retry with exponential backoff on connection
errors, timeouts and 5xx answers, and never retry a 4xx in-process (408 and 429 become a
transient StorageError, so the queue's backoff retries the job later; every other 4xx is a
PermanentStorageError). Bodies are read raw (`Accept-Encoding: identity`): a compressed
answer is refused rather than inflated past the size cap.

`unsafe_allow_endpoints` exempts exact (ip, port) pairs from the address check. It exists
for tests, whose servers listen on 127.0.0.1; it is a parameter of `open_backend` and of
`UrlPolicy.from_settings`, never a configuration key, so no operator can switch it on by
accident.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from socket import timeout as SocketTimeout
from typing import Iterable
from urllib.parse import unquote, urljoin, urlsplit

import requests
from loguru import logger
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError as Urllib3Error, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

from geoworker.backoff import equal_jitter, exponential
from geoworker.masking import strip_url_secrets
from geoworker.errors import InvalidInput, PermanentStorageError, StorageError
from geoworker.storage.checks import check_content_type
from geoworker.storage.names import safe_filename
from geoworker.storage.stream import too_large, write_capped

USER_AGENT = "geoworker"


class UrlRefused(InvalidInput):
    """This URL may not be fetched by this worker."""


@dataclass(frozen=True)
class TransferPolicy:
    """Timeouts and retries of one transfer (seconds)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    total_timeout: float = 1800.0
    max_redirects: int = 5
    chunk_size: int = 1 << 16

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped, jittered."""
        return equal_jitter(exponential(self.backoff_base, self.backoff_max, attempt - 1))


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    trusted: bool


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    return (u.scheme, u.hostname.rstrip(".").lower(), port)


def forbidden_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a worker must not connect to this address, or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return forbidden_reason(ip.ipv4_mapped)
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("reserved", ip.is_reserved), ("private", ip.is_private),
              ("site-local", getattr(ip, "is_site_local", False)), ("not globally routable", not ip.is_global))
    for name, hit in checks:
        if hit:
            return name
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs this worker may fetch; see the module docstring."""

    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    trusted_origins: frozenset = field(default_factory=frozenset)
    unsafe_allow_endpoints: frozenset = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings, unsafe_allow_endpoints: Iterable[tuple[str, int]] = ()) -> "UrlPolicy":
        trusted = set()
        if settings.api.base_url and (origin := _origin(settings.api.base_url)):
            trusted.add(origin)
        return cls(allowed_hosts=tuple(h.strip().rstrip(".").lower() for h in settings.storage.allowed_hosts if h.strip()),
                   allow_http=settings.storage.allow_http, trusted_origins=frozenset(trusted),
                   unsafe_allow_endpoints=frozenset((str(ip), int(port)) for ip, port in unsafe_allow_endpoints))

    def host_allowed(self, host: str) -> bool:
        host = host.rstrip(".").lower()
        for pattern in self.allowed_hosts:
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
            if host == pattern:
                return True
        return False

    def check_url(self, url: str) -> Target:
        """Refuse a URL by its text alone (scheme, credentials, host); addresses are checked at connect.

        Raises:
            UrlRefused: with a message that says which rule and how to change it.
        """
        shown = strip_url_secrets(url)
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError:
            raise UrlRefused(f"the input URL {shown} cannot be parsed") from None
        scheme, host = u.scheme.lower(), (u.hostname or "").rstrip(".").lower()
        if scheme not in ("http", "https") or not host:
            raise UrlRefused(f"the input URL {shown} is not an http(s) URL")
        port = port or (443 if scheme == "https" else 80)
        if (scheme, host, port) in self.trusted_origins:
            return Target(scheme, host, port, True)
        if u.username is not None or u.password is not None:
            raise UrlRefused(f"the input URL {shown} carries credentials (user:password@); they are not accepted")
        if not self.allowed_hosts:
            raise UrlRefused("URL inputs are disabled on this worker: storage.allowed_hosts is empty "
                             f"(refused {shown})")
        if scheme == "http" and not self.allow_http:
            raise UrlRefused(f"the input URL {shown} uses plain http; only https is accepted "
                             "(storage.allow_http = true allows http)")
        if not self.host_allowed(host):
            raise UrlRefused(f"the host {host} is not in storage.allowed_hosts (refused {shown})")
        return Target(scheme, host, port, False)

    def check_addresses(self, scheme: str, host: str, port: int, addresses: Iterable[str]) -> list[str]:
        """The addresses to connect to, every one of them checked; refuses the host if any is forbidden."""
        addresses = list(dict.fromkeys(addresses))
        if (scheme, host.rstrip(".").lower(), port) in self.trusted_origins:
            return addresses
        for address in addresses:
            if (address, port) in self.unsafe_allow_endpoints:
                continue
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                raise UrlRefused(f"the host {host} resolves to an unusable address {address!r}") from None
            reason = forbidden_reason(ip)
            if reason:
                shown = host if host == address else f"{host} ({address})"
                raise UrlRefused(f"the host {shown} is a {reason} address; URL inputs must point to public "
                                 "addresses")
        if not addresses:
            raise UrlRefused(f"the host {host} resolves to no address")
        return addresses


# --- connections that check where they connect ------------------------------------------


def _guarded_new_conn(self) -> socket.socket:
    """urllib3's _new_conn, connecting only to addresses the policy accepted (see the module docstring)."""
    try:
        infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(self.host, self, exc) from exc
    addresses = self._policy.check_addresses(self._scheme, self.host, self.port, [i[4][0] for i in infos])
    error: OSError | None = None
    for address in addresses:
        try:
            return create_connection((address, self.port), self.timeout, source_address=self.source_address,
                                     socket_options=self.socket_options)
        except SocketTimeout as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                            f"(connect timeout={self.timeout})") from exc
        except OSError as exc:
            error = exc
    raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


def _guarded_pool_classes(policy: UrlPolicy) -> dict[str, type]:
    conn_attrs = {"_policy": policy, "_new_conn": _guarded_new_conn}
    http_conn = type("GuardedHTTPConnection", (HTTPConnection,), {**conn_attrs, "_scheme": "http"})
    https_conn = type("GuardedHTTPSConnection", (HTTPSConnection,), {**conn_attrs, "_scheme": "https"})
    return {"http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check every address against a UrlPolicy."""

    def __init__(self, policy: UrlPolicy, **kwargs):
        self._policy = policy
        super().__init__(max_retries=0, **kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pool_classes(self._policy)

    def proxy_manager_for(self, proxy, **kwargs):
        raise UrlRefused("proxies are not used for URL transfers")


def guarded_session(policy: UrlPolicy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies, no .netrc credentials from the environment
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return session


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed request, without the URL (requests puts the query string in its messages)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "the connection timed out"
    if isinstance(exc, (requests.ReadTimeout,)) or "ReadTimeout" in type(exc).__name__:
        return "no data within the read timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (certificate or handshake)"
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if type(e).__module__ == "builtins" and isinstance(e, OSError) and e.strerror:
            return f"connection failed: {e.strerror}"
        if isinstance(e, NameResolutionError):
            return "the host name could not be resolved"
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *[a for a in e.args if isinstance(a, BaseException)]]
    return f"connection failed ({type(exc).__name__})"


class _Retry(Exception):
    """A failure worth another attempt (connection errors, timeouts, 5xx)."""


def _status_error(method: str, url: str, resp: requests.Response) -> Exception:
    what = f"{method} {strip_url_secrets(url)}: HTTP {resp.status_code} {resp.reason or ''}".rstrip()
    if resp.status_code >= 500:
        return _Retry(what)
    if resp.status_code in (408, 429):
        return StorageError(f"{what}; will retry later")
    return PermanentStorageError(what)


def name_from_url(url: str, default: str = "input.tif") -> str:
    return safe_filename(unquote(urlsplit(url).path.rpartition("/")[2]), default)


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    content_type: str | None
    url: str  # the last hop, secrets stripped


class UrlTransfer:
    """GET into a file and PUT from a file under a UrlPolicy and a TransferPolicy."""

    def __init__(self, policy: UrlPolicy, transfer: TransferPolicy | None = None):
        self.policy = policy
        self.transfer = transfer or TransferPolicy()
        self.session = guarded_session(policy)

    def close(self) -> None:
        self.session.close()

    def _timeouts(self) -> tuple[float, float]:
        return (self.transfer.connect_timeout, self.transfer.read_timeout)

    def _with_retries(self, method: str, url: str, attempt_once):
        shown = strip_url_secrets(url)
        for attempt in range(1, self.transfer.attempts + 1):
            try:
                return attempt_once()
            except _Retry as exc:
                if attempt == self.transfer.attempts:
                    raise StorageError(f"{exc} (gave up after {attempt} attempts)") from None
                delay = self.transfer.backoff(attempt)
                logger.warning("{} {}: {}; attempt {} of {}, retrying in {:.1f} s", method, shown, exc, attempt,
                               self.transfer.attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- GET ---------------------------------------------------------------------------

    def download(self, url: str, dest_dir: Path, max_size: int, *, name: str | None = None,
                 check_type: bool = True) -> Downloaded:
        """Stream a URL into dest_dir/<safe name>, following checked redirects, capped at max_size.

        Raises:
            UrlRefused: the URL or a redirect hop breaks the policy (permanent).
            TooLarge: Content-Length or the bytes received exceed max_size.
            PermanentStorageError: a 4xx answer other than 408/429.
            StorageError: connection errors, timeouts and 5xx answers after the retries.
        """
        dest = Path(dest_dir) / safe_filename(name or name_from_url(url))
        return self._with_retries("GET", url, lambda: self._download_once(url, dest, max_size, check_type))

    def _download_once(self, url: str, dest: Path, max_size: int, check_type: bool) -> Downloaded:
        resp, final = self._open(url)
        with resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_size:
                raise too_large(max_size, int(declared))
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise InvalidInput(f"the server sent the input {encoding}-compressed although it was asked not to")
            content_type = resp.headers.get("Content-Type")
            if check_type:
                check_content_type(content_type, source=strip_url_secrets(final))
            size, digest = write_capped(self._body(resp, final), dest, max_size)
        return Downloaded(dest, size, digest, content_type, strip_url_secrets(final))

    def _body(self, resp: requests.Response, url: str):
        deadline = time.monotonic() + self.transfer.total_timeout
        try:
            for chunk in resp.raw.stream(self.transfer.chunk_size, decode_content=False):
                yield chunk
                if time.monotonic() > deadline:
                    raise StorageError(f"GET {strip_url_secrets(url)}: the download took longer than "
                                       f"{self.transfer.total_timeout:g} s")
        except (Urllib3Error, OSError, requests.RequestException) as exc:
            raise _Retry(f"GET {strip_url_secrets(url)}: the download broke off: {describe_error(exc)}") from None

    def _open(self, url: str) -> tuple[requests.Response, str]:
        current = url
        for _hop in range(self.transfer.max_redirects + 1):
            self.policy.check_url(current)
            try:
                resp = self.session.get(current, stream=True, allow_redirects=False, timeout=self._timeouts())
            except requests.RequestException as exc:
                raise _Retry(f"GET {strip_url_secrets(current)}: {describe_error(exc)}") from None
            target = self.session.get_redirect_target(resp)
            if target is not None:
                resp.close()
                current = urljoin(current, target)
                logger.debug("GET redirected to {}", strip_url_secrets(current))
                continue
            if not 200 <= resp.status_code < 300:
                resp.close()
                raise _status_error("GET", current, resp)
            return resp, current
        raise UrlRefused(f"GET {strip_url_secrets(url)}: more than {self.transfer.max_redirects} redirects")

    def get_range(self, url: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of a URL by an HTTP Range request (a 200 with the whole body is cut)."""

        def once() -> bytes:
            self.policy.check_url(url)
            try:
                resp = self.session.get(url, headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                                        stream=True, allow_redirects=False, timeout=self._timeouts())
            except requests.RequestException as exc:
                raise _Retry(f"GET {strip_url_secrets(url)}: {describe_error(exc)}") from None
            with resp:
                if resp.status_code not in (200, 206):
                    raise _status_error("GET", url, resp)
                skip = offset if resp.status_code == 200 else 0
                data = b""
                for chunk in resp.iter_content(65536):
                    data += chunk
                    if len(data) >= skip + length:
                        break
                return data[skip:skip + length]

        return self._with_retries("GET", url, once)

    # --- PUT ---------------------------------------------------------------------------

    def upload(self, url: str, path: Path, content_type: str = "application/octet-stream") -> None:
        """PUT a file to a (signed) URL; redirects are not followed.

        Raises:
            UrlRefused, PermanentStorageError, StorageError: as for download.
        """
        self.policy.check_url(url)
        self._with_retries("PUT", url, lambda: self._upload_once(url, Path(path), content_type))

    def _upload_once(self, url: str, path: Path, content_type: str) -> None:
        with open(path, "rb") as fh:
            try:
                resp = self.session.put(url, data=fh, timeout=self._timeouts(), allow_redirects=False,
                                        headers={"Content-Type": content_type})
            except requests.RequestException as exc:
                raise _Retry(f"PUT {strip_url_secrets(url)}: {describe_error(exc)}") from None
        with resp:
            if not 200 <= resp.status_code < 300:
                raise _status_error("PUT", url, resp)
