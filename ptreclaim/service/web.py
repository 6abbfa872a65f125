"""The web pages: server-rendered HTML (Jinja2), no JavaScript.

``/`` lists the jobs with their progress (the page reloads itself every 5 s
while a job is queued or running, with a ``<meta http-equiv="refresh">``),
``/jobs/{id}`` shows one job with its plots, its thresholds file and its
artifacts, ``/submit`` is the form that submits a job.  Forms that write
(submit, cancel) carry the bearer token in a password field.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from .handlers import check_token, read_upload, submit_checked
from .specs import BadRequest, parse_spec
from .store import FINAL_STATES, STATES

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Artifacts shown as the job's thresholds file, in this order of preference.
THRESHOLDS_FILES = ("thresholds.yaml", "best.yaml", "thresholds_tree.yaml")
#: How much of a thresholds file the job page shows.
MAX_SHOWN = 64 * 1024
#: File inputs of the form -> upload fields (the experiment's name has a text input).
FILE_FIELDS = {"scenario": "scenario", "trace": "trace", "thresholds": "thresholds",
               "experiment_file": "experiment"}
#: Form fields of each job kind (besides label, wall_seconds and the input).
KIND_FIELDS = {
    "tune": ("target", "trials", "seeds", "episodes", "sampler", "seed"),
    "train": ("experiment", "algo", "timesteps", "eval_suite"),
    "evaluate": ("episodes", "seed", "baseline"),
    "export": ("run_job", "tree_depth", "eval_episodes"),
}


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    n = round(s)
    return f"{n // 3600}h{n % 3600 // 60:02d}m" if n >= 3600 else (
        f"{n // 60}m{n % 60:02d}s" if n >= 60 else f"{n}s")


def spec_from_form(form: FormData) -> dict[str, Any]:
    """A job spec from the submit form's fields (empty fields left out, so
    the spec's defaults apply; :func:`parse_spec` converts the numbers, not strictly:
    a form sends text)."""

    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    kind = text("kind")
    spec: dict[str, Any] = {"kind": kind}
    for name in ("label", "wall_seconds", *KIND_FIELDS.get(kind, ())):
        if text(name):
            spec[name] = text(name)
    source = text("source") or "shipped"
    if kind != "export" and not (kind == "train" and source == "default"):
        inp: dict[str, Any] = {"source": source}
        if source == "shipped":
            inp["name"] = text("suite") or ("test" if kind == "evaluate" else "train")
        elif source == "trace":
            inp.update({k: text(k) for k in ("copies", "speed", "ticks") if text(k)})
        spec["input"] = inp
    if kind == "tune" and form.get("allow_few_seeds"):
        spec["allow_few_seeds"] = True
    if kind == "train":
        if text("seeds"):
            spec["seeds"] = [s.strip() for s in text("seeds").split(",") if s.strip()]
        spec["overrides"] = [line.strip() for line in text("overrides").splitlines()
                             if line.strip()]
    if kind == "evaluate":
        spec["policies"] = [line.strip() for line in text("policies").splitlines()
                            if line.strip()]
    return spec


def add_pages(app: FastAPI) -> None:
    """Add the HTML pages to the API app."""
    from ..agents.heuristics import HEURISTICS
    from ..agents.tune.spaces import HEURISTIC_TARGETS
    from ..envs.configio import shipped_names

    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["when"] = _when
    templates.env.filters["duration"] = _duration
    store = app.state.store

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, state: str | None = None) -> Response:
        if state is not None and state not in STATES:
            state = None
        jobs = store.list_jobs(state, 200)
        busy = any(j.state not in FINAL_STATES for j in jobs)
        return page(request, "jobs.html", jobs=jobs, state=state, states=STATES, refresh=busy)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> Response:
        job = store.get(job_id) if len(job_id) <= 32 else None
        if job is None:
            return page(request, "error.html", 404, message=f"no job {job_id!r}")
        artifacts = store.blob_infos(job_id, "artifact")
        names = {a.name for a in artifacts}
        plots = [a.name for a in artifacts if a.name.endswith(".png")]
        shown = next((n for n in THRESHOLDS_FILES if n in names), None)
        thresholds = None
        if shown is not None:
            data = store.blob(job_id, "artifact", shown) or b""
            thresholds = data[:MAX_SHOWN].decode("utf-8", errors="replace")
        return page(request, "job.html", job=job, artifacts=artifacts, plots=plots,
                    thresholds_name=shown, thresholds=thresholds,
                    refresh=job.state not in FINAL_STATES, final=job.state in FINAL_STATES)

    def form_page(request: Request, status: int = 200, error: str | None = None,
                  values: dict[str, Any] | None = None) -> Response:
        return page(request, "submit.html", status, error=error, values=values or {},
                    suites=shipped_names("suites"), scenarios=shipped_names("scenarios"),
                    targets=HEURISTIC_TARGETS, heuristics=list(HEURISTICS))

    @app.get("/submit", response_class=HTMLResponse, include_in_schema=False)
    def submit_form(request: Request) -> Response:
        return form_page(request)

    @app.post("/submit", response_class=HTMLResponse, include_in_schema=False)
    async def submit_post(request: Request) -> Response:
        limits = app.state.limits
        values: dict[str, Any] = {}
        try:
            form = await request.form(max_files=4, max_fields=40)
        except Exception as exc:
            return form_page(request, 413, f"the form was refused: {exc}")
        try:
            values = {k: v for k, v in form.items() if isinstance(v, str) and k != "token"}
            token = form.get("token")
            check_token(f"Bearer {token if isinstance(token, str) else ''}", app.state.token)
            uploads = {}
            for name, field in FILE_FIELDS.items():
                upload = form.get(name)
                if isinstance(upload, UploadFile) and upload.filename:
                    uploads[field] = await read_upload(field, upload, limits)
            spec = parse_spec(spec_from_form(form), strict=False)
            job = await run_in_threadpool(submit_checked, store, spec, uploads, limits)
        except BadRequest as exc:
            return form_page(request, exc.status, exc.message, values)
        finally:
            await form.close()
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.post("/jobs/{job_id}/cancel", response_class=HTMLResponse, include_in_schema=False)
    async def cancel_post(request: Request, job_id: str) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        token = form.get("token")
        try:
            check_token(f"Bearer {token if isinstance(token, str) else ''}", app.state.token)
        except BadRequest as exc:
            return page(request, "error.html", exc.status, message=exc.message)
        if store.get(job_id) is None:
            return page(request, "error.html", 404, message=f"no job {job_id!r}")
        store.cancel(job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
