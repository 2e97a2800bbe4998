"""Lean rollout collection: SB3's standard MLP actor-critic evaluated with NumPy while collecting.

Collecting a rollout calls the policy once per step on a handful of observations (one per
environment). For SB3's small MLPs torch's per-call overhead (module dispatch, ``Distribution``
objects, tensor conversions) is several times the arithmetic; the same layers as NumPy matrix
products cost little more than the arithmetic (``benchmarks/speed.py`` measures the rollouts of both).

Two layers, as in the rest of ``common/``:

- :class:`NumpyActorCritic` computes what ``ActorCriticPolicy.forward`` returns (actions, values,
  log-probabilities) and what ``predict_values`` returns, reading the policy's parameters as NumPy
  views (no copy; valid while the parameters do not change, i.e. during one rollout). The random
  stream is the policy's own: the Gaussian noise is drawn with ``torch.empty(shape).normal_()`` as
  ``Normal.rsample`` draws it, categorical samples with ``torch.multinomial`` as
  ``Categorical.sample`` does, so a seeded run consumes and gets the same random numbers. The
  arithmetic is float32 as in torch, with NumPy's kernels: results agree to float32 rounding, not bit
  for bit.
- :func:`collect_rollouts_numpy` is SB3's ``OnPolicyAlgorithm.collect_rollouts`` with the policy calls
  replaced and nothing else changed: callbacks (with the same local variables, ``values`` and
  ``log_probs`` as tensors), the bootstrap of truncated episodes, episode info, action clipping, the
  rollout buffer's ``add`` and ``compute_returns_and_advantage``. The environment, ``VecNormalize``
  included, is untouched.

:func:`numpy_actor_critic_unsupported` says why a policy has no NumPy counterpart (gSDE, other
distributions, custom networks or features extractors, a GPU, hooks, ...); the algorithm then uses
SB3's loop. ``tests/test_rollout.py`` checks both against SB3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn

from sb3_trpo.common.critic import has_module_hooks, is_plain_flatten_extractor

if TYPE_CHECKING:
    from stable_baselines3.common.buffers import RolloutBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

Array = np.ndarray
NumpyActivation = Callable[[Array], Array]
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant of torch's Normal.log_prob


def _numpy_activation(module: nn.Module) -> NumpyActivation | None:
    """The NumPy function an activation module computes (float32 in, float32 out), or None if not covered."""
    kind = type(module)
    if kind is nn.Tanh:
        return np.tanh
    if kind is nn.ReLU:
        return lambda h: np.maximum(h, 0)
    if kind is nn.LeakyReLU:
        slope = np.float32(module.negative_slope)  # type: ignore[arg-type]
        return lambda h: np.where(h > 0, h, h * slope)
    if kind is nn.ELU:
        alpha = np.float32(module.alpha)  # type: ignore[arg-type]
        return lambda h: np.where(h > 0, h, alpha * np.expm1(h))
    return None


class NumpyMLP:
    """``x -> φ_L(… φ_1(x W_1ᵀ + b_1) …)``: ``nn.Linear`` layers, each followed by an activation or nothing."""

    def __init__(self, layers: list[tuple[nn.Linear, NumpyActivation | None]]):
        # Views of the parameters: the products see the current weights without copying them.
        self.layers = [(layer.weight.detach().numpy().T, _bias(layer), activation) for layer, activation in layers]

    def __call__(self, x: Array) -> Array:
        for weight_t, bias, activation in self.layers:
            x = x @ weight_t
            if bias is not None:
                x += bias
            if activation is not None:
                x = activation(x)
        return x


def _bias(layer: nn.Linear) -> Array | None:
    return None if layer.bias is None else layer.bias.detach().numpy()


class NumpyActorCritic:
    """SB3's MLP ``ActorCriticPolicy`` (diagonal Gaussian or categorical actions) as NumPy products.

    Build it with :meth:`from_policy` at the start of a rollout; it reads the parameters as they are
    then (views, so they must not be replaced meanwhile, which a rollout does not do).
    """

    def __init__(self, policy: ActorCriticPolicy):
        reason = numpy_actor_critic_unsupported(policy)
        if reason is not None:
            raise ValueError(f"this policy has no NumPy counterpart: {reason}")
        obs_space = policy.observation_space
        self.action_shape: tuple[int, ...] = policy.action_space.shape  # type: ignore[assignment]
        self.one_hot_size = int(obs_space.n) if isinstance(obs_space, spaces.Discrete) else 0
        self.scale_images = bool(policy.normalize_images and is_image_space(obs_space))
        mlp_extractor = policy.mlp_extractor
        self.actor = NumpyMLP([*_sequential_layers(mlp_extractor.policy_net), (policy.action_net, None)])  # type: ignore[list-item]
        self.critic = NumpyMLP([*_sequential_layers(mlp_extractor.value_net), (policy.value_net, None)])
        self.gaussian = type(policy.action_dist) is DiagGaussianDistribution
        if self.gaussian:
            log_std = policy.log_std.detach()
            std = log_std.exp()  # the scale of SB3's Normal, as its log_prob computes with it
            self.std = std.numpy()
            self.variance = (std**2).numpy()
            self.log_scale = std.log().numpy()

    @classmethod
    def from_policy(cls, policy: BasePolicy) -> NumpyActorCritic | None:
        """The NumPy counterpart of ``policy``, or None where :func:`numpy_actor_critic_unsupported` says why not."""
        if numpy_actor_critic_unsupported(policy) is not None:
            return None
        assert isinstance(policy, ActorCriticPolicy)  # numpy_actor_critic_unsupported checks it
        return cls(policy)

    def features(self, observations: Array) -> Array:
        """SB3's ``preprocess_obs`` then ``FlattenExtractor``: float32, one row per environment."""
        if self.one_hot_size:
            flat = np.asarray(observations).reshape(-1).astype(np.int64)
            return np.eye(self.one_hot_size, dtype=np.float32)[flat]
        x = np.asarray(observations, dtype=np.float32)
        if self.scale_images:
            x = x / np.float32(255.0)
        return x.reshape(x.shape[0], -1)

    def forward(self, observations: Array) -> tuple[Array, Array, Array]:
        """``policy(obs)``: sampled actions, values ``(n, 1)`` and log-probabilities ``(n,)``, in float32."""
        x = self.features(observations)
        values = self.critic(x)
        logits_or_mean = self.actor(x)
        if self.gaussian:
            mean = logits_or_mean
            noise = th.empty(mean.shape).normal_().numpy()  # Normal.rsample's draw: loc + ε · scale
            actions = mean + noise * self.std
            log_prob = (-((actions - mean) ** 2) / (2 * self.variance) - self.log_scale - np.float32(LOG_SQRT_2PI)).sum(axis=1)
            return actions.reshape((-1, *self.action_shape)), values, log_prob
        # Categorical(logits=...) normalises the logits, samples with multinomial on their softmax.
        logits = logits_or_mean - _logsumexp(logits_or_mean)
        probs = np.exp(logits)
        actions = th.multinomial(th.from_numpy(probs), 1, True)[:, 0].numpy()
        return actions, values, np.take_along_axis(logits, actions[:, None], axis=1)[:, 0]

    def predict_values(self, observations: Array) -> Array:
        """``policy.predict_values(obs)``: ``(n, 1)`` float32."""
        return self.critic(self.features(observations))


