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
from rasterio.enums import ColorInterp
from rasterio.rpc import RPC
from rasterio.transform import from_gcps

from geoworker.processing import georef


@dataclass(frozen=True)
class Georeference:
    """Where the pixels are: a CRS (or None) and the grid's transform, or an RPC model."""

    crs: CRS | None
    transform: Affine
    # "transform" (geotransform + CRS) | "gcps" | "rpc" (rational polynomial coefficients)
    # | "no_crs" (geotransform, CRS unknown) | "local" (engineering grid) | "none"
    kind: str
    gcp_count: int = 0
    rpcs: RPC | None = None

    @property
    def rotated(self) -> bool:
        return bool(self.transform.b or self.transform.d)

    @property
    def body(self) -> str | None:
        """The body the CRS is on when it is not Earth (see georef.other_body), else None."""
        return georef.other_body(self.crs) if self.crs is not None else None


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
    if geo.crs is not None and geo.kind in ("transform", "gcps"):
        georef.check_plausible(geo.crs, georef.grid_bounds(geo.transform, ds.width, ds.height))
    return geo, notes


def _read_georeference(ds: rasterio.DatasetReader) -> tuple[Georeference, list[str]]:
    # rasterio answers the identity (with a positive row step, which no real north-up
    # grid has) when the file has no geotransform at all
    has_transform = ds.transform != Affine.identity()
    if has_transform and ds.crs is not None:
        return Georeference(ds.crs, ds.transform, "transform"), []
    if has_transform:
        return Georeference(None, ds.transform, "no_crs"), [
            "the file has a geotransform but no coordinate reference system (the CRS is unknown): outputs keep "
            "its pixel grid, the world file carries its geotransform; no .prj and no WGS84 bounds"]
    gcps, gcp_crs = ds.gcps
    if gcps and len(gcps) >= 3:
        transform = from_gcps(gcps)
        note = (f"georeferencing derived from {len(gcps)} ground control points by a least-squares affine fit "
                "(no polynomial or thin-plate warp)")
        return Georeference(gcp_crs, transform, "gcps", len(gcps)), [note]
    if ds.rpcs is not None:
        return Georeference(georef.WGS84, ds.transform, "rpc", rpcs=ds.rpcs), [
            "the image is georeferenced by RPCs (rational polynomial coefficients) only: it is orthorectified "
            "with the RPC model at a constant height (the rpc_height parameter, metres above the ellipsoid; "
            "GDAL's default otherwise)"]
    if ds.crs is not None:
        return Georeference(None, ds.transform, "none"), [
            f"the file declares a coordinate reference system ({_crs_name(ds.crs) or 'unnamed'}) but no geotransform "
            "and no control points: outputs stay in its pixel grid and are not georeferenced"]
    return Georeference(None, ds.transform, "none"), [
        "the file has no geotransform and no coordinate reference system: outputs stay in its pixel grid and are "
        "not georeferenced"]


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


def _name(value) -> str | None:
    """An enum's lower-case name; rasterio answers a plain str for values its enums lack (OJPEG, LogLuv)."""
    if value is None:
        return None
    return str(getattr(value, "name", value)).lower() or None


def colour_interpretation(ds: rasterio.DatasetReader) -> list[ColorInterp]:
    """Each band's colour interpretation, `undefined` where GDAL's answer is an error or unknown to rasterio.

    Args:
        ds: an open dataset.
    Returns:
        one ColorInterp per band.
    """
    try:
        return list(ds.colorinterp)
    except (ValueError, georef.RasterioError, georef.CPLE_BaseError):
        return [ColorInterp.undefined] * ds.count


def _structure(ds: rasterio.DatasetReader) -> dict:
    image = ds.tags(ns="IMAGE_STRUCTURE")
    block_h, block_w = ds.block_shapes[0]
    tiled = block_w < ds.width and block_h > 1 and block_w % 16 == 0
    return {
        "compression": _name(ds.compression) or image.get("COMPRESSION", "none").lower(),
        "predictor": image.get("PREDICTOR"),
        "interleave": _name(ds.interleaving) or image.get("INTERLEAVE", "").lower() or None,
        "tiled": tiled,
        "block_size": [block_w, block_h],
        "photometric": _name(ds.photometric),
        "overviews": ds.overviews(1),
    }


def dataset_summary(ds: rasterio.DatasetReader, geo: Georeference, rpc_height: float | None = None) -> dict:
    """Everything the file says about itself, without reading pixels.

    Args:
        ds: an open dataset.
        geo: its georeferencing (read_georeference).
        rpc_height: the height (m) an RPC model is evaluated at (None: GDAL's default).
    Returns:
        a JSON-serialisable dict.
    """
    t = geo.transform
    corners = georef.grid_corners(t, ds.width, ds.height)
    bounds = georef.grid_bounds(t, ds.width, ds.height)
    colours = colour_interpretation(ds)
    doc = {
        "driver": ds.driver,
        "width": ds.width,
        "height": ds.height,
        "count": ds.count,
        "dtypes": list(ds.dtypes),
        "colorinterp": [c.name for c in colours],
        "descriptions": list(ds.descriptions),
        "nodata": [_nodata(v) for v in ds.nodatavals],
        "mask_flags": [[f.name for f in flags] for flags in ds.mask_flag_enums],
        "palette": any(c == ColorInterp.palette for c in colours),
        **_structure(ds),
        "georeferencing": geo.kind,
        "crs": crs_summary(geo.crs),
        "body": geo.body or "Earth",
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
    if geo.kind == "rpc":
        doc["rpc"] = {"height_offset": geo.rpcs.height_off, "lat_offset": geo.rpcs.lat_off,
                      "long_offset": geo.rpcs.long_off}
    if geo.crs is not None and geo.kind != "local" and geo.body is None:
        doc["bounds_wgs84"], doc["corners_wgs84"] = georef.footprint_wgs84(
            geo.crs, None if geo.kind == "rpc" else t, (ds.width, ds.height), geo.rpcs, rpc_height)
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
