"""rl-zoo's tuned settings for the benchmarked algorithms, and the one model builder every benchmark uses.

Each table maps an environment id to a dict laid out like an rl-zoo ``hyperparams/*.yml`` entry:
``n_envs``, ``n_timesteps``, ``normalize`` (wrap the env in ``VecNormalize``) and ``policy`` set up
the run; every other key goes to the algorithm's constructor unchanged.

Sources (rl-baselines3-zoo): ``hyperparams/trpo.yml`` (the MuJoCo entries are its "mujoco-defaults",
tuned on the -v4 tasks; we use them on -v5 with 3e5 steps) and ``hyperparams/ppo.yml`` (CartPole-v1
and Pendulum-v1 tuned; for MuJoCo, rl-zoo's untuned "mujoco-defaults": SB3's PPO defaults with
``normalize: true``).

Adding an algorithm is one line in ``ALGORITHMS``: the class as ``"module:Class"`` (imported on
first use) and the table it takes its hyperparameters from.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize


def linear_schedule(initial_value: float):
    """rl-zoo's ``lin_<value>``: decays linearly from ``initial_value`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial_value

    return schedule


_TRPO_MUJOCO: dict[str, Any] = {
    "normalize": True,
    "n_envs": 2,
    "n_timesteps": 300_000,
    "policy": "MlpPolicy",
    "batch_size": 128,
    "n_steps": 1024,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "sub_sampling_factor": 1,
    "cg_max_steps": 25,
    "cg_damping": 0.1,
    "n_critic_updates": 20,
    "learning_rate": 1e-3,
}

TRPO_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "normalize": False,
        "n_envs": 2,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 512,
        "batch_size": 512,
        "cg_damping": 1e-3,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "learning_rate": 1e-3,
        "n_critic_updates": 20,
    },
    "Pendulum-v1": {
        "normalize": False,
        "n_envs": 2,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 1024,
        "gamma": 0.9,
        "n_critic_updates": 15,
        "use_sde": True,
        "sde_sample_freq": 4,
    },
    "HalfCheetah-v5": {**_TRPO_MUJOCO, "target_kl": 0.04},
    "Hopper-v5": dict(_TRPO_MUJOCO),
}

# rl-zoo tuned the MuJoCo target_kl with sb3-contrib's KL, averaged over the action dimensions; ours
# keeps that meaning with kl_action_reduction="mean" (as our zoo files do), the same trust region.
# CartPole (discrete) and Pendulum (one dimension) are the same either way.
OUR_TRPO_HYPERPARAMS: dict[str, dict[str, Any]] = {
    env_id: {**entry, "kl_action_reduction": "mean"} if env_id.endswith("-v5") else dict(entry)
    for env_id, entry in TRPO_HYPERPARAMS.items()
}

_PPO_MUJOCO: dict[str, Any] = {"normalize": True, "n_envs": 1, "n_timesteps": 300_000, "policy": "MlpPolicy"}

PPO_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "normalize": False,
        "n_envs": 8,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": linear_schedule(1e-3),
        "clip_range": linear_schedule(0.2),
    },
    "Pendulum-v1": {
        "normalize": False,
        "n_envs": 4,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 1024,
        "gae_lambda": 0.95,
        "gamma": 0.9,
        "n_epochs": 10,
        "ent_coef": 0.0,
        "learning_rate": 1e-3,
        "clip_range": 0.2,
        "use_sde": True,
        "sde_sample_freq": 4,
    },
    "HalfCheetah-v5": dict(_PPO_MUJOCO),
    "Hopper-v5": dict(_PPO_MUJOCO),
}


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm of the benchmarks: its class, as ``"module:Class"``, and its hyperparameter table."""

    class_path: str
    hyperparams: dict[str, dict[str, Any]]

    def load_class(self) -> type[BaseAlgorithm]:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "sb3_trpo": AlgorithmSpec("sb3_trpo:TRPO", OUR_TRPO_HYPERPARAMS),
    "sb3_trpo_penalty": AlgorithmSpec("sb3_trpo:TRPOPenalty", OUR_TRPO_HYPERPARAMS),
    "sb3_contrib": AlgorithmSpec("sb3_contrib:TRPO", TRPO_HYPERPARAMS),
    "ppo": AlgorithmSpec("stable_baselines3:PPO", PPO_HYPERPARAMS),
}

# Keys of a table entry that set up the run; all the others are constructor arguments.
RUN_KEYS = ("n_envs", "n_timesteps", "normalize", "policy")


@dataclass(frozen=True)
class RunSettings:
    """One algorithm's settings on one environment, split into the run's set-up and the constructor's kwargs."""

    n_envs: int
    n_timesteps: int
    normalize: bool
    policy: str
    algo_kwargs: dict[str, Any]


def run_settings(algo: str, env_id: str) -> RunSettings:
    """The rl-zoo settings of ``algo`` on ``env_id``; a KeyError lists what is available."""
    if algo not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {algo!r}; available: {sorted(ALGORITHMS)}")
    table = ALGORITHMS[algo].hyperparams
    if env_id not in table:
        raise KeyError(f"no {algo} hyperparameters for {env_id!r}; available: {sorted(table)}")
    entry = table[env_id]
    algo_kwargs = {key: value for key, value in entry.items() if key not in RUN_KEYS}
    return RunSettings(
        n_envs=int(entry["n_envs"]),
        n_timesteps=int(entry["n_timesteps"]),
        normalize=bool(entry["normalize"]),
        policy=str(entry["policy"]),
        algo_kwargs=algo_kwargs,
    )


def describe_settings(algo: str, env_id: str) -> dict[str, Any]:
    """The settings as JSON-friendly values (schedules shown by name), to store beside the results."""
    settings = run_settings(algo, env_id)
    described: dict[str, Any] = {
        "class": ALGORITHMS[algo].class_path,
        "n_envs": settings.n_envs,
        "n_timesteps": settings.n_timesteps,
        "normalize": settings.normalize,
        "policy": settings.policy,
    }
    for key, value in settings.algo_kwargs.items():
        if callable(value):
            initial = value(1.0)
            value = f"lin_{initial:g}"
        described[key] = value
    return described


def make_training_env(env_id: str, n_envs: int, seed: int, normalize: bool, gamma: float) -> VecEnv:
    """``n_envs`` Monitor-wrapped copies in a DummyVecEnv, with rl-zoo's ``VecNormalize`` when ``normalize``."""
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        # rl-zoo normalises observations and rewards, discounting the reward statistics with the algorithm's gamma.
        env = VecNormalize(env, gamma=gamma)
    return env


def make_model(algo: str, env_id: str, seed: int, device: str = "cpu", verbose: int = 0, **overrides: Any) -> BaseAlgorithm:
    """Build ``algo`` on ``env_id`` with rl-zoo's settings, seeded with ``seed``.

    ``overrides`` replace constructor arguments of the table (not ``n_envs`` or ``normalize``).
    The number of training steps is ``run_settings(algo, env_id).n_timesteps``.
    """
    settings = run_settings(algo, env_id)
    kwargs = {**settings.algo_kwargs, **overrides}
    gamma = float(kwargs.get("gamma", 0.99))
    env = make_training_env(env_id, settings.n_envs, seed, settings.normalize, gamma)
    algorithm_class = ALGORITHMS[algo].load_class()
    return algorithm_class(settings.policy, env, seed=seed, device=device, verbose=verbose, **kwargs)
