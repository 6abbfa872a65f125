"""Running episodes: one seeded episode, many of them, and the one worker pool.

:func:`run_episode` plays one deterministic episode of any policy
(:class:`~ptreclaim.agents.loading.Policy`) seeded by :func:`episode_seed`, so
every policy meets the same episodes.  :func:`run_policies` plays every
policy on every scenario in this process (a trained model's episodes in lockstep,
each the same as alone).  :class:`WorkerPool` is how every
command runs work in parallel (evaluation and export episodes, tuning
trials' episodes, the seeds of a multi-seed training run): tasks go to
``jobs`` spawned worker processes, each holding a context built once (the
policies themselves may not pickle, their specs do); results come back in
task order, so they do not depend on ``jobs``.

Stopping (:mod:`ptreclaim.agents.interrupts`): when the main process is
interrupted the pool hands out no more tasks, closes the task pipes and sends
SIGTERM to its workers, waits up to ``grace`` seconds (a training worker
saves a checkpoint in that time; an episode worker just dies), then kills
what is left.  Workers ignore SIGINT (the terminal sends it to the whole
process group; the main process decides), and get SIGTERM from the kernel if
the main process dies without stopping them.

Why not :mod:`multiprocessing.pool` or :mod:`concurrent.futures`: on Python
3.11 a ``ProcessPoolExecutor`` cannot stop a running task, ``Pool.terminate``
can hang on a queue lock a killed worker held, and both share semaphores
that the resource tracker reports as leaked when the main process is killed.
Here each worker has a pipe of its own and nothing else is shared.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

import numpy as np

from ..envs.features import hold_price
from ..envs.pagetable_env import COST_TERMS, EnvConfig, PageTableReclaimEnv
from ..envs.sim.simulator import ScenarioConfig, Simulation
from . import interrupts
from .interrupts import die_with_parent, signals_received
from .results import EpisodeResult


def episode_seed(base_seed: int, scenario_index: int, episode: int) -> int:
    """The seed of one episode: the same for every policy."""
    return int(np.random.SeedSequence([base_seed, scenario_index, episode]).generate_state(1)[0])


def _fresh(policy: Any) -> Any:
    """A privileged policy for one episode.

    The oracle caches the episode's future keyed on ``id(env.sim)``; a new
    env's simulation can reuse a freed one's address, which would hand it the
    previous episode's future (and make results depend on episode order, so
    ``--jobs`` would change them).  A shallow copy with the cache cleared
    leaves the caller's instance untouched.
    """
    clone = copy.copy(policy)
    if hasattr(clone, "_sim_id"):
        clone._sim_id = -1
        clone._trace = {}
    return clone


def fit_action(action: Any, env: PageTableReclaimEnv) -> np.ndarray:
    """``action`` for ``env``'s action space: the fixed policies always emit the five
    components of the default space, an env without the hard-limit action
    (``EnvConfig.hard_limit_action`` false) takes the first four (the flag is dropped:
    that env cannot set a limit)."""
    a = np.asarray(action)
    n = len(env.action_space.nvec)
    return a[..., :n] if a.shape[-1:] and a.shape[-1] > n else a


def _timeline_record(step: int, info: dict[str, Any], recs: Sequence[Any], action: Any,
                     reward: float) -> dict[str, Any]:
    """One step of an episode's timeline (``recs``: the step's tick records)."""
    return {"step": step, "tick": info["tick"], "pt_bytes": info["pt_bytes"],
            "normal_free_pages": info["normal_free_pages"],
            "wmark_min": info["watermarks"][0], "wmark_low": info["watermarks"][1],
            "wmark_high": info["watermarks"][2], "psi_some_avg10": info["psi_some_avg10"],
            "failures": info["failures"], "oom_kills": len(info["oom_kills"]),
            "reclaim_freed": info["reclaim_freed"],
            "reclaim_scanned": sum(x.reclaim_scanned for x in recs),
            "action": [] if action is None else [int(a) for a in np.asarray(action).ravel()],
            "reward": reward}


class _Episode:
    """One deterministic episode being played (:func:`run_episode`): the env after its
    reset, and what the result counts, a decision at a time through :meth:`act`."""

    def __init__(self, policy: Any, scenario: ScenarioConfig, seed: int,
                 env_config: EnvConfig, name: str, episode: int,
                 timeline: list[dict[str, Any]] | None = None,
                 observations: list[np.ndarray] | None = None) -> None:
        pt_reclaim = scenario.pt_reclaim and bool(getattr(policy, "kernel_pt_reclaim", True))
        scen = scenario if pt_reclaim == scenario.pt_reclaim else dataclasses.replace(
            scenario, pt_reclaim=pt_reclaim)
        config = dataclasses.replace(env_config, max_steps=max(env_config.max_steps, 1))
        self.env = env = PageTableReclaimEnv([scen], config)
        if getattr(policy, "privileged", False):
            policy = _fresh(policy)
            policy.bind(env)
        self.policy = policy
        self.name, self.scenario, self.episode, self.seed = name, scenario.name, episode, seed
        self.weights = env_config.reward
        self.timeline, self.observations = timeline, observations
        self.obs, self.info = env.reset(seed=seed)
        self.terms = dict.fromkeys(COST_TERMS, 0.0)
        self.reward = 0.0
        self.steps = self.failures = self.kills = self.unwarned = 0
        self.peak = self.info["pt_bytes"]
        if timeline is not None:
            # Step 0: the state after reset's warm-up ticks (not charged to the episode).
            timeline.append(_timeline_record(0, self.info, [], None, 0.0))

    def act(self, action: Any) -> bool:
        """Play ``action`` (the decision on :attr:`obs`); True when the episode ended."""
        env, info = self.env, self.info
        if self.observations is not None:
            self.observations.append(np.array(self.obs, copy=True))
        action = fit_action(action, env)
        # Calm when the decision was made: free memory at or above the high watermark,
        # where holding a table costs nothing (the hold price is 0).
        wmin, _, whigh = info["watermarks"]
        calm = hold_price(info["normal_free_pages"], wmin, whigh) == 0.0
        tick = info["tick"]
        self.obs, r, terminated, truncated, info = env.step(action)
        self.info = info
        self.reward += r
        self.steps += 1
        for k, v in info["cost_terms"].items():
            self.terms[k] += v
        self.failures += info["failures"]
        self.unwarned += info["failures"] if calm else 0
        self.kills += len(info["oom_kills"])
        self.peak = max(self.peak, info["pt_bytes"])
        if self.timeline is not None:
            assert env.sim is not None
            self.timeline.append(_timeline_record(self.steps, info,
                                                  env.sim.history[tick:info["tick"]],
                                                  action, r))
        return bool(terminated or truncated)

    def result(self) -> EpisodeResult:
        weighted = {k: getattr(self.weights, k) * v for k, v in self.terms.items()}
        return EpisodeResult(self.name, self.scenario, self.episode, self.seed,
                             float(self.reward), self.terms, self.steps, self.failures,
                             self.kills, int(self.peak), weighted, self.unwarned)


def run_episode(policy: Any, scenario: ScenarioConfig, seed: int, env_config: EnvConfig,
                name: str, scenario_index: int = 0, episode: int = 0,
                timeline: list[dict[str, Any]] | None = None,
                observations: list[np.ndarray] | None = None) -> EpisodeResult:
    """Run one deterministic episode of ``policy`` on ``scenario``.

    A policy with ``kernel_pt_reclaim = False`` (``none``) runs on a kernel
    without the 6.14+ on-zap reclaim; every other policy runs on the
    scenario's own kernel (a scenario with ``pt_reclaim: false`` is a
    pre-6.14 machine for everyone).  A privileged policy (``oracle``) is bound
    to the env first.  With ``timeline``, per-step signals are appended to it
    (step 0 is the state after reset's warm-up ticks, which the episode's costs
    do not include).  With ``observations``, the observation of every decision
    is appended to it (a copy), in step order.
    """
    ep = _Episode(policy, scenario, seed, env_config, name, episode, timeline, observations)
    state = None
    start = np.ones((1,), dtype=bool)
    while True:
        action, state = ep.policy.predict(ep.obs, state=state, episode_start=start,
                                          deterministic=True)
        start = np.zeros((1,), dtype=bool)
        if ep.act(action):
            return ep.result()


#: Episodes one call of :func:`run_policies` plays at once for a policy that decides for
#: many observations in one call (``predict_rows``): enough that the network's per-call
#: overhead is spread thin; their simulations add ~0.3 GB to a process validating on the
#: training suite (docs/performance.md).  The results do not depend on it.
LOCKSTEP = 64


def run_policies(policies: Mapping[str, Any], scenarios: Sequence[ScenarioConfig],
                 episodes: int, seed: int, env_config: EnvConfig,
                 progress: Callable[[int, int], None] | None = None,
                 lockstep: int = LOCKSTEP) -> list[EpisodeResult]:
    """Every policy on every scenario for ``episodes`` seeded episodes each
    (episode ``k`` of scenario ``i``: ``episode_seed(seed, i, k)``), in this
    process; results in (policy, scenario, episode) order; ``progress(done, total)``
    after each episode.

    A policy with ``predict_rows`` (a trained PPO or A2C model,
    :meth:`~ptreclaim.agents.modelpolicy.ObsNormalizedPolicy.predict_rows`) plays up to
    ``lockstep`` of its episodes at once, one decision of each per call: each episode is
    the same as alone, bit for bit, since the rows decide as they would one at a time.
    Every other policy plays its episodes one after the other."""
    jobs = [(i, k) for i in range(len(scenarios)) for k in range(episodes)]
    total = len(jobs) * len(policies)
    out: list[EpisodeResult] = []
    ended = 0

    def tick() -> None:
        nonlocal ended
        ended += 1
        if progress is not None:
            progress(ended, total)

    for name, policy in policies.items():
        if not plays_in_lockstep(policy):
            for i, k in jobs:
                out.append(run_episode(policy, scenarios[i], episode_seed(seed, i, k),
                                       env_config, name, i, k))
                tick()
            continue
        width = max(lockstep, 1)
        for lo in range(0, len(jobs), width):
            out += run_lockstep(policy, name, scenarios, jobs[lo:lo + width], seed,
                                env_config, tick)
    return out


def plays_in_lockstep(policy: Any) -> bool:
    """Whether ``policy`` decides for many episodes in one call (``predict_rows``) and
    is not bound to one episode's simulation (the oracle is)."""
    return bool(getattr(policy, "predicts_rows", False)) and not getattr(policy, "privileged",
                                                                         False)


