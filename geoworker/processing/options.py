"""What a caller can ask of the pipeline: one frozen Options object, validated once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from rasterio.crs import CRS
from rasterio.enums import Resampling

from geoworker.casing import snake
from geoworker.errors import BadParams

STRETCHES = ("auto", "none", "minmax", "percentile")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
FORMAT_ALIASES = {"jpg": "jpeg", "png": "png", "jpeg": "jpeg", "webp": "webp"}
# Resampling names GDAL accepts for a decimated RasterIO read (the warp-only ones are not).
READ_RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "gauss", "rms")

# [processing] config keys that differ from the Options field names.
_CONFIG_KEYS = {"max_image_size": "max_size"}
# Limits the operator sets: a job's params may lower them, never raise them.
OPERATOR_LIMITS = ("max_file_size", "max_pixels", "max_decoded_bytes")
# The decompression-bomb budget, checked before any pixel is decoded (config: [processing]).
MAX_PIXELS = 1 << 32  # 4.3 gigapixels, e.g. 65,536 x 65,536
MAX_DECODED_BYTES = 8 << 30  # 8 GiB of pixel data once decompressed (about 10 s of DEFLATE decoding)
# Heights an RPC model may be evaluated at, metres above the ellipsoid (Dead Sea shore to above Everest).
RPC_HEIGHT_RANGE = (-1000.0, 10000.0)


@dataclass(frozen=True)
class Options:
    """How to turn one GeoTIFF into web outputs (README.md, "Processing"; docs/ARCHITECTURE.md for the data flow)."""

    max_size: int = 4096
    thumbnail_size: int = 256
    generate_thumbnails: bool = True
    compression_quality: int = 85
    coordinate_system: str = "EPSG:4326"
    stretch: str = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)
    resampling: str = "average"
    bands: tuple[int, ...] | None = None
    colormap: str | None = None
    output_format: str = "png"
    max_file_size: int = 104857600
    validate_headers: bool = True
    max_pixels: int = MAX_PIXELS
    max_decoded_bytes: int = MAX_DECODED_BYTES
    rpc_height: float | None = None  # metres above the ellipsoid for an RPC-only image; None: GDAL's default

    def __post_init__(self) -> None:
        for f in fields(self):
            value = check_option(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_mapping(cls, defaults: Mapping[str, Any], params: Mapping[str, Any]) -> "Options":
        """Build Options from the [processing] config section and a job's params.

        Args:
            defaults: config values (max_image_size, thumbnail_size, ... max_file_size, validate_headers).
            params: a job's params, snake_case or camelCase; they override defaults.
        Returns:
            validated Options; unknown keys are ignored.
        Raises:
            BadParams: a known key has a wrong type or value (the message names it), or a
                param tries to raise one of the operator's limits (OPERATOR_LIMITS).
        """
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for is_params, source in ((False, defaults or {}), (True, params or {})):
            if not isinstance(source, Mapping):
                raise BadParams(f"params must be an object of key/value pairs, got {type(source).__name__}")
            if is_params:
                limits = dict(values)  # what the operator set, before any param
            for key, value in source.items():
                name = normalise_key(key)
                if name in names:
                    values[name] = value
        options = cls(**values)
        operator = cls(**{k: v for k, v in limits.items() if k in OPERATOR_LIMITS})
        for name in OPERATOR_LIMITS:
            if getattr(options, name) > getattr(operator, name):
                raise BadParams(f"{name} can only lower this worker's limit of {getattr(operator, name)}, "
                                f"got {getattr(options, name)}")
        return options

    @property
    def extension(self) -> str:
        return {"png": "png", "jpeg": "jpg", "webp": "webp"}[self.output_format]

    @property
    def world_file_extension(self) -> str:
        return {"png": "pgw", "jpeg": "jgw", "webp": "wpw"}[self.output_format]


def defaults_from_settings(settings) -> dict[str, Any]:
    """The Options defaults an operator's Settings give: every [processing] key plus the storage limits.

    Args:
        settings: geoworker.config.Settings.
    Returns:
        a mapping for Options.from_mapping(defaults, params).
    """
    values = {f.name: getattr(settings.processing, f.name) for f in fields(settings.processing)}
    values.update(max_file_size=settings.storage.max_file_size, validate_headers=settings.storage.validate_headers)
    return values


def normalise_key(key: Any) -> str:
    """A parameter or [processing] key as an Options field name (camelCase accepted)."""
    name = snake(key)
    return _CONFIG_KEYS.get(name, name)


def _bad(name: str, expected: str, value: Any) -> BadParams:
    return BadParams(f"{name} must be {expected}, got {value!r}")


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise _bad(name, f"an integer between {lo} and {hi}", value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(name, f"an integer between {lo} and {hi}", value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """A boolean parameter (true/false, yes/no, 1/0); BadParams naming it otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise _bad(name, "true or false", value)


