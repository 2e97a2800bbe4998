"""The NumPy rollout path against SB3's: the policy's outputs and random draws, then whole rollouts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_trpo import TRPO, TRPOPenalty
from sb3_trpo.accel.rollout import NumpyActorCritic, rollout_unsupported
from sb3_trpo.accel.spec import recognise

CLOSE = dict(rtol=1e-5, atol=1e-5)


def numpy_actor_critic_unsupported(policy: ActorCriticPolicy) -> str | None:
    return rollout_unsupported(recognise(policy))


def make_policy(obs_space: spaces.Space, action_space: spaces.Space, seed: int = 0, **kwargs) -> ActorCriticPolicy:
    th.manual_seed(seed)
    policy = ActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, **kwargs)
    with th.no_grad():  # a log-std away from 0, so that σ enters every product
        if hasattr(policy, "log_std"):
            policy.log_std.copy_(th.linspace(-0.7, 0.4, policy.log_std.numel()).view_as(policy.log_std))
    return policy


def sb3_forward(policy: ActorCriticPolicy, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with th.no_grad():
        actions, values, log_probs = policy(policy.obs_to_tensor(obs)[0])
    return actions.numpy(), values.numpy(), log_probs.numpy()


BOX_OBS = spaces.Box(-2.0, 2.0, (5,), np.float32)
IMAGE_OBS = spaces.Box(0, 255, (6, 6, 1), np.uint8)
CASES = {
    "box-gaussian-tanh": (BOX_OBS, spaces.Box(-1.0, 1.0, (3,), np.float32), {}),
    "box-2d-gaussian": (BOX_OBS, spaces.Box(-1.0, 1.0, (2, 2), np.float32), {}),
    "box-categorical-relu": (BOX_OBS, spaces.Discrete(4), dict(activation_fn=nn.ReLU)),
    "discrete-obs": (spaces.Discrete(7), spaces.Discrete(3), {}),
    "image-obs-flattened": (IMAGE_OBS, spaces.Box(-1.0, 1.0, (2,), np.float32), dict(net_arch=[16])),
    "leaky-relu-shared": (BOX_OBS, spaces.Discrete(2), dict(activation_fn=nn.LeakyReLU, share_features_extractor=False)),
    "elu-separate-arch": (
        BOX_OBS,
        spaces.Box(-1.0, 1.0, (2,), np.float32),
        dict(activation_fn=nn.ELU, net_arch=dict(pi=[8], vf=[16, 4])),
    ),
    "no-hidden-layers": (BOX_OBS, spaces.Box(-1.0, 1.0, (2,), np.float32), dict(net_arch=[])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_forward_matches_policy_and_its_random_draws(case: str) -> None:
    obs_space, action_space, kwargs = CASES[case]
    policy = make_policy(obs_space, action_space, **kwargs)
    assert numpy_actor_critic_unsupported(policy) is None
    obs_space.seed(0)
    obs = np.stack([obs_space.sample() for _ in range(16)])

    th.manual_seed(123)
    expected = sb3_forward(policy, obs)
    expected_rng = th.get_rng_state()
    th.manual_seed(123)
    actions, values, log_probs = NumpyActorCritic.from_policy(policy).forward(obs)

    assert th.equal(th.get_rng_state(), expected_rng)  # the same numbers were drawn
    assert actions.shape == expected[0].shape
    assert actions.dtype == expected[0].dtype
    assert values.shape == expected[1].shape == (16, 1)
    assert values.dtype == np.float32
    assert log_probs.shape == expected[2].shape == (16,)
    assert log_probs.dtype == np.float32
    np.testing.assert_allclose(actions, expected[0], **CLOSE)
    np.testing.assert_allclose(values, expected[1], **CLOSE)
    np.testing.assert_allclose(log_probs, expected[2], **CLOSE)
    with th.no_grad():
        sb3_values = policy.predict_values(policy.obs_to_tensor(obs)[0]).numpy()
    np.testing.assert_allclose(NumpyActorCritic.from_policy(policy).predict_values(obs), sb3_values, **CLOSE)


def test_numpy_forward_reads_the_current_parameters() -> None:
    policy = make_policy(BOX_OBS, spaces.Discrete(3))
    actor_critic = NumpyActorCritic.from_policy(policy)
    obs = np.ones((2, 5), dtype=np.float32)
    with th.no_grad():
        for param in policy.parameters():
            param.add_(0.5)
    with th.no_grad():
        expected = policy.predict_values(th.as_tensor(obs)).numpy()
    np.testing.assert_allclose(actor_critic.predict_values(obs), expected, **CLOSE)


class TwoLayerExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=4)
        self.linear = nn.Linear(5, 4)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


class CustomForwardPolicy(ActorCriticPolicy):
    def forward(self, obs, deterministic=False):  # type: ignore[no-untyped-def]
        return super().forward(obs, deterministic)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: make_policy(BOX_OBS, spaces.Box(-1, 1, (2,)), use_sde=True), "StateDependentNoiseDistribution"),
        (lambda: make_policy(BOX_OBS, spaces.MultiDiscrete([2, 3])), "MultiCategoricalDistribution"),
        (lambda: make_policy(BOX_OBS, spaces.MultiBinary(3)), "BernoulliDistribution"),
        (lambda: make_policy(BOX_OBS, spaces.Discrete(2), activation_fn=nn.Softplus), "activation"),
        (lambda: make_policy(BOX_OBS, spaces.Discrete(2), features_extractor_class=TwoLayerExtractor), "TwoLayerExtractor"),
        (lambda: CustomForwardPolicy(BOX_OBS, spaces.Discrete(2), lambda _: 1e-3), "CustomForwardPolicy"),
        (lambda: make_policy(BOX_OBS, spaces.Discrete(2)).double(), "float32"),
        (lambda: make_policy(spaces.MultiBinary(4), spaces.Discrete(2)), "MultiBinary"),
    ],
    ids=[
        "gsde",
        "multi-discrete",
        "multi-binary",
        "softplus",
        "custom-extractor",
        "custom-forward",
        "float64",
        "multibinary-obs",
    ],
)
def test_unsupported_policies_say_why(make, reason: str) -> None:
    message = numpy_actor_critic_unsupported(make())
    assert message is not None
    assert reason in message
    with pytest.raises(ValueError, match="no NumPy counterpart"):
        NumpyActorCritic.from_policy(make())


def test_hooks_are_not_bypassed() -> None:
    policy = make_policy(BOX_OBS, spaces.Discrete(2))
    policy.action_net.register_forward_hook(lambda *_: None)
    assert "hooks" in (numpy_actor_critic_unsupported(policy) or "")


# ---------------------------------------------------------------------------------------------- whole rollouts


class RecordLocals(BaseCallback):
    """Records, at every step, the local variables SB3's loop gives callbacks; stops after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.stop_after = stop_after
        self.keys: list[frozenset[str]] = []
        self.rollout_events: list[str] = []

    def _on_rollout_start(self) -> None:
        self.rollout_events.append("start")

    def _on_rollout_end(self) -> None:
        self.rollout_events.append("end")

    def _on_step(self) -> bool:
        self.keys.append(frozenset(self.locals))
        assert isinstance(self.locals["values"], th.Tensor)
        assert isinstance(self.locals["log_probs"], th.Tensor)
        assert isinstance(self.locals["clipped_actions"], np.ndarray)
        return self.stop_after is None or self.n_calls < self.stop_after


