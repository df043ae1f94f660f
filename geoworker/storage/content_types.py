"""The Content-Type an output is stored and served with, from its file name.

Every backend that hands files to a browser or an object store (s3 uploads, the http
backend's PUTs, the API's downloads) labels them the same way.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

# what mimetypes does not know, or knows differently on different hosts (/etc/mime.types)
_BY_SUFFIX = {".pgw": "text/plain", ".jgw": "text/plain", ".wpw": "text/plain", ".prj": "text/plain",
              ".xml": "application/xml", ".json": "application/json", ".tif": "image/tiff", ".tiff": "image/tiff"}


def content_type_for(path: Path) -> str:
    """The Content-Type of a file by its name (application/octet-stream when unknown)."""
    return _BY_SUFFIX.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
