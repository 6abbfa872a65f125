"""A finished episode's compiled simulation is freed when the env drops it (issue 13).

The compiled state of an episode holds megabytes of page tables.  If the Python views over
it (processes, address spaces, the machine, PSI) formed reference cycles, each episode's
simulation would live on until a full garbage collection -- rare during training -- and
every new episode would grow the heap into fresh pages instead of reusing the last one's
memory (measured: ~8 MB more per `redis_jemalloc` episode, and the page faults and
collections that went with it).  These tests fail if a cycle comes back.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario, load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim.pagetable import TableClass


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic collector off: only reference counting frees objects."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _touch_views(sim: Any) -> None:
    """Read through every view a caller can hold (each one once held its owner)."""
    machine = sim.machine
    assert machine.normal_free >= 0 and machine.psi.some_avg10 >= 0.0
    for p in sim.procs:
        assert p.mm.tables >= 0 and p.mm.class_count(TableClass.EMPTY) >= 0
        assert p.pt_bytes >= 0 and isinstance(p.alive, bool)
        for slot in sorted(p.mm.tables_in_class(TableClass.PINNED))[:1]:
            assert len(p.mm.pte[slot].entries) == 512


def test_env_reset_frees_the_previous_simulation(no_gc: None) -> None:
    env = PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                              EnvConfig(backend="fast"))
    rng = np.random.default_rng(0)
    env.reset(seed=0, options={"scenario": 2})
    for _ in range(5):
        env.step(rng.integers(0, env.action_space.nvec))
    _touch_views(env.sim)
    old = weakref.ref(env.sim)
    env.reset(seed=1)
    assert old() is None, gc.get_referrers(old())


def test_a_simulation_copy_is_freed_too(no_gc: None) -> None:
    """The offline oracle's deep copies are dropped after each look ahead."""
    import copy

    env = PageTableReclaimEnv([load_scenario(CONFIG_DIR / "scenarios" / "mixed_cloud.yaml")],
                              EnvConfig(backend="fast"))
    env.reset(seed=0)
    clone = copy.deepcopy(env.sim)
    clone.run(20)
    _touch_views(clone)
    ref = weakref.ref(clone)
    del clone
    assert ref() is None


def _make_env() -> PageTableReclaimEnv:
    return PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                               EnvConfig(backend="fast"))


def _episode_digest(env: PageTableReclaimEnv, scenario: int, seed: int, steps: int) -> str:
    """SHA-256 of one seeded episode under seeded random actions: every observation,
    reward and info."""
    import hashlib

    h = hashlib.sha256()
    obs, _ = env.reset(seed=seed, options={"scenario": scenario})
    h.update(obs.tobytes())
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(rng.integers(0, env.action_space.nvec))
        h.update(obs.tobytes())
        h.update(np.float64(reward).tobytes())
        h.update(repr(sorted(info.items())).encode())
        if term or trunc:
            break
    return h.hexdigest()


def test_an_episode_on_reused_memory_is_the_same() -> None:
    """Each reset destroys the last episode's simulation, whose page-table maps give their
    pool blocks and empty nodes to this thread's spares, and the next simulation's maps
    take them (``SlotMap::new_block``, ``take_node``): memory that earlier episodes wrote.
    An episode played after others must equal the same episode played first, in a fresh
    process; it would not if the core read anything of a table it had not written."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from test_fast_memory import _episode_digest, _make_env; "
            "print(_episode_digest(_make_env(), 5, 11, 60))")
    run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    first = run.stdout.strip()
    env = _make_env()
    # Other scenarios first, so the spares hold their tables' headers and entries.
    for scenario in (0, 1, 2, 3, 4, 6, 7, 8):
        _episode_digest(env, scenario, scenario, 60)
    assert _episode_digest(env, 5, 11, 60) == first
