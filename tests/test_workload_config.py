"""Workload configs as a reset builds them: the unjittered config built once per spec, the
jitter's draws and checks per instance -- the same configs, draws and errors as building
and jittering each instance from its params."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import numpy as np
import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_suite
from ptreclaim.envs.sim.config import ConfigError, build
from ptreclaim.envs.sim.simulator import (
    ScenarioConfig,
    WorkloadSpec,
    base_config,
    workload_instances,
)
from ptreclaim.envs.sim.workloads import WORKLOADS


def _jitter_per_field(cls: Any, params: dict[str, Any], where: str, jitter: float,
                      rng: np.random.Generator) -> Any:
    """What ``make_config`` did before it was split: build, then one ``rng.uniform`` per
    jitter field, then ``dataclasses.replace``."""
    config = build(cls.Config, params, where)
    if jitter <= 0 or not cls.jitter_fields:
        return config
    changes: dict[str, Any] = {}
    for name in cls.jitter_fields:
        value = getattr(config, name)
        scaled = value * float(rng.uniform(1.0 - jitter, 1.0 + jitter))
        if isinstance(value, int):
            changes[name] = 0 if value == 0 else max(1, round(scaled))
        else:
            changes[name] = scaled
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{where}: jitter {jitter} takes a parameter out of range: "
                          f"{exc}; lower the jitter") from None


@pytest.mark.parametrize("family", sorted(WORKLOADS))
def test_jitter_draws_and_configs_are_unchanged(family: str) -> None:
    """One ``uniform`` call for all fields gives each field the factor it got from its own
    call: equal configs (every field, bit for bit) and the generator left in the same
    state, over many seeds and jitters."""
    cls = WORKLOADS[family]
    params: dict[str, Any] = {}
    for seed in range(300):
        jitter = (0.05, 0.2, 0.5, 0.9)[seed % 4]
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        try:
            old = _jitter_per_field(cls, params, "t", jitter, a)
        except ConfigError as exc:
            with pytest.raises(ConfigError) as got:
                cls.make_config(params, "t", jitter, b)
            assert str(got.value) == str(exc)
        else:
            new = cls.make_config(params, "t", jitter, b)
            assert type(new) is type(old)
            for f in dataclasses.fields(old):
                x, y = getattr(old, f.name), getattr(new, f.name)
                assert type(x) is type(y) and x == y, (family, seed, f.name, x, y)
        assert a.bit_generator.state == b.bit_generator.state


def test_jitter_out_of_range_fails_as_before() -> None:
    """A jitter that takes a field out of range (here a cross-field check: the hog's
    mapping below its stride) raises the same one-line error."""
    params = {"size_gib": 2, "stride_kib": 2 << 20}
    cls = WORKLOADS["hog"]
    seen = 0
    for seed in range(40):
        try:
            _jitter_per_field(cls, params, "s.workloads[0].params", 0.9,
                              np.random.default_rng(seed))
        except ConfigError as exc:
            seen += 1
            with pytest.raises(ConfigError) as got:
                cls.make_config(params, "s.workloads[0].params", 0.9,
                                np.random.default_rng(seed))
            assert str(got.value) == str(exc)
    assert seen > 0


def test_instances_equal_per_instance_builds_on_the_training_suite() -> None:
    """Every workload instance of every training scenario, for a few seeds: the same
    configs, generators and names as building each from its params."""
    for scenario in load_suite(CONFIG_DIR / "suites" / "train.yaml"):
        for seed in range(3):
            a, b = np.random.default_rng(seed), np.random.default_rng(seed)
            got = list(workload_instances(scenario, a))
            for i, spec in enumerate(scenario.workloads):
                jitter = scenario.jitter if spec.jitter < 0 else spec.jitter
                for _ in range(spec.count):
                    wrng = np.random.default_rng(b.integers(0, 2**63))
                    want = _jitter_per_field(WORKLOADS[spec.family], spec.params,
                                             f"{scenario.name}.workloads[{i}].params",
                                             jitter, wrng)
                    g_spec, _, g_config, g_rng, _ = got.pop(0)
                    assert g_spec is spec and g_config == want
                    assert g_rng.bit_generator.state == wrng.bit_generator.state
            assert not got
            assert a.bit_generator.state == b.bit_generator.state


def test_base_config_is_built_once_per_spec_and_follows_changed_params() -> None:
    spec = WorkloadSpec("hog", {"size_gib": 2})
    first = base_config(spec, "w")
    assert base_config(spec, "w") is first
    assert base_config(WorkloadSpec("hog", {"size_gib": 2}), "w") is not first
    spec.params["size_gib"] = 3  # a frozen spec's dict changed in place
    assert base_config(spec, "w").size_gib == 3


def test_base_config_that_fails_is_not_cached() -> None:
    spec = WorkloadSpec("hog", {"size_gib": -1})
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"^hog\.size_gib: -1 is out of range"):
            list(workload_instances(ScenarioConfig(name="sc", workloads=(spec,)),
                                    np.random.default_rng(0)))


def test_base_config_entry_goes_with_its_spec() -> None:
    from ptreclaim.envs.sim import simulator

    spec = WorkloadSpec("kdump", {})
    base_config(spec, "w")
    key = id(spec)
    assert key in simulator._BASE_CONFIGS._entries
    del spec
    gc.collect()
    assert key not in simulator._BASE_CONFIGS._entries
