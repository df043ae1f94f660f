"""The outputs checked against GDAL's own command-line tools on the same inputs.

Needs gdal-bin (Debian: apt-get install -y gdal-bin); skipped without it. Its GDAL
may differ from the one inside rasterio's wheel, which makes the check stronger: the
PNG's sidecars must be read the same by another build.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from geoworker.processing import Options, process_file, write_sample_orthophoto
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

pytestmark = pytest.mark.skipif(not shutil.which("gdal_translate"), reason="gdal-bin is not installed")


def gdal_translate(src, dst, width, height, *extra):
    subprocess.run(["gdal_translate", "-q", "-of", "PNG", "-outsize", str(width), str(height), *extra,
                    "-co", "WORLDFILE=YES", str(src), str(dst)], check=True, timeout=60)
    return [float(v) for v in dst.with_suffix(".wld").read_text().split()]


def ours(out_dir, stem="in"):
    return [float(v) for v in (out_dir / f"{stem}.pgw").read_text().split()]


@pytest.mark.parametrize("transform", [
    Affine(2.0, 0.0, 414000.0, 0.0, -2.0, 1698000.0),
    Affine(0.3, 0.0, 414000.25, 0.0, -0.7, 1698000.75),
    Affine(2.0, 0.4, 414000.0, 0.3, -2.0, 1698000.0),  # rotated / sheared
])
@pytest.mark.parametrize("max_size", [50, 123, 400])
def test_world_file_matches_gdal_translate(tmp_path, transform, max_size):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(300, 400), transform=transform,
                        photometric="RGB")
    result = process_file(src, tmp_path / "out", Options(coordinate_system="native", max_size=max_size))
    w, h = result["metadata"]["output"]["width"], result["metadata"]["output"]["height"]
    expected = gdal_translate(src, tmp_path / "gdal.png", w, h)
    assert ours(tmp_path / "out") == pytest.approx(expected, rel=1e-12, abs=1e-9)  # GDAL writes 10 decimals


def test_pixels_match_gdal_translate_unscaled_and_averaged(tmp_path):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(300, 400), photometric="RGB",
                        tiled=True, blockxsize=64, blockysize=64, compress="lzw")
    process_file(src, tmp_path / "full", Options(coordinate_system="native"))
    gdal_translate(src, tmp_path / "gdal_full.png", 400, 300)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "full" / "in.png")),
                          np.asarray(Image.open(tmp_path / "gdal_full.png")))

    process_file(src, tmp_path / "small", Options(coordinate_system="native", max_size=150))
    gdal_translate(src, tmp_path / "gdal_small.png", 150, 112, "-r", "average")
    a = np.asarray(Image.open(tmp_path / "small" / "in.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "gdal_small.png")).astype(int)
    assert a.shape == b.shape == (112, 150, 3)
    assert np.abs(a - b).max() <= 1  # same average; rounding may differ between GDAL builds


def test_gdalinfo_reads_our_png_georeferenced(tmp_path):
    src = write_sample_orthophoto(tmp_path / "in.tif", size=256)
    for cs, epsg in (("EPSG:4326", "4326"), ("native", "32638"), ("EPSG:3857", "3857")):
        out = tmp_path / cs.replace(":", "")
        result = process_file(src, out, Options(coordinate_system=cs))
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(out / "in.png")], check=True,
                                         capture_output=True, text=True, timeout=60).stdout)
        meta = json.loads((out / "in.json").read_text())
        assert info["geoTransform"] == pytest.approx(Affine(*meta["output"]["transform"]).to_gdal(), rel=1e-12)
        assert result["metadata"]["output"]["crs_epsg"] == int(epsg)
        assert f'ID["EPSG",{epsg}]' in info["coordinateSystem"]["wkt"].replace(" ", "")
        assert info["bands"][-1]["colorInterpretation"] == "Alpha"  # the nodata collar
    # the .prj alone (ESRI WKT) is understood too
    prj = (tmp_path / "native" / "in.prj").read_text()
    srs = subprocess.run(["gdalsrsinfo", "-o", "epsg", prj], capture_output=True, text=True, timeout=60).stdout
    assert "32638" in srs or "UTM zone 38N" in subprocess.run(
        ["gdalsrsinfo", "-o", "wkt1", prj], capture_output=True, text=True, timeout=60).stdout
