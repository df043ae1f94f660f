"""What the raster libraries say while one file is processed: collected, then logged once.

GDAL's warnings reach Python's logging through rasterio (logger "rasterio._env"), and with
no handler configured Python prints them bare on stderr; rasterio and numpy also raise
Python warnings (NotGeoreferencedWarning, RuntimeWarning). Here both are caught for the
duration of one file and logged once each at INFO, with the file named, instead of
scattering over stderr. The pipeline's own warnings about the file (what a user should
know) stay in its result; these are the libraries' chatter, kept for whoever debugs.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

LIBRARY_LOGGER = "rasterio"
# about the code, not the file: left out of the file's log lines
DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _Collector(logging.Handler):
    def __init__(self, seen: dict[str, None]):
        super().__init__(logging.WARNING)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.seen.setdefault(f"GDAL: {' '.join(record.getMessage().split())[:500]}", None)
        except Exception:  # noqa: BLE001 - a broken message must not break the read
            pass


@contextmanager
def library_messages(name: str) -> Iterator[dict[str, None]]:
    """Collect the libraries' warnings while processing one file; log each distinct one once.

    Args:
        name: the file's name, for the log lines.
    Yields:
        the messages collected so far (insertion-ordered keys).
    """
    seen: dict[str, None] = {}
    handler = _Collector(seen)
    library = logging.getLogger(LIBRARY_LOGGER)
    library.addHandler(handler)  # a handler in the hierarchy also keeps Python's bare stderr fallback quiet
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                yield seen
            finally:
                for w in caught:
                    if issubclass(w.category, DEVELOPER_WARNINGS):
                        continue
                    seen.setdefault(f"{w.category.__name__}: {' '.join(str(w.message).split())[:500]}", None)
    finally:
        library.removeHandler(handler)
        if seen:
            from loguru import logger  # only when there is something to say (pipeline._log says why)

            for message in seen:
                logger.info(f"{name}: {message}")
