"""What happens during training besides the gradient steps: validation with
best-model saving, checkpoints, stop requests, cost-term logging, progress.

Everything is written atomically into the run folder
(:class:`~ptreclaim.agents.runs.RunFolder`), so a run stopped at any moment
resumes from its last checkpoint; every pickled file is signed as it is
written (:func:`~ptreclaim.agents.loading.write_pickled`), so that later
loads trust it.  A model whose weights turned NaN or inf is never saved
(:class:`TrainingDiverged`): the last checkpoint stays the last good one.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...envs.configio import write_text_atomic
from ...envs.pagetable_env import COST_TERMS
from ..interrupts import request_stop, stop_requested
from ..loading import write_pickled
from ..modelpolicy import as_policy
from ..rollout import run_policies
from ..runs import RunFolder
from .config import ExperimentConfig, Scenarios

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

#: Test hook: stop (as if Ctrl-C) once this many steps are done.
STOP_AT_ENV = "PTRECLAIM_TRAIN_STOP_AT"


class TrainingDiverged(Exception):
    """The model's weights hold NaN or inf (a learning rate too high, an
    exploding loss): training stops, and nothing of this model is saved."""


def check_finite(model: BaseAlgorithm) -> None:
    """Raise :class:`TrainingDiverged` when a weight of ``model`` is NaN or inf."""
    import torch

    for name, param in model.policy.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise TrainingDiverged(f"the weights went NaN or inf ({name})")


def save_model(model: BaseAlgorithm, run: RunFolder, path: Path) -> None:
    """Save an SB3 model to ``path`` in ``run`` atomically, signed; never a
    diverged one (:class:`TrainingDiverged`)."""
    check_finite(model)
    buf = io.BytesIO()
    model.save(buf)
    write_pickled(run.path, path, buf.getvalue())


def save_stats(venv: VecEnv, run: RunFolder, path: Path) -> None:
    """Save ``venv``'s VecNormalize statistics to ``path`` in ``run``, signed
    (nothing when it does not normalise)."""
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(venv, VecNormalize):
        # VecNormalize pickles without its envs (see its __getstate__).
        write_pickled(run.path, path, pickle.dumps(venv))


def save_checkpoint(model: BaseAlgorithm, run: RunFolder, n: int, total: int) -> Path:
    """``checkpoints/model_<n>_steps.zip`` with its VecNormalize statistics
    (and the replay buffer for off-policy algorithms), signed; records it in
    state.json last, so that the state never names a partial checkpoint."""
    ck = run / "checkpoints"
    ck.mkdir(exist_ok=True)
    path = ck / f"model_{n}_steps.zip"
    save_model(model, run, path)
    venv = model.get_env()
    if venv is not None:
        save_stats(venv, run, ck / f"vecnormalize_{n}_steps.pkl")
    if hasattr(model, "replay_buffer") and getattr(model, "replay_buffer", None) is not None:
        buf = io.BytesIO()
        model.save_replay_buffer(buf)  # type: ignore[attr-defined]
        write_pickled(run.path, ck / f"replay_buffer_{n}_steps.pkl", buf.getvalue())
    run.write_state(num_timesteps=n, total_timesteps=total,
                    checkpoint=str(path.relative_to(run.path)))
    return path


def make_callback(run: RunFolder, exp: ExperimentConfig, scen: Scenarios, total: int,
                  progress: Progress | None, task: TaskID | None,
                  echo: Callable[[str], None], label: str) -> Any:
    """The SB3 callback of a training run (SB3 is imported only here, when
    training starts)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _Callback(BaseCallback):
        """Periodic validation (fixed seeds, deterministic; ``eval.select_on``) with
        best-model saving, checkpoints with their normalisation stats,
        stop requests, cost-term logging and the live progress line."""

        def __init__(self) -> None:
            super().__init__(verbose=0)
            self.evals: dict[str, list[Any]] = {"timesteps": [], "results": [],
                                                "ep_lengths": [], "costs": []}
            self.best = -math.inf
            self.last: float | None = None
            self.next_eval: float = 0.0
            self.next_ckpt: float = 0.0
            self.stop_at = int(os.environ.get(STOP_AT_ENV, "0") or 0)
            self.t0 = time.perf_counter()
            self.n0 = 0
            self.term_sums = dict.fromkeys(COST_TERMS, 0.0)
            self.term_n = 0

        def _on_training_start(self) -> None:
            n = self.num_timesteps
            self.n0 = n
            freq, ck = exp.eval.freq, exp.checkpoint_freq
            self.next_eval = (n // freq + 1) * freq if freq else math.inf
            self.next_ckpt = (n // ck + 1) * ck if ck else math.inf
            old = run / "evaluations.npz"
            if old.is_file():
                with np.load(old) as d:
                    for k in self.evals:
                        self.evals[k] = list(d[k]) if k in d else []
                if self.evals["results"]:
                    self.best = max(float(np.mean(r)) for r in self.evals["results"])
                    self.last = -float(np.mean(self.evals["results"][-1]))

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                terms = info.get("cost_terms")
                if terms:
                    for k in COST_TERMS:
                        self.term_sums[k] += terms.get(k, 0.0)
                    self.term_n += 1
            n = self.num_timesteps
            if n >= self.next_eval:
                self.evaluate()
                self.next_eval += exp.eval.freq
                while self.next_eval <= n:
                    self.next_eval += exp.eval.freq
            if n >= self.next_ckpt:
                save_checkpoint(self.model, run, n, total)
                while self.next_ckpt <= n:
                    self.next_ckpt += exp.checkpoint_freq
            if self.stop_at and n >= self.stop_at and not stop_requested():
                request_stop(signal.SIGINT)
            self._show(n)
            return not stop_requested()

        def _on_rollout_end(self) -> None:
            # Before the next rollout turns NaN weights into a torch error far from the cause.
            check_finite(self.model)
            if self.term_n:
                for k in COST_TERMS:
                    self.logger.record(f"cost_terms/{k}", self.term_sums[k] / self.term_n)
                self.term_sums = dict.fromkeys(COST_TERMS, 0.0)
                self.term_n = 0

        def fps(self) -> float:
            dt = time.perf_counter() - self.t0
            return (self.num_timesteps - self.n0) / dt if dt > 0 else 0.0

        def _status(self) -> str:
            ev = (f"eval cost {self.last:.2f} (best {-self.best:.2f})" if self.last is not None
                  else "first eval at step " + str(int(self.next_eval)))
            return f"{self.fps():.0f} steps/s | {ev}"

        def _show(self, n: int) -> None:
            if progress is not None and task is not None:
                progress.update(task, completed=n, status=self._status())

        def evaluate(self) -> None:
            """Deterministic validation episodes (``eval.select_on``), seeds
            from ``eval.seed + 1``; saves the best model with its statistics."""
            from stable_baselines3.common.vec_env import VecNormalize

            venv = self.model.get_env()
            vn = venv if isinstance(venv, VecNormalize) else None
            policy = as_policy(self.model, vn, exp.env, "current")
            scenarios = scen.train if exp.eval.select_on == "train" else scen.eval
            res = run_policies({"current": policy}, scenarios, exp.eval.episodes,
                               exp.eval.seed + 1, exp.env)
            rewards = np.array([r.reward for r in res])
            lengths = np.array([r.steps for r in res])
            mean = float(rewards.mean())
            n = self.num_timesteps
            self.evals["timesteps"].append(n)
            self.evals["results"].append(rewards)
            self.evals["ep_lengths"].append(lengths)
            self.evals["costs"].append(np.array([[r.cost_terms[k] for k in COST_TERMS]
                                                 for r in res]))
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in self.evals.items()}
            arrays["scenarios"] = np.array([r.scenario for r in res])
            arrays["term_names"] = np.array(COST_TERMS)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            write_text_atomic(run / "evaluations.npz", buf.getvalue())
            self.last = -mean
            self.logger.record("eval/mean_cost", -mean)
            self.logger.record("eval/mean_reward", mean)
            if mean > self.best:
                self.best = mean
                save_model(self.model, run, run / "best_model.zip")
                if vn is not None:
                    save_stats(vn, run, run / "best_vecnormalize.pkl")
                run.write_state(best_timesteps=n, best_mean_cost=-mean)
            if progress is None and not stop_requested():
                # Once stopping, the run's only line is the one saying so.
                pct = 100.0 * n / total
                echo(f"{label}step {n}/{total} ({pct:.0f}%) {self._status()}")

    return _Callback()
