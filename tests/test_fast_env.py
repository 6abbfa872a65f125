"""The env on the compiled core gives the reference env's episodes, bit for bit (issue 13).

On every shipped scenario, three seeds each, under random actions and under every
heuristic, the two backends return identical observations (compared as bytes), rewards,
named cost terms, truncation flags and info dicts at every step; the offline oracle acts
identically on both; and the batched vector env trains the same PPO model as SB3's
``DummyVecEnv`` of ``Monitor``-wrapped envs, with its envs stepped on one thread or on
helper threads too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.agents.heuristics import HEURISTICS, make_heuristic
from ptreclaim.agents.oracle import OracleBound
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario, load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim.config import ConfigError

SCENARIOS = sorted((CONFIG_DIR / "scenarios").glob("*.yaml"))


def _episodes(path: Path, seed: int, policy: str, **config: Any) -> int:
    """Run one episode on both backends in lockstep; returns the steps compared."""
    scenario = load_scenario(path)
    envs = [PageTableReclaimEnv([scenario], EnvConfig(backend=b, **config))
            for b in ("exact", "fast")]
    ref, fast = envs
    o1, i1 = ref.reset(seed=seed)
    o2, i2 = fast.reset(seed=seed)
    assert o1.tobytes() == o2.tobytes() and i1 == i2
    actions = np.random.default_rng(seed)
    pol: Any = None if policy in ("random", "oracle") else make_heuristic(policy)
    if policy == "oracle":
        pol = [OracleBound(), OracleBound()]
        for p, env in zip(pol, envs, strict=True):
            p.bind(env)
    steps = 0
    while True:
        if policy == "random":
            a = actions.integers(0, ref.action_space.nvec)
            a1 = a2 = a
        elif policy == "oracle":
            a1, a2 = pol[0].predict(o1)[0], pol[1].predict(o2)[0]
        else:
            a1, a2 = pol.predict(o1)[0], pol.predict(o2)[0]
        o1, r1, t1, tr1, i1 = ref.step(a1)
        o2, r2, t2, tr2, i2 = fast.step(a2)
        steps += 1
        assert o1.tobytes() == o2.tobytes(), (steps, o1, o2)
        assert (r1, t1, tr1) == (r2, t2, tr2), steps
        assert i1 == i2, (steps, i1, i2)
        if tr1:
            return steps


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["random", *HEURISTICS])
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_episodes_identical(path: Path, policy: str) -> None:
    for seed in (0, 1, 2):
        assert _episodes(path, seed, policy) > 10


@pytest.mark.slow
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_oracle_identical(path: Path) -> None:
    assert _episodes(path, 0, "oracle") > 10


@pytest.mark.parametrize("config", [{"hard_limit_action": True},
                                    {"candidate_counts": True},
                                    {"burst_memory": True},
                                    {"burst_memory": True, "candidate_counts": True},
                                    {"decision_ticks": 3, "max_steps": 50}])
def test_env_options_identical(config: dict[str, Any]) -> None:
    path = CONFIG_DIR / "scenarios" / "balloon_host_hog.yaml"
    assert _episodes(path, 4, "random", **config) > 10


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_burst_memory_identical(path: Path) -> None:
    """The burst memory (an ablation) on both backends, every shipped scenario, under the
    default soft/hard rule and random actions."""
    assert _episodes(path, 0, "soft_hard", burst_memory=True) > 10
    assert _episodes(path, 1, "random", burst_memory=True) > 10


def test_backend_choice() -> None:
    scenario = load_scenario(CONFIG_DIR / "scenarios" / "mixed_cloud.yaml")
    env = PageTableReclaimEnv([scenario], EnvConfig())
    env.reset(seed=0)
    assert type(env.sim).__name__ == "FastSimulation"  # auto picks the compiled core
    env = PageTableReclaimEnv([scenario], EnvConfig(backend="exact"))
    env.reset(seed=0)
    assert type(env.sim).__name__ == "Simulation"
    with pytest.raises(ConfigError, match="backend"):
        EnvConfig(backend="quick")  # type: ignore[arg-type]


def test_fast_env_rejects_actions_outside_the_space() -> None:
    env = PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                              EnvConfig(backend="fast"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step(np.array([9, 0, 0]))


def test_batched_vec_env_trains_the_same_model() -> None:
    """FastVecEnv and DummyVecEnv(Monitor(env)) give PPO the same data: same weights."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ptreclaim.agents.training.fastvec import FastVecEnv

    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")

    def train(venv: Any) -> tuple[torch.Tensor, list[float]]:
        venv.seed(3)
        model = PPO("MlpPolicy", VecNormalize(venv, gamma=0.99), n_steps=64, batch_size=64,
                    n_epochs=2, seed=3, device="cpu")
        model.learn(1024)
        params = torch.nn.utils.parameters_to_vector(model.policy.parameters())
        return params, [e["r"] for e in model.ep_info_buffer]

    torch.set_num_threads(1)
    a, ra = train(DummyVecEnv([lambda: Monitor(PageTableReclaimEnv(scenarios, EnvConfig()))
                               for _ in range(2)]))
    b, rb = train(FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig()) for _ in range(2)]))
    c, rc = train(FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig()) for _ in range(2)],
                             threads=2))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert ra == rb == rc and ra  # episode returns (Monitor's) match, and episodes ended


