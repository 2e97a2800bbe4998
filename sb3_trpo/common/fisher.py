"""Fisher-vector products and the KL divergence they are the curvature of.

The Fisher information of the policy at ``θ_old`` equals the Hessian of the mean KL divergence
``KL̄(θ) = mean_s KL(π_θold(·|s) ‖ π_θ(·|s))`` at ``θ = θ_old``, so ``F v`` can be computed without
ever forming ``F``. Tests compare these products with explicit Fisher matrices built in float64 on
tiny networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
from stable_baselines3.common.distributions import Distribution, kl_divergence

from sb3_trpo.common.natural_gradient import MatrixVectorProduct, flat_grad

KL_ACTION_REDUCTIONS = ("sum", "mean")


def kl_per_state(old: Distribution, new: Distribution, action_reduction: str = "sum") -> th.Tensor:
    """``KL(π_old(·|s) ‖ π_new(·|s))`` for each state ``s`` of the batch, shape ``(batch,)``.

    With ``action_reduction="sum"`` independent action dimensions add up: the KL of a diagonal
    Gaussian or of a vector of Bernoullis is the sum over its dimensions, the KL of the joint action
    distribution (the paper's). ``"mean"`` averages the terms of SB3's ``kl_divergence`` instead: one
    per action dimension for Gaussian and Bernoulli actions, a single (already summed) one for
    categorical and multi-categorical actions; ``sb3_contrib.TRPO``'s ``kl_divergence(...).mean()``.
    """
    kl = kl_divergence(old, new)
    kl = kl.reshape(kl.shape[0], -1)
    return kl.mean(dim=1) if action_reduction == "mean" else kl.sum(dim=1)


def autograd_fisher_vector_product(kl: th.Tensor, params: Sequence[th.Tensor]) -> MatrixVectorProduct:
    """Pearlmutter's trick: ``F v = ∇_θ ( (∇_θ KL̄)ᵀ v )`` at ``θ_old``, by double backward.

    Works for any distribution whose KL is differentiable twice. ``∇_θ KL̄`` is built once with
    its graph; each call of the returned function costs one extra backward pass.

    :param kl: the scalar mean KL ``KL̄(θ)`` (its value is 0 at ``θ_old``; its Hessian is ``F``)
    :param params: the actor's parameters ``θ``
    :return: the function ``v -> F v`` on flat vectors
    """
    params = list(params)
    kl_gradient = flat_grad(kl, params, retain_graph=True, create_graph=True)

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        return flat_grad(th.dot(kl_gradient, vector), params, retain_graph=True)

    return fisher_vector_product
