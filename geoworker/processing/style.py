"""How a file's bands become colours: decided once per file, applied to any array of it.

`choose_style` fixes every rendering decision (stretch ranges, colour table, class
colours) from the whole file's statistics; `apply_style` then colours any array read from
that file: the PNG's decimated read, or one map tile of it, with the same result for the
same pixel. Pure functions: nothing here opens a file.

    plan = read.plan_bands(ds, options.bands, detect_classes=...)   # which bands, what kind
    stats = [render.band_statistics(band, valid, percentiles) for band in data]
    style = choose_style(plan.kind, stats, data.dtype, options.stretch, options.colormap,
                         colortable, plan.classes, plan.class_names, plan.class_colours)
    rgb, valid = apply_style(style, tile, tile_valid)                 # any array of the file
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from geoworker.processing import render

# A class raster has at most this many distinct values (land-cover products have 10-20).
MAX_CLASSES = 32

# Distinct colours for classes, in the order classes are met (sorted by value): Kelly's
# 22 colours of maximum contrast (white and black left out, they read as background)
# followed by ColorBrewer's Set3, for 32 in all.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50), (194, 178, 128),
    (132, 132, 130), (0, 136, 86), (230, 143, 172), (0, 103, 165), (249, 147, 121), (96, 78, 151),
    (246, 166, 0), (179, 68, 108), (220, 211, 0), (136, 45, 23), (141, 182, 0), (101, 69, 34),
    (226, 88, 34), (43, 61, 38), (141, 211, 199), (255, 255, 179), (190, 186, 218), (251, 128, 114),
    (128, 177, 211), (253, 180, 98), (179, 222, 105), (252, 205, 229), (217, 217, 217), (188, 128, 189),
    (204, 235, 197), (255, 237, 111),
)


@dataclass(frozen=True, eq=False)
class Style:
    """Every decision that turns one file's read values into colours.

    kind: "rgb" | "grey" | "palette" | "categorical" (as read.BandPlan.kind).
    ranges: per rendered band, the (low, high) input range mapped onto 0..255, or None
        for no stretch (values clipped to 0..255); () for palette and categorical.
    lut: RGBA by value, (256 or 65536, 4) uint8, for palette and categorical; else None.
    colormap: a render.COLORMAPS name applied to a stretched grey band, or None.
    classes: the class values of a categorical band (their colours come first in CLASS_COLOURS).
    names: class value -> name, from the band's attribute table or category names.
    """

    kind: str
    ranges: tuple[tuple[float, float] | None, ...] = ()
    lut: np.ndarray | None = field(default=None, repr=False)
    colormap: str | None = None
    classes: tuple[int, ...] = ()
    names: tuple[tuple[int, str], ...] = ()

    def as_dict(self) -> dict:
        """A JSON-ready summary (the metadata's "style")."""
        return {"kind": self.kind, "ranges": [list(r) if r else None for r in self.ranges],
                "colormap": self.colormap, "classes": list(self.classes)}


def looks_categorical(values: np.ndarray) -> bool:
    """Whether the distinct values sampled from a band look like classes rather than a measurement.

    Args:
        values: the sorted distinct valid values seen (read.probe_values).
    Returns:
        True for 2..MAX_CLASSES values, except pure black and white (0 and 255 only: a
        scanned drawing, which already reads right in grey).
    """
    if not 2 <= len(values) <= MAX_CLASSES:
        return False
    return not set(int(v) for v in values) <= {0, 255}


def class_colour(value: int, classes: Sequence[int]) -> tuple[int, int, int]:
    """The colour of one class value: by its rank among `classes`, or from its value when unlisted.

    Args:
        value: a class value.
        classes: the file's class values, sorted.
    Returns:
        (r, g, b).
    """
    try:
        rank = list(classes).index(value)
    except ValueError:  # a class too rare to be sampled: a colour of its own, the same on every tile
        rank = len(classes) + value * 7
    return CLASS_COLOURS[rank % len(CLASS_COLOURS)]


def class_lut(classes: Sequence[int], size: int = 256,
              colours: Mapping[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """An opaque RGBA lookup table giving every possible value its class colour.

    Args:
        classes: the file's class values, sorted.
        size: 256 for uint8, 65536 for uint16.
        colours: value -> (r, g, b) the file's attribute table gives: these win.
    Returns:
        uint8 array of shape (size, 4).
    """
    values = np.arange(size, dtype=np.int64)
    known = np.asarray(sorted(classes), np.int64)
    pos = np.searchsorted(known, values)
    listed = (pos < len(known)) & (known[np.minimum(pos, max(0, len(known) - 1))] == values) if len(known) else \
        np.zeros(size, bool)
    rank = np.where(listed, pos, len(known) + values * 7)  # the rule of class_colour
    lut = np.empty((size, 4), np.uint8)
    lut[:, :3] = np.asarray(CLASS_COLOURS, np.uint8)[rank % len(CLASS_COLOURS)]
    lut[:, 3] = 255
    for value, rgb in (colours or {}).items():
        if 0 <= value < size:
            lut[value, :3] = rgb
    return lut


def choose_style(kind: str, stats: Sequence[render.BandStats], dtype: np.dtype | str, stretch: str,
                 colormap: str | None = None, colortable: Mapping[int, tuple[int, ...]] | None = None,
                 classes: Sequence[int] = (), names: Sequence[tuple[int, str]] = (),
                 colours: Sequence[tuple[int, tuple[int, int, int]]] = ()) -> Style:
    """Decide how a file's bands become colours, once, from the whole file's statistics.

    Args:
        kind: the band plan's kind (rgb, grey, palette, categorical).
        stats: per rendered band, statistics of the file (a decimated read of all of it).
        dtype: the read data type.
        stretch: auto | none | minmax | percentile (auto: none for uint8, percentile otherwise).
        colormap: a COLORMAPS name for a grey band ("gray" or None: plain grey).
        colortable: the band's GDAL colour table, for "palette".
        classes: the class values, for "categorical".
        names: (value, name) pairs of named classes, for the legend.
        colours: (value, (r, g, b)) pairs the file's attribute table gives, for "categorical":
            they win over the class palette.
    Returns:
        the Style to apply to any array of this file.
    """
    size = 65536 if np.dtype(dtype).itemsize == 2 else 256
    if kind == "palette":
        return Style(kind, lut=render.palette_lut(dict(colortable or {}), size))
    if kind == "categorical":
        return Style(kind, lut=class_lut(classes, size, dict(colours)), classes=tuple(int(c) for c in classes),
                     names=tuple((int(v), str(n)) for v, n in names))
    ranges = tuple(render.stretch_range(s, np.dtype(dtype), stretch) for s in stats)
    ramp = colormap if kind == "grey" and colormap and colormap != "gray" else None
    return Style(kind, ranges, colormap=ramp)


def apply_style(style: Style, data: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour an array of the file (the whole image at some size, or one tile of it).

    Args:
        style: what choose_style decided for the file.
        data: (bands, h, w) values as read (the plan's bands, without alpha).
        valid: boolean validity (True = valid) or None for all valid.
    Returns:
        ((1 or 3, h, w) uint8 colours without alpha, validity): a palette's transparent
        entries become invalid too.
    """
    if style.lut is not None:
        rgba = render.apply_lut(data[0], style.lut)
        opaque = rgba[3] > 0
        if not opaque.all():
            valid = opaque if valid is None else valid & opaque
        return rgba[:3], valid
    bands = [render.linear_rescale(data[k], style.ranges[k]) for k in range(len(style.ranges))]
    if style.colormap:
        return render.apply_lut(bands[0], render.colormap_lut(style.colormap)), valid
    return np.stack(bands), valid


def legend(style: Style, data: np.ndarray, valid: np.ndarray | None) -> list[dict]:
    """The classes of a categorical rendering with their colours and shares of the valid pixels.

    Args:
        style: a categorical Style.
        data: the rendered values (1, h, w), as read.
        valid: boolean validity or None.
    Returns:
        [{"value", "color" ("#rrggbb"), "percent"[, "name"]}], by value; [] for other kinds.
    """
    if style.kind != "categorical":
        return []
    values = data[0] if valid is None else data[0][valid]
    counts = np.bincount(values.ravel(), minlength=1)
    total = max(1, int(counts.sum()))
    names = dict(style.names)
    out = []
    for value in np.flatnonzero(counts):
        r, g, b = (int(c) for c in style.lut[value][:3])
        entry = {"value": int(value), "color": f"#{r:02x}{g:02x}{b:02x}",
                 "percent": round(100.0 * int(counts[value]) / total, 3)}
        if int(value) in names:
            entry["name"] = names[int(value)]
        out.append(entry)
    return out
