"""The HTTP API (FastAPI): submit jobs, watch them, cancel them, fetch artifacts.

=========================================  =====================================
``POST /v1/jobs``                          submit (JSON spec, or multipart: the
                                           ``spec`` field plus uploaded files)
``GET /v1/jobs?state=``                    the jobs, newest first
``GET /v1/jobs/{id}``                      state, progress, ETA, the last log lines
``POST /v1/jobs/{id}/cancel``              cancel
``GET /v1/jobs/{id}/artifacts``            the files the job wrote
``GET /v1/jobs/{id}/artifacts/{name}``     one of them
``GET /healthz``                           liveness and the job counts
=========================================  =====================================

Writes need ``Authorization: Bearer <token>`` (:func:`load_or_create_token`).
Every refusal is a 4xx with one line, ``{"error": "..."}``; an unexpected
fault is a 500 with one line too (the traceback goes to the server's log only).
The web pages (:mod:`.web`) sit on the same app.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .handlers import check_token, parse_submission, submit_checked
from .specs import BadRequest, JobSpec, Limits
from .store import FINAL_STATES, STATES, Job, Store
from .web import add_pages
from .worker import safe_name

log = logging.getLogger("ptreclaim.service")

TOKEN_FILE = "token"
#: The largest ``offset`` of a job list (the databases' offsets are 64-bit integers).
MAX_OFFSET = 10**15


def load_or_create_token(path: Path) -> str:
    """The bearer token in ``path``; created (32 random bytes, URL-safe, file
    mode 0600) when missing.  A token file others can read is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise BadRequest(f"{path}: mode {mode:o} lets others read the token; run chmod "
                             f"600 {path} (or delete it to get a new one)", 500) from None
        token = path.read_text().strip()
        if len(token) < 16:
            raise BadRequest(f"{path}: holds no token; delete it to get a new one",
                             500) from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class ErrorOut(BaseModel):
    """Every refusal: one line naming the problem and the fix."""

    error: str


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: str
    label: str
    state: str = Field(description=f"one of {', '.join(STATES)}")
    spec: dict[str, Any]
    created: float = Field(description="seconds since the epoch")
    updated: float
    started: float | None
    finished: float | None
    worker: str | None = Field(description="host:pid of the worker running it (or that ran it)")
    attempts: int = Field(description="claims by workers (more than 1: it was resumed)")
    progress: float = Field(description="fraction done, 0..1")
    phase: str
    eta_seconds: float | None
    log_tail: str = Field(description="the last lines of the job's log")
    error: str | None = Field(description="why it failed: one line")
    cancel_requested: bool


class JobList(BaseModel):
    jobs: list[JobOut]


class ArtifactOut(BaseModel):
    name: str = Field(description="path inside the job folder, e.g. best.yaml")
    size: int
    sha256: str
    updated: float
    url: str


class ArtifactList(BaseModel):
    artifacts: list[ArtifactOut]


class Health(BaseModel):
    status: str
    version: str
    database: str
    jobs: dict[str, int]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what} for code, what in (
        (401, "no or wrong bearer token"), (404, "no such job or artifact"),
        (409, "the job is already finished"), (413, "an upload over the server's caps"),
        (415, "an upload of a refused type (model zips, pickles)"),
        (422, "a bad job spec or upload"))}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
    return f"{loc or 'request'}: {err.get('msg', 'invalid')}"


