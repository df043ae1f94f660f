"""Benchmark: the map products beside GDAL's own tools, on the same files, in one run.

    python bench/map_outputs.py [--data bench/_data] [--repeat 1] [--only rgb,dem,big]
                                [--cog-files rgb,dem,big] [--tile-files rgb,big]

Inputs are bench/processing.py's (generated once under --data, reused when present):
a 100 MB striped RGB orthophoto, a 100 MB tiled uint16 DEM and a 1.1 GB BigTIFF.

For each file, each run a fresh process tree, the reference and geoworker alternately
(A B A B ...) --repeat times each; the median wall time, the ratio of medians, and every run:
  COG    gdal_translate -q -of COG -co NUM_THREADS=ALL_CPUS -co COMPRESS=C [-co QUALITY=85 | -co PREDICTOR=YES]
         beside make_cog(IN, OUT, defaults) (the same compression: JPEG q85 for 8-bit RGB, DEFLATE + predictor else)
  tiles  gdal2tiles.py --xyz -r average --processes=2 -q IN OUT
         beside make_tiles(IN, OUT, defaults) (PNG tiles, gdal2tiles' zooms, PMTiles + TileJSON)
Memory is the peak of the whole job: the PSS of the process and all its descendants,
summed, sampled every 20 ms with psutil (a pool of gdal2tiles workers counts as much as
one big process); the peak RSS of the largest single process is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processing import generate  # noqa: E402  (bench/processing.py: the same inputs)

GEOWORKER = """
import json, sys
from geoworker.processing.cog import make_cog
from geoworker.processing.map_options import CogOptions, TileOptions
from geoworker.processing.tiles import make_tiles
kind, src, out = sys.argv[1:4]
defaults = {"max_file_size": 1 << 40}
if kind == "cog":
    r = make_cog(src, out, CogOptions.from_mapping(defaults, {}))
else:
    r = make_tiles(src, out, TileOptions.from_mapping(defaults, {}))
print(json.dumps({"timings": r["timings"], "output": r["metadata"]["output"]}), file=sys.stderr)
"""
COMPRESSION = {"rgb": "JPEG", "dem": "DEFLATE", "big": "JPEG"}  # what make_cog picks for each file


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """Run cmd; return (wall s, peak summed PSS MB of the tree, peak RSS MB of one process, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0.0
    while proc.poll() is None:
        pss = 0.0
        for p in _tree(root):
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += info.pss
            peak_rss = max(peak_rss, info.rss)
        peak_pss = max(peak_pss, pss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, peak_pss / 2**20, peak_rss / 2**20, err.strip().splitlines()[-1] if err.strip() else ""


def runs_for(key: str, path: Path, out: Path, product: str) -> dict[str, list[str]]:
    if product == "cog":
        comp = COMPRESSION[key]
        extra = ["-co", "QUALITY=85"] if comp == "JPEG" else ["-co", "PREDICTOR=YES"]
        return {
            "gdal_translate": ["gdal_translate", "-q", "-of", "COG", "-co", "NUM_THREADS=ALL_CPUS", "-co",
                               f"COMPRESS={comp}", *extra, str(path), str(out / "gdal.cog.tif")],
            "geoworker": [sys.executable, "-c", GEOWORKER, "cog", str(path), str(out / "gw")],
        }
    return {
        "gdal2tiles": [shutil.which("gdal2tiles.py") or "gdal2tiles.py", "--xyz", "-r", "average", "--processes=2",
                       "-q", str(path), str(out / "g2t")],
        "geoworker": [sys.executable, "-c", GEOWORKER, "tiles", str(path), str(out / "gw")],
    }


def run_one(key: str, path: Path, product: str, repeat: int, data_dir: Path) -> dict:
    """Run the reference and geoworker alternately (A B A B ...) `repeat` times each.

    Returns: per run name, the median wall time, the ratio of medians to the reference's,
    every wall time in run order, and the highest peak PSS / RSS of any run.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs: dict[str, dict] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            for name, cmd in runs_for(key, path, Path(tmp), product).items():
                wall, pss, rss, tail = measure(cmd, env)
                r = runs.setdefault(name, {"walls": [], "peak_pss_mb": 0, "peak_rss_mb": 0})
                r["walls"].append(round(wall, 2))
                r["peak_pss_mb"] = max(r["peak_pss_mb"], round(pss))
                r["peak_rss_mb"] = max(r["peak_rss_mb"], round(rss))
                if name == "geoworker":
                    r["detail"] = tail
    for r in runs.values():
        r["wall_s"] = round(statistics.median(r["walls"]), 2)
    ref = next(n for n in runs if n != "geoworker")
    for r in runs.values():
        r["ratio"] = round(r["wall_s"] / runs[ref]["wall_s"], 2)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "_data")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="rgb,dem,big", help="which inputs to generate and use")
    parser.add_argument("--cog-files", default="rgb,dem,big")
    parser.add_argument("--tile-files", default="rgb,big")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    for tool in ("gdal_translate", "gdal2tiles.py"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install -y gdal-bin python3-gdal")
    which = [w for w in args.only.split(",") if w]
    paths = generate(args.data, which)
    plan = [("cog", k) for k in args.cog_files.split(",") if k in paths]
    plan += [("tiles", k) for k in args.tile_files.split(",") if k in paths]
    results: dict = {}
    print(f"{'product':<7} {'file':<24}{'size':>8}  {'run':<15}{'wall s':>8}{'ratio':>7}{'PSS MB':>8}{'RSS MB':>8}"
          "  every run (s)")
    for product, key in plan:
        path = paths[key]
        res = run_one(key, path, product, args.repeat, args.data)
        results.setdefault(product, {})[key] = res
        for name, r in res.items():
            print(f"{product:<7} {path.name:<24}{path.stat().st_size / 1e6:>6.0f}MB  {name:<15}{r['wall_s']:>8.2f}"
                  f"{r['ratio']:>7.2f}{r['peak_pss_mb']:>8}{r['peak_rss_mb']:>8}  {' '.join(map(str, r['walls']))}",
                  flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
