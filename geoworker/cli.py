"""The command line: `geoworker <command>` (and `python -m geoworker`).

A contract that tests and operators script against (README.md, Command line). A user
mistake is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from geoworker import __version__, db, reports, tasks
from geoworker.config import load_settings
from geoworker.errors import ConfigError, DatabaseUnavailable, GeoworkerError
from geoworker.jobs import Status
from geoworker.logs import setup_cli_logging
from geoworker.submit import SubmissionRefused, prepare, submit
from geoworker.submit import open_queue as open_checked_queue

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_USAGE = 64
# what a user can type is checked here, before it reaches the database (a bigint, a fork loop)
LIST_LIMIT_MAX = 10_000
CONCURRENCY_MAX = 1024


class UsageError(GeoworkerError):
    """The command line is wrong."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_cli_logging()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_CONFIG
    except DatabaseUnavailable as exc:
        _err(f"database unavailable: {exc}")
        return EXIT_ERROR
    except GeoworkerError as exc:
        _err(str(exc))
        return EXIT_USAGE if isinstance(exc, (UsageError, SubmissionRefused)) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `geoworker list | head`
        return 0


def _err(message: str) -> None:
    print(f"geoworker: {message}", file=sys.stderr)


def _out(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- shared plumbing -------------------------------------------------------------------


def load(args, announce: bool = True):
    """The settings; their warnings go to stderr unless the command is a service that logs them itself."""
    settings = load_settings(getattr(args, "config", None))
    if announce:
        for warning in settings.warnings:
            _err(f"warning: {warning}")
    return settings


def open_queue(settings):
    return open_checked_queue(settings, "cli")


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON (numbers, true, lists) keeps its type."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        except RecursionError:  # `[[[[...` past what the parser can nest: no parameter is like that
            raise UsageError(f"--param {key}: the value is nested too deeply") from None
        params[key] = value
    return params


# --- commands ---------------------------------------------------------------------------


def cmd_migrate(args) -> int:
    settings = load(args)
    conn = db.connect_settings(settings, "geoworker-migrate")
    try:
        applied = db.migrate(conn)
        version = db.schema_version(conn)
    finally:
        conn.close()
    if applied:
        print(f"applied {', '.join(applied)}; schema at version {version}")
    else:
        print(f"schema is up to date (version {version})")
    return 0


def cmd_submit(args) -> int:
    settings = load(args)
    params = parse_params(args.param or [])
    if args.max_attempts is not None and args.max_attempts < 1:
        raise UsageError("--max-attempts must be at least 1")
    # everything is checked before the database is touched: a mistake creates no job
    sub = prepare(settings, args.task, args.source, params, priority=args.priority, max_attempts=args.max_attempts)
    job = submit(open_queue(settings), settings, sub)
    if args.json:
        _out(job.to_dict())
    else:
        print(job.id)
    return 0


def cmd_status(args) -> int:
    queue = open_queue(load(args))
    job = queue.get(args.job_id)
    if args.json:
        _out(job.to_dict())
        return 0
    lines = [
        ("id", job.id),
        ("task", job.task_type),
        ("status", job.status + (f" ({job.progress}%: {job.progress_message})" if job.status == "running" else "")),
        ("priority", job.priority),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("created", job.created_at),
        ("run at", job.run_at if job.status == "queued" else None),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("worker", job.locked_by),
        ("error", job.last_error),
        ("params", json.dumps(job.params) if job.params else None),
        ("input", json.dumps(job.input) if job.input else None),
        ("outputs", json.dumps(job.outputs) if job.outputs else None),
    ]
    for name, value in lines:
        if value is not None:
            print(f"{name + ':':10} {value}")
    return 0


def cmd_events(args) -> int:
    queue = open_queue(load(args))
    events = queue.events(args.job_id)
    if args.json:
        _out(events)
        return 0
    for e in events:
        print(f"{e['at']}  {e['kind']:<16} {e['message'] or ''}" + (f"  [{e['worker']}]" if e["worker"] else ""))
    return 0


def cmd_list(args) -> int:
    if args.status and args.status not in {s.value for s in Status}:
        raise UsageError(f"--status must be one of {', '.join(s.value for s in Status)}")
    if not 1 <= args.limit <= LIST_LIMIT_MAX:
        raise UsageError(f"--limit must be between 1 and {LIST_LIMIT_MAX}, got {args.limit}")
    queue = open_queue(load(args))
    jobs = queue.list(status=args.status, limit=args.limit)
    if args.json:
        _out([j.to_dict() for j in jobs])
        return 0
    for j in jobs:
        print(f"{j.id}  {j.status:<9} {j.progress:>3}%  {j.attempts}/{j.max_attempts}  {j.task_type:<16} "
              f"{j.created_at:%Y-%m-%d %H:%M:%S}  {j.error_code or ''}")
    return 0


def cmd_cancel(args) -> int:
    queue = open_queue(load(args))
    job = queue.cancel(args.job_id)
    print(f"{job.id} cancelled")
    return 0


def cmd_retry(args) -> int:
    queue = open_queue(load(args))
    job = queue.retry_now(args.job_id)
    print(f"{job.id} queued again")
    return 0


def cmd_run(args) -> int:
    from geoworker.supervisor import run_service  # late: psutil and the pool, only for `run`

    settings = load(args, announce=False)  # the service logs them
    if args.concurrency is not None and not 1 <= args.concurrency <= CONCURRENCY_MAX:
        raise UsageError(f"--concurrency must be between 1 and {CONCURRENCY_MAX}, got {args.concurrency}")
    return run_service(settings, concurrency=args.concurrency, drain=args.drain)


def cmd_process(args) -> int:
    """A task's work on one file, no queue: what a job would produce, in --out."""
    settings = load(args)
    task = tasks.get(args.task, settings)
    if task.produce is None:
        raise UsageError(f"task {task.name} does not turn a file into outputs; `geoworker process` runs file tasks "
                         f"({', '.join(n for n, t in tasks.available(settings).items() if t.produce)})")
    src = Path(args.input)
    if not src.is_file():
        raise UsageError(f"{args.input}: no such file")
    params = tasks.validate_params(task, parse_params(args.param or []), settings)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {args.out}: exists and is not a directory") from None
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot create it: {exc.strerror}") from None
    quiet = args.json or not sys.stderr.isatty()  # progress is for people watching

    def progress(percent: int, message: str) -> None:
        if not quiet:
            print(f"{percent:3d}%  {message}", file=sys.stderr)

    result = task.produce(src, out, params, settings, progress=progress)
    if args.json:
        _out(result)
        return 0
    for kind, name in (result.get("outputs") or {}).items():
        if name:
            print(f"{kind:<11} {out / name}")
    if not result.get("outputs"):
        _out(result.get("metadata", result))
    for warning in result.get("warnings") or (result.get("metadata") or {}).get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from geoworker.demo import run_demo  # late: rasterio (0.5 s), only for the demo

    return run_demo(load(args, announce=False), keep_going=args.keep_going)  # its service logs the warnings


def cmd_config(args) -> int:
    if args.check:
        try:
            settings = load(args)
        except ConfigError as exc:
            _err(f"configuration error: {exc}")
            return EXIT_ERROR
        print(f"configuration OK ({settings.config_path or 'no config file; defaults and environment'})")
        return 0
    settings = load(args)
    data = settings.as_dict(mask_secrets=True)
    if args.json:
        _out({"config_path": settings.config_path, **data})
        return 0
    print(f"# effective settings (config file: {settings.config_path or 'none'}; secrets masked)")
    for section, values in data.items():
        _print_table(section, values)
    if not settings.database.dsn:
        print("\n# database.dsn is empty: geoworker uses the embedded PostgreSQL in database.embedded_dir")
    return 0


def _print_table(name: str, values: dict[str, Any]) -> None:
    """One TOML table; a nested one (a storage backend's) follows as [name.sub]."""
    print(f"\n[{name}]")
    for key, value in values.items():
        if not isinstance(value, dict):
            print(f"{key} = {json.dumps(value)}")
    for key, value in values.items():
        if isinstance(value, dict):
            _print_table(f"{name}.{key}", value)


def cmd_stats(args) -> int:
    queue = open_queue(load(args))
    stats = reports.stats(queue)
    if args.json:
        _out(stats)
        return 0
    counts = stats["counts"]
    print("jobs:      " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    q = stats["queue"]
    print(f"queue:     {q['ready']} ready, {q['scheduled']} scheduled for later, {q['running']} running; "
          f"oldest ready {q['oldest_ready_age']:.1f} s")
    f = stats["finished"]
    print(f"last hour: {f['succeeded']} succeeded, {f['failed']} failed, {f['cancelled']} cancelled "
          f"({stats['jobs_per_minute']:.2f} jobs/min succeeded)")
    for d in stats["durations"]:
        p50, p95, top = (f"{d[k]:.3f}s" if d[k] is not None else "-" for k in ("p50", "p95", "max"))
        print(f"duration:  {d['task_type']}: n={d['n']} p50={p50} p95={p95} max={top}")
    if stats["failure_reasons"]:
        print("failures:  " + "  ".join(f"{k} {v}" for k, v in stats["failure_reasons"].items()))
    print(f"workers:   {len(stats['workers'])} alive")
    for w in stats["workers"]:
        rss = f"{w['rss'] / 1048576:.0f} MiB" if w["rss"] else "-"
        print(f"  {w['kind']:<10} {w['host']} pid {w['pid']:<7} rss {rss:>8}  done {w['jobs_done']:<5} "
              f"job {w['current_job'] or '-'}")
    return 0


def cmd_health(args) -> int:
    """Database, API, file system and dependencies; exit 0 when healthy, 1 otherwise."""
    from geoworker import health  # late: it imports every dependency it checks

    checks = health.run_checks(load(args))
    if args.json:
        _out(health.as_json(checks))
    else:
        print(health.render_text(checks))
    return 0 if health.overall(checks)[0] else EXIT_ERROR


def cmd_api(args) -> int:
    """The HTTP API in the foreground (uvicorn), until TERM/INT."""
    from geoworker.api import serve  # late: FastAPI and uvicorn, only for `api`

    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    return serve(load(args, announce=False), host=args.host, port=args.port)  # the service logs its warnings


def cmd_token(args) -> int:
    """A JWT for the API and the dashboard, signed with api.jwt_secret; --link: the sign-in URL."""
    from geoworker import tokens

    settings = load(args)
    if not settings.api.jwt_secret:
        raise ConfigError("api.jwt_secret: required to sign a token (GEOWORKER_API_JWT_SECRET)")
    try:
        token = tokens.mint(settings.api.jwt_secret, args.user, operator=args.operator,
                            ttl=tokens.DEFAULT_TTL if args.ttl is None else args.ttl)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(tokens.sign_in_link(api_base(settings), token) if args.link else token)
    return 0


def api_base(settings) -> str:
    """Where people reach the API: api.base_url, else api.host:api.port (a wildcard host as loopback)."""
    if settings.api.base_url:
        return settings.api.base_url.rstrip("/")
    host = settings.api.host
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{host}:{settings.api.port}"


# --- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config.toml to read (default: $GEOWORKER_CONFIG or ./config.toml)")
    parser = argparse.ArgumentParser(prog="geoworker", parents=[common],
                                     description="GeoTIFF to web-ready PNG worker on a PostgreSQL job queue.")
    parser.add_argument("--version", action="version", version=f"geoworker {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("migrate", cmd_migrate, "apply schema migrations (idempotent)")

    p = add("run", cmd_run, "run the supervisor and its pool of children")
    p.add_argument("--concurrency", type=int, help="number of child processes (default: worker.concurrency)")
    p.add_argument("--drain", action="store_true", help="exit 0 when no queued or running job is left")

    p = add("submit", cmd_submit, "queue a job; prints its id")
    p.add_argument("source", nargs="?", metavar="FILE|URL", help="the input GeoTIFF")
    p.add_argument("--task", default="geotiff_to_png", help="task type (default: geotiff_to_png)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--max-attempts", type=int, help="attempts before the job fails (default: retry.max_attempts)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter (repeatable)")
    p.add_argument("--json", action="store_true", help="print the whole job as JSON")

    for name, func, help in (("status", cmd_status, "show one job"), ("events", cmd_events, "show a job's history")):
        p = add(name, func, help)
        p.add_argument("job_id", metavar="JOB_ID")
        p.add_argument("--json", action="store_true")

    p = add("list", cmd_list, "list the newest jobs")
    p.add_argument("--status", help="only jobs in this status")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")

    add("cancel", cmd_cancel, "cancel a pending, queued or running job").add_argument("job_id", metavar="JOB_ID")
    add("retry", cmd_retry, "queue a failed or cancelled job again").add_argument("job_id", metavar="JOB_ID")

    p = add("process", cmd_process, "run a task on one file, no queue: its outputs go to --out")
    p.add_argument("input", metavar="IN.tif")
    p.add_argument("--task", default="geotiff_to_png", help="task type (default: geotiff_to_png)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="e.g. max_size=2048, stretch=minmax")
    p.add_argument("--json", action="store_true", help="print the result (metadata summary, timings) as JSON")

    p = add("health", cmd_health, "check database, API, file system, dependencies; exit 0 if healthy")
    p.add_argument("--json", action="store_true")

    p = add("config", cmd_config, "print the effective settings (secrets masked)")
    p.add_argument("--check", action="store_true", help="only validate; exit 0 or 1")
    p.add_argument("--json", action="store_true")

    p = add("stats", cmd_stats, "counts, throughput, durations, failures, workers")
    p.add_argument("--json", action="store_true")

    p = add("api", cmd_api, "run the HTTP API server (api.host:api.port)")
    p.add_argument("--host", help="address to listen on (default: api.host)")
    p.add_argument("--port", type=int, help="port to listen on (default: api.port)")
    p = add("token", cmd_token, "print a JWT for the API and the dashboard (signed with api.jwt_secret)")
    p.add_argument("--user", required=True, metavar="NAME", help="the token's subject: whose jobs it sees")
    p.add_argument("--operator", action="store_true", help='an operator\'s token ("role": "operator"): every job')
    p.add_argument("--ttl", type=float, metavar="SECONDS", help="valid this long (default 8 h, at most a year)")
    p.add_argument("--link", action="store_true", help="print the dashboard's sign-in URL (<api>/ui#token=...)")
    p = add("demo", cmd_demo, "make a sample GeoTIFF, run it through the queue, show the outputs")
    p.add_argument("--keep-going", action="store_true", help="leave the service running afterwards (Ctrl-C stops)")
    return parser