def collected(env_id: str, method: str, n_envs: int, n_steps: int, normalize: bool = False, **env_kwargs):
    env = make_vec_env(env_id, n_envs=n_envs, seed=3, env_kwargs=env_kwargs)
    if normalize:
        env = VecNormalize(env)
    model = TRPO("MlpPolicy", env, n_steps=n_steps, batch_size=n_steps * n_envs, seed=3, rollout_method=method)
    model.train = lambda: None  # type: ignore[method-assign]  # only the rollout is compared
    callback = RecordLocals()
    model.learn(n_steps * n_envs, callback=callback)
    return model, callback, th.get_rng_state()


@pytest.mark.parametrize(
    ("env_id", "n_envs", "n_steps", "normalize", "env_kwargs"),
    [
        ("CartPole-v1", 2, 96, False, dict(max_episode_steps=30)),  # truncations, bootstrapped
        ("Pendulum-v1", 2, 250, True, {}),  # Box actions, clipped; a truncation at 200 steps; VecNormalize
    ],
    ids=["cartpole-truncated", "pendulum-vecnormalize"],
)
def test_numpy_rollouts_match_sb3_rollouts(env_id: str, n_envs: int, n_steps: int, normalize: bool, env_kwargs) -> None:
    ours, our_callback, our_rng = collected(env_id, "numpy", n_envs, n_steps, normalize, **env_kwargs)
    sb3, sb3_callback, sb3_rng = collected(env_id, "sb3", n_envs, n_steps, normalize, **env_kwargs)
    assert ours.num_timesteps == sb3.num_timesteps == n_envs * n_steps
    for name in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns"):
        np.testing.assert_allclose(getattr(ours.rollout_buffer, name), getattr(sb3.rollout_buffer, name), rtol=1e-4, atol=1e-4)
    assert ours.rollout_buffer.episode_starts.sum() > 0  # episodes ended, so the bootstrap ran
    assert [info["r"] for info in ours.ep_info_buffer] == pytest.approx([info["r"] for info in sb3.ep_info_buffer])
    # Callbacks see every local variable SB3's loop gives them (and a few more of ours).
    assert len(our_callback.keys) == len(sb3_callback.keys) == n_steps
    assert all(theirs <= mine for mine, theirs in zip(our_callback.keys, sb3_callback.keys, strict=True))
    assert our_callback.rollout_events == sb3_callback.rollout_events == ["start", "end"]
    assert th.equal(our_rng, sb3_rng)  # the same random numbers were drawn, no more, no fewer


