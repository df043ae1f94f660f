"""Broken and hostile inputs end as one specific, permanent error with a helpful message.

Never a crash, a generic internal error or a hang: each case runs under a timeout.
"""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rasterio.transform import from_origin
import pytest
from PIL import Image

from geoworker.errors import InvalidInput, TooLarge, Unsupported, describe
from geoworker.processing import Options, describe_file, process_file
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

pytestmark = pytest.mark.timeout(60)
NATIVE = Options(coordinate_system="native")


def refused(src, tmp_path, options=NATIVE):
    """Run both entry points; return the error process_file raised (describe_file must agree)."""
    with pytest.raises((InvalidInput, TooLarge, Unsupported)) as err:
        process_file(src, tmp_path / "out", options)
    with pytest.raises(type(err.value)):
        describe_file(src, options)
    code, message, permanent = describe(err.value)
    assert permanent and code in ("invalid_input", "too_large", "unsupported")
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    return err.value


def test_empty_file(tmp_path):
    src = tmp_path / "empty.tif"
    src.write_bytes(b"")
    err = refused(src, tmp_path)
    assert err.code == "invalid_input" and "empty" in err.message


def test_missing_file(tmp_path):
    err = refused(tmp_path / "nope.tif", tmp_path)
    assert "does not exist" in err.message


def test_text_named_tif(tmp_path):
    src = tmp_path / "notes.tif"
    src.write_text("This is not an image, it is a note.\n")
    err = refused(src, tmp_path)
    assert err.code == "invalid_input" and "text file, not a TIFF" in err.message and "This is not" in err.message


def test_png_named_tif(tmp_path):
    src = tmp_path / "photo.tif"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(src, format="PNG")
    err = refused(src, tmp_path)
    assert err.message == "the file is a PNG image, not a TIFF"


def test_jpeg_named_tif(tmp_path):
    src = tmp_path / "photo.tif"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(src, format="JPEG")
    assert refused(src, tmp_path).message == "the file is a JPEG image, not a TIFF"


def test_random_bytes(tmp_path):
    src = tmp_path / "noise.tif"
    src.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    err = refused(src, tmp_path)
    assert "not a TIFF" in err.message


