"""Benchmark: geoworker's process_file beside gdal_translate on the same files, same run.

    python bench/processing.py [--data bench/_data] [--repeat 2] [--only rgb,dem,big]

Generates (once; reused when present) under --data:
  rgb_striped_100mb.tif   3-band uint8, striped, uncompressed, ~100 MB
  dem_tiled_100mb.tif     1-band uint16, tiled 512, DEFLATE + predictor, ~100 MB on disk
  big_bigtiff_1gb.tif     3-band uint8 BigTIFF, tiled 512, uncompressed, no overviews, > 1 GB
with synthetic but realistic content (fields, roads, roofs, texture; a DEM with relief and
noise): compressible like real imagery, neither noise nor constant.

For each file it runs, each in a fresh process (peak RSS from wait4's rusage, the whole
process), best wall time of --repeat runs:
  gdal    gdal_translate -q -of PNG -outsize 4096 0 -r average -scale -ot Byte IN OUT.png
  native  process_file(..., Options(coordinate_system="native"))   same grid as gdal_translate
  4326    process_file(..., Options())                             the default: warp to EPSG:4326
and prints wall times, the ratio geoworker/gdal and peak RSS in MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoworker.processing.sample import SAMPLE_CRS, SAMPLE_ORIGIN, noise_hash, scene_block  # noqa: E402

FILES = {
    "rgb": "rgb_striped_100mb.tif",
    "dem": "dem_tiled_100mb.tif",
    "big": "big_bigtiff_1gb.tif",
}


def _dem_block(row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
    """Elevation-like uint16: long-wave relief, ridges, terraces and sensor noise."""
    r = np.arange(row0, row0 + rows, dtype=np.float32)[:, None]
    c = np.arange(col0, col0 + cols, dtype=np.float32)[None, :]
    z = (2200 + 400 * np.sin(r / 1900.0) * np.cos(c / 2300.0) + 150 * np.sin((r + 2 * c) / 610.0)
         + 60 * np.cos((3 * r - c) / 170.0))
    z = np.floor(z / 2.0) * 2.0  # terracing: compressible like a real DEM
    noise = (noise_hash(r.astype(np.int64), c.astype(np.int64), 11) % np.uint32(7)).astype(np.float32) - 3
    return (z + noise).astype(np.uint16)


def _write(path: Path, width: int, height: int, count: int, dtype: str, block, **profile) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    tmp = path.with_suffix(".part")
    with rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS="ALL_CPUS"):
        with rasterio.open(tmp, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                           crs=SAMPLE_CRS, transform=from_origin(*SAMPLE_ORIGIN, 0.5, 0.5), **profile) as dst:
            step = 512
            for row in range(0, height, step):
                rows = min(step, height - row)
                data = block(row, 0, rows, width)
                dst.write(data if data.ndim == 3 else data[None], window=Window(0, row, width, rows))
    os.replace(tmp, path)


def generate(data_dir: Path, which: list[str]) -> dict[str, Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: data_dir / FILES[k] for k in which}
    specs = {
        # 5800 x 5800 x 3 bytes = 100.9 MB, one-row strips as most exporters write them
        "rgb": lambda p: _write(p, 5800, 5800, 3, "uint8", scene_block, photometric="RGB", interleave="pixel"),
        # about 100 MB after DEFLATE + horizontal predictor
        "dem": lambda p: _write(p, 13000, 13000, 1, "uint16", _dem_block, tiled=True, blockxsize=512,
                                blockysize=512, compress="deflate", predictor=2, zlevel=6),
        # 19000 x 19000 x 3 = 1.08 GB, forced BigTIFF
        "big": lambda p: _write(p, 19000, 19000, 3, "uint8", scene_block, tiled=True, blockxsize=512,
                                blockysize=512, bigtiff="YES", photometric="RGB", interleave="pixel"),
    }
    for key, path in paths.items():
        if not path.exists():
            t0 = time.perf_counter()
            print(f"generating {path.name} ...", flush=True)
            specs[key](path)
            print(f"  {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
    return paths


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run cmd under /usr/bin/time; return (wall seconds, peak RSS in MB of the whole process).

    Not wait4's rusage: Linux carries the forking parent's high-water RSS across exec
    into the child's ru_maxrss, so a child of this (large) process would report ours.
    `time` is a small parent, and its %M is the child's own peak.
    """
    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        # cwd=ROOT: `python -c` puts the working directory first on sys.path, so a stray
        # module there (another tool's /tmp/nt.py was imported this way) would be measured too.
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
        peak_kb = float(rss_file.read().strip().splitlines()[-1])
    return wall, peak_kb / 1024.0


GEOWORKER = """
import json, sys
from geoworker.processing import Options, process_file
opts = Options(coordinate_system=sys.argv[3], max_file_size=1 << 40)
r = process_file(sys.argv[1], sys.argv[2], opts)
print(json.dumps(r["timings"]), file=sys.stderr)
"""


def run_one(path: Path, repeat: int, out_root: Path) -> dict:
    gdal_out = out_root / "gdal.png"
    runs = {
        "gdal": ["gdal_translate", "-q", "-of", "PNG", "-outsize", "4096", "0", "-r", "average", "-scale",
                 "-ot", "Byte", str(path), str(gdal_out)],
        "native": [sys.executable, "-c", GEOWORKER, str(path), str(out_root / "native"), "native"],
        "4326": [sys.executable, "-c", GEOWORKER, str(path), str(out_root / "wgs84"), "EPSG:4326"],
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, cmd in runs.items():
            wall, rss = measure(cmd, env)
            prev = best.get(name)
            best[name] = (min(wall, prev[0]) if prev else wall, max(rss, prev[1]) if prev else rss)
    gdal_wall = best["gdal"][0]
    sizes = {"gdal": gdal_out.stat().st_size,
             "native": (out_root / "native" / (path.stem + ".png")).stat().st_size,
             "4326": (out_root / "wgs84" / (path.stem + ".png")).stat().st_size}
    return {name: {"wall_s": round(w, 2), "ratio": round(w / gdal_wall, 2), "peak_rss_mb": round(r),
                   "png_mb": round(sizes[name] / 1e6, 1)} for name, (w, r) in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "_data")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="rgb,dem,big")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if not shutil.which("gdal_translate"):
        raise SystemExit("gdal_translate not found: apt-get install -y gdal-bin")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time not found: apt-get install -y time")
    which = [w for w in args.only.split(",") if w]
    paths = generate(args.data, which)
    results = {}
    print(f"{'file':<24}{'size':>9}  {'run':<7}{'wall s':>8}{'x gdal':>8}{'RSS MB':>8}{'PNG MB':>8}")
    for key, path in paths.items():
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            res = run_one(path, args.repeat, Path(tmp))
        results[key] = res
        for name, r in res.items():
            print(f"{path.name:<24}{path.stat().st_size / 1e6:>7.0f}MB  {name:<7}{r['wall_s']:>8.2f}"
                  f"{r['ratio']:>8.2f}{r['peak_rss_mb']:>8}{r['png_mb']:>8.1f}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
