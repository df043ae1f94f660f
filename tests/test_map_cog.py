"""geotiff_to_cog: validity (rio-cogeo), layout, losslessness, invalid pixels, compression choices.

Every input is written here with rasterio; the references are the input itself (lossless
output must equal it pixel for pixel) and GDAL's own gdalinfo (another GDAL build must
read the layout and the mask the same way).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from geoworker.errors import BadParams, Unsupported
from geoworker.processing.cog import cog_plan, make_cog, overview_count
from geoworker.processing.map_options import CogOptions
from geoworker.processing import read
import rasters  # tests/rasters.py

W, H = 1100, 900  # overviews 550, 275, 138: three levels down to <= 256


def cog(src, out_dir, **params):
    result = make_cog(src, out_dir, CogOptions.from_mapping({}, params))
    return result, out_dir / result["outputs"]["cog"]


def assert_valid_cog(path, levels):
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    assert (valid, errors, warnings) == (True, [], [])
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) == [2 ** k for k in range(1, levels + 1)]
        smallest = -(-max(ds.width, ds.height) // 2 ** levels)
        assert smallest <= 256 < -(-max(ds.width, ds.height) // 2 ** (levels - 1))


def smooth_rgb(height=H, width=W):
    """Smooth colour ramps (no zeros): what JPEG keeps well, unlike the sawtooth of rasters.gradient_rgb."""
    r = np.arange(height)[:, None]
    c = np.arange(width)[None, :]
    return np.stack([1 + c * 254 // width + 0 * r, 1 + r * 254 // height + 0 * c,
                     1 + (r + c) * 254 // (height + width)]).astype(np.uint8)


def dem(path, nodata=0):
    r = np.arange(H)[:, None]
    c = np.arange(W)[None, :]
    z = (1000 + 7 * r + 3 * c + (r * c) % 17).astype(np.uint16)
    z[:40, :] = nodata
    z[:, -25:] = nodata
    return rasters.write(path, z, nodata=nodata, tiled=True, blockxsize=256, blockysize=256, compress="deflate"), z


def test_overview_count_goes_down_to_256():
    assert overview_count(256, 100) == 0
    assert overview_count(257, 10) == 1
    assert overview_count(512, 512) == 1
    assert overview_count(513, 512) == 2
    assert overview_count(5800, 5800) == 5  # 2900 1450 725 363 182


def test_rgb_with_nodata_is_a_valid_jpeg_cog_whose_mask_keeps_the_collar_invalid(tmp_path):
    src = rasters.write(tmp_path / "ortho.tif", smooth_rgb(), nodata=0)
    with rasterio.open(src, "r+") as ds:  # a 37-pixel nodata collar all round
        data = ds.read()
        data[:, :37, :] = data[:, -37:, :] = data[:, :, :37] = data[:, :, -37:] = 0
        ds.write(data)
    result, path = cog(src, tmp_path / "out")
    assert_valid_cog(path, 3)
    assert result["outputs"] == {"cog": "ortho.cog.tif", "thumbnail": "ortho_thumb.png", "metadata": "ortho.json"}
    with rasterio.open(path) as ds:
        assert ds.compression.name == "jpeg" and ds.photometric.name == "ycbcr"
        assert ds.nodata is None and ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
        mask = ds.dataset_mask()
        assert (mask[37:-37, 37:-37] == 255).all() and (mask[:37] == 0).all() and (mask[:, -37:] == 0).all()
        got = ds.read(window=((37, H - 37), (37, W - 37))).astype(int)
    # JPEG at quality 85: close to the source, not equal
    assert np.abs(got - data[:, 37:-37, 37:-37]).mean() < 1.5
    doc = json.loads((tmp_path / "out" / "ortho.json").read_text())
    assert doc["output"]["compression"] == "jpeg" and doc["output"]["invalid_pixels"] == "internal mask"
    assert doc["output"]["validation"] == {"valid": True, "errors": [], "warnings": []}
    assert doc["width"] == W and doc["file"]["sha256"] and doc["statistics"][0]["valid_percent"] < 100
    thumb = Image.open(tmp_path / "out" / "ortho_thumb.png")
    assert thumb.mode == "RGBA" and max(thumb.size) == 256 and thumb.getpixel((0, 0))[3] == 0


def test_other_tools_read_the_layout_and_mask(tmp_path):
    if not shutil.which("gdalinfo"):
        pytest.skip("gdal-bin is not installed")
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=700, collar=30)
    _, path = cog(src, tmp_path / "out")
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, check=True,
                                     timeout=60).stdout)
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "YCbCr JPEG"
    assert info["bands"][0]["mask"]["flags"] == ["PER_DATASET"]


def test_dem_is_lossless_with_its_nodata_and_averaged_overviews(tmp_path):
    src, z = dem(tmp_path / "dem.tif")
    result, path = cog(src, tmp_path / "out")
    assert_valid_cog(path, 3)
    with rasterio.open(path) as ds:
        assert ds.compression.name == "deflate" and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert np.array_equal(ds.read(1), z)  # every pixel, valid or not, equals the source
        over = ds.read(1, out_shape=(H // 2, W // 2))  # the first overview
    # average of each 2x2 block of valid pixels (nodata left out), rounded like GDAL
    blocks = z[:H // 2 * 2, :W // 2 * 2].reshape(H // 2, 2, W // 2, 2).astype(float)
    valid = blocks != 0
    mean = np.where(valid.any((1, 3)), (blocks * valid).sum((1, 3)) / np.maximum(1, valid.sum((1, 3))), 0)
    inside = valid.all((1, 3))
    assert np.abs(over[inside] - np.floor(mean[inside] + 0.5)).max() <= 1
    assert (over[~valid.any((1, 3))] == 0).all()
    assert result["metadata"]["output"]["compression"] == "deflate"


def test_float_with_nan_is_lossless(tmp_path):
    data = np.linspace(-3.5, 812.25, H * W, dtype=np.float32).reshape(H, W)
    data[100:200, 300:400] = np.nan
    src = rasters.write(tmp_path / "f.tif", data, tiled=True)
    _, path = cog(src, tmp_path / "out", compression="zstd")
    assert_valid_cog(path, 3)
    with rasterio.open(path) as ds:
        assert ds.compression.name == "zstd" and ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        got = ds.read(1)
    assert np.array_equal(got, data, equal_nan=True)


def test_palette_keeps_its_colours_and_overviews_pick_values(tmp_path):
    rng = np.random.default_rng(3)
    classes = rng.integers(1, 5, size=(H // 50, W // 50), dtype=np.uint8).repeat(50, 0).repeat(50, 1)
    cmap = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255), 4: (255, 255, 0, 255)}
    src = rasters.write(tmp_path / "classes.tif", classes, photometric="palette", colormap=cmap)
    _, path = cog(src, tmp_path / "out")
    assert_valid_cog(path, 3)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[0] == ColorInterp.palette and ds.colormap(1)[3] == (0, 0, 255, 255)
        assert ds.compression.name == "deflate" and np.array_equal(ds.read(1), classes)
        over = ds.read(1, out_shape=(H // 4, W // 4))
    assert set(np.unique(over)) <= {1, 2, 3, 4}  # nearest: no averaged, non-existent classes
    with pytest.raises(Unsupported, match="compression=jpeg"):
        cog(src, tmp_path / "out2", compression="jpeg")


def test_alpha_becomes_an_internal_mask_with_jpeg_and_stays_alpha_with_webp(tmp_path):
    rgba = np.concatenate([rasters.gradient_rgb(H, W), np.full((1, H, W), 255, np.uint8)])
    rgba[3, :, :123] = 0
    src = rasters.write(tmp_path / "a.tif", rgba, photometric="RGB", alpha="YES")
    _, path = cog(src, tmp_path / "jpeg")
    with rasterio.open(path) as ds:
        assert ds.count == 3 and ds.compression.name == "jpeg"
        assert np.array_equal(ds.dataset_mask() > 0, rgba[3] > 0)
    _, path = cog(src, tmp_path / "webp", compression="webp", compression_quality=90)
    assert_valid_cog(path, 3)
    with rasterio.open(path) as ds:
        assert ds.count == 4 and ds.compression.name == "webp" and ds.colorinterp[3] == ColorInterp.alpha
        assert np.array_equal(ds.read(4) > 0, rgba[3] > 0)


@pytest.mark.parametrize("compression", ["deflate", "lzw", "zstd"])
def test_lossless_compressions_of_rgb_equal_the_source(tmp_path, compression):
    data = rasters.gradient_rgb(H, W)
    src = rasters.write(tmp_path / "rgb.tif", data)
    _, path = cog(src, tmp_path / "out", compression=compression)
    assert_valid_cog(path, 3)
    with rasterio.open(path) as ds:
        assert ds.compression.name == compression and np.array_equal(ds.read(), data)


def test_lossy_compression_of_16_bit_data_is_refused_naming_the_key(tmp_path):
    src, _ = dem(tmp_path / "dem.tif")
    for compression in ("jpeg", "webp"):
        with pytest.raises(Unsupported, match=f"compression={compression}"):
            cog(src, tmp_path / "out", compression=compression)
    with pytest.raises(BadParams, match="compression"):
        CogOptions.from_mapping({}, {"compression": "jpeg2000"})
    assert not (tmp_path / "out" / "dem.cog.tif").exists()


def test_web_mercator_cog_is_zoom_aligned(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=1000, collar=60)  # 2 m pixels, UTM 38N
    result, path = cog(src, tmp_path / "out", tiling_scheme="GoogleMapsCompatible")
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    assert (valid, errors, warnings) == (True, [], [])
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.block_shapes[0] == (512, 512)
        zoom = json.loads((tmp_path / "out" / "in.json").read_text())["output"]["tile_matrix"]["maxzoom"]
        res = 2 * 20037508.342789244 / 256 / 2 ** zoom
        assert abs(ds.transform.a - res) < 1e-6
        # the origin is on the zoom's tile grid
        for origin, offset in ((ds.transform.c, 20037508.342789244), (-ds.transform.f, 20037508.342789244)):
            tiles = (origin + offset) / (256 * res)
            assert abs(tiles - round(tiles)) < 1e-6
        mask = ds.dataset_mask()
        assert mask[0, 0] == 0 and mask[ds.height // 2, ds.width // 2] == 255  # outside the footprint is invalid
        assert max(ds.width, ds.height) / 2 ** len(ds.overviews(1)) <= 256
    assert result["metadata"]["output"]["crs_epsg"] == 3857


def test_web_mercator_needs_a_crs(tmp_path):
    src = rasters.write(tmp_path / "plain.tif", rasters.gradient_rgb(50, 50), crs=None)
    with pytest.raises(Unsupported, match="tiling_scheme=GoogleMapsCompatible"):
        cog(src, tmp_path / "out", tiling_scheme="GoogleMapsCompatible")


def test_a_web_mercator_cog_across_the_antimeridian_is_refused_and_native_works(tmp_path):
    """GDAL's COG driver makes a world-wide zoom-1 image of a 1 km UTM-60 scene across 180 degrees
    (78 km pixels): refused, saying why and what to use; the native COG keeps every pixel."""
    src = rasters.across_antimeridian(tmp_path / "pacific.tif")
    with pytest.raises(Unsupported, match=r"crosses the antimeridian \(178\.72 to -175\.77.*tiling_scheme=native"):
        cog(src, tmp_path / "out", tiling_scheme="GoogleMapsCompatible")
    _, path = cog(src, tmp_path / "native")
    with rasterio.open(path) as out, rasterio.open(src) as ds:
        assert (out.width, out.height, out.crs) == (ds.width, ds.height, ds.crs)


def test_plan_defaults(tmp_path):
    rgb = rasters.write(tmp_path / "rgb.tif", rasters.gradient_rgb(20, 20))
    grey = rasters.write(tmp_path / "grey.tif", rasters.gradient_rgb(20, 20)[:1])
    with rasterio.open(rgb) as ds:
        plan = cog_plan(ds, read.plan_bands(ds, None), CogOptions.from_mapping({"compression_quality": 70}, {}))
        assert (plan.compression, plan.creation["QUALITY"], plan.creation["RESAMPLING"]) == ("jpeg", 70, "AVERAGE")
    with rasterio.open(grey) as ds:
        plan = cog_plan(ds, read.plan_bands(ds, None), CogOptions.from_mapping({}, {}))
        assert (plan.compression, plan.creation["PREDICTOR"], plan.mask) == ("deflate", "YES", "none")
