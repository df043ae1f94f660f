"""Colours: class rasters get class colours and a legend, BGR files come out RGB, and every
rendering decision is made once per file and gives the same colours on any array of it
(what map tiles rely on)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from PIL import Image

from geoworker.processing import Options, process_file, read, render, style
import rasters  # tests/rasters.py (tests/ is on sys.path, as for tests/service.py)

NATIVE = Options(coordinate_system="native")
VALUES = (0, 1, 2, 3, 5, 10)


def run(src, tmp_path, options=NATIVE):
    out = tmp_path / "out"
    result = process_file(src, out, options)
    with Image.open(out / result["outputs"]["image"]) as img:
        pixels = np.asarray(img)
        mode = img.mode
    return mode, pixels, json.loads((out / result["outputs"]["metadata"]).read_text())


def colours(pixels):
    return {tuple(int(c) for c in p) for p in pixels.reshape(-1, pixels.shape[-1])}


# --- class rasters ---------------------------------------------------------------------------


def test_class_raster_gets_class_colours_and_a_legend(tmp_path):
    src = rasters.classes(tmp_path / "landcover.tif", VALUES, size=120)
    mode, pixels, meta = run(src, tmp_path)
    expected = {v: style.class_colour(v, VALUES) for v in VALUES}
    assert mode == "RGB" and meta["render_mode"] == "categorical"
    assert len(set(expected.values())) == len(VALUES)  # six classes, six colours
    for k, v in enumerate(VALUES):  # stripe k of 20 columns holds value v
        assert (pixels[:, 20 * k:20 * (k + 1)] == expected[v]).all()
    assert meta["style"]["kind"] == "categorical" and meta["style"]["classes"] == list(VALUES)
    legend = {entry["value"]: entry for entry in meta["legend"]}
    assert sorted(legend) == list(VALUES)
    assert legend[10]["color"] == "#%02x%02x%02x" % expected[10]
    assert sum(e["percent"] for e in legend.values()) == pytest.approx(100.0, abs=0.01)
    # the old rendering: values 0-10 kept as grey, i.e. a black picture
    assert pixels.mean() > 60


def test_class_raster_shrunk_with_nearest_never_blends_classes(tmp_path):
    src = rasters.classes(tmp_path / "landcover.tif", VALUES, size=600, tiled=True, blockxsize=128, blockysize=128)
    _, pixels, meta = run(src, tmp_path, Options(coordinate_system="native", max_size=97))
    assert pixels.shape[:2] == (97, 97)
    assert colours(pixels) <= {style.class_colour(v, VALUES) for v in VALUES}


def test_class_nodata_is_transparent_and_left_out_of_the_legend(tmp_path):
    src = rasters.classes(tmp_path / "landcover.tif", VALUES, size=120, nodata=0)
    mode, pixels, meta = run(src, tmp_path)
    assert mode == "RGBA" and (pixels[:, :20, 3] == 0).all() and (pixels[:, 20:, 3] == 255).all()
    assert [e["value"] for e in meta["legend"]] == [1, 2, 3, 5, 10]
    assert meta["style"]["classes"] == [1, 2, 3, 5, 10]


def test_stretch_or_colormap_param_wins_over_classes(tmp_path):
    src = rasters.classes(tmp_path / "landcover.tif", VALUES, size=120)
    mode, pixels, meta = run(src, tmp_path, Options(coordinate_system="native", stretch="minmax"))
    assert mode == "L" and meta["render_mode"] == "grey" and "legend" not in meta
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255
    mode, _, meta = run(src, tmp_path / "2", Options(coordinate_system="native", colormap="viridis"))
    assert mode == "RGB" and meta["render_mode"] == "grey" and meta["style"]["colormap"] == "viridis"


def test_continuous_and_black_and_white_uint8_stay_grey(tmp_path):
    scan = np.where(np.arange(60 * 80).reshape(60, 80) % 7 == 0, 0, 255).astype(np.uint8)
    src = rasters.write(tmp_path / "drawing.tif", scan)
    mode, pixels, meta = run(src, tmp_path)
    assert mode == "L" and meta["render_mode"] == "grey" and np.array_equal(pixels, scan)
    photo = rasters.texture(60, 80)  # 250 values
    src = rasters.write(tmp_path / "photo.tif", photo)
    mode, pixels, meta = run(src, tmp_path / "2")
    assert mode == "L" and np.array_equal(pixels, photo)


def test_a_band_described_as_classes_is_categorical_with_more_values(tmp_path):
    values = np.arange(60 * 40).reshape(60, 40) // 40 * 100  # 60 classes, 0..5900, uint16
    src = rasters.write(tmp_path / "zones.tif", values.astype(np.uint16))
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "Land cover class")
    _, pixels, meta = run(src, tmp_path)
    assert meta["render_mode"] == "categorical" and len(meta["legend"]) == 60
    # without the description 60 distinct values are a measurement: stretched grey
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "elevation")
    mode, _, meta = run(src, tmp_path / "2")
    assert mode == "L" and meta["render_mode"] == "grey"


# --- band order --------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [False, True])
def test_bgr_and_bgra_bands_are_rendered_in_rgb_order(tmp_path, alpha):
    src = rasters.bgr(tmp_path / "bgr.tif", alpha=alpha)
    mode, pixels, meta = run(src, tmp_path)
    assert meta["rendered_bands"] == [3, 2, 1]
    if alpha:
        assert mode == "RGBA" and (pixels[:, :10, 3] == 0).all() and (pixels[:, 10:] == [10, 20, 30, 255]).all()
    else:
        assert mode == "RGB" and (pixels == [10, 20, 30]).all()


# --- one decision per file, any array ----------------------------------------------------------


@pytest.mark.parametrize("make", ["classes", "uint16", "palette"])
def test_a_tile_of_the_file_gets_the_colours_of_the_whole_image(tmp_path, make):
    """What the tiler does: decide on the whole file, then colour a window of it."""
    if make == "classes":
        src = rasters.classes(tmp_path / "in.tif", VALUES, size=120)
    elif make == "uint16":
        src = rasters.uint16_ramp(tmp_path / "in.tif", height=120, width=120)
    else:
        src = rasters.palette(tmp_path / "in.tif", size=120)
    _, pixels, meta = run(src, tmp_path)  # native, full size: PNG pixel = source pixel
    with rasterio.open(src) as ds:
        plan = read.plan_bands(ds, None, detect_classes=True)
        data, valid = read.read_decimated(ds, plan, (ds.height, ds.width), "average")
        stats = [render.band_statistics(data[k], valid, (2.0, 98.0)) for k in range(len(plan.indexes))]
        colortable = ds.colormap(1) if plan.kind == "palette" else None
        decided = style.choose_style(plan.kind, stats, data.dtype, "auto", None, colortable, plan.classes)
        tile = ds.read(list(plan.indexes), window=rasterio.windows.Window(37, 11, 50, 40))
    assert decided.as_dict() == meta["style"]
    rgb, _ = style.apply_style(decided, tile, None)
    expected = pixels[11:51, 37:87]
    assert np.array_equal(np.moveaxis(rgb, 0, -1).reshape(expected.shape), expected)


def test_looks_categorical_rule():
    assert style.looks_categorical(np.array([0, 1, 2]))
    assert not style.looks_categorical(np.array([7]))  # one value: a flat image, not classes
    assert not style.looks_categorical(np.array([0, 255]))  # black and white
    assert not style.looks_categorical(np.arange(style.MAX_CLASSES + 1))
    lut = style.class_lut([3, 9])
    assert tuple(lut[9][:3]) == style.class_colour(9, [3, 9]) == style.CLASS_COLOURS[1]
    assert tuple(lut[200][:3]) == style.class_colour(200, [3, 9])  # unlisted values: the same rule everywhere


RAT = """<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable tableType="thematic">
  <FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>
  <FieldDefn index="1"><Name>Class_Name</Name><Type>2</Type><Usage>2</Usage></FieldDefn>
  {rows}
