"""Where the output lands, checked against `gdalwarp -t_srs EPSG:4326` on the same file.

Every case is a raster the test writes: a pole inside the image (north and south), a
full-disk geostationary image, a scene across the antimeridian, a rotated grid, an
RPC-only scene, a geotransform without a CRS, and Mars. The PNG's world file and the
metadata's bounds_wgs84 and corners must agree with gdalwarp's output bounds within one
output pixel, and the image must cover about as much of its grid as gdalwarp's does.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine
from loguru import logger
from PIL import Image

from geoworker.processing import Options, process_file
from geoworker.processing.georef import transform_from_world_file
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

pytestmark = pytest.mark.skipif(not shutil.which("gdalwarp"), reason="gdal-bin is not installed")


def gdalwarp(src, tmp_path, *extra, t_srs="EPSG:4326"):
    """gdalwarp with an alpha band; returns (the finished process, the output path)."""
    out = tmp_path / "gdalwarp.tif"
    proc = subprocess.run(["gdalwarp", "-q", "-overwrite", "-t_srs", t_srs, "-dstalpha", *extra, str(src), str(out)],
                          capture_output=True, text=True, timeout=120)
    return proc, out


def gdal_grid(path):
    """(west, south, east, north) of a GDAL output and the share of its pixels that are not transparent."""
    with rasterio.open(path) as ds:
        return tuple(ds.bounds), float((ds.read(ds.count) > 0).mean())


def our_grid(out, stem):
    """(west, south, east, north) from our world file and PNG size, (pixel x, pixel y), opaque share."""
    transform = transform_from_world_file((out / f"{stem}.pgw").read_text().split())
    with Image.open(out / f"{stem}.png") as img:
        width, height = img.size
        alpha = np.asarray(img)[..., -1] if img.mode in ("LA", "RGBA") else np.full((height, width), 255)
    west, north = transform.c, transform.f
    east, south = west + width * transform.a, north + height * transform.e
    return (west, south, east, north), (abs(transform.a), abs(transform.e)), float((alpha > 0).mean())


def assert_within_a_pixel(ours, reference, pixel, what):
    px, py = pixel
    for name, a, b, tolerance in zip(("west", "south", "east", "north"), ours, reference, (px, py, px, py)):
        assert abs(a - b) <= tolerance * 1.0001, f"{what}: {name} {a} vs gdalwarp's {b} (pixel {tolerance})"


def check_against_gdalwarp(src, tmp_path, options=None, *gdal_extra):
    """Run both; compare world file, bounds_wgs84, corners and coverage; return our metadata."""
    out = tmp_path / "out"
    result = process_file(src, out, options or Options())
    proc, reference = gdalwarp(src, tmp_path, *gdal_extra)
    assert proc.returncode == 0, proc.stderr
    gdal_bounds, gdal_cover = gdal_grid(reference)
    stem = src.stem
    bounds, pixel, cover = our_grid(out, stem)
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["output"]["crs_epsg"] == 4326
    assert_within_a_pixel(bounds, gdal_bounds, pixel, "world file")
    assert_within_a_pixel(meta["bounds_wgs84"], gdal_bounds, pixel, "bounds_wgs84")
    west, south, east, north = bounds
    for name, corner in meta["corners_wgs84"].items():
        if corner is not None:  # a corner in space has no longitude
            assert west - pixel[0] <= corner[0] <= east + pixel[0], name
            assert south - pixel[1] <= corner[1] <= north + pixel[1], name
    assert cover > 0.5, "the image is (nearly) blank"
    assert abs(cover - gdal_cover) < 0.05, f"covers {cover:.3f} of its grid, gdalwarp {gdal_cover:.3f}"
    return meta, result


def test_polar_north_with_the_pole_inside(tmp_path):
    src = rasters.polar(tmp_path / "arctic.tif", epsg=3413)
    meta, _ = check_against_gdalwarp(src, tmp_path)
    assert meta["bounds_wgs84"][3] == pytest.approx(90.0)  # the pole, not the top edge's latitude
    assert meta["bounds_wgs84"][0] == -180.0 and meta["bounds_wgs84"][2] == 180.0


def test_polar_south_with_the_pole_inside(tmp_path):
    src = rasters.polar(tmp_path / "antarctic.tif", epsg=3031, pixel=30_000.0)
    meta, _ = check_against_gdalwarp(src, tmp_path)
    assert meta["bounds_wgs84"][1] == pytest.approx(-90.0)


def test_full_disk_geostationary_is_warped_with_space_transparent(tmp_path):
    src = rasters.geostationary_full_disk(tmp_path / "goes.tif")
    meta, result = check_against_gdalwarp(src, tmp_path)
    assert set(meta["corners_wgs84"].values()) == {None}  # the four corners are in space
    west, south, east, north = meta["bounds_wgs84"]
    assert west < -150 and east > 0 and south < -60 and north > 60  # the disk around 75 W


def test_across_the_antimeridian_uses_continuous_longitudes(tmp_path):
    src = rasters.across_antimeridian(tmp_path / "utm60.tif")
    # plain gdalwarp makes a strip round the globe; told CENTER_LONG, it does what we do by default
    proc, strip = gdalwarp(src, tmp_path)
    assert proc.returncode == 0 and gdal_grid(strip)[0][2] - gdal_grid(strip)[0][0] > 350
    meta, _ = check_against_gdalwarp(src, tmp_path, None, "--config", "CENTER_LONG", "180")
    west, _, east, _ = meta["bounds_wgs84"]
    assert 178 < west < 180 < east < 185
    assert all(west <= corner[0] <= east for corner in meta["corners_wgs84"].values())


def test_across_the_antimeridian_in_web_mercator_x_continues_past_the_worlds_edge(tmp_path):
    """coordinate_system=EPSG:3857: gdalwarp makes a 366 x 4 strip of 109 km pixels round the world;
    we make gdalwarp's grid on a Mercator centred on 180 degrees, shifted back by half the world."""
    src = rasters.across_antimeridian(tmp_path / "utm60.tif")
    proc, strip = gdalwarp(src, tmp_path, t_srs="EPSG:3857")
    assert proc.returncode == 0 and gdal_grid(strip)[0][2] - gdal_grid(strip)[0][0] > 39e6  # the strip
    out = tmp_path / "out"
    process_file(src, out, Options(coordinate_system="EPSG:3857"))
    (tmp_path / "far").mkdir()
    far = "+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=180 +x_0=0 +y_0=0 +k=1 +units=m +nadgrids=@null +no_defs"
    proc, reference = gdalwarp(src, tmp_path / "far", t_srs=far)
    assert proc.returncode == 0, proc.stderr
    (west, south, east, north), cover = gdal_grid(reference)
    half = 20037508.342789244
    bounds, pixel, our_cover = our_grid(out, "utm60")
    assert_within_a_pixel(bounds, (west + half, south, east + half, north), pixel, "world file")
    assert bounds[0] < half < bounds[2] and pixel[0] < 3000  # across the edge, at about the source's resolution
    assert abs(our_cover - cover) < 0.05
    meta = json.loads((out / "utm60.json").read_text())
    assert meta["output"]["crs_epsg"] == 3857 and 178 < meta["bounds_wgs84"][0] < 180 < meta["bounds_wgs84"][2]


