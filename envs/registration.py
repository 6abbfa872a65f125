"""Gymnasium registration of the ptreclaim env ids.

``ptreclaim/PageTableReclaim-v1`` draws each episode from the training suite
(``configs/suites/train.yaml``); ``ptreclaim/PageTableReclaim-<Name>-v1`` runs
the one shipped scenario ``configs/scenarios/<name>.yaml``.  Ids are registered
when ``ptreclaim`` is imported (``gymnasium.make`` needs nothing else, and
rl-zoo3 finds them with ``--gym-packages ptreclaim``); configs are read only
when an env is made.  Importing this module imports neither gymnasium nor
the env: registration may run while either is still being imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..configs import CONFIG_DIR

if TYPE_CHECKING:
    from .pagetable_env import PageTableReclaimEnv

DEFAULT_ID = "ptreclaim/PageTableReclaim-v1"
#: A string, so that gymnasium imports it lazily and env specs pickle.
ENTRY_POINT = "ptreclaim.envs.registration:make_env"


def scenario_id(stem: str) -> str:
    """Env id of a shipped scenario file stem (``hypervisor_hog`` ->
    ``ptreclaim/PageTableReclaim-HypervisorHog-v1``)."""
    camel = "".join(part.capitalize() for part in stem.split("_"))
    return f"ptreclaim/PageTableReclaim-{camel}-v1"


def make_env(suite: str | None = None, scenario: str | None = None,
             env_config: dict[str, Any] | None = None) -> PageTableReclaimEnv:
    """Entry point of every registered id: a suite name or a scenario stem."""
    from .configio import load_scenario, load_suite
    from .pagetable_env import EnvConfig, PageTableReclaimEnv
    from .sim.config import build

    if scenario is not None:
        scenarios = [load_scenario(CONFIG_DIR / "scenarios" / f"{scenario}.yaml")]
    else:
        scenarios = load_suite(CONFIG_DIR / "suites" / f"{suite or 'train'}.yaml")
    config = build(EnvConfig, env_config or {}, "env")
    return PageTableReclaimEnv(scenarios, config)


def register_all() -> None:
    """Register the default id and one id per shipped scenario (idempotent)."""
    # Imported here, not at the top: importing gymnasium first runs the hook of
    # ptreclaim/__init__.py, which calls this function; the module must be whole by then.
    import gymnasium as gym

    if DEFAULT_ID not in gym.registry:
        gym.register(DEFAULT_ID, entry_point=ENTRY_POINT, max_episode_steps=None,
                     kwargs={"suite": "train"})
    for path in sorted((CONFIG_DIR / "scenarios").glob("*.yaml")):
        env_id = scenario_id(path.stem)
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ENTRY_POINT, max_episode_steps=None,
                         kwargs={"scenario": path.stem})
