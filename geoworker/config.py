"""Configuration: config.toml, then .env, then the environment, into one frozen Settings.

Order of precedence (last wins): built-in defaults, config.toml, the `.env` file next to
the working directory, the process environment. Besides the generic
``GEOWORKER_<SECTION>_<KEY>`` form, the names operators of the platform already use are
honoured (PGHOST, DATABASE_URL, CONCURRENT_JOBS, ...; see ENV_ALIASES).

A storage backend's own settings are a table of their own (`[storage.s3]`,
GEOWORKER_STORAGE_S3_BUCKET, read as settings.storage.s3.bucket); which backends have one
is storage.registry's to say. Keys that moved there are still read at their old place,
with a warning naming the new spelling.

Nothing else in geoworker reads os.environ: everything flows from `load_settings()`.
An invalid value raises ConfigError with one line naming the key and the problem. What
is worth a word but not a refusal (a deprecated key) is in `Settings.warnings`: the CLI
prints each on stderr, the service logs each once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from geoworker.errors import ConfigError
from geoworker.masking import MASK, mask_dsn, strip_url_secrets
from geoworker.storage import registry as storage_registry

__all__ = ["MASK", "SECTIONS", "Settings", "load_settings", "mask_dsn", "strip_url_secrets"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "config.toml"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _one_of(*choices: str):
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _log_level(value: str) -> str | None:
    levels = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
    return None if value.upper() in levels else f"must be one of {', '.join(levels)}"


def _percentiles(value: tuple) -> str | None:
    if len(value) != 2:
        return "must be two numbers [low, high]"
    low, high = value
    if not 0 <= low < high <= 100:
        return "must satisfy 0 <= low < high <= 100"
    return None


def _storage_backend(value: str) -> str | None:
    known = storage_registry.names()
    return None if value in known else f"must be one of {', '.join(known)}"


def _between(lo: float, hi: float, unit: str = ""):
    """A number in [lo, hi]: the upper bounds keep values a typo makes absurd (1e14 seconds) from
    overflowing a timestamp, a sleep or a select() later, deep inside a running service."""

    def check(value: float) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo:g} and {hi:g}{unit}"

    return check


def _upto(low, hi: float, unit: str = ""):
    """The lower rule `low` (its own message), then at most `hi` (see _between)."""

    def check(value: float) -> str | None:
        return low(value) or (None if value <= hi else f"must be at most {hi:g}{unit}")

    return check


DAY = 86400.0


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def _opt(check=None, secret: bool = False, path: bool = False, default_factory=None, default=None):
    """A field with its validation rule in the metadata."""
    meta = {"check": check, "secret": secret, "path": path}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class WorkerSettings:
    name: str = "geoprocessing-worker"
    concurrency: int = _opt(_upto(_at_least_one, 1024), default=1)
    poll_interval: float = _opt(_upto(_positive, 3600, " seconds"), default=5.0)
    heartbeat_interval: float = _opt(_upto(_positive, 3600, " seconds"), default=30.0)
    # 0 means "3 x heartbeat_interval", resolved in load_settings
    stale_after: float = _opt(_upto(_non_negative, DAY, " seconds"), default=0.0)
    max_processing_time: float = _opt(_upto(_positive, 30 * DAY, " seconds"), default=3600.0)
    max_child_rss_mb: int = _opt(_upto(_positive, 1 << 24, " MiB"), default=2048)
    max_jobs_per_child: int = _opt(_upto(_at_least_one, 1e9), default=100)
    graceful_timeout: float = _opt(_upto(_non_negative, DAY, " seconds"), default=60.0)
    report_interval: float = _opt(_upto(_positive, DAY, " seconds"), default=60.0)
    debug_tasks: bool = False


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = _opt(_upto(_at_least_one, 1000), default=5)
    backoff_base: float = _opt(_upto(_non_negative, DAY, " seconds"), default=10.0)
    backoff_max: float = _opt(_upto(_non_negative, 30 * DAY, " seconds"), default=3600.0)


@dataclass(frozen=True)
class QueueSettings:
    mode: str = _opt(_one_of("postgres", "http"), default="postgres")


@dataclass(frozen=True)
class DatabaseSettings:
    dsn: str = _opt(secret=True, default="")
    sslmode: str = _opt(
        _one_of("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"), default=""
    )
    listen: bool = True
    prepared_statements: bool = True
    embedded_dir: str = _opt(path=True, default="var/postgres")
    connect_timeout: float = _opt(_upto(_positive, 3600, " seconds"), default=10.0)


def _default_backend_tables() -> Mapping[str, Any]:
    return MappingProxyType({name: cls() for name, cls in storage_registry.settings_tables().items()})


@dataclass(frozen=True)
class StorageSettings:
    backend: str = _opt(_storage_backend, default="local")
    root: str = _opt(path=True, default="var/storage")
    temp_dir: str = _opt(path=True, default="var/tmp")
    max_file_size: int = _opt(_upto(_positive, 1 << 60, " bytes"), default=104857600)
    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    validate_headers: bool = True
    scan_command: str = ""
    presign_expiry: int = _opt(_upto(_positive, 7 * DAY, " seconds (S3 allows a week at most)"), default=3600)
    # each backend's own [storage.<name>] table by backend name, for those that have one
    tables: Mapping[str, Any] = field(default_factory=_default_backend_tables, hash=False,
                                      metadata={"tables": True})

    def __getattr__(self, name: str) -> Any:
        # only reached for a name that is no field: settings.storage.s3 is tables["s3"]
        tables = self.__dict__.get("tables") or {}
        if name in tables:
            return tables[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class ProcessingSettings:
    max_image_size: int = _opt(_between(16, 16384, " pixels"), default=4096)
    thumbnail_size: int = _opt(_between(0, 4096, " pixels"), default=256)
    generate_thumbnails: bool = True
    compression_quality: int = _opt(lambda v: None if 1 <= v <= 100 else "must be between 1 and 100", default=85)
    coordinate_system: str = "EPSG:4326"
    stretch: str = _opt(_one_of("auto", "none", "minmax", "percentile"), default="auto")
    percentiles: tuple[float, ...] = _opt(_percentiles, default=(2.0, 98.0))
    # what a decimated read accepts (processing.options.READ_RESAMPLINGS; a test keeps them equal)
    resampling: str = _opt(
        _one_of("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "gauss", "rms"),
        default="average",
    )
    # the decompression-bomb budget, checked before decoding (a job's params can only lower it)
    max_pixels: int = _opt(_positive, default=1 << 32)
    max_decoded_bytes: int = _opt(_positive, default=8 << 30)


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _opt(_log_level, default="INFO")
    file: str = _opt(path=True, default="var/log/worker.log")
    rotation: str = "50 MB"
    retention: int = _opt(_upto(_at_least_one, 10000), default=10)
    json: bool = False


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = _opt(_port, default=9108)


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = ""
    worker_token: str = _opt(secret=True, default="")
    jwt_secret: str = _opt(secret=True, default="")
    signing_secret: str = _opt(secret=True, default="")
    host: str = "127.0.0.1"
    port: int = _opt(_port, default=5000)
    max_body_bytes: int = _opt(_upto(_positive, 1 << 30, " bytes"), default=1048576)


SECTIONS: dict[str, type] = {
    "worker": WorkerSettings,
    "retry": RetrySettings,
    "queue": QueueSettings,
    "database": DatabaseSettings,
    "storage": StorageSettings,
    "processing": ProcessingSettings,
    "logging": LoggingSettings,
    "metrics": MetricsSettings,
    "api": ApiSettings,
}


@dataclass(frozen=True)
class Settings:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    processing: ProcessingSettings = field(default_factory=ProcessingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    # where the settings came from: the config file (or None) and the directory
    # relative paths were resolved against
    config_path: str | None = None
    base_dir: str = "."
    # one line each, worth saying but no reason to refuse the settings (a deprecated key)
    warnings: tuple[str, ...] = ()

    def replace(self, section: str, **changes: Any) -> "Settings":
        """A copy with some keys of one section, or of one backend's table ("storage.s3"), changed
        (validated again)."""
        parent, _, table = section.partition(".")
        holder = getattr(self, parent)
        if table:
            new_table = dataclasses.replace(holder.tables[table], **changes)
            _validate_section(section, new_table)
            new = dataclasses.replace(holder, tables=MappingProxyType({**holder.tables, table: new_table}))
        else:
            new = dataclasses.replace(holder, **changes)
            _validate_section(section, new)
        settings = dataclasses.replace(self, **{parent: new})
        _validate_cross(settings)
        return settings

    def as_dict(self, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
        """{section: {key: value}}; a backend's table is a dict under its section ("storage": {"s3": {...}})."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            values = _values(section, obj, mask_secrets)
            for name, table in _tables_of(obj).items():
                values[name] = _values(f"{section}.{name}", table, mask_secrets)
            out[section] = values
        return out