</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>"""


def test_a_raster_attribute_table_makes_classes_and_names_the_legend(tmp_path):
    values = tuple(range(0, 200, 5))  # 40 classes: too many to be recognised from the pixels alone
    src = rasters.classes(tmp_path / "nlcd.tif", values, size=200)
    rows = "".join(f'<Row index="{i}"><F>{v}</F><F>class {v}</F></Row>' for i, v in enumerate(values))
    (tmp_path / "nlcd.tif.aux.xml").write_text(RAT.format(rows=rows))
    if shutil.which("gdalinfo"):  # GDAL reads the table as we do
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(src)], check=True, capture_output=True, text=True,
                                         timeout=60).stdout)
        rat = info.get("rat") or info["bands"][0]["rat"]  # GDAL 3.6 reports band 1's table at the top
        assert [row["f"] for row in rat["row"]][:2] == [[0, "class 0"], [5, "class 5"]]
    mode, pixels, meta = run(src, tmp_path)
    assert mode == "RGB" and meta["render_mode"] == "categorical" and meta["style"]["classes"] == list(values)
    legend = {e["value"]: e for e in meta["legend"]}
    assert sorted(legend) == list(values) and legend[195]["name"] == "class 195"
    assert len({e["color"] for e in legend.values()}) == 32  # as many colours as the palette has
    # the same file without its table: 40 values are a measurement, grey as it always was
    (tmp_path / "nlcd.tif.aux.xml").unlink()
    mode, _, meta = run(src, tmp_path / "2")
    assert mode == "L" and meta["render_mode"] == "grey"


COLOUR_RAT = """<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable tableType="thematic">
  <FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>
  <FieldDefn index="1"><Name>Red</Name><Type>{type}</Type><Usage>6</Usage></FieldDefn>
  <FieldDefn index="2"><Name>Green</Name><Type>{type}</Type><Usage>7</Usage></FieldDefn>
  <FieldDefn index="3"><Name>Blue</Name><Type>{type}</Type><Usage>8</Usage></FieldDefn>
  {rows}
