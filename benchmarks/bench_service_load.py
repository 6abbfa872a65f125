"""Load test of the service API on loopback: bounded, and it stops by itself.

Starts ``scripts/serve.py --workers 0`` (the API alone, a SQLite store in a
temporary folder) on 127.0.0.1 and a free port, then from ``--clients``
threads sends ``--submits`` job submissions (tiny tuning jobs, left queued and
cancelled at the end) interleaved with ``--status`` status requests
(``GET /v1/jobs/{id}``, ``GET /v1/jobs``, ``GET /healthz`` in turn), and
prints the number of errors (any non-2xx or connection error) and the p50 /
p99 / max latency of each kind.  Nothing leaves this machine.

Reproduce: ``.venv/bin/python benchmarks/bench_service_load.py`` (defaults:
500 status requests, 50 submissions, 20 clients).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"kind": "tune", "target": "soft_hard", "trials": 2, "seeds": 1, "allow_few_seeds": True,
        "input": {"source": "shipped", "name": "redis_jemalloc"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--status", type=int, default=500, help="status requests (default 500)")
    p.add_argument("--submits", type=int, default=50, help="submissions (default 50)")
    p.add_argument("--clients", type=int, default=20, help="client threads (default 20)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptreclaim-load-") as tmp:
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port),
             "--workers", "0", "--root", tmp], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url + "/healthz", timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("bench_service_load: the server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            token = (Path(tmp) / "runs" / "service" / "token").read_text().strip()
            return _load(url, token, args)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


def _load(url: str, token: str, args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for _ in
               range(args.clients)]
    seed = clients[0].post("/v1/jobs", json=SPEC).json()["id"]
    kinds = ["submit"] * args.submits + ["status"] * args.status
    # Interleave: one submission among every status/submits requests.
    order = sorted(range(len(kinds)), key=lambda i: (i * 7919) % len(kinds))
    plan = [kinds[i] for i in order]
    status_paths = [f"/v1/jobs/{seed}", "/v1/jobs?limit=20", "/healthz"]

    def one(k: int) -> tuple[str, float, bool]:
        c = clients[k % len(clients)]
        t0 = time.perf_counter()
        try:
            if plan[k] == "submit":
                r = c.post("/v1/jobs", json={**SPEC, "label": f"load {k}"})
            else:
                r = c.get(status_paths[k % 3])
            ok = r.status_code < 300
        except httpx.HTTPError:
            ok = False
        return plan[k], time.perf_counter() - t0, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(len(plan))))
    wall = time.perf_counter() - t0
    errors = sum(not ok for _, _, ok in results)
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f} s "
          f"({len(results) / wall:.0f}/s); errors: {errors}")
    for kind in ("status", "submit"):
        lat = np.array([d for k, d, _ in results if k == kind]) * 1000
        print(f"{kind:7s} n={lat.size:4d}  p50 {np.percentile(lat, 50):7.1f} ms  "
              f"p99 {np.percentile(lat, 99):7.1f} ms  max {lat.max():7.1f} ms")
    queued = clients[0].get("/v1/jobs", params={"state": "queued", "limit": 1000}).json()["jobs"]
    for job in queued:
        clients[0].post(f"/v1/jobs/{job['id']}/cancel")
    print(f"jobs queued then cancelled: {len(queued)} (expected {args.submits + 1})")
    for c in clients:
        c.close()
    return 0 if errors == 0 and len(queued) == args.submits + 1 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
