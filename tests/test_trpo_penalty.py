"""TRPOPenalty: the adaptive-β rule, the natural penalised step, state that survives save/load."""

import math

import pytest
import torch as th

from sb3_trpo import TRPOPenalty
from sb3_trpo.common.kl_penalty import adapt_kl_coefficient
from sb3_trpo.common.natural_gradient import conjugate_gradient, flat_concat
from sb3_trpo.trpo.trpo import surrogate_objective

RULE = dict(target_kl=0.01, tolerance=1.5, factor=2.0, beta_min=0.1, beta_max=8.0)


def run_rule(beta: float, kls: list[float]) -> list[float]:
    betas = []
    for kl in kls:
        beta = adapt_kl_coefficient(beta, kl, **RULE)
        betas.append(beta)
    return betas


@pytest.mark.parametrize(
    ("kls", "expected"),
    [
        ([0.02, 0.02, 0.02], [2.0, 4.0, 8.0]),  # above target · tol: up, then clipped at beta_max
        ([0.02, 0.02, 0.02, 0.02], [2.0, 4.0, 8.0, 8.0]),
        ([0.001, 0.001, 0.001, 0.001, 0.001], [0.5, 0.25, 0.125, 0.1, 0.1]),  # down, then clipped at beta_min
        ([0.01, 0.0149, 0.0067, 0.012], [1.0, 1.0, 1.0, 1.0]),  # inside the band: unchanged
        ([0.015001, 0.006666], [2.0, 1.0]),  # just outside each edge
        ([math.nan, math.inf], [2.0, 4.0]),  # non-finite counts as too far
    ],
)
def test_adaptation_rule_on_scripted_kl_sequences(kls, expected):
    assert run_rule(1.0, kls) == pytest.approx(expected, rel=1e-12)


def test_natural_penalised_step_is_maximiser_of_quadratic_model():
    # max_Δ gᵀΔ − (β/2) ΔᵀFΔ has its stationary point at Δ = F⁻¹g / β; CG gives x = F⁻¹g.
    gen = th.Generator().manual_seed(0)
    a = th.randn(6, 6, generator=gen, dtype=th.float64)
    fisher = a @ a.T + 0.5 * th.eye(6, dtype=th.float64)
    g = th.randn(6, generator=gen, dtype=th.float64)
    beta = 3.0
    x = conjugate_gradient(lambda v: fisher @ v, g, max_steps=50, residual_tol=1e-28).solution
    step = x / beta
    assert th.allclose(g - beta * fisher @ step, th.zeros(6, dtype=th.float64), atol=1e-10)
    # and it beats nearby steps
    model_value = lambda d: (g @ d - 0.5 * beta * d @ fisher @ d).item()  # noqa: E731
    for _ in range(10):
        assert model_value(step) >= model_value(step + 1e-3 * th.randn(6, generator=gen, dtype=th.float64))


def make_model(**kwargs) -> TRPOPenalty:
    params = dict(n_steps=128, batch_size=64, n_critic_updates=2, policy_kwargs=dict(net_arch=[8]), seed=0)
    params.update(kwargs)
    return TRPOPenalty("MlpPolicy", "CartPole-v1", **params)


