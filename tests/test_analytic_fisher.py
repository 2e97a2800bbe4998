"""The closed-form Fisher-vector product ``Jᵀ M J v`` against explicit Fisher matrices and the autograd product."""

import copy

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from test_fisher import ACTION_SPACES, OBS_SPACE, actor_parameters, distribution, explicit_fisher, states, tiny_policy

from sb3_trpo.common.analytic_fisher import (
    analytic_fisher_vector_product,
    bernoulli_fisher_metric,
    categorical_fisher_metric,
    gaussian_fisher_metric,
    policy_fisher_vector_product,
    supports_analytic_fisher,
)
from sb3_trpo.common.fisher import autograd_fisher_vector_product, kl_per_state
from sb3_trpo.common.natural_gradient import MatrixVectorProduct


def dense(fisher_vector_product: MatrixVectorProduct, n: int, dtype: th.dtype = th.float64) -> th.Tensor:
    """The matrix ``F`` from its products with the basis vectors."""
    return th.stack([fisher_vector_product(e) for e in th.eye(n, dtype=dtype)], dim=1)


def autograd_fisher(distribution_fn, obs, params: list[th.nn.Parameter], dtype: th.dtype = th.float64) -> th.Tensor:
    with th.no_grad():
        old = copy.copy(distribution_fn(obs))
    kl = kl_per_state(old, distribution_fn(obs)).mean()
    return dense(autograd_fisher_vector_product(kl, params), sum(p.numel() for p in params), dtype)


def analytic_fisher(distribution_fn, obs, params: list[th.nn.Parameter], dtype: th.dtype = th.float64) -> th.Tensor:
    fisher_vector_product = analytic_fisher_vector_product(distribution_fn(obs), params)
    assert fisher_vector_product is not None
    return dense(fisher_vector_product, sum(p.numel() for p in params), dtype)


def parameters_used(policy: th.nn.Module, dist) -> list[th.nn.Parameter]:
    """The actor: the parameters the distribution depends on (as TRPO finds them)."""
    params = list(policy.parameters())
    grads = th.autograd.grad(dist.log_prob(dist.sample()).sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def assert_close(actual: th.Tensor, expected: th.Tensor) -> None:
    assert expected.abs().max() > 1e-3  # a meaningful matrix, not zeros
    assert th.allclose(actual, expected, rtol=1e-10, atol=1e-12), (actual - expected).abs().max()


@pytest.mark.parametrize("name", list(ACTION_SPACES))
def test_analytic_fisher_equals_explicit_and_autograd(name):
    policy = tiny_policy(ACTION_SPACES[name])
    obs = states()
    params = actor_parameters(policy, obs)
    assert supports_analytic_fisher(distribution(policy, obs))

    fisher_vector_product = analytic_fisher_vector_product(distribution(policy, obs), params)
    assert fisher_vector_product is not None
    distribution(policy, states(seed=1))  # SB3 rewrites its one distribution object: the product must not care
    fisher = dense(fisher_vector_product, sum(p.numel() for p in params))

    assert_close(fisher, explicit_fisher(policy, obs, params))
    assert_close(fisher, autograd_fisher(lambda o: distribution(policy, o), obs, params))


@pytest.mark.parametrize(("full_std", "use_expln", "squash_output"), [(True, False, False), (False, True, True)])
def test_analytic_fisher_gsde(full_std, use_expln, squash_output):
    # gSDE: σ_s depends on the state's latent features (detached) and on log_std.
    th.manual_seed(0)
    policy = ActorCriticPolicy(
        OBS_SPACE,
        ACTION_SPACES["gaussian"],
        lambda _: 1e-3,
        net_arch=[4],
        use_sde=True,
        full_std=full_std,
        use_expln=use_expln,
        squash_output=squash_output,
        log_std_init=-0.3,
        ortho_init=False,
    ).double()
    with th.no_grad():
        for param in policy.parameters():
            param.add_(0.3 * th.randn_like(param))
    policy.reset_noise()  # the exploration matrix, now in float64 (sampled to find the actor's parameters)
    obs = states()
    params = actor_parameters(policy, obs)
    fisher = analytic_fisher(lambda o: distribution(policy, o), obs, params)

    assert_close(fisher, autograd_fisher(lambda o: distribution(policy, o), obs, params))
    assert_close(fisher, explicit_fisher(policy, obs, params))  # the per-state Gaussian Fisher holds for σ_s too


class LinearExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=5)
        self.linear = th.nn.Linear(observation_space.shape[0], 5)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return th.tanh(self.linear(observations))


