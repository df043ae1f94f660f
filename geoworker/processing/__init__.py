"""The raster pipeline: GeoTIFF in, web-ready georeferenced image, thumbnail and metadata out.

Pure numpy functions (render, georef) beside thin I/O (validate, read, encode);
`pipeline` strings the stages together.
"""

from geoworker.processing.options import Options
from geoworker.processing.pipeline import describe_file, process_file
from geoworker.processing.sample import write_sample_orthophoto

__all__ = ["Options", "describe_file", "process_file", "write_sample_orthophoto"]