def collect(model: TRPOPenalty) -> None:
    _, callback = model._setup_learn(model.n_steps * model.n_envs, callback=None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def actor_vector(model: TRPOPenalty) -> th.Tensor:
    return flat_concat(
        [p.detach() for p in model.policy.action_net.parameters()]
        + [p.detach() for p in model.policy.mlp_extractor.policy_net.parameters()]
    )


@pytest.mark.parametrize("beta", [0.5, 4.0, 50.0])
def test_natural_step_equals_cg_direction_over_beta(beta):
    # Exact CG on the tiny actor (n_params < cg_max_steps): the accepted step is fraction · x / β.
    model = make_model(beta=beta, cg_max_steps=200, cg_residual_tol=0.0, cg_damping=0.1)
    collect(model)
    batch = model._policy_batch()
    problem = model._natural_gradient_problem(batch)
    n = problem.gradient.numel()
    fisher = th.stack([problem.fisher_vector_product(e) for e in th.eye(n)], dim=1).double()
    x = th.linalg.solve(fisher + 0.1 * th.eye(n, dtype=th.float64), problem.gradient.double())
    before = flat_concat([p.detach().clone() for p in problem.params])

    stats = model._policy_step(batch)
    after = flat_concat([p.detach() for p in model.backends.actor.params])
    assert stats.line_search_success
    fraction = model.line_search_shrinking_factor**stats.line_search_backtracks
    assert th.allclose((after - before).double(), fraction * x / beta, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["natural", "first_order"])
def test_penalised_objective_never_decreases_after_an_accepted_natural_step(optimizer):
    model = make_model(policy_optimizer=optimizer, n_epochs=2, policy_batch_size=32)
    for _ in range(4):
        collect(model)
        batch = model._policy_batch()
        with th.no_grad():
            dist = model.policy.get_distribution(batch.observations)
            objective_before = surrogate_objective(dist.log_prob(batch.actions), batch.behaviour_log_prob, batch.advantages)
        beta_used = model.beta
        stats = model._policy_step(batch)
        if optimizer == "natural" and stats.line_search_success:
            assert stats.objective - beta_used * stats.kl_mean > objective_before.item()
        # β moved by exactly the rule
        expected = adapt_kl_coefficient(
            beta_used,
            stats.kl_mean if stats.line_search_success else math.inf,
            model.target_kl,
            model.kl_tolerance,
            model.beta_factor,
            model.beta_min,
            model.beta_max,
        )
        assert model.beta == expected


@pytest.mark.parametrize("optimizer", ["natural", "first_order"])
def test_save_load_keeps_beta_and_resumes_from_it(tmp_path, optimizer):
    model = make_model(policy_optimizer=optimizer, n_epochs=1).learn(256)
    model.beta = 3.7
    model.save(tmp_path / "penalty")
    loaded = TRPOPenalty.load(tmp_path / "penalty", env=model.get_env())
    assert loaded.beta == 3.7
    assert loaded.policy_optimizer == optimizer
    for key, value in model.policy_adam.state_dict()["state"].items():
        for name, tensor in value.items():
            assert th.equal(loaded.policy_adam.state_dict()["state"][key][name], tensor)
    n_updates = loaded._n_updates
    loaded.learn(loaded.n_steps * loaded.n_envs, reset_num_timesteps=False)
    assert loaded._n_updates == n_updates + 1
    assert any(loaded.beta == pytest.approx(value, rel=1e-12) for value in (3.7 * 2, 3.7, 3.7 / 2))


def test_current_beta_is_logged():
    model = make_model(beta=0.3)
    collect(model)
    model.train()
    assert model.beta != 0.3  # CartPole's first steps are far from KL = 0.01 either way
    assert model.logger.name_to_value["train/beta"] == model.beta


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=-1.0), "beta"),
        (dict(beta=math.nan), "beta"),
        (dict(kl_tolerance=1.0), "kl_tolerance"),
        (dict(kl_tolerance=0.5), "kl_tolerance"),
        (dict(beta_factor=1.0), "beta_factor"),
        (dict(beta_min=0.0), "beta_min"),
        (dict(beta_min=2.0, beta_max=1.0), "beta_max"),
        (dict(beta=100.0, beta_max=10.0), "beta"),
        (dict(policy_optimizer="adam"), "policy_optimizer"),
        (dict(n_epochs=0), "n_epochs"),
        (dict(policy_learning_rate=0.0), "policy_learning_rate"),
        (dict(policy_batch_size=0), "policy_batch_size"),
        (dict(target_kl=0.0), "target_kl"),
    ],
)
def test_bad_input_raises_value_error_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make_model(**kwargs)


def test_first_order_step_with_overflowing_loss_is_skipped_and_restores_parameters():
    # Finite advantages whose mean overflows float32: the loss is inf on the first minibatch.
    model = make_model(policy_optimizer="first_order", normalize_advantage=False, n_epochs=2, policy_batch_size=32)
    collect(model)
    model.rollout_buffer.advantages[:] = 3e38
    before = [p.detach().clone() for p in model.policy.parameters()]
    beta = model.beta
    with pytest.warns(RuntimeWarning, match="skipped"):
        stats = model._policy_step(model._policy_batch())
    assert stats.skipped
    assert model.n_skipped_policy_updates == 1
    assert model.beta == beta
    for old, new in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(old, new.detach())
