"""geoworker: turns GeoTIFFs into web-ready, georeferenced PNGs from a PostgreSQL job queue."""

__version__ = "0.1.0"
