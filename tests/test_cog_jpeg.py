"""The JPEG COG writer of our own (cog_jpeg), checked against GDAL's COG driver on the same files.

Each input is written here with rasterio. The reference is what the old path writes for
the same file: GDAL's COG driver through rasterio (cog.write_cog with writer="gdal").
Readers are GDAL itself: rasterio's bundled GDAL, and Debian's gdalinfo/gdal_translate
(another GDAL build with another libjpeg), and rio-cogeo's validator.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from geoworker.errors import InvalidInput
from geoworker.processing import cog, read, tiff_layout
from geoworker.processing.cog_jpeg import GEO_TAGS, encode_tile, split_jpeg, write_jpeg_cog
from geoworker.processing.map_options import CogOptions
from geoworker.processing.overviews import Halver, level_sizes
import rasters  # tests/rasters.py

JPEG_MEAN = 1.5  # mean absolute difference (grey levels) allowed between two JPEG encodings of one image


def ortho(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(3, h, w) uint8 that looks like an orthophoto to JPEG: smooth fields, texture, sharp edges, no zeros."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 80 * np.sin(c / 97.0) ** 2 + 40 * (r / height), 90 + 70 * np.cos(r / 61.0) ** 2,
                     70 + 50 * np.sin((r + c) / 140.0) ** 2])
    base += rng.normal(0, 6, base.shape)  # texture
    base[:, (r // 64 + c // 64) % 5 == 0] += 40  # fields with sharp borders
    return np.clip(base, 1, 255).astype(np.uint8)


def plan_for(path, **params):
    with rasterio.open(path) as ds:
        options = CogOptions.from_mapping({}, params)
        return cog.cog_plan(ds, read.plan_bands(ds, None), options)


def write_both(src, tmp_path, **params):
    """(ours, GDAL's) JPEG COG of src, with the plan make_cog would use."""
    plan = plan_for(src, **params)
    assert plan.writer == "jpeg"
    ours, gdal = tmp_path / "ours.tif", tmp_path / "gdal.tif"
    with rasterio.open(src) as ds:
        cog.write_cog(ds, ours, plan)
        cog.write_cog(ds, gdal, dataclasses.replace(plan, writer="gdal"))
    return ours, gdal


def levels(ds):
    """(factor, (height, width)) of the full resolution and each overview."""
    out = [(1, (ds.height, ds.width))]
    for f in ds.overviews(1):
        with rasterio.open(ds.name, overview_level=len(out) - 1) as o:
            out.append((f, (o.height, o.width)))
    return out


def assert_same_as_gdal(ours, gdal, source: np.ndarray | None = None, valid: np.ndarray | None = None):
    """Ours reads like GDAL's: layout, georeferencing, masks at every level; pixels within JPEG noise."""
    assert cog_validate(str(ours), quiet=True) == (True, [], [])
    assert ours.stat().st_size < 1.1 * gdal.stat().st_size  # Huffman tables optimised per tile, as GDAL's
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert (a.width, a.height, a.count, a.dtypes) == (b.width, b.height, b.count, b.dtypes)
        assert a.crs == b.crs and (a.crs is None or a.crs.to_wkt() == b.crs.to_wkt())
        assert a.transform == b.transform
        assert a.block_shapes == b.block_shapes == [(512, 512)] * 3
        assert a.overviews(1) == b.overviews(1) and levels(a) == levels(b)
        assert a.mask_flag_enums == b.mask_flag_enums
        assert (a.compression, a.photometric) == (b.compression, b.photometric)
        assert a.colorinterp == b.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert a.tags(ns="IMAGE_STRUCTURE")["JPEG_QUALITY"] == b.tags(ns="IMAGE_STRUCTURE")["JPEG_QUALITY"]
        assert a.tags() == b.tags()
        for level, (_, shape) in enumerate(levels(a)):
            with rasterio.open(ours, overview_level=level - 1) if level else rasterio.open(ours) as x, \
                    rasterio.open(gdal, overview_level=level - 1) if level else rasterio.open(gdal) as y:
                mx, my = x.dataset_mask(), y.dataset_mask()
                assert np.array_equal(mx, my), f"level {level}: masks differ"
                px, py = x.read().astype(int), y.read().astype(int)
                inside = my > 0
                if inside.any():
                    assert np.abs(px - py)[:, inside].mean() < JPEG_MEAN, f"level {level}"
        if source is not None:
            inside = np.ones(source.shape[1:], bool) if valid is None else valid
            assert np.array_equal(a.dataset_mask() > 0, inside)
            # as close to the source as GDAL's JPEG (libjpeg 9 is a little better on noise)
            error = [np.abs(x.read().astype(int) - source[:3])[:, inside].mean() for x in (a, b)]
            assert error[0] < error[1] * 1.05 + 0.1, error


# -- overviews --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1024, 768), (1301, 1103)])  # exact halves; odd sizes (fractional weights)
def test_streamed_overviews_equal_gdal_average(tmp_path, size):
    width, height = size
    rng = np.random.default_rng(1)
    data = rng.integers(1, 256, (3, height, width)).astype(np.uint8)
    holes = np.kron(rng.random((height // 7 + 1, width // 7 + 1)) < 0.3, np.ones((7, 7), bool))[:height, :width]
    holes |= rng.random((height, width)) < 0.1
    data[:, holes] = 0
    src = rasters.write(tmp_path / "in.tif", data, nodata=0)
    # GDAL's reference: a lossless COG, whose overviews are GDAL's average over the valid pixels
    ref = tmp_path / "ref.tif"
    with rasterio.open(src) as ds, rasterio.open(cog.nodata_mask_vrt(ds)) as vrt, \
            rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        rasterio.shutil.copy(vrt, ref, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE", OVERVIEW_COUNT=3,
                             RESAMPLING="AVERAGE")
    sizes = level_sizes(width, height, 3)
    halvers = [Halver(sizes[k], sizes[k + 1], 3, True) for k in range(3)]
    out: list[list] = [[] for _ in range(3)]
    pixels, valid, row = data.transpose(1, 2, 0), ~holes, 0
    while row < height:  # rows arrive in uneven chunks, as the rows of tiles of each level do
        n = int(rng.integers(1, 300))
        d, v = pixels[row:row + n], valid[row:row + n]
        row += n
        for k, halver in enumerate(halvers):
            d, v = halver.push(d, v)
            out[k].append((d, v))
    for k in range(3):
        d = np.concatenate([o[0] for o in out[k]])
        v = np.concatenate([o[1] for o in out[k]])
        with rasterio.open(ref, overview_level=k) as o:
            assert (o.width, o.height) == sizes[k + 1]
            gd, gm = o.read().transpose(1, 2, 0), o.dataset_mask() > 0
        assert np.array_equal(v, gm)
        diff = np.abs(gd.astype(int) - d)[gm]
        assert diff.max() <= 1  # float noise at .5 ties
        if width % 2 ** (k + 1) == 0 and height % 2 ** (k + 1) == 0:
            assert diff.max() == 0  # exact 2 x 2 means


def test_level_sizes_halve_rounding_down_like_gdal():
    assert level_sizes(1301, 1103, 3) == [(1301, 1103), (650, 551), (325, 275), (162, 137)]
    assert level_sizes(3000, 3, 2) == [(3000, 3), (1500, 1), (750, 1)]


# -- JPEG tiles ---------------------------------------------------------------------------------------------


def test_tiles_are_abbreviated_streams_of_the_quality_asked(tmp_path):
    tile = ortho(300, 200).transpose(1, 2, 0)  # a partial edge tile: padded to 512 x 512
    data = encode_tile(tile, 85)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    head = data.split(b"\xff\xda")[0]
    assert b"\xff\xdb" not in head and b"\xff\xe0" not in head  # no quantisation table (in JPEGTables), no JFIF
    assert b"\xff\xc4" in head  # Huffman tables optimised for this tile
    assert b"\xff\xc0\x00\x11\x08\x02\x00\x02\x00\x03\x01\x22" in head  # baseline 512 x 512, 3 components, Y 2x2
    tables, image = split_jpeg(data, False)
    assert image == data and tables == b"\xff\xd8\xff\xd9"


# -- whole files against GDAL's ----------------------------------------------------------------------------


def test_rgb_without_mask_reads_as_gdals(tmp_path):
    data = ortho(1100, 1300)
    src = rasters.write(tmp_path / "in.tif", data)
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, data)
    with rasterio.open(ours) as ds:
        assert ds.mask_flag_enums[0] == [MaskFlags.all_valid] and ds.nodata is None


def test_rgb_nodata_becomes_the_mask_at_every_level(tmp_path):
    data = ortho(1100, 1300)
    data[:, :, :37] = 0  # a collar, and a hole
    data[:, 300:420, 500:700] = 0
    data[0, 600:610, 600:700] = 0  # only one band at nodata: still valid (any band valid)
    src = rasters.write(tmp_path / "in.tif", data, nodata=0, tiled=True, compress="deflate")
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, data, (data != 0).any(0))
    with rasterio.open(ours) as ds:
        assert ds.nodata is None and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]


def test_internal_mask_is_kept(tmp_path):
    data = ortho(700, 900)
    mask = np.full((700, 900), 255, np.uint8)
    mask[100:250, 100:400] = 0
    src = rasters.write(tmp_path / "in.tif", data, mask=mask, tiled=True)
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, data, mask > 0)


