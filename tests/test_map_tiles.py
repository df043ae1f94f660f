"""geotiff_to_tiles: the zooms, the tile set and the pixels against gdal2tiles.py, the archive, the rules.

Inputs are written here with rasterio. The reference is `gdal2tiles.py --xyz -r average`
(Debian's python3-gdal) on the same file: the same zooms, the same set of non-empty tiles,
and per tile a mean absolute difference of a few grey levels on the pixels both call opaque.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import TileType
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from geoworker.errors import BadParams, TooLarge, Unsupported
from geoworker.processing import Options, process_file
from geoworker.processing.map_options import TileOptions, check_tile_params, check_zoom
from geoworker.processing.sample import scene_block
from geoworker.processing.tiles import (default_zooms, make_tiles, resolution, tile_range, tile_transform,
                                       zoom_for_pixel_size)
import rasters  # tests/rasters.py

GDAL2TILES = shutil.which("gdal2tiles.py") or shutil.which("gdal2tiles")
needs_gdal2tiles = pytest.mark.skipif(GDAL2TILES is None, reason="gdal2tiles.py (apt python3-gdal) is not installed")
# Tolerances reached (docs/BENCHMARKS.md): the worst per-tile mean absolute difference on pixels
# opaque in both, on a textured orthophoto. gdal2tiles samples nearest at the source resolution
# and box-averages 4 x 4; we area-average, then place by nearest. Against GDAL's exact `average`
# warp from the source (an independent reference) we are closer than gdal2tiles is (2.6 vs 4.3).
MAX_TILE_MAE = 5.0  # against gdal2tiles.py --xyz -r average (measured: 4.6)
MAX_EXACT_MAE = 3.0  # against rasterio's reproject(average) of the source, per deepest tile (measured: 2.6)


def tiles(src, out_dir, **params):
    result = make_tiles(src, out_dir, TileOptions.from_mapping({}, {"tile_dir": True, **params}))
    return result, out_dir


def tile_files(root: Path, ext: str = "png") -> dict[tuple[int, int, int], Path]:
    return {(int(p.parts[-3]), int(p.parts[-2]), int(p.stem)): p for p in root.glob(f"*/*/*.{ext}")}


def rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA")).astype(int)


def ortho(path: Path, size: int = 1000, pixel: float = 1.0) -> Path:
    """Orthophoto-like RGB (fields, roads, roofs) with a nodata collar and a nodata hole of several tiles."""
    data = np.maximum(scene_block(0, 0, size, size), 1)  # 0 is nodata: no valid pixel is
    data[:, :, :40] = 0  # a collar on the west side
    data[:, 200:900, 250:950] = 0  # a hole of several whole tiles at the deepest zoom
    return rasters.write(path, data, nodata=0, transform=from_origin(*rasters.ORIGIN, pixel, pixel), tiled=True)


def gdal2tiles(src: Path, out: Path, *extra: str) -> dict[tuple[int, int, int], Path]:
    subprocess.run([GDAL2TILES, "--xyz", "-r", "average", "--processes=1", "-q", "-w", "none", *extra, str(src),
                    str(out)], check=True, timeout=300, capture_output=True)
    return tile_files(out)


# --- pure functions -------------------------------------------------------------------


def test_zoom_rules_are_gdal2tiles():
    assert zoom_for_pixel_size(resolution(18)) == 18  # exactly a zoom's resolution: that zoom
    assert zoom_for_pixel_size(resolution(18) * 0.99) == 18  # finer than 18 but not as fine as 19: no upsampling
    assert zoom_for_pixel_size(resolution(18) * 1.01) == 17
    assert zoom_for_pixel_size(1e9) == 0 and zoom_for_pixel_size(1e-9) == 24
    # 0.518 m pixels, 5024 of them (the bench orthophoto): zooms 13-18 as gdal2tiles made them
    assert default_zooms(0.518, 5024, 5024) == (13, 18)


def test_tile_range_counts_rows_from_the_top():
    half = 20037508.342789244
    assert tile_range((-half, -half, half, half), 0) == (0, 0, 0, 0)
    assert tile_range((-half, 0.0, 0.0, half), 1) == (0, 0, 0, 0)  # the north-west quarter: row 0
    assert tile_range((1.0, -half, half, -1.0), 1) == (1, 1, 1, 1)


@pytest.mark.parametrize("params, key", [
    ({"zoom": "3-40"}, "zoom"), ({"zoom": "9-5"}, "zoom"), ({"zoom": "x"}, "zoom"), ({"zoom": [1, 2, 3]}, "zoom"),
    ({"tile_format": "gif"}, "tile_format"), ({"tile_dir": "maybe"}, "tile_dir"), ({"stretch": "weird"}, "stretch"),
])
def test_bad_params_are_refused_naming_the_key(params, key):
    with pytest.raises(BadParams, match=key):
        check_tile_params(params)


def test_zoom_param_forms():
    assert check_zoom("12-18") == (12, 18) and check_zoom(" 7 ") == (7, 7) and check_zoom([3, 5]) == (3, 5)
    assert check_zoom(None) is None and check_zoom("auto") is None and check_zoom(9) == (9, 9)
    assert TileOptions.from_mapping({}, {"tileFormat": "jpg", "tileDir": "true"}).tile_format == "jpeg"


# --- against gdal2tiles ------------------------------------------------------------------


@needs_gdal2tiles
def test_same_zooms_tile_set_and_pixels_as_gdal2tiles(tmp_path):
    src = ortho(tmp_path / "ortho.tif")
    reference = gdal2tiles(src, tmp_path / "g2t")
    result, out = tiles(src, tmp_path / "ours")
    ours = tile_files(out / "tiles")
    zooms = sorted({z for z, _, _ in reference})
    assert (result["metadata"]["output"]["minzoom"], result["metadata"]["output"]["maxzoom"]) == (zooms[0], zooms[-1])
    non_empty = {k for k, p in reference.items() if rgba(p)[..., 3].any()}
    assert len(non_empty) < len(reference)  # gdal2tiles wrote transparent tiles over the hole ...
    assert set(ours) == non_empty  # ... which we skip; every other tile is there, and no more
    worst = 0.0
    for key in sorted(non_empty):
        a, b = rgba(reference[key]), rgba(ours[key])
        both = (a[..., 3] == 255) & (b[..., 3] == 255)
        if both.sum() < 50:
            continue
        worst = max(worst, float(np.abs(a[both][:, :3] - b[both][:, :3]).mean()))
    assert worst <= MAX_TILE_MAE, worst
    maxzoom, exact_worst = zooms[-1], 0.0
    with rasterio.open(src) as ds:
        for key in [k for k in sorted(ours) if k[0] == maxzoom]:
            exact = np.zeros((4, 256, 256), np.uint8)
            reproject(rasterio.band(ds, [1, 2, 3]), exact, dst_transform=tile_transform(*key), dst_crs="EPSG:3857",
                      resampling=Resampling.average, dst_alpha=4)
            e, b = np.moveaxis(exact, 0, -1).astype(int), rgba(ours[key])
            both = (e[..., 3] == 255) & (b[..., 3] == 255)
            if both.sum() >= 50:
                exact_worst = max(exact_worst, float(np.abs(e[both][:, :3] - b[both][:, :3]).mean()))
    assert exact_worst <= MAX_EXACT_MAE, exact_worst
    print(f"worst per-tile MAE: {worst:.2f} against gdal2tiles, {exact_worst:.2f} against an exact average warp")


@needs_gdal2tiles
def test_palette_tiles_keep_palette_colours_and_gdal2tiles_set(tmp_path):
    classes = np.ones((600, 600), np.uint8)
    classes[:, 200:400] = 2
    classes[300:, :] = 3
    classes[:50, :] = 0  # nodata (a TIFF colour table has no alpha to say so)
    cmap = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
    src = rasters.write(tmp_path / "classes.tif", classes, photometric="palette", colormap=cmap, nodata=0,
                        transform=from_origin(*rasters.ORIGIN, 1.0, 1.0))
    expanded = tmp_path / "rgba.vrt"  # gdal2tiles takes palettes expanded, as it says
    subprocess.run(["gdal_translate", "-q", "-of", "VRT", "-expand", "rgba", str(src), str(expanded)], check=True,
                   timeout=60)
    reference = {k for k, p in gdal2tiles(expanded, tmp_path / "g2t").items() if rgba(p)[..., 3].any()}
    _, out = tiles(src, tmp_path / "ours")
    ours = tile_files(out / "tiles")
    assert set(ours) == reference
    colours = set()
    for path in ours.values():
        px = rgba(path)
        colours |= {tuple(c) for c in px[px[..., 3] > 0][:, :3]}
        assert set(np.unique(px[..., 3])) <= {0, 255}  # nearest: no half-transparent edges
    assert colours == {(255, 0, 0), (0, 255, 0), (0, 0, 255)}


# --- the rules the PNG task uses -----------------------------------------------------------


def test_nodata_is_transparent_and_constant_colour_stays_exact(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=600, collar=100)
    result, out = tiles(src, tmp_path / "ours")
    maxzoom = result["metadata"]["output"]["maxzoom"]
    seen_transparent = False
    for (z, _, _), path in tile_files(out / "tiles").items():
        px = rgba(path)
        opaque = px[..., 3] == 255
        assert (px[opaque][:, :3] == (200, 150, 100)).all()  # averages of one colour are that colour
        seen_transparent |= bool((px[..., 3] == 0).any()) and z == maxzoom
    assert seen_transparent


def test_16_bit_stretch_matches_the_png_task(tmp_path):
    src = rasters.uint16_ramp(tmp_path / "dem.tif", height=400, width=500, lo=1000, hi=4000)
    result, out = tiles(src, tmp_path / "ours")
    png = process_file(src, tmp_path / "png", Options(coordinate_system="native"))
    ranges = json.loads((tmp_path / "png" / png["outputs"]["metadata"]).read_text())["stretch"]["ranges"]
    assert ranges[0][0] > 1000  # the 2-98 % stretch, not the full range
    maxzoom = result["metadata"]["output"]["maxzoom"]
    deepest = [rgba(p) for (z, _, _), p in tile_files(out / "tiles").items() if z == maxzoom]
    grey = np.concatenate([t[t[..., 3] == 255][:, 0] for t in deepest])
    assert grey.min() == 0 and grey.max() == 255  # stretched: the 2 % at each end are clipped
    ref = np.asarray(Image.open(tmp_path / "png" / png["outputs"]["image"]).convert("L")).astype(int)
    assert abs(grey.mean() - ref.mean()) < 4  # same stretch, same picture
    assert all((t[..., 0] == t[..., 1]).all() for t in deepest)  # grey, not a colormap


def test_float_nan_is_transparent_and_stretched(tmp_path):
    data = np.tile(np.linspace(-5, 40, 300, dtype=np.float32), (300, 1))
    data[:, :60] = np.nan
    src = rasters.write(tmp_path / "f.tif", data, transform=from_origin(*rasters.ORIGIN, 1.0, 1.0))
    result, out = tiles(src, tmp_path / "ours", zoom="17")
    px = np.concatenate([rgba(p).reshape(-1, 4) for p in tile_files(out / "tiles").values()])
    opaque = px[px[:, 3] == 255][:, 0]
    assert opaque.min() <= 5 and opaque.max() >= 250
    assert (px[:, 3] == 0).any()
    with rasterio.open(src) as ds:
        assert ds.nodata is None
    assert (px[..., 3] == 0).any()


def test_archive_header_metadata_and_tilejson(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "site.tif", size=500, collar=30)
    result, out = tiles(src, tmp_path / "ours")
    assert result["outputs"] == {"pmtiles": "site.pmtiles", "tilejson": "site.tilejson.json", "tile_dir": "tiles"}
    with open(out / "site.pmtiles", "rb") as fh:
        get = MmapSource(fh)
        reader = Reader(get)
        header, meta = reader.header(), reader.metadata()
        archived = {zxy: data for zxy, data in all_tiles(get)}
    files = tile_files(out / "tiles")
    assert set(archived) == set(files) and all(archived[k] == files[k].read_bytes() for k in files)
    assert header["tile_type"] == TileType.PNG and header["clustered"]
    out_meta = result["metadata"]["output"]
    assert (header["min_zoom"], header["max_zoom"]) == (out_meta["minzoom"], out_meta["maxzoom"])
    west, south, east, north = out_meta["bounds_wgs84"]
    assert abs(header["min_lon_e7"] / 1e7 - west) < 1e-6 and abs(header["max_lat_e7"] / 1e7 - north) < 1e-6
    assert 44.0 < header["center_lon_e7"] / 1e7 < 44.5 and 15.0 < header["center_lat_e7"] / 1e7 < 15.5
    tj = json.loads((out / "site.tilejson.json").read_text())
    assert tj["tilejson"] == "3.0.0" and tj["tiles"] == ["tiles/{z}/{x}/{y}.png"] and tj["scheme"] == "xyz"
    assert (tj["minzoom"], tj["maxzoom"]) == (out_meta["minzoom"], out_meta["maxzoom"])
    assert tj["bounds"] == pytest.approx([west, south, east, north]) and len(tj["center"]) == 3
    assert meta["format"] == "png" and meta["minzoom"] == tj["minzoom"]


@pytest.mark.parametrize("fmt, ext, magic", [("webp", "webp", b"RIFF"), ("jpeg", "jpg", b"\xff\xd8")])
def test_webp_and_jpeg_tiles(tmp_path, fmt, ext, magic):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=300, collar=20)
    result, out = tiles(src, tmp_path / "ours", tile_format=fmt, zoom="16-17")
    files = tile_files(out / "tiles", ext)
    assert files and all(p.read_bytes().startswith(magic) for p in files.values())
    assert {z for z, _, _ in files} == {16, 17}
    tj = json.loads((out / "in.tilejson.json").read_text())
    assert tj["tiles"] == [f"tiles/{{z}}/{{x}}/{{y}}.{ext}"]


def test_zoom_override_and_too_many_tiles(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=300, collar=20)
    result, out = tiles(src, tmp_path / "ours", zoom="12-14")
    assert {z for z, _, _ in tile_files(out / "tiles")} == {12, 13, 14}
    wide = rasters.write(tmp_path / "wide.tif", np.full((50, 100), 9, np.uint8), crs=CRS.from_epsg(4326),
                         transform=from_origin(10.0, 50.0, 0.1, 0.1))  # 10 x 5 degrees
    with pytest.raises(TooLarge, match="zoom 0-16 would make up to"):
        tiles(wide, tmp_path / "huge", zoom="0-16")


def test_beyond_85_degrees_is_clipped_and_wholly_outside_is_unsupported(tmp_path):
    grey = np.full((90, 360), 120, np.uint8)
    polar = rasters.write(tmp_path / "arctic.tif", grey, crs=CRS.from_epsg(4326),
                          transform=from_origin(10.0, 89.0, 0.1, 0.1))  # latitudes 80 to 89
    result, out = tiles(polar, tmp_path / "ours", zoom="3-5")
    assert result["metadata"]["output"]["bounds_wgs84"][3] == pytest.approx(85.0511287798066)
    assert tile_files(out / "tiles")
    beyond = rasters.write(tmp_path / "pole.tif", grey, crs=CRS.from_epsg(4326),
                           transform=from_origin(10.0, 89.9, 0.1, 0.04))  # latitudes 86.3 to 89.9
    with pytest.raises(Unsupported, match="wholly beyond 85.05 degrees"):
        tiles(beyond, tmp_path / "none")


def test_across_the_antimeridian_tiles_are_cut_on_both_sides_at_the_zooms_of_its_resolution(tmp_path):
    # a UTM zone 60 scene (central meridian 177 E) from 178.7 E to 175.8 W, near 60 N, 1 km pixels;
    # its twin lies 300 km further west, short of 180 degrees
    data = rasters.gradient_rgb(200, 300)
    crossing = rasters.write(tmp_path / "pacific.tif", data, crs=CRS.from_epsg(32660),
                             transform=from_origin(600_000, 6_700_000, 1000, 1000))
    twin = rasters.write(tmp_path / "twin.tif", data, crs=CRS.from_epsg(32660),
                         transform=from_origin(300_000, 6_700_000, 1000, 1000))
    result, out = tiles(crossing, tmp_path / "ours")
    twin_result, _ = tiles(twin, tmp_path / "twin")
    got, want = result["metadata"]["output"], twin_result["metadata"]["output"]
    assert (got["minzoom"], got["maxzoom"]) == (want["minzoom"], want["maxzoom"])  # not zoom 0 for a world strip
    assert got["maxzoom"] >= 5
    ours = tile_files(out / "tiles")
    last = 2 ** got["maxzoom"] - 1
    xs = {x for z, x, _ in ours if z == got["maxzoom"]}
    assert 0 in xs and last in xs  # both sides of 180 degrees ...
    assert all(x <= 2 or x >= last - 2 for x in xs)  # ... and nothing in between
    doc = json.loads((out / "pacific.tilejson.json").read_text())
    assert doc["bounds"][0] == -180.0 and doc["bounds"][2] == 180.0  # what map libraries can use
    west, _, east, _ = got["bounds_wgs84"]  # the metadata: where the data is, as the PNG task says it
    assert 178 < west < 180 < east < 185
    assert abs(doc["center"][0]) > 175 and 58 < doc["center"][1] < 61  # the data's middle, not 0 degrees
    worst = 0.0
    with rasterio.open(crossing) as ds:
        for key in [k for k in sorted(ours) if k[0] == got["maxzoom"]]:
            exact = np.zeros((4, 256, 256), np.uint8)
            reproject(rasterio.band(ds, [1, 2, 3]), exact, dst_transform=tile_transform(*key), dst_crs="EPSG:3857",
                      resampling=Resampling.average, dst_alpha=4)
            e, b = np.moveaxis(exact, 0, -1).astype(int), rgba(ours[key])
            both = (e[..., 3] == 255) & (b[..., 3] == 255)
            assert both.sum() > 0.8 * max((e[..., 3] == 255).sum(), 1), key  # the same pixels are covered
            worst = max(worst, float(np.abs(e[both][:, :3] - b[both][:, :3]).mean()))
    assert worst <= MAX_EXACT_MAE, worst


def test_no_crs_is_unsupported(tmp_path):
    src = rasters.write(tmp_path / "plain.tif", rasters.gradient_rgb(40, 40), crs=None)
    with pytest.raises(Unsupported, match="no map coordinate system"):
        tiles(src, tmp_path / "out")