def _logsumexp(x: Array) -> Array:
    peak = x.max(axis=1, keepdims=True)
    return peak + np.log(np.exp(x - peak).sum(axis=1, keepdims=True))


def _sequential_layers(sequential: nn.Module) -> list[tuple[nn.Linear, NumpyActivation | None]]:
    """``nn.Sequential(Linear, act, Linear, act, ...)`` as (layer, activation) pairs; raises if it is not one."""
    modules = list(sequential)  # type: ignore[call-overload]
    pairs = []
    for index in range(0, len(modules), 2):
        activation = _numpy_activation(modules[index + 1]) if index + 1 < len(modules) else None
        pairs.append((modules[index], activation))
    return pairs


def _mlp_unsupported(name: str, sequential: nn.Module) -> str | None:
    if type(sequential) is not nn.Sequential:
        return f"{name} is not an nn.Sequential"
    modules = list(sequential)
    if len(modules) % 2 or not all(type(m) is nn.Linear for m in modules[0::2]):
        return f"{name} is not a sequence of (nn.Linear, activation) pairs"
    if any(_numpy_activation(m) is None for m in modules[1::2]):
        return f"{name} has an activation other than Tanh, ReLU, LeakyReLU or ELU"
    return None


def numpy_actor_critic_unsupported(policy: nn.Module) -> str | None:
    """Why :class:`NumpyActorCritic` cannot stand in for ``policy``, or None if it can.

    Covered: SB3's MLP actor-critic (see :func:`mlp_actor_critic_unsupported`) on the CPU, with
    float32 parameters.
    """
    reason = mlp_actor_critic_unsupported(policy)
    if reason is not None:
        return reason
    if policy.device.type != "cpu":
        return f"the policy is on {policy.device}, not the CPU"
    if not all(p.dtype == th.float32 for p in policy.parameters()):
        return "the policy's parameters are not all float32"
    return None


