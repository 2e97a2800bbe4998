"""The pure natural-gradient functions against exact answers."""

import math

import pytest
import torch as th

from sb3_trpo.common.natural_gradient import (
    add_flat_to_params,
    backtracking_line_search,
    conjugate_gradient,
    flat_concat,
    flat_grad,
    trust_region_step_scale,
)


def random_spd(n: int, seed: int, condition: float = 50.0) -> th.Tensor:
    gen = th.Generator().manual_seed(seed)
    q, _ = th.linalg.qr(th.randn(n, n, generator=gen, dtype=th.float64))
    eigenvalues = th.logspace(0, math.log10(condition), n, dtype=th.float64)
    return q @ th.diag(eigenvalues) @ q.T


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (5, 1), (20, 2)])
def test_conjugate_gradient_matches_dense_solve(n, seed):
    a = random_spd(n, seed)
    b = th.randn(n, generator=th.Generator().manual_seed(seed + 10), dtype=th.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_steps=10 * n, residual_tol=1e-24)
    expected = th.linalg.solve(a, b)
    assert th.allclose(result.solution, expected, rtol=1e-9, atol=1e-11)
    assert result.residual_norm == pytest.approx(th.linalg.vector_norm(b - a @ result.solution).item(), abs=1e-10)
    assert 1 <= result.iterations <= 10 * n


def test_conjugate_gradient_stops_on_residual_tolerance():
    # On a multiple of the identity the first step is exact, so the tolerance ends the loop there.
    b = th.tensor([1.0, -2.0, 3.0], dtype=th.float64)
    result = conjugate_gradient(lambda v: 4.0 * v, b, max_steps=50, residual_tol=1e-20)
    assert result.iterations == 1
    assert th.allclose(result.solution, b / 4.0)


def test_conjugate_gradient_stops_on_breakdown_instead_of_writing_nan():
    # float32 with residual_tol=0: ‖r‖² > 0 still, but pᵀAp underflows to 0, so α would be inf.
    b = th.tensor([1e-20, -1e-20], dtype=th.float32)
    result = conjugate_gradient(lambda v: 1e-30 * v, b, max_steps=50, residual_tol=0.0)
    assert th.isfinite(result.solution).all()
    assert result.iterations == 0


def test_conjugate_gradient_respects_max_steps():
    a = random_spd(30, 3, condition=1e4)
    b = th.ones(30, dtype=th.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_steps=3, residual_tol=0.0)
    assert result.iterations == 3
    assert result.residual_norm > 0.0


def test_conjugate_gradient_first_iterate_is_steepest_descent_step():
    # x_1 = (bᵀb / bᵀAb) b, the exact minimiser of the quadratic along b.
    a = random_spd(6, 4)
    b = th.randn(6, generator=th.Generator().manual_seed(5), dtype=th.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_steps=1)
    assert th.allclose(result.solution, (b @ b) / (b @ a @ b) * b, rtol=1e-12)


def test_trust_region_step_scale_puts_the_quadratic_kl_on_the_boundary():
    a = random_spd(4, 6)
    x = th.tensor([0.3, -1.0, 2.0, 0.5], dtype=th.float64)
    curvature = (x @ a @ x).item()
    scale = trust_region_step_scale(curvature, max_kl=0.01)
    step = scale * x
    assert 0.5 * (step @ a @ step).item() == pytest.approx(0.01, rel=1e-12)


@pytest.mark.parametrize("curvature", [0.0, -1.0, math.nan, math.inf])
def test_trust_region_step_scale_rejects_non_positive_or_non_finite_curvature(curvature):
    assert math.isnan(trust_region_step_scale(curvature, max_kl=0.01))


