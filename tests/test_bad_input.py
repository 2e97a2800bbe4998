"""Bad hyperparameters fail at construction with a ValueError naming them; non-finite numbers skip, never corrupt."""

import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo import TRPO

N_STEPS = 64
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}}


def make_model(env=None, **kwargs) -> TRPO:
    return TRPO("MlpPolicy", env if env is not None else IdentityEnv(3, ep_length=20), seed=0, **{**SMALL, **kwargs})


# ---------------------------------------------------------------- hyperparameters


BAD_HYPERPARAMETERS = [
    ("n_steps", 0),
    ("target_kl", 0.0),
    ("target_kl", -1.0),
    ("target_kl", math.nan),
    ("target_kl", math.inf),
    ("cg_max_steps", 0),
    ("cg_max_steps", 2.5),
    ("cg_damping", -0.1),
    ("cg_damping", math.nan),
    ("line_search_shrinking_factor", 0.0),
    ("line_search_shrinking_factor", 1.0),
    ("line_search_shrinking_factor", 1.5),
    ("line_search_shrinking_factor", -0.1),
    ("line_search_max_iter", 0),
    ("sub_sampling_factor", 0),
    ("n_critic_updates", -1),
    ("batch_size", 0),
    ("kl_constraint", "median"),
    ("kl_constraint", "MEAN"),
    ("cg_residual_tol", -1e-10),
    ("fisher_method", "exact"),
    ("rollout_method", "torch"),
    ("kl_action_reduction", "max"),
    ("gamma", -0.1),
    ("gamma", 1.5),
    ("gamma", math.nan),
    ("gae_lambda", -0.1),
    ("gae_lambda", 1.01),
]


@pytest.mark.parametrize(
    ("name", "value"), BAD_HYPERPARAMETERS, ids=[f"{name}={value}" for name, value in BAD_HYPERPARAMETERS]
)
def test_bad_hyperparameter_raises_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be") as error:
        make_model(**{name: value})
    assert repr(value) in str(error.value)  # the message says what was given


BOUNDARY_HYPERPARAMETERS = [
    ("gamma", 0.0),
    ("gamma", 1.0),
    ("gae_lambda", 0.0),
    ("gae_lambda", 1.0),
    ("cg_damping", 0.0),
    ("cg_residual_tol", 0.0),
    ("n_critic_updates", 0),
    ("cg_max_steps", 1),
    ("line_search_max_iter", 1),
    ("sub_sampling_factor", 1),
    ("batch_size", 1),
    ("target_kl", 1e-8),
    ("line_search_shrinking_factor", 0.999),
    ("cg_max_steps", np.int64(3)),
]


@pytest.mark.parametrize(
    ("name", "value"), BOUNDARY_HYPERPARAMETERS, ids=[f"{name}={value}" for name, value in BOUNDARY_HYPERPARAMETERS]
)
def test_values_at_the_edge_of_the_range_are_accepted(name, value):
    model = make_model(**{name: value})
    assert getattr(model, name) == value


def test_single_transition_needs_no_advantage_normalisation():
    with pytest.raises(ValueError, match=re.escape("n_steps * n_envs")):
        make_model(n_steps=1, batch_size=1, normalize_advantage=True)
    model = make_model(n_steps=1, batch_size=1, normalize_advantage=False)
    model.learn(3)
    assert model._n_updates == 3
    assert all(th.isfinite(param).all() for param in model.policy.parameters())


def test_batch_size_not_dividing_the_buffer_warns():
    with pytest.warns(UserWarning, match="batch_size"):
        make_model(batch_size=48)


class ActionSpaceEnv(gym.Env):
    def __init__(self, action_space: spaces.Space):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


@pytest.mark.parametrize(
    "action_space",
    [spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), spaces.Dict({"a": spaces.Discrete(2)})],
    ids=["tuple", "dict"],
)
def test_unsupported_action_space(action_space):
    with pytest.raises(ValueError, match="action space"):
        make_model(ActionSpaceEnv(action_space))


# ---------------------------------------------------------------- non-finite numbers


def collect_rollout(model: TRPO) -> None:
    _, callback = model._setup_learn(model.n_steps, reset_num_timesteps=False)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def parameters(policy: ActorCriticPolicy) -> dict[str, th.Tensor]:
    return {name: param.detach().clone() for name, param in policy.named_parameters()}


def split_actor_critic(model: TRPO) -> tuple[set[str], set[str]]:
    """Actor: the parameters the action distribution depends on (autograd); critic: the rest."""
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, *model.rollout_buffer.obs_shape))
    distribution = model.policy.get_distribution(obs).distribution
    if hasattr(distribution, "logits"):
        output = distribution.logits.sum()
    else:
        output = distribution.mean.sum() + distribution.stddev.sum()
    named = list(model.policy.named_parameters())
    grads = th.autograd.grad(output, [param for _, param in named], allow_unused=True)
    actor = {name for (name, _), grad in zip(named, grads, strict=True) if grad is not None}
    return actor, {name for name, _ in named} - actor


def assert_all_finite(model: TRPO) -> None:
    for name, param in model.policy.named_parameters():
        assert th.isfinite(param).all(), name