def check_choice(name: str, value: Any, choices: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> str:
    """One of `choices` (case-insensitive, aliases resolved); BadParams naming the parameter otherwise."""
    text = value.strip().lower() if isinstance(value, str) else value
    if aliases and text in aliases:
        text = aliases[text]
    if text not in choices:
        raise _bad(name, "one of " + ", ".join(choices), value)
    return text


def _percentiles(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise _bad("percentiles", "two numbers [low, high] with 0 <= low < high <= 100", value) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= 100):
        raise _bad("percentiles", "two numbers [low, high] with 0 <= low < high <= 100", value)
    return (lo, hi)


def _bands(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    expected = "a list of 1 or 3 band numbers (1-based), e.g. [4, 3, 2]"
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 3):
        raise _bad("bands", expected, value)
    return tuple(_int("bands", v, 1, 65535) for v in value)


def _coordinate_system(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad("coordinate_system", '"native" or a CRS such as "EPSG:4326"', value)
    text = value.strip()
    if text.lower() == "native":
        return "native"
    try:
        CRS.from_user_input(text)
    except Exception:
        raise _bad("coordinate_system", '"native" or a CRS such as "EPSG:4326"', value) from None
    return text


def _colormap(value: Any) -> str | None:
    from geoworker.processing.render import COLORMAPS  # late: render imports nothing from here

    if value is None or value == "":
        return None
    return check_choice("colormap", value, tuple(sorted(COLORMAPS)), {"grey": "gray"})


def _rpc_height(value: Any) -> float | None:
    if value is None or value == "":
        return None
    lo, hi = RPC_HEIGHT_RANGE
    try:
        height = float(value)
    except (TypeError, ValueError):
        height = math.nan
    if isinstance(value, bool) or not lo <= height <= hi:
        raise _bad("rpc_height", f"a height in metres between {lo:g} and {hi:g}", value)
    return height


def check_option(name: str, value: Any) -> Any:
    """One Options field checked and normalised; BadParams naming it when wrong."""
    if name == "max_size":
        return _int(name, value, 16, 16384)
    if name == "thumbnail_size":
        return _int(name, value, 0, 4096)
    if name == "compression_quality":
        return _int(name, value, 1, 100)
    if name in ("max_file_size", "max_pixels", "max_decoded_bytes"):
        return _int(name, value, 1, 1 << 60)
    if name == "rpc_height":
        return _rpc_height(value)
    if name in ("generate_thumbnails", "validate_headers"):
        return check_bool(name, value)
    if name == "stretch":
        return check_choice(name, value, STRETCHES)
    if name == "output_format":
        return check_choice(name, value, OUTPUT_FORMATS, FORMAT_ALIASES)
    if name == "resampling":
        choice = check_choice(name, value, tuple(r.name for r in Resampling))
        if choice not in READ_RESAMPLINGS:
            raise _bad(name, "one of " + ", ".join(READ_RESAMPLINGS), value)
        return choice
    if name == "percentiles":
        return _percentiles(value)
    if name == "bands":
        return _bands(value)
    if name == "coordinate_system":
        return _coordinate_system(value)
    if name == "colormap":
        return _colormap(value)
    return value