def test_truncated_mid_strip(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(400, 300), photometric="RGB",
                        compress="deflate", blockysize=10)
    blocks = rasters.strip_offsets(src)
    offset, size = blocks[12]
    with open(src, "r+b") as fh:
        fh.truncate(offset + size // 2)
    err = refused(src, tmp_path)
    assert err.code == "invalid_input"
    assert err.message.startswith(f"TIFF is truncated: strip 13 of {len(blocks)} ends at byte")


def test_truncated_uncompressed(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(400, 300), photometric="RGB")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    err = refused(src, tmp_path)
    assert "truncated" in err.message


def test_truncated_header(tmp_path):
    src = tmp_path / "in.tif"
    src.write_bytes(b"II*\x00\x00\x10\x00\x00")
    err = refused(src, tmp_path)
    assert "truncated" in err.message or "no image" in err.message


def test_corrupt_compressed_block(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(256, 256), photometric="RGB",
                        tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    offset, size = rasters.strip_offsets(src)[5]
    with open(src, "r+b") as fh:
        fh.seek(offset + 2)
        fh.write(bytes([0xFF, 0x00, 0xAA, 0x55] * (size // 8)))
    err = refused(src, tmp_path)
    assert err.code == "invalid_input" and "cannot be decoded" in err.message


def test_zero_dimensions(tmp_path):
    src = tmp_path / "zero.tif"
    src.write_bytes(rasters.minimal_tiff(0, 10))
    err = refused(src, tmp_path)
    assert err.message.startswith("the TIFF declares zero dimensions (0 x 10 pixels)")


def test_tiny_file_declaring_a_million_by_a_million(tmp_path):
    src = tmp_path / "bomb.tif"
    src.write_bytes(rasters.minimal_tiff(1_000_000, 1_000_000, compression=8, strip_bytes=64))
    assert src.stat().st_size < 300
    err = refused(src, tmp_path)
    assert err.code == "invalid_input"
    assert "1,000,000 x 1,000,000 pixels" in err.message and "corrupt" in err.message
    src.write_bytes(rasters.minimal_tiff(1_000_000, 1_000_000, compression=1, strip_bytes=64))
    assert "TIFF is truncated" in refused(src, tmp_path).message


def test_huge_sparse_file_is_named_a_decompression_bomb(tmp_path):
    src = tmp_path / "huge.tif"
    src.write_bytes(rasters.minimal_tiff(4_000_000, 4_000_000, compression=8, strip_bytes=64))
    with open(src, "r+b") as fh:
        fh.truncate(4 << 30)  # sparse: a plausible size on paper, nothing on disk
    err = refused(src, tmp_path, Options(max_file_size=1 << 40))
    assert err.code == "invalid_input"
    assert err.message == ("the TIFF declares 4,000,000 x 4,000,000 pixels (16.0 TB of pixel data) but holds only "
                           "64 bytes of pixel data: refused as a decompression bomb (a sparse or hostile file, or a "
                           "corrupt header)")
    # without the header parser, GDAL's view of the same file meets the pixel budget
    err = refused(src, tmp_path, Options(max_file_size=1 << 40, validate_headers=False))
    assert err.code == "too_large" and "4,000,000 x 4,000,000 pixels" in err.message and "gigapixels" in err.message


def test_file_above_max_file_size(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(100, 100))
    err = refused(src, tmp_path, Options(max_file_size=10_000))
    assert err.code == "too_large" and "larger than the 10.0 KB" in err.message


def test_complex_dtype_is_unsupported(tmp_path):
    data = (np.ones((20, 20)) + 1j * np.ones((20, 20))).astype(np.complex64)
    src = rasters.write(tmp_path / "in.tif", data)
    err = refused(src, tmp_path)
    assert err.code == "unsupported" and "complex" in err.message
    # the header check alone says the same when GDAL is never reached
    src.write_bytes(rasters.minimal_tiff(4, 4, sample_format=6, bits=64, strip_bytes=128))
    assert refused(src, tmp_path).code == "unsupported"


def test_validate_headers_off_still_refuses_impostors(tmp_path):
    src = tmp_path / "photo.tif"
    Image.new("RGB", (10, 10)).save(src, format="PNG")
    err = refused(src, tmp_path, Options(validate_headers=False))
    assert err.code == "invalid_input" and "not a readable GeoTIFF" in err.message


def test_multipage_processes_first_page_and_says_so(tmp_path):
    src = rasters.multipage(tmp_path / "pages.tif")
    result = process_file(src, tmp_path / "out", NATIVE)
    assert any("2 images (pages); only the first" in w for w in result["warnings"])
    meta = json.loads((tmp_path / "out" / "pages.json").read_text())
    assert meta["file"]["pages"] == 2 and any("pages" in w for w in meta["warnings"])
    with Image.open(tmp_path / "out" / "pages.png") as img:
        assert img.size == (60, 40)
        assert np.array_equal(np.asarray(img), np.moveaxis(rasters.gradient_rgb(40, 60), 0, -1))


def test_a_local_site_grid_is_kept_on_its_own_grid_not_retried(tmp_path):
    """Site plans often use a local engineering CRS: no map can place them, but the PNG is still wanted."""
    from rasterio.crs import CRS

    from geoworker.processing import Options, process_file

    src = tmp_path / "site_grid.tif"
    local = CRS.from_wkt('LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],'
                         'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    with rasterio.open(src, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8", crs=local,
                       transform=from_origin(1000, 2000, 0.5, 0.5)) as ds:
        ds.write(np.full((3, 30, 40), 120, dtype="uint8"))
    result = process_file(src, tmp_path / "out", Options(max_size=40))
    assert any("local engineering grid" in w for w in result["warnings"])
    doc = json.loads((tmp_path / "out" / result["outputs"]["metadata"]).read_text())
    assert doc["bounds_wgs84"] is None and doc["corners_wgs84"] is None
    world = (tmp_path / "out" / result["outputs"]["world_file"]).read_text().split()
    assert float(world[4]) == pytest.approx(1000.25) and float(world[5]) == pytest.approx(1999.75)


def test_coordinates_nowhere_on_earth_fail_at_once_as_invalid_input(tmp_path):
    """An origin of 1e30 used to send PROJ into minutes of work, then a retry loop."""
    from geoworker.errors import InvalidInput
    from geoworker.processing import Options, process_file

    src = tmp_path / "broken_origin.tif"
    with rasterio.open(src, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8", crs="EPSG:32638",
                       transform=from_origin(1e30, 1e30, 1, 1)) as ds:
        ds.write(np.ones((1, 10, 10), dtype="uint8"))
    with pytest.raises(InvalidInput, match="implausible"):
        process_file(src, tmp_path / "out", Options())


def test_deflate_bomb_is_refused_before_decoding_naming_its_declared_size(tmp_path):
    """Issue 14: 100,000 x 100,000 x 3 zeros in DEFLATE tiles is 34 MB (880:1, under DEFLATE's
    own ceiling, so no compression ratio catches it) and 30 GB to decode."""
    src = rasters.deflate_bomb(tmp_path / "zeros.tif")
    assert 20e6 < src.stat().st_size < 50e6
    err = refused(src, tmp_path, Options(max_file_size=1 << 30))
    assert err.code == "too_large"
    assert err.message.startswith("the TIFF declares 100,000 x 100,000 pixels x 3 bands of uint8 "
                                  "(10.0 gigapixels, 30.0 GB once decoded): more than the 4.3 gigapixels")
    # the decoded-bytes half of the budget, and a job lowering it
    err = refused(src, tmp_path, Options(max_file_size=1 << 30, max_pixels=1 << 40))
    assert err.code == "too_large" and "30.0 GB once decoded): more than the 8.6 GB" in err.message
    small = rasters.write(tmp_path / "small.tif", rasters.gradient_rgb(100, 100))
    err = refused(small, tmp_path, Options.from_mapping({}, {"maxDecodedBytes": 29_999}))
    assert "100 x 100 pixels x 3 bands of uint8" in err.message and "max_decoded_bytes = 29999" in err.message


def test_sparse_deflate_bomb_holds_no_pixel_data(tmp_path):
    src = rasters.deflate_bomb(tmp_path / "sparse.tif", sparse=True)
    err = refused(src, tmp_path, Options(max_file_size=1 << 30))
    assert err.code == "invalid_input" and "declares 100,000 x 100,000 pixels" in err.message
    assert "refused as a decompression bomb" in err.message