def test_a_callback_stops_the_numpy_rollout_as_it_stops_sb3s() -> None:
    for method in ("numpy", "sb3"):
        model = TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0, rollout_method=method)
        callback = RecordLocals(stop_after=10)
        model.learn(1000, callback=callback)
        assert model.num_timesteps == 10
        assert callback.rollout_events == ["start"]


def test_auto_uses_numpy_where_covered_and_sb3_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import sb3_trpo.accel.rollout as rollout_module

    calls: list[str] = []
    original = rollout_module.collect_rollouts_numpy

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("numpy")
        return original(*args, **kwargs)

    monkeypatch.setattr(rollout_module, "collect_rollouts_numpy", spy)
    TRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0).learn(32)
    assert calls == ["numpy"]
    TRPO("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, seed=0, use_sde=True).learn(32)  # gSDE: SB3's loop
    TRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0, rollout_method="sb3").learn(32)
    TRPOPenalty("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0).learn(32)
    assert calls == ["numpy", "numpy"]


def test_forcing_numpy_on_an_uncovered_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="rollout_method"):
        TRPO("MlpPolicy", "Pendulum-v1", use_sde=True, rollout_method="numpy")


def test_same_seed_same_training_with_numpy_rollouts() -> None:
    def run() -> list[np.ndarray]:
        model = TRPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=32, seed=5, rollout_method="numpy")
        model.learn(192)
        return [p.detach().numpy().copy() for p in model.policy.parameters()]

    for first, second in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(first, second)


def test_the_forked_loop_follows_the_installed_sb3() -> None:
    """``collect_rollouts_numpy``, ``TRPO._setup_model`` and ``DataParallel.record_infos`` follow SB3's methods: no drift.

    ``tests/data/sb3_on_policy_algorithm.txt`` holds the source of the SB3 methods they were written
    from; when the installed SB3's differ, re-read the fork against the new loop, then update the file.
    """
    import inspect
    from pathlib import Path

    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    methods = (OnPolicyAlgorithm.collect_rollouts, OnPolicyAlgorithm._setup_model, OnPolicyAlgorithm._update_info_buffer)
    installed = "".join(inspect.getsource(method) for method in methods)
    recorded = (Path(__file__).parent / "data" / "sb3_on_policy_algorithm.txt").read_text(encoding="utf-8")
    assert installed == recorded, (
        "SB3's collect_rollouts, _setup_model or _update_info_buffer changed: update sb3_trpo's copies"
    )
