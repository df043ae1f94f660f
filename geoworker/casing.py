"""camelCase on the wire (the platform's convention), snake_case inside geoworker."""

from __future__ import annotations

import re
from typing import Any


def camel(name: str) -> str:
    """run_at -> runAt."""
    head, *rest = str(name).split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: Any) -> str:
    """runAt -> run_at (max_size and max-size -> max_size)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name)).lower().replace("-", "_")
