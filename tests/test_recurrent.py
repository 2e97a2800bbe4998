"""RecurrentTRPO and RecurrentTRPOPenalty: LSTM policies, padded sequences, exact Fisher, masking, save/load."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3.common.policies as sb3_policies
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_trpo import RecurrentTRPO, RecurrentTRPOPenalty
from sb3_trpo.common.fisher import kl_per_state
from sb3_trpo.common.natural_gradient import add_flat_to_params, flat_concat, flat_grad, restore_params
from sb3_trpo.recurrent import RecurrentPolicyBatch

TINY_LSTM = {"lstm_hidden_size": 8, "net_arch": [8]}
OBS_DIM = 3
SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": TINY_LSTM}


def parameters(model) -> dict[str, th.Tensor]:
    return {name: param.detach().clone() for name, param in model.policy.named_parameters()}


def collect_rollout(model) -> None:
    """Fill the rollout buffer once, as ``learn()`` does, without training."""
    _, callback = model._setup_learn(model.n_steps)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


class ToyEnv(gym.Env):
    """Random observations in [-1, 1]^3, any action space, rewarded by the first observation times the action's sum."""

    def __init__(self, action_space: spaces.Space, episode_length: int = 10):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = action_space
        self.episode_length = episode_length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.step_count = 0
        self.obs = self.observation_space.sample()
        return self.obs, {}

    def step(self, action):
        reward = float(self.obs[0] * np.sum(np.asarray(action, dtype=np.float64)))
        self.step_count += 1
        self.obs = self.observation_space.sample()
        return self.obs, reward, False, self.step_count >= self.episode_length, {}


# ---------------------------------------------------------------- every LSTM policy learns


LEARNING_CASES = {
    "mlp_discrete": ("MlpLstmPolicy", lambda: make_vec_env("CartPole-v1", n_envs=2, seed=0), {}),
    "mlp_box": ("MlpLstmPolicy", lambda: make_vec_env("Pendulum-v1", n_envs=2, seed=0), {}),
    "mlp_gsde": ("MlpLstmPolicy", lambda: "Pendulum-v1", {"use_sde": True, "sde_sample_freq": 4}),
    "mlp_multi_discrete": ("MlpLstmPolicy", lambda: ToyEnv(spaces.MultiDiscrete([2, 3])), {}),
    "mlp_multi_binary": ("MlpLstmPolicy", lambda: ToyEnv(spaces.MultiBinary(3)), {}),
    "mlp_shared_lstm": (
        "MlpLstmPolicy",
        lambda: "CartPole-v1",
        {"policy_kwargs": {**TINY_LSTM, "shared_lstm": True, "enable_critic_lstm": False}},
    ),
    "mlp_no_critic_lstm": (
        "MlpLstmPolicy",
        lambda: "CartPole-v1",
        {"policy_kwargs": {**TINY_LSTM, "enable_critic_lstm": False}},
    ),
    "cnn": (
        "CnnLstmPolicy",
        lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1),
        {"policy_kwargs": {**TINY_LSTM, "features_extractor_kwargs": {"features_dim": 8}}},
    ),
    "multi_input": (
        "MultiInputLstmPolicy",
        lambda: SimpleMultiObsEnv(random_start=False),
        {"policy_kwargs": {**TINY_LSTM, "features_extractor_kwargs": {"cnn_output_dim": 8}}},
    ),
}


