"""SB3 models behind the policy interface.

:class:`ObsNormalizedPolicy` gives a trained (or training) SB3 model the ``predict()`` of
every policy (:class:`~ptreclaim.agents.loading.Policy`), normalising observations with the
``VecNormalize`` statistics it was trained with and decoding a flattened ``Discrete``
action (DQN); :func:`as_policy` makes one.  Its deterministic decisions of a PPO or A2C
model go through :class:`DeterministicActorCritic`, SB3's own computation without the
per-call overhead (docs/performance.md).  Loading models from files (and trusting them) is
:mod:`ptreclaim.agents.loading`'s job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ..envs.sim.simulator import ScenarioConfig

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecNormalize


def unflatten_action(action: Any, nvec: Sequence[int] | np.ndarray) -> np.ndarray:
    """A flat ``Discrete(prod(nvec))`` index (or a batch of them) back to
    ``MultiDiscrete(nvec)`` actions, C order: the last component varies fastest."""
    a = np.asarray(action, dtype=np.int64)
    parts = np.unravel_index(a, tuple(int(n) for n in nvec))
    return np.stack(parts, axis=-1).astype(np.int64)


class DeterministicActorCritic:
    """SB3's ``ActorCriticPolicy.predict(obs, deterministic=True)`` for a Box
    observation and a ``Discrete`` or ``MultiDiscrete`` action, the same tensor
    operations without the call's overhead.

    Every evaluation, validation run and export plays a trained policy one decision at a
    time, and SB3's ``predict`` spent most of such a decision's time around the network:
    ``set_training_mode`` walking every module, the ``device`` lookup walking the
    parameters, and a ``torch.distributions.Categorical`` per action component with its
    argument checks (``docs/performance.md``, "Playing a trained policy").  This computes
    what those objects compute, in the same order and on the same tensors: the features
    of ``pi_features_extractor`` (``BaseModel.extract_features``, as ``get_distribution``
    calls it, shared extractor or not), ``mlp_extractor.forward_actor``, ``action_net``, then per
    component (``torch.split`` of the logits, as ``MultiCategoricalDistribution``) the
    normalised logits ``l - l.logsumexp(-1)`` (``Categorical.__init__``), their softmax
    (``Categorical.probs``) and its first argmax (``mode()``): the same actions, bit for
    bit (``tests/test_evaluate.py`` compares them with ``model.predict`` on random and tied
    logits).  :meth:`of` returns None for any other policy, which then goes through
    ``model.predict``; so does a call whose logits are not all finite, where SB3's
    ``Categorical`` refuses them with its own error (a diverged model fails as before).

    Eval mode is set as SB3's ``predict`` sets it, by ``set_training_mode(False)``, but
    only when the policy's own flag says it is training: SB3's policies set the flag on
    every module at once, and ``MlpPolicy`` has no dropout or batch norm that it would
    change.  The device is the policy's when this is made (a policy is not moved while
    it is played).
    """

    def __init__(self, policy: Any, dims: Sequence[int] | None) -> None:
        import torch
        from stable_baselines3.common.policies import BaseModel
        from stable_baselines3.common.utils import is_vectorized_observation

        self.policy = policy
        self.dims = None if dims is None else [int(d) for d in dims]
        self.device = policy.device  # a walk over the parameters: once, not per call
        # Bound once: import statements in predict() cost ~2 µs per decision.
        self._torch = torch
        self._features = BaseModel.extract_features
        self._vectorized = is_vectorized_observation
        # For predict_rows: the actor's layers when they are SB3's MlpExtractor's Sequential
        # (then Linear and ReLU, hook-free, run by their functional forms), else None.
        self._layers = self._actor_layers(policy, torch.nn)

    @staticmethod
    def _actor_layers(policy: Any, nn: Any) -> list[tuple[str, Any]] | None:
        from stable_baselines3.common.torch_layers import MlpExtractor

        net: Any = getattr(policy.mlp_extractor, "policy_net", None)
        if (type(policy.mlp_extractor) is not MlpExtractor or type(net) is not nn.Sequential
                or type(policy.action_net) is not nn.Linear):
            return None
        layers: list[tuple[str, Any]] = []
        for module in [*net, policy.action_net]:
            hooked = module._forward_hooks or module._forward_pre_hooks
            kind = ("linear" if type(module) is nn.Linear and not hooked else
                    "relu" if type(module) is nn.ReLU and not module.inplace and not hooked
                    else "call")
            layers.append((kind, module))
        return layers

    @classmethod
    def of(cls, model: Any) -> DeterministicActorCritic | None:
        """The fast path for ``model`` (an SB3 algorithm), or None when its policy is not
        exactly SB3's ``ActorCriticPolicy`` with a Box observation (not an image) and a
        (multi-)categorical action distribution (subclasses such as the maskable and
        recurrent policies, and anything that is not an SB3 model, keep their own
        ``predict``)."""
        policy = getattr(model, "policy", None)
        if policy is None or "torch" not in sys.modules:
            return None
        from gymnasium import spaces
        from stable_baselines3.common.distributions import (
            CategoricalDistribution,
            MultiCategoricalDistribution,
        )
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.common.preprocessing import is_image_space

        space = policy.observation_space
        if (type(policy) is not ActorCriticPolicy or not isinstance(space, spaces.Box)
                or is_image_space(space)):  # images are transposed first: SB3's own path
            return None
        dist = policy.action_dist
        if type(dist) is MultiCategoricalDistribution:
            assert isinstance(dist, MultiCategoricalDistribution)  # for the type checker
            return cls(policy, dist.action_dims)
        if type(dist) is CategoricalDistribution:
            return cls(policy, None)
        return None

    def predict(self, observation: np.ndarray) -> np.ndarray:
        """The action(s) of ``policy.predict(observation, deterministic=True)``."""
        th = self._torch
        p = self.policy
        if p.training:  # what predict's set_training_mode(False) changes
            p.set_training_mode(False)
        obs = np.array(observation)
        vectorized = self._vectorized(obs, p.observation_space)
        obs = obs.reshape((-1, *p.observation_space.shape))
        with th.no_grad():
            features = self._features(p, th.as_tensor(obs, device=self.device),
                                      p.pi_features_extractor)
            logits = p.action_net(p.mlp_extractor.forward_actor(features))
            if not bool(th.isfinite(logits).all()):
                return p.predict(observation, deterministic=True)[0]  # SB3's own error
            if self.dims is None:
                actions = self._mode(logits)
            else:
                actions = th.stack([self._mode(part)
                                    for part in th.split(logits, self.dims, dim=1)], dim=1)
        out = actions.cpu().numpy().reshape((-1, *p.action_space.shape))
        return out if vectorized else out.squeeze(axis=0)

    def predict_rows(self, observations: np.ndarray) -> np.ndarray:
        """``predict(o)`` for each row ``o`` of ``observations`` in turn, bit for bit, in
        one call: what playing many episodes in lockstep needs (``run_policies``).

        Not ``predict(observations)``: torch's matrix product of one row and of several
        rows do not add a dot product's terms in the same order, so a batch's logits differ
        from one row's in the last bits, and a near tie could pick another action.  So the
        network runs row by row (:meth:`logits_rows`), each row as ``predict`` runs it, and
        only the action's mode, per row by nature, runs on the batch (``logsumexp``,
        softmax and argmax along each row: ``tests/test_evaluate.py`` compares it with the
        one-row mode on random, tied and nearly tied logits for batches of 1 to 70 rows).
        Rows with logits that are not all finite go through ``predict`` one by one, which
        raises SB3's own error."""
        th = self._torch
        p = self.policy
        obs = np.asarray(observations).reshape((-1, *p.observation_space.shape))
        with th.no_grad():
            logits = self.logits_rows(obs)
            if not bool(th.isfinite(logits).all()):
                return np.stack([self.predict(o) for o in obs])
            if self.dims is None:
                actions = self._mode(logits)
            else:
                actions = th.stack([self._mode(part)
                                    for part in th.split(logits, self.dims, dim=1)], dim=1)
        return actions.cpu().numpy().reshape((-1, *p.action_space.shape))

    def logits_rows(self, obs: np.ndarray) -> Any:
        """The action logits of each row of ``obs`` (shaped ``(k, *observation shape)``), bit
        for bit as :meth:`predict` computes one row's.  Each row is copied into an array of
        its own first, as ``predict`` copies its observation: a row inside the batch would
        start at any multiple of 4 bytes, and a BLAS kernel may add in another order for
        another alignment.  Then the features, ``Linear`` and ``ReLU`` layers of SB3's
        ``MlpExtractor`` by their functional forms (which are their ``forward``) and any
        other module by its call, on the ``(1, n)`` shape ``predict`` gives them."""
        th = self._torch
        p = self.policy
        if p.training:  # what predict's set_training_mode(False) changes
            p.set_training_mode(False)
        with th.no_grad():
            return th.cat([self._logits(self._features(
                p, th.as_tensor(np.array(row)[None], device=self.device),
                p.pi_features_extractor)) for row in obs])

    def _logits(self, row: Any) -> Any:
        """``action_net(mlp_extractor.forward_actor(row))`` of one ``(1, n)`` row."""
        p = self.policy
        if self._layers is None:
            return p.action_net(p.mlp_extractor.forward_actor(row))
        f = self._torch.nn.functional
        for kind, module in self._layers:
            if kind == "linear":
                row = f.linear(row, module.weight, module.bias)
            elif kind == "relu":
                row = f.relu(row)
            else:
                row = module(row)
        return row

    def _mode(self, logits: Any) -> Any:
        """``Categorical(logits=logits).probs.argmax(dim=1)``, as torch computes it."""
        th = self._torch
        normalised = logits - logits.logsumexp(dim=-1, keepdim=True)
        return th.argmax(th.nn.functional.softmax(normalised, dim=-1), dim=1)