def test_alpha_becomes_the_mask(tmp_path):
    rgba = np.concatenate([ortho(900, 1100), np.full((1, 900, 1100), 255, np.uint8)])
    rgba[3, :, :123] = 0
    rgba[3, 500:, 800:] = 17  # any alpha above 0 is valid, as GDAL reads it
    src = rasters.write(tmp_path / "a.tif", rgba, photometric="RGB", alpha="YES")
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, rgba, rgba[3] > 0)
    with rasterio.open(ours) as ds:
        assert ds.count == 3


@pytest.mark.parametrize("size", [(300, 200), (1300, 40), (513, 2000)])
def test_small_and_thin_images(tmp_path, size):
    width, height = size
    data = ortho(height, width)
    src = rasters.write(tmp_path / "in.tif", data)
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, data)


@pytest.mark.parametrize("crs, transform, tags", [
    (CRS.from_epsg(4326), from_origin(44.1, 15.4, 1e-5, 1e-5), {}),
    (CRS.from_epsg(2154), from_origin(650000, 6860000, 0.2, 0.2), {"AREA_OR_POINT": "Point"}),
    # a CRS without an EPSG code, and a rotated grid (ModelTransformation)
    (CRS.from_proj4("+proj=lcc +lat_1=30 +lat_2=60 +lat_0=45 +lon_0=10 +x_0=0 +y_0=0 +ellps=GRS80 +units=m"),
     Affine(0.5, 0.1, 1000.0, 0.1, -0.5, 2000.0), {"TIFFTAG_DATETIME": "2024:05:01 10:00:00", "survey": "A7"}),
    (None, None, {}),
])
def test_georeferencing_tags_are_gdals_own(tmp_path, crs, transform, tags):
    data = ortho(600, 700)
    src = rasters.write(tmp_path / "in.tif", data, crs=crs, transform=transform)
    if tags:
        with rasterio.open(src, "r+") as ds:
            ds.update_tags(**tags)
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, data)
    geo = [[t for t in tiff_layout.read_first_ifd(p.read_bytes()) if t.code in GEO_TAGS] for p in (ours, gdal)]
    assert geo[0] == geo[1]  # byte for byte what GDAL writes
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert (a.crs, a.transform, a.tags()) == (b.crs, b.transform, b.tags())