@pytest.mark.parametrize("case", LEARNING_CASES)
def test_every_lstm_policy_learns(case):
    policy, make_env, kwargs = LEARNING_CASES[case]
    model = RecurrentTRPO(policy, make_env(), seed=0, **{**SMALL, **kwargs})
    expected_buffer = RecurrentDictRolloutBuffer if case == "multi_input" else RecurrentRolloutBuffer
    assert type(model.rollout_buffer) is expected_buffer
    before = parameters(model)

    model.learn(2 * SMALL["n_steps"] * model.n_envs)

    after = parameters(model)
    assert model._n_updates == 2
    assert model.n_skipped_policy_updates == 0
    lstm_actor = [name for name in before if name.startswith("lstm_actor.")]
    assert lstm_actor
    assert all(not th.equal(before[name], after[name]) for name in lstm_actor)
    assert all(th.isfinite(param).all() for param in after.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy_optimizer": "natural"},
        {"policy_optimizer": "first_order", "n_epochs": 2, "policy_batch_size": 2},
    ],
    ids=["natural", "first_order"],
)
def test_penalty_variant_learns_and_adapts_beta(kwargs):
    model = RecurrentTRPOPenalty("MlpLstmPolicy", "CartPole-v1", seed=0, beta=100.0, **SMALL, **kwargs)
    before = parameters(model)
    model.learn(2 * SMALL["n_steps"])
    assert model._n_updates == 2
    assert model.beta < 100.0  # steps far inside the target KL: β went down
    assert model.logger.name_to_value["train/beta"] == model.beta
    assert any(not th.equal(before[name], param) for name, param in parameters(model).items())


def test_sub_sampling_uses_whole_sequences():
    model = RecurrentTRPO(
        "MlpLstmPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, sub_sampling_factor=3, **SMALL
    )
    collect_rollout(model)
    batch = model._policy_batch()
    assert isinstance(batch, RecurrentPolicyBatch)
    full = model._rollout_batch(next(iter(model.rollout_buffer.get(batch_size=None))))
    assert len(batch) == len(range(0, len(full), 3))
    model.learn(2 * SMALL["n_steps"] * 2)
    assert model.n_skipped_policy_updates == 0


def test_fisher_sub_sampling_uses_whole_sequences():
    model = RecurrentTRPO(
        "MlpLstmPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, fisher_sub_sampling_factor=2, **SMALL
    )
    before = parameters(model)
    model.learn(2 * SMALL["n_steps"] * 2)
    assert model.n_skipped_policy_updates == 0
    assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert not th.equal(before["lstm_actor.weight_hh_l0"], model.policy.lstm_actor.weight_hh_l0)


# ---------------------------------------------------------------- predict, evaluate, VecNormalize, save/load


def test_predict_with_state_and_episode_start():
    model = RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", seed=0, **SMALL)
    obs = model.get_env().reset()

    action, state = model.predict(obs, deterministic=True)
    assert action.shape == (1,)
    assert state[0].shape == state[1].shape == (1, 1, TINY_LSTM["lstm_hidden_size"])

    _, carried = model.predict(obs, state=state, episode_start=np.array([False]), deterministic=True)
    assert not np.allclose(carried[0], state[0])  # the state moves on
    reset_action, reset_state = model.predict(obs, state=carried, episode_start=np.array([True]), deterministic=True)
    np.testing.assert_allclose(reset_state[0], state[0], rtol=1e-6)  # an episode start forgets the past
    np.testing.assert_array_equal(reset_action, action)

    single_action, _ = model.predict(obs[0], state=state, episode_start=np.array([False]))  # not vectorised
    assert np.shape(single_action) == ()


def test_evaluate_policy_carries_the_state():
    model = RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", seed=0, **SMALL).learn(SMALL["n_steps"])
    env = make_vec_env("CartPole-v1", n_envs=2, seed=5)
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
    assert len(returns) == 4
    assert all(length > 0 for length in lengths)
    # One episode by hand, the state carried and reset as evaluate_policy does it.
    env = make_vec_env("CartPole-v1", n_envs=1, seed=7)
    obs, state, episode_start, total, done = env.reset(), None, np.ones(1, dtype=bool), 0.0, False
    while not done:
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        obs, reward, dones, _ = env.step(action)
        total, done, episode_start = total + reward[0], dones[0], dones
    env = make_vec_env("CartPole-v1", n_envs=1, seed=7)
    (by_sb3,), _ = evaluate_policy(model, env, n_eval_episodes=1, deterministic=True, return_episode_rewards=True)
    assert by_sb3 == total


def test_vec_normalize():
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = RecurrentTRPO("MlpLstmPolicy", env, seed=0, **SMALL).learn(2 * SMALL["n_steps"] * 2)
    assert env.obs_rms.count > 2 * SMALL["n_steps"] * 2
    env.training = False
    mean_return, _ = evaluate_policy(model, env, n_eval_episodes=2)
    assert np.isfinite(mean_return)


