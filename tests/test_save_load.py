"""save() / load(): predictions, hyperparameters, counters, optimiser state, resuming, sb3-contrib's models."""

import numpy as np
import pytest
import sb3_contrib
import torch as th
from stable_baselines3.common.envs import (
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.utils import obs_as_tensor

from sb3_trpo import TRPO

N_STEPS = 64
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}}

# name: (policy, environment factory, extra constructor arguments)
VARIANTS = {
    "box": ("MlpPolicy", lambda: IdentityEnvBox(ep_length=20), {}),
    "gsde": ("MlpPolicy", lambda: IdentityEnvBox(ep_length=20), {"use_sde": True, "sde_sample_freq": 4}),
    "discrete": ("MlpPolicy", lambda: IdentityEnv(3, ep_length=20), {}),
    "multi_discrete": ("MlpPolicy", lambda: IdentityEnvMultiDiscrete(3, ep_length=20), {}),
    "multi_binary": ("MlpPolicy", lambda: IdentityEnvMultiBinary(3, ep_length=20), {}),
    "dict_obs": (
        "MultiInputPolicy",
        lambda: SimpleMultiObsEnv(random_start=False),
        {"policy_kwargs": {"net_arch": [16], "features_extractor_kwargs": {"cnn_output_dim": 8}}},
    ),
}

# Every constructor argument TRPO stores, set away from its default.
HYPERPARAMETERS = {
    "n_steps": 32,
    "batch_size": 16,
    "gamma": 0.95,
    "gae_lambda": 0.9,
    "cg_max_steps": 7,
    "cg_damping": 0.05,
    "cg_residual_tol": 1e-8,
    "line_search_shrinking_factor": 0.6,
    "line_search_max_iter": 5,
    "n_critic_updates": 3,
    "normalize_advantage": False,
    "target_kl": 0.02,
    "sub_sampling_factor": 2,
    "kl_constraint": "max",
    "fisher_method": "autograd",
    "kl_action_reduction": "mean",
    "rollout_method": "sb3",
    "use_sde": True,
    "sde_sample_freq": 4,
}


def make_model(variant: str, seed: int = 0, **kwargs) -> TRPO:
    policy, make_env, variant_kwargs = VARIANTS[variant]
    return TRPO(policy, make_env(), seed=seed, **{**SMALL, **variant_kwargs, **kwargs})


def make_seeded_env(variant: str, seed: int):
    """The identity environments draw their states from their action space, which ``reset(seed=...)`` leaves alone."""
    env = VARIANTS[variant][1]()
    env.action_space.seed(seed)
    return env


def sample_observations(model, n: int = 32):
    space = model.observation_space
    space.seed(123)
    samples = [space.sample() for _ in range(n)]
    if isinstance(samples[0], dict):
        return {key: np.stack([sample[key] for sample in samples]) for key in samples[0]}
    return np.stack(samples)