def run_lockstep(policy: Any, name: str, scenarios: Sequence[ScenarioConfig],
                 jobs: Sequence[tuple[int, int]], seed: int, env_config: EnvConfig,
                 tick: Callable[[], None] | None = None) -> list[EpisodeResult]:
    """The episodes ``jobs`` ((scenario index, episode) pairs, seeded by
    :func:`episode_seed`) of ``policy`` (:func:`plays_in_lockstep`), played together:
    one ``predict_rows`` call decides for every episode still running; ``tick()`` as each
    ends.  Results in ``jobs``' order, each the episode :func:`run_episode` plays."""
    eps: list[_Episode | None] = [
        _Episode(policy, scenarios[i], episode_seed(seed, i, k), env_config, name, k)
        for i, k in jobs]
    results: list[EpisodeResult | None] = [None] * len(eps)
    live = list(range(len(eps)))
    while live:
        rows = np.stack([eps[j].obs for j in live])  # type: ignore[union-attr]
        still = []
        for j, action in zip(live, policy.predict_rows(rows), strict=True):
            ep = eps[j]
            assert ep is not None
            if ep.act(action):
                results[j] = ep.result()
                eps[j] = None  # its simulation goes now, not with the chunk
                if tick is not None:
                    tick()
            else:
                still.append(j)
        live = still
    return [r for r in results if r is not None]