@pytest.mark.parametrize("algo", [RecurrentTRPO, RecurrentTRPOPenalty])
def test_save_load_gives_identical_predictions_with_states(algo, tmp_path):
    model = algo("MlpLstmPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, **SMALL)
    model.learn(2 * SMALL["n_steps"] * 2)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")

    assert type(loaded) is algo
    assert type(loaded.rollout_buffer) is RecurrentRolloutBuffer
    assert loaded._last_lstm_states.pi[0].shape == model._last_lstm_states.pi[0].shape
    assert loaded.target_kl == model.target_kl
    assert loaded.n_steps == model.n_steps
    if algo is RecurrentTRPOPenalty:
        assert loaded.beta == model.beta
    for name, param in model.policy.state_dict().items():
        assert th.equal(param, loaded.policy.state_dict()[name]), name

    env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    obs = env.reset()
    states = {"saved": None, "loaded": None}
    episode_start = np.ones(2, dtype=bool)
    for _ in range(30):
        action, states["saved"] = model.predict(obs, state=states["saved"], episode_start=episode_start, deterministic=True)
        loaded_action, states["loaded"] = loaded.predict(
            obs, state=states["loaded"], episode_start=episode_start, deterministic=True
        )
        np.testing.assert_array_equal(action, loaded_action)
        for saved, restored in zip(states["saved"], states["loaded"], strict=True):
            np.testing.assert_array_equal(saved, restored)
        obs, _, episode_start, _ = env.step(action)

    loaded.set_env(make_vec_env("CartPole-v1", n_envs=2, seed=0))
    loaded.learn(SMALL["n_steps"] * 2, reset_num_timesteps=False)  # training resumes
    assert loaded._n_updates == model._n_updates + 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "MlpPolicy"}, "MlpPolicy"),
        ({"policy": ActorCriticPolicy}, "policy must be an LSTM policy"),
        ({"rollout_buffer_class": RolloutBuffer}, "rollout_buffer_class must be"),
        ({"target_kl": 0.0}, "target_kl must be"),
        ({"sub_sampling_factor": 0}, "sub_sampling_factor must be"),
        ({"fisher_method": "fast"}, "fisher_method must be"),
        ({"cg_max_steps": 0}, "cg_max_steps must be"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, match):
    arguments = {"policy": "MlpLstmPolicy", "env": "CartPole-v1", **kwargs}
    with pytest.raises(ValueError, match=match):
        RecurrentTRPO(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -1.0}, "beta must be"),
        ({"policy_optimizer": "adam"}, "policy_optimizer must be"),
        ({"n_epochs": 0}, "n_epochs"),
    ],
)
def test_penalty_bad_input_raises_value_error_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecurrentTRPOPenalty("MlpLstmPolicy", "CartPole-v1", **kwargs)


def test_non_finite_advantages_skip_the_policy_update():
    model = RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", seed=0, **SMALL)
    collect_rollout(model)
    model.rollout_buffer.advantages[3:7] = np.nan
    actor = {name for name in parameters(model) if name.startswith(("lstm_actor.", "action_net."))}
    before = parameters(model)
    with pytest.warns(RuntimeWarning, match="advantages"):
        model.train()
    after = parameters(model)
    assert model.n_skipped_policy_updates == 1
    assert all(th.equal(before[name], after[name]) for name in actor)


@pytest.mark.parametrize("policy_kwargs", [{}, {"shared_lstm": True, "enable_critic_lstm": False}], ids=["own_lstm", "shared"])
def test_critic_fit_does_not_move_the_actor(policy_kwargs):
    model = RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", seed=0, **{**SMALL, "policy_kwargs": {**TINY_LSTM, **policy_kwargs}})
    collect_rollout(model)
    actor_params = model._natural_gradient_problem(model._policy_batch()).params
    assert any(param is model.policy.lstm_actor.weight_hh_l0 for param in actor_params)
    before = [param.detach().clone() for param in actor_params]
    critic = [model.policy.value_net.weight]
    if model.policy.lstm_critic is not None:
        critic.append(model.policy.lstm_critic.weight_hh_l0)  # the critic's values go through its LSTM
    critic_before = [param.detach().clone() for param in critic]
    model._fit_critic()
    assert all(th.equal(old, param) for old, param in zip(before, actor_params, strict=True))
    assert all(not th.equal(old, param) for old, param in zip(critic_before, critic, strict=True))


