"""The hand-written Fisher-vector product of SB3's MLP actor against the autograd-based closed form."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from test_analytic_fisher import dense
from test_fisher import distribution
from torch import nn

import sb3_trpo.trpo.trpo as trpo_module
from sb3_trpo import TRPO
from sb3_trpo.common.analytic_fisher import analytic_fisher_vector_product
from sb3_trpo.common.mlp_fisher import mlp_actor_unsupported, policy_mlp_fisher_vector_product

OBS_SPACE = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
GAUSSIAN = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
CATEGORICAL = spaces.Discrete(3)
CASES = {
    "gaussian-tanh": (GAUSSIAN, dict(net_arch=[4])),
    "gaussian-relu-two-layers": (GAUSSIAN, dict(net_arch=[4, 3], activation_fn=nn.ReLU)),
    "gaussian-no-hidden-layer": (GAUSSIAN, dict(net_arch=[])),
    "categorical-tanh": (CATEGORICAL, dict(net_arch=[4])),
    "categorical-leaky-relu": (CATEGORICAL, dict(net_arch=[5], activation_fn=nn.LeakyReLU)),
    "categorical-elu-separate-nets": (CATEGORICAL, dict(net_arch=dict(pi=[4, 2], vf=[3]), activation_fn=nn.ELU)),
}


def make_policy(action_space: spaces.Space, seed: int = 0, **kwargs) -> ActorCriticPolicy:
    th.manual_seed(seed)
    policy = ActorCriticPolicy(OBS_SPACE, action_space, lambda _: 1e-3, log_std_init=-0.3, ortho_init=False, **kwargs)
    policy = policy.double()
    with th.no_grad():  # away from the symmetric initial point, and some ReLU/ELU units below 0
        for param in policy.parameters():
            param.add_(0.5 * th.randn_like(param))
    return policy


def observations(n: int = 7) -> th.Tensor:
    # Exactly representable in float32: SB3's preprocessing casts to float32 before the float64 layers.
    return (2.0 * th.rand(n, 3, generator=th.Generator().manual_seed(0)) - 1.0).double()


def actor_params(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    return [p for name, p in policy.named_parameters() if not name.startswith(("mlp_extractor.value_net", "value_net"))]


def assert_close(actual: th.Tensor, expected: th.Tensor) -> None:
    assert expected.abs().max() > 1e-3
    th.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_closed_form_through_autograd(case):
    action_space, kwargs = CASES[case]
    policy = make_policy(action_space, **kwargs)
    obs, params = observations(), actor_params(policy)
    n = sum(p.numel() for p in params)
    by_hand = policy_mlp_fisher_vector_product(policy, obs, params)
    through_autograd = analytic_fisher_vector_product(distribution(policy, obs), params)
    assert by_hand is not None
    assert through_autograd is not None
    assert_close(dense(by_hand, n), dense(through_autograd, n))


def test_masked_states_and_frozen_parameters():
    policy = make_policy(GAUSSIAN, net_arch=[4])
    policy.log_std.requires_grad_(False)
    obs = observations()
    params = [p for p in actor_params(policy) if p.requires_grad and p is not policy.mlp_extractor.policy_net[0].bias]
    mask = th.tensor([True, False, True, True, False, True, True])
    n = sum(p.numel() for p in params)
    by_hand = policy_mlp_fisher_vector_product(policy, obs, params, mask)
    through_autograd = analytic_fisher_vector_product(distribution(policy, obs), params, mask)
    assert by_hand is not None
    assert through_autograd is not None
    assert_close(dense(by_hand, n), dense(through_autograd, n))


def test_products_stay_those_of_the_parameters_at_the_first_call():
    policy = make_policy(CATEGORICAL, net_arch=[4])
    obs, params = observations(), actor_params(policy)
    vector = th.randn(sum(p.numel() for p in params), dtype=th.float64, generator=th.Generator().manual_seed(1))
    product = policy_mlp_fisher_vector_product(policy, obs, params)
    assert product is not None
    before = product(vector)
    with th.no_grad():  # a line search moves the parameters
        for param in params:
            param.add_(1.0)
    th.testing.assert_close(product(vector), before, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "params_of", "reason"),
    [
        (lambda: make_policy(GAUSSIAN, use_sde=True), actor_params, "StateDependentNoiseDistribution"),
        (lambda: make_policy(spaces.MultiDiscrete([2, 3])), actor_params, "MultiCategoricalDistribution"),
        (lambda: make_policy(CATEGORICAL, activation_fn=nn.SiLU), actor_params, "activation"),
        (lambda: make_policy(CATEGORICAL), lambda policy: list(policy.parameters()), "not the MLP actor's"),
    ],
    ids=["gsde", "multi-discrete", "silu", "critic-parameters"],
)
def test_uncovered_policies_return_none(make, params_of, reason):
    policy = make()
    assert reason in (mlp_actor_unsupported(policy, params_of(policy)) or "")
    assert policy_mlp_fisher_vector_product(policy, observations(), params_of(policy)) is None


@pytest.mark.parametrize(
    ("env_id", "kwargs", "expected"),
    [
        ("CartPole-v1", {}, True),
        ("Pendulum-v1", {}, True),
        ("Pendulum-v1", {"fisher_method": "autograd"}, False),
        ("Pendulum-v1", {"use_sde": True}, False),
    ],
)
def test_trpo_uses_it_where_covered(monkeypatch, env_id, kwargs, expected):
    calls = []
    original = trpo_module.policy_mlp_fisher_vector_product

    def spy(*args, **spy_kwargs):
        calls.append(1)
        return original(*args, **spy_kwargs)

    monkeypatch.setattr(trpo_module, "policy_mlp_fisher_vector_product", spy)
    model = TRPO("MlpPolicy", env_id, n_steps=64, batch_size=64, n_critic_updates=1, seed=0, **kwargs)
    model.learn(64)
    assert bool(calls) == expected
    assert model.logger.name_to_value["train/cg_iterations"] > 0
