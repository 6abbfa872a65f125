"""Benchmark the env: the compiled core against the Python reference, and what the env costs
PPO training.

Prints, from one run, measured side by side (rounds interleaved, so machine noise hits
every measure alike; medians of the rounds):

1. decision steps per second of the default id under random actions, on the compiled core
   (``backend: fast``) and on the Python reference (``exact``);
2. microseconds per decision of every shipped scenario on both backends;
3. SB3 PPO training steps per second (4 envs, one torch thread) on the default env with the
   batched vector env (``FastVecEnv``, what training uses), on the default env with SB3's
   ``DummyVecEnv``, and on a null env of identical spaces in a ``DummyVecEnv``; the ratio
   batched/null is the issue-13 goal (>= 0.8); then the same ratio with the default
   experiment's own settings (:func:`default_ppo_steps_per_s`): its 8 envs and one cheap
   epoch per update make the learner's share of a step smaller, so the env's larger.
   Both again with ``env_threads: 2`` (the batched env's envs stepped on this thread and
   one helper at once, the second core otherwise idle), in wall-clock time against the
   null env's wall-clock time, and with the CPU time that costs.
   These run in ``--ppo-rounds`` paired rounds; in each, models train in turns of one
   PPO update each (:func:`interleaved_rates`), so the machine's drift hits them alike:
   the goal's pair (null env, batched env) on its own, then the ``DummyVecEnv`` and
   helper-thread envs with a null env of their own, then the default experiment's
   three.  The ratio is taken per round, then its median, with a distribution-free
   confidence interval of the median (:func:`median_ci`): the goal is said to be met or
   missed only when that interval lies on one side of 0.8 (:func:`goal_verdict`);
4. step time with a 1 GiB vs a 112 TiB sparse page-table hog, the largest mapping a
   workload can make (user space ends at 128 TiB and workloads map from 16 TiB): the cost
   of an op follows the tables it touches, never the mapped size.

``--parts`` measures only the env's share of PPO, split (see :func:`env_parts`).
``--ratio`` measures only the goal's ratio (the goal's pair of 3.), in more rounds
(default 25): its interval is narrower than the full run's 9 rounds give, on a machine
whose noise is as wide as the distance to 0.8 (see :func:`goal_ratio`).

Times are CPU seconds of this process (``time.process_time``): on a shared 2-core machine
they move far less with other load than wall-clock time, and every other measure here is
single-threaded (OpenBLAS is pinned to one thread below), so CPU time is its wall-clock
time.  The helper-thread rows are the exception and say so: there CPU time counts both
threads, and what the user waits for is wall-clock time.

Reproduce: ``.venv/bin/python benchmarks/bench_env.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import ptreclaim  # noqa: F401  (registers the env ids)
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario, load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim.machine import MachineConfig
from ptreclaim.envs.sim.pagetable import TASK_SIZE
from ptreclaim.envs.sim.simulator import ScenarioConfig, WorkloadSpec
from ptreclaim.envs.sim.workloads.base import BASE

#: Decisions of the hog comparison: 40 decisions of 10 ticks stay below the 512 tables a
#: 1 GiB mapping holds, so both sizes do the same work.
HOG_STEPS = 40
#: Vector steps of random actions that bring the batched env to a steady state before the
#: bare-loop measures (here, ``bench_interference.py`` and ``bench_cache.py``).
WARMUP = 300
#: The largest hog mapping: everything from the workloads' base to the end of user space.
HUGE_GIB = (TASK_SIZE - BASE) >> 30


class NullEnv(gym.Env[np.ndarray, np.ndarray]):
    """Same spaces as the real env, no work: the cost of the learner alone."""

    def __init__(self, like: gym.Env[Any, Any], max_steps: int) -> None:
        self.observation_space = like.observation_space
        self.action_space = like.action_space
        shape = like.observation_space.shape
        assert shape is not None
        self._obs: np.ndarray = np.zeros(shape, dtype=np.float32)
        self._t = 0
        self._max = max_steps

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs, 0.0, False, self._t >= self._max, {}


def us_per_step(env: gym.Env[Any, Any], steps: int, seed: int) -> float:
    """CPU microseconds per decision under seeded random actions (resets included)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    t0 = time.process_time()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return (time.process_time() - t0) / steps * 1e6