def test_flat_grad_and_flat_params_round_trip():
    w = th.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = th.tensor([0.5], requires_grad=True)
    unused = th.tensor([7.0], requires_grad=True)
    out = (w**2).sum() + 3 * b.sum()
    grad = flat_grad(out, [w, b, unused])
    assert th.equal(grad, th.tensor([2.0, 4.0, 6.0, 8.0, 3.0, 0.0]))
    origin = [w.detach().clone(), b.detach().clone(), unused.detach().clone()]
    add_flat_to_params([w, b, unused], origin, th.arange(6.0))
    assert th.equal(flat_concat([w, b, unused]), flat_concat(origin) + th.arange(6.0))
    with pytest.raises(ValueError, match="flat_step"):
        add_flat_to_params([w], [origin[0]], th.zeros(5))


class QuadraticPolicy:
    """θ with a linear objective gᵀ(θ − θ0) and a quadratic KL ½ (θ − θ0)ᵀ F (θ − θ0)."""

    def __init__(self, n: int = 5, seed: int = 0):
        gen = th.Generator().manual_seed(seed)
        self.theta0 = th.randn(n, generator=gen, dtype=th.float64) * 1e-3 + 1.0 / 3.0
        self.params = [th.nn.Parameter(self.theta0.clone())]
        self.fisher = random_spd(n, seed)
        self.gradient = th.randn(n, generator=gen, dtype=th.float64)

    def evaluate(self) -> tuple[float, float]:
        d = self.params[0].detach() - self.theta0
        return (self.gradient @ d).item(), 0.5 * (d @ self.fisher @ d).item()


def test_line_search_restores_parameters_bit_for_bit_on_failure():
    policy = QuadraticPolicy()
    before = policy.params[0].detach().clone()
    result = backtracking_line_search(
        policy.params, th.full((5,), 0.1234567, dtype=th.float64), policy.evaluate, lambda e: False, 0.5, 7
    )
    assert not result.accepted
    assert result.n_backtracks == 7
    assert result.evaluation is None
    assert th.equal(policy.params[0].detach(), before)
    assert policy.params[0].detach().numpy().tobytes() == before.numpy().tobytes()


@pytest.mark.parametrize("max_kl", [1e-4, 1e-2, 1.0])
def test_line_search_never_accepts_a_step_outside_the_region(max_kl):
    policy = QuadraticPolicy(seed=1)
    direction = th.linalg.solve(policy.fisher, policy.gradient)
    full_step = 10.0 * trust_region_step_scale((direction @ policy.fisher @ direction).item(), max_kl) * direction
    result = backtracking_line_search(
        policy.params, full_step, policy.evaluate, lambda e: e[0] > 0.0 and e[1] <= max_kl, 0.8, 30
    )
    assert result.accepted
    assert result.evaluation is not None
    assert result.evaluation[1] <= max_kl
    # It is the first acceptable candidate: one more backtrack back would have left the region.
    assert result.step_fraction == pytest.approx(0.8**result.n_backtracks)
    previous = full_step * result.step_fraction / 0.8
    assert 0.5 * (previous @ policy.fisher @ previous).item() > max_kl
    # And the parameters hold exactly that candidate.
    assert th.allclose(policy.params[0].detach(), policy.theta0 + result.step_fraction * full_step, atol=0, rtol=1e-15)


def test_line_search_never_accepts_non_finite_evaluations():
    policy = QuadraticPolicy(seed=2)
    before = policy.params[0].detach().clone()
    result = backtracking_line_search(
        policy.params,
        th.ones(5, dtype=th.float64),
        lambda: (math.nan, 0.0),
        lambda e: math.isfinite(e[0]) and e[0] >= -1e9,
        0.5,
        4,
    )
    assert not result.accepted
    assert th.equal(policy.params[0].detach(), before)


def test_line_search_restores_parameters_when_evaluation_raises():
    policy = QuadraticPolicy(seed=3)
    before = policy.params[0].detach().clone()

    def evaluate():
        raise ValueError("Expected parameter loc to satisfy the constraint Real()")

    with pytest.raises(ValueError, match="Expected parameter"):
        backtracking_line_search(policy.params, th.ones(5, dtype=th.float64), evaluate, lambda e: True, 0.5, 3)
    assert th.equal(policy.params[0].detach(), before)
