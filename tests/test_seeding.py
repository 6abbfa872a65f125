"""``seeding.default_rng``: numpy's ``default_rng(seed)`` bit for bit for integer seeds (the
same ``PCG64`` state and draws), its seed sequence answering as numpy's ``SeedSequence``
(words, children, pickles), and what an env reset builds with it unchanged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs import pagetable_env
from ptreclaim.envs.configio import load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim import seeding, simulator
from ptreclaim.envs.sim.fast._fast import seed_state
from ptreclaim.envs.sim.seeding import IntSeed, default_rng

EDGES = [0, 1, 2, 255, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64 - 1]


def _seeds(n: int) -> list[int]:
    rng = np.random.default_rng(20261208)
    return (EDGES + [int(x) for x in rng.integers(0, 2**63, n)]
            + [int(x) for x in rng.integers(0, 2**32, n // 4)])


def test_same_generator_as_numpy() -> None:
    for seed in _seeds(3000):
        ours, theirs = default_rng(seed), np.random.default_rng(seed)
        assert ours.bit_generator.state == theirs.bit_generator.state, seed
    for seed in _seeds(200):
        ours, theirs = default_rng(seed), np.random.default_rng(seed)
        assert np.array_equal(ours.integers(0, 2**63, 50), theirs.integers(0, 2**63, 50))
        assert ours.random() == theirs.random()


def test_numpy_integer_seeds() -> None:
    # workload_builds seeds with what rng.integers returns: an np.int64.
    for seed in (np.int64(0), np.int64(2**62 + 7), np.uint64(2**64 - 1), np.uint32(9)):
        assert (default_rng(seed).bit_generator.state
                == np.random.default_rng(seed).bit_generator.state)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, "u4", "<u8", np.dtype(np.uint64)])
def test_generate_state_words(dtype: object) -> None:
    for seed in _seeds(40):
        for n in range(10):
            ours = IntSeed(seed).generate_state(n, dtype)
            theirs = np.random.SeedSequence(seed).generate_state(n, dtype)
            assert ours.dtype == theirs.dtype
            assert np.array_equal(ours, theirs), (seed, n, dtype)


def test_generate_state_bad_dtype() -> None:
    with pytest.raises(ValueError, match="uint32 or uint64"):
        IntSeed(3).generate_state(4, np.int64)
    with pytest.raises(ValueError, match="n_words"):
        seed_state(3, -1, True)


def test_spawn_counts_children_like_numpy() -> None:
    ours, theirs = IntSeed(7), np.random.SeedSequence(7)
    assert ours.n_children_spawned == theirs.n_children_spawned == 0
    for _ in range(2):  # the second call's children follow the first's
        for a, b in zip(ours.spawn(3), theirs.spawn(3), strict=True):
            assert a.spawn_key == b.spawn_key
            assert np.array_equal(a.generate_state(4), b.generate_state(4))
    assert ours.n_children_spawned == theirs.n_children_spawned == 6
    g, h = default_rng(11), np.random.default_rng(11)
    assert g.spawn(2)[1].bit_generator.state == h.spawn(2)[1].bit_generator.state


def test_pickles_as_numpy_seed_sequence() -> None:
    g = default_rng(12345)
    g.random()
    copy = pickle.loads(pickle.dumps(g))
    assert type(copy.bit_generator.seed_seq) is np.random.SeedSequence
    assert copy.bit_generator.seed_seq.entropy == 12345
    assert copy.bit_generator.state == g.bit_generator.state
    assert copy.random() == g.random()
    seq = IntSeed(5)
    seq.spawn(4)
    back = pickle.loads(pickle.dumps(seq))
    assert type(back) is np.random.SeedSequence and back.n_children_spawned == 4
    assert np.array_equal(back.spawn(1)[0].generate_state(2),
                          np.random.SeedSequence(5, n_children_spawned=4).spawn(1)[0]
                          .generate_state(2))


def test_other_seeds_go_to_numpy() -> None:
    # Outside [0, 2**64) or not an integer: numpy's own default_rng, its own answer.
    big = 2**64 + 5
    assert default_rng(big).bit_generator.state == np.random.default_rng(big).bit_generator.state
    with pytest.raises(ValueError, match="non-negative"):
        default_rng(-1)
    with pytest.raises(TypeError):
        default_rng(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        IntSeed(-3)


def test_reset_builds_the_same_workload_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a reset builds from a scenario: the same configs and generator states with
    numpy's default_rng in its place."""
    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")

    def built(scenario: object, seed: int) -> list[tuple[object, ...]]:
        rng = np.random.default_rng(seed)
        return [(i, name, config, wrng.bit_generator.state, rng.bit_generator.state)
                for i, _, _, _, config, wrng, name in simulator.workload_builds(scenario, rng)]

    assert simulator.default_rng is seeding.default_rng  # what resets use
    fast = [built(s, k) for k, s in enumerate(train[:40])]
    monkeypatch.setattr(simulator, "default_rng", np.random.default_rng)
    assert [built(s, k) for k, s in enumerate(train[:40])] == fast


def test_env_episodes_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes of the default env: the same observations and rewards as with numpy's
    default_rng at both of a reset's sites."""
    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")

    def episodes() -> list[tuple[bytes, float]]:
        env = PageTableReclaimEnv(train, EnvConfig(backend="fast"))
        env.action_space.seed(3)
        out = []
        for seed in range(6):
            obs, _ = env.reset(seed=seed)
            out.append((obs.tobytes(), 0.0))
            for _ in range(5):
                obs, reward, _, _, _ = env.step(env.action_space.sample())
                out.append((obs.tobytes(), reward))
        return out

    assert pagetable_env.default_rng is seeding.default_rng
    fast = episodes()
    monkeypatch.setattr(simulator, "default_rng", np.random.default_rng)
    monkeypatch.setattr(pagetable_env, "default_rng", np.random.default_rng)
    assert episodes() == fast


def test_without_the_compiled_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference simulator imports without the compiled core: seeding then gives
    numpy's own generators."""
    monkeypatch.setattr(seeding, "seed_state", None)
    g = seeding.default_rng(77)
    assert type(g.bit_generator.seed_seq) is np.random.SeedSequence
    assert g.bit_generator.state == np.random.default_rng(77).bit_generator.state
    with pytest.raises(RuntimeError, match="compiled core"):
        IntSeed(77)