ENVS = {"box": lambda: IdentityEnvBox(ep_length=20), "discrete": lambda: IdentityEnv(3, ep_length=20)}


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize(
    ("corrupt", "normalize_advantage"),
    [("all", True), ("subset", True), ("subset", False), ("inf", False)],
    ids=["nan-everywhere", "nan-in-a-subset-normalised", "nan-in-a-subset", "inf-in-a-subset"],
)
def test_non_finite_advantages_skip_the_policy_update(env, corrupt, normalize_advantage):
    model = make_model(ENVS[env](), normalize_advantage=normalize_advantage)
    collect_rollout(model)
    actor, critic = split_actor_critic(model)
    advantages = model.rollout_buffer.advantages
    if corrupt == "all":
        advantages[:] = np.nan
    else:
        advantages[3:7] = np.nan if corrupt == "subset" else np.inf
    before = parameters(model.policy)

    with pytest.warns(RuntimeWarning, match="advantages"):
        model.train()

    after = parameters(model.policy)
    assert model.n_skipped_policy_updates == 1
    assert model.n_skipped_critic_steps == 0
    logged = model.logger.name_to_value
    assert logged["train/skipped_policy_updates"] == 1
    assert logged["train/is_line_search_success"] == 0.0
    for name in actor:
        assert th.equal(before[name], after[name]), name
    assert any(not th.equal(before[name], after[name]) for name in critic)  # the returns are fine: the critic fits
    assert_all_finite(model)


@pytest.mark.parametrize("env", ENVS)
def test_non_finite_behaviour_log_prob_skips_the_policy_update(env):
    """β(a|s) underflowing to 0 in a few samples: the surrogate and its gradient are not finite."""
    model = make_model(ENVS[env]())
    collect_rollout(model)
    actor, _ = split_actor_critic(model)
    model.rollout_buffer.log_probs[:3] = -np.inf
    before = parameters(model.policy)

    with pytest.warns(RuntimeWarning, match="policy gradient"):
        model.train()

    after = parameters(model.policy)
    assert model.n_skipped_policy_updates == 1
    assert model.logger.name_to_value["train/skipped_policy_updates"] == 1
    for name in actor:
        assert th.equal(before[name], after[name]), name
    assert_all_finite(model)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # explained variance of inf returns
@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_returns_skip_the_critic(env, value):
    model = make_model(ENVS[env]())
    collect_rollout(model)
    actor, critic = split_actor_critic(model)
    model.rollout_buffer.returns[5] = value
    before = parameters(model.policy)

    with pytest.warns(RuntimeWarning, match="returns"):
        model.train()

    after = parameters(model.policy)
    assert model.n_skipped_critic_steps == 1
    assert model.n_skipped_policy_updates == 0
    logged = model.logger.name_to_value
    assert logged["train/skipped_critic_steps"] == 1
    assert logged["train/is_line_search_success"] == 1.0  # the advantages are fine: the policy steps
    for name in critic:
        assert th.equal(before[name], after[name]), name
    assert any(not th.equal(before[name], after[name]) for name in actor)
    assert_all_finite(model)


@pytest.mark.parametrize("normalize_advantage", [True, False])
def test_zero_advantages_give_no_step_and_no_warning(normalize_advantage):
    """Nothing to gain: the gradient is zero, CG stops at once, and that is not an error."""
    model = make_model(normalize_advantage=normalize_advantage)
    collect_rollout(model)
    actor, critic = split_actor_critic(model)
    model.rollout_buffer.advantages[:] = 0.0
    before = parameters(model.policy)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.train()

    after = parameters(model.policy)
    for name in actor:
        assert th.equal(before[name], after[name]), name
    assert any(not th.equal(before[name], after[name]) for name in critic)
    assert model.n_skipped_policy_updates == model.n_skipped_critic_steps == 0
    logged = model.logger.name_to_value
    assert logged["train/is_line_search_success"] == 0.0
    assert logged["train/cg_iterations"] == 0
    assert logged["train/step_size"] == 0.0


class NanRewardEnv(gym.Wrapper):
    """An environment that once returns a NaN reward, as a broken simulator might."""

    def __init__(self, env: gym.Env, bad_step: int):
        super().__init__(env)
        self.bad_step, self.n_steps = bad_step, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.n_steps += 1
        return obs, math.nan if self.n_steps == self.bad_step else reward, terminated, truncated, info


@pytest.mark.parametrize("env", ENVS)
def test_non_finite_reward_skips_the_whole_update_then_training_recovers(env):
    model = make_model(NanRewardEnv(ENVS[env](), bad_step=10))
    collect_rollout(model)
    assert not np.isfinite(model.rollout_buffer.advantages).all()
    before = parameters(model.policy)

    with pytest.warns(RuntimeWarning) as warned:
        model.train()

    messages = " ".join(str(warning.message) for warning in warned)
    assert "advantages" in messages
    assert "returns" in messages
    after = parameters(model.policy)
    for name in before:
        assert th.equal(before[name], after[name]), name
    assert model.n_skipped_policy_updates == model.n_skipped_critic_steps == 1
    logged = model.logger.name_to_value
    assert logged["train/skipped_policy_updates"] == logged["train/skipped_critic_steps"] == 1

    # The next rollout is clean: training goes on, and the counters stay where they were.
    collect_rollout(model)
    assert np.isfinite(model.rollout_buffer.advantages).all()
    model.train()
    assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert model.n_skipped_policy_updates == model.n_skipped_critic_steps == 1
    assert_all_finite(model)