def policy_driver(policy: Any, scenario: ScenarioConfig, env_config: EnvConfig | None = None
                  ) -> tuple[Callable[[Simulation], None], ScenarioConfig]:
    """A per-tick driver (:func:`ptreclaim.envs.simulate.run_driven`) that runs
    ``policy`` through the env's observation and action: every
    ``decision_ticks`` ticks it observes, predicts and applies one action.
    Returns the driver and the scenario to run (``none``-like policies run
    on a pre-6.14 kernel, as in :func:`run_episode`)."""
    env_config = env_config or EnvConfig()
    if not getattr(policy, "kernel_pt_reclaim", True):
        scenario = dataclasses.replace(scenario, pt_reclaim=False)
    env = PageTableReclaimEnv([scenario], env_config)
    seen = [0]

    def act(sim: Simulation) -> None:
        if env.sim is not sim:
            env.attach(sim)
            if getattr(policy, "privileged", False):
                policy.bind(env)
        if sim.tick_no % env_config.decision_ticks:
            return
        recs = sim.history[seen[0]:]
        seen[0] = len(sim.history)
        action, _ = policy.predict(env.observe(recs), deterministic=True)
        env.apply_action(fit_action(action, env))

    return act, scenario


# ------------------------------------------------------------------ the worker pool

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")