def collect_rollout(model: TRPO) -> None:
    _, callback = model._setup_learn(model.n_steps, reset_num_timesteps=False)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def assert_same_state_dict(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        if isinstance(value, dict):
            assert_same_state_dict(value, second[name])
        elif isinstance(value, th.Tensor):
            assert th.equal(value, second[name]), name
        else:
            assert value == second[name], name


def assert_same_predictions(first, second, obs) -> None:
    """Same deterministic actions, same sampled actions under the same seed, same log-probabilities."""
    np.testing.assert_array_equal(first.predict(obs, deterministic=True)[0], second.predict(obs, deterministic=True)[0])
    sampled = []
    for model in (first, second):
        th.manual_seed(7)
        if model.use_sde:  # gSDE samples with its exploration matrix: draw it from the same seed
            model.policy.reset_noise()
        sampled.append(model.predict(obs, deterministic=False)[0])
    np.testing.assert_array_equal(*sampled)
    obs_tensor = obs_as_tensor(obs, first.device)
    actions = th.as_tensor(sampled[0]).float()
    if actions.dim() == 1:
        actions = actions.long()
    with th.no_grad():
        values = [model.policy.evaluate_actions(obs_tensor, actions) for model in (first, second)]
    for a, b in zip(*values, strict=True):  # values, log-probabilities, entropies
        assert th.equal(a, b)


# ---------------------------------------------------------------- predictions and state


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_gives_identical_predictions(variant, tmp_path):
    model = make_model(variant)
    model.learn(2 * N_STEPS)
    model.save(tmp_path / "model.zip")
    loaded = TRPO.load(tmp_path / "model.zip")
    assert type(loaded.policy) is type(model.policy)
    assert_same_state_dict(model.policy.state_dict(), loaded.policy.state_dict())
    assert_same_predictions(model, loaded, sample_observations(model))


def test_hyperparameters_and_counters_survive(tmp_path):
    model = TRPO("MlpPolicy", IdentityEnvBox(ep_length=20), learning_rate=3e-4, stats_window_size=7, seed=0, **HYPERPARAMETERS)
    model.learn(2 * HYPERPARAMETERS["n_steps"])
    # One update with non-finite advantages and returns: both counters move off zero.
    collect_rollout(model)
    model.rollout_buffer.advantages[0] = np.nan
    model.rollout_buffer.returns[0] = np.nan
    with pytest.warns(RuntimeWarning):
        model.train()
    assert model.n_skipped_policy_updates == 1
    assert model.n_skipped_critic_steps == 1
    model.save(tmp_path / "model.zip")

    for env in (None, IdentityEnvBox(ep_length=20)):
        loaded = TRPO.load(tmp_path / "model.zip", env=env)
        for name, value in HYPERPARAMETERS.items():
            assert getattr(loaded, name) == value, name
        assert loaded.learning_rate == 3e-4
        assert loaded._stats_window_size == 7
        for counter in ("n_skipped_policy_updates", "n_skipped_critic_steps", "_n_updates", "num_timesteps"):
            assert getattr(loaded, counter) == getattr(model, counter), counter
        assert loaded._n_updates == 3

    # The counters are state: they go on counting from the saved values.
    collect_rollout(loaded)
    loaded.rollout_buffer.advantages[0] = np.nan
    with pytest.warns(RuntimeWarning, match="advantages"):
        loaded.train()
    assert loaded.n_skipped_policy_updates == 2
    assert loaded.logger.name_to_value["train/skipped_policy_updates"] == 2
    assert loaded.n_skipped_critic_steps == 1


def test_critic_optimizer_state_survives(tmp_path):
    model = make_model("box")
    model.learn(2 * N_STEPS)
    state = model.policy.optimizer.state_dict()
    assert state["state"]  # Adam's moments exist after the critic's steps
    model.save(tmp_path / "model.zip")
    loaded = TRPO.load(tmp_path / "model.zip")
    assert_same_state_dict(state, loaded.policy.optimizer.state_dict())


# ---------------------------------------------------------------- resuming


@pytest.mark.parametrize("variant", ["box", "gsde", "discrete"])
def test_resume_training_matches_uninterrupted_training(variant, tmp_path):
    """Train A, save, load as B; continue both from identically seeded fresh environments.

    The saved model keeps A's last observation but not the state of A's environment, so B cannot
    continue A's episode. Both get a fresh, identically seeded environment (``set_env`` / ``load``
    reset it before the next rollout) and the same seed: everything else -- parameters, optimiser
    moments, progress, counters -- comes from the file for B and from memory for A, and must lead
    to the same numbers.
    """
    a = make_model(variant)
    a.learn(2 * N_STEPS)
    saved = {name: param.detach().clone() for name, param in a.policy.state_dict().items()}
    a.save(tmp_path / "model.zip")
    b = TRPO.load(tmp_path / "model.zip", env=make_seeded_env(variant, 1))
    a.set_env(make_seeded_env(variant, 1))

    for model in (a, b):
        model.set_random_seed(1)
        model.learn(2 * N_STEPS, reset_num_timesteps=False)

    assert a.num_timesteps == b.num_timesteps == 4 * N_STEPS
    assert a._n_updates == b._n_updates == 4
    assert a.n_skipped_policy_updates == b.n_skipped_policy_updates == 0
    assert a.n_skipped_critic_steps == b.n_skipped_critic_steps == 0
    assert_same_state_dict(a.policy.state_dict(), b.policy.state_dict())
    assert_same_state_dict(a.policy.optimizer.state_dict(), b.policy.optimizer.state_dict())
    assert any(not th.equal(saved[name], value) for name, value in a.policy.state_dict().items())


# ---------------------------------------------------------------- models saved by sb3-contrib


@pytest.mark.parametrize("variant", ["box", "gsde", "discrete", "multi_binary"])
def test_loads_sb3_contrib_model(variant, tmp_path):
    policy, make_variant_env, variant_kwargs = VARIANTS[variant]
    contrib = sb3_contrib.TRPO(
        policy, make_variant_env(), seed=0, target_kl=0.02, cg_max_steps=8, **{**SMALL, **variant_kwargs}
    )
    contrib.learn(2 * N_STEPS)
    contrib.save(tmp_path / "contrib.zip")

    model = TRPO.load(tmp_path / "contrib.zip", env=make_variant_env())
    assert isinstance(model, TRPO)
    assert_same_state_dict(contrib.policy.state_dict(), model.policy.state_dict())
    assert_same_state_dict(contrib.policy.optimizer.state_dict(), model.policy.optimizer.state_dict())
    assert_same_predictions(contrib, model, sample_observations(model))
    for name in ("target_kl", "cg_max_steps", "n_steps", "batch_size", "n_critic_updates", "use_sde", "num_timesteps"):
        assert getattr(model, name) == getattr(contrib, name), name
    # What sb3-contrib does not have takes the defaults.
    assert model.kl_constraint == "mean"
    assert model.fisher_method == "auto"
    assert model.kl_action_reduction == "sum"
    assert model.rollout_method == "auto"
    assert model.cg_residual_tol == 1e-10
    assert model.n_skipped_policy_updates == model.n_skipped_critic_steps == 0

    model.learn(2 * N_STEPS, reset_num_timesteps=False)
    assert model.num_timesteps == 4 * N_STEPS
    assert model._n_updates == contrib._n_updates + 2
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    assert "train/is_line_search_success" in model.logger.name_to_value
