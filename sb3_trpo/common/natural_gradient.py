"""The natural-gradient machinery of TRPO as pure functions on tensors.

Nothing here knows about Stable-Baselines3: parameters are plain sequences of tensors, the
Fisher matrix is a callable ``v -> F v`` and the objective is a callable. Each function carries
its equation; ``tests/test_natural_gradient.py`` checks each against an exact answer.

Notation (Schulman et al., 2015): ``g = ∇_θ L(θ)`` the gradient of the surrogate, ``F`` the
Fisher information of the policy at ``θ_old``, ``δ`` the trust-region radius (``target_kl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch as th

MatrixVectorProduct = Callable[[th.Tensor], th.Tensor]
Evaluation = TypeVar("Evaluation")


def flat_concat(tensors: Sequence[th.Tensor]) -> th.Tensor:
    """Concatenate tensors into one flat vector: ``[vec(t_1); vec(t_2); ...]``."""
    return th.cat([tensor.reshape(-1) for tensor in tensors])


def flat_grad(
    output: th.Tensor,
    params: Sequence[th.Tensor],
    retain_graph: bool = False,
    create_graph: bool = False,
) -> th.Tensor:
    """Flat gradient ``∇_θ output`` over ``params``; parameters ``output`` does not use give zeros."""
    grads = th.autograd.grad(output, list(params), retain_graph=retain_graph, create_graph=create_graph, allow_unused=True)
    return flat_concat([th.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])


def add_flat_to_params(params: Sequence[th.Tensor], origin: Sequence[th.Tensor], flat_step: th.Tensor) -> None:
    """Write ``θ ← θ_origin + step`` into ``params`` in place, ``step`` given as one flat vector."""
    offset = 0
    with th.no_grad():
        for param, start in zip(params, origin, strict=True):
            n = param.numel()
            param.copy_(start + flat_step[offset : offset + n].view_as(param))
            offset += n
    if offset != flat_step.numel():
        raise ValueError(f"flat_step has {flat_step.numel()} elements but the parameters have {offset}")


def restore_params(params: Sequence[th.Tensor], saved: Sequence[th.Tensor]) -> None:
    """Copy ``saved`` back into ``params``, bit for bit."""
    with th.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)


@dataclass(frozen=True)
class ConjugateGradientResult:
    """Solution of ``A x = b`` and how the solver got there."""

    solution: th.Tensor
    iterations: int
    residual_norm: float


def conjugate_gradient(
    matrix_vector_product: MatrixVectorProduct,
    b: th.Tensor,
    max_steps: int,
    residual_tol: float = 1e-10,
) -> ConjugateGradientResult:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    Starting from ``x_0 = 0`` (so ``r_0 = p_0 = b``), each iteration does::

        α_k = r_kᵀ r_k / p_kᵀ A p_k
        x_{k+1} = x_k + α_k p_k,   r_{k+1} = r_k − α_k A p_k
        β_k = r_{k+1}ᵀ r_{k+1} / r_kᵀ r_k,   p_{k+1} = r_{k+1} + β_k p_k

    and stops after ``max_steps`` products with ``A``, once ``‖r‖² ≤ residual_tol``, or when the
    iteration breaks down (``p_kᵀ A p_k`` not positive or ``α_k`` not finite, which round-off causes
    once ``r`` is exhausted, e.g. with ``residual_tol = 0``), keeping ``x_k``. In exact
    arithmetic it solves an ``n``-dimensional system in ``n`` steps; TRPO stops far earlier, which
    is what makes the natural gradient affordable.

    :param matrix_vector_product: ``v -> A v``, for TRPO the damped Fisher product ``(F + λI) v``
    :param b: right-hand side, for TRPO the surrogate gradient ``g``
    :param max_steps: maximum number of iterations (products with ``A``), ``>= 1``
    :param residual_tol: stop once the squared residual norm ``‖b − A x‖²`` is at most this
    :return: the solution, the number of iterations run and the final residual norm ``‖r‖``
    """
    x = th.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = th.dot(residual, residual)
    iterations = 0
    while iterations < max_steps and residual_sq.item() > residual_tol:
        a_direction = matrix_vector_product(direction)
        alpha = residual_sq / th.dot(direction, a_direction)
        if not (math.isfinite(alpha_value := alpha.item()) and alpha_value > 0.0):
            break  # breakdown: no more progress along a conjugate direction
        x += alpha * direction
        residual -= alpha * a_direction
        new_residual_sq = th.dot(residual, residual)
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
        iterations += 1
    return ConjugateGradientResult(x, iterations, math.sqrt(max(residual_sq.item(), 0.0)))


