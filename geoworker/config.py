"""Configuration: config.toml, then .env, then the environment, into one frozen Settings.

Order of precedence (last wins): built-in defaults, config.toml, the `.env` file next to
the working directory, the process environment. Besides the generic
``GEOWORKER_<SECTION>_<KEY>`` form, the names operators of the platform already use are
honoured (PGHOST, DATABASE_URL, CONCURRENT_JOBS, ...; see ENV_ALIASES).

Nothing else in geoworker reads os.environ: everything flows from `load_settings()`.
An invalid value raises ConfigError with one line naming the key and the problem.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from geoworker.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "config.toml"
MASK = "********"


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
    concurrency: int = _opt(_at_least_one, default=1)
    poll_interval: float = _opt(_positive, default=5.0)
    heartbeat_interval: float = _opt(_positive, default=30.0)
    # 0 means "3 x heartbeat_interval", resolved in load_settings
    stale_after: float = _opt(_non_negative, default=0.0)
    max_processing_time: float = _opt(_positive, default=3600.0)
    max_child_rss_mb: int = _opt(_positive, default=2048)
    max_jobs_per_child: int = _opt(_at_least_one, default=100)
    graceful_timeout: float = _opt(_non_negative, default=60.0)
    report_interval: float = _opt(_positive, default=60.0)
    debug_tasks: bool = False


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = _opt(_at_least_one, default=5)
    backoff_base: float = _opt(_non_negative, default=10.0)
    backoff_max: float = _opt(_non_negative, default=3600.0)


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
    connect_timeout: float = _opt(_positive, default=10.0)


@dataclass(frozen=True)
class StorageSettings:
    backend: str = _opt(_one_of("local", "s3", "http"), default="local")
    root: str = _opt(path=True, default="var/storage")
    temp_dir: str = _opt(path=True, default="var/tmp")
    max_file_size: int = _opt(_positive, default=104857600)
    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    validate_headers: bool = True
    scan_command: str = ""
    endpoint_url: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = ""
    access_key_id: str = _opt(secret=True, default="")
    secret_access_key: str = _opt(secret=True, default="")
    presign_expiry: int = _opt(_positive, default=3600)


@dataclass(frozen=True)
class ProcessingSettings:
    max_image_size: int = _opt(_positive, default=4096)
    thumbnail_size: int = _opt(_non_negative, default=256)
    generate_thumbnails: bool = True
    compression_quality: int = _opt(lambda v: None if 1 <= v <= 100 else "must be between 1 and 100", default=85)
    coordinate_system: str = "EPSG:4326"
    stretch: str = _opt(_one_of("auto", "none", "minmax", "percentile"), default="auto")
    percentiles: tuple[float, ...] = _opt(_percentiles, default=(2.0, 98.0))
    resampling: str = _opt(
        _one_of("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "max", "min", "med", "q1", "q3", "rms"),
        default="average",
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _opt(_log_level, default="INFO")
    file: str = _opt(path=True, default="var/log/worker.log")
    rotation: str = "50 MB"
    retention: int = _opt(_at_least_one, default=10)
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
    max_body_bytes: int = _opt(_positive, default=1048576)


def _tile_template(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith(("https://", "http://")):
        return "must be an http(s) URL"
    if not all(part in value for part in ("{z}", "{x}", "{y}")):
        return "must be a tile URL template with {z}, {x} and {y}"
    return None


@dataclass(frozen=True)
class UiSettings:
    # the dashboard's map background; empty: a plain background, and no request leaves the API
    basemap_url: str = _opt(_tile_template, default="")
    basemap_attribution: str = ""


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
    "ui": UiSettings,
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
    ui: UiSettings = field(default_factory=UiSettings)
    # where the settings came from: the config file (or None) and the directory
    # relative paths were resolved against
    config_path: str | None = None
    base_dir: str = "."

    def replace(self, section: str, **changes: Any) -> "Settings":
        """A copy with some keys of one section changed (validated again)."""
        new = dataclasses.replace(getattr(self, section), **changes)
        _validate_section(section, new)
        settings = dataclasses.replace(self, **{section: new})
        _validate_cross(settings)
        return settings

    def as_dict(self, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            values = {}
            obj = getattr(self, section)
            for f in fields(obj):
                value = getattr(obj, f.name)
                if mask_secrets and value:
                    if f.metadata.get("secret"):
                        value = mask_dsn(value) if f.name == "dsn" else MASK
                    elif (section, f.name) in (("api", "base_url"), ("ui", "basemap_url")):
                        value = strip_url_secrets(value)
                values[f.name] = list(value) if isinstance(value, tuple) else value
            out[section] = values
        return out


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

    path = _find_config(config_path, env, base)
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        raw = _read_toml(path)

    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for section, table in raw.items():
        for key, value in table.items():
            values[section][key] = (value, f"{path.name}")

    for name, (section, key) in ENV_ALIASES.items():
        if env.get(name, "") != "":
            values[section][key] = (env[name], name)
    _apply_generic_env(env, values)
    _apply_special_env(env, values)

    built = {}
    for section, cls in SECTIONS.items():
        built[section] = _build_section(section, cls, values[section], base)
    settings = Settings(**built, config_path=str(path) if path else None, base_dir=str(base))
    settings = _resolve_derived(settings)
    _validate_cross(settings)
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


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path.name}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path.name}: {section} must be a table ([{section}])")
        known = {f.name for f in fields(SECTIONS[section])}
        for key in table:
            if key not in known:
                raise ConfigError(f"{path.name}: unknown key {section}.{key}")
    return data


def _read_dotenv(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _apply_generic_env(env: Mapping[str, str], values: dict[str, dict[str, Any]]) -> None:
    """GEOWORKER_<SECTION>_<KEY>=value overrides any key."""
    for name, value in env.items():
        if not name.startswith("GEOWORKER_") or name == "GEOWORKER_CONFIG":
            continue
        rest = name[len("GEOWORKER_"):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS:
            continue  # GEOWORKER_TEST_DATABASE_URL and friends are not config
        if key not in {f.name for f in fields(SECTIONS[section])}:
            raise ConfigError(f"{name}: unknown key {section}.{key}")
        values[section][key] = (value, name)


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
    from psycopg2.extensions import make_dsn

    try:
        return make_dsn(dsn or None, **pieces)
    except Exception as exc:  # psycopg2.ProgrammingError on a malformed DSN
        raise ConfigError(f"database.dsn: cannot be parsed: {str(exc).strip()}") from None


def _build_section(section: str, cls: type, values: Mapping[str, tuple[Any, str]], base: Path):
    kwargs = {}
    for f in fields(cls):
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


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced, for logs and `geoworker config`."""
    if not dsn:
        return dsn
    try:
        from psycopg2.extensions import make_dsn, parse_dsn

        parts = parse_dsn(dsn)
    except Exception:
        return MASK
    if "password" in parts:
        parts["password"] = MASK
    if dsn.startswith(("postgres://", "postgresql://")):
        # keep the URL shape operators wrote
        import urllib.parse as up

        u = up.urlsplit(dsn)
        netloc = u.netloc
        if u.password:
            netloc = f"{u.username}:{MASK}@{u.hostname}" + (f":{u.port}" if u.port else "")
        # a password may also sit in the query string (?password=...)
        query = up.urlencode([(k, MASK if k.lower() == "password" else v)
                              for k, v in up.parse_qsl(u.query, keep_blank_values=True)], safe="/*")
        return up.urlunsplit((u.scheme, netloc, u.path, query, u.fragment))
    return make_dsn(**parts)


def strip_url_secrets(url: str) -> str:
    """A URL without its query string and credentials: signatures and tokens live there."""
    import urllib.parse as up

    try:
        u = up.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    query = "?<redacted>" if u.query else ""
    return up.urlunsplit((u.scheme, host, u.path, "", "")) + query
