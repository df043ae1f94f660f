"""The numpy area average (processing/average.py) against GDAL's own average.

The reference is GDAL's decimating RasterIO with resampling=average, called directly
through rasterio on the same file (the GDAL that the pipeline used before), plus
gdal_translate -r average where gdal-bin is installed. Integral factors must match
exactly (GDAL's sums are exact there); other factors within 1, and only where the exact
average is within float noise of a .5 tie (a tiny share of pixels).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling

from geoworker.processing import Options, average, process_file, read
import rasters  # tests/rasters.py (tests/ is on sys.path)

RNG = np.random.default_rng(20240601)
TILED = {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate", "predictor": 2}
STRIPED = {"compress": "lzw"}


def ours(path, shape, threads=2, bands=None):
    with read.gdal_env(), rasterio.open(path) as ds:
        plan = read.plan_bands(ds, bands)
        indexes = list(plan.indexes) + ([plan.alpha] if plan.alpha else [])
        assert read._numpy_average(ds, indexes, shape, Resampling.average)
        return read.read_decimated(ds, plan, shape, "average", threads)


def gdal(path, shape, bands=None):
    """GDAL's average of the same bands, and the pipeline's validity rule applied to it."""
    with read.gdal_env(), rasterio.open(path) as ds:
        plan = read.plan_bands(ds, bands)
        indexes = list(plan.indexes) + ([plan.alpha] if plan.alpha else [])
        dtype = read.read_dtype(ds.dtypes[indexes[0] - 1])
        data = ds.read(indexes, out_shape=(len(indexes),) + shape, resampling=Resampling.average, out_dtype=dtype)
        if plan.mask == "alpha":
            valid = data[-1] > 0
        elif plan.mask == "per_dataset":
            valid = ds.read_masks(indexes[0], out_shape=shape, resampling=Resampling.average) > 0
        elif plan.mask == "nodata":
            valid = np.zeros(shape, bool)
            for k, index in enumerate(plan.indexes):
                nodata = ds.nodatavals[index - 1]
                ok = ~np.isnan(data[k]) if data.dtype.kind == "f" else np.ones(shape, bool)
                if nodata is not None and not np.isnan(nodata):
                    ok &= data[k] != nodata
                valid |= ok
        else:
            valid = np.ones(shape, bool)
        return (data[:-1] if plan.alpha else data), valid


def assert_close(path, shape, exact=False, bands=None, **kw):
    a, va = ours(path, shape, bands=bands, **kw)
    b, vb = gdal(path, shape, bands=bands)
    va = np.ones(shape, bool) if va is None else va
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(va, vb)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))[:, va]
    if a.dtype.kind == "f":
        assert np.allclose(a[:, va], b[:, va], rtol=1e-5, atol=1e-3)
    elif exact:
        assert diff.max(initial=0) == 0
    else:
        assert diff.max(initial=0) <= 1
        assert (diff > 0).mean() < 0.01
    return a, va


# --- footprints ---------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", [(400, 150), (5800, 4096), (19000, 4096), (13000, 4096), (10, 10), (7, 3),
                                      (100000, 4096), (1000, 1)])
def test_footprints_cover_the_source_once(src, dst):
    axis = average.axis_footprints(src, dst)
    assert axis.n0[0] == 0 and axis.n1[-1] == src
    assert np.all(axis.n1 > axis.n0) and np.all(np.diff(axis.n0) >= 0)
    # every source pixel's weights over the outputs sum to 1 (up to GDAL's 1e-8 epsilon)
    coverage = np.zeros(src)
    for j in range(dst):
        for i in range(axis.n0[j], axis.n1[j]):
            coverage[i] += axis.weight(j, i)
    assert np.allclose(coverage, 1.0, atol=1e-6)
    assert np.allclose(axis.total, src / dst, atol=1e-6)


# --- pixels against GDAL ----------------------------------------------------------------


@pytest.mark.parametrize("profile", [STRIPED, TILED], ids=["striped", "tiled"])
@pytest.mark.parametrize("size, shape", [((256, 384), (128, 192)), ((512, 640), (128, 160))], ids=["x2", "x4"])
def test_integral_factors_match_gdal_exactly(tmp_path, profile, size, shape):
    src = rasters.write(tmp_path / "in.tif", RNG.integers(0, 256, (3,) + size, dtype=np.uint8),
                        photometric="RGB", **profile)
    assert_close(src, shape, exact=True)


@pytest.mark.parametrize("profile", [STRIPED, TILED], ids=["striped", "tiled"])
@pytest.mark.parametrize("size, shape", [
    ((300, 400), (112, 150)),  # 2.67, the existing gdal_translate comparison
    ((301, 403), (100, 134)),  # sizes that are no multiple of the factor
    ((777, 1234), (123, 195)),
    ((1000, 13), (400, 5)),  # 2.5 down, 2.6 across: narrower than a tile
    ((1, 1000), (1, 40)),  # one row
    ((600, 700), (600, 350)),  # columns only
])
def test_non_integral_factors_match_gdal_within_one(tmp_path, profile, size, shape):
    src = rasters.write(tmp_path / "in.tif", RNG.integers(0, 256, (3,) + size, dtype=np.uint8),
                        photometric="RGB", **profile)
    assert_close(src, shape)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32", "float64"])
def test_other_data_types_match_gdal(tmp_path, dtype):
    if dtype.startswith("float"):
        data = RNG.normal(0, 1000, (333, 517)).astype(dtype)
    elif dtype.startswith("u"):
        data = RNG.integers(0, 60000, (333, 517)).astype(dtype)
    else:
        data = RNG.integers(-30000, 30000, (333, 517)).astype(dtype)
    src = rasters.write(tmp_path / "in.tif", data, **TILED)
    assert_close(src, (107, 166))


def test_nodata_collar_is_left_out_of_the_average(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "in.tif", size=500, collar=37, **TILED)
    data, valid = assert_close(src, (161, 161))
    assert not valid.all() and valid[80, 80]
    assert {tuple(data[:, y, x]) for y, x in np.argwhere(valid)} == {(200, 150, 100)}  # no black fringe


def test_uint16_nodata_holes(tmp_path):
    data = RNG.integers(1, 5000, (700, 650), dtype=np.uint16)
    data[RNG.random(data.shape) < 0.3] = 7
    data[:, :300] = 7
    src = rasters.write(tmp_path / "in.tif", data, nodata=7, **STRIPED)
    assert_close(src, (230, 214))


@pytest.mark.parametrize("nodata", [float("nan"), -9999.0])
def test_float_nodata_and_nan(tmp_path, nodata):
    data = RNG.normal(100, 20, (640, 480)).astype(np.float32)
    holes = RNG.random(data.shape) < 0.2
    holes[:100] = True
    data[holes] = nodata
    src = rasters.write(tmp_path / "in.tif", data, nodata=nodata, **TILED)
    assert_close(src, (211, 158))


def test_nan_without_declared_nodata_is_left_out_too(tmp_path):
    """GDAL lets one NaN spoil its output pixel here; we average the valid pixels around it."""
    data = RNG.normal(100, 20, (640, 480)).astype(np.float32)
    data[RNG.random(data.shape) < 0.05] = np.nan
    data[:100] = np.nan
    src = rasters.write(tmp_path / "in.tif", data, **STRIPED)
    a, va = ours(src, (211, 158))
    b, _ = gdal(src, (211, 158))
    finite = np.isfinite(b[0])
    assert finite.sum() < va.sum() and np.all(va[finite])
    assert not va[:30].any()  # the all-NaN top stays invalid
    assert np.allclose(a[0][finite], b[0][finite], rtol=1e-5)
    assert np.all(np.isfinite(a[0][va]))


@pytest.mark.parametrize("profile", [STRIPED, TILED], ids=["striped", "tiled"])
def test_internal_mask(tmp_path, profile):
    img = RNG.integers(0, 256, (3, 400, 500), dtype=np.uint8)
    mask = np.full((400, 500), 255, np.uint8)
    mask[:, :120] = 0
    mask[RNG.random(mask.shape) < 0.1] = 0
    src = rasters.write(tmp_path / "in.tif", img, photometric="RGB", mask=mask, **profile)
    assert_close(src, (133, 166))


def test_alpha_band(tmp_path):
    img = RNG.integers(0, 256, (3, 400, 500), dtype=np.uint8)
    alpha = np.full((1, 400, 500), 255, np.uint8)
    alpha[0, 150:260, 100:330] = 0
    src = rasters.write(tmp_path / "in.tif", np.concatenate([img, alpha]), colorinterp=rasters.ALPHA_RGBA, **TILED)
    data, valid = assert_close(src, (133, 166))
    assert not valid.all()


def test_grey_plus_alpha(tmp_path):
    grey = RNG.integers(0, 256, (1, 300, 310), dtype=np.uint8)
    alpha = np.where(RNG.random((1, 300, 310)) < 0.5, 0, 255).astype(np.uint8)
    src = rasters.write(tmp_path / "in.tif", np.concatenate([grey, alpha]),
                        colorinterp=[ColorInterp.gray, ColorInterp.alpha])
    assert_close(src, (97, 100))


# --- windows, threads, memory -------------------------------------------------------------


@pytest.mark.parametrize("profile", [STRIPED, TILED], ids=["striped", "tiled"])
def test_many_small_windows_and_column_chunks_give_the_same_pixels(tmp_path, monkeypatch, profile):
    """Rows shared by two windows and columns split into chunks add up to the one-window result."""
    data = RNG.integers(0, 256, (3, 601, 903), dtype=np.uint8)
    data[:, :50] = 0
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", nodata=0, **profile)
    whole, whole_valid = ours(src, (200, 301), threads=1)
    monkeypatch.setattr(average, "WINDOW_BYTES", 60_000)
    monkeypatch.setattr(average, "MAX_WINDOW_BYTES", 60_000)
    monkeypatch.setattr(average, "SUB_BYTES", 20_000)
    plan = average._plan((601, 903), (200, 301), (64, 64) if profile is TILED else (1, 903), 3)
    assert len(plan.windows) >= 10 and (len(plan.chunks) > 1) == (profile is TILED)
    for threads in (1, 2):
        split, split_valid = ours(src, (200, 301), threads=threads)
        assert np.abs(split.astype(int) - whole.astype(int)).max() <= 1
        assert (split != whole).mean() < 0.001  # float sums in another order: .5 ties only
        assert np.array_equal(split_valid, whole_valid)
    assert_close(src, (200, 301))


def test_windows_follow_blocks_and_stay_within_budget():
    plan = average._plan((19000, 19000), (4096, 4096), (512, 512), 3)
    assert all(s0 % 512 == 0 for s0, _ in plan.windows) and len(plan.chunks) == 1  # 29 MB rows of tiles
    assert plan.windows[-1][1] == 19000
    plan = average._plan((5800, 5800), (4096, 4096), (1, 5800), 3)
    assert all((s1 - s0) * 5800 * 3 <= average.WINDOW_BYTES for s0, s1 in plan.windows)
    wide = average._plan((2048, 400_000), (21, 4096), (256, 256), 3)  # a row of tiles would be 300 MB
    assert len(wide.chunks) > 1
    assert all((c1 - c0) * 256 * 3 <= average.MAX_WINDOW_BYTES for c0, c1, _, _ in wide.chunks)


def test_one_huge_strip_is_left_to_gdal(tmp_path, monkeypatch):
    """A strip cannot be decoded in parts: windows of it would decode it again and again."""
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(300, 400), photometric="RGB",
                        compress="deflate", blockysize=300)
    with rasterio.open(src) as ds:
        assert ds.block_shapes[0] == (300, 400)
        assert read._numpy_average(ds, [1, 2, 3], (150, 200), Resampling.average)
        monkeypatch.setattr(average, "MAX_WINDOW_BYTES", 300 * 400 * 3 - 1)
        assert not read._numpy_average(ds, [1, 2, 3], (150, 200), Resampling.average)


def test_overviews_are_left_to_gdal(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(400, 400), photometric="RGB", overviews=[2, 4])
    with rasterio.open(src) as ds:
        assert not read._numpy_average(ds, [1, 2, 3], (200, 200), Resampling.average)  # the x2 overview
        assert not read._numpy_average(ds, [1, 2, 3], (150, 150), Resampling.average)
        assert read._numpy_average(ds, [1, 2, 3], (300, 300), Resampling.average)  # finer than any overview
        assert not read._numpy_average(ds, [1, 2, 3], (300, 300), Resampling.bilinear)
        assert not read._numpy_average(ds, [1, 2, 3], (400, 400), Resampling.average)  # no decimation


# --- end to end against gdal_translate ----------------------------------------------------


@pytest.mark.skipif(not shutil.which("gdal_translate"), reason="gdal-bin is not installed")
@pytest.mark.parametrize("profile", [STRIPED, TILED], ids=["striped", "tiled"])
def test_png_matches_gdal_translate_average_with_nodata(tmp_path, profile):
    data = rasters.gradient_rgb(700, 910)
    data[:, :60] = 0
    data[:, :, -45:] = 0
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB", nodata=0, **profile)
    process_file(src, tmp_path / "out", Options(coordinate_system="native", max_size=300))
    subprocess.run(["gdal_translate", "-q", "-of", "PNG", "-outsize", "300", "231", "-r", "average",
                    str(src), str(tmp_path / "gdal.png")], check=True, timeout=60)
    with Image.open(tmp_path / "out" / "in.png") as img:
        assert img.mode == "RGBA"
        a = np.asarray(img).astype(int)
    b = np.asarray(Image.open(tmp_path / "gdal.png").convert("RGB")).astype(int)
    valid = a[..., 3] == 255
    assert a.shape[:2] == b.shape[:2] == (231, 300)
    assert np.array_equal(valid, b.any(axis=-1))  # GDAL writes nodata (0) where we are transparent
    assert np.abs(a[valid][:, :3] - b[valid]).max() <= 1
