"""Request and response bodies, camelCase as the platform sends them, strictly typed.

Strict: "1" is not a number and 1 is not a string, so a wrong type is a 422 naming the
field rather than a silent coercion. Every string refuses NUL (PostgreSQL cannot store
it), every integer that reaches a column is bounded by that column's type.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from geoworker.api.wire import WORKER_ID_PATTERN
from geoworker.errors import ERROR_CODES

INT32 = 2**31 - 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
WorkerId = Annotated[str, Field(pattern=WORKER_ID_PATTERN, max_length=200)]
ErrorCode = Literal[ERROR_CODES]  # type: ignore[valid-type]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# --- user routes -----------------------------------------------------------------------


class CreateJob(Body):
    taskType: Text = Field(min_length=1, max_length=100, examples=["geotiff_to_png"],
                           description="geotiff_to_png or geotiff_info")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher runs first")
    inputPayload: dict[str, Any] = Field(default_factory=dict, examples=[{"maxSize": 2048, "outputFormat": "png"}],
                                         description="processing parameters, camelCase or snake_case")


class UploadRequest(Body):
    fileName: Text = Field(min_length=1, max_length=255, examples=["map.tif"])
    fileSize: int = Field(ge=1, le=2**53, examples=[1024000], description="the exact size of the PUT body, bytes")
    fileType: Optional[Text] = Field(None, max_length=200, examples=["image/tiff"])


class UploadGrant(BaseModel):
    uploadUrl: str
    expiresAt: str
    method: str = "PUT"
    maxSize: int


class InputFile(BaseModel):
    fileName: Optional[str] = None
    fileSize: Optional[int] = None
    contentType: Optional[str] = None
    sha256: Optional[str] = None


class JobView(BaseModel):
    id: str
    taskType: str
    status: str
    priority: int
    inputPayload: dict[str, Any]
    progress: int
    progressMessage: Optional[str] = None
    attempts: int
    maxAttempts: int
    errorCode: Optional[str] = None
    error: Optional[str] = None
    input: Optional[InputFile] = None
    outputs: Optional[dict[str, str]] = None
    result: Optional[Any] = None
    createdAt: Optional[str] = None
    updatedAt: Optional[str] = None
    runAt: Optional[str] = None
    startedAt: Optional[str] = None
    finishedAt: Optional[str] = None
    owner: Optional[str] = None


class JobList(BaseModel):
    jobs: list[JobView]
    offset: int = 0
    nextOffset: Optional[int] = Field(None, description="the offset of the next page, or null on the last")


class EventView(BaseModel):
    at: str
    kind: str
    message: Optional[str] = None
    worker: Optional[str] = None
    data: Optional[Any] = None


class EventList(BaseModel):
    jobId: str
    events: list[EventView]


class DownloadFile(BaseModel):
    kind: str
    fileName: str
    url: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    contentType: Optional[str] = None


class Downloads(BaseModel):
    jobId: str
    expiresAt: Optional[str] = None
    files: list[DownloadFile]


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    checks: dict[str, Any]


# --- worker routes ---------------------------------------------------------------------


class Progress(Body):
    progress: int = Field(ge=0, le=100)
    message: Optional[Text] = Field(None, max_length=2000)


class Complete(Body):
    outputs: Any = None
    result: Any = None


class Fail(Body):
    errorCode: ErrorCode
    message: Text = Field(max_length=4000)
    permanent: bool = False
    reason: Text = Field("error", min_length=1, max_length=100)
    holder: Optional[WorkerId] = Field(None, description="act for this worker (a supervisor settling its child's "
                                                         "job); default: the caller")
    attempts: Optional[int] = Field(None, ge=0, le=INT32, description="the attempt being ended (for the backoff)")
    minDelay: float = Field(0.0, ge=0, le=3600, description="seconds the retry waits at least (a killed child's "
                                                             "grace period)")


class Release(Body):
    holder: Optional[WorkerId] = None
    message: Text = Field("released", max_length=2000)
    delay: float = Field(0.0, ge=0, le=3600, description="seconds before the job is claimable again")


class Held(BaseModel):
    held: bool


class WorkerRegistration(Body):
    id: WorkerId
    kind: Literal["supervisor", "child", "remote"]
    pid: int = Field(ge=0, le=INT32)
    host: Text = Field(min_length=1, max_length=255)
    parentId: Optional[WorkerId] = None


class WorkerSeen(Body):
    id: WorkerId
    rss: Optional[int] = Field(None, ge=0, le=2**62)
    currentJob: Optional[uuid.UUID] = Field(None, strict=False)
    jobsDone: int = Field(0, ge=0, le=INT32)


class WorkersSeen(Body):
    workers: list[WorkerSeen] = Field(max_length=1000)


class WorkersStopped(Body):
    ids: list[WorkerId] = Field(max_length=1000)


class QueueSummary(BaseModel):
    ready: int
    scheduled: int
    running: int
    oldestReadyAge: float


class Ok(BaseModel):
    ok: bool = True
    worker: Optional[str] = None


# --- dashboard routes ------------------------------------------------------------------


class Me(BaseModel):
    sub: str
    operator: bool
    expiresAt: Optional[str] = None


class TaskCatalog(BaseModel):
    tasks: list[dict[str, Any]]
    limits: dict[str, Any]


class Overview(BaseModel):
    generatedAt: str
    counts: dict[str, int]
    queue: dict[str, Any]
    windowSeconds: float
    finished: dict[str, int]
    perMinute: list[dict[str, Any]]
    durations: list[dict[str, Any]]
    failureReasons: dict[str, int]
    recentFailures: list[dict[str, Any]]
    workersAlive: int


class WorkerBoard(BaseModel):
    generatedAt: str
    windowSeconds: float
    workers: list[dict[str, Any]]