# ---------------------------------------------------------------- the trust region on sequences


@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trust_region_holds_on_the_real_steps(env_id, fisher_method):
    model = RecurrentTRPO(
        "MlpLstmPolicy", make_vec_env(env_id, n_envs=2, seed=0), seed=0, target_kl=0.01, fisher_method=fisher_method, **SMALL
    )
    collect_rollout(model)
    batch = model._policy_batch()
    assert batch.mask is not None
    assert not batch.mask.all()  # a padded batch
    assert batch.episode_starts.any() or env_id == "Pendulum-v1"  # CartPole's episodes end inside the rollout
    with th.no_grad():
        old = copy.copy(model._distribution(batch))

    stats = model._policy_step(batch)

    with th.no_grad():
        kl = kl_per_state(old, model._distribution(batch))[batch.mask]
    assert stats.line_search_success
    assert 0.0 < kl.mean().item() <= model.target_kl * (1 + 1e-4)
    assert stats.kl_mean == pytest.approx(kl.mean().item(), rel=1e-4)
    assert stats.kl_max == pytest.approx(kl.max().item(), rel=1e-4)
    assert stats.actual_improvement > 0.0


# ---------------------------------------------------------------- exact Fisher and masking, in float64

LSTM_SIZE = 3
SEQUENCE_LENGTHS = (4, 2)  # two sequences, the second one padded by two steps
MAX_LENGTH = max(SEQUENCE_LENGTHS)
ACTION_SPACES = {
    "categorical": spaces.Discrete(3),
    "gaussian": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
}


@pytest.fixture
def float64_observations(monkeypatch):
    """SB3's preprocessing casts observations to float32; the float64 tests pass them through untouched."""
    monkeypatch.setattr(sb3_policies, "preprocess_obs", lambda obs, *args, **kwargs: obs)


def float64_model(action_space: spaces.Space, fisher_method: str = "auto", seed: int = 0) -> RecurrentTRPO:
    model = RecurrentTRPO(
        "MlpLstmPolicy",
        ToyEnv(action_space),
        n_steps=8,
        batch_size=8,
        seed=seed,
        fisher_method=fisher_method,
        policy_kwargs={"lstm_hidden_size": LSTM_SIZE, "net_arch": [], "ortho_init": False, "log_std_init": -0.3},
    )
    model.policy.double()
    generator = th.Generator().manual_seed(seed)
    with th.no_grad():  # away from the symmetric initial point, so that every term of F matters
        for param in model.policy.parameters():
            param.add_(0.3 * th.randn(param.shape, generator=generator, dtype=th.float64))
    return model


def padded_batch(action_space: spaces.Space, episode_start: bool, seed: int = 0) -> RecurrentPolicyBatch:
    """Two sequences of 4 and 2 steps, the second padded to 4, each from its own LSTM state."""
    generator = th.Generator().manual_seed(seed)
    n_seq, n_rows = len(SEQUENCE_LENGTHS), len(SEQUENCE_LENGTHS) * MAX_LENGTH

    def randn(*shape: int) -> th.Tensor:
        return th.randn(*shape, generator=generator, dtype=th.float64)

    if isinstance(action_space, spaces.Discrete):
        actions = th.randint(0, int(action_space.n), (n_rows,), generator=generator)
    else:
        actions = randn(n_rows, *action_space.shape)
    episode_starts = th.zeros(n_rows, dtype=th.float64)
    if episode_start:  # the second sequence starts an episode: its stored state is reset
        episode_starts[MAX_LENGTH] = 1.0
    return RecurrentPolicyBatch(
        observations=2.0 * th.rand(n_rows, OBS_DIM, generator=generator, dtype=th.float64) - 1.0,
        actions=actions,
        behaviour_log_prob=-1.0 - 0.3 * randn(n_rows).abs(),
        advantages=randn(n_rows),
        mask=th.tensor([step < length for length in SEQUENCE_LENGTHS for step in range(MAX_LENGTH)]),
        lstm_states=(0.5 * randn(1, n_seq, LSTM_SIZE), 0.5 * randn(1, n_seq, LSTM_SIZE)),
        episode_starts=episode_starts,
    )


