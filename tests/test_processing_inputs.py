"""Every kind of GeoTIFF the platform sends, written by the test, through process_file.

Assertions are on pixels and numbers: kept uint8 values, stretched 16-bit ranges,
transparency where data is invalid, the written PNG's georeferencing as GDAL reads it.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform_bounds

from geoworker.processing import Options, describe_file, process_file, write_sample_orthophoto
from geoworker.processing.georef import transform_from_world_file
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

NATIVE = Options(coordinate_system="native")


def png(out_dir, stem="in"):
    with Image.open(out_dir / f"{stem}.png") as img:
        return img.mode, np.asarray(img)


def run(src, tmp_path, options=NATIVE, **kw):
    out = tmp_path / "out"
    result = process_file(src, out, options, **kw)
    json.dumps(result)  # the queue stores it as jsonb
    return out, result


def world(out_dir, stem="in", ext="pgw"):
    return transform_from_world_file((out_dir / f"{stem}.{ext}").read_text().split())


# --- colour: kept, stretched, transparent ----------------------------------------------


@pytest.mark.parametrize("profile", [
    {},  # striped, uncompressed
    {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "lzw"},
    {"compress": "deflate", "predictor": 2},
    {"tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate", "overviews": [2, 4]},
    {"bigtiff": "YES", "compress": "deflate"},
    {"interleave": "band", "compress": "lzw"},
])
def test_uint8_rgb_values_are_kept_exactly(tmp_path, profile):
    data = rasters.gradient_rgb(90, 130)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", **profile)
    out, result = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "RGB"  # nothing invalid: no alpha
    assert np.array_equal(pixels, np.moveaxis(data, 0, -1))
    assert result["metadata"]["output"]["width"] == 130 and result["metadata"]["output"]["height"] == 90


def test_jpeg_ycbcr_tiff_is_read_close_to_its_values(tmp_path):
    data = np.zeros((3, 64, 64), np.uint8)
    data[0], data[1], data[2] = 180, 90, 40
    src = rasters.write(tmp_path / "in.tif", data, compress="jpeg", photometric="ycbcr", tiled=True,
                        blockxsize=32, blockysize=32)
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "RGB"
    assert np.abs(pixels.astype(int) - [180, 90, 40]).max() <= 4  # lossy codec, flat colour


def test_nodata_collar_is_transparent_and_interior_exact(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=100, collar=10)
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "RGBA"
    assert (pixels[:10, :, 3] == 0).all() and (pixels[:, -10:, 3] == 0).all()
    assert (pixels[10:90, 10:90, 3] == 255).all()
    assert (pixels[10:90, 10:90, :3] == [200, 150, 100]).all()


def test_decimated_nodata_edges_do_not_fade_to_black(tmp_path):
    # 1000 px read at 130: output pixels straddle the collar edge
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=1000, collar=97, tiled=True, blockxsize=256,
                                  blockysize=256)
    out, _ = run(src, tmp_path, Options(coordinate_system="native", max_size=130))
    _, pixels = png(out)
    opaque = pixels[..., 3] == 255
    assert opaque.any() and (~opaque).any()
    assert (pixels[opaque][:, :3] == [200, 150, 100]).all(), "a valid pixel mixed with nodata"
    assert (pixels[~opaque][:, :3] == 0).all()


def test_warp_edges_do_not_fade_to_black(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=400, collar=30)
    out, result = run(src, tmp_path, Options(max_size=200))
    mode, pixels = png(out)
    assert mode == "RGBA" and result["metadata"]["output"]["crs_epsg"] == 4326
    opaque = pixels[..., 3] == 255
    assert (pixels[opaque][:, :3] == [200, 150, 100]).all()
    assert 0.5 < opaque.mean() < 0.8  # the inner 340^2 of 400^2 = 72%, plus the warp's slant


def test_internal_mask_and_alpha_band_become_transparency(tmp_path):
    data = rasters.gradient_rgb(60, 60)
    mask = np.zeros((60, 60), np.uint8)
    mask[5:55, 5:55] = 255
    src = rasters.write(tmp_path / "in.tif", data, mask=mask, photometric="RGB")
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "RGBA" and (pixels[..., 3] == mask).all()
    assert np.array_equal(pixels[5:55, 5:55, :3], np.moveaxis(data, 0, -1)[5:55, 5:55])

    rgba = np.concatenate([data, mask[None]])
    src = rasters.write(tmp_path / "a.tif", rgba, photometric="RGB", alpha="YES")
    with rasterio.open(src) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    out2 = tmp_path / "o2"
    process_file(src, out2, NATIVE)
    mode, pixels = png(out2, "a")
    assert mode == "RGBA" and (pixels[..., 3] == mask).all()


@pytest.mark.parametrize("dtype, lo, hi", [("uint16", 1000, 4000), ("int16", -2000, 3000),
                                           ("float64", -0.5, 0.75)])
def test_high_bit_depth_is_stretched_never_black(tmp_path, dtype, lo, hi):
    ramp = np.linspace(lo, hi, 160)[None, :].repeat(120, 0).astype(dtype)
    src = rasters.write(tmp_path / "in.tif", ramp, tiled=True, blockxsize=64, blockysize=64)
    out, result = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "L"
    assert pixels.min() == 0 and pixels.max() == 255  # 2-98 % stretch saturates both ends
    assert 100 < pixels.mean() < 155
    assert (np.diff(pixels[0].astype(int)) >= 0).all()  # a ramp stays a ramp
    meta = json.loads((out / "in.json").read_text())
    low, high = meta["stretch"]["ranges"][0]
    assert lo < low < lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) < high < hi
    assert meta["statistics"][0]["min"] == pytest.approx(lo, rel=1e-6)


def test_float32_nan_nodata_is_transparent(tmp_path):
    data = np.linspace(0, 1, 80 * 80, dtype=np.float32).reshape(80, 80)
    data[:, :20] = np.nan
    src = rasters.write(tmp_path / "in.tif", data, nodata=float("nan"))
    out, result = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "LA"
    assert (pixels[:, :20, 1] == 0).all() and (pixels[:, 20:, 1] == 255).all()
    assert pixels[:, 20:, 0].max() == 255 and pixels[:, 20:, 0].min() == 0
    meta = json.loads((out / "in.json").read_text())
    assert meta["nodata"] == ["nan"] and meta["statistics"][0]["valid_percent"] == pytest.approx(75.0)


def test_minmax_and_none_stretch(tmp_path):
    src = rasters.uint16_ramp(tmp_path / "in.tif", lo=100, hi=300)
    out, _ = run(src, tmp_path, Options(coordinate_system="native", stretch="minmax"))
    _, pixels = png(out)
    assert pixels[:, 0].max() == 0 and pixels[:, -1].min() == 255
    out2 = tmp_path / "none"
    process_file(src, out2, Options(coordinate_system="native", stretch="none"))
    _, pixels = png(out2)
    assert pixels[0, 0] == 100 and pixels[0, -1] == 255  # clipped, not scaled


# --- band layouts ------------------------------------------------------------------------


def test_one_band_uint8_is_grey_with_values_kept(tmp_path):
    data = (np.arange(50 * 40) % 251 + 1).astype(np.uint8).reshape(50, 40)
    src = rasters.write(tmp_path / "in.tif", data)
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "L" and np.array_equal(pixels, data)


def test_one_band_with_colormap(tmp_path):
    src = rasters.uint16_ramp(tmp_path / "in.tif")
    out, _ = run(src, tmp_path, Options(coordinate_system="native", colormap="viridis"))
    mode, pixels = png(out)
    assert mode == "RGB"
    assert tuple(pixels[0, 0]) == (68, 1, 84) and tuple(pixels[0, -1]) == (253, 231, 37)


def test_two_bands_grey_plus_alpha(tmp_path):
    grey = np.full((40, 40), 120, np.uint8)
    alpha = np.zeros((40, 40), np.uint8)
    alpha[:, 10:] = 255
    src = rasters.write(tmp_path / "in.tif", np.stack([grey, alpha]), photometric="minisblack", alpha="YES")
    with rasterio.open(src) as ds:
        assert ds.colorinterp[1] == ColorInterp.alpha
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "LA" and (pixels[:, :10, 1] == 0).all() and (pixels[:, 10:] == [120, 255]).all()


def test_two_bands_without_alpha_render_band_one(tmp_path):
    data = np.stack([np.full((30, 30), 50, np.uint8), np.full((30, 30), 220, np.uint8)])
    src = rasters.write(tmp_path / "in.tif", data)
    out, _ = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "L" and (pixels == 50).all()


def test_four_band_rgba_and_seven_band_with_band_choice(tmp_path):
    bands = np.stack([np.full((30, 30), 10 * (i + 1), np.uint8) for i in range(7)])
    src = rasters.write(tmp_path / "in.tif", bands)
    out, result = run(src, tmp_path)
    mode, pixels = png(out)
    assert mode == "RGB" and tuple(pixels[0, 0]) == (10, 20, 30)
    assert any("7 data bands" in w for w in result["warnings"])
    out2 = tmp_path / "pick"
    process_file(src, out2, Options(coordinate_system="native", bands=(7, 5, 2)))
    _, pixels = png(out2)
    assert tuple(pixels[0, 0]) == (70, 50, 20)
    from geoworker.errors import BadParams

    with pytest.raises(BadParams, match="between 1 and 7"):
        process_file(src, tmp_path / "bad", Options(bands=(8, 1, 2)))


def test_palette_keeps_colours_and_uses_nearest(tmp_path):
    src = rasters.palette(tmp_path / "in.tif", size=64)
    out, _ = run(src, tmp_path, Options(coordinate_system="native", max_size=16))
    mode, pixels = png(out)
    assert mode == "RGB" and pixels.shape == (16, 16, 3)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert colours == {(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)}  # no blended colours
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[-1, -1]) == (255, 255, 0)


# --- geometry -------------------------------------------------------------------------------


def test_native_png_is_georeferenced_for_gdal(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(300, 500), photometric="RGB")
    out, result = run(src, tmp_path, Options(coordinate_system="native", max_size=100))
    with rasterio.open(src) as ds:
        expected = ds.transform @ Affine.scale(500 / 100, 300 / 60)
    assert world(out).almost_equals(expected, precision=1e-9)
    with rasterio.open(out / "in.png") as png_ds:
        assert png_ds.crs == CRS.from_epsg(32638)
        assert png_ds.transform.almost_equals(expected, precision=1e-9)
        assert (png_ds.width, png_ds.height) == (100, 60)
    assert "UTM" in (out / "in.prj").read_text()


def test_default_output_is_wgs84_and_bounds_match_rasterio(tmp_path):
    src = write_sample_orthophoto(tmp_path / "in.tif", size=256)
    out, result = run(src, tmp_path, Options())
    meta = json.loads((out / "in.json").read_text())
    with rasterio.open(src) as ds:
        expected = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    assert meta["bounds_wgs84"] == pytest.approx(list(expected), abs=1e-12)
    assert result["metadata"]["bounds_wgs84"] == pytest.approx(list(expected), abs=1e-12)
    with rasterio.open(out / "in.png") as png_ds:
        assert png_ds.crs == CRS.from_epsg(4326)
        west, south, east, north = png_ds.bounds
        assert png_ds.transform.almost_equals(world(out), precision=1e-12)
    # the warped image covers the source footprint, to within a pixel
    px = png_ds.transform.a
    assert west == pytest.approx(expected[0], abs=px) and east == pytest.approx(expected[2], abs=px)
    assert south == pytest.approx(expected[1], abs=px) and north == pytest.approx(expected[3], abs=px)
    corners = meta["corners_wgs84"]
    assert 44.0 < corners["upper_left"][0] < 44.5 and 15.0 < corners["upper_left"][1] < 15.6
    assert meta["output"]["crs"]["epsg"] == 4326 and 250 <= max(meta["output"]["width"], meta["output"]["height"]) <= 270


def test_rotated_transform_world_file_keeps_rotation(tmp_path):
    t = Affine(2.0, 0.4, 414000.0, 0.3, -2.0, 1698000.0)
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(80, 100), transform=t, photometric="RGB")
    out, result = run(src, tmp_path, Options(coordinate_system="native", max_size=50))
    expected = t @ Affine.scale(2, 2)
    wf = world(out)
    assert wf.almost_equals(expected, precision=1e-9) and wf.b == pytest.approx(0.8) and wf.d == pytest.approx(0.6)
    with rasterio.open(out / "in.png") as png_ds:
        assert png_ds.transform.almost_equals(expected, precision=1e-9)
    meta = json.loads((out / "in.json").read_text())
    assert meta["rotated"] is True
    # and warped to lon/lat it becomes north-up
    out2 = tmp_path / "wgs"
    process_file(src, out2, Options(max_size=50))
    wf2 = world(out2)
    assert wf2.b == 0 and wf2.d == 0 and wf2.e < 0


def test_no_crs_keeps_pixel_grid_and_says_so(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(40, 60), crs=None, photometric="RGB")
        out, result = run(src, tmp_path, Options())
    assert result["outputs"]["prj"] is None and not (out / "in.prj").exists()
    meta = json.loads((out / "in.json").read_text())
    assert meta["crs"] is None and meta["bounds_wgs84"] is None and meta["georeferencing"] == "none"
    assert any("no coordinate reference system" in w for w in result["warnings"])
    assert world(out).almost_equals(Affine.identity(), precision=1e-12)
    _, pixels = png(out)
    assert pixels.shape == (40, 60, 3)


def test_gcp_only_derives_transform(tmp_path):
    src = rasters.gcp_only(tmp_path / "in.tif", size=100)
    out, result = run(src, tmp_path)
    meta = json.loads((out / "in.json").read_text())
    assert meta["georeferencing"] == "gcps" and meta["gcp_count"] == 4 and meta["crs"]["epsg"] == 32638
    assert meta["transform"] == pytest.approx([2.0, 0.0, 414000.0, 0.0, -2.0, 1698000.0])
    assert world(out).almost_equals(Affine(2, 0, 414000, 0, -2, 1698000), precision=1e-6)
    assert any("ground control points" in w for w in result["warnings"])


def test_one_pixel_and_long_strip(tmp_path):
    src = rasters.write(tmp_path / "in.tif", np.full((3, 1, 1), 42, np.uint8))
    out, result = run(src, tmp_path, Options())
    _, pixels = png(out)
    assert pixels.reshape(-1)[:3].tolist() == [42, 42, 42]

    strip = (np.arange(100_000) % 200 + 1).astype(np.uint8)[None, None, :]
    src = rasters.write(tmp_path / "strip.tif", strip)
    out2 = tmp_path / "strip"
    result = process_file(src, out2, Options(coordinate_system="native"))
    mode, pixels = png(out2, "strip")
    assert pixels.shape == (1, 4096) and mode == "L"
    assert result["metadata"]["output"]["thumbnail"] == {"width": 256, "height": 1}


# --- outputs, metadata, progress ---------------------------------------------------------


def test_all_outputs_metadata_and_progress(tmp_path):
    src = write_sample_orthophoto(tmp_path / "My Ortho (v2).tif", size=256)
    calls = []
    out, result = run(src, tmp_path, Options(), progress=lambda p, m: calls.append((p, m)))
    names = result["outputs"]
    assert names == {"image": "My_Ortho_v2.png", "thumbnail": "My_Ortho_v2_thumb.png", "world_file": "My_Ortho_v2.pgw",
                     "prj": "My_Ortho_v2.prj", "aux_xml": "My_Ortho_v2.png.aux.xml", "metadata": "My_Ortho_v2.json"}
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    percents = [p for p, _ in calls]
    assert percents == sorted(percents) and percents[-1] == 100 and len(calls) >= 6
    assert set(result["timings"]) >= {"validate", "read", "render", "encode", "write", "total"}
    assert result["warnings"] == []  # overviews and masks are not "pages"
    meta = json.loads((out / names["metadata"]).read_text())
    import hashlib

    assert meta["file"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["file"]["size"] == src.stat().st_size
    assert meta["compression"] == "deflate" and meta["tiled"] is True and meta["block_size"] == [256, 256]
    assert meta["overviews"] == [2, 4, 8] and meta["nodata"] == [0, 0, 0] and meta["crs"]["epsg"] == 32638
    assert meta["resolution"] == [0.5, 0.5] and meta["statistics"][0]["valid_percent"] < 100
    assert meta["output"]["file_sizes"]["image"] == (out / names["image"]).stat().st_size
    with Image.open(out / names["thumbnail"]) as thumb:
        assert max(thumb.size) == 256


def test_thumbnail_off_and_other_formats(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=64, collar=8)
    out, result = run(src, tmp_path, Options(coordinate_system="native", thumbnail_size=0, output_format="jpeg"))
    assert result["outputs"]["thumbnail"] is None and result["outputs"]["image"] == "in.jpg"
    assert (out / "in.jgw").exists() and (out / "in.jpg.aux.xml").exists()
    with Image.open(out / "in.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 64)
    out2 = tmp_path / "webp"
    result = process_file(src, out2, Options(coordinate_system="native", generate_thumbnails=False,
                                             output_format="webp"))
    with Image.open(out2 / "in.webp") as img:
        assert img.format == "WEBP" and img.mode == "RGBA"
    assert (out2 / "in.wpw").exists() and result["outputs"]["thumbnail"] is None


def test_describe_file_matches_process_metadata(tmp_path):
    src = write_sample_orthophoto(tmp_path / "in.tif", size=128)
    info = describe_file(src, Options())
    json.dumps(info)
    assert not list(tmp_path.glob("*.png"))
    out, _ = run(src, tmp_path, Options())
    meta = json.loads((out / "in.json").read_text())
    for key in ("width", "height", "count", "dtypes", "crs", "transform", "bounds_wgs84", "corners_wgs84", "file"):
        assert info[key] == meta[key], key
    assert "output" not in info and len(info["statistics"]) == 3


def test_sample_orthophoto_is_deterministic_and_as_documented(tmp_path):
    a = write_sample_orthophoto(tmp_path / "a.tif", size=128)
    b = write_sample_orthophoto(tmp_path / "b.tif", size=128)
    with rasterio.open(a) as ds, rasterio.open(b) as other:
        assert ds.crs.to_epsg() == 32638 and ds.count == 3 and ds.nodata == 0 and ds.overviews(1)
        assert ds.block_shapes[0] == (256, 256) or ds.width < 256
        data = ds.read()
        assert np.array_equal(data, other.read())
        assert (data == 0).all(axis=0).any() and (data > 0).all(axis=0).mean() > 0.5
