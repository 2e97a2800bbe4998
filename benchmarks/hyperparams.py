"""The benchmarks' one model builder: (algorithm, environment) -> the zoo file's entry -> the model.

Hyperparameters live in zoo files only, nowhere in ``benchmarks/``:

- our algorithms: ``sb3_trpo/zoo/hyperparams/{trpo,trpo_penalty,trpo_lstm,trpo_penalty_lstm}.yml``, the files
  ``python -m sb3_trpo.zoo train`` reads;
- sb3-contrib's TRPO: our ``trpo.yml`` entry (rl-zoo's ``trpo.yml`` with the -v5 tasks added) without the keys
  that only our TRPO takes (``kl_action_reduction``: sb3-contrib's KL is already the mean over action dimensions);
- SB3's PPO and sb3-contrib's RecurrentPPO: ``ppo.yml`` and ``ppo_lstm.yml`` as the installed rl_zoo3 ships them.

An entry is read as rl_zoo3 reads it (``ExperimentManager.read_hyperparameters`` and ``_preprocess_hyperparams``):
YAML anchors and ``<<:`` merges, ``!!float``, ``lin_<x>`` schedules, ``normalize`` (``true`` or a dict or string of
``VecNormalize`` arguments, whose ``gamma`` is the algorithm's), ``policy_kwargs`` strings evaluated with ``nn`` in
scope, ``n_envs`` (default 1), ``n_timesteps`` and ``policy``. Where rl_zoo3 differs: a task without an entry is an
error here (rl_zoo3 falls back to the untuned ``default`` entry), and a -v5 MuJoCo task without one takes its -v4
entry, as our files do for theirs.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize


@dataclass(frozen=True)
class Algorithm:
    """An algorithm of the benchmarks: its class and zoo file (``"package:file.yml"``, the package's ``hyperparams/``).

    ``variant`` holds the constructor arguments that make this algorithm what it is (not a task's hyperparameters);
    ``drop_unsupported`` drops the entry's keys the class does not take (sb3-contrib's TRPO reading our file).
    """

    class_path: str
    zoo_file: str
    variant: dict[str, Any] = field(default_factory=dict)
    drop_unsupported: bool = False

    def load_class(self) -> type[BaseAlgorithm]:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def zoo_path(self) -> Path:
        package, name = self.zoo_file.split(":")
        locations = importlib.util.find_spec(package).submodule_search_locations  # no import: rl_zoo3's is slow
        folder = "zoo/hyperparams" if package == "sb3_trpo" else "hyperparams"
        return Path(next(iter(locations))) / folder / name


ALGORITHMS: dict[str, Algorithm] = {
    "sb3_trpo": Algorithm("sb3_trpo:TRPO", "sb3_trpo:trpo.yml"),
    "sb3_trpo_penalty": Algorithm("sb3_trpo:TRPOPenalty", "sb3_trpo:trpo_penalty.yml"),
    "sb3_trpo_penalty_first_order": Algorithm(
        "sb3_trpo:TRPOPenalty", "sb3_trpo:trpo_penalty.yml", {"policy_optimizer": "first_order"}
    ),
    "sb3_contrib": Algorithm("sb3_contrib:TRPO", "sb3_trpo:trpo.yml", drop_unsupported=True),
    "ppo": Algorithm("stable_baselines3:PPO", "rl_zoo3:ppo.yml"),
    "sb3_trpo_lstm": Algorithm("sb3_trpo:RecurrentTRPO", "sb3_trpo:trpo_lstm.yml"),
    "sb3_trpo_penalty_lstm": Algorithm("sb3_trpo:RecurrentTRPOPenalty", "sb3_trpo:trpo_penalty_lstm.yml"),
    "recurrent_ppo": Algorithm("sb3_contrib:RecurrentPPO", "rl_zoo3:ppo_lstm.yml"),
}
# The lag campaign: TRPO on batches ``lag`` updates old (``lagged.py``), the ratio against β (the paper), against
# π_θk as if the batch were on-policy (the control), or against β truncated at ρ̄ = 1 (IMPALA's).
LAG_RATIOS: dict[str, dict[str, Any]] = {
    "behaviour": {"importance_ratio": "behaviour"},
    "current": {"importance_ratio": "current"},
    "truncated": {"importance_ratio": "behaviour", "ratio_truncation": 1.0},
}
for _lag in (1, 2, 4):
    for _ratio, _options in LAG_RATIOS.items():
        ALGORITHMS[f"sb3_trpo_lag{_lag}_{_ratio}"] = Algorithm(
            "lagged:FixedLagTRPO", "sb3_trpo:trpo.yml", {"policy_lag": _lag, **_options}
        )

# Diagnostic variants of a task: its environment with other constructor arguments, under an id of their own, with
# the task's zoo entry. AntNoContactObs-v5: Ant-v5's reward (the contact cost included) with Ant-v4's observation.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "AntNoContactObs-v5": ("Ant-v5", {"include_cfrc_ext_in_observation": False}),
}

# Keys of an entry that set up the run; all the others are constructor arguments.
RUN_KEYS = ("n_envs", "n_timesteps", "normalize", "policy")
# Keys of rl_zoo3's entries that these benchmarks do not implement: an entry with one is refused, not half-read.
_UNSUPPORTED_KEYS = ("env_wrapper", "vec_env_wrapper", "frame_stack", "callback", "env_kwargs", "monitor_kwargs")


def linear_schedule(initial_value: float):
    """rl-zoo's ``lin_<value>``: decays linearly from ``initial_value`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial_value

    return schedule


def zoo_entry(algo: str, env_id: str) -> tuple[str, dict[str, Any]]:
    """The key and the entry (merges resolved) of ``env_id`` in ``algo``'s zoo file; a KeyError names the file."""
    if algo not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {algo!r}; available: {sorted(ALGORITHMS)}")
    path = ALGORITHMS[algo].zoo_path
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    env_id = VARIANTS.get(env_id, (env_id, {}))[0]
    candidates = [env_id] + ([env_id[:-3] + "-v4"] if env_id.endswith("-v5") else [])
    for key in candidates:
        if key in table:
            return key, dict(table[key])
    raise KeyError(f"no entry for {env_id!r} in {path} ({algo}); add one there, the one place hyperparameters live")


@dataclass(frozen=True)
class RunSettings:
    """An entry split into the run's set-up and the constructor's arguments."""

    n_envs: int
    n_timesteps: int
    normalize: dict[str, Any] | None  # VecNormalize's arguments, None without normalisation
    policy: str
    algo_kwargs: dict[str, Any]
    described: dict[str, Any]  # JSON-friendly: the entry as written, what a result stores


def run_settings(algo: str, env_id: str) -> RunSettings:
    """``algo``'s settings on ``env_id``, read from its zoo file as rl_zoo3 reads them."""
    spec = ALGORITHMS[algo]
    key, kwargs = zoo_entry(algo, env_id)
    refused = [name for name in _UNSUPPORTED_KEYS if name in kwargs]
    if refused:
        raise NotImplementedError(f"{spec.zoo_path} [{key}]: {refused} are not supported by the benchmarks")
    if spec.drop_unsupported:
        accepted = inspect.signature(spec.load_class()).parameters
        kwargs = {name: value for name, value in kwargs.items() if name in accepted or name in RUN_KEYS}
    kwargs.update(spec.variant)
    return settings_of({"class": spec.class_path, "zoo_file": f"{spec.zoo_file} [{key}]", **kwargs})


def settings_of(described: dict[str, Any]) -> RunSettings:
    """The settings a run stored (``RunSettings.described``: its class, zoo entry and the entry's keys) made usable.

    ``run_settings`` reads them from the zoo file; a result's ``settings`` rebuild the run as it was, whatever the
    zoo file says now (``sources.py`` trains them under the source they ran with).
    """
    import torch as th
    from torch import nn

    described = dict(described)
    kwargs = {name: value for name, value in described.items() if name not in ("class", "zoo_file")}
    n_envs = int(kwargs.pop("n_envs", 1))
    n_timesteps = int(kwargs.pop("n_timesteps"))
    policy = str(kwargs.pop("policy"))
    normalize = kwargs.pop("normalize", False)
    if isinstance(normalize, str):
        normalize = eval(normalize)
    if normalize:  # True, or VecNormalize's arguments; {} (normalise, with its defaults) is not None
        normalize = dict(normalize) if isinstance(normalize, dict) else {}
        if "gamma" in kwargs:  # rl_zoo3 discounts the reward statistics with the algorithm's gamma
            normalize["gamma"] = kwargs["gamma"]
    else:
        normalize = None
    for name in ("learning_rate", "clip_range", "clip_range_vf"):
        if isinstance(kwargs.get(name), str):  # "lin_0.001"
            kwargs[name] = linear_schedule(float(kwargs[name].split("_")[1]))
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = eval(kwargs["policy_kwargs"], {"nn": nn, "th": th})
    described["n_timesteps"] = n_timesteps  # an int, where YAML's !!float 1e6 reads as a float
    return RunSettings(n_envs, n_timesteps, normalize, policy, kwargs, described)


def describe_settings(algo: str, env_id: str) -> dict[str, Any]:
    """The settings as written in the zoo file (schedules and ``policy_kwargs`` as strings), to store with a result."""
    return run_settings(algo, env_id).described


def make_env(env_id: str, n_envs: int, seed: int, normalize: dict[str, Any] | None, training: bool = True) -> VecEnv:
    """``n_envs`` Monitor-wrapped copies in a DummyVecEnv, in ``VecNormalize`` when ``normalize`` (rl_zoo3's env).

    An evaluation env (``training=False``) keeps its statistics frozen and returns the environment's own rewards.
    """
    import gymnasium

    if env_id in VARIANTS and env_id not in gymnasium.registry:
        import dataclasses

        base, changes = VARIANTS[env_id]
        spec = gymnasium.spec(base)  # everything of the task's registration but its id, and its arguments changed
        fields = {field.name: getattr(spec, field.name) for field in dataclasses.fields(spec) if field.init}
        gymnasium.register(**{**fields, "id": env_id, "kwargs": {**spec.kwargs, **changes}})
    if env_id not in gymnasium.registry:
        import rl_zoo3.import_envs  # noqa: F401  (registers rl-zoo's tasks, e.g. CartPoleNoVel-v1)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize is not None:
        frozen = {"training": False, "norm_reward": False, "norm_obs": normalize.get("norm_obs", True)}
        env = VecNormalize(env, **(normalize if training else frozen))
    return env


def make_model(
    algo: str,
    env_id: str,
    seed: int,
    device: str = "cpu",
    verbose: int = 0,
    n_envs: int | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """Build ``algo`` on ``env_id`` with its zoo settings, seeded with ``seed``.

    ``n_envs`` replaces the entry's (a data-parallel rank's share of them, say); ``overrides`` replace its
    constructor arguments (not ``normalize``). The number of training steps is
    ``run_settings(algo, env_id).n_timesteps``.
    """
    settings = run_settings(algo, env_id)
    env = make_env(env_id, settings.n_envs if n_envs is None else n_envs, seed, settings.normalize)
    kwargs = {**settings.algo_kwargs, **overrides}
    return ALGORITHMS[algo].load_class()(settings.policy, env, seed=seed, device=device, verbose=verbose, **kwargs)
