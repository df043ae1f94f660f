"""Every error geoworker raises on purpose.

The queue layer maps an exception to a job outcome through two attributes only:
``code`` (the job's error_code) and ``permanent`` (fail now, or retry with backoff).
Nothing above the database layer imports psycopg2's exception types.
"""

from __future__ import annotations

ERROR_CODES = (
    "invalid_input",
    "too_large",
    "unsupported",
    "timeout",
    "memory_limit",
    "crashed",
    "storage_error",
    "internal_error",
    "cancelled",
)


class GeoworkerError(Exception):
    """Something went wrong in geoworker."""

    code = "internal_error"
    permanent = False

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- permanent: the input or the request is wrong; retrying cannot help -------------


class PermanentError(GeoworkerError):
    """The job cannot succeed; it fails at once."""

    permanent = True


class InvalidInput(PermanentError):
    """The input file is not a usable GeoTIFF."""

    code = "invalid_input"


class TooLarge(InvalidInput):
    """The input is larger than this worker accepts."""

    code = "too_large"


class Unsupported(PermanentError):
    """The input is a valid file of a kind geoworker does not handle."""

    code = "unsupported"


class UnknownTask(PermanentError):
    """No handler is registered for this task type."""

    code = "unsupported"


class DataRefused(PermanentError):
    """The database refused a value: out of range, malformed, or not storable (SQLSTATE class 22).

    What reaches the database should have been checked before; this is the one line for
    whatever was not, never a traceback and never retried as if the database were away.
    """

    code = "invalid_input"


class BadParams(PermanentError):
    """The job's parameters are invalid."""

    code = "invalid_input"

    def __init__(self, message: str | None = None, key: str | None = None):
        super().__init__(message)
        self.key = key  # the parameter as the caller spelt it (maxSize or max_size), when one is to blame


# --- transient: the world was unkind; try again later -------------------------------


class TransientError(GeoworkerError):
    """A temporary failure; the job is retried with backoff."""


class StorageError(TransientError):
    """Reading the input or writing the outputs failed."""

    code = "storage_error"


class PermanentStorageError(PermanentError):
    """Storage refused the request for good (forbidden, not found)."""

    code = "storage_error"


class DatabaseUnavailable(TransientError):
    """The database cannot be reached."""


# --- operator and user mistakes, never job outcomes --------------------------------


class ConfigError(GeoworkerError):
    """The configuration is invalid."""


class JobNotFound(GeoworkerError):
    """No job has this id."""


class InvalidState(GeoworkerError):
    """The job is not in a state that allows this operation."""


class LockLost(GeoworkerError):
    """This worker no longer holds the job; its result is discarded."""


def describe(exc: BaseException) -> tuple[str, str, bool]:
    """Map any exception to (error_code, message, permanent).

    Args:
        exc: what a task raised.
    Returns:
        The job's error_code, a one-line message for the user, and whether to stop retrying.
    """
    if isinstance(exc, GeoworkerError):
        return exc.code, _one_line(exc.message), exc.permanent
    if isinstance(exc, MemoryError):
        return "memory_limit", "the task ran out of memory", False
    return "internal_error", _one_line(f"{type(exc).__name__}: {exc}"), False


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (or its type's name), for one-line messages."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:2000]