def explicit_fisher(model: RecurrentTRPO, batch: RecurrentPolicyBatch, params, steps: th.Tensor) -> th.Tensor:
    """``F = mean over steps of E_a[∇ log π(a|h_t) ∇ log π(a|h_t)ᵀ]``, π at step t through the LSTM from its sequence start.

    Categorical: every action enumerated. Gaussian: the Fisher of (μ, log σ) in closed form,
    ``J_μᵀ diag(1/σ²) J_μ + 2 J_logσᵀ J_logσ``.
    """
    n = sum(param.numel() for param in params)
    fisher = th.zeros(n, n, dtype=th.float64)
    for step in steps:
        if isinstance(model.action_space, spaces.Box):
            normal = model._distribution(batch).distribution
            mean, std = normal.mean[step], normal.stddev[step]
            for j in range(mean.numel()):
                grad_mean = flat_grad(mean[j], params, retain_graph=True)
                grad_log_std = flat_grad(th.log(std[j]), params, retain_graph=True)
                fisher += th.outer(grad_mean, grad_mean) / std[j].item() ** 2 + 2.0 * th.outer(grad_log_std, grad_log_std)
        else:
            for action in range(int(model.action_space.n)):
                log_prob = model._distribution(batch).log_prob(th.full_like(batch.actions, action))[step]
                score = flat_grad(log_prob, params)
                fisher += log_prob.exp().item() * th.outer(score, score)
    return fisher / len(steps)


def is_lstm_parameter(model: RecurrentTRPO, param: th.Tensor) -> bool:
    return any(param is lstm_param for lstm_param in model.policy.lstm_actor.parameters())


@pytest.mark.usefixtures("float64_observations")
@pytest.mark.parametrize("episode_start", [False, True], ids=["fused_lstm", "step_by_step_lstm"])
@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
@pytest.mark.parametrize("name", ACTION_SPACES)
def test_fisher_vector_product_through_the_lstm_equals_explicit_fisher(name, fisher_method, episode_start):
    model = float64_model(ACTION_SPACES[name], fisher_method)
    batch = padded_batch(ACTION_SPACES[name], episode_start)
    problem = model._natural_gradient_problem(batch)
    params = problem.params
    assert any(param is model.policy.lstm_actor.weight_hh_l0 for param in params)
    n = sum(param.numel() for param in params)

    from_products = th.stack([problem.fisher_vector_product(e) for e in th.eye(n, dtype=th.float64)], dim=1)

    assert batch.mask is not None
    expected = explicit_fisher(model, batch, params, th.nonzero(batch.mask).flatten())
    in_lstm = th.cat([th.full((param.numel(),), is_lstm_parameter(model, param)) for param in params])
    assert expected[in_lstm][:, in_lstm].abs().max() > 1e-3  # curvature through the LSTM, not only the head
    th.testing.assert_close(from_products, expected, rtol=1e-10, atol=1e-12)
    # The padded steps would have changed F: the test sees whether they are left out.
    with_padding = explicit_fisher(model, batch, params, th.arange(len(batch.mask)))
    assert (with_padding - expected).abs().max() > 1e-3