def _values(section: str, obj: Any, mask_secrets: bool) -> dict[str, Any]:
    values = {}
    for f in _plain_fields(obj):
        value = getattr(obj, f.name)
        if mask_secrets and value:
            if f.metadata.get("secret"):
                value = mask_dsn(value) if f.name == "dsn" else MASK
            elif section == "api" and f.name == "base_url":
                value = strip_url_secrets(value)
        values[f.name] = list(value) if isinstance(value, tuple) else value
    return values


def _plain_fields(cls_or_obj: Any) -> list[Field]:
    """A section's keys: its fields except the one holding backend tables."""
    return [f for f in fields(cls_or_obj) if not f.metadata.get("tables")]


def _tables_of(obj: Any) -> Mapping[str, Any]:
    return next((getattr(obj, f.name) for f in fields(obj) if f.metadata.get("tables")), {})


def _backend_tables() -> dict[str, type]:
    """{"storage.s3": S3Settings, ...}: the tables storage.registry knows."""
    return {f"storage.{name}": cls for name, cls in storage_registry.settings_tables().items()}


def _deprecated_home(section: str, key: str, tables: Mapping[str, type]) -> str | None:
    """The table a key of `section` moved to ("storage.s3" for storage.bucket), or None."""
    for table, cls in tables.items():
        if table.startswith(section + ".") and key in getattr(cls, "DEPRECATED_FLAT_KEYS", ()):
            return table
    return None


