"""Configuration: file, .env, environment; every override and every invalid value."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from geoworker.config import SECTIONS, Settings, load_settings
from geoworker.errors import ConfigError
from geoworker.storage import registry

from service import ROOT, run_cli

ENV_OVERRIDES = [
    ("WORKER_NAME", "ortho-1", "worker", "name", "ortho-1"),
    ("POLL_INTERVAL", "2.5", "worker", "poll_interval", 2.5),
    ("HEARTBEAT_INTERVAL", "7", "worker", "heartbeat_interval", 7.0),
    ("MAX_PROCESSING_TIME", "120", "worker", "max_processing_time", 120.0),
    ("CONCURRENT_JOBS", "3", "worker", "concurrency", 3),
    ("MAX_FILE_SIZE", "2048", "storage", "max_file_size", 2048),
    ("LOG_LEVEL", "DEBUG", "logging", "level", "DEBUG"),
    ("API_BASE_URL", "http://api.example:5000", "api", "base_url", "http://api.example:5000"),
    ("WORKER_AUTH_TOKEN", "tok-123", "api", "worker_token", "tok-123"),
    ("DATABASE_URL", "postgresql://u@dbhost/geo", "database", "dsn", "postgresql://u@dbhost/geo"),
    ("PGSSLMODE", "verify-full", "database", "sslmode", "verify-full"),
    ("PGSSL", "true", "database", "sslmode", "require"),
    ("VALIDATE_FILE_HEADERS", "false", "storage", "validate_headers", False),
    ("GEOWORKER_RETRY_MAX_ATTEMPTS", "9", "retry", "max_attempts", 9),
    ("GEOWORKER_STORAGE_ALLOWED_HOSTS", "a.example, b.example", "storage", "allowed_hosts", ("a.example", "b.example")),
]

FILE = """
[worker]
name = "from-file"
poll_interval = 9
heartbeat_interval = 9
concurrency = 1
max_processing_time = 999
[storage]
max_file_size = 1
validate_headers = true
[logging]
level = "ERROR"
[api]
base_url = "http://file"
worker_token = "file-token"
[database]
dsn = "postgresql://file@filehost/filedb"
sslmode = "disable"
[retry]
max_attempts = 2
"""


@pytest.mark.parametrize("name,value,section,key,expected", ENV_OVERRIDES, ids=[e[0] for e in ENV_OVERRIDES])
def test_environment_overrides_the_file(tmp_path, name, value, section, key, expected):
    config = tmp_path / "config.toml"
    config.write_text(FILE)
    settings = load_settings(config, environ={name: value}, base_dir=tmp_path)
    assert getattr(getattr(settings, section), key) == expected


def test_temp_dir_from_environment_is_absolute(tmp_path):
    settings = load_settings(environ={"TEMP_DIR": "scratch"}, base_dir=tmp_path)
    assert settings.storage.temp_dir == str(tmp_path / "scratch")


def test_pg_variables_build_the_dsn_and_override_parts_of_the_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[database]\ndsn = "host=filehost dbname=filedb user=fileuser"\n')
    env = {"PGHOST": "db.internal", "PGPORT": "6432", "PGDATABASE": "geo", "PGUSER": "worker", "PGPASSWORD": "s3cret"}
    from psycopg2.extensions import parse_dsn

    parts = parse_dsn(load_settings(config, environ=env, base_dir=tmp_path).database.dsn)
    assert parts == {"host": "db.internal", "port": "6432", "dbname": "geo", "user": "worker", "password": "s3cret"}
    only_host = parse_dsn(load_settings(config, environ={"PGHOST": "other"}, base_dir=tmp_path).database.dsn)
    assert only_host == {"host": "other", "dbname": "filedb", "user": "fileuser"}


def test_no_database_configured_means_embedded(tmp_path):
    settings = load_settings(environ={}, base_dir=tmp_path)
    assert settings.database.dsn == ""
    assert settings.database.embedded_dir == str(tmp_path / "var" / "postgres")


def test_dotenv_sits_between_file_and_environment(tmp_path):
    (tmp_path / "config.toml").write_text('[worker]\nname = "file"\npoll_interval = 3\nconcurrency = 2\n')
    (tmp_path / ".env").write_text("WORKER_NAME=dotenv\nPOLL_INTERVAL=4\n")
    settings = load_settings(environ={"POLL_INTERVAL": "5"}, base_dir=tmp_path)
    assert (settings.worker.name, settings.worker.poll_interval, settings.worker.concurrency) == ("dotenv", 5.0, 2)


def test_config_path_from_geoworker_config(tmp_path):
    other = tmp_path / "elsewhere.toml"
    other.write_text('[worker]\nname = "elsewhere"\n')
    settings = load_settings(environ={"GEOWORKER_CONFIG": str(other)}, base_dir=tmp_path)
    assert settings.worker.name == "elsewhere" and settings.config_path == str(other)


def test_stale_after_defaults_to_three_heartbeats(tmp_path):
    assert load_settings(environ={"HEARTBEAT_INTERVAL": "4"}, base_dir=tmp_path).worker.stale_after == 12


INVALID = [
    ({"POLL_INTERVAL": "-1"}, "", r"^worker\.poll_interval \(from POLL_INTERVAL\): must be greater than 0"),
    ({"HEARTBEAT_INTERVAL": "soon"}, "", r"^worker\.heartbeat_interval \(from HEARTBEAT_INTERVAL\): must be a number"),
    ({"CONCURRENT_JOBS": "1.5"}, "", r"^worker\.concurrency \(from CONCURRENT_JOBS\): must be a whole number"),
    ({"CONCURRENT_JOBS": "0"}, "", r"^worker\.concurrency \(from CONCURRENT_JOBS\): must be at least 1"),
    ({"MAX_FILE_SIZE": "lots"}, "", r"^storage\.max_file_size \(from MAX_FILE_SIZE\): must be a number"),
    ({"LOG_LEVEL": "LOUD"}, "", r"^logging\.level \(from LOG_LEVEL\): must be one of"),
    ({"VALIDATE_FILE_HEADERS": "maybe"}, "", r"^storage\.validate_headers \(from VALIDATE_FILE_HEADERS\): must be true or false"),
    ({"PGSSL": "sometimes"}, "", r"^PGSSL: must be"),
    ({}, "[worker]\npoll_interval = -5\n", r"^worker\.poll_interval: must be greater than 0, got -5"),
    ({}, "[worker]\npoll_interval = \"fast\"\n", r"^worker\.poll_interval: must be a number"),
    ({}, "[worker]\nspeed = 3\n", r"^config\.toml: unknown key worker\.speed"),
    ({}, "[workers]\nconcurrency = 3\n", r"^config\.toml: unknown section \[workers\]"),
    ({}, "[worker\n", r"^config\.toml: not valid TOML"),
    ({}, "[worker]\nheartbeat_interval = 30\nstale_after = 30\n", r"^worker\.heartbeat_interval: must be shorter than worker\.stale_after"),
    ({"GEOWORKER_WORKER_SPEED": "3"}, "", r"^GEOWORKER_WORKER_SPEED: unknown key worker\.speed"),
    ({}, "[retry]\nbackoff_base = 100\nbackoff_max = 10\n", r"^retry\.backoff_max: must be >= retry\.backoff_base"),
    ({}, "[processing]\npercentiles = [98, 2]\n", r"^processing\.percentiles: must satisfy"),
    ({}, "[metrics]\nport = 70000\n", r"^metrics\.port: must be a port number"),
    ({}, "[storage]\nbackend = \"ftp\"\n", r"^storage\.backend: must be one of local, s3, http"),
    ({}, "[storage.s3]\nbuckets = \"b\"\n", r"^config\.toml: unknown key storage\.s3\.buckets"),
    ({}, "[storage.local]\nroot = \"x\"\n", r"^config\.toml: unknown key storage\.local"),
    ({}, "[storage]\ns3 = \"b\"\n", r"^config\.toml: storage\.s3 must be a table"),
    ({"GEOWORKER_STORAGE_S3_BUCKETS": "b"}, "", r"^GEOWORKER_STORAGE_S3_BUCKETS: unknown key storage\.s3\.buckets"),
    ({"GEOWORKER_STORAGE_TABLES": "x"}, "", r"^GEOWORKER_STORAGE_TABLES: unknown key storage\.tables"),
    ({}, "[queue]\nmode = \"http\"\n", r"^queue\.mode: \"http\" needs api\.base_url"),
]


@pytest.mark.parametrize("env,text,pattern", INVALID)
def test_invalid_value_is_one_line_naming_the_key(tmp_path, env, text, pattern):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env, base_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_repository_config_toml_documents_every_key_with_its_default(tmp_path):
    """Uncommenting every `# key = value` line of config.toml must give exactly the defaults."""
    text = (ROOT / "config.toml").read_text()
    uncommented = []
    for line in text.splitlines():
        match = re.match(r"^#\s?(\w+ = .*)$", line)
        uncommented.append(match.group(1) if match else line)
    (tmp_path / "config.toml").write_text("\n".join(uncommented))
    documented = load_settings(tmp_path / "config.toml", environ={}, base_dir=tmp_path)
    defaults = load_settings(environ={}, base_dir=tmp_path)
    assert documented.as_dict(mask_secrets=False) == defaults.as_dict(mask_secrets=False)
    tables = {f"storage.{name}": cls for name, cls in registry.settings_tables().items()}
    for section, cls in {**SECTIONS, **tables}.items():
        assert re.search(rf"^\[{re.escape(section)}\]$", text, re.MULTILINE), f"config.toml has no [{section}]"
        body = re.split(rf"^\[{re.escape(section)}\]$", text, flags=re.MULTILINE)[1].split("\n[", 1)[0]
        for f in dataclasses.fields(cls):
            if not f.metadata.get("tables"):
                assert re.search(rf"^#\s?{f.name} = ", body, re.MULTILINE), \
                    f"config.toml does not document {section}.{f.name} in [{section}]"


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(Exception):
        settings.worker.concurrency = 5  # type: ignore[misc]


def test_cli_config_masks_secrets_and_check_reports_errors(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://geo:hunter2@db.example/geo",
           "WORKER_AUTH_TOKEN": "tok-secret", "API_BASE_URL": "https://api.example/x?sig=abc"}
    shown = run_cli(["config"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout and "tok-secret" not in shown.stdout and "sig=abc" not in shown.stdout
    assert "postgresql://geo:********@db.example/geo" in shown.stdout
    assert "[worker]" in shown.stdout and "concurrency = 1" in shown.stdout

    ok = run_cli(["config", "--check"], env=env, cwd=tmp_path)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout

    bad = run_cli(["config", "--check"], env={**env, "POLL_INTERVAL": "-3"}, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0
    assert "worker.poll_interval (from POLL_INTERVAL): must be greater than 0" in bad.stderr
    assert "Traceback" not in bad.stderr

    run_bad = run_cli(["list"], env={**env, "CONCURRENT_JOBS": "many"}, cwd=tmp_path)
    assert run_bad.returncode == 2 and "worker.concurrency" in run_bad.stderr and "Traceback" not in run_bad.stderr


def test_an_empty_database_url_does_not_hide_the_pg_variables(tmp_path):
    settings = load_settings(environ={"DATABASE_URL": "", "PGHOST": "db.internal", "PGDATABASE": "geo"},
                             base_dir=tmp_path)
    assert "host=db.internal" in settings.database.dsn and "dbname=geo" in settings.database.dsn


@pytest.mark.parametrize("dsn,secret", [
    ("postgresql://geo:hunter2@db.example:5433/geo", "hunter2"),
    ("postgresql://geo@db.example/geo?password=hunter2&sslmode=require", "hunter2"),
    ("host=db.example user=geo password=hunter2", "hunter2"),
])
def test_mask_dsn_hides_every_spelling_of_the_password(dsn, secret):
    from geoworker.masking import mask_dsn

    masked = mask_dsn(dsn)
    assert secret not in masked and "********" in masked
    assert "db.example" in masked


# --- a storage backend's own table ----------------------------------------------------------


def test_s3_settings_come_from_their_table_and_the_environment(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "from-file"\n'
                                          'region = "eu-central-1"\n')
    settings = load_settings(environ={"GEOWORKER_STORAGE_S3_REGION": "us-east-1"}, base_dir=tmp_path)
    assert (settings.storage.s3.bucket, settings.storage.s3.region) == ("from-file", "us-east-1")
    assert settings.storage.tables["s3"] is settings.storage.s3
    assert settings.warnings == ()
    assert Settings().storage.s3.bucket == ""  # every registered table exists, at its defaults


def test_flat_s3_keys_still_work_with_a_warning_naming_the_new_spelling(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\nbucket = "flat-bucket"\nprefix = "p"\n')
    settings = load_settings(environ={"GEOWORKER_STORAGE_ACCESS_KEY_ID": "AKIA-old"}, base_dir=tmp_path)
    assert (settings.storage.s3.bucket, settings.storage.s3.prefix) == ("flat-bucket", "p")
    assert settings.storage.s3.access_key_id == "AKIA-old"
    assert sorted(settings.warnings) == [
        "GEOWORKER_STORAGE_ACCESS_KEY_ID is deprecated: use GEOWORKER_STORAGE_S3_ACCESS_KEY_ID",
        "storage.bucket in config.toml is deprecated: write it as bucket under [storage.s3]",
        "storage.prefix in config.toml is deprecated: write it as prefix under [storage.s3]",
    ]
    assert all("\n" not in w and "AKIA" not in w for w in settings.warnings)


def test_the_new_spelling_wins_in_the_same_place_and_the_environment_still_wins_over_the_file(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\nbucket = "old-file"\n[storage.s3]\nbucket = "new-file"\n')
    assert load_settings(environ={}, base_dir=tmp_path).storage.s3.bucket == "new-file"
    both = {"GEOWORKER_STORAGE_S3_BUCKET": "new-env", "GEOWORKER_STORAGE_BUCKET": "old-env"}
    assert load_settings(environ=both, base_dir=tmp_path).storage.s3.bucket == "new-env"
    old_env = load_settings(environ={"GEOWORKER_STORAGE_BUCKET": "old-env"}, base_dir=tmp_path)
    assert old_env.storage.s3.bucket == "old-env"


def test_replace_changes_one_table_and_keeps_the_rest(tmp_path):
    settings = load_settings(environ={"GEOWORKER_STORAGE_S3_BUCKET": "a"}, base_dir=tmp_path)
    changed = settings.replace("storage.s3", bucket="b")
    assert (changed.storage.s3.bucket, settings.storage.s3.bucket) == ("b", "a")
    assert changed.storage.root == settings.storage.root


def test_cli_config_shows_the_table_masked_and_warns_on_stderr(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GEOWORKER_STORAGE_S3_SECRET_ACCESS_KEY": "hunter3",
           "GEOWORKER_STORAGE_BUCKET": "flat-bucket"}
    shown = run_cli(["config"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("[storage.s3]\n", 1)[1].split("\n\n", 1)[0]
    assert 'bucket = "flat-bucket"' in table and 'secret_access_key = "********"' in table
    assert "hunter3" not in shown.stdout + shown.stderr
    assert shown.stderr.splitlines() == [
        "geoworker: warning: GEOWORKER_STORAGE_BUCKET is deprecated: use GEOWORKER_STORAGE_S3_BUCKET"]
    as_json = json.loads(run_cli(["config", "--json"], env=env, cwd=tmp_path).stdout)
    assert as_json["storage"]["s3"]["bucket"] == "flat-bucket"
    assert as_json["storage"]["s3"]["secret_access_key"] == "********"


@pytest.mark.parametrize("dsn,expected", [
    ("postgresql://u:s3cr3t@[::1/db", r"database.dsn \(from DATABASE_URL\): cannot be parsed: end of string"),
    ("postgresql://u:s3cr3t@host:notaport/db", r"the port must be a number between 1 and 65535, got 'notaport'"),
    ("postgresql://u:s3cr3t@host:99999/db", r"got '99999'"),
    ("postgresql://u:s3%cr3t@host/db", r"invalid percent-encoded token"),
    ("host=db port=5432 password=s3cr3t dbname", r"cannot be parsed: missing \"=\" after \"dbname\""),
])
def test_a_dsn_that_cannot_work_is_refused_at_load_in_one_line_without_its_password(tmp_path, dsn, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        load_settings(environ={"DATABASE_URL": dsn}, base_dir=tmp_path)
    assert "s3cr3t" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command", [["config"], ["config", "--check"], ["migrate"], ["status", "x"], ["run"]])
def test_every_command_refuses_a_broken_dsn_at_once(tmp_path, command):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://u:s3cr3t@[::1/db"}
    done = run_cli(command, env, cwd=tmp_path, timeout=30)
    assert done.returncode != 0
    assert "s3cr3t" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("text,pattern", [
    ("[retry]\nbackoff_base = 1e14\n", r"retry.backoff_base: must be at most 86400 seconds, got 100000000000000.0"),
    ("[retry]\nbackoff_max = 1e14\n", r"retry.backoff_max: must be at most 2.592e\+06 seconds"),
    ("[worker]\npoll_interval = 1e12\n", r"worker.poll_interval: must be at most 3600 seconds"),
    ("[worker]\nmax_processing_time = 1e300\n", r"worker.max_processing_time: must be at most"),
    ("[storage]\npresign_expiry = 9999999\n", r"storage.presign_expiry: must be at most 604800"),
    ("[processing]\ncoordinate_system = \"EPSG:notanumber\"\n", r"processing.coordinate_system: must be \"native\" or a CRS"),
    ("[processing]\nresampling = \"max\"\n", r"processing.resampling: must be one of"),
    ("[processing]\nmax_image_size = 100000\n", r"processing.max_image_size: must be between 16 and 16384"),
])
def test_values_that_would_only_fail_inside_a_job_are_refused_at_load(tmp_path, text, pattern):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_settings(environ={}, base_dir=tmp_path)


def test_config_resampling_choices_are_the_pipelines():
    from geoworker.processing.options import READ_RESAMPLINGS

    field = {f.name: f for f in dataclasses.fields(SECTIONS["processing"])}["resampling"]
    check = field.metadata["check"]
    assert [r for r in READ_RESAMPLINGS if check(r) is not None] == []
    assert check("max") is not None, "warp-only resamplings are not readable choices"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "config.toml").write_bytes(b"[worker]\nname = \"caf\xe9\"\n")
    with pytest.raises(ConfigError, match=r"config.toml: not UTF-8 text \(byte 0xe9 at offset 20\)"):
        load_settings(environ={}, base_dir=tmp_path)
    done = run_cli(["config", "--check"], {"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "not UTF-8" in done.stderr


def test_a_misspelt_section_in_an_environment_variable_names_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"GEOWORKER_WORKERS_CONCURRENCY: there is no section \[workers\]; "
                                          r"did you mean GEOWORKER_WORKER_CONCURRENCY\?"):
        load_settings(environ={"GEOWORKER_WORKERS_CONCURRENCY": "4"}, base_dir=tmp_path)
    settings = load_settings(environ={"GEOWORKER_SOMETHING_ELSE": "1", "GEOWORKER_TEST_DATABASE_URL": "x"},
                             base_dir=tmp_path)
    assert [w for w in settings.warnings if "GEOWORKER_SOMETHING_ELSE is not a geoworker setting" in w]
    assert not [w for w in settings.warnings if "GEOWORKER_TEST_" in w], "the test suite's own variables are not config"