class WorkerError(RuntimeError):
    """A worker process failed outside its task (it died, or its context
    could not be built and the error did not pickle)."""


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles, else a :class:`WorkerError` with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc)).strip()
        return WorkerError(f"in a worker process: {text}")
    return exc


def _send(conn: Connection, msg: Any) -> bool:
    try:
        conn.send(msg)
    except (OSError, EOFError):  # the main process stopped listening: exit quietly
        return False
    return True


def _worker_main(conn: Connection, parent: int, make_context: Callable[..., Any],
                 context_args: tuple[Any, ...], run_task: Callable[[Any, Any], Any]) -> None:
    """A worker: build the context once, then run tasks until the pipe closes."""
    # The terminal's Ctrl-C reaches the whole process group; the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    try:
        ctx = make_context(*context_args)
    except BaseException as exc:
        _send(conn, ("error", -1, _portable(exc)))
        return
    if not _send(conn, ("ready", -1, None)):
        return
    while True:
        try:
            msg = conn.recv()
        except (OSError, EOFError):
            return
        index, task = msg
        try:
            result = run_task(ctx, task)
        except BaseException as exc:
            if not _send(conn, ("error", index, _portable(exc))):
                return
            continue
        if not _send(conn, ("ok", index, result)):
            return


class WorkerPool(Generic[C, T, R]):
    """``run_task(context, task)`` for many tasks, in ``jobs`` worker
    processes (or in this process when ``jobs`` is 1).

    Each worker builds its context once with ``make_context(*context_args)``
    (module-level functions and picklable arguments: workers are spawned).
    The pool lives until :meth:`close` (or the end of a ``with`` block), so
    a caller with many small batches (tuning trials) pays the start-up once.
    An exception in a task is raised in the caller; an interrupt stops the
    workers (:meth:`terminate`).
    """

    def __init__(self, jobs: int, make_context: Callable[..., C], context_args: tuple[Any, ...],
                 run_task: Callable[[C, T], R], *, grace: float = 5.0) -> None:
        self.jobs = jobs
        self.make_context = make_context
        self.context_args = context_args
        self.run_task = run_task
        self.grace = grace
        self._local: C | None = None
        self._procs: list[Any] = []
        self._conns: dict[Connection, Any] = {}  # connection -> its process
        self._ready: list[Connection] = []
        self._starting: set[Connection] = set()

    def __enter__(self) -> WorkerPool[C, T, R]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def map(self, tasks: Sequence[T],
            on_result: Callable[[int, R, int], None] | None = None) -> list[R]:
        """The results of ``tasks``, in task order (tasks start in that order).
        ``on_result(index, result, done)`` is called as each one arrives."""
        if self.jobs <= 1:
            if self._local is None:
                self._local = self.make_context(*self.context_args)
            out = []
            for i, task in enumerate(tasks):
                out.append(self.run_task(self._local, task))
                if on_result is not None:
                    on_result(i, out[-1], i + 1)
            return out
        try:
            return self._map(tasks, on_result)
        except BaseException:
            self.terminate()
            raise

    def _start(self) -> None:
        mp = multiprocessing.get_context("spawn")
        for _ in range(self.jobs - len(self._procs)):
            mine, theirs = mp.Pipe(duplex=True)
            proc = mp.Process(target=_worker_main, daemon=True,
                              args=(theirs, os.getpid(), self.make_context, self.context_args,
                                    self.run_task))
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns[mine] = proc
            self._starting.add(mine)

    def _map(self, tasks: Sequence[T],
             on_result: Callable[[int, R, int], None] | None) -> list[R]:
        if not self._procs:
            self._start()
        pending = deque(enumerate(tasks))
        results: list[Any] = [None] * len(tasks)
        busy: set[Connection] = set()
        done = 0
        while done < len(tasks):
            while pending and self._ready:
                conn = self._ready.pop()
                if not _send(conn, pending[0]):
                    raise self._died(conn)
                pending.popleft()
                busy.add(conn)
            for ready in wait([*busy, *self._starting]):
                assert isinstance(ready, Connection)
                conn = ready
                try:
                    kind, index, value = conn.recv()
                except (OSError, EOFError):
                    raise self._died(conn) from None
                if kind == "error":
                    raise value
                self._starting.discard(conn)
                busy.discard(conn)
                self._ready.append(conn)
                if kind == "ok":
                    results[index] = value
                    done += 1
                    if on_result is not None:
                        on_result(index, value, done)
        return results

    def _died(self, conn: Connection) -> BaseException:
        """The error for a worker that died: :class:`~.interrupts.Interrupted` when this
        process was asked to stop or the worker was stopped by SIGINT or SIGTERM (a
        signal to the process group reaches the workers too: ``timeout``, systemd, a
        shell's job control), else :class:`WorkerError`."""
        proc = self._conns[conn]
        proc.join(1.0)
        code = proc.exitcode
        signum = interrupts.stop_requested() or (
            -code if code is not None and -code in interrupts.STOP_SIGNALS else 0)
        if signum:
            return interrupts.Interrupted(signum)
        return WorkerError(f"a worker process (pid {proc.pid}) died (exit code {code})")

    def close(self) -> None:
        """Let the workers finish: close their pipes (they exit when idle),
        wait ``grace`` seconds, then stop what is left (:meth:`terminate`)."""
        for conn in self._conns:
            conn.close()
        deadline = time.monotonic() + self.grace
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.terminate()

    def terminate(self) -> None:
        """Stop the workers now: close their pipes, send SIGTERM, wait up to
        ``grace`` seconds (less if a second interrupt arrives), then SIGKILL."""
        for conn in self._conns:
            conn.close()
        alive = [p for p in self._procs if p.is_alive()]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + self.grace
        seen = signals_received()
        while any(p.is_alive() for p in alive) and time.monotonic() < deadline:
            if signals_received() > max(seen, 1):
                break  # asked again: do not wait for checkpoints any longer
            time.sleep(0.02)
        for proc in alive:
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
        for proc in self._procs:
            proc.close()
        self._procs = []
        self._conns = {}
        self._ready = []
        self._starting = set()