def mlp_actor_critic_unsupported(policy: nn.Module) -> str | None:
    """Why ``policy`` is not SB3's standard MLP actor-critic, or None if it is.

    That is: an SB3 ``ActorCriticPolicy`` whose ``forward``, ``predict_values`` and the methods they
    call are SB3's own, without module hooks; a ``Box`` (image normalisation included) or
    ``Discrete`` observation space read by a parameter-free ``FlattenExtractor`` (shared or not);
    ``MlpExtractor``'s ``policy_net`` and ``value_net`` of ``(nn.Linear, Tanh | ReLU | LeakyReLU | ELU)``
    pairs, ``action_net`` and ``value_net`` linear; and a diagonal Gaussian (without gSDE or
    squashing) or categorical action distribution.
    """
    if not isinstance(policy, ActorCriticPolicy):
        return f"the policy is a {type(policy).__name__}, not an ActorCriticPolicy"
    kind = type(policy)
    for method in ("forward", "predict_values", "extract_features", "_get_action_dist_from_latent"):
        if getattr(kind, method) is not getattr(ActorCriticPolicy, method):
            return f"{kind.__name__} overrides {method}"
    if kind.obs_to_tensor is not BasePolicy.obs_to_tensor:
        return f"{kind.__name__} overrides obs_to_tensor"
    if getattr(super(ActorCriticPolicy, policy).extract_features, "__func__", None) is not BaseModel.extract_features:
        return "the policy's extract_features is not BaseModel's"
    if not isinstance(policy.observation_space, (spaces.Box, spaces.Discrete)):
        return f"the observation space is a {type(policy.observation_space).__name__}, not a Box or Discrete"
    for extractor in (policy.pi_features_extractor, policy.vf_features_extractor):
        if not is_plain_flatten_extractor(extractor):
            return f"the features extractor is a {type(extractor).__name__}, not a parameter-free FlattenExtractor"
    if type(policy.mlp_extractor) is not MlpExtractor:
        return f"the mlp_extractor is a {type(policy.mlp_extractor).__name__}, not SB3's MlpExtractor"
    for name, sequential in (("policy_net", policy.mlp_extractor.policy_net), ("value_net", policy.mlp_extractor.value_net)):
        reason = _mlp_unsupported(f"mlp_extractor.{name}", sequential)
        if reason is not None:
            return reason
    if type(policy.action_net) is not nn.Linear or type(policy.value_net) is not nn.Linear:
        return "action_net or value_net is not an nn.Linear"
    if type(policy.action_dist) not in (DiagGaussianDistribution, CategoricalDistribution):
        return f"the action distribution is a {type(policy.action_dist).__name__}, not a diagonal Gaussian or categorical"
    if has_module_hooks([policy]):
        return "the policy has module hooks"
    return None


def collect_rollouts_numpy(
    self: OnPolicyAlgorithm,  # named as in SB3's method, so that callbacks see the same locals
    actor_critic: NumpyActorCritic,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """``OnPolicyAlgorithm.collect_rollouts`` with ``actor_critic`` standing in for ``self.policy``.

    Line for line SB3's loop (stable-baselines3 2.x): the same callback calls with the same local
    variables, the same bootstrap of truncated episodes (``rewards += γ V(terminal_observation)``),
    the same buffer calls; only the policy's forward passes are NumPy products.
    """
    assert self._last_obs is not None, "No previous observation was provided"
    self.policy.set_training_mode(False)

    n_steps = 0
    rollout_buffer.reset()
    callback.on_rollout_start()
    gamma = np.float32(self.gamma)
    clip_low, clip_high = (
        (self.action_space.low, self.action_space.high) if isinstance(self.action_space, spaces.Box) else (None, None)
    )

    while n_steps < n_rollout_steps:
        obs_tensor = th.from_numpy(np.asarray(self._last_obs))
        actions, values_np, log_probs_np = actor_critic.forward(self._last_obs)  # type: ignore[arg-type]
        values, log_probs = th.from_numpy(values_np), th.from_numpy(log_probs_np)
        clipped_actions = actions if clip_low is None else np.clip(actions, clip_low, clip_high)

        new_obs, rewards, dones, infos = env.step(clipped_actions)

        self.num_timesteps += env.num_envs

        # Give access to local variables
        callback.update_locals(locals())
        if not callback.on_step():
            return False

        self._update_info_buffer(infos, dones)
        n_steps += 1

        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.reshape(-1, 1)

        # Bootstrap truncated episodes with the value of their last observation (SB3 issue #633).
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                terminal_obs = np.asarray(infos[idx]["terminal_observation"])[None]
                terminal_value = actor_critic.predict_values(terminal_obs)[0]
                rewards[idx] += gamma * terminal_value[0]

        rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = dones

    values = th.from_numpy(actor_critic.predict_values(new_obs))  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

    callback.update_locals(locals())
    callback.on_rollout_end()
    return True