def test_bigtiff_layout_reads_the_same(tmp_path):
    data = ortho(900, 1100)
    src = rasters.write(tmp_path / "in.tif", data, nodata=0)
    plan = plan_for(src)
    ours, gdal = tmp_path / "ours.tif", tmp_path / "gdal.tif"
    with rasterio.open(src) as ds:
        write_jpeg_cog(ds, ours, 85, plan.creation["OVERVIEW_COUNT"], "nodata", bigtiff=True)
        cog.write_cog(ds, gdal, dataclasses.replace(plan, writer="gdal"))
    assert ours.read_bytes()[:4] == b"II+\x00"
    assert_same_as_gdal(ours, gdal, data, (data != 0).any(0))


def test_another_gdal_build_reads_it(tmp_path):
    """Debian's GDAL (libjpeg-turbo, another libtiff) reads the layout, mask and pixels as rasterio does."""
    if not (shutil.which("gdalinfo") and shutil.which("gdal_translate")):
        pytest.skip("gdal-bin is not installed")
    data = ortho(1100, 1300)
    data[:, :60] = 0
    src = rasters.write(tmp_path / "in.tif", data, nodata=0)
    ours, _ = write_both(src, tmp_path)
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(ours)], capture_output=True, check=True,
                                     timeout=60).stdout)
    structure = info["metadata"]["IMAGE_STRUCTURE"]
    assert (structure["LAYOUT"], structure["COMPRESSION"], structure["JPEG_QUALITY"]) == ("COG", "YCbCr JPEG", "85")
    band = info["bands"][0]
    assert info["size"] == [1300, 1100] and band["block"] == [512, 512]
    assert [o["size"] for o in band["overviews"]] == [[650, 550], [325, 275], [162, 137]]
    assert band["mask"]["flags"] == ["PER_DATASET"] and len(band["mask"]["overviews"]) == 3
    assert info["coordinateSystem"]["wkt"] and info["geoTransform"] == list(from_origin(
        *rasters.ORIGIN, 2.0, 2.0).to_gdal())
    raw = tmp_path / "decoded.tif"
    subprocess.run(["gdal_translate", "-q", "-b", "1", "-b", "2", "-b", "3", "-b", "mask", str(ours), str(raw)],
                   check=True, timeout=60)
    with rasterio.open(raw) as d, rasterio.open(ours) as o:
        theirs, mine = d.read(), o.read()
        assert np.array_equal(d.read(4) > 0, o.dataset_mask() > 0)
    inside = (data != 0).any(0)
    assert np.abs(theirs[:3].astype(int) - mine)[:, inside].mean() < 1.0  # two libjpeg decoders


