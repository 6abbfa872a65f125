"""Procedural scenarios (``envs/sim/scenariogen.py``) and suites that name them.

* Determinism: a spec gives the same scenarios every time, scenario ``i`` does not
  depend on the count, another seed gives others.
* Validity: every generated scenario passes the loader's whole validation (workload
  parameters and their jitter included), has 2-5 workloads of at least two families,
  600-1200 ticks, at most one hog and a hog that arrives late.
* The split: no training scenario (hand-written or generated) holds a held-out family
  or combination, every unseen one holds one.
* Both backends: every generated scenario of the shipped suites runs 50 ticks on the
  reference and on the compiled core with identical records (the core switched on for
  the test and no reclaim passes: its reclaim lags env v1).
* The suite loader: ``generate:`` next to ``scenarios:`` or alone, and one-line errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import (
    ConfigError,
    load_suite,
    load_yaml,
    resolve_suite,
    scenario_from_data,
    suite_paths,
)
from ptreclaim.envs.sim.fast import check
from ptreclaim.envs.sim.scenariogen import (
    FAMILIES,
    GeneratorSpec,
    generate,
    scenario_data,
    spec_from_data,
)

SUITES = CONFIG_DIR / "suites"


def _shipped_spec(suite: str) -> GeneratorSpec:
    return spec_from_data(load_yaml(SUITES / f"{suite}.yaml")["generate"], suite)


def _families(data: dict[str, Any]) -> set[str]:
    return {w["family"] for w in data["workloads"]}


# -- determinism and validity -----------------------------------------------------------


def test_same_seed_same_scenarios() -> None:
    spec = GeneratorSpec(seed=3, count=12)
    assert generate(spec) == generate(GeneratorSpec(seed=3, count=12))
    # Scenario i depends on (seed, i) only: a longer list starts with the shorter one.
    assert generate(GeneratorSpec(seed=3, count=5)) == generate(spec)[:5]
    other = generate(GeneratorSpec(seed=4, count=12))
    assert all(a.workloads != b.workloads for a, b in zip(other, generate(spec), strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_every_generated_scenario_is_valid(seed: int) -> None:
    """50 scenarios per seed from every family: each passes the loader's validation
    (ranges, did-you-mean keys, the jitter of every jittered parameter)."""
    spec = GeneratorSpec(seed=seed, count=50)
    for i in range(spec.count):
        data = scenario_data(spec, i)
        sc = scenario_from_data(data, data["name"])
        assert 600 <= sc.ticks <= 1200 and sc.ticks % 50 == 0
        assert 2 <= len(sc.workloads) <= 5
        families = [w.family for w in sc.workloads]
        assert len(set(families)) >= 2
        assert families.count("hog") <= 1
        assert all(w.start_tick > 0 for w in sc.workloads if w.family == "hog")
        assert all(w.stop_tick == 0 or w.stop_tick < sc.ticks for w in sc.workloads)
        assert sc.machine.movable_pages > 0 and 0.3 <= sc.machine.tenants.base_fraction <= 0.99


def test_every_family_is_drawn() -> None:
    seen = set()
    spec = GeneratorSpec(seed=0, count=60)
    for i in range(spec.count):
        seen |= _families(scenario_data(spec, i))
    assert seen == set(FAMILIES)


# -- the split ----------------------------------------------------------------------------


def test_held_out_sets_never_in_training() -> None:
    """The training suite, hand-written and generated, holds none of the sets the
    unseen suite requires; every unseen scenario holds one; the names never meet."""
    held_out = [set(group) for group in _shipped_spec("unseen").require]
    train = load_suite(SUITES / "train.yaml")
    unseen = load_suite(SUITES / "unseen.yaml")
    test = load_suite(SUITES / "test.yaml")
    assert len(train) == 9 + _shipped_spec("train").count
    for sc in train:
        families = {w.family for w in sc.workloads}
        assert not any(group <= families for group in held_out), sc.name
    for sc in unseen:
        families = {w.family for w in sc.workloads}
        assert any(group <= families for group in held_out), sc.name
    names = [s.name for s in train + test + unseen]
    assert len(names) == len(set(names))
    # Each held-out set is drawn at least once.
    for group in held_out:
        assert any(group <= {w.family for w in sc.workloads} for sc in unseen), group


def test_exclude_and_require_are_honoured() -> None:
    spec = GeneratorSpec(seed=11, count=40, families=("allocator", "hog", "kdump", "phased"),
                         exclude=(("kdump", "hog"),), require=(("phased",), ("allocator",)))
    for i in range(spec.count):
        families = _families(scenario_data(spec, i))
        assert families <= set(spec.families)
        assert not {"kdump", "hog"} <= families
        assert "phased" in families or "allocator" in families


# -- both backends ------------------------------------------------------------------------


def _generated(suite: str) -> list[Any]:
    spec = _shipped_spec(suite)
    return [scenario_from_data(scenario_data(spec, i), suite) for i in range(spec.count)]


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["train", "unseen"])
def test_generated_scenarios_identical_on_both_backends(suite: str) -> None:
    for sc in _generated(suite):
        assert check.compare_simulations(sc, 0, 80, reclaim_every=5, state_every=20) == "", \
            sc.name


# -- the suite loader ---------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "a.yaml").write_text((CONFIG_DIR / "scenarios" / "balloon_host_hog.yaml")
                                     .read_text())
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_suite_with_generated_scenarios(tmp_path: Path) -> None:
    path = _write(tmp_path, "scenarios: [a.yaml]\ngenerate: {seed: 5, count: 3}\n")
    scenarios = load_suite(path)
    assert [s.name for s in scenarios] == ["balloon_host_hog", "gen5_000", "gen5_001",
                                           "gen5_002"]
    assert scenarios[1:] == generate(GeneratorSpec(seed=5, count=3))
    listed, files = resolve_suite(str(path))
    assert listed == scenarios and [f.name for f in files] == ["a.yaml"]
    only = _write(tmp_path, "generate: {seed: 5, count: 2, prefix: x}\n")
    assert suite_paths(only) == []
    assert [s.name for s in load_suite(only)] == ["x5_000", "x5_001"]


@pytest.mark.parametrize("text,match", [
    ("generate: {seed: 1, cuont: 3}\n", r"suite\.yaml\.generate: unknown key 'cuont' "
                                       r"\(did you mean 'count'\?\)"),
    ("generate: {count: 3}\n", r"suite\.yaml\.generate: 'seed' is missing"),
    ("generate: {seed: 1, count: 0}\n", r"generate\.count: 0 is out of range"),
    ("generate: {seed: 1, count: 2, families: [hog, balon]}\n",
     r"family 'balon' is unknown \(did you mean 'balloon'\?\)"),
    ("generate: {seed: 1, count: 2, families: [hog]}\n", r"at least two families"),
    ("generate: {seed: 1, count: 2, require: [[trace, hog]], exclude: [[hog]]}\n",
     r"require\[0\]: \['trace', 'hog'\] holds an excluded set"),
    ("generate: {seed: 1, count: 2, families: [hog, kdump], require: [[trace]]}\n",
     r"require\[0\]: trace not in generate\.families"),
    ("generate: {seed: 1, count: 2, exclude: [[]]}\n", r"exclude\[0\]: an empty set"),
    ("generate: {seed: 1, count: 2, families: [hog, kdump], exclude: [[hog, kdump]]}\n",
     r"leaves fewer than two families"),
    ("generate: [1, 2]\n", r"generate: expected a mapping"),
    ("generat: {seed: 1, count: 1}\n", r"unknown key 'generat' \(did you mean 'generate'\?\)"),
])
def test_suite_errors(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        load_suite(path)


def test_generated_name_clash(tmp_path: Path) -> None:
    path = _write(tmp_path, "scenarios: [a.yaml]\ngenerate: {seed: 1, count: 1}\n")
    text = (tmp_path / "a.yaml").read_text().replace("name: balloon_host_hog", "name: gen1_000")
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"suite\.yaml: two scenarios share a name"):
        load_suite(path)
