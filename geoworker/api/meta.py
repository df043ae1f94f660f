"""What a client needs to know before it submits: who it is, which tasks exist, which limits hold.

    GET /api/me      {sub, operator, expiresAt}: the token as the API reads it
    GET /api/tasks   every task this service runs, with its parameters as the task registry
                     declares them (name, camelCase key, kind, help, default, choices, main),
                     and the upload limits: the dashboard builds its upload form from this
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Request

from geoworker.api.auth import Viewer, current_viewer
from geoworker.api.schemas import Me, TaskCatalog
from geoworker.api.user import api_state
from geoworker.storage.registry import backend_class
from geoworker.tasks import registry

router = APIRouter(prefix="/api", tags=["meta"])
AUTH_ERRORS = {401: {"description": "no, expired or invalid token"}}


def task_doc(task, settings) -> dict[str, Any]:
    return {"name": task.name, "description": task.description, "needsInput": task.needs_input,
            "outputs": list(task.outputs), "debug": task.debug, "params": task.params.describe(settings)}


@router.get("/me", response_model=Me, summary="Who the token says the caller is", responses=AUTH_ERRORS)
def me(viewer: Viewer = Depends(current_viewer)):
    try:
        expires = dt.datetime.fromtimestamp(viewer.expires, dt.timezone.utc).isoformat() if viewer.expires else None
    except (OverflowError, ValueError, OSError):  # an exp past year 9999: signed, valid, and not a date
        expires = None
    return {"sub": viewer.sub, "operator": viewer.operator, "expiresAt": expires}


@router.get("/tasks", response_model=TaskCatalog, summary="The tasks, their parameters, the upload limits",
            responses=AUTH_ERRORS)
def tasks(request: Request, _viewer: Viewer = Depends(current_viewer)):
    settings = api_state(request).settings
    return {"tasks": [task_doc(t, settings) for t in registry.available(settings).values()],
            "limits": {"maxFileSize": settings.storage.max_file_size,
                       "uploads": backend_class(settings.storage.backend).refuses_local_inputs is None,
                       "validateHeaders": settings.storage.validate_headers}}