def test_which_writer(tmp_path):
    rgb = rasters.write(tmp_path / "rgb.tif", ortho(64, 64))
    assert plan_for(rgb).writer == "jpeg"
    assert plan_for(rgb, compression="webp").writer == "gdal"
    assert plan_for(rgb, compression="deflate").writer == "gdal"
    assert plan_for(rgb, tiling_scheme="GoogleMapsCompatible").writer == "gdal"  # a warp: GDAL's
    grey = rasters.write(tmp_path / "grey.tif", ortho(64, 64)[:1])
    assert plan_for(grey, compression="jpeg").writer == "gdal"  # one band: GDAL's (not YCbCr)
    assert plan_for(rasters.gcp_only(tmp_path / "gcps.tif")).writer == "gdal"  # georeferenced by GCPs: GDAL's


def test_make_cog_writes_it_and_says_so(tmp_path):
    data = ortho(700, 900)
    data[:, :40] = 0
    src = rasters.write(tmp_path / "site.tif", data, nodata=0)
    result = cog.make_cog(src, tmp_path / "out", CogOptions.from_mapping({}, {}))
    doc = json.loads((tmp_path / "out" / "site.json").read_text())
    assert doc["output"]["writer"] == "geoworker (libjpeg-turbo)"
    assert doc["output"]["validation"] == {"valid": True, "errors": [], "warnings": []}
    assert doc["output"]["overviews"] == [2, 4] and result["outputs"]["cog"] == "site.cog.tif"
    with rasterio.open(tmp_path / "out" / "site.cog.tif") as ds:
        assert np.array_equal(ds.dataset_mask() > 0, (data != 0).any(0))


