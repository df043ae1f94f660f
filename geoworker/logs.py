"""Logging with loguru: one writer per host, every line tagged with role, pid, job and attempt.

Only the supervisor writes the log file and stderr. A child sends each record as one
JSON line over its own pipe (its fd 2, so C libraries' stderr arrives the same way),
and the supervisor re-emits it through its sinks with the child's time, pid and job.
One process owns rotation, and no two processes ever write the same file, so lines
are never interleaved or lost when the file rotates.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Any, Mapping

from loguru import logger

from geoworker.errors import ConfigError

TEXT_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[role]}[{extra[pid]}]{extra[where]} | "
    "{message}"
)
CONTEXT_KEYS = ("job", "attempt", "task")
MAX_LINE_BYTES = 1024 * 1024  # a child's line with no newline in sight is cut here (GDAL progress dots)

# Belt and braces: whatever slips into a message, these never reach a sink.
_SECRETS = [
    (re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|"
                r"access_token|expires|key)=)[^&\s\"']+"), r"\1<redacted>"),
    (re.compile(r"(?i)(\w+://[^:/\s@]+:)[^@/\s]+@"), r"\1********@"),
    (re.compile(r"(?i)(password=)\S+"), r"\1********"),
    (re.compile(r"(?i)(authorization:\s*(?:bearer|worker)\s+)\S+"), r"\1<redacted>"),
]


# settings warnings this process has logged (setup_service_logging)
_warned: set[str] = set()

_SECRET_HINTS = re.compile(r"(?i)=|://|authorization")


def redact(text: str) -> str:
    # one cheap scan first: almost no message has anything the patterns could match
    if not _SECRET_HINTS.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _patch(record: dict) -> None:
    extra = record["extra"]
    if "_t" in extra:  # a child's record relayed by the supervisor: keep the time it was written
        when = _loguru_time(extra.pop("_t"))
        if when is not None:
            record["time"] = when
    extra.setdefault("role", "cli")
    extra.setdefault("pid", record["process"].id)
    record["message"] = redact(record["message"])
    parts = [f"{k}={extra[k]}" for k in CONTEXT_KEYS if extra.get(k) is not None]
    extra["where"] = (" " + " ".join(parts)) if parts else ""
    if record["exception"] is not None:
        # formatted here, redacted: loguru's own {exception} would print a signed URL in an error as it is
        exc = record["exception"]
        extra["_exc"] = redact("".join(traceback.format_exception(exc.type, exc.value, exc.traceback))).rstrip("\n")


def _text_format(record: dict) -> str:
    # a callable format gets no automatic "\n{exception}": the redacted traceback _patch made goes instead
    return TEXT_FORMAT + ("\n{extra[_exc]}" if record["exception"] is not None else "") + "\n"


def _json_patch(record: dict) -> None:
    _patch(record)
    extra = record["extra"]
    doc: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "role": extra.get("role"),
        "pid": extra.get("pid"),
        "message": record["message"],
    }
    for key, value in extra.items():
        if key not in ("role", "pid", "where", "_json") and not key.startswith("_"):
            doc[key] = value
    if record["exception"] is not None:
        doc["exception"] = extra["_exc"]
    extra["_json"] = json.dumps(doc, default=str)


def setup_service_logging(settings, role: str = "supervisor") -> None:
    """Sinks for a long-running process: stderr (for supervisord/journald) and the rotating file.

    Then the settings' warnings (a deprecated key), each once per process: the service
    calls this at start and again after each SIGHUP, which should not repeat them.
    """
    cfg = settings.logging
    logger.remove()
    logger.configure(extra={"role": role, "pid": os.getpid(), "where": ""},
                     patcher=_json_patch if cfg.json else _patch)
    # the JSON line carries the traceback itself
    fmt = (lambda record: "{extra[_json]}\n") if cfg.json else _text_format
    level = cfg.level.upper()
    logger.add(sys.stderr, level=level, format=fmt, colorize=False, backtrace=False, diagnose=False)
    if cfg.file:
        # enqueue=False: loguru's queue is a thread, and the supervisor forks (rotation and gzip run inline)
        try:
            logger.add(cfg.file, level=level, format=fmt, rotation=cfg.rotation, retention=cfg.retention,
                       compression="gz", encoding="utf-8", backtrace=False, diagnose=False, enqueue=False)
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot write {cfg.file}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a rotation loguru cannot parse
            raise ConfigError(f"logging.rotation: {exc}") from None
    for warning in settings.warnings:
        if warning not in _warned:
            _warned.add(warning)
            logger.warning(warning)


def setup_cli_logging(level: str = "WARNING") -> None:
    """Short commands: warnings and errors to stderr, one line each."""
    logger.remove()
    logger.configure(extra={"role": "cli", "pid": os.getpid(), "where": ""}, patcher=_patch)
    logger.add(sys.stderr, level=level, format="geoworker: {level}: {message}", colorize=False)


# --- children -------------------------------------------------------------------------


def setup_child_logging(fd: int, level: str) -> None:
    """In a child after fork: every record becomes one JSON line on `fd` (a pipe to the supervisor)."""
    logger.remove()
    logger.configure(extra={"role": "child", "pid": os.getpid(), "where": ""}, patcher=None)

    def sink(message) -> None:
        record = message.record
        data = {"t": record["time"].timestamp(), "l": record["level"].name, "m": record["message"],
                "x": {k: v for k, v in record["extra"].items() if k in CONTEXT_KEYS and v is not None}}
        if record["exception"] is not None:
            exc = record["exception"]
            data["e"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        line = (json.dumps(data, default=str) + "\n").encode("utf-8", "replace")
        while line:  # a pipe may take a long line in pieces
            written = os.write(fd, line)
            line = line[written:]

    logger.add(sink, level=level.upper(), format="{message}", backtrace=False, diagnose=False, catch=True)


def emit_child_line(line: str, pid: int, context: Mapping[str, Any] | None = None) -> None:
    """In the supervisor: re-emit one line a child wrote (a JSON record, or raw stderr text)."""
    data = _parse(line)
    if data is None:
        text = line.rstrip()
        if text:
            logger.bind(role="child", pid=pid, **(context or {})).warning(f"[stderr] {text}")
        return
    context = data.get("x") if isinstance(data.get("x"), dict) else {}
    extra = {"role": "child", "pid": pid, **{k: v for k, v in context.items() if k in CONTEXT_KEYS}}
    if isinstance(data.get("t"), (int, float)):
        extra["_t"] = data["t"]  # _patch gives the record the child's time
    message = str(data.get("m", ""))
    if data.get("e"):
        message = f"{message}\n{str(data['e']).rstrip()}"
    bound = logger.bind(**extra)
    try:
        bound.log(data.get("l", "INFO"), message)
    except (ValueError, TypeError):  # a level this process does not know: keep the line anyway
        bound.info(message)


def _parse(line: str) -> dict | None:
    if not line.startswith('{"t":'):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _loguru_time(timestamp):
    if not isinstance(timestamp, (int, float)):
        return None
    try:
        from loguru._datetime import datetime as loguru_datetime  # the subclass {time:...} formats
    except ImportError:  # a loguru without that class: keep the supervisor's receive time
        return None
    return loguru_datetime.fromtimestamp(timestamp).astimezone()