def test_rotated_grid(tmp_path):
    src = rasters.write(tmp_path / "rotated.tif", rasters.texture(300, 400),
                        transform=Affine(20.0, 4.0, 414000.0, 3.0, -20.0, 1698000.0))
    check_against_gdalwarp(src, tmp_path)


def test_rpc_only_scene_is_orthorectified_with_its_model(tmp_path):
    src = rasters.rpc_only(tmp_path / "scene.tif")
    meta, result = check_against_gdalwarp(src, tmp_path)
    assert meta["georeferencing"] == "rpc" and any("RPC" in w for w in result["warnings"])
    # a height moves the footprint (the model has a height term), as gdalwarp's RPC_HEIGHT does
    high = tmp_path / "high"
    high.mkdir()
    meta_high, _ = check_against_gdalwarp(src, high, Options(rpc_height=800), "-to", "RPC_HEIGHT=800")
    pixel = meta["output"]["transform"][0]
    assert abs(meta_high["bounds_wgs84"][0] - meta["bounds_wgs84"][0]) > 5 * pixel


def test_rpc_only_scene_native_keeps_the_sensor_grid_and_says_so(tmp_path):
    src = rasters.rpc_only(tmp_path / "scene.tif")
    result = process_file(src, tmp_path / "out", Options(coordinate_system="native"))
    assert result["outputs"]["prj"] is None
    assert any("raw sensor grid" in w and "EPSG:4326 orthorectifies" in w for w in result["warnings"])