@pytest.mark.parametrize("profile", [{}, {"tiled": True}])
def test_truncated_input_fails_cleanly_even_unchecked(tmp_path, profile):
    """With header checks off, a truncated file is refused (not written as zeros) and nothing is left behind."""
    src = rasters.write(tmp_path / "cut.tif", ortho(1500, 1500), **profile)
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size // 2)
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="cannot be read"):
        cog.make_cog(src, out, CogOptions.from_mapping({}, {"validate_headers": False}))
    assert list(out.iterdir()) == []  # no COG, no .part file, no spool of tiles


def test_layout_is_gdals_cog_layout(tmp_path):
    """The byte layout GDAL's COG driver writes and its readers rely on, checked in the file itself."""
    data = ortho(1100, 1300)
    data[:, :, :40] = 0
    src = rasters.write(tmp_path / "in.tif", data, nodata=0)
    ours, _ = write_both(src, tmp_path)
    raw = ours.read_bytes()
    ghost = tiff_layout.ghost_header(True)
    assert raw[8:8 + len(ghost)] == ghost and b"MASK_INTERLEAVED_WITH_IMAGERY=YES" in ghost
    ifds = tiff_layout.read_ifds(raw)
    tags = [{t.code: t.values for t in ifd} for _, ifd in ifds]
    # full resolution, its mask, the overviews, their masks
    assert [t.get(254, (0,))[0] for t in tags] == [0, 4, 1, 1, 1, 5, 5, 5]
    assert [t[256][0] for t in tags] == [1300, 1300, 650, 325, 162, 650, 325, 162]
    offsets = [ifd_at for ifd_at, _ in ifds]
    assert offsets == sorted(offsets) and offsets[0] < 300
    first_tile = min(min(t[324]) for t in tags)
    assert max(offsets) < first_tile  # every IFD before any tile data
    # each tile: its size before it, its last 4 bytes again after it
    for t in tags:
        for at, size in zip(t[324], t[325]):
            assert int.from_bytes(raw[at - 4:at], "little") == size
            assert raw[at + size:at + size + 4] == raw[at + size - 4:at + size]
    # data: smallest overview first, full resolution last; each mask tile right after its image tile
    image_levels = [tags[0], tags[2], tags[3], tags[4]]
    mask_levels = [tags[1], tags[5], tags[6], tags[7]]
    starts = [min(t[324]) for t in image_levels]
    assert starts == sorted(starts, reverse=True)
    for image, mask in zip(image_levels, mask_levels):
        for at, size, mask_at in zip(image[324], image[325], mask[324]):
            assert mask_at == at + size + 4 + 4
    assert len(raw) == max(at + size for t in tags for at, size in zip(t[324], t[325])) + 4


@pytest.mark.parametrize("profile", [
    {"interleave": "band"},
    {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "jpeg", "photometric": "ycbcr"},
    {"compress": "lzw", "blockysize": 7},
])
def test_source_layouts(tmp_path, profile):
    """Band-interleaved, JPEG-compressed and oddly striped sources read the same through the writer's reader."""
    data = ortho(700, 900)
    src = rasters.write(tmp_path / "in.tif", data, **profile)
    with rasterio.open(src) as ds:
        source = ds.read()  # what GDAL decodes (lossy for the JPEG source)
    ours, gdal = write_both(src, tmp_path)
    assert_same_as_gdal(ours, gdal, source)
