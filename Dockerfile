# geoworker in a container: python:3.11-slim, a non-root user, start_worker.sh as the entry point.
#
# UNTESTED: no container engine on the machine this was written on; build and run it once
# before relying on it.
#
#   docker build -t geoworker .
#   docker run --env-file .env --stop-timeout 90 -p 127.0.0.1:9108:9108 \
#              -v geoworker-var:/app/var geoworker [geoworker run options]
#
# --stop-timeout (or compose's stop_grace_period) must exceed worker.graceful_timeout (60 s)
# + 5 s: on `docker stop` the supervisor gets SIGTERM, lets running jobs finish, then exits 0.
# /app/var holds logs, local storage and per-job temp directories: mount a volume there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system geoworker \
    && useradd --system --gid geoworker --home-dir /app --no-create-home --shell /usr/sbin/nologin geoworker

WORKDIR /app

# the pinned dependencies first (all binary wheels: rasterio bundles GDAL), so this layer is
# rebuilt only when requirements.txt changes
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md config.toml start_worker.sh ./
COPY geoworker ./geoworker
RUN pip install --no-deps . \
    && rm -rf build geoworker.egg-info \
    && mkdir -p var \
    && chown geoworker:geoworker var \
    && chmod 755 start_worker.sh

USER geoworker

# metrics.host: scraped from outside the container, so not loopback inside it
ENV GEOWORKER_METRICS_HOST=0.0.0.0
EXPOSE 9108
# the supervisor's own /healthz: 200 while its loop turns and the database answers
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status != 200)"]

STOPSIGNAL SIGTERM
# config check, migrations, health check, then exec geoworker run (PID 1: it reaps its children)
ENTRYPOINT ["./start_worker.sh"]
