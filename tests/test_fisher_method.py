"""TRPO's choice of Fisher-vector product: analytic where there is a closed form, autograd otherwise."""

import pytest
import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo import TRPO
from sb3_trpo.common.natural_gradient import flat_concat


class CustomGaussian(DiagGaussianDistribution):
    """A user's own distribution: no closed form is known for it."""


class CustomPolicy(ActorCriticPolicy):
    def _build(self, lr_schedule):
        self.action_dist = CustomGaussian(int(self.action_space.shape[0]))
        super()._build(lr_schedule)


def trained(env_id: str, fisher_method: str, **kwargs) -> TRPO:
    model = TRPO("MlpPolicy", env_id, n_steps=256, n_critic_updates=1, seed=3, fisher_method=fisher_method, **kwargs)
    return model.learn(512)


@pytest.mark.parametrize(("env_id", "kwargs"), [("Pendulum-v1", {}), ("Pendulum-v1", {"use_sde": True}), ("CartPole-v1", {})])
def test_analytic_and_autograd_products_give_the_same_training(env_id, kwargs):
    analytic = trained(env_id, "analytic", **kwargs)
    autograd = trained(env_id, "autograd", **kwargs)
    a = flat_concat([p.detach() for p in analytic.policy.parameters()])
    b = flat_concat([p.detach() for p in autograd.policy.parameters()])
    assert not th.equal(a, flat_concat([p.detach() for p in TRPO("MlpPolicy", env_id, seed=3, **kwargs).policy.parameters()]))
    assert th.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_uses_the_closed_form_for_sb3_distributions_and_autograd_otherwise(monkeypatch):
    import sb3_trpo.common.backends as backends_module

    calls = []
    original = backends_module.analytic_fisher_vector_product

    def spy(distribution, params, mask=None):
        product = original(distribution, params, mask)
        calls.append(product is not None)
        return product

    monkeypatch.setattr(backends_module, "analytic_fisher_vector_product", spy)
    # Softplus: not the hand-written MLP product (tests/test_mlp_fisher.py), the closed form through autograd.
    softplus = {"activation_fn": th.nn.Softplus}
    TRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_critic_updates=0, policy_kwargs=softplus).learn(64)
    TRPO(CustomPolicy, "Pendulum-v1", n_steps=64, batch_size=64, n_critic_updates=0).learn(64)
    TRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_critic_updates=0, fisher_method="autograd").learn(64)
    assert calls == [True, False]


def test_analytic_for_a_distribution_without_closed_form_is_rejected_at_construction():
    with pytest.raises(ValueError, match="fisher_method"):
        TRPO(CustomPolicy, "Pendulum-v1", fisher_method="analytic")
    with pytest.raises(ValueError, match="fisher_method must be one of"):
        TRPO("MlpPolicy", "Pendulum-v1", fisher_method="fast")


@pytest.mark.parametrize("fisher_method", ["analytic", "autograd"])
def test_fisher_sub_sampling_uses_every_kth_state_for_the_fisher_and_all_states_for_the_gradient(fisher_method):
    import copy

    from sb3_trpo.common.fisher import autograd_fisher_vector_product, kl_per_state

    def problem_of(k: int):
        model = TRPO(
            "MlpPolicy",
            "Pendulum-v1",
            n_steps=256,
            batch_size=64,
            seed=5,
            fisher_method=fisher_method,
            fisher_sub_sampling_factor=k,
        )
        _, callback = model._setup_learn(256, callback=None)
        callback.on_training_start(locals(), globals())
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        batch = model._policy_batch()
        return model, batch, model._natural_gradient_problem(batch)

    model, batch, problem = problem_of(4)
    _, _, full = problem_of(1)
    assert th.equal(problem.gradient, full.gradient)  # the gradient keeps the whole batch

    # Reference: the autograd Fisher of the mean KL over states 0, 4, 8, ...
    observations = batch.observations[::4]
    with th.no_grad():
        old = copy.copy(model.policy.get_distribution(observations))
    kl = kl_per_state(old, model.policy.get_distribution(observations)).mean()
    reference = autograd_fisher_vector_product(kl, problem.params)
    v = th.randn(problem.gradient.numel(), generator=th.Generator().manual_seed(0))
    assert th.allclose(problem.fisher_vector_product(v), reference(v), rtol=1e-4, atol=1e-6)
    assert not th.allclose(full.fisher_vector_product(v), reference(v), rtol=1e-2, atol=0)


def test_fisher_sub_sampling_trains_and_is_validated():
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, fisher_sub_sampling_factor=10).learn(256)
    assert model.fisher_sub_sampling_factor == 10
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="fisher_sub_sampling_factor must be an integer >= 1"):
            TRPO("MlpPolicy", "CartPole-v1", fisher_sub_sampling_factor=bad)