@pytest.mark.parametrize("suite", ["train", "test"])
def test_helper_threads_step_the_batched_env_identically(suite: str) -> None:
    """``env_threads``: the batched env's envs stepped on 1, 2 and 3 threads, and on 4
    whose helpers sleep at once after each batch (the wake-up path), give the same
    observations (as bytes), rewards, ends and terminal observations, step by step, over
    several episodes of every scenario of the suite; the helpers did step envs (3 and 4
    threads on a 2-core machine also exercise more threads than cores).  The rare
    ``Generator.permutation`` draws, which call back into Python from a helper without the
    GIL, happen on the way."""
    from ptreclaim.agents.training.fastvec import FastVecEnv
    from ptreclaim.envs.sim.fast._fast import StepThreads, callback_counts

    scenarios = load_suite(CONFIG_DIR / "suites" / f"{suite}.yaml")
    runs: list[list[bytes]] = []
    permutations = []
    for threads, no_spin in ((1, False), (2, False), (3, False), (4, True)):
        venv = FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig(max_steps=60))
                           for _ in range(4)])
        # Set directly: FastVecEnv keeps to the usable CPUs, the test goes past them.
        venv._threads = (None if threads == 1 else
                         StepThreads(threads, spin_us=0) if no_spin else StepThreads(threads))
        venv.seed(7)
        rng = np.random.default_rng(3)
        before = callback_counts()[1]
        nvec = venv.action_space.nvec
        got = [venv.reset().tobytes()]
        for _ in range(400):
            venv.step_async(rng.integers(0, nvec, size=(4, len(nvec))))
            obs, rewards, dones, infos = venv.step_wait()
            got += [obs.tobytes(), rewards.tobytes(), dones.tobytes()]
            got += [i["terminal_observation"].tobytes() for i in infos if i]
        runs.append(got)
        permutations.append(callback_counts()[1] - before)
        if venv._threads is not None:
            assert venv._threads.helper_steps > 0, threads
        venv.close()
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert len(runs[0]) > 3 * 400 + 4 * 5  # every env ended several episodes
    if suite == "train":
        assert permutations[1] > 0 and permutations == [permutations[0]] * 4


def test_helper_threads_start_again_in_a_forked_child() -> None:
    """A process forked after the helpers ran (a worker process of a multi-seed run or an
    evaluation) has none of them: its batched env starts its own and steps as the
    parent does."""
    import hashlib
    import os

    from ptreclaim.agents.training.fastvec import FastVecEnv

    venv = FastVecEnv([PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                                           EnvConfig()) for _ in range(3)], threads=2)
    venv.seed(5)
    venv.reset()
    actions = np.random.default_rng(5).integers(0, venv.action_space.nvec, size=(60, 3, 5))

    def steps(rows: np.ndarray) -> str:
        h = hashlib.sha256()
        for a in rows:
            venv.step_async(a)
            h.update(venv.step_wait()[0].tobytes())
        return h.hexdigest()

    steps(actions[:20])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, steps(actions[20:]).encode())
        finally:
            os._exit(0)
    os.close(write)
    # A child that hangs (helpers it waits for but does not have) fails the test, not CI.
    import select

    ready, _, _ = select.select([read], [], [], 120)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not step within 120 s")
    child = os.read(read, 64).decode()
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    assert child == steps(actions[20:])


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK),
                    reason="choosing the next pid needs root (/proc/sys/kernel/ns_last_pid)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a helper thread needs 2 CPUs")