def create_app(store: Store, token: str, limits: Limits | None = None) -> FastAPI:
    """The API and web app on ``store``; writes need ``token``."""
    limits = limits or Limits()
    app = FastAPI(
        title="ptreclaim service", version=__version__,
        description="Tune page-table reclaim policies as a service: submit a scenario or a "
                    "captured trace, watch the job, fetch tuned thresholds. Writes need "
                    "`Authorization: Bearer <token>` (the token file is printed by serve.py).")
    app.state.store = store
    app.state.limits = limits
    app.state.token = token

    @app.exception_handler(BadRequest)
    async def _bad(_req: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_line(exc))

    @app.exception_handler(Exception)
    async def _crash(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the "
                           "details")

    def require_token(request: Request) -> None:
        check_token(request.headers.get("authorization", ""), token)

    writer = [Depends(require_token)]

    def job_or_404(job_id: str) -> Job:
        job = store.get(job_id) if len(job_id) <= 32 else None
        if job is None:
            raise BadRequest(f"no job {job_id!r}; GET /v1/jobs lists them", 404)
        return job

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> Any:
        """Liveness: the database answers; the job counts by state."""
        try:
            counts = store.counts()
        except Exception as exc:
            raise BadRequest(f"the job store does not answer ({type(exc).__name__})",
                             503) from None
        return {"status": "ok", "version": __version__, "database": store.dialect,
                "jobs": counts}

    @app.post("/v1/jobs", status_code=201, response_model=JobOut, tags=["jobs"],
              responses=ERRORS, openapi_extra=_submit_body(), dependencies=writer)
    async def submit(request: Request) -> Any:
        """Submit a job: the spec as JSON, or multipart/form-data with the spec
        in the ``spec`` field and uploads in ``scenario``, ``trace``,
        ``thresholds`` or ``experiment``."""
        spec, uploads = await parse_submission(request, limits)
        job = await run_in_threadpool(submit_checked, store, spec, uploads, limits)
        return JSONResponse(job.public(), status_code=201,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=ERRORS)
    def list_jobs(state: Annotated[str | None, Query(description="only jobs in this state")]
                  = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Any:
        """The jobs, newest first."""
        if state is not None and state not in STATES:
            raise BadRequest(f"state: {state!r} is not a job state; one of {', '.join(STATES)}")
        return {"jobs": [j.public() for j in store.list_jobs(state, limit, offset)]}

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERRORS)
    def get_job(job_id: str) -> Any:
        """One job: state, progress, ETA, the last log lines."""
        return job_or_404(job_id).public()

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"],
              responses=ERRORS, dependencies=writer)
    def cancel_job(job_id: str) -> Any:
        """Cancel a job: a queued one at once, a running one at its worker's
        next heartbeat (it stops the way the command lines stop)."""
        job = job_or_404(job_id)
        if job.state in FINAL_STATES:
            raise BadRequest(f"job {job_id} is already {job.state}; nothing to cancel", 409)
        done = store.cancel(job_id)
        assert done is not None
        return done.public()

    @app.get("/v1/jobs/{job_id}/artifacts", response_model=ArtifactList, tags=["artifacts"],
             responses=ERRORS)
    def list_artifacts(job_id: str) -> Any:
        """The files the job wrote (as of its worker's last copy)."""
        job_or_404(job_id)
        return {"artifacts": [{**vars(a), "url": f"/v1/jobs/{job_id}/artifacts/{a.name}"}
                              for a in store.blob_infos(job_id, "artifact")]}

    @app.get("/v1/jobs/{job_id}/artifacts/{name:path}", tags=["artifacts"],
             responses={**ERRORS, 200: {"content": {"application/octet-stream": {}},
                                        "description": "the file's bytes"}})
    def get_artifact(job_id: str, name: str) -> Response:
        """One artifact, by its name in the job folder (e.g. ``best.yaml``)."""
        if not safe_name(name):
            raise BadRequest(f"artifact name {name!r} is not a plain relative path", 400)
        job_or_404(job_id)
        data = store.blob(job_id, "artifact", name)
        if data is None:
            raise BadRequest(f"job {job_id} has no artifact {name!r}; GET "
                             f"/v1/jobs/{job_id}/artifacts lists them", 404)
        return Response(data, media_type=media_type(name), headers=_disposition(name))

    add_pages(app)
    _add_schema(app)
    return app


TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".md", ".csv", ".txt", ".log"}


def media_type(name: str) -> str:
    """The content type an artifact is served with (text shown inline)."""
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text/plain; charset=utf-8"
    if suffix in (".png", ".svg"):
        return "image/png" if suffix == ".png" else "image/svg+xml"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _disposition(name: str) -> dict[str, str]:
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_SUFFIXES or suffix == ".png":
        return {}
    # Anything else (models, archives) is downloaded, never rendered.
    return {"Content-Disposition": f'attachment; filename="{Path(name).name}"'}


def _submit_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["spec"],
            "properties": {
                "spec": {"type": "string", "description": "the JobSpec as JSON"},
                "scenario": {"type": "string", "format": "binary",
                             "description": "a scenario YAML (input.source: scenario)"},
                "trace": {"type": "string", "format": "binary",
                          "description": "a captured trace .npz (input.source: trace)"},
                "thresholds": {"type": "string", "format": "binary",
                               "description": "a thresholds .yaml/.json "
                                              "(policy upload:thresholds)"},
                "experiment": {"type": "string", "format": "binary",
                               "description": "an experiment YAML (experiment: upload)"}}}}}}}


def _add_schema(app: FastAPI) -> None:
    """Put the job spec models into the OpenAPI schema (the submit body is
    read by hand, to take JSON and multipart alike)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        spec_schema = TypeAdapter(JobSpec).json_schema(
            ref_template="#/components/schemas/{model}")
        defs = spec_schema.pop("$defs", {})
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs)
        components["JobSpec"] = spec_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_text(app: FastAPI) -> str:
    """The OpenAPI schema as committed in ``docs/openapi.json``."""
    return json.dumps(app.openapi(), indent=1, sort_keys=True) + "\n"

