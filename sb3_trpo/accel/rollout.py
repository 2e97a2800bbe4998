"""Rollouts with SB3's MLP policy evaluated in NumPy: the same loop, draws and callbacks as SB3's.

While collecting, SB3 evaluates the policy once per environment step on a handful of observations;
for a small MLP, torch's per-call overhead then dominates. Here:

- :class:`NumpyActorCritic` computes what ``ActorCriticPolicy.forward`` and ``predict_values``
  return, from an :class:`~sb3_trpo.accel.spec.MLPSpec`, reading the parameters as NumPy views (no
  copy). The random stream is the policy's own: Gaussian noise drawn with
  ``torch.empty(shape).normal_()`` as ``Normal.rsample`` draws it, categorical samples with
  ``torch.multinomial`` as ``Categorical.sample`` does, so a seeded run consumes and gets the same
  random numbers; the arithmetic is float32 with NumPy's kernels, equal to float32 rounding.
- :func:`collect_rollouts_numpy` is SB3's ``OnPolicyAlgorithm.collect_rollouts`` with the policy calls
  replaced and nothing else changed. ``tests/test_rollout.py`` holds the SB3 source it follows and
  fails when the installed SB3's loop no longer matches it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch as th
from gymnasium import spaces

from sb3_trpo.accel.spec import CATEGORICAL, GAUSSIAN, MLP, MLPSpec
from sb3_trpo.common.backends import RolloutBackend

if TYPE_CHECKING:
    from stable_baselines3.common.buffers import RolloutBuffer
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

Array = np.ndarray
LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant of torch's Normal.log_prob


def rollout_unsupported(spec: MLPSpec | str) -> str | None:
    """Why :class:`NumpyActorCritic` cannot stand in for the policy of ``spec``, or None if it can."""
    if isinstance(spec, str):
        return spec
    if spec.distribution not in (GAUSSIAN, CATEGORICAL):
        return f"the action distribution is a {spec.distribution}, not a diagonal Gaussian or categorical"
    if spec.device.type != "cpu":
        return f"the policy is on {spec.device}, not the CPU"
    if spec.dtype != th.float32:
        return "the policy's parameters are not all float32"
    return None


class NumpyMLP:
    """An :class:`~sb3_trpo.accel.spec.MLP` as NumPy products on views of its current parameters."""

    def __init__(self, mlp: MLP):
        self.layers = [
            (linear.weight.detach().numpy().T, linear.bias.detach().numpy(), activation.numpy_fn())
            for linear, activation in mlp.hidden
        ]
        self.output = (mlp.output.weight.detach().numpy().T, mlp.output.bias.detach().numpy())

    def __call__(self, x: Array) -> Array:
        for weight_t, bias, activation in self.layers:
            x = x @ weight_t
            x += bias
            x = activation(x)
        weight_t, bias = self.output
        x = x @ weight_t
        x += bias
        return x


class NumpyActorCritic:
    """SB3's MLP ``ActorCriticPolicy`` (diagonal Gaussian or categorical actions) as NumPy products.

    Build it at the start of a rollout: it reads the parameters as they are then (views, valid while the
    parameters are updated in place, as everything in this package does).
    """

    def __init__(self, spec: MLPSpec):
        reason = rollout_unsupported(spec)
        if reason is not None:
            raise ValueError(f"this policy has no NumPy counterpart: {reason}")
        policy = spec.policy
        self.action_shape: tuple[int, ...] = policy.action_space.shape  # type: ignore[assignment]
        self.one_hot_size, self.scale_images = spec.one_hot_size, spec.scale_images
        self.actor, self.critic = NumpyMLP(spec.actor), NumpyMLP(spec.critic)
        self.gaussian = spec.distribution == GAUSSIAN
        if spec.log_std is not None:
            std = spec.log_std.detach().exp()  # the scale of SB3's Normal, as its log_prob computes with it
            self.std = std.numpy()
            self.variance = (std**2).numpy()
            self.log_scale = std.log().numpy()

    @classmethod
    def from_policy(cls, policy: object) -> NumpyActorCritic:
        """The NumPy counterpart of ``policy``; a ``ValueError`` says why where it has none."""
        from sb3_trpo.accel.spec import recognise

        spec = recognise(policy)  # type: ignore[arg-type]
        if isinstance(spec, str):
            raise ValueError(f"this policy has no NumPy counterpart: {spec}")
        return cls(spec)

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


class NumpyRollouts(RolloutBackend):
    """The rollout backend for SB3's MLP policy on the CPU: :func:`collect_rollouts_numpy`."""

    name = "numpy"

    def __init__(self, spec: MLPSpec) -> None:
        self.spec = spec

    def collect(
        self, algorithm: OnPolicyAlgorithm, env: VecEnv, callback: BaseCallback, buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        # Views of the parameters as they are now: built per rollout, they follow a policy moved to new storage.
        return collect_rollouts_numpy(algorithm, NumpyActorCritic(self.spec), env, callback, buffer, n_rollout_steps)
