"""Storage backends by name: what storage.backend may say, and what each name opens.

To add a backend: a module here with a `Backend` subclass (and, if it takes settings of
its own, a frozen dataclass for its `[storage.<name>]` table, read as
`settings.storage.<name>`), plus one line in BACKENDS. Nothing else names backends:
config checks storage.backend and reads the tables through this module, and the CLI,
the API and the health check ask the Backend interface (refuses_local_inputs,
url_schemes, check_input_url, local_directories, receive_input, output_file, presign).
Config imports this module, so a backend module keeps its heavy imports (boto3, a cloud
SDK) inside the methods that use them, as s3.py does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable
from urllib.parse import urlsplit

from geoworker.errors import InvalidInput
from geoworker.storage.base import Backend
from geoworker.storage.http_backend import HttpBackend
from geoworker.storage.local import LocalBackend
from geoworker.storage.s3 import S3Backend, S3Settings

if TYPE_CHECKING:
    from geoworker.storage.urls import TransferPolicy


@dataclass(frozen=True)
class Registered:
    backend: type[Backend]
    settings: type | None = None  # its [storage.<name>] table, if it has settings of its own


BACKENDS: dict[str, Registered] = {
    "local": Registered(LocalBackend),
    "s3": Registered(S3Backend, S3Settings),
    "http": Registered(HttpBackend),
}


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name` (config has checked storage.backend against names())."""
    try:
        return BACKENDS[name].backend
    except KeyError:
        raise ValueError(f"unknown storage backend {name!r}") from None


def settings_tables() -> dict[str, type]:
    """{backend name: its settings dataclass}, for the backends that have a [storage.<name>] table."""
    return {name: entry.settings for name, entry in BACKENDS.items() if entry.settings is not None}


def open_backend(settings, *, transfer: TransferPolicy | None = None,
                 unsafe_allow_endpoints: Iterable[tuple[str, int]] = ()) -> Backend:
    """The backend storage.backend names, ready to use (close it, or use it as a context manager).

    Args:
        settings: the Settings.
        transfer: timeouts and retries (default TransferPolicy()).
        unsafe_allow_endpoints: (ip, port) pairs exempt from the public-address rule. For tests
            whose servers listen on loopback; never set it from configuration.
    """
    cls = backend_class(settings.storage.backend)
    return cls(settings, transfer=transfer, unsafe_allow_endpoints=unsafe_allow_endpoints)


def is_backend_url(settings, url: str) -> bool:
    """Whether an input URL is one the configured backend reads itself (s3://), checked by it.

    False for every other URL (https:// and the like: UrlPolicy's to check).

    Raises:
        InvalidInput: another backend's URL (s3:// on the local backend), or one the configured
            backend refuses (another bucket).
    """
    scheme = urlsplit(url).scheme.lower()
    configured = backend_class(settings.storage.backend)
    if scheme in configured.url_schemes:
        configured.check_input_url(settings, url)
        return True
    readers = [name for name, entry in BACKENDS.items() if scheme in entry.backend.url_schemes]
    if readers:
        raise InvalidInput(f"{scheme}:// inputs need storage.backend = \"{readers[0]}\"")
    return False
