"""Tuning as a service: an HTTP API, a job store and workers.

``scripts/serve.py`` starts the API (:mod:`.app`, FastAPI on uvicorn) and N
local workers; ``scripts/worker.py`` starts more workers on other machines
that share the store (``--db postgresql://...``); ``scripts/submit.py`` is the
client.  Jobs (:mod:`.specs`) tune a heuristic, train an agent, evaluate
policies or export thresholds, with the same functions the command lines
call (:mod:`.runner`).  The job store (:mod:`.store`, SQLAlchemy on SQLite or
PostgreSQL) holds the jobs, their progress, their uploaded inputs and their
artifacts; Optuna's trials live in the same database.  Workers
(:mod:`.worker`) claim jobs with row locks and leases, so a job whose worker
died is taken up by another.
"""
