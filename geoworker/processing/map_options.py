"""The parameters of the map products (COG, tile pyramid), validated once, as pure functions.

The task registry calls `CogOptions.from_mapping` / `TileOptions.from_mapping` (or the
`check_*` helpers) when a job is submitted, so a bad `zoom`, `tile_format` or
`compression` is refused at once with a message naming the key, never at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from geoworker.errors import BadParams
from geoworker.processing.options import Options, check_bool, check_choice, normalise_key

COMPRESSIONS = ("jpeg", "webp", "deflate", "lzw", "zstd")
COMPRESSION_ALIASES = {"jpg": "jpeg"}
TILING_SCHEMES = ("native", "GoogleMapsCompatible")
TILING_ALIASES = {"googlemapscompatible": "GoogleMapsCompatible", "webmercatorquad": "GoogleMapsCompatible",
                  "native": "native", "custom": "native"}
TILE_FORMATS = ("png", "webp", "jpeg")
TILE_FORMAT_ALIASES = {"jpg": "jpeg"}
MAX_ZOOM = 24  # the deepest level of the GoogleMapsCompatible matrix (OGC WebMercatorQuad: 0-24)


@dataclass(frozen=True)
class CogOptions:
    """How to write a Cloud-Optimized GeoTIFF: the PNG task's options plus two keys."""

    base: Options
    compression: str | None = None  # None: JPEG for 8-bit RGB(A), DEFLATE + predictor otherwise
    tiling_scheme: str = "native"

    @classmethod
    def from_mapping(cls, defaults: Mapping[str, Any], params: Mapping[str, Any]) -> "CogOptions":
        """Args: defaults: the [processing] config; params: a job's params. Returns: CogOptions.
        Raises: BadParams naming the key."""
        values = _own_keys(params, ("compression", "tiling_scheme"))
        return cls(Options.from_mapping(defaults, params), check_compression(values.get("compression")),
                   check_tiling_scheme(values.get("tiling_scheme", "native")))


@dataclass(frozen=True)
class TileOptions:
    """How to cut a Web-Mercator tile pyramid: the PNG task's rendering options plus three keys."""

    base: Options
    zoom: tuple[int, int] | None = None  # None: as gdal2tiles chooses
    tile_format: str = "png"
    tile_dir: bool = False

    @classmethod
    def from_mapping(cls, defaults: Mapping[str, Any], params: Mapping[str, Any]) -> "TileOptions":
        """Args: defaults: the [processing] config; params: a job's params. Returns: TileOptions.
        Raises: BadParams naming the key."""
        values = _own_keys(params, ("zoom", "tile_format", "tile_dir"))
        return cls(Options.from_mapping(defaults, params), check_zoom(values.get("zoom")),
                   check_tile_format(values.get("tile_format", "png")), check_bool("tile_dir", values.get("tile_dir", False)))

    @property
    def extension(self) -> str:
        return {"png": "png", "webp": "webp", "jpeg": "jpg"}[self.tile_format]


def _own_keys(params: Mapping[str, Any] | None, names: tuple[str, ...]) -> dict[str, Any]:
    if params is not None and not isinstance(params, Mapping):
        raise BadParams(f"params must be an object of key/value pairs, got {type(params).__name__}")
    return {n: v for k, v in (params or {}).items() if (n := normalise_key(k)) in names}


def check_compression(value: Any) -> str | None:
    """Args: value: the `compression` param or None. Returns: a COMPRESSIONS name or None (automatic)."""
    if value is None or value == "" or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return check_choice("compression", value, COMPRESSIONS, COMPRESSION_ALIASES)


def check_tiling_scheme(value: Any) -> str:
    """Args: value: the `tiling_scheme` param. Returns: "native" or "GoogleMapsCompatible"."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in TILING_ALIASES:
        raise BadParams(f"tiling_scheme must be one of {', '.join(TILING_SCHEMES)}, got {value!r}")
    return TILING_ALIASES[text]


def check_tile_format(value: Any) -> str:
    """Args: value: the `tile_format` param. Returns: png, webp or jpeg."""
    return check_choice("tile_format", value, TILE_FORMATS, TILE_FORMAT_ALIASES)


def check_zoom(value: Any) -> tuple[int, int] | None:
    """Parse `zoom`: "MIN-MAX", one level "Z", or [MIN, MAX]; None or "" or "auto" = automatic.

    Args:
        value: the param as given.
    Returns:
        (min, max) with 0 <= min <= max <= MAX_ZOOM, or None.
    Raises:
        BadParams: naming `zoom` and what is wrong (out of range, min above max, not a range).
    """
    if value is None or value == "" or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    expected = f"MIN-MAX with 0 <= MIN <= MAX <= {MAX_ZOOM}, e.g. \"12-18\""
    if isinstance(value, bool):
        raise BadParams(f"zoom must be {expected}, got {value!r}")
    if isinstance(value, int):
        levels = [value, value]
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        levels = list(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?", value)):
        levels = [int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))]
    else:
        raise BadParams(f"zoom must be {expected}, got {value!r}")
    lo, hi = levels
    if not (0 <= lo <= MAX_ZOOM and 0 <= hi <= MAX_ZOOM):
        raise BadParams(f"zoom levels must be between 0 and {MAX_ZOOM} (the GoogleMapsCompatible matrix), "
                        f"got {value!r}")
    if lo > hi:
        raise BadParams(f"zoom minimum {lo} is greater than its maximum {hi} (zoom=MIN-MAX), got {value!r}")
    return lo, hi


def check_cog_params(params: Mapping[str, Any]) -> None:
    """Validate a geotiff_to_cog job's params at submit time. Raises: BadParams naming the key."""
    CogOptions.from_mapping({}, params)


def check_tile_params(params: Mapping[str, Any]) -> None:
    """Validate a geotiff_to_tiles job's params at submit time. Raises: BadParams naming the key."""
    TileOptions.from_mapping({}, params)