def with_other_padding(batch: RecurrentPolicyBatch, seed: int = 1) -> RecurrentPolicyBatch:
    """The same real steps; new observations, actions, advantages and β(a|s) on the padded ones."""
    other = padded_batch(spaces.Discrete(3) if batch.actions.dtype == th.int64 else spaces.Box(-1, 1, (2,)), False, seed)
    assert batch.mask is not None
    padded = ~batch.mask

    def mix(real: th.Tensor, replacement: th.Tensor, scale: float = 1.0) -> th.Tensor:
        mixed = real.clone()
        mixed[padded] = (scale * replacement[padded]).to(real.dtype)
        return mixed

    assert isinstance(batch.observations, th.Tensor)
    assert isinstance(other.observations, th.Tensor)
    return RecurrentPolicyBatch(
        observations=mix(batch.observations, other.observations, 10.0),
        actions=mix(batch.actions, other.actions),
        behaviour_log_prob=mix(batch.behaviour_log_prob, other.behaviour_log_prob, 5.0),
        advantages=mix(batch.advantages, other.advantages, 100.0),
        mask=batch.mask,
        lstm_states=batch.lstm_states,
        episode_starts=batch.episode_starts,
    )


@pytest.mark.usefixtures("float64_observations")
@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
@pytest.mark.parametrize("name", ACTION_SPACES)
def test_padded_steps_change_nothing(name, fisher_method):
    model = float64_model(ACTION_SPACES[name], fisher_method)
    model.target_kl = 0.05
    batch = padded_batch(ACTION_SPACES[name], episode_start=True)
    other = with_other_padding(batch)
    batch, other = model._normalize_advantages(batch), model._normalize_advantages(other)
    assert batch.mask is not None
    assert th.equal(batch.advantages[batch.mask], other.advantages[batch.mask])  # normalised over the real steps

    first, second = model._natural_gradient_problem(batch), model._natural_gradient_problem(other)
    assert first.before.objective == second.before.objective
    th.testing.assert_close(first.gradient, second.gradient, rtol=1e-13, atol=0.0)
    assert first.gradient.abs().max() > 1e-3
    vector = th.randn(first.gradient.shape, generator=th.Generator().manual_seed(2), dtype=th.float64)
    th.testing.assert_close(first.fisher_vector_product(vector), second.fisher_vector_product(vector), rtol=1e-13, atol=0.0)

    # Surrogate and KL at a moved point.
    saved = [param.detach().clone() for param in first.params]
    add_flat_to_params(first.params, saved, 0.05 * vector)
    moved_first, moved_second = first.evaluate(), second.evaluate()
    restore_params(first.params, saved)
    assert moved_first.kl_mean > 0.0
    for field in ("objective", "kl_mean", "kl_max"):
        assert getattr(moved_first, field) == pytest.approx(getattr(moved_second, field), rel=1e-13, abs=0.0), field

    # And the whole update.
    updates = []
    for candidate in (batch, other):
        stats = model._policy_step(candidate)
        params = model.backends.actor.params
        assert stats.line_search_success
        updates.append(flat_concat([param.detach().clone() for param in params]))
        restore_params(params, saved)
    th.testing.assert_close(updates[0], updates[1], rtol=1e-12, atol=0.0)
    assert not th.equal(updates[0], flat_concat(saved))


@pytest.mark.usefixtures("float64_observations")
def test_subset_keeps_each_sequence_whole_with_its_history():
    model = float64_model(ACTION_SPACES["gaussian"])
    batch = padded_batch(ACTION_SPACES["gaussian"], episode_start=True)
    assert len(batch) == 2

    second = batch.subset(th.tensor([1]))
    assert len(second) == 1
    assert second.actions.shape[0] == SEQUENCE_LENGTHS[1]  # the padding trimmed to the longest picked sequence
    assert second.mask is not None
    assert bool(second.mask.all())
    assert th.equal(second.lstm_states[0], batch.lstm_states[0][:, 1:])

    with th.no_grad():
        whole = model._distribution(batch).distribution.mean[MAX_LENGTH : MAX_LENGTH + SEQUENCE_LENGTHS[1]]
        alone = model._distribution(second).distribution.mean
    th.testing.assert_close(alone, whole, rtol=1e-12, atol=0.0)

    both = batch.subset(th.tensor([1, 0]))
    assert th.equal(both.actions[:MAX_LENGTH][: SEQUENCE_LENGTHS[1]], batch.actions[MAX_LENGTH : MAX_LENGTH + 2])
    assert both.mask is not None
    assert int(both.mask.sum()) == sum(SEQUENCE_LENGTHS)
