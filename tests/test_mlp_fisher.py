"""SB3's MLP actor by hand (Fisher-vector products, policy gradient, outputs) against autograd and SB3."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from test_analytic_fisher import dense
from test_fisher import distribution
from torch import nn

from sb3_trpo import TRPO
from sb3_trpo.accel.actor import (
    PolicyMLPActor,
    mlp_actor_unsupported,
    policy_mlp_fisher_vector_product,
    trainable_actor_params,
)
from sb3_trpo.accel.critic import weight_gradient
from sb3_trpo.accel.spec import recognise
from sb3_trpo.common.analytic_fisher import analytic_fisher_vector_product
from sb3_trpo.common.policy_step import surrogate_objective

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


@pytest.mark.parametrize("action_space", [GAUSSIAN, CATEGORICAL], ids=["gaussian", "categorical"])
def test_an_actor_keeps_the_fisher_of_the_parameters_it_was_built_at(action_space):
    policy = make_policy(action_space, net_arch=[4])
    obs = observations()
    expected_actor = PolicyMLPActor.from_policy(policy, obs)
    assert expected_actor is not None
    n = sum(p.numel() for p in expected_actor.params)
    expected = dense(expected_actor.fisher_vector_product(), n)
    actor = PolicyMLPActor.from_policy(policy, obs)
    assert actor is not None
    with th.no_grad():  # the parameters move (log-std included) before the product is asked for
        for param in actor.params:
            param.add_(0.3)
    th.testing.assert_close(dense(actor.fisher_vector_product(), n), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "params_of", "reason"),
    [
        (lambda: make_policy(GAUSSIAN, use_sde=True), actor_params, "StateDependentNoiseDistribution"),
        (lambda: make_policy(spaces.MultiDiscrete([2, 3])), actor_params, "MultiCategoricalDistribution"),
        (lambda: make_policy(CATEGORICAL, activation_fn=nn.Softplus), actor_params, "activation"),
        (lambda: make_policy(CATEGORICAL), lambda policy: list(policy.parameters()), "not the MLP actor's"),
    ],
    ids=["gsde", "multi-discrete", "softplus", "critic-parameters"],
)
def test_uncovered_policies_return_none(make, params_of, reason):
    policy = make()
    assert reason in (mlp_actor_unsupported(policy, params_of(policy)) or "")
    assert policy_mlp_fisher_vector_product(policy, observations(), params_of(policy)) is None


def surrogate_of(policy: ActorCriticPolicy, obs: th.Tensor, mask: th.Tensor | None = None):
    """A surrogate ``L(π)`` on random actions, behaviour log-probabilities and advantages."""
    generator = th.Generator().manual_seed(2)
    with th.no_grad():
        actions = distribution(policy, obs).sample()
    behaviour_log_prob = -th.rand(obs.shape[0], generator=generator, dtype=th.float64)
    advantages = th.randn(obs.shape[0], generator=generator, dtype=th.float64)
    return lambda dist: surrogate_objective(dist.log_prob(actions), behaviour_log_prob, advantages, mask)


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_gradient_equals_autograd(case):
    action_space, kwargs = CASES[case]
    policy = make_policy(action_space, **kwargs)
    obs, params = observations(), actor_params(policy)
    objective = surrogate_of(policy, obs)
    actor = PolicyMLPActor.from_policy(policy, obs, params)
    assert actor is not None
    value, gradient = actor.gradient(objective)
    expected_value = objective(distribution(policy, obs))
    expected = th.cat([g.reshape(-1) for g in th.autograd.grad(expected_value, params)])
    assert_close(value, expected_value.detach())
    assert_close(gradient, expected)


def test_policy_gradient_with_masked_states_and_frozen_parameters():
    policy = make_policy(GAUSSIAN, net_arch=[4])
    policy.mlp_extractor.policy_net[0].bias.requires_grad_(False)
    obs = observations()
    mask = th.tensor([True, False, True, True, False, True, True])
    params = trainable_actor_params(recognise(policy))  # type: ignore[arg-type]
    ids = {id(p) for p in params}
    assert id(policy.mlp_extractor.policy_net[0].bias) not in ids
    assert id(policy.log_std) in ids
    objective = surrogate_of(policy, obs, mask)
    actor = PolicyMLPActor.from_policy(policy, obs, mask=mask)
    assert actor is not None
    assert [id(p) for p in actor.params] == [id(p) for p in params]
    expected = th.cat([g.reshape(-1) for g in th.autograd.grad(objective(distribution(policy, obs)), params)])
    assert_close(actor.gradient(objective)[1], expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_distributions_are_the_policys(case):
    action_space, kwargs = CASES[case]
    policy = make_policy(action_space, **kwargs)
    obs = observations()
    actor = PolicyMLPActor.from_policy(policy, obs)
    assert actor is not None
    old = actor.distribution(actor.outputs_old)
    with th.no_grad():  # a line search moves the parameters: outputs() follows them, outputs_old does not
        for param in actor.params:
            param.add_(0.1)
    expected, candidate = distribution(policy, obs), actor.distribution(actor.outputs())
    actions = expected.sample()
    assert_close(candidate.log_prob(actions), expected.log_prob(actions))
    assert_close(candidate.entropy(), expected.entropy())
    assert not th.allclose(old.log_prob(actions), expected.log_prob(actions))


def test_a_subset_equals_the_actor_on_those_states():
    policy = make_policy(GAUSSIAN, net_arch=[4, 3], activation_fn=nn.ReLU)
    obs, index = observations(), th.tensor([0, 3, 6])
    actor, on_subset = PolicyMLPActor.from_policy(policy, obs), PolicyMLPActor.from_policy(policy, obs[index])
    assert actor is not None
    assert on_subset is not None
    n = sum(p.numel() for p in actor.params)
    assert_close(dense(actor.subset(index).fisher_vector_product(), n), dense(on_subset.fisher_vector_product(), n))


@pytest.mark.parametrize(("n_in", "n_out"), [(3, 64), (64, 3), (8, 8), (1, 1)])
def test_weight_gradient_is_delta_transposed_times_inputs(n_in, n_out):
    generator = th.Generator().manual_seed(0)
    delta = th.randn(50, n_out, dtype=th.float64, generator=generator)
    inputs = th.randn(50, n_in, dtype=th.float64, generator=generator)
    out, scratch = th.empty(n_out, n_in, dtype=th.float64), th.empty(n_in, n_out, dtype=th.float64)
    weight_gradient(delta, inputs, out)
    th.testing.assert_close(out, delta.t() @ inputs, rtol=1e-12, atol=1e-12)
    out.zero_()
    weight_gradient(delta, inputs, out, scratch if n_in < n_out else None)
    th.testing.assert_close(out, delta.t() @ inputs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        ("Pendulum-v1", {"kl_action_reduction": "mean", "fisher_sub_sampling_factor": 3}),
        ("Pendulum-v1", {"sub_sampling_factor": 2, "normalize_advantage": False}),
    ],
)
def test_trpo_problem_by_hand_equals_the_autograd_one(monkeypatch, env_id, kwargs):
    """The policy step's g, F v, L(θ_old) and candidate evaluations: the same by hand as through autograd."""
    model = TRPO("MlpPolicy", env_id, n_steps=128, batch_size=128, n_critic_updates=1, seed=0, **kwargs)
    model.learn(128)
    batch = model._policy_batch()
    by_hand = model._natural_gradient_problem(batch)
    model.actor_method = "torch"
    assert model.select_backends().actor.name == "torch"
    through_autograd = model._natural_gradient_problem(batch)
    assert all(a is b for a, b in zip(by_hand.params, through_autograd.params, strict=True))
    vector = th.randn_like(by_hand.gradient, generator=th.Generator().manual_seed(0))
    for actual, expected in [
        (by_hand.gradient, through_autograd.gradient),
        (by_hand.fisher_vector_product(vector), through_autograd.fisher_vector_product(vector)),
    ]:
        assert expected.abs().max() > 1e-6
        th.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert by_hand.before.objective == pytest.approx(through_autograd.before.objective, rel=1e-5, abs=1e-7)
    with th.no_grad():  # a candidate of the line search
        for param in by_hand.params:
            param.add_(0.01 * th.randn_like(param))
    candidate, expected_candidate = by_hand.evaluate(), through_autograd.evaluate()
    assert expected_candidate.kl_mean > 0
    for field in ("objective", "kl_mean", "kl_max"):
        assert getattr(candidate, field) == pytest.approx(getattr(expected_candidate, field), rel=1e-4, abs=1e-7)


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
    original = PolicyMLPActor.gradient

    def spy(self, objective):
        calls.append(1)
        return original(self, objective)

    monkeypatch.setattr(PolicyMLPActor, "gradient", spy)
    model = TRPO("MlpPolicy", env_id, n_steps=64, batch_size=64, n_critic_updates=1, seed=0, **kwargs)
    model.learn(64)
    assert bool(calls) == expected
    assert model.logger.name_to_value["train/cg_iterations"] > 0
