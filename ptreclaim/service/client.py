"""A small client of the service's HTTP API (httpx), for scripts and tests.

Every refusal of the server (a 4xx with ``{"error": "..."}``), every
connection problem and a URL that cannot be parsed become
:class:`ServiceError` with one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from .inputs import UPLOAD_SUFFIXES

DEFAULT_URL = "http://127.0.0.1:8080"


class ServiceError(Exception):
    """The service refused a request, or could not be reached (one line)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def header_safe(text: str) -> bool:
    """Whether ``text`` can be sent in an HTTP header: printable ASCII."""
    return text.isascii() and text.isprintable()


class Client:
    """The API at ``url``; ``token`` for writes (submit, cancel)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        if token and not header_safe(token):
            raise ServiceError("the bearer token holds characters an HTTP header cannot carry "
                               "(non-ASCII or control characters); give the token "
                               "scripts/serve.py wrote")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:  # e.g. "http://[::1": a bad port
            raise ServiceError(f"{url}: not a valid URL ({type(exc).__name__}: {exc}); give "
                               f"one like {DEFAULT_URL}") from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.InvalidURL as exc:  # the path (a job id, an artifact name) is bad
            raise ServiceError(f"cannot request {path!r} ({exc}); check the job id or artifact "
                               f"name") from None
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self.url} ({type(exc).__name__}: "
                               f"{exc}); is scripts/serve.py running there?") from None
        if r.status_code >= 400:
            try:
                message = str(r.json()["error"])
            except (ValueError, KeyError, TypeError):
                message = r.text.strip().splitlines()[0] if r.text.strip() else r.reason_phrase
            raise ServiceError(f"HTTP {r.status_code}: {message}", r.status_code)
        return r

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return dict(self._request("GET", "/healthz").json())

    def submit(self, spec: Mapping[str, Any], files: Mapping[str, Path] | None = None
               ) -> dict[str, Any]:
        """Submit a job; ``files`` maps upload fields (scenario, trace,
        thresholds, experiment) to local files."""
        if not files:
            return dict(self._request("POST", "/v1/jobs", json=dict(spec)).json())
        parts: dict[str, Any] = {}
        for field, path in files.items():
            if field not in UPLOAD_SUFFIXES:
                raise ServiceError(f"unknown upload field {field!r}")
            try:
                parts[field] = (path.name, path.read_bytes())
            except OSError as exc:
                raise ServiceError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return dict(self._request("POST", "/v1/jobs", data={"spec": json.dumps(dict(spec))},
                                  files=parts).json())

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``."""
        return dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """``GET /v1/jobs``."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return list(self._request("GET", "/v1/jobs", params=params).json()["jobs"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/cancel``."""
        return dict(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """``GET /v1/jobs/{id}/artifacts``."""
        return list(self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()["artifacts"])

    def artifact(self, job_id: str, name: str) -> bytes:
        """``GET /v1/jobs/{id}/artifacts/{name}``."""
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}").content