@pytest.mark.parametrize("name", ["gaussian", "categorical"])
def test_analytic_fisher_shared_features_extractor(name):
    th.manual_seed(0)
    policy = ActorCriticPolicy(
        OBS_SPACE,
        ACTION_SPACES[name],
        lambda _: 1e-3,
        net_arch=[4],
        features_extractor_class=LinearExtractor,
        share_features_extractor=True,
        ortho_init=False,
    ).double()

    def distribution_fn(obs: th.Tensor):  # SB3's preprocessing would cast to float32
        return policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(policy.features_extractor(obs)))

    obs = states()
    params = parameters_used(policy, distribution_fn(obs))
    assert any(p is policy.features_extractor.linear.weight for p in params)

    assert_close(analytic_fisher(distribution_fn, obs, params), autograd_fisher(distribution_fn, obs, params))


def test_parameters_outside_params_are_held_fixed():
    # Without log_std among the parameters, σ is a constant: F is the μ block alone.
    policy = tiny_policy(ACTION_SPACES["gaussian"])
    obs = states()
    params = [p for p in actor_parameters(policy, obs) if p is not policy.log_std]
    assert len(params) < len(actor_parameters(policy, obs))
    distribution_fn = lambda o: distribution(policy, o)  # noqa: E731
    assert_close(analytic_fisher(distribution_fn, obs, params), autograd_fisher(distribution_fn, obs, params))


def test_policy_fisher_vector_product_dict_observations():
    # SB3's own path (preprocessing, dict observations, float32) through policy.get_distribution.
    th.manual_seed(0)
    observation_space = spaces.Dict(
        {"a": spaces.Box(-1.0, 1.0, (3,), np.float32), "b": spaces.Box(-1.0, 1.0, (2,), np.float32)}
    )
    policy = MultiInputActorCriticPolicy(observation_space, spaces.Discrete(3), lambda _: 1e-3, net_arch=[8])
    obs = {"a": th.rand(6, 3) * 2 - 1, "b": th.rand(6, 2) * 2 - 1}
    params = parameters_used(policy, policy.get_distribution(obs))
    n = sum(p.numel() for p in params)

    fisher_vector_product = policy_fisher_vector_product(policy, obs, params)
    assert fisher_vector_product is not None
    analytic = dense(fisher_vector_product, n, th.float32)
    autograd = autograd_fisher(policy.get_distribution, obs, params, th.float32)
    assert th.allclose(analytic, autograd, rtol=1e-4, atol=1e-6 * autograd.abs().max().item())


class CustomCategorical(CategoricalDistribution):
    """A user's distribution: no closed form is assumed for it, even as a subclass."""


def test_unsupported_distribution_falls_back():
    dist = CustomCategorical(3).proba_distribution(th.zeros(2, 3, requires_grad=True))
    assert not supports_analytic_fisher(dist)
    assert analytic_fisher_vector_product(dist, []) is None


def _hessian_of_kl(make_distribution, point: th.Tensor) -> th.Tensor:
    old = make_distribution(point)
    return th.autograd.functional.hessian(
        lambda x: th.distributions.kl_divergence(old, make_distribution(x)).sum(), point.clone()
    )


def test_closed_form_metrics_are_hessians_of_kl():
    # M is the Hessian of KL(p_η0 ‖ p_η) at η = η0, in the distribution's own parameters.
    gen = th.Generator().manual_seed(0)
    eye = th.eye(4, dtype=th.float64)

    mean, std = th.randn(2, generator=gen, dtype=th.float64), th.rand(2, generator=gen, dtype=th.float64) + 0.5
    hessian = _hessian_of_kl(lambda x: th.distributions.Normal(x[:2], x[2:]), th.cat([mean, std]))
    metric = th.stack([th.cat(gaussian_fisher_metric((mean, std), (e[:2], e[2:]))) for e in eye], dim=1)
    assert th.allclose(metric, hessian, rtol=1e-12)
    assert th.allclose(metric.diagonal(), th.cat([std.pow(-2), 2 * std.pow(-2)]), rtol=1e-12)

    logits = th.randn(4, generator=gen, dtype=th.float64)
    hessian = _hessian_of_kl(lambda x: th.distributions.Categorical(logits=x), logits)
    metric = th.stack([categorical_fisher_metric((logits,), (e,))[0] for e in eye], dim=1)
    assert th.allclose(metric, hessian, rtol=1e-12, atol=1e-15)

    hessian = _hessian_of_kl(lambda x: th.distributions.Bernoulli(logits=x), logits)
    metric = th.stack([bernoulli_fisher_metric((logits,), (e,))[0] for e in eye], dim=1)
    assert th.allclose(metric, hessian, rtol=1e-12, atol=1e-15)