# Environment names operators already use, mapped onto config keys.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "dsn"),
    "WORKER_NAME": ("worker", "name"),
    "POLL_INTERVAL": ("worker", "poll_interval"),
    "HEARTBEAT_INTERVAL": ("worker", "heartbeat_interval"),
    "MAX_PROCESSING_TIME": ("worker", "max_processing_time"),
    "CONCURRENT_JOBS": ("worker", "concurrency"),
    "MAX_FILE_SIZE": ("storage", "max_file_size"),
    "TEMP_DIR": ("storage", "temp_dir"),
    "VALIDATE_FILE_HEADERS": ("storage", "validate_headers"),
    "LOG_LEVEL": ("logging", "level"),
    "API_BASE_URL": ("api", "base_url"),
    "WORKER_AUTH_TOKEN": ("api", "worker_token"),
    "PGSSLMODE": ("database", "sslmode"),
}
# libpq's own variables, folded into the DSN so that children get one explicit string.
PG_ENV = {"PGHOST": "host", "PGPORT": "port", "PGDATABASE": "dbname", "PGUSER": "user", "PGPASSWORD": "password"}
DEFAULT_SCAN_COMMAND = "clamdscan --no-summary --fdpass {path}"


def load_settings(
    config_path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> Settings:
    """Read config.toml, .env and the environment into a validated Settings.

    Args:
        config_path: explicit file (--config); else GEOWORKER_CONFIG; else ./config.toml if present.
        environ: the environment (default os.environ); tests pass their own.
        base_dir: directory relative paths resolve against (default: the working directory).
    Raises:
        ConfigError: one line naming the key and what is wrong with it.
    """
    base = Path(base_dir or os.getcwd()).resolve()
    env = dict(os.environ if environ is None else environ)
    env = {**_read_dotenv(base / ".env", env), **env}
    tables = _backend_tables()
    warnings: list[str] = []

    path = _find_config(config_path, env, base)
    values: dict[str, dict[str, Any]] = {name: {} for name in (*SECTIONS, *tables)}
    if path is not None:
        _apply_file(_read_toml(path, tables), path.name, values, tables, warnings)

    for name, (section, key) in ENV_ALIASES.items():
        if env.get(name, "") != "":
            values[section][key] = (env[name], name)
    _apply_generic_env(env, values, tables, warnings)
    _apply_special_env(env, values)
    raw_dsn, dsn_source = values["database"].get("dsn", ("", ""))
    if isinstance(raw_dsn, str) and raw_dsn:
        check_dsn(raw_dsn, dsn_source)

    built = {}
    for section, cls in SECTIONS.items():
        extra = {}
        if section == "storage":
            extra["tables"] = MappingProxyType({
                table.partition(".")[2]: _build_section(table, table_cls, values[table], base)
                for table, table_cls in tables.items()})
        built[section] = _build_section(section, cls, values[section], base, **extra)
    settings = Settings(**built, config_path=str(path) if path else None, base_dir=str(base),
                        warnings=tuple(warnings))
    settings = _resolve_derived(settings)
    _validate_cross(settings)
    _validate_processing(settings)
    return settings


def _find_config(explicit, env: Mapping[str, str], base: Path) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path.resolve()
    if env.get("GEOWORKER_CONFIG"):
        path = Path(env["GEOWORKER_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"config file {path} (from GEOWORKER_CONFIG) does not exist")
        return path.resolve()
    path = base / DEFAULT_CONFIG_NAME
    return path if path.is_file() else None


def _read_toml(path: Path, tables: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path.name}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path.name}: {section} must be a table ([{section}])")
        known = {f.name for f in _plain_fields(SECTIONS[section])}
        for key, value in table.items():
            sub = f"{section}.{key}"
            if sub in tables:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path.name}: {sub} must be a table ([{sub}])")
                table_keys = {f.name for f in fields(tables[sub])}
                for inner in value:
                    if inner not in table_keys:
                        raise ConfigError(f"{path.name}: unknown key {sub}.{inner}")
            elif key not in known and not _deprecated_home(section, key, tables):
                raise ConfigError(f"{path.name}: unknown key {sub}")
    return data


def _apply_file(raw: Mapping[str, Mapping[str, Any]], source: str, values: dict[str, dict[str, Any]],
                tables: Mapping[str, type], warnings: list[str]) -> None:
    """config.toml's values; a key at its deprecated place yields to the same key in its table."""
    for section, table in raw.items():
        for key, value in table.items():
            if f"{section}.{key}" in tables:
                for inner, inner_value in value.items():
                    values[f"{section}.{key}"][inner] = (inner_value, source)
    for section, table in raw.items():
        for key, value in table.items():
            if f"{section}.{key}" in tables:
                continue
            home = _deprecated_home(section, key, tables)
            if home is None:
                values[section][key] = (value, source)
                continue
            warnings.append(f"{section}.{key} in {source} is deprecated: write it as {key} under [{home}]")
            values[home].setdefault(key, (value, source))


def _read_dotenv(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # here: most hosts have no .env

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _apply_generic_env(env: Mapping[str, str], values: dict[str, dict[str, Any]], tables: Mapping[str, type],
                       warnings: list[str]) -> None:
    """GEOWORKER_<SECTION>_<KEY>=value overrides any key; GEOWORKER_STORAGE_<BACKEND>_<KEY> a table's."""
    current, deprecated = [], []
    for name, value in env.items():
        if not name.startswith("GEOWORKER_") or name == "GEOWORKER_CONFIG":
            continue
        rest = name[len("GEOWORKER_"):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS:
            _unknown_section(name, section, key, tables, warnings)
            continue
        table = next((t for t in tables if t.startswith(section + ".") and
                      key.startswith(t.partition(".")[2] + "_")), None)
        if table is not None:
            inner = key[len(table.partition(".")[2]) + 1:]
            if inner not in {f.name for f in fields(tables[table])}:
                raise ConfigError(f"{name}: unknown key {table}.{inner}")
            current.append((table, inner, value, name))
        elif key in {f.name for f in _plain_fields(SECTIONS[section])}:
            current.append((section, key, value, name))
        elif (home := _deprecated_home(section, key, tables)) is not None:
            warnings.append(f"{name} is deprecated: use GEOWORKER_{home.replace('.', '_').upper()}_{key.upper()}")
            deprecated.append((home, key, value, name))
        else:
            raise ConfigError(f"{name}: unknown key {section}.{key}")
    for target, key, value, name in deprecated + current:  # the new spelling wins over the old
        values[target][key] = (value, name)


NOT_SETTINGS = ("GEOWORKER_TEST_", "GEOWORKER_BENCH_")  # the test suite's and benchmarks' own variables


def _unknown_section(name: str, section: str, key: str, tables: Mapping[str, type], warnings: list[str]) -> None:
    """GEOWORKER_<SECTION>_... with no such section: refuse a near miss of a real setting, warn of the rest."""
    if name.startswith(NOT_SETTINGS):
        return
    import difflib  # here: only for a variable that is wrong

    close = difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=0.7)
    if close:
        keys = [f.name for f in _plain_fields(SECTIONS[close[0]])]
        if key in keys or difflib.get_close_matches(key, keys, n=1, cutoff=0.8):
            meant = key if key in keys else difflib.get_close_matches(key, keys, n=1, cutoff=0.8)[0]
            raise ConfigError(f"{name}: there is no section [{section}]; did you mean "
                              f"GEOWORKER_{close[0].upper()}_{meant.upper()}?")
    warnings.append(f"{name} is not a geoworker setting (there is no section [{section}]; "
                    f"known: {', '.join(SECTIONS)}); it is ignored")


def _apply_special_env(env: Mapping[str, str], values: dict[str, dict[str, Any]]) -> None:
    # PGSSL=true|require is the platform's spelling of sslmode=require
    pgssl = env.get("PGSSL", "").strip().lower()
    if pgssl and not env.get("PGSSLMODE"):
        if pgssl in ("1", "true", "yes", "on", "require"):
            values["database"]["sslmode"] = ("require", "PGSSL")
        elif pgssl in ("0", "false", "no", "off", "disable"):
            values["database"]["sslmode"] = ("disable", "PGSSL")
        else:
            raise ConfigError(f"PGSSL: must be true/false or require/disable, got {env['PGSSL']!r}")
    # PG* pieces override the matching parts of the configured DSN
    pieces = {param: env[name] for name, param in PG_ENV.items() if env.get(name)}
    if pieces and not env.get("DATABASE_URL"):
        base_dsn = values["database"].get("dsn", ("", ""))[0]
        values["database"]["dsn"] = (_merge_dsn(str(base_dsn), pieces), "+".join(k for k in PG_ENV if env.get(k)))
    scan = env.get("SCAN_FOR_MALWARE", "").strip().lower()
    if scan in ("1", "true", "yes", "on") and not values["storage"].get("scan_command", ("",))[0]:
        values["storage"]["scan_command"] = (DEFAULT_SCAN_COMMAND, "SCAN_FOR_MALWARE")
    elif scan in ("0", "false", "no", "off"):
        values["storage"]["scan_command"] = ("", "SCAN_FOR_MALWARE")


def _merge_dsn(dsn: str, pieces: Mapping[str, str]) -> str:
    # psycopg2 here, not at the top: a worker with queue.mode = "http" never needs the driver
    from psycopg2.extensions import make_dsn

    try:
        return make_dsn(dsn or None, **pieces)
    except Exception as exc:  # psycopg2.ProgrammingError on a malformed DSN
        raise ConfigError(f"database.dsn: cannot be parsed: {_dsn_problem(exc, dsn)}") from None


def check_dsn(dsn: str, source: str) -> None:
    """A DSN that cannot be parsed is a configuration error, found at load time and said in one line
    without its password: it is not an outage to wait out.

    Raises:
        ConfigError: it does not parse, or a port is not a number between 1 and 65535.
    """
    from psycopg2.extensions import parse_dsn  # here: a worker with queue.mode = "http" needs no driver

    where = f"database.dsn (from {source})" if source and not source.endswith(".toml") else "database.dsn"
    try:
        parts = parse_dsn(dsn)
    except Exception as exc:
        shown = mask_dsn(dsn)  # "********" when even that cannot parse it
        raise ConfigError(f"{where}: cannot be parsed: {_dsn_problem(exc, dsn)}"
                          + (f" ({shown})" if shown != MASK else "")) from None
    for port in str(parts.get("port", "")).split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{where}: the port must be a number between 1 and 65535, got {port!r} "
                              f"({mask_dsn(dsn)})")


def _dsn_problem(exc: Exception, dsn: str) -> str:
    """libpq's complaint, without the DSN it quotes (which may hold the password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.removeprefix("invalid dsn: ")
    text = re.sub(r'\s*in URI: ".*"$', "", text)
    secrets = re.findall(r"://[^:/@]*:([^@]+)@", dsn) + re.findall(r"password\s*=\s*'?([^'\s]+)", dsn)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _build_section(section: str, cls: type, values: Mapping[str, tuple[Any, str]], base: Path, **extra: Any):
    kwargs = dict(extra)
    for f in _plain_fields(cls):
        if f.name in values:
            raw, source = values[f.name]
            origin = f" (from {source})" if source and not source.endswith(".toml") else ""
            value = _coerce(raw, f.type, f"{section}.{f.name}{origin}")
        else:
            value = f.default
        if f.metadata.get("path") and value:
            value = str((base / value).resolve())
        kwargs[f.name] = value
    obj = cls(**kwargs)
    _validate_section(section, obj, values)
    return obj


def _validate_section(section: str, obj: Any, values: Mapping[str, tuple[Any, str]] | None = None) -> None:
    for f in fields(obj):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(obj, f.name)
        problem = check(value)
        if problem:
            source = (values or {}).get(f.name, (None, ""))[1]
            origin = f" (from {source})" if source and not source.endswith(".toml") else ""
            raise ConfigError(f"{section}.{f.name}{origin}: {problem}, got {value!r}")


def _coerce(raw: Any, type_name: str, where: str) -> Any:
    """Convert a TOML value or an environment string to the field's type."""
    t = str(type_name)
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: must be true or false, got {raw!r}")
    if t in ("int", "float"):
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: must be a number, got {raw!r}")
        try:
            number = float(raw) if isinstance(raw, str) else raw
            if not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: must be a number, got {raw!r}") from None
        if t == "int":
            if float(number) != int(number):
                raise ConfigError(f"{where}: must be a whole number, got {raw!r}")
            return int(number)
        return float(number)
    if t == "str":
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: must be a string, got {raw!r}")
        return raw
    if t.startswith("tuple[str"):
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise ConfigError(f"{where}: must be a list of strings, got {raw!r}")
    if t.startswith("tuple[float"):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: must be a list of numbers, got {raw!r}")
        return tuple(_coerce(x.strip() if isinstance(x, str) else x, "float", where) for x in items)
    raise AssertionError(f"no coercion for {type_name}")  # a field type this module forgot


def _resolve_derived(settings: Settings) -> Settings:
    worker = settings.worker
    if worker.stale_after == 0:
        worker = dataclasses.replace(worker, stale_after=3 * worker.heartbeat_interval)
    return dataclasses.replace(settings, worker=worker)


def _validate_processing(settings: Settings) -> None:
    """[processing] through the pipeline's own rules, so that a value only a job would trip over
    (coordinate_system = "EPSG:notanumber") stops start-up instead. The defaults are known good, and
    the check needs rasterio (0.4 s), so it runs only when the section differs from them."""
    if settings.processing == ProcessingSettings():
        return
    from geoworker.errors import BadParams
    from geoworker.tasks.raster import options_for  # rasterio: see the docstring

    try:
        options_for(settings, {})
    except BadParams as exc:
        name, _, problem = str(exc).partition(" ")
        key = {"max_size": "max_image_size"}.get(name, name)
        raise ConfigError(f"processing.{key}: {problem}") from None


def _validate_cross(settings: Settings) -> None:
    w = settings.worker
    if w.heartbeat_interval >= w.stale_after:
        raise ConfigError(
            f"worker.heartbeat_interval: must be shorter than worker.stale_after "
            f"({w.heartbeat_interval:g} >= {w.stale_after:g}); a live job would look stale"
        )
    r = settings.retry
    if r.backoff_max < r.backoff_base:
        raise ConfigError(f"retry.backoff_max: must be >= retry.backoff_base ({r.backoff_max:g} < {r.backoff_base:g})")
    if settings.queue.mode == "http" and not settings.api.base_url:
        raise ConfigError("queue.mode: \"http\" needs api.base_url (API_BASE_URL)")
