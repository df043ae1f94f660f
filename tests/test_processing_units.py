"""Pure parts of the pipeline: options, stretch, statistics, world-file math, PNG encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from geoworker.errors import BadParams
from geoworker.processing import Options, encode, georef, render
from geoworker.processing.read import output_shape
from geoworker.processing.validate import sniff_kind


# --- options ---------------------------------------------------------------------------

CONFIG = {"max_image_size": 2048, "thumbnail_size": 128, "generate_thumbnails": True, "compression_quality": 80,
          "coordinate_system": "EPSG:4326", "stretch": "auto", "percentiles": [2, 98], "resampling": "average",
          "max_file_size": 1000, "validate_headers": True}


def test_options_defaults_match_design():
    o = Options()
    assert (o.max_size, o.thumbnail_size, o.coordinate_system, o.stretch, o.percentiles, o.output_format) == \
        (4096, 256, "EPSG:4326", "auto", (2.0, 98.0), "png")


def test_options_from_config_then_params_camel_and_snake():
    o = Options.from_mapping(CONFIG, {"maxSize": "512", "thumbnail_size": 0, "outputFormat": "JPG",
                                      "coordinateSystem": "native", "bands": "3,2,1", "percentiles": "1, 99",
                                      "colormap": "Viridis", "somethingUnknown": {"x": 1}})
    assert o.max_size == 512 and o.thumbnail_size == 0 and o.output_format == "jpeg"
    assert o.coordinate_system == "native" and o.bands == (3, 2, 1) and o.percentiles == (1.0, 99.0)
    assert o.colormap == "viridis" and o.compression_quality == 80 and o.max_file_size == 1000
    assert o.extension == "jpg" and o.world_file_extension == "jgw"


@pytest.mark.parametrize("params, field", [
    ({"maxSize": "abc"}, "max_size must be an integer between 16 and 16384, got 'abc'"),
    ({"max_size": True}, "max_size"),
    ({"max_size": 10**6}, "max_size"),
    ({"stretch": "log"}, "stretch must be one of auto, none, minmax, percentile"),
    ({"percentiles": [98, 2]}, "percentiles"),
    ({"bands": [1, 2]}, "bands"),
    ({"bands": "red"}, "bands"),
    ({"resampling": "warp_only_sum"}, "resampling"),
    ({"coordinate_system": "EPSG:999999"}, "coordinate_system"),
    ({"outputFormat": "gif"}, "output_format"),
    ({"colormap": "rainbow-unicorn"}, "colormap"),
    ({"generate_thumbnails": "maybe"}, "generate_thumbnails"),
    ({"compression_quality": 0}, "compression_quality"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(BadParams) as err:
        Options.from_mapping(CONFIG, params)
    assert field in str(err.value)
    assert err.value.code == "invalid_input" and err.value.permanent


def test_params_that_are_not_a_mapping_are_bad_params():
    with pytest.raises(BadParams):
        Options.from_mapping(CONFIG, ["max_size", 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["max_pixels", "max_decoded_bytes", "max_file_size"])
def test_a_job_can_lower_the_operators_limits_but_never_raise_them(name):
    limits = {**CONFIG, "max_pixels": 10_000, "max_decoded_bytes": 30_000, "max_file_size": 1000}
    camel = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
    assert getattr(Options.from_mapping(limits, {camel: 500}), name) == 500
    assert getattr(Options.from_mapping(limits, {}), name) == limits[name]
    with pytest.raises(BadParams, match=f"^{name} can only lower this worker's limit of {limits[name]}, got 100000$"):
        Options.from_mapping(limits, {name: 100_000})


def test_budget_defaults_come_from_the_processing_settings(tmp_path):
    from geoworker.config import load_settings
    from geoworker.processing.options import defaults_from_settings

    default = Options()
    settings = load_settings(None, environ={}, base_dir=tmp_path)
    assert (settings.processing.max_pixels, settings.processing.max_decoded_bytes) == \
        (default.max_pixels, default.max_decoded_bytes) == (1 << 32, 8 << 30)
    settings = load_settings(None, environ={"GEOWORKER_PROCESSING_MAX_PIXELS": "1000000",
                                            "GEOWORKER_PROCESSING_MAX_DECODED_BYTES": "3000000"}, base_dir=tmp_path)
    options = Options.from_mapping(defaults_from_settings(settings), {})
    assert (options.max_pixels, options.max_decoded_bytes) == (1_000_000, 3_000_000)
    with pytest.raises(BadParams, match="can only lower"):
        Options.from_mapping(defaults_from_settings(settings), {"maxPixels": 2_000_000})


def test_rpc_height_param():
    assert Options.from_mapping(CONFIG, {"rpcHeight": "812.5"}).rpc_height == 812.5
    assert Options().rpc_height is None
    for bad in ("high", 1e9, True, float("nan")):
        with pytest.raises(BadParams, match="rpc_height must be a height in metres"):
            Options.from_mapping(CONFIG, {"rpc_height": bad})


# --- statistics and stretch -------------------------------------------------------------


def test_histogram_statistics_match_numpy_for_uint16_and_int16():
    rng = np.random.default_rng(3)
    for dtype, lo, hi in ((np.uint16, 0, 65535), (np.int16, -32768, 32767)):
        band = rng.integers(lo, hi, (300, 200), dtype=dtype, endpoint=True)
        valid = rng.random((300, 200)) > 0.3
        s = render.band_statistics(band, valid, (2, 98))
        values = band[valid].astype(np.float64)
        assert s.min == values.min() and s.max == values.max()
        assert s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std())
        # nearest-rank percentile: within one value step of numpy's interpolated one
        assert abs(s.low - np.percentile(values, 2)) <= (hi - lo) * 1e-3
        assert abs(s.high - np.percentile(values, 98)) <= (hi - lo) * 1e-3
        assert s.valid_percent == pytest.approx(100 * valid.mean())


def test_float_statistics_ignore_nan_and_invalid():
    band = np.array([[1.0, 2.0, np.nan], [4.0, 1000.0, 3.0]], np.float32)
    valid = np.array([[True, True, True], [True, False, True]])
    s = render.band_statistics(band, valid)
    assert (s.min, s.max) == (1.0, 4.0) and s.mean == pytest.approx(2.5)


def test_no_valid_pixel_gives_empty_statistics_and_no_stretch():
    s = render.band_statistics(np.zeros((4, 4), np.uint16), np.zeros((4, 4), bool))
    assert s.min is None and s.valid_percent == 0.0
    assert render.stretch_range(s, np.dtype(np.uint16), "auto") is None


def test_auto_stretch_keeps_uint8_and_stretches_others():
    s = render.BandStats(10, 20, 15, 1, 100.0, 11, 19)
    assert render.stretch_range(s, np.dtype(np.uint8), "auto") is None
    assert render.stretch_range(s, np.dtype(np.uint16), "auto") == (11, 19)
    assert render.stretch_range(s, np.dtype(np.uint8), "minmax") == (10, 20)
    assert render.stretch_range(s, np.dtype(np.float32), "none") is None


def test_linear_rescale_maps_range_onto_full_byte_range():
    band = np.array([[1000, 2000, 3000, 4000, 5000]], np.uint16)
    out = render.linear_rescale(band, (2000, 4000))
    assert out.tolist() == [[0, 0, 128, 255, 255]]
    f = render.linear_rescale(band.astype(np.float64), (2000, 4000))
    assert f.tolist() == out.tolist()
    i16 = render.linear_rescale(np.array([[-100, 0, 100]], np.int16), (-100, 100))
    assert i16[0, 0] == 0 and i16[0, 2] == 255 and abs(int(i16[0, 1]) - 128) <= 1


def test_constant_band_is_mid_grey_not_black():
    out = render.linear_rescale(np.full((3, 3), 777, np.uint16), (777, 777))
    assert (out == 128).all()


def test_colormap_luts_have_256_entries_from_anchor_colours():
    for name in render.COLORMAPS:
        lut = render.colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert tuple(lut[0]) == render.COLORMAPS[name][0] and tuple(lut[255]) == render.COLORMAPS[name][-1]


def test_pixels_get_alpha_only_when_something_is_invalid():
    band = np.full((2, 2), 9, np.uint8)
    assert render.to_pixels([band], None).shape == (2, 2, 1)
    assert render.to_pixels([band] * 3, np.ones((2, 2), bool)).shape == (2, 2, 3)
    valid = np.array([[True, False], [True, True]])
    rgba = render.to_pixels([band, band + 1, band + 2], valid)
    assert rgba.shape == (2, 2, 4) and rgba[..., 3].tolist() == [[255, 0], [255, 255]]
    assert rgba[0, 1].tolist() == [0, 0, 0, 0] and rgba[0, 0].tolist() == [9, 10, 11, 255]


# --- grids and world files --------------------------------------------------------------


def test_output_shape_keeps_aspect_never_upscales():
    assert output_shape(8000, 4000, 4096) == (2048, 4096)
    assert output_shape(100, 50, 4096) == (50, 100)
    assert output_shape(100_000, 1, 4096) == (1, 4096)
    assert output_shape(1, 1, 16) == (1, 1)


def test_world_file_is_centre_of_upper_left_pixel_full_precision():
    t = Affine(0.1234567890123, 0.0, 414000.000001, 0.0, -0.1234567890123, 1698000.5)
    lines = georef.world_file_lines(t)
    assert [float(v) for v in lines] == [t.a, 0.0, 0.0, t.e, t.c + t.a / 2, t.f + t.e / 2]
    assert georef.transform_from_world_file(lines).almost_equals(t, precision=1e-12)


def test_world_file_carries_rotation_terms():
    t = Affine(2.0, 0.5, 100.0, 0.25, -2.0, 500.0)
    a, d, b, e, c, f = (float(v) for v in georef.world_file_lines(t))
    assert (a, d, b, e) == (2.0, 0.25, 0.5, -2.0)
    assert (c, f) == (100.0 + 1.0 + 0.25, 500.0 + 0.125 - 1.0)


def test_scaled_transform_keeps_footprint():
    t = Affine(0.5, 0.1, 10, 0.2, -0.5, 20)
    s = georef.scaled_transform(t, (1000, 800), (250, 200))
    assert s @ (250, 200) == pytest.approx(t @ (1000, 800))
    assert s @ (0, 0) == pytest.approx(t @ (0, 0))


# --- encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 1), (300, 17, 2), (700, 301, 4), (1, 3000, 3), (3000, 1, 1)])
def test_png_writer_is_lossless_and_valid(tmp_path, shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    size = encode.write_png(pixels, tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as img:
        img.load()  # zlib checks the adler32 and Pillow the chunk CRCs
        back = np.asarray(img)
    assert back.reshape(shape).tolist() == pixels.tolist()
    assert size == (tmp_path / "x.png").stat().st_size
    assert not list(tmp_path.glob(".*part"))


def test_adler32_combine_matches_zlib():
    import zlib

    a, b = b"hello world" * 1000, bytes(range(256)) * 300
    assert encode._adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_failed_write_leaves_no_final_or_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with encode.atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_sniff_names_common_impostors():
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    assert sniff_kind(buf.getvalue()) == "a PNG image"
    assert sniff_kind(b"\xff\xd8\xff\xe0rest") == "a JPEG image"
    assert sniff_kind(b"just some text\n") == "a text file"
    assert sniff_kind(b"<!DOCTYPE html><html>") == "an HTML page"
