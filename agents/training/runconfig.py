"""One run's resolved config: written into its folder at the start, read back
to resume, evaluate or export it.

``config.yaml`` holds the experiment with this run's one seed, the final
hyperparameters and every scenario in full, so the run can be repeated from
that file alone; :func:`read_run_config` rebuilds it, strictly (a
hand-written config is refused; :func:`ptreclaim.agents.loading.parse_policy`
is the lenient reader for evaluation).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__
from ...envs.configio import scenario_from_data, write_text_atomic, write_yaml_atomic
from ...envs.sim.config import ConfigError, build, quote, to_dict
from ..loading import load_model, load_vecnormalize
from ..modelpolicy import ObsNormalizedPolicy, as_policy
from ..runs import RunFolder, versions
from .config import ExperimentConfig, Scenarios, TrainError, resolve_rule_paths, snapshot_rules
from .hyperparams import validate_hyperparams

#: Package versions recorded in a run's ``versions.json``.
VERSIONED = ("torch", "stable_baselines3", "gymnasium", "numpy", "sb3_contrib")


@dataclass
class RunConfig:
    """What ``config.yaml`` of a run folder holds, rebuilt."""

    experiment: ExperimentConfig
    seed: int
    hyperparams: dict[str, Any]
    scenarios: Scenarios


def run_config_data(exp: ExperimentConfig, seed: int, hp: Mapping[str, Any],
                    scen: Scenarios) -> dict[str, Any]:
    """The resolved config of one run: enough to repeat it without any other file."""
    exp_data = to_dict(dataclasses.replace(exp, seeds=(seed,), jobs=1))
    return {"ptreclaim": __version__, "seed": seed, "experiment": exp_data,
            "hyperparams": dict(hp),
            "scenarios": {"train": [to_dict(s) for s in scen.train],
                          "eval": [to_dict(s) for s in scen.eval]}}


#: The keys of a run's ``config.yaml`` (``ptreclaim``: the version that wrote it).
RUN_CONFIG_KEYS = ("experiment", "seed", "hyperparams", "scenarios")


def read_run_config(run: RunFolder | Path) -> RunConfig:
    """Read a run folder's ``config.yaml``, checked as strictly as training
    wrote it: :class:`ConfigError` (one line naming the file, the key and
    what is wrong) if it is not a run, or a damaged one."""
    folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    data = folder.config_data()
    where = f"{folder / 'config.yaml'}"
    if not isinstance(data, Mapping):
        raise TrainError(f"{where}: not a run config (a mapping of "
                         f"{', '.join(RUN_CONFIG_KEYS)}); is the file damaged?")
    missing = [k for k in RUN_CONFIG_KEYS if k not in data]
    if missing:
        raise TrainError(f"{where}: not a run config: no {', '.join(missing)}; is the file "
                         "damaged? (train.py writes every key)")
    seed = data["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TrainError(f"{where}: seed {quote(seed)} is not a seed (an integer >= 0); is "
                         "the file damaged?")
    sc, hp = data["scenarios"], data["hyperparams"]
    if not isinstance(sc, Mapping) or not all(isinstance(sc.get(k), list) and sc[k]
                                              for k in ("train", "eval")):
        raise TrainError(f"{where}: scenarios must map train and eval to non-empty lists of "
                         "scenarios; is the file damaged?")
    if not isinstance(hp, Mapping):
        raise TrainError(f"{where}: hyperparams must be a mapping; is the file damaged?")
    try:
        exp_data = data["experiment"]
        if isinstance(exp_data, Mapping):
            # Rule files are named relative to the run folder (its rules/, see start_run).
            exp_data = resolve_rule_paths(exp_data, Path(folder))
        exp = build(ExperimentConfig, exp_data, "config.yaml.experiment")
        if exp.seeds != (seed,):
            raise TrainError(f"config.yaml.experiment.seeds: {quote(list(exp.seeds))} is not "
                             f"[{seed}], the run's seed; is the file damaged?")
        scen = Scenarios([scenario_from_data(s, f"config.yaml.scenarios.train[{i}]")
                          for i, s in enumerate(sc["train"])],
                         [scenario_from_data(s, f"config.yaml.scenarios.eval[{i}]")
                          for i, s in enumerate(sc["eval"])])
        validate_hyperparams(exp.algo, dict(hp), "config.yaml.hyperparams")
    except ConfigError as exc:
        raise TrainError(f"{folder}: {exc}") from None
    return RunConfig(exp, seed, dict(hp), scen)


def train_command(argv: Sequence[str]) -> str:
    """An invocation as ``command.txt`` records it: the folder, then the command."""
    return (f"# cwd: {os.getcwd()}\n"
            + "python " + shlex.join([sys.argv[0] or "scripts/train.py", *argv])
            + "\n")


def start_run(run: RunFolder, exp: ExperimentConfig, seed: int, hp: Mapping[str, Any],
              scen: Scenarios, command: str) -> RunConfig:
    """Write a new run's ``config.yaml``, ``command.txt``, ``versions.json`` and
    ``state.json``, and read the config back (what a resume will read)."""
    data = run_config_data(exp, seed, hp, scen)
    # The rule files it names, copied into the folder (rules/): the run is whole by itself.
    data["experiment"] = snapshot_rules(data["experiment"], Path(run))
    write_yaml_atomic(run / "config.yaml", data)
    write_text_atomic(run / "command.txt", command)
    run.write_json("versions.json", versions(*VERSIONED))
    run.write_state(status="running", num_timesteps=0, total_timesteps=exp.timesteps,
                    checkpoint=None, seed=seed)
    return read_run_config(run)


def load_trained_policy(run_dir: str | os.PathLike[str] | RunFolder, which: str = "final",
                        ) -> ObsNormalizedPolicy:
    """The final (``model.zip``) or best (``best_model.zip``) policy of a run
    folder, with its normalisation statistics."""
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(Path(run_dir))
    if which not in ("final", "best"):
        raise TrainError(f"which={which!r}: expected 'final' or 'best'")
    exp = read_run_config(run).experiment
    model_file, stats_file = run.model_files(which)
    model = load_model(model_file, exp.algo, exp.env)
    stats = None
    if stats_file.is_file():
        stats = load_vecnormalize(stats_file)
        stats.training = False
    return as_policy(model, stats, exp.env, exp.algo if which == "final" else f"{exp.algo}_best")
