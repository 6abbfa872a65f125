"""Thresholds files: the typed record an operator deploys, its writer and reader.

A thresholds file (``thresholds.yaml`` and the same record as
``thresholds.json``) holds a rule in the shape of a fixed heuristic, so that
``evaluate.py``, ``simulate.py`` and ``monitor.py`` run it like any policy:

.. code-block:: yaml

    schema_version: 2
    name: distilled_default_ppo_0
    description: ...
    rule: {kind: soft_hard, soft_pt_frac: 0.0, hard_pt_frac: 0.1, soft_idle: 2, ...}
    provenance: {tool: export_thresholds, run: ..., model_sha256: ..., ...}
    score: {suite: test, mean_cost: ..., ci_low: ..., ci_high: ...}
    evaluation: {policies: {...}, gain_share: ...}

Only ``rule`` decides what the policy does; the other keys document where it
came from and how well it did.  The reader checks the schema version, the
keys (did-you-mean hints) and every rule parameter's range, and raises
:class:`~ptreclaim.envs.sim.config.ConfigError` with one line naming the
file, the key and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..envs.configio import dump_yaml, load_json, load_yaml, write_text_atomic
from ..envs.sim.config import ConfigError, check_keys, did_you_mean, to_dict
from .heuristics import RULES, Policy, make_rule

#: The version of the record this code writes and reads.  Bump it when a key
#: changes meaning; readers refuse other versions rather than guess.
#: 1: env v0 rules (three-component actions, 17 features); 2: env v1 (five-component
#: actions: budget, depth, min_idle, target among the top consumers, hard limit).
THRESHOLDS_SCHEMA_VERSION = 2
#: What each older version was made for, for the one-line refusal.
_OLD_VERSIONS = {1: "a rule for env v0 (three-component actions over 17 features), which "
                    "cannot act in env v1"}
#: Top-level keys a thresholds file may hold.
THRESHOLDS_KEYS = ("schema_version", "name", "description", "provenance", "rule", "score",
                   "scores", "evaluation")
#: Rule kinds a thresholds file may carry.
RULE_KINDS = tuple(RULES)


@dataclass(frozen=True)
class ThresholdsRecord:
    """One thresholds file, as read or about to be written."""

    kind: str
    params: Mapping[str, Any]
    name: str = ""
    description: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    score: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = THRESHOLDS_SCHEMA_VERSION

    def to_data(self) -> dict[str, Any]:
        """Plain data in the file's key order (empty optional keys left out)."""
        data: dict[str, Any] = {"schema_version": self.schema_version}
        if self.name:
            data["name"] = self.name
        if self.description:
            data["description"] = self.description
        data["rule"] = {"kind": self.kind, **dict(self.params)}
        for key in ("provenance", "score", "scores", "evaluation"):
            value = getattr(self, key)
            if value:
                data[key] = _plain(value)
        return data

    def policy(self) -> Policy:
        """The policy this rule describes."""
        return make_rule(self.kind, dict(self.params), f"{self.name or 'thresholds'}.rule")


def _plain(value: Any) -> Any:
    """Mappings/sequences/numpy scalars as plain YAML/JSON data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def rule_params(policy: Policy) -> dict[str, Any]:
    """The rule parameters of a policy: a tree's nodes, or the ``params``
    dataclass of a parametrised heuristic."""
    tree = getattr(policy, "tree", None)
    if tree is not None:
        return {"tree": tree}
    params = getattr(policy, "params", None)
    if params is None:
        raise ConfigError(f"policy {policy.name!r} has no parameters to export")
    return to_dict(params)


def read_thresholds(path: str | os.PathLike[str]) -> ThresholdsRecord:
    """Read and check a thresholds file (``.yaml``/``.yml`` with
    a safe YAML loader, ``.json`` with ``json``, both within the input limits
    of :mod:`ptreclaim.envs.configio`)."""
    p = Path(path)
    data = load_json(p, "a thresholds .json file") if p.suffix.lower() == ".json" \
        else load_yaml(p)
    return record_from_data(data, p.name)


def record_from_data(data: Any, where: str) -> ThresholdsRecord:
    """Check plain data (a parsed thresholds file) and build its record."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a thresholds file is a mapping with a 'rule' "
                          f"(kind: soft_hard, ...), got {type(data).__name__}")
    check_keys(data, THRESHOLDS_KEYS, where)
    version = data.get("schema_version", THRESHOLDS_SCHEMA_VERSION)
    if version != THRESHOLDS_SCHEMA_VERSION:
        what = _OLD_VERSIONS.get(version, "not supported") if isinstance(version, int) \
            else "not supported"
        raise ConfigError(f"{where}.schema_version: {version!r} is {what}; this ptreclaim "
                          f"reads schema_version {THRESHOLDS_SCHEMA_VERSION} (re-export the "
                          "policy with this version's export_thresholds.py, or re-tune it "
                          "with tune.py)")
    rule = data.get("rule")
    if not isinstance(rule, Mapping):
        raise ConfigError(f"{where}.rule: missing or not a mapping; expected "
                          "'rule: {kind: soft_hard, soft_pt_frac: ..., ...}'")
    kind = rule.get("kind")
    if kind not in RULE_KINDS:
        raise ConfigError(f"{where}.rule.kind: {kind!r} is not a known rule"
                          f"{did_you_mean(str(kind), RULE_KINDS)}; known: "
                          f"{', '.join(RULE_KINDS)}")
    params = {k: v for k, v in rule.items() if k != "kind"}
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {data[key]!r}")
    for key in ("provenance", "score", "scores", "evaluation"):
        if key in data and not isinstance(data[key], Mapping):
            raise ConfigError(f"{where}.{key}: expected a mapping, got "
                              f"{type(data[key]).__name__}")
    make_rule(kind, params, f"{where}.rule")
    return ThresholdsRecord(kind, params, data.get("name", ""), data.get("description", ""),
                            data.get("provenance", {}), data.get("score", {}),
                            data.get("scores", {}), data.get("evaluation", {}), version)


def load_thresholds(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The rule parameters of a thresholds file (checked like any config)."""
    return dict(read_thresholds(path).params)


def write_thresholds(stem: str | os.PathLike[str], record: ThresholdsRecord) -> list[Path]:
    """Write ``record`` as ``<stem>.yaml`` and ``<stem>.json``, each atomically,
    after checking that it reads back to the same rule.  Returns both paths."""
    data = record.to_data()
    check = record_from_data(json.loads(json.dumps(data)), f"{Path(stem).name} (to be written)")
    if dict(check.params) != dict(record.params):
        raise ConfigError(f"{stem}: the rule does not survive a round trip through JSON; "
                          "use plain numbers, booleans and strings")
    out = []
    base = Path(stem)
    for suffix, text in ((".yaml", dump_yaml(data)),
                         (".json", json.dumps(data, indent=2) + "\n")):
        path = base.with_name(base.name + suffix)
        write_text_atomic(path, text)
        out.append(path)
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (provenance of models and configs)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
