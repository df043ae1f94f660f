"""`geoworker demo`: the first thing a new user runs.

Writes a small orthophoto-like GeoTIFF (UTM zone 38N, with a nodata collar), submits it
three times (the web PNG, the Cloud-Optimized GeoTIFF, the tile pyramid), runs the service
until the queue is drained, and prints where the outputs are and what happened to the jobs. With no database configured it all runs on the embedded PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from geoworker.errors import GeoworkerError
from geoworker.processing import write_sample_orthophoto
from geoworker.submit import open_queue, prepare, submit
from geoworker.supervisor import run_service


PRODUCTS = (("geotiff_to_png", "the web PNG, thumbnail, world file and metadata"),
            ("geotiff_to_cog", "a full-resolution Cloud-Optimized GeoTIFF"),
            ("geotiff_to_tiles", "a Web-Mercator tile pyramid (PMTiles + TileJSON)"))


def run_demo(settings, keep_going: bool = False) -> int:
    # the demo's own output is the summary below; the service logs only warnings to the terminal
    quiet = dataclasses.replace(settings, logging=dataclasses.replace(settings.logging, level="WARNING"))
    sample = Path(settings.base_dir) / "var" / "demo" / "sample_ortho_utm38n.tif"
    write_sample_orthophoto(sample)
    print(f"sample GeoTIFF:  {sample}")

    queue = open_queue(settings, "demo")
    jobs = []
    for task, what in PRODUCTS:
        job = submit(queue, settings, prepare(settings, task, sample))
        jobs.append(job)
        print(f"submitted job:   {job.id}  {task}: {what}")
    print("running the service until the queue is drained ...", flush=True)
    code = run_service(quiet, concurrency=2, drain=not keep_going)
    if code != 0:
        raise GeoworkerError(f"the service exited with code {code}")

    ok = True
    for job in (queue.get(j.id) for j in jobs):
        ok = ok and job.status == "succeeded"
        print(f"\njob {job.id}: {job.status}  ({job.task_type})" + (f" ({job.last_error})" if job.last_error else ""))
        for kind, ref in (job.outputs or {}).items():
            print(f"  {kind:<11} {ref}")
        summary = (job.result or {}).get("metadata") or {}
        if summary:
            print("  " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))[:400])
    first = jobs[0]
    print(f"\nthe PNG job's history ({first.id}):\nevents:")
    for event in queue.events(first.id):
        print(f"  {event['at'][11:23]}  {event['kind']:<16} {event['message'] or ''}")
    print(f"\nsee also: geoworker status {first.id}; geoworker events {first.id}; geoworker stats;"
          "\n          geoworker api (with api.jwt_secret and api.signing_secret set), then geoworker token --link,"
          "\n          to see the tiles on a map in the dashboard")
    queue.close()
    return 0 if ok else 1