def gdal_translate_world_file(src, tmp_path, width, height):
    dst = tmp_path / "translate.png"
    subprocess.run(["gdal_translate", "-q", "-of", "PNG", "-outsize", str(width), str(height), "-co", "WORLDFILE=YES",
                    str(src), str(dst)], check=True, timeout=60)
    return [float(v) for v in dst.with_suffix(".wld").read_text().split()]


def test_geotransform_without_crs_keeps_the_grid_and_says_the_crs_is_unknown(tmp_path):
    src = rasters.geotransform_without_crs(tmp_path / "nocrs.tif")
    # gdalwarp keeps the grid too (and labels it EPSG:4326, which UTM-sized numbers are not)
    proc, reference = gdalwarp(src, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    try:
        result = process_file(src, tmp_path / "out", Options())  # EPSG:4326 asked: native instead, no failure
    finally:
        logger.remove(sink)
    meta = json.loads((tmp_path / "out" / "nocrs.json").read_text())
    assert meta["georeferencing"] == "no_crs" and meta["crs"] is None and meta["bounds_wgs84"] is None
    assert result["outputs"]["prj"] is None and meta["output"]["crs"] is None
    assert any("the CRS is unknown" in w for w in meta["warnings"])
    assert any("EPSG:4326 was not applied" in w for w in meta["warnings"])
    assert any(line.startswith("nocrs.tif: ") and "the CRS is unknown" in line for line in lines)
    ours = [float(v) for v in (tmp_path / "out" / "nocrs.pgw").read_text().split()]
    assert ours == pytest.approx(gdal_translate_world_file(src, tmp_path, 50, 40), rel=1e-12)
    assert ours[4:] == [414001.0, 1697999.0]  # the geotransform, not an identity
    bounds, pixel, _ = our_grid(tmp_path / "out", "nocrs")
    assert_within_a_pixel(bounds, gdal_grid(reference)[0], pixel, "world file")


def test_mars_is_named_in_one_line_and_kept_native(tmp_path):
    src = rasters.on_mars(tmp_path / "mars.tif")
    proc, _ = gdalwarp(src, tmp_path)
    assert proc.returncode != 0 and "celestial body" in proc.stderr  # GDAL/PROJ refuse to take it to Earth
    result = process_file(src, tmp_path / "out", Options())
    meta = json.loads((tmp_path / "out" / "mars.json").read_text())
    warning = [w for w in result["warnings"] if "not applied" in w]
    assert len(warning) == 1 and 'Mars_2000_IAU_IAG' in warning[0] and "3,396,190 m" in warning[0]
    assert "{" not in warning[0] and len(warning[0]) < 400  # no PROJJSON dump
    assert meta["body"].startswith('ellipsoid "Mars_2000_IAU_IAG"') and meta["bounds_wgs84"] is None
    assert "Mars2000" in (tmp_path / "out" / "mars.prj").read_text()
    ours = [float(v) for v in (tmp_path / "out" / "mars.pgw").read_text().split()]
    assert ours == pytest.approx(gdal_translate_world_file(src, tmp_path, 100, 80), rel=1e-12)


def test_mars_to_a_mars_crs_is_warped_as_gdalwarp_does(tmp_path):
    src = rasters.on_mars(tmp_path / "mars.tif")
    out = tmp_path / "out"
    result = process_file(src, out, Options(coordinate_system=rasters.MARS_GEOGRAPHIC))
    assert not [w for w in result["warnings"] if "not applied" in w]
    proc, reference = gdalwarp(src, tmp_path, t_srs=rasters.MARS_GEOGRAPHIC)
    assert proc.returncode == 0, proc.stderr
    bounds, pixel, cover = our_grid(out, "mars")
    gdal_bounds, gdal_cover = gdal_grid(reference)
    assert_within_a_pixel(bounds, gdal_bounds, pixel, "world file")
    assert cover == pytest.approx(gdal_cover, abs=0.05)
