"""The metadata document of a GeoTIFF: structure, georeferencing, statistics, checksum."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_gcps

from geoworker.processing import georef


@dataclass(frozen=True)
class Georeference:
    """Where the pixels are: a CRS (or None) and the grid's transform."""

    crs: CRS | None
    transform: Affine
    kind: str  # "transform" | "gcps" | "none"
    gcp_count: int = 0

    @property
    def rotated(self) -> bool:
        return bool(self.transform.b or self.transform.d)


def sha256_file(path: str | Path, chunk: int = 4 << 20) -> str:
    """Args: path: a file. Returns: its SHA-256 hex digest, read in 4 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_georeference(ds: rasterio.DatasetReader) -> tuple[Georeference, list[str]]:
    """The dataset's georeferencing, checked: a local site grid is kept as such, nonsense is refused.

    Args:
        ds: an open dataset.
    Returns:
        (Georeference, warnings).
    Raises:
        InvalidInput: coordinates no real raster has (they would send PROJ into minutes of work).
    """
    geo, notes = _read_georeference(ds)
    if geo.crs is not None and not georef.mappable(geo.crs):
        name = _crs_name(geo.crs) or "unnamed"
        notes.append(f"the CRS ({name}) is a local engineering grid, which cannot be placed on a map: "
                     "outputs stay on the source grid, without WGS84 bounds")
        return Georeference(geo.crs, geo.transform, "local", geo.gcp_count), notes
    if geo.crs is not None:
        georef.check_plausible(geo.crs, georef.grid_bounds(geo.transform, ds.width, ds.height))
    return geo, notes


def _read_georeference(ds: rasterio.DatasetReader) -> tuple[Georeference, list[str]]:
    has_transform = ds.transform != Affine.identity() or (ds.crs is not None and not ds.gcps[0])
    if has_transform and ds.crs is not None:
        return Georeference(ds.crs, ds.transform, "transform"), []
    gcps, gcp_crs = ds.gcps
    if gcps and len(gcps) >= 3:
        transform = from_gcps(gcps)
        note = (f"georeferencing derived from {len(gcps)} ground control points by a least-squares affine fit "
                "(no polynomial or thin-plate warp)")
        return Georeference(gcp_crs, transform, "gcps", len(gcps)), [note]
    if ds.crs is None:
        return Georeference(None, ds.transform, "none"), [
            "the file has no coordinate reference system: outputs stay in its pixel grid and are not georeferenced"]
    return Georeference(ds.crs, ds.transform, "transform"), []


def crs_summary(crs: CRS | None) -> dict | None:
    """Args: crs: a CRS or None. Returns: {"wkt", "epsg", "name"} or None."""
    if crs is None:
        return None
    try:
        epsg = crs.to_epsg()
    except Exception:  # noqa: BLE001 - an unidentifiable CRS still has a WKT
        epsg = None
    return {"epsg": epsg, "name": _crs_name(crs), "wkt": crs.to_wkt()}


def _crs_name(crs: CRS) -> str | None:
    wkt = crs.to_wkt()
    start = wkt.find('"')
    return wkt[start + 1:wkt.find('"', start + 1)] if start >= 0 else None


def _nodata(value: float | None):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return int(value) if float(value).is_integer() else float(value)


def _structure(ds: rasterio.DatasetReader) -> dict:
    image = ds.tags(ns="IMAGE_STRUCTURE")
    block_h, block_w = ds.block_shapes[0]
    tiled = block_w < ds.width and block_h > 1 and block_w % 16 == 0
    return {
        "compression": (ds.compression.name.lower() if ds.compression else image.get("COMPRESSION", "none").lower()),
        "predictor": image.get("PREDICTOR"),
        "interleave": (ds.interleaving.name.lower() if ds.interleaving else image.get("INTERLEAVE", "").lower() or None),
        "tiled": tiled,
        "block_size": [block_w, block_h],
        "photometric": (ds.photometric.name.lower() if ds.photometric else None),
        "overviews": ds.overviews(1),
    }


def dataset_summary(ds: rasterio.DatasetReader, geo: Georeference) -> dict:
    """Everything the file says about itself, without reading pixels.

    Args:
        ds: an open dataset.
        geo: its georeferencing (read_georeference).
    Returns:
        a JSON-serialisable dict.
    """
    t = geo.transform
    corners = georef.grid_corners(t, ds.width, ds.height)
    bounds = georef.grid_bounds(t, ds.width, ds.height)
    doc = {
        "driver": ds.driver,
        "width": ds.width,
        "height": ds.height,
        "count": ds.count,
        "dtypes": list(ds.dtypes),
        "colorinterp": [c.name for c in ds.colorinterp],
        "nodata": [_nodata(v) for v in ds.nodatavals],
        "mask_flags": [[f.name for f in flags] for flags in ds.mask_flag_enums],
        "palette": any(c.name == "palette" for c in ds.colorinterp),
        **_structure(ds),
        "georeferencing": geo.kind,
        "crs": crs_summary(geo.crs),
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "rotated": geo.rotated,
        "resolution": [math.hypot(t.a, t.d), math.hypot(t.b, t.e)],
        "bounds": dict(zip(("left", "bottom", "right", "top"), bounds)),
        "corners": {k: list(v) for k, v in corners.items()},
        "bounds_wgs84": None,
        "corners_wgs84": None,
    }
    if geo.kind == "gcps":
        doc["gcp_count"] = geo.gcp_count
    if geo.crs is not None and geo.kind != "local":
        doc["bounds_wgs84"] = georef.bounds_to_wgs84(geo.crs, bounds)
        doc["corners_wgs84"] = georef.corners_to_wgs84(geo.crs, corners)
    return doc


def json_safe(value):
    """Args: value: nested dicts/lists/numbers. Returns: the same with numpy scalars converted and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
