"""TRPO as an SB3 algorithm: spaces, policies, VecEnvs, callbacks, logging, the trust region, the critic."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize
from torch import nn

from sb3_trpo import TRPO

N_STEPS = 64
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}}


class TargetEnv(gym.Env):
    """Continuous control in two dimensions: reach the target you observe (a Box with more than one dimension)."""

    def __init__(self, ep_length: int = 20):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.ep_length = ep_length

    def _new_target(self) -> np.ndarray:
        self.target = self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)
        return self.target

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n_steps = 0
        return self._new_target(), {}

    def step(self, action):
        reward = -float(np.sum((action - self.target) ** 2))
        self.n_steps += 1
        return self._new_target(), reward, False, self.n_steps >= self.ep_length, {}


# One environment per action space; the observation says which action pays, so advantages are never all zero.
ENVS = {
    "box": lambda: TargetEnv(ep_length=20),
    "box_1d": lambda: IdentityEnvBox(ep_length=20),
    "discrete": lambda: IdentityEnv(3, ep_length=20),
    "multi_discrete": lambda: IdentityEnvMultiDiscrete(3, ep_length=20),
    "multi_binary": lambda: IdentityEnvMultiBinary(3, ep_length=20),
}
ACTION_SPACES = {
    "box": spaces.Box,
    "box_1d": spaces.Box,
    "discrete": spaces.Discrete,
    "multi_discrete": spaces.MultiDiscrete,
    "multi_binary": spaces.MultiBinary,
}
# The variants of the policy step the trust-region and critic tests run on (gSDE: a second Gaussian).
VARIANTS = {
    **{name: (make_env, {}) for name, make_env in ENVS.items()},
    "gsde": (ENVS["box"], {"use_sde": True, "sde_sample_freq": 4}),
}

TRAIN_KEYS = [
    "train/policy_objective",
    "train/kl_divergence",
    "train/kl_divergence_max",
    "train/expected_improvement",
    "train/actual_improvement",
    "train/is_line_search_success",
    "train/line_search_backtracks",
    "train/cg_iterations",
    "train/cg_residual",
    "train/step_size",
    "train/value_loss",
    "train/explained_variance",
    "train/skipped_policy_updates",
    "train/skipped_critic_steps",
]


def make_model(variant: str, seed: int = 0, **kwargs) -> TRPO:
    make_env, variant_kwargs = VARIANTS[variant]
    return TRPO("MlpPolicy", make_env(), seed=seed, **{**SMALL, **variant_kwargs, **kwargs})


def collect_rollout(model: TRPO) -> None:
    """Fill the rollout buffer once, as ``learn()`` does, without training."""
    _, callback = model._setup_learn(model.n_steps)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def parameters(policy: ActorCriticPolicy) -> dict[str, th.Tensor]:
    return {name: param.detach().clone() for name, param in policy.named_parameters()}


def rollout_observations(model: TRPO) -> th.Tensor | dict[str, th.Tensor]:
    """The observations of the rollout buffer as one flat batch (before ``get()`` flattens it)."""
    buffer = model.rollout_buffer
    if isinstance(buffer.observations, dict):
        return {
            key: th.as_tensor(obs.reshape(-1, *buffer.obs_shape[key]), device=model.device)
            for key, obs in buffer.observations.items()
        }
    return th.as_tensor(buffer.observations.reshape(-1, *buffer.obs_shape), device=model.device)


def rollout_actions(model: TRPO) -> th.Tensor:
    # Stored in the action space's dtype; SB3 hands them to the policy as float32, as here.
    actions = th.as_tensor(model.rollout_buffer.actions.reshape(-1, model.rollout_buffer.action_dim).astype(np.float32))
    if isinstance(model.action_space, spaces.Discrete):
        return actions.long().flatten()
    return actions


def distribution_tensors(distribution: Distribution) -> list[th.Tensor]:
    """The tensors that define the action distribution: means and stds, or logits."""
    if isinstance(distribution, DiagGaussianDistribution | StateDependentNoiseDistribution):
        return [distribution.distribution.mean, distribution.distribution.stddev]
    if isinstance(distribution, MultiCategoricalDistribution):
        return [dist.logits for dist in distribution.distribution]
    assert isinstance(distribution, CategoricalDistribution | BernoulliDistribution)
    return [distribution.distribution.logits]


def kl_per_state(old: Distribution, new: Distribution) -> th.Tensor:
    """KL(old ‖ new) per state in float64, written out in closed form, summed over action dimensions."""
    old_tensors = [t.detach().double() for t in distribution_tensors(old)]
    new_tensors = [t.detach().double() for t in distribution_tensors(new)]
    if isinstance(old, DiagGaussianDistribution | StateDependentNoiseDistribution):
        (mean_p, std_p), (mean_q, std_q) = old_tensors, new_tensors
        kl = th.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5
        return kl.sum(dim=1)
    if isinstance(old, BernoulliDistribution):
        (logits_p,), (logits_q,) = old_tensors, new_tensors
        p = th.sigmoid(logits_p)
        kl = p * (nn.functional.logsigmoid(logits_p) - nn.functional.logsigmoid(logits_q)) + (1 - p) * (
            nn.functional.logsigmoid(-logits_p) - nn.functional.logsigmoid(-logits_q)
        )
        return kl.sum(dim=1)
    kl = th.zeros(old_tensors[0].shape[0], dtype=th.float64)
    for logits_p, logits_q in zip(old_tensors, new_tensors, strict=True):
        log_p, log_q = th.log_softmax(logits_p, dim=-1), th.log_softmax(logits_q, dim=-1)
        kl += (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return kl


def actor_parameter_names(policy: ActorCriticPolicy, obs: th.Tensor | dict[str, th.Tensor]) -> set[str]:
    """The parameters the action distribution depends on (found through autograd, not by name)."""
    named = list(policy.named_parameters())
    output = sum(t.sum() for t in distribution_tensors(policy.get_distribution(obs)))
    grads = th.autograd.grad(output, [param for _, param in named], allow_unused=True)
    return {name for (name, _), grad in zip(named, grads, strict=True) if grad is not None}


class TanhExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters, to share between actor and critic."""

    def __init__(self, observation_space: spaces.Space, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(get_flattened_obs_dim(observation_space), features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


class MemoryWriter(KVWriter):
    """An in-memory logger output: every dump, as a dict."""

    def __init__(self):
        self.dumps: list[dict[str, object]] = []

    def write(self, key_values, key_excluded, step=0):
        self.dumps.append(dict(key_values))


# ---------------------------------------------------------------- learning runs on every space and policy


@pytest.mark.parametrize("space", ENVS)
def test_learns_on_every_action_space(space):
    model = make_model(space)
    assert isinstance(model.action_space, ACTION_SPACES[space])
    before = parameters(model.policy)
    assert model.learn(4 * N_STEPS) is model
    assert model.num_timesteps == 4 * N_STEPS
    assert model._n_updates == 4
    after = parameters(model.policy)
    assert all(th.isfinite(param).all() for param in after.values())
    assert any(not th.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize(
    ("policy", "make_env", "policy_kwargs"),
    [
        pytest.param(
            "CnnPolicy",
            lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True),
            {"features_extractor_kwargs": {"features_dim": 16}},
            id="cnn-discrete",
        ),
        pytest.param(
            "CnnPolicy",
            lambda: FakeImageEnv(action_dim=2, screen_height=36, screen_width=36, n_channels=1, discrete=False),
            {"features_extractor_kwargs": {"features_dim": 16}},
            id="cnn-box",
        ),
        pytest.param(
            "MultiInputPolicy",
            lambda: SimpleMultiObsEnv(random_start=False, discrete_actions=True),
            {"features_extractor_kwargs": {"cnn_output_dim": 16}},
            id="multi_input-discrete",
        ),
        pytest.param(
            "MultiInputPolicy",
            lambda: SimpleMultiObsEnv(random_start=False, discrete_actions=False),
            {"features_extractor_kwargs": {"cnn_output_dim": 16}},
            id="multi_input-box",
        ),
    ],
)
def test_learns_with_every_policy(policy, make_env, policy_kwargs):
    model = TRPO(policy, make_env(), seed=0, **{**SMALL, "policy_kwargs": {"net_arch": [16], **policy_kwargs}})
    assert type(model.policy) is TRPO.policy_aliases[policy]
    before = parameters(model.policy)
    model.learn(2 * N_STEPS)
    assert model._n_updates == 2
    after = parameters(model.policy)
    assert all(th.isfinite(param).all() for param in after.values())
    assert any(not th.equal(before[name], after[name]) for name in before)
    assert "train/is_line_search_success" in model.logger.name_to_value


def test_gsde():
    model = make_model("gsde")
    assert isinstance(model.policy.action_dist, StateDependentNoiseDistribution)
    log_std_before = model.policy.log_std.detach().clone()
    model.learn(4 * N_STEPS)
    assert model._n_updates == 4
    assert model.policy.log_std.dim() == 2  # one std per (latent feature, action dimension)
    assert not th.equal(model.policy.log_std, log_std_before)
    assert math.isfinite(model.logger.name_to_value["train/std"])


@pytest.mark.parametrize(
    "options",
    [
        {"sub_sampling_factor": 4},
        {"kl_constraint": "max"},
        {"normalize_advantage": False},
        {"cg_max_steps": 1, "line_search_max_iter": 1, "cg_damping": 0.0},
    ],
    ids=["sub_sampling", "max_kl", "raw_advantages", "one_cg_step_one_candidate"],
)
def test_learns_with_options(options):
    model = make_model("discrete", **options)
    model.learn(2 * N_STEPS)
    assert model._n_updates == 2
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    for name, value in options.items():
        assert getattr(model, name) == value
    assert model.logger.name_to_value["train/cg_iterations"] <= model.cg_max_steps
    assert model.logger.name_to_value["train/line_search_backtracks"] <= model.line_search_max_iter


def test_no_critic_updates_leaves_the_critic_alone():
    model = make_model("box", n_critic_updates=0)
    collect_rollout(model)
    actor = actor_parameter_names(model.policy, rollout_observations(model))
    before = parameters(model.policy)
    model.train()
    after = parameters(model.policy)
    critic = set(before) - actor
    assert critic
    assert all(th.equal(before[name], after[name]) for name in critic)
    assert any(not th.equal(before[name], after[name]) for name in actor)
    assert "train/value_loss" not in model.logger.name_to_value


# ---------------------------------------------------------------- VecEnvs and wrappers


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_envs(vec_env_cls):
    env = make_vec_env(ENVS["discrete"], n_envs=2, seed=0, vec_env_cls=vec_env_cls)
    try:
        model = TRPO("MlpPolicy", env, seed=0, **SMALL)
        model.learn(2 * 2 * N_STEPS)
        assert model.n_envs == 2
        assert model.num_timesteps == 2 * 2 * N_STEPS
        assert model._n_updates == 2
        assert (model.rollout_buffer.buffer_size, model.rollout_buffer.n_envs) == (N_STEPS, 2)
    finally:
        env.close()


def test_vec_normalize():
    env = VecNormalize(make_vec_env(ENVS["box"], n_envs=2, seed=0), gamma=0.99)
    model = TRPO("MlpPolicy", env, seed=0, **SMALL)
    model.learn(2 * 2 * N_STEPS)
    assert model.get_vec_normalize_env() is env
    assert env.obs_rms.count > 2 * 2 * N_STEPS  # the statistics were updated on every step
    assert model._n_updates == 2
    assert all(th.isfinite(param).all() for param in model.policy.parameters())


# ---------------------------------------------------------------- callbacks, logging, progress bar


class CountingCallback(BaseCallback):
    def __init__(self):
        super().__init__()
        self.counts = {"training_start": 0, "rollout_start": 0, "step": 0, "rollout_end": 0, "training_end": 0}

    def _on_training_start(self):
        self.counts["training_start"] += 1

    def _on_rollout_start(self):
        self.counts["rollout_start"] += 1

    def _on_step(self):
        self.counts["step"] += 1
        return True

    def _on_rollout_end(self):
        self.counts["rollout_end"] += 1

    def _on_training_end(self):
        self.counts["training_end"] += 1


def test_callbacks(tmp_path):
    counting = CountingCallback()
    evaluation = EvalCallback(
        make_vec_env(ENVS["discrete"], n_envs=1, seed=1), n_eval_episodes=2, eval_freq=N_STEPS, log_path=str(tmp_path)
    )
    model = make_model("discrete")
    assert model.learn(3 * N_STEPS, callback=CallbackList([counting, evaluation])) is model
    expected = {"training_start": 1, "rollout_start": 3, "step": 3 * N_STEPS, "rollout_end": 3, "training_end": 1}
    assert counting.counts == expected
    assert counting.model is model
    assert evaluation.evaluations_timesteps == [N_STEPS, 2 * N_STEPS, 3 * N_STEPS]
    assert np.isfinite(evaluation.last_mean_reward)
    assert (tmp_path / "evaluations.npz").exists()


def test_callback_can_stop_training():
    class StopAfter(BaseCallback):
        def _on_step(self):
            return self.n_calls < 10

    model = make_model("discrete")
    model.learn(4 * N_STEPS, callback=StopAfter())
    assert model.num_timesteps == 10
    assert model._n_updates == 0


@pytest.mark.parametrize("variant", ["box", "discrete", "gsde"])
def test_logger_keys(variant):
    writer = MemoryWriter()
    model = make_model(variant)
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    model.learn(2 * N_STEPS)
    # dump_logs() runs before train(): the second dump carries the first update's train/ keys.
    assert len(writer.dumps) == 2
    logged = writer.dumps[1]
    for key in TRAIN_KEYS:
        assert key in logged, key
    assert ("train/std" in logged) == (variant != "discrete")
    assert logged["train/skipped_policy_updates"] == 0
    assert logged["train/skipped_critic_steps"] == 0
    assert logged["train/is_line_search_success"] in (0.0, 1.0)
    assert 1 <= logged["train/cg_iterations"] <= model.cg_max_steps
    assert 0 <= logged["train/line_search_backtracks"] <= model.line_search_max_iter
    if logged["train/is_line_search_success"]:
        assert 0.0 <= logged["train/kl_divergence"] <= logged["train/kl_divergence_max"]
        assert logged["train/kl_divergence"] <= model.target_kl + 1e-6
        assert logged["train/actual_improvement"] > 0
        assert logged["train/step_size"] > 0


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_model("box", tensorboard_log=str(tmp_path))
    model.learn(3 * N_STEPS, tb_log_name="run")
    event_files = list((tmp_path / "run_1").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in [*TRAIN_KEYS, "train/std"]:
        assert key in tags, key
    assert "train/n_updates" not in tags  # excluded from tensorboard, like SB3's PPO
    assert [event.step for event in events.Scalars("train/kl_divergence")] == [2 * N_STEPS, 3 * N_STEPS]


@pytest.mark.filterwarnings("ignore:rich is experimental")
def test_progress_bar(capsys):
    model = make_model("discrete")
    assert model.learn(2 * N_STEPS, progress_bar=True) is model
    assert model.num_timesteps == 2 * N_STEPS
    assert f"{2 * N_STEPS}/{2 * N_STEPS}" in capsys.readouterr().out


# ---------------------------------------------------------------- the trust region


def surrogate(model: TRPO, log_prob: th.Tensor) -> float:
    """``mean[π(a|s)/β(a|s) · Â]`` on the rollout, in float64, with the advantages normalised as documented."""
    buffer = model.rollout_buffer
    advantages = th.as_tensor(buffer.advantages.reshape(-1), dtype=th.float64)
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    behaviour_log_prob = th.as_tensor(buffer.log_probs.reshape(-1), dtype=th.float64)
    return (th.exp(log_prob.double() - behaviour_log_prob) * advantages).mean().item()


def detached_distribution(model: TRPO, obs) -> Distribution:
    """The policy's current action distribution on ``obs``, kept apart from the next call's."""
    with th.no_grad():
        return copy.copy(model.policy.get_distribution(obs))


# With a large region, the KL rarely binds and the surrogate's own curvature makes the line search
# backtrack: the full step of the first box problem is inside the region and lowers the surrogate.
@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
@pytest.mark.parametrize("target_kl", [0.01, 100.0], ids=["small_region", "large_region"])
@pytest.mark.parametrize("kl_constraint", ["mean", "max"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_trust_region_holds(variant, kl_constraint, target_kl, fisher_method):
    model = make_model(variant, target_kl=target_kl, kl_constraint=kl_constraint, fisher_method=fisher_method)
    collect_rollout(model)
    obs, actions = rollout_observations(model), rollout_actions(model)
    old = detached_distribution(model, obs)

    model.train()

    new = detached_distribution(model, obs)
    kl = kl_per_state(old, new)
    logged = model.logger.name_to_value
    # The line search succeeds on these problems; the checks below need it to have moved.
    assert logged["train/is_line_search_success"] == 1.0
    assert kl.max() > 0
    tolerance = 1e-6 + 1e-5 * target_kl  # float32 round-off of the KL the line search measured
    assert kl.mean() <= target_kl + tolerance
    if kl_constraint == "max":
        assert kl.max() <= target_kl + tolerance
    assert logged["train/kl_divergence"] == pytest.approx(kl.mean().item(), rel=1e-3, abs=1e-6)
    assert logged["train/kl_divergence_max"] == pytest.approx(kl.max().item(), rel=1e-3, abs=1e-6)

    before, after = surrogate(model, old.log_prob(actions)), surrogate(model, new.log_prob(actions))
    assert after > before
    assert logged["train/actual_improvement"] == pytest.approx(after - before, rel=1e-2, abs=1e-6)


def test_max_constraint_is_tighter_than_mean():
    """On the same batch, the max-KL line search backtracks at least as far as the mean-KL one."""
    models = {}
    for kl_constraint in ("mean", "max"):
        models[kl_constraint] = model = make_model("discrete", kl_constraint=kl_constraint)
        collect_rollout(model)
        model.train()
        assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    mean, max_ = models["mean"], models["max"]
    np.testing.assert_array_equal(mean.rollout_buffer.actions, max_.rollout_buffer.actions)  # the same batch
    logged = {name: model.logger.name_to_value for name, model in models.items()}
    assert logged["max"]["train/line_search_backtracks"] >= logged["mean"]["train/line_search_backtracks"]
    assert 0 < logged["max"]["train/step_size"] <= logged["mean"]["train/step_size"]
    assert logged["max"]["train/kl_divergence_max"] <= max_.target_kl + 1e-6


# ---------------------------------------------------------------- the critic never moves the actor


def reject_every_candidate(model: TRPO) -> None:
    """Force the line search to fail: no candidate is acceptable, so every step is taken back.

    ``target_kl=1e-12`` is not enough on its own: the float32 KL of a step that small is round-off,
    at times negative, and some candidates pass.
    """
    model._is_acceptable = lambda candidate, before: False


@pytest.mark.parametrize("share_features_extractor", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("variant", ["box", "discrete", "gsde"])
def test_failed_line_search_leaves_the_actor_bit_for_bit(variant, share_features_extractor):
    policy_kwargs = {
        "net_arch": [16],
        "features_extractor_class": TanhExtractor,
        "share_features_extractor": share_features_extractor,
    }
    model = make_model(variant, target_kl=1e-12, policy_kwargs=policy_kwargs)
    reject_every_candidate(model)
    collect_rollout(model)
    actor = actor_parameter_names(model.policy, rollout_observations(model))
    # named_parameters() lists the actor's extractor as features_extractor, shared or not.
    assert {"features_extractor.net.1.weight", "features_extractor.net.1.bias"} <= actor
    before = parameters(model.policy)

    model.train()

    after = parameters(model.policy)
    assert model.logger.name_to_value["train/is_line_search_success"] == 0.0
    assert model.logger.name_to_value["train/line_search_backtracks"] == model.line_search_max_iter
    for name in actor:
        assert th.equal(before[name], after[name]), name
    critic = set(before) - actor
    assert {"value_net.weight", "value_net.bias"} <= critic
    assert ("vf_features_extractor.net.1.weight" in critic) != share_features_extractor
    for name in critic:
        assert not th.equal(before[name], after[name]), name


@pytest.mark.parametrize("share_features_extractor", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("variant", ["box", "multi_discrete"])
def test_critic_fit_does_not_move_the_actor(variant, share_features_extractor, monkeypatch):
    policy_kwargs = {
        "net_arch": [16],
        "features_extractor_class": TanhExtractor,
        "share_features_extractor": share_features_extractor,
    }
    model = make_model(variant, policy_kwargs=policy_kwargs, n_critic_updates=5)
    collect_rollout(model)
    actor = actor_parameter_names(model.policy, rollout_observations(model))
    at_start = parameters(model.policy)
    around_critic_fit = []
    fit_critic = model._fit_critic

    def recording_fit_critic(*args, **kwargs):
        around_critic_fit.append(parameters(model.policy))
        result = fit_critic(*args, **kwargs)
        around_critic_fit.append(parameters(model.policy))
        return result

    monkeypatch.setattr(model, "_fit_critic", recording_fit_critic)
    model.train()

    before_fit, after_fit = around_critic_fit
    assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert any(not th.equal(at_start[name], before_fit[name]) for name in actor)  # the policy step moved the actor
    for name in actor:
        assert th.equal(before_fit[name], after_fit[name]), name
    for name in set(at_start) - actor:
        assert th.equal(at_start[name], before_fit[name]), name  # the policy step leaves the critic alone
        assert not th.equal(before_fit[name], after_fit[name]), name


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("variant", ["box", "discrete", "gsde"])
def test_same_seed_same_parameters(variant):
    def learned(seed):
        model = make_model(variant, seed=seed)
        model.learn(3 * N_STEPS)
        return model

    first, second, other_seed = learned(0), learned(0), learned(1)
    state, same, other = (m.policy.state_dict() for m in (first, second, other_seed))
    for name in state:
        assert th.equal(state[name], same[name]), name
    assert any(not th.equal(state[name], other[name]) for name in state)
    first_opt, second_opt = first.policy.optimizer.state_dict()["state"], second.policy.optimizer.state_dict()["state"]
    assert first_opt.keys() == second_opt.keys()
    assert first_opt
    for index, param_state in first_opt.items():
        for key, value in param_state.items():
            assert th.equal(value, second_opt[index][key])


# ---------------------------------------------------------------- the KL over action dimensions


def flat_update(policy: ActorCriticPolicy, before: dict[str, th.Tensor]) -> th.Tensor:
    return th.cat([(value - before[name]).flatten() for name, value in parameters(policy).items()])


@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_mean_over_action_dimensions_takes_sb3_contribs_step(variant, fisher_method):
    """``kl_action_reduction="mean"``: sb3_contrib.TRPO's policy step on the same rollout; ``"sum"``: a different one."""
    import sb3_contrib

    settings = {"target_kl": 0.02, "n_critic_updates": 0}
    make_env, variant_kwargs = VARIANTS[variant]
    contrib = sb3_contrib.TRPO("MlpPolicy", make_env(), seed=0, **{**SMALL, **variant_kwargs, **settings})
    before = parameters(contrib.policy)
    updates = {}
    for reduction in ("mean", "sum"):
        ours = make_model(
            variant, kl_action_reduction=reduction, fisher_method=fisher_method, rollout_method="sb3", **settings
        )
        ours.policy.load_state_dict(contrib.policy.state_dict())
        collect_rollout(ours)
        ours.train()
        assert ours.logger.name_to_value["train/is_line_search_success"] == 1.0
        updates[reduction] = flat_update(ours.policy, before)
    contrib.rollout_buffer = ours.rollout_buffer  # the same rollout (the same seed collected the same one)
    contrib._logger = ours.logger
    contrib.train()
    reference = flat_update(contrib.policy, before)

    assert reference.norm() > 0
    assert (updates["mean"] - reference).norm() <= 1e-2 * reference.norm()
    if variant in ("box", "multi_binary", "gsde"):  # more than one term per state: "sum" is a smaller region
        assert (updates["sum"] - reference).norm() > 5e-2 * reference.norm()


@pytest.mark.parametrize("variant", VARIANTS)
def test_mean_over_action_dimensions_divides_the_kl_and_fisher(variant):
    """Its KL is sb3-contrib's ``kl_divergence(...).mean()``; its Fisher the joint one over the number of terms."""
    from stable_baselines3.common.distributions import kl_divergence

    from sb3_trpo.common.analytic_fisher import kl_terms_per_state
    from sb3_trpo.common.policy_step import PolicyObjective

    problems = {}
    for reduction in ("sum", "mean"):
        model = make_model(variant, kl_action_reduction=reduction)
        collect_rollout(model)
        batch = model._policy_batch()
        problems[reduction] = (model, batch, model._natural_gradient_problem(batch))
    model, batch, problem = problems["mean"]
    old = copy.copy(model._distribution(batch))
    vector = th.randn(problem.gradient.shape, generator=th.Generator().manual_seed(0))
    terms = kl_terms_per_state(old)
    assert terms == {"box": 2, "box_1d": 1, "multi_binary": 3, "gsde": 2}.get(variant, 1)
    th.testing.assert_close(problem.fisher_vector_product(vector), problems["sum"][2].fisher_vector_product(vector) / terms)

    with th.no_grad():  # a perturbed policy, then the logged KL of each reduction
        for param in problem.params:
            param.add_(0.01 * th.randn(param.shape, generator=th.Generator().manual_seed(1)))
    new = model._distribution(batch)
    evaluation = PolicyObjective(batch, model.kl_action_reduction).evaluate(new, old)
    assert evaluation.kl_mean == pytest.approx(kl_divergence(old, new).mean().item(), rel=1e-5)
    assert evaluation.kl_mean > 0
