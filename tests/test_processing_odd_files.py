"""Files GDAL reads that the pipeline used to crash on, GDAL's errors as one specific line,
and the libraries' chatter kept off stderr (logged once, naming the file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from loguru import logger
from PIL import Image

from geoworker.errors import describe
from geoworker.processing import Options, describe_file, process_file
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

NATIVE = Options(coordinate_system="native")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ojpeg_file(tmp_path):
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, np.arange(96)[None, :] * 2, 40
    return rasters.old_style_jpeg(tmp_path / "scan1994.tif", rgb), rgb


@pytest.mark.skipif(not shutil.which("gdal_translate"), reason="gdal-bin is not installed")
def test_old_style_jpeg_is_read_as_gdal_reads_it(tmp_path):
    src, rgb = ojpeg_file(tmp_path)
    result = process_file(src, tmp_path / "out", NATIVE)
    meta = json.loads((tmp_path / "out" / "scan1994.json").read_text())
    assert meta["compression"] == "ojpeg" and meta["colorinterp"] == ["red", "green", "blue"]
    subprocess.run(["gdal_translate", "-q", "-of", "PNG", str(src), str(tmp_path / "gdal.png")], check=True, timeout=60)
    with Image.open(tmp_path / "out" / "scan1994.png") as ours, Image.open(tmp_path / "gdal.png") as theirs:
        assert ours.mode == "RGB" and np.array_equal(np.asarray(ours), np.asarray(theirs))
        assert np.abs(np.asarray(ours).astype(int) - rgb).max() <= 8  # JPEG at quality 95
    assert describe_file(src, NATIVE)["compression"] == "ojpeg"
    assert result["metadata"]["output"]["mode"] == "RGB"


def test_logluv_hdr_is_read_and_stretched(tmp_path):
    luminance = np.tile(np.linspace(0.01, 1.0, 80)[None, :], (50, 1))
    src = rasters.logluv(tmp_path / "hdr.tif", luminance)
    with rasterio.open(src) as ds:  # GDAL decodes it to CIE X, Y, Z floats
        assert ds.dtypes == ("float32",) * 3
        assert np.allclose(ds.read(2), luminance, rtol=0.01)
    process_file(src, tmp_path / "out", NATIVE)
    meta = json.loads((tmp_path / "out" / "hdr.json").read_text())
    assert meta["compression"] == "sgilog" and meta["dtypes"] == ["float32"] * 3
    with Image.open(tmp_path / "out" / "hdr.png") as img:
        pixels = np.asarray(img).astype(int)
    assert img.mode == "RGB" and pixels.min() == 0 and pixels.max() == 255
    assert (np.diff(pixels[25, :, 1]) >= 0).all()  # the luminance ramp stays a ramp


@pytest.mark.parametrize("compress", ["jpeg", "lzw", "deflate", "zstd", "webp", "lerc"])
def test_a_corrupt_block_of_any_codec_is_invalid_input_naming_the_codec_error(tmp_path, compress):
    src = rasters.write(tmp_path / "in.tif", rasters.gradient_rgb(256, 256), photometric="RGB", tiled=True,
                        blockxsize=64, blockysize=64, compress=compress)
    offset, size = rasters.strip_offsets(src)[5]
    with open(src, "r+b") as fh:
        fh.seek(offset + 2)
        fh.write(bytes([0xFF, 0x00, 0xAA, 0x55] * (size // 8)))
    for options in (NATIVE, Options(coordinate_system="native", max_size=100)):  # direct and decimated reads
        with pytest.raises(Exception) as err:
            process_file(src, tmp_path / "out", options)
        code, message, permanent = describe(err.value)
        assert (code, permanent) == ("invalid_input", True)
        assert "cannot be decoded" in message and "See previous exception" not in message
        assert "failed" in message and "(" in message  # which block, and the codec's own reason
        assert str(tmp_path) not in message  # no server paths


def test_library_warnings_are_logged_once_naming_the_file(tmp_path):
    src, _ = ojpeg_file(tmp_path)
    lines = []
    sink = logger.add(lambda m: lines.append(str(m).strip()), level="INFO", format="{message}")
    try:
        process_file(src, tmp_path / "out", NATIVE)
    finally:
        logger.remove(sink)
    ojpeg = [line for line in lines if "old-style JPEG" in line]
    assert len(ojpeg) == 1 and ojpeg[0].startswith("scan1994.tif: GDAL: ")
    assert len([line for line in lines if "NotGeoreferencedWarning" in line]) == 1


def test_cli_stderr_carries_only_the_pipeline_warnings(tmp_path):
    src, _ = ojpeg_file(tmp_path)
    nocrs = rasters.geotransform_without_crs(tmp_path / "nocrs.tif")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOWORKER_", "PG", "DATABASE_URL"))}
    for path in (src, nocrs):
        proc = subprocess.run([sys.executable, "-m", "geoworker", "process", str(path), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        noise = [line for line in proc.stderr.splitlines() if not line.startswith("warning: ")]
        assert noise == [], noise  # no GDAL 'Warning 1:', no NotGeoreferencedWarning, no RuntimeWarning
        assert any("coordinate reference system" in line for line in proc.stderr.splitlines())
