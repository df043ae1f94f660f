"""`geoworker demo`: the first thing a new user runs.

Writes a small orthophoto-like GeoTIFF (UTM zone 38N, with a nodata collar), submits it,
runs the service until the queue is drained, and prints where the outputs are and what
happened to the job. With no database configured it all runs on the embedded PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from geoworker.errors import GeoworkerError
from geoworker.processing import write_sample_orthophoto
from geoworker.submit import open_queue, prepare, submit
from geoworker.supervisor import run_service


def run_demo(settings, keep_going: bool = False) -> int:
    # the demo's own output is the summary below; the service logs only warnings to the terminal
    quiet = dataclasses.replace(settings, logging=dataclasses.replace(settings.logging, level="WARNING"))
    sample = Path(settings.base_dir) / "var" / "demo" / "sample_ortho_utm38n.tif"
    write_sample_orthophoto(sample)
    print(f"sample GeoTIFF:  {sample}")

    queue = open_queue(settings, "demo")
    job = submit(queue, settings, prepare(settings, "geotiff_to_png", sample))
    print(f"submitted job:   {job.id}")
    print("running the service until the queue is drained ...", flush=True)
    code = run_service(quiet, concurrency=1, drain=not keep_going)
    if code != 0:
        raise GeoworkerError(f"the service exited with code {code}")

    job = queue.get(job.id)
    print(f"\njob {job.id}: {job.status}" + (f" ({job.last_error})" if job.last_error else ""))
    for kind, ref in (job.outputs or {}).items():
        print(f"  {kind:<11} {ref}")
    summary = (job.result or {}).get("metadata") or {}
    if summary:
        print("  " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))[:400])
    print("\nevents:")
    for event in queue.events(job.id):
        print(f"  {event['at'][11:23]}  {event['kind']:<16} {event['message'] or ''}")
    print(f"\nsee also: geoworker status {job.id}; geoworker events {job.id}; geoworker stats")
    queue.close()
    return 0 if job.status == "succeeded" else 1