def ppo_model(make_venv: Callable[[], Any], seed: int) -> Any:
    """PPO (4 epochs of 128-step minibatches, one torch thread) on ``make_venv()``."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    return PPO("MlpPolicy", make_venv(), n_steps=128, batch_size=128, n_epochs=4, seed=seed,
               verbose=0, device="cpu")


@functools.cache
def _default_setup() -> tuple[Any, str, dict[str, Any], list[ScenarioConfig]]:
    """The default experiment, its PPO policy name and arguments and its training
    scenarios, loaded once for every round."""
    from ptreclaim.agents.training.config import load_experiment, resolve_scenarios
    from ptreclaim.agents.training.hyperparams import load_hyperparams, materialize

    exp = load_experiment(None)[0]
    policy, kwargs = materialize(exp.algo, load_hyperparams(exp))
    return exp, policy, kwargs, resolve_scenarios(exp).train


def default_ppo_model(null: bool, seed: int, env_threads: int = 1) -> Any:
    """PPO as the default experiment trains (its ``n_envs``, PPO settings and network,
    ``VecNormalize``; no callbacks), on its training env (``null`` False: ``make_vec_env``,
    the batched env, with ``env_threads``) or on null envs of the same spaces."""
    import dataclasses

    import torch
    from stable_baselines3 import PPO

    from ptreclaim.agents.training.vecenv import make_vec_env, normalized

    torch.set_num_threads(1)
    exp, policy, kwargs, train = _default_setup()
    exp = dataclasses.replace(exp, env_threads=env_threads)
    gamma = float(kwargs.get("gamma", 0.99))
    venv = (normalized(exp, null_venv(PageTableReclaimEnv(train, exp.env), exp.n_envs), gamma)
            if null else make_vec_env(exp, train, seed, gamma))
    return PPO(policy, venv, seed=seed, device="cpu", verbose=0, **kwargs)


def ppo_turns(model: Any, steps: int) -> Generator[int, None, None]:
    """``model.learn(steps)`` one update at a time: each ``next()`` collects one rollout
    (``n_steps`` x ``n_envs`` steps), logs and trains on it as SB3's
    ``OnPolicyAlgorithm.learn`` does, and yields the steps it took.  The schedules (a
    ``lin_`` learning rate, the clip range) see the progress through all ``steps``, as in
    one ``learn`` call; a ``learn`` per update would end each at progress 0.  The logger
    writes nowhere (SB3's default makes a ``/tmp/SB3-*`` folder per ``learn``).  Closes the
    model's env when done."""
    from stable_baselines3.common.logger import Logger

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    model.set_logger(Logger(folder=None, output_formats=[]))
    try:
        total, callback = model._setup_learn(steps, None, True, "turns", False)
        callback.on_training_start(locals(), globals())
        iteration = 0
        while model.num_timesteps < total:
            before = model.num_timesteps
            if not model.collect_rollouts(model.env, callback, model.rollout_buffer,
                                          n_rollout_steps=model.n_steps):
                break
            iteration += 1
            model._update_current_progress_remaining(model.num_timesteps, total)
            model.dump_logs(iteration)
            model.train()
            yield model.num_timesteps - before
        callback.on_training_end()
    finally:
        model.get_env().close()


def interleaved_rates(turns: dict[str, Generator[int, None, None]], freeze_gc: bool = False
                      ) -> dict[str, tuple[float, float]]:
    """Run every model's turns (:func:`ppo_turns`) in turn, the order reversed at every
    round of turns (A B C, C B A, A B C, ...), until all are done; per key, the steps per
    CPU second and per wall-clock second of its own turns.  This VM's speed drifts by tens
    of percent within seconds, so measures taken one after the other, a few seconds each,
    differ by the drift as much as by what they measure: in turns of one update (0.2 s or
    less), a drift hits every model alike.  After each turn, untimed, a pause lets a vector
    env's helper threads stop polling (``StepThreads``: 2 ms; the default experiment's
    update can be shorter than that), so their CPU time is not billed to the next model.
    ``freeze_gc``: the garbage collector frozen throughout, as ``agents/training/loop.py``
    freezes it before ``learn``.  Every model's turns are closed at the end, also when one
    fails (a started :func:`ppo_turns` then closes its env)."""
    import gc

    done = dict.fromkeys(turns, 0)
    cpu = dict.fromkeys(turns, 0.0)
    wall = dict.fromkeys(turns, 0.0)
    live = list(turns)
    if freeze_gc:
        gc.collect()
        gc.freeze()
    try:
        while live:
            ended = []
            for key in live:
                t0, w0 = time.process_time(), time.perf_counter()
                n = next(turns[key], None)
                if n is None:  # its last call only ends the training and closes the env
                    ended.append(key)
                    continue
                cpu[key] += time.process_time() - t0
                wall[key] += time.perf_counter() - w0
                done[key] += n
                time.sleep(0.005)
            # The next round of turns in the opposite order.
            live = [key for key in reversed(live) if key not in ended]
    finally:
        if freeze_gc:
            gc.unfreeze()
        for gen in turns.values():
            gen.close()
    return {key: (done[key] / cpu[key], done[key] / wall[key]) for key in turns}


def batched_venv(train: list[ScenarioConfig], n_envs: int, seed: int, threads: int = 1) -> Any:
    """The default env's batched vector env (``vec_env: batched``), seeded, stepped on
    ``threads`` threads."""
    from ptreclaim.agents.training.fastvec import FastVecEnv

    v = FastVecEnv([PageTableReclaimEnv(train, EnvConfig()) for _ in range(n_envs)],
                   threads=threads)
    v.seed(seed)
    return v


def null_venv(like: PageTableReclaimEnv, n_envs: int) -> Any:
    """``n_envs`` null envs of ``like``'s spaces in SB3's ``DummyVecEnv``."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: NullEnv(like, EnvConfig().max_steps) for _ in range(n_envs)])


def env_parts(train: list[ScenarioConfig], steps: int, rounds: int, seed: int,
              console: Console) -> None:
    """The env's share of a PPO step, split: PPO (4 envs, one torch thread) on the null env
    and on the batched env, in turns (:func:`interleaved_rates`), with the CPU time spent
    per env step in each vector env's ``step_async`` + ``step_wait`` and, for the batched
    env, within them in the compiled steps (``_fast.step_batch``), in
    ``PageTableReclaimEnv.reset`` and, within it, in building the simulation
    (``_make_sim``). What is left of a PPO step is the
    learner's (rollout and update); the learner's time beside the real env minus beside
    the null env is what the env's memory traffic costs the learner. Then the bare batched
    loop (seeded random actions, after 300 vector steps of warm-up), and the same steps
    from the same state with a policy forward pass before each (:func:`steps_after`,
    :func:`policy_forward`). Runs on any checkout that has the batched env, so one copy of
    this script measures two builds side by side."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ptreclaim.agents.training import fastvec
    from ptreclaim.agents.training.fastvec import FastVecEnv

    spent: dict[str, float] = {}

    def timed(owner: Any, name: str, key: str, method: bool = True) -> None:
        inner = getattr(owner, name)

        def clocked(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.process_time() - t0

        setattr(owner, name, clocked)

    timed(FastVecEnv, "step_wait", "vec")
    timed(FastVecEnv, "step_async", "vec")
    timed(DummyVecEnv, "step_wait", "vec_null")
    timed(DummyVecEnv, "step_async", "vec_null")
    timed(fastvec, "step_batch", "compiled")
    timed(PageTableReclaimEnv, "reset", "reset")
    timed(PageTableReclaimEnv, "_make_sim", "make_sim")
    like = PageTableReclaimEnv(train, EnvConfig())

    def batched() -> Any:
        return batched_venv(train, 4, seed)

    for k in range(rounds):
        spent.clear()
        rates = interleaved_rates(goal_pair(train, like, 4, seed + k, seed, steps))
        rate_null, rate = rates["ppo_null"][0], rates["ppo_batched"][0]
        per = {name: t / steps * 1e6 for name, t in spent.items()}
        null_vec = per.get("vec_null", 0.0)
        vec, compiled, reset = per.get("vec", 0.0), per.get("compiled", 0.0), per.get("reset", 0.0)
        learner, learner_null = 1e6 / rate - vec, 1e6 / rate_null - null_vec
        v = batched()
        acts = random_actions(v, WARMUP + 2000, seed + k)
        bare = steps_after(v, warmed(v, acts[:WARMUP]), acts[WARMUP:], None)
        # The same steps again on a second vector env of the same seed, warmed up alike.
        v2 = batched()
        obs = warmed(v2, acts[:WARMUP])
        forward = steps_after(v2, obs, acts[WARMUP:], policy_forward(v2, seed + k))
        console.print(
            f"round {k}: PPO null {rate_null:,.0f} steps/s, batched {rate:,.0f} (ratio "
            f"{rate / rate_null:.3f}; the env adds {1e6 / rate - 1e6 / rate_null:.1f} µs per "
            f"step); per env step in PPO: step_wait {vec:.1f} µs, reset {reset:.1f} µs "
            f"(building the simulation {per.get('make_sim', 0.0):.1f}); bare batched loop "
            f"{bare:.1f} µs per env step, {forward:.1f} with a policy forward before each step")
        console.print(
            f"  the env's share, split (µs per env step in PPO): compiled steps "
            f"{compiled:.1f}, resets {reset:.1f}, the vector env's Python "
            f"{vec - compiled - reset:.1f} (the null env's {null_vec:.1f}); the learner "
            f"{learner:.1f} beside the env against {learner_null:.1f} beside the null env "
            f"({learner - learner_null:+.1f})")


def random_actions(venv: Any, n: int, seed: int) -> list[np.ndarray]:
    """``n`` seeded random vector actions for ``venv`` (one row per env)."""
    rng = np.random.default_rng(seed)
    nvec = venv.action_space.nvec
    return [rng.integers(0, nvec, size=(venv.num_envs, len(nvec))) for _ in range(n)]


def warmed(venv: Any, actions: list[np.ndarray]) -> np.ndarray:
    """Reset ``venv`` and step it through ``actions``; its last observations."""
    obs: np.ndarray = venv.reset()
    for a in actions:
        venv.step_async(a)
        obs = venv.step_wait()[0]
    return obs


def steps_after(venv: Any, obs: np.ndarray, actions: list[np.ndarray],
                before: Callable[[np.ndarray], None] | None) -> float:
    """CPU µs per env step of ``venv``'s steps alone under ``actions`` (from observations
    ``obs``), each vector step after ``before(last observations)``, untimed: the same work
    as the bare loop, slowed by whatever ``before`` evicts."""
    spent = 0.0
    for a in actions:
        if before is not None:
            before(obs)
        t0 = time.process_time()
        venv.step_async(a)
        obs = venv.step_wait()[0]
        spent += time.process_time() - t0
    return spent / (len(actions) * venv.num_envs) * 1e6


def policy_forward(venv: Any, seed: int) -> Callable[[np.ndarray], None]:
    """A forward pass of an untrained PPO policy on ``venv``'s spaces (one torch thread),
    as PPO's rollout makes before every vector step; its actions are not used, so the
    steps after it are the bare loop's."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    policy = PPO("MlpPolicy", venv, seed=seed, device="cpu").policy

    def run(obs: np.ndarray) -> None:
        with torch.no_grad():
            policy(torch.as_tensor(obs))

    return run


def hog_scenario(size_gib: int) -> ScenarioConfig:
    """One write hog, slow enough (1 table per tick) that the 1 GiB one does not wrap
    around within the measured steps: both do the same work, only the mapped size
    differs."""
    return ScenarioConfig(name=f"hog-{size_gib}", machine=MachineConfig(ram_mib=4096),
                          workloads=(WorkloadSpec("hog", {"variant": "write",
                                                          "size_gib": size_gib,
                                                          "tables_per_tick": 1}),),
                          ticks=10_000, jitter=0.0)


def goal_pair(train: list[ScenarioConfig], like: PageTableReclaimEnv, n_envs: int, seed: int,
              env_seed: int, steps: int) -> dict[str, Generator[int, None, None]]:
    """The goal's pair, to train in turns: PPO (``seed``) on ``n_envs`` null envs of
    ``like``'s spaces (``ppo_null``) and on the batched default env seeded ``env_seed``
    (``ppo_batched``), ``steps`` each.  The models are made now: the full run calls this
    when the group's turns start."""
    return {"ppo_null": ppo_turns(ppo_model(lambda: null_venv(like, n_envs), seed), steps),
            "ppo_batched": ppo_turns(ppo_model(lambda: batched_venv(train, n_envs, env_seed),
                                               seed), steps)}


def ratio_line(per: list[float], n_envs: int) -> str:
    """The goal's ratio from its per-round ratios: the median, its confidence interval
    (:func:`median_ci`) and the verdict (:func:`goal_verdict`)."""
    ratio, low, high, conf = median_ci(per)
    return (f"training-speed ratio batched env / null env ({n_envs} envs, one torch "
            f"thread) = {ratio:.3f}, median of {len(per)} paired rounds, {conf:.0%} "
            f"CI of the median [{low:.3f}, {high:.3f}]: "
            f"{goal_verdict(low, high, 0.8, conf)} the goal >= 0.8")


def goal_ratio(train: list[ScenarioConfig], n_envs: int, rounds: int, steps: int, seed: int,
               console: Console) -> list[float]:
    """Only the goal's ratio (``--ratio``): the goal's pair (:func:`goal_pair`) in turns
    (:func:`interleaved_rates`), ``rounds`` rounds of ``steps`` steps, the models' seeds
    ``seed``, ``seed + 1``, ... and the env's ``seed``, as in the full run; prints each
    round's rates and ratio (CPU time), then :func:`ratio_line`.  On this project's 2-core
    VMs one round's ratio moves by ±0.05 and 9 rounds give an interval 0.07-0.11 wide; 25
    gave 0.03-0.04, in ~3.5 minutes.  Returns the per-round ratios."""
    like = PageTableReclaimEnv(train, EnvConfig(backend="fast"))
    per: list[float] = []
    for k in range(rounds):
        rates = interleaved_rates(goal_pair(train, like, n_envs, seed + k, seed, steps))
        null, batched = rates["ppo_null"][0], rates["ppo_batched"][0]
        per.append(batched / null)
        console.print(f"round {k}: PPO null {null:,.0f} steps/s, batched {batched:,.0f} "
                      f"(ratio {per[-1]:.3f})")
    console.print(ratio_line(per, n_envs))
    return per


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for it: the
    order statistics x(k) and x(n+1-k), with k the largest for which 2 P(B <= k-1) <=
    1 - ``level``, B ~ Binomial(n, 1/2) (at least 1: with too few values, the range);
    returns (median, low, high, the interval's own confidence)."""
    from scipy.stats import binom

    xs = sorted(values)
    n = len(xs)
    k = 1
    while k + 1 <= n // 2 and 2 * binom.cdf(k, n, 0.5) <= 1 - level:
        k += 1
    return statistics.median(xs), xs[k - 1], xs[n - k], float(1 - 2 * binom.cdf(k - 1, n, 0.5))


def goal_verdict(low: float, high: float, goal: float, conf: float = 1.0,
                 level: float = 0.95) -> str:
    """Whether an interval [low, high] of confidence ``conf`` meets a goal ``>= goal``:
    only when all of it does, misses it only when none of it does, else the run cannot
    tell; nor can it with an interval less sure than ``level`` (too few rounds)."""
    if conf < level:
        return f"too few rounds ({conf:.0%} < {level:.0%} sure) to tell whether it meets"
    if low >= goal:
        return "meets"
    if high < goal:
        return "misses"
    return "cannot tell, within this run's noise, whether it meets"


def _median_table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=escape(title))  # "[range]" is text, not rich markup
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", action="store_true",
                    help="only the env's share of PPO, split (compiled steps, resets, the "
                         "vector env's Python, the learner's slowdown; the bare loop)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds of every measure but PPO's (default 3, 1 with --quick; "
                         "not with --ratio)")
    ap.add_argument("--ratio", action="store_true",
                    help="only the goal's PPO ratio (null env against the batched env, 4 "
                         "envs, one torch thread, in turns), in --ppo-rounds rounds "
                         "(default 25, 2 with --quick): a narrower interval than the full "
                         "run's 9 rounds")
    ap.add_argument("--ppo-rounds", type=int, default=0,
                    help="paired rounds of the PPO measures (default 9, 1 with --quick; "
                         "with --ratio 25, 2 with --quick)")
    args = ap.parse_args(argv)
    if args.parts and args.ratio:
        ap.error("--parts and --ratio measure different things: give one of them")
    if args.ratio and args.rounds:
        ap.error("--rounds sets measures that --ratio does not run; its rounds are "
                 "--ppo-rounds")
    for flag, value in (("--rounds", args.rounds), ("--ppo-rounds", args.ppo_rounds)):
        if value < 0:
            ap.error(f"{flag} {value}: must not be negative (0 or absent: the default)")
    console = Console()
    console.print(f"python {platform.python_version()}, {platform.platform()}, "
                  f"{os.cpu_count()} CPUs; reproduce: {' '.join([sys.executable, *sys.argv])}")
    rounds = args.rounds or (1 if args.quick else 3)
    if args.ratio:
        ppo_rounds = args.ppo_rounds or (2 if args.quick else 25)
    else:
        ppo_rounds = args.ppo_rounds or (1 if args.quick else 9)
    fast_steps = 300 if args.quick else 4000
    exact_steps = 40 if args.quick else 400
    scen_fast = 120 if args.quick else 1200
    scen_exact = 20 if args.quick else 240
    ppo_steps = 1024 if args.quick else 8192
    n_envs = 4

    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    if args.parts:
        env_parts(train, 2048 if args.quick else 16384, rounds, args.seed, console)
        return 0
    if args.ratio:
        goal_ratio(train, n_envs, ppo_rounds, ppo_steps, args.seed, console)
        return 0
    fast_env = PageTableReclaimEnv(train, EnvConfig(backend="fast"))
    exact_env = PageTableReclaimEnv(train, EnvConfig(backend="exact"))
    paths = sorted((CONFIG_DIR / "scenarios").glob("*.yaml"))
    scen = {p.stem: load_scenario(p) for p in paths}

    def threaded() -> Any:
        return batched_venv(train, n_envs, args.seed, threads=2)

    def dummy() -> Any:
        from stable_baselines3.common.monitor import Monitor
        from stable_baselines3.common.vec_env import DummyVecEnv

        v = DummyVecEnv([lambda: Monitor(PageTableReclaimEnv(train, EnvConfig()))
                         for _ in range(n_envs)])
        v.seed(args.seed)
        return v

    def null() -> Any:
        return null_venv(fast_env, n_envs)

    r: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        r.setdefault(key, []).append(value)

    for k in range(rounds):
        seed = args.seed + k
        add("fast", us_per_step(fast_env, fast_steps, seed))
        add("exact", us_per_step(exact_env, exact_steps, seed))
        for name, sc in scen.items():
            add(f"fast:{name}", us_per_step(PageTableReclaimEnv([sc], EnvConfig(backend="fast")),
                                            scen_fast, seed))
            add(f"exact:{name}", us_per_step(
                PageTableReclaimEnv([sc], EnvConfig(backend="exact")), scen_exact, seed))
        for size in (1, HUGE_GIB):
            env = PageTableReclaimEnv([hog_scenario(size)],
                                      EnvConfig(max_steps=10**6, backend="fast"))
            add(f"hog:{size}", us_per_step(env, HOG_STEPS, seed))
    # PPO's speed on this machine drifts by tens of percent within seconds, so each round
    # trains the null env's model and the real envs' models in turns of one update each
    # (interleaved_rates): a drift hits every model alike, and the ratios are taken per
    # round, then summarised (median and range).
    def ppo_groups(seed: int) -> Iterator[tuple[dict[str, Generator[int, None, None]], bool]]:
        """The goal's pair in turns of its own, then the other vector envs with a null env
        of their own, then the default experiment's settings (the collector frozen); each
        group's models are made when its turns start."""
        yield goal_pair(train, fast_env, n_envs, seed, args.seed, ppo_steps), False
        yield {"other_null": ppo_turns(ppo_model(null, seed), ppo_steps),
               "ppo_dummy": ppo_turns(ppo_model(dummy, seed), ppo_steps),
               "ppo_threads": ppo_turns(ppo_model(threaded, seed), ppo_steps)}, False
        yield {"default_null": ppo_turns(default_ppo_model(True, seed), ppo_steps),
               "default_batched": ppo_turns(default_ppo_model(False, seed), ppo_steps),
               "default_threads": ppo_turns(default_ppo_model(False, seed, 2), ppo_steps)}, True

    for k in range(ppo_rounds):
        for group, freeze in ppo_groups(args.seed + k):
            for key, rates in interleaved_rates(group, freeze).items():
                add(key, rates[0])
                add(f"{key}:wall", rates[1])
    med = {key: statistics.median(v) for key, v in r.items()}

    t = _median_table(f"default env (training suite), random actions: median of {rounds} "
                      "rounds, CPU time", ("backend", "steps/s", "µs/decision"))
    for key in ("fast", "exact"):
        t.add_row(key, f"{1e6 / med[key]:,.0f}", f"{med[key]:,.0f}")
    console.print(t)
    console.print(f"compiled / reference speed-up: {med['exact'] / med['fast']:.1f}x; "
                  f"goal >= 5,000 steps/s: {'met' if 1e6 / med['fast'] >= 5000 else 'missed'}")

    t = _median_table("every shipped scenario, random actions (µs per decision of 10 ticks)",
                      ("scenario", "fast", "exact", "speed-up"))
    worst = 0.0
    for name in scen:
        f, e = med[f"fast:{name}"], med[f"exact:{name}"]
        worst = max(worst, f)
        t.add_row(name, f"{f:,.0f}", f"{e:,.0f}", f"{e / f:.0f}x")
    console.print(t)
    console.print(f"slowest scenario on the compiled core: {worst:,.0f} µs per decision "
                  f"(goal <= 500: {'met' if worst <= 500 else 'missed'})")

    t = _median_table(f"PPO training, steps/s and the ratio to the null env trained in turns "
                      f"with it: median [range] of {ppo_rounds} paired rounds",
                      ("vector env", "steps/s", "µs/step", "ratio to null"))
    ratios, pers = {}, {}
    for key, null_key, label in (
            ("ppo_null", "ppo_null", f"null env, DummyVecEnv ({n_envs} envs, 4 epochs)"),
            ("ppo_batched", "ppo_null", "default env, batched (FastVecEnv)"),
            ("ppo_dummy", "other_null", "default env, DummyVecEnv + Monitor"),
            ("default_null", "default_null", "null env, the default experiment's settings"),
            ("default_batched", "default_null", "default env, the default experiment's "
                                                "settings")):
        per = pers[key] = [a / b for a, b in zip(r[key], r[null_key], strict=True)]
        ratios[key] = statistics.median(per)
        t.add_row(label, f"{med[key]:,.0f}", f"{1e6 / med[key]:,.0f}",
                  f"{ratios[key]:.2f} [{min(per):.2f}, {max(per):.2f}]")
    console.print(t)
    console.print(f"{ratio_line(pers['ppo_batched'], n_envs)}; with the default "
                  f"experiment's settings (8 envs, its PPO settings and network, "
                  f"VecNormalize, no callbacks) {ratios['default_batched']:.2f}")

    t = _median_table(f"the same with env_threads: 2 (a helper thread on the second core): "
                      f"wall-clock steps/s and the ratio to the null env's wall-clock rate, "
                      f"then the CPU time per step of both threads against one: median "
                      f"[range] of {ppo_rounds} paired rounds",
                      ("vector env", "steps/s (wall)", "ratio to null (wall)",
                       "CPU per step vs env_threads: 1"))
    # The CPU time per step against env_threads: 1 in the same round, each relative to the
    # null env it trained in turns with (the 4-env pair and the helper-thread env train in
    # different groups).
    for key, null_key, one_key, one_null, label in (
            ("ppo_threads", "other_null", "ppo_batched", "ppo_null",
             f"default env, batched ({n_envs} envs)"),
            ("default_threads", "default_null", "default_batched", "default_null",
             "default env, the default experiment's settings")):
        per = [a / b for a, b in zip(r[f"{key}:wall"], r[f"{null_key}:wall"], strict=True)]
        cpu = [(one / one_n) / (two / two_n) for one, one_n, two, two_n in
               zip(r[one_key], r[one_null], r[key], r[null_key], strict=True)]
        ratios[f"{key}:wall"] = statistics.median(per)
        t.add_row(label, f"{med[f'{key}:wall']:,.0f}",
                  f"{statistics.median(per):.2f} [{min(per):.2f}, {max(per):.2f}]",
                  f"{statistics.median(cpu):.2f}x [{min(cpu):.2f}, {max(cpu):.2f}]")
    console.print(t)
    console.print(f"with a helper thread: wall-clock ratio {ratios['ppo_threads:wall']:.2f} "
                  f"({n_envs} envs), {ratios['default_threads:wall']:.2f} (the default "
                  f"experiment's settings); it uses the second core, which the null env "
                  f"leaves idle, so the single-thread ratio above is the like-for-like one")

    big = med[f"hog:{HUGE_GIB}"]
    console.print(f"sparse write hog, µs per decision: 1 GiB {med['hog:1']:,.0f}, "
                  f"{HUGE_GIB >> 10} TiB {big:,.0f}; ratio {big / med['hog:1']:.2f} "
                  "(goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
