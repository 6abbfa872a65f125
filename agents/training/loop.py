"""One training run: train (or continue) a seed, then evaluate and report.

:func:`train_run` drives a run folder (:class:`~ptreclaim.agents.runs.RunFolder`)
from whatever state it is in: ``running`` or ``interrupted`` runs are trained
to their total (from the last checkpoint when resuming), ``trained`` ones go
straight to the final evaluation, in which the final and best models meet
every fixed heuristic and the oracle bound on the same seeded held-out
episodes.  A stop request (:mod:`ptreclaim.agents.interrupts`, ``flag``
mode) ends training at the next step with a checkpoint, or the final
evaluation at the next episode; the run stays resumable either way.  A run
whose weights turn NaN or inf stops at once, is marked ``failed`` with the
reason in ``state.json``, and keeps its last good checkpoint.  The process
that trains a run holds its folder (:meth:`RunFolder.claim`): a second one
is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ...envs.configio import write_text_atomic
from ...envs.sim.config import quote
from ..interrupts import Interrupted, request_stop, signal_name, stop_requested
from ..loading import (
    algo_class,
    load_model,
    load_replay_buffer,
    load_vecnormalize,
    verify_pickled,
    write_pickled,
)
from ..report import progress_display
from ..runs import RunFolder
from ..stats import paired_difference_ci, summarize
from .baselines import baseline_results, run_with_ticks
from .callbacks import (
    TrainingDiverged,
    check_finite,
    make_callback,
    save_checkpoint,
    save_model,
    save_stats,
)
from .config import TrainError
from .hyperparams import materialize
from .pretrain import pretrain
from .report import plot_cost_terms, plot_learning_curve, print_tables, run_report
from .runconfig import RunConfig, load_trained_policy
from .vecenv import envs_line, make_vec_env

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Output:
    """Where a run talks: a rich console, whether to draw a live bar, a label
    for every line, and whether a stop is reported here (``False`` when the
    caller reports it for several runs at once)."""

    console: Console
    live: bool
    label: str = ""
    report_stop: bool = True

    def echo(self, msg: str) -> None:
        """Print one line (no markup), flushed at once."""
        self.console.print(msg, highlight=False, markup=False, soft_wrap=True)
        # Piped output (parallel seeds, tee, CI logs) should show progress as it happens.
        with contextlib.suppress(OSError, ValueError):
            self.console.file.flush()

    def error(self, msg: str) -> None:
        """One error line on stderr, as the command line prints bad input."""
        tool = Path(sys.argv[0]).name or "train.py"
        print(f"{tool}: error: {self.label}{msg}", file=sys.stderr, flush=True)

    def stopped(self, what: str, kept: str, run: RunFolder) -> int:
        """Report a stop request that ended ``what`` (one line); returns the
        exit status, 128 + the signal."""
        signum = stop_requested()
        if self.report_stop:
            self.echo(f"{self.label}{signal_name(signum)} stopped {what}; kept {kept}; resume "
                      f"with: python scripts/train.py --resume {shlex.quote(str(run))}")
        return 128 + signum


def console(file: TextIO | None = None) -> Console:
    """The console of training output (a fixed width when piped)."""
    from rich.console import Console

    # Piped output (logs, parallel seeds) gets a fixed width wide enough for the tables.
    return Console(file=file, width=None if (file or sys.stdout).isatty() else 150)


class _FinalEvalStopped(Exception):
    """Raised to unwind the final evaluation after a stop request."""


def train_run(run: RunFolder, cfg: RunConfig, out: Output, resume: bool = False) -> int:
    """Train (or continue) one seed in ``run``, then evaluate and report;
    the run folder is claimed for this process meanwhile."""
    import torch

    with run.claim():
        exp = cfg.experiment
        torch.set_num_threads(exp.torch_threads)
        state = run.read_state()
        if state["status"] == "failed":
            check_resumable(run, state)
        total = exp.timesteps
        done = int(state.get("num_timesteps") or 0)
        if state["status"] in ("running", "interrupted") and done < total:
            code = _train(run, cfg, out, resume, state)
            if code:
                return code
        return _finish(run, cfg, out)


def _resume_files(run: RunFolder, state: dict[str, Any]) -> tuple[Path, Path, Path] | None:
    """(model, VecNormalize statistics, replay buffer) of the checkpoint a
    resume continues from, or None when the run has none."""
    ck = run.checkpoint(state)
    if ck is None:
        return None
    n = int(state.get("num_timesteps") or 0)
    return (ck, run / "checkpoints" / f"vecnormalize_{n}_steps.pkl",
            run / "checkpoints" / f"replay_buffer_{n}_steps.pkl")


def check_resumable(run: RunFolder, state: dict[str, Any]) -> None:
    """Refuse a run that has nothing left to do (finished) or must not go on
    (failed): :class:`TrainError`."""
    if state["status"] == "finished":
        raise TrainError(f"{run}: this run is finished (see its report.md); start a new one")
    if state["status"] == "failed":
        raise TrainError(f"{run}: this run failed ({quote(state.get('error'))}); start a new "
                         "one with other hyperparameters")


def check_resume(run: RunFolder, cfg: RunConfig, state: dict[str, Any]) -> None:
    """Everything ``--resume`` will load, checked before any work starts:
    one line (:class:`TrainError`) for each way a run folder can be damaged
    or untrusted (see :func:`ptreclaim.agents.loading._pickled`)."""
    exp = cfg.experiment
    status = state["status"]
    check_resumable(run, state)
    if state.get("seed") is not None and state["seed"] != cfg.seed:
        raise TrainError(f"{run / 'state.json'}: seed {state['seed']} differs from config.yaml's "
                         f"{cfg.seed}; the run folder is damaged")
    if status == "trained":
        for which in ("final", "best"):
            model, stats = run.model_files(which)
            if which == "final" or model.is_file():
                load_model(model, exp.algo, exp.env)
                if stats.is_file():
                    load_vecnormalize(stats)
        return
    files = _resume_files(run, state)
    if files is None:
        if state.get("num_timesteps"):
            raise TrainError(f"{run}: no checkpoint to resume from (state.json names none)")
        return
    model, stats, buffer = files
    n = int(state.get("num_timesteps") or 0)
    if model != run / "checkpoints" / f"model_{n}_steps.zip":
        # The statistics and buffer are found by num_timesteps: a checkpoint of another
        # step count would resume with another checkpoint's statistics.
        raise TrainError(f"{run / 'state.json'}: checkpoint {quote(state.get('checkpoint'))} "
                         f"is not the one of num_timesteps {n} (checkpoints/model_{n}_steps"
                         ".zip); the run folder is damaged: resume from another run or start "
                         "a new one")
    if not model.is_file():
        raise TrainError(f"{model}: the checkpoint state.json names is missing; resume from "
                         "another run or start a new one")
    load_model(model, exp.algo, exp.env)
    if (exp.normalize.obs or exp.normalize.reward) and not stats.is_file():
        raise TrainError(f"{stats}: missing; cannot resume without the checkpoint's "
                         "normalisation statistics")
    if stats.is_file():
        load_vecnormalize(stats)
    if buffer.is_file():
        verify_pickled(buffer, "replay buffer")


def _train(run: RunFolder, cfg: RunConfig, out: Output, resume: bool,
           state: dict[str, Any]) -> int:
    exp, seed, hp = cfg.experiment, cfg.seed, cfg.hyperparams
    total = exp.timesteps
    policy, kwargs = materialize(exp.algo, hp)
    gamma = float(hp.get("gamma", 0.99))
    cls = algo_class(exp.algo)
    files = _resume_files(run, state) if resume else None
    ckpt = files is not None
    if files is not None:
        ck_path, stats, rb = files
        n = int(state.get("num_timesteps") or 0)
        if (exp.normalize.obs or exp.normalize.reward) and not stats.is_file():
            raise TrainError(f"{stats}: missing; cannot resume without the checkpoint's "
                             "normalisation statistics")
        model = load_model(ck_path, exp.algo, exp.env)
        # A fresh stream: do not replay the episodes seen before the interrupt.
        venv = make_vec_env(exp, cfg.scenarios.train, seed + n, gamma,
                            stats if stats.is_file() else None)
        model.set_env(venv)
        model.set_random_seed(seed + n)
        if rb.is_file() and hasattr(model, "load_replay_buffer"):
            load_replay_buffer(model, rb)
        out.echo(f"{out.label}resuming {run.name} at step {n}/{total}")
    else:
        venv = make_vec_env(exp, cfg.scenarios.train, seed, gamma)
        model = cls(policy, venv, seed=seed, device="cpu", verbose=0,
                    tensorboard_log=str(run / "tb"), **kwargs)
        if exp.pretrain.teacher:
            run.write_state(pretrain=pretrain(model, venv, exp.pretrain, exp.env,
                                              cfg.scenarios.train[0], seed,
                                              lambda m: out.echo(f"{out.label}{m}")))
    run.write_state(status="running", total_timesteps=total)
    progress = None
    task = None
    if out.live:
        from rich.markup import escape

        progress = progress_display(f"{escape(out.label)}[bold]{exp.algo}[/] seed {seed}",
                                    out.console, transient=False, status_field="status",
                                    bar_width=24)
        task = progress.add_task("train", total=total, completed=model.num_timesteps,
                                 status="")
    cb = make_callback(run, exp, cfg.scenarios, total, progress, task, out.echo, out.label)
    t0 = time.perf_counter()
    remaining = total - model.num_timesteps
    if progress is None:
        out.echo(f"{out.label}training {exp.algo} seed {seed}: {remaining} steps "
                 f"({envs_line(exp, venv)}) -> {run}")
    diverged = None
    # Everything built so far (torch, SB3, the model) lives for the whole run: freezing it
    # keeps the garbage collector from walking those ~200k objects again in every full
    # collection (measured: PPO with the batched env trains ~15-20 % faster).
    gc.collect()
    gc.freeze()
    try:
        with progress if progress is not None else contextlib.nullcontext():
            model.learn(remaining, callback=cb, tb_log_name=exp.algo,
                        reset_num_timesteps=not ckpt, progress_bar=False)
    except TrainingDiverged as exc:
        diverged = str(exc)
    except (ValueError, RuntimeError) as exc:
        # NaN weights surface as a torch error in the next forward pass (a Categorical
        # with NaN logits); so do finite weights so large that the forward pass
        # overflows (inf - inf in the logits' normalisation). Anything else is a bug to
        # see whole.
        try:
            check_finite(model)
        except TrainingDiverged as nan:
            diverged = f"{nan}, then torch raised {type(exc).__name__}"
        else:
            if not _nan_outputs(exc):
                raise
            diverged = ("the policy's outputs went NaN or inf (weights large enough to overflow "
                        f"the forward pass), and torch raised {type(exc).__name__}")
    finally:
        gc.unfreeze()
        spent = time.perf_counter() - t0
        run.write_state(train_seconds=float(state.get("train_seconds", 0.0)) + spent)
    n = model.num_timesteps
    if diverged is not None:
        venv.close()
        kept = run.read_state().get("checkpoint")
        run.write_state(status="failed", error=f"diverged at step {n}: {diverged}")
        out.error(f"{run.name}: training diverged at step {n}/{total}: {diverged}; marked the "
                  f"run failed in its state.json, kept "
                  f"{'the last good checkpoint ' + kept if kept else 'no checkpoint'}; lower "
                  "the learning rate (or clip the gradients) and start a new run")
        return 1
    if stop_requested():
        save_checkpoint(model, run, n, total)
        run.write_state(status="interrupted")
        venv.close()
        return out.stopped(f"training at step {n}/{total}",
                           f"a checkpoint and its normalisation stats in {run / 'checkpoints'}",
                           run)
    # The curve ends at the final model, which may also be the best one.
    if exp.eval.freq and (not cb.evals["timesteps"] or cb.evals["timesteps"][-1] != n):
        cb.evaluate()
    save_model(model, run, run / "model.zip")
    save_stats(venv, run, run / "vecnormalize.pkl")
    save_checkpoint(model, run, n, total)
    if not (run / "best_model.zip").is_file():
        # No evaluation during training: the final model is the best we know.
        write_pickled(run.path, run / "best_model.zip", (run / "model.zip").read_bytes())
        if (run / "vecnormalize.pkl").is_file():
            write_pickled(run.path, run / "best_vecnormalize.pkl",
                          (run / "vecnormalize.pkl").read_bytes())
    run.write_state(status="trained", num_timesteps=n, fps=cb.fps())
    venv.close()
    return 0


def _nan_outputs(exc: BaseException) -> bool:
    """Whether ``exc`` is torch refusing a distribution built from NaN or inf
    parameters (its argument validation: "... found invalid values: tensor([[nan, ...")."""
    text = str(exc)
    return (isinstance(exc, ValueError) and "found invalid values" in text
            and ("nan" in text or "inf" in text))


def _finish(run: RunFolder, cfg: RunConfig, out: Output) -> int:
    """Final evaluation of the final and best models against every baseline,
    then the report, plots and table."""
    exp = cfg.experiment
    ev = exp.eval
    out.echo(f"{out.label}final evaluation on {len(cfg.scenarios.eval)} held-out scenarios x "
             f"{ev.final_episodes} episodes (seeds from {ev.seed}), every policy")
    learned = {exp.algo: load_trained_policy(run, "final")}
    if (run / "best_model.zip").is_file():
        learned[f"{exp.algo}_best"] = load_trained_policy(run, "best")
    names, labels = ev.rivals, ev.rival_labels
    cache = run.parent / ".baseline_cache" if ev.cache_baselines else None

    per_policy = len(cfg.scenarios.eval) * ev.final_episodes
    progress = None
    if out.live:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        # Cached baselines finish at once, so the bar may jump: it counts episodes run.
        progress = Progress(TextColumn("final evaluation"), BarColumn(bar_width=24),
                            MofNCompleteColumn(), TextColumn("episodes"),
                            console=out.console, transient=True)
        curve = (len(names) * len(cfg.scenarios.eval) * ev.episodes
                 if (run / "evaluations.npz").is_file() else 0)
        task = progress.add_task("eval", total=per_policy * (len(learned) + len(names)) + curve)

    def tick() -> None:
        if stop_requested():
            raise _FinalEvalStopped
        if progress is not None:
            progress.advance(task)

    t0 = time.perf_counter()
    try:
        with progress if progress is not None else contextlib.nullcontext():
            # Own models first: parallel seeds then reach the shared baselines at
            # different times and split them instead of waiting on one another.
            mine = run_with_ticks(learned, cfg.scenarios.eval, ev.final_episodes, ev.seed,
                                  exp.env, tick)
            base = baseline_results(names, cfg.scenarios.eval, ev.final_episodes, ev.seed,
                                    exp.env, cache, tick, ev.jobs)
            held_out_seconds = time.perf_counter() - t0
            curve_scen = cfg.scenarios.train if ev.select_on == "train" else cfg.scenarios.eval
            curve_base = (baseline_results(names, curve_scen, ev.episodes,
                                           ev.seed + 1, exp.env, cache, tick, ev.jobs)
                          if (run / "evaluations.npz").is_file() else [])
    except (_FinalEvalStopped, Interrupted) as exc:
        # Interrupted: the evaluation's workers were stopped by the signal (sent to the
        # process group) before this process's own handler had set the flag.
        if isinstance(exc, Interrupted):
            request_stop(exc.signum)
        return out.stopped(f"the final evaluation of {run.name}", "the trained models", run)
    results = base + mine
    write_text_atomic(run / "eval_results.json",
                      json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    summaries = summarize(results, n_boot=ev.n_boot)
    paired = {(p, h): paired_difference_ci(results, p, h, n_boot=ev.n_boot)
              for p in learned for h in labels}
    # eval_seconds: every policy on the held-out suite; curve_seconds: the baselines'
    # validation episodes that the learning-curve plot draws as reference lines.
    state = run.write_state(eval_seconds=held_out_seconds,
                            curve_seconds=time.perf_counter() - t0 - held_out_seconds)
    plot_learning_curve(run, curve_base, exp.algo, f"{run.name}")
    plot_cost_terms(run / "cost_terms.png", summaries, exp.env)
    write_text_atomic(run / "report.md",
                      run_report(run, cfg, summaries, paired, results, state))
    print_tables(out.console, summaries, paired, title=f"{run.name}: held-out evaluation")
    run.write_state(status="finished")
    out.echo(f"{out.label}report: {run / 'report.md'}")
    return 0