</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>"""


@pytest.mark.parametrize("scale", [255, 1.0], ids=["0-255", "ERDAS fractions"])
def test_the_attribute_tables_colours_colour_the_classes_and_the_legend(tmp_path, scale):
    table = {11: (70, 107, 159), 21: (222, 197, 197), 41: (104, 171, 95), 82: (170, 112, 40)}  # NLCD's
    src = rasters.classes(tmp_path / "nlcd.tif", tuple(table), size=80)
    rows = "".join(f'<Row index="{i}"><F>{v}</F>' + "".join(f"<F>{c / 255 * scale:g}</F>" for c in rgb) + "</Row>"
                   for i, (v, rgb) in enumerate(table.items()))
    (tmp_path / "nlcd.tif.aux.xml").write_text(COLOUR_RAT.format(type=0 if scale == 255 else 1, rows=rows))
    mode, pixels, meta = run(src, tmp_path)
    assert meta["render_mode"] == "categorical"
    assert colours(pixels[..., :3]) == set(table.values())  # the table's colours, not the class palette
    assert {e["value"]: e["color"] for e in meta["legend"]} == {
        v: "#%02x%02x%02x" % rgb for v, rgb in table.items()}
    with rasterio.open(src) as ds:
        assert read.class_table(ds, 1).colours == table


def test_a_colour_table_with_nan_or_inf_cells_keeps_the_rest_and_renders(tmp_path):
    src = rasters.classes(tmp_path / "odd.tif", (1, 2, 3), size=60)
    rows = ('<Row index="0"><F>1</F><F>255</F><F>0</F><F>0</F></Row>'
            '<Row index="1"><F>2</F><F>nan</F><F>0</F><F>0</F></Row>'
            '<Row index="2"><F>3</F><F>0</F><F>inf</F><F>0</F></Row>')
    (tmp_path / "odd.tif.aux.xml").write_text(COLOUR_RAT.format(type=0, rows=rows))
    with rasterio.open(src) as ds:
        assert read.class_table(ds, 1).colours == {1: (255, 0, 0)}
    _, pixels, meta = run(src, tmp_path)  # no traceback: values 2 and 3 take the class palette
    assert meta["render_mode"] == "categorical" and (255, 0, 0) in colours(pixels[..., :3])


def test_category_names_name_the_classes(tmp_path):
    src = rasters.classes(tmp_path / "zones.tif", (0, 1, 2), size=60)
    (tmp_path / "zones.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category>outside</Category><Category>site</Category>'
        '<Category>building</Category></CategoryNames></PAMRasterBand></PAMDataset>')
    _, _, meta = run(src, tmp_path)
    assert [(e["value"], e["name"]) for e in meta["legend"]] == [(0, "outside"), (1, "site"), (2, "building")]