def trust_region_step_scale(curvature: float, max_kl: float) -> float:
    """Scale ``s`` that puts ``Δ = s·x`` on the boundary of the quadratic trust region.

    With the quadratic model ``KL(θ_old + Δ) ≈ ½ ΔᵀAΔ`` and ``curvature = xᵀAx``, solving
    ``½ s² xᵀAx = δ`` gives ``s = sqrt(2δ / xᵀAx)``. TRPO's ``A`` is the damped Fisher ``F + λI``
    whose system the direction solves. Returns ``nan`` when the curvature is not positive and
    finite, so callers can treat the step as invalid.
    """
    if not (math.isfinite(curvature) and curvature > 0.0):
        return math.nan
    return math.sqrt(2.0 * max_kl / curvature)


@dataclass(frozen=True)
class LineSearchResult(Generic[Evaluation]):
    """Outcome of :func:`backtracking_line_search`."""

    accepted: bool
    step_fraction: float  # the k-th candidate is shrinking_factor**k; 0.0 when none was accepted
    n_backtracks: int  # candidates rejected before the accepted one (all of them on failure)
    evaluation: Evaluation | None  # what ``evaluate`` returned for the accepted candidate
    full_step_evaluation: Evaluation | None = None  # the first candidate's, θ_old + Δ (accepted or not)


def backtracking_line_search(
    params: Sequence[th.Tensor],
    full_step: th.Tensor,
    evaluate: Callable[[], Evaluation],
    is_acceptable: Callable[[Evaluation], bool],
    shrinking_factor: float,
    max_iter: int,
    invalid_candidate: Callable[[Exception], Evaluation | None] | None = None,
) -> LineSearchResult[Evaluation]:
    """Try ``θ_old + shrinking_factor^k · Δ`` for ``k = 0, ..., max_iter − 1``; keep the first acceptable one.

    ``evaluate()`` is called with the candidate written into ``params`` (TRPO: the surrogate and
    the KL on the batch); ``is_acceptable`` decides (TRPO: the surrogate improved, ``KL <= δ``,
    everything finite). When no candidate is accepted, or ``evaluate`` raises, the parameters are
    restored bit for bit to their values on entry.

    A candidate can be invalid rather than bad: a step so long that the policy it gives cannot be
    built (torch refuses a scale that overflows or underflows). ``invalid_candidate(error)`` turns
    such an error of ``evaluate()`` into the evaluation recorded for the candidate, which is rejected
    without asking ``is_acceptable``, and the search shrinks as for any rejected candidate; for any
    other error it returns None and the error propagates (after the parameters are restored), as do
    errors that are not ``Exception``\\ s (``KeyboardInterrupt``).
    """
    saved = [param.detach().clone() for param in params]
    fraction, full_step_evaluation = 1.0, None
    try:
        for k in range(max_iter):
            add_flat_to_params(params, saved, fraction * full_step)
            valid, evaluation = _evaluate_candidate(evaluate, invalid_candidate)
            if k == 0:
                full_step_evaluation = evaluation
            if valid and is_acceptable(evaluation):
                return LineSearchResult(True, fraction, k, evaluation, full_step_evaluation)
            fraction *= shrinking_factor
    except BaseException:
        restore_params(params, saved)  # an evaluation that raises leaves no candidate behind
        raise
    restore_params(params, saved)
    return LineSearchResult(False, 0.0, max_iter, None, full_step_evaluation)


def _evaluate_candidate(
    evaluate: Callable[[], Evaluation], invalid_candidate: Callable[[Exception], Evaluation | None] | None
) -> tuple[bool, Evaluation]:
    """``(True, evaluate())``, or ``(False, invalid_candidate(error))`` for an error that marks the candidate invalid."""
    try:
        return True, evaluate()
    except Exception as error:
        replacement = None if invalid_candidate is None else invalid_candidate(error)
        if replacement is None:
            raise
        return False, replacement