def test_a_grandchild_on_its_grandparents_recycled_pid_starts_its_own_helpers() -> None:
    """The pool knows a forked process by the forks it has gone through, not by its pid.

    A (a process of its own) steps a batched env on two threads, forks B and exits. B
    has A's pool copied, without its helpers. Once A's pid is free, B forks C with that very
    pid (the kernel's next pid is set through ``ns_last_pid``). C must start its own helpers
    and step as A would have; a pool that compared pids took A's pool for its own and
    waited forever for helpers C does not have."""
    import contextlib
    import hashlib
    import select
    import signal
    import time

    from ptreclaim.agents.training.fastvec import FastVecEnv

    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    nvec = PageTableReclaimEnv(train, EnvConfig()).action_space.nvec
    actions = np.random.default_rng(9).integers(0, nvec, size=(40, 3, len(nvec)))

    def batched() -> Any:
        venv = FastVecEnv([PageTableReclaimEnv(train, EnvConfig()) for _ in range(3)],
                          threads=2)
        venv.seed(9)
        venv.reset()
        return venv

    def steps(venv: Any, rows: np.ndarray) -> str:
        h = hashlib.sha256()
        for a in rows:
            venv.step_async(a)
            h.update(venv.step_wait()[0].tobytes())
        return h.hexdigest()

    read, write = os.pipe()
    a = os.fork()
    if a == 0:  # A
        code = 1
        try:
            venv = batched()
            steps(venv, actions[:20])
            assert venv.threads == 2
            a_pid = os.getpid()
            b = os.fork()
            if b == 0:  # B: the pool of A, without its helpers
                # B's own process group, which the test kills if C hangs (in A's group,
                # A's pid would stay in use as the group's id and never be recycled).
                os.setpgid(0, 0)
                try:
                    said = _fork_on_recycled_pid(a_pid, run=lambda: steps(venv, actions[20:]))
                except BaseException as exc:  # the test shows it, not a timeout
                    said = f"B failed: {exc!r}".encode()
                os.write(write, said)
                os._exit(0)
            os.write(write, f"{b}\n".encode())
            code = 0
        finally:
            os._exit(code)  # A ends; its pid is free once the test has reaped it
    os.close(write)
    assert os.waitpid(a, 0)[1] == 0
    got = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read, 200) if ready else b""
        if not chunk:
            break
        got += chunk
    os.close(read)
    b_pid, _, said = got.decode().partition("\n")
    if not said:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(b_pid), signal.SIGKILL)
        pytest.fail("the grandchild on the recycled pid did not step within 120 s: it waited "
                    "for helpers it does not have")
    if said == "missed":
        pytest.skip("another process took the freed pid first, three times")
    assert said.startswith("C:"), said
    # What C stepped is what the same env steps in this process.
    venv = batched()
    steps(venv, actions[:20])
    assert said == "C:" + steps(venv, actions[20:])


def _fork_on_recycled_pid(a_pid: int, run: Any) -> bytes:
    """In B: wait until ``a_pid`` is free, then fork C with that pid (up to three tries);
    C runs ``run()``. Returns what goes to the test: ``C:<run()>`` or ``missed``."""
    import time

    deadline = time.monotonic() + 60
    while Path(f"/proc/{a_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(3):
        read, write = os.pipe()
        NS_LAST_PID.write_text(str(a_pid - 1))
        c = os.fork()
        if c == 0:  # C
            try:
                os.write(write, ("C:" + run()).encode() if os.getpid() == a_pid else b"")
            except BaseException as exc:  # the test shows it, rather than "missed"
                os.write(write, f"C failed: {exc!r}".encode())
            finally:
                os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 200):
            chunks.append(chunk)
        os.close(read)
        os.waitpid(c, 0)
        if chunks:
            return b"".join(chunks)
    return b"missed"


def test_step_batch_refuses_misuse_that_would_race_or_overrun() -> None:
    from ptreclaim.agents.training.fastvec import FastVecEnv
    from ptreclaim.envs.sim.fast._fast import StepThreads, step_batch

    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    venv = FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig()) for _ in range(2)])
    venv.seed(1)
    venv.reset()
    cores = [env._core for env in venv.envs]
    width = venv.observation_space.shape[0]
    acts = np.zeros((2, 5), dtype=np.int64)

    def call(steps: list[Any], a: np.ndarray = acts, w: int = width) -> int:
        return step_batch(steps, a, np.zeros((2, w), dtype=np.float32), np.zeros(2),
                          np.zeros(2, dtype=np.uint8), np.zeros(2), np.zeros(2, dtype=np.int64),
                          StepThreads(2))

    with pytest.raises(ValueError, match="listed twice"):
        call([cores[0], cores[0]])
    with pytest.raises(ValueError, match=f"obs rows hold {width + 1} values"):
        call(cores, w=width + 1)
    with pytest.raises(ValueError, match="at least 4 components"):
        call(cores, a=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"steps\[1\] is not an EnvStep"):
        call([cores[0], object()])
    assert call(cores) == 0  # and a proper call still steps


def test_step_threads_reject_a_count_below_one() -> None:
    from ptreclaim.agents.training.fastvec import FastVecEnv
    from ptreclaim.envs.sim.fast._fast import StepThreads

    with pytest.raises(ValueError, match="threads must be at least 1"):
        StepThreads(0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        FastVecEnv([PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                                        EnvConfig())], threads=0)


def test_an_env_stepped_by_the_batched_vec_env_pickles_to_its_state() -> None:
    """The batched env steps the compiled cores directly; each env's pickle journal
    still follows, so a copy taken mid-episode continues exactly as the original."""
    import pickle

    from ptreclaim.agents.training.fastvec import FastVecEnv

    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    venv = FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig(max_steps=30))
                       for _ in range(2)])
    venv.seed(2)
    venv.reset()
    rng = np.random.default_rng(2)
    for _ in range(7):
        venv.step(rng.integers(venv.action_space.nvec, size=(2, 5)))
    env = venv.envs[1]
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(5):
        a = rng.integers(env.action_space.nvec)
        o1, r1, *_ = env.step(a)
        o2, r2, *_ = clone.step(a)
        assert np.array_equal(o1, o2) and r1 == r2

