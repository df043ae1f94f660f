"""Sidecar files beside the input: world files, .aux.xml, .msk and .ovr are honoured, as GDAL does.

Each test writes a TIFF and one kind of sidecar, checks that the outputs follow the
sidecar (and would not without it), and that read.sidecar_files names exactly the files
gdalinfo lists for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from geoworker.processing import Options, process_file
from geoworker.processing.georef import transform_from_world_file
from geoworker.processing.read import sidecar_files
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

NATIVE = Options(coordinate_system="native")
UTM38N_WKT = rasters.UTM38N.to_wkt()


def bare(path, data):
    """A TIFF with no georeferencing and no nodata of its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasters.write(path, data, crs=None)


def run(src, tmp_path, options=NATIVE):
    out = tmp_path / "out"
    result = process_file(src, out, options)
    return out, result, json.loads((out / result["outputs"]["metadata"]).read_text())


def gdalinfo_files(path):
    if not shutil.which("gdalinfo"):
        pytest.skip("gdal-bin is not installed")
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(path)], check=True, capture_output=True, text=True,
                                     timeout=60).stdout)
    return sorted(p for p in info["files"] if p != str(path))


def assert_named_as_gdal_does(src, *expected):
    ours = sorted(str(p) for p in sidecar_files(src))
    assert ours == sorted(str(src.parent / name) for name in expected)
    assert ours == gdalinfo_files(src)


@pytest.mark.parametrize("suffix", ["tfw", "tifw", "wld"])
def test_world_file_beside_the_tiff_georeferences_it(tmp_path, suffix):
    src = bare(tmp_path / "scan.tif", rasters.gradient_rgb(40, 60))
    world = Affine(0.5, 0.0, 414000.0, 0.0, -0.5, 1698000.0)
    (tmp_path / f"scan.{suffix}").write_text("0.5\n0\n0\n-0.5\n414000.25\n1697999.75\n")
    (tmp_path / "scan.tif.aux.xml").write_text(f"<PAMDataset><SRS>{UTM38N_WKT}</SRS></PAMDataset>")
    out, result, meta = run(src, tmp_path)
    assert meta["georeferencing"] == "transform" and meta["crs"]["epsg"] == 32638
    assert transform_from_world_file((out / "scan.pgw").read_text().split()).almost_equals(world, precision=1e-9)
    assert "UTM" in (out / "scan.prj").read_text()
    assert_named_as_gdal_does(src, f"scan.{suffix}", "scan.tif.aux.xml")
    # and so it can be warped: the default output lands in Sana'a
    out2 = tmp_path / "wgs"
    process_file(src, out2, Options())
    west, north = transform_from_world_file((out2 / "scan.pgw").read_text().split()) @ (0, 0)
    assert 44.19 < west < 44.2 and 15.35 < north < 15.36


def test_aux_xml_nodata_makes_the_collar_transparent(tmp_path):
    src = rasters.rgb_with_collar(tmp_path / "ortho.tif", size=60, collar=10)
    with rasterio.open(src, "r+") as ds:
        ds.nodata = None  # the TIFF itself says nothing: the sidecar will
    bands = "".join(f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue></PAMRasterBand>' for b in (1, 2, 3))
    (tmp_path / "ortho.tif.aux.xml").write_text(f"<PAMDataset>{bands}</PAMDataset>")
    out, _, meta = run(src, tmp_path)
    assert meta["nodata"] == [0, 0, 0]
    with Image.open(out / "ortho.png") as img:
        pixels = np.asarray(img)
    assert img.mode == "RGBA" and (pixels[:10, :, 3] == 0).all() and (pixels[10:50, 10:50, 3] == 255).all()
    assert_named_as_gdal_does(src, "ortho.tif.aux.xml")


def test_aux_xml_georeferencing_alone(tmp_path):
    src = bare(tmp_path / "plan.tif", rasters.gradient_rgb(30, 40))
    (tmp_path / "plan.tif.aux.xml").write_text(
        f"<PAMDataset><SRS>{UTM38N_WKT}</SRS><GeoTransform>414000, 2, 0, 1698000, 0, -2</GeoTransform></PAMDataset>")
    out, _, meta = run(src, tmp_path)
    assert meta["crs"]["epsg"] == 32638 and meta["transform"] == [2, 0, 414000, 0, -2, 1698000]
    assert [float(v) for v in (out / "plan.pgw").read_text().split()][4:] == [414001.0, 1697999.0]


def test_external_msk_mask_becomes_transparency(tmp_path):
    data = rasters.gradient_rgb(50, 50)
    mask = np.zeros((50, 50), np.uint8)
    mask[5:45, 5:45] = 255
    src = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False):
        with rasterio.open(src, "w", driver="GTiff", width=50, height=50, count=3, dtype="uint8", crs=rasters.UTM38N,
                           transform=from_origin(*rasters.ORIGIN, 2, 2), photometric="RGB") as ds:
            ds.write(data)
            ds.write_mask(mask)
    assert (tmp_path / "masked.tif.msk").exists()
    out, _, _ = run(src, tmp_path)
    with Image.open(out / "masked.png") as img:
        assert img.mode == "RGBA" and np.array_equal(np.asarray(img)[..., 3], mask)
    assert_named_as_gdal_does(src, "masked.tif.msk")


def test_external_ovr_overviews_are_listed_and_read(tmp_path):
    src = rasters.write(tmp_path / "big.tif", np.full((1, 512, 512), 100, np.uint8), tiled=True, blockxsize=128,
                        blockysize=128)
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(src, "r+") as ds:
        ds.build_overviews([2, 4])
    assert (tmp_path / "big.tif.ovr").exists()
    with rasterio.open(src, "r+") as ds:  # the full resolution changes; the .ovr keeps the old picture
        ds.write(np.full((1, 512, 512), 200, np.uint8))
    out, _, meta = run(src, tmp_path, Options(coordinate_system="native", max_size=128))
    assert meta["overviews"] == [2, 4]
    with Image.open(out / "big.png") as img:
        assert img.size == (128, 128) and (np.asarray(img) == 100).all()  # read from the .ovr
    assert_named_as_gdal_does(src, "big.tif.ovr")


def test_no_sidecars_and_unreadable_files(tmp_path):
    src = rasters.write(tmp_path / "plain.tif", rasters.gradient_rgb(10, 10))
    (tmp_path / "plain.png").write_bytes(b"not a sidecar")  # an unrelated neighbour
    assert sidecar_files(src) == []
    text = tmp_path / "notes.tif"
    text.write_text("not a TIFF")
    assert sidecar_files(text) == []


def test_a_broken_aux_xml_is_ignored_as_gdal_ignores_it(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(30, 40), photometric="RGB")
    (tmp_path / "in.tif.aux.xml").write_text('<PAMDataset><PAMRasterBand band="1"><NoDataValue>oops</NoDataValue>'
                                             '<Metadata><MDI key="a">')  # cut off mid-element
    out, result, meta = run(src, tmp_path)
    assert meta["nodata"] == [None, None, None] and meta["crs"]["epsg"] == 32638
    with Image.open(out / "in.png") as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.moveaxis(rasters.gradient_rgb(30, 40), 0, -1))