class ObsNormalizedPolicy:
    """An SB3 model behind the policy interface, with the VecNormalize
    observation statistics it was trained with (if any).

    ``action_shape`` (the env's ``MultiDiscrete`` nvec) decodes a model
    trained on the flattened ``Discrete(prod(nvec))`` action space (DQN).
    """

    kernel_pt_reclaim = True
    privileged = False

    def __init__(self, model: Any, normalize: Callable[[np.ndarray], np.ndarray] | None = None,
                 name: str = "model", action_shape: Sequence[int] | None = None) -> None:
        self.model = model
        self.normalize = normalize
        self.name = name
        self.action_shape = tuple(int(n) for n in action_shape) if action_shape else None
        self._mode = DeterministicActorCritic.of(model)

    def predict(self, observation: np.ndarray, state: Any = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        obs = self.normalize(observation) if self.normalize is not None else observation
        if deterministic and state is None and self._mode is not None:
            action = self._mode.predict(obs)
        else:
            action, state = self.model.predict(obs, state=state, episode_start=episode_start,
                                               deterministic=deterministic)
        if self.action_shape is not None:
            action = unflatten_action(action, self.action_shape)
        return action, state

    @property
    def predicts_rows(self) -> bool:
        """Whether :meth:`predict_rows` can decide for many observations in one call (a
        PPO or A2C model, :class:`DeterministicActorCritic`)."""
        return self._mode is not None

    def predict_rows(self, observations: np.ndarray) -> np.ndarray:
        """The deterministic action of each row of ``observations``, bit for bit what
        ``predict`` gives that row alone, in one call
        (:meth:`DeterministicActorCritic.predict_rows`); only when :attr:`predicts_rows`.
        ``normalize`` must work element by element, as ``VecNormalize``'s does, so that a
        batch is normalised as its rows are."""
        if self._mode is None:
            raise TypeError(f"{self.name}: this model decides one observation at a time "
                            "(predict_rows needs a PPO or A2C model's actor-critic policy)")
        obs = self.normalize(observations) if self.normalize is not None else observations
        action = self._mode.predict_rows(obs)
        if self.action_shape is not None:
            action = unflatten_action(action, self.action_shape)
        return action


def env_nvec(env_config: EnvConfig) -> list[int]:
    """The ``MultiDiscrete`` nvec of the env's actions.  Spaces depend on the
    env config only, so an env over a placeholder scenario tells them (the
    constructor builds no simulation)."""
    return [int(n) for n in PageTableReclaimEnv(ScenarioConfig(), env_config).action_space.nvec]


def as_policy(model: Any, normalizer: VecNormalize | None, env_config: EnvConfig,
              name: str) -> ObsNormalizedPolicy:
    """A trained (or training) model behind the policy interface, normalising
    observations with ``normalizer``'s statistics when it has them."""
    from gymnasium import spaces

    shape = env_nvec(env_config) if isinstance(model.action_space, spaces.Discrete) else None
    normalize = None
    if normalizer is not None and normalizer.norm_obs:
        stats = normalizer

        def normalize(obs: np.ndarray) -> np.ndarray:
            return np.asarray(stats.normalize_obs(obs))

    return ObsNormalizedPolicy(model, normalize, name, shape)
