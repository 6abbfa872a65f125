"""Request handling shared by the API (:mod:`.app`) and the web pages
(:mod:`.web`): the token check, reading uploads, checking and queuing a job."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from .inputs import Upload, check_job, check_upload_field
from .specs import BadRequest, Limits, parse_spec_json
from .store import Job, Store

#: Largest JSON spec (the ``spec`` field or a JSON body).
MAX_SPEC_BYTES = 64 * 1024


def check_token(header: str, token: str) -> None:
    """Refuse a write without the server's bearer token (401)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()):
        raise BadRequest("a write needs 'Authorization: Bearer <token>' with the server's "
                         "token (the file serve.py printed at start, mode 0600)", 401)


def submit_checked(store: Store, spec: Any, uploads: dict[str, Upload], limits: Limits) -> Job:
    """Check a submission (:func:`~.inputs.check_job`) and queue it."""
    stored, files = check_job(spec, uploads, limits, store)
    return store.submit(spec.kind, spec.label, stored, files)


async def read_upload(field: str, upload: UploadFile, limits: Limits) -> Upload:
    """An uploaded file's bytes, refused early when over the caps."""
    filename = upload.filename or field
    check_upload_field(field, filename, upload.size or 0, limits)
    data = await upload.read()
    check_upload_field(field, filename, len(data), limits)
    return Upload(field, filename, data)


async def parse_submission(request: Request, limits: Limits
                           ) -> tuple[Any, dict[str, Upload]]:
    """The spec and the uploads of ``POST /v1/jobs`` (JSON or multipart)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = int(request.headers.get("content-length") or 0)
    if declared > limits.max_trace_bytes + 4 * limits.max_yaml_bytes + MAX_SPEC_BYTES:
        raise BadRequest(f"the request is {declared} bytes, over this server's caps "
                         "(serve.py --max-upload-mib)", 413)
    if ctype == "application/json":
        body = await request.body()
        if len(body) > MAX_SPEC_BYTES:
            raise BadRequest(f"the job spec is over {MAX_SPEC_BYTES} bytes", 413)
        return parse_spec_json(body), {}
    if ctype != "multipart/form-data":
        raise BadRequest(f"content type {ctype or 'none'!r} is not taken; send the job spec "
                         "as application/json, or multipart/form-data with a 'spec' field "
                         "and the files", 415)
    try:
        form = await request.form(max_files=4, max_fields=8, max_part_size=MAX_SPEC_BYTES)
    except StarletteHTTPException as exc:
        raise BadRequest(f"multipart body refused: {exc.detail}", 413) from None
    try:
        spec_text: Any = None
        uploads: dict[str, Upload] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in uploads:
                    raise BadRequest(f"upload field {key!r} given twice")
                uploads[key] = await read_upload(key, value, limits)
            elif key == "spec":
                spec_text = value
            else:
                raise BadRequest(f"unknown form field {key!r}; send 'spec' (the job as JSON) "
                                 "and the files")
        if spec_text is None:
            raise BadRequest("no 'spec' field: the job spec as JSON, e.g. "
                             '{"kind": "tune", "target": "soft_hard"}')
        return parse_spec_json(spec_text), uploads
    finally:
        await form.close()
