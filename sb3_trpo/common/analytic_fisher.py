"""Fisher-vector products in closed form: ``F v = Jᵀ M J v``, without differentiating the KL twice.

Write the action distribution of state ``s`` through its parameters ``η_s(θ)`` (the mean and
standard deviation of a Gaussian, the logits of a categorical or Bernoulli). The KL divergence
depends on ``θ`` only through ``η``, so its Hessian at ``θ_old`` factors as::

    F = mean_s J_sᵀ M_s J_s,    J_s = ∂η_s/∂θ,    M_s = E_{a~π(·|s)}[∇_η log π(a|s) ∇_η log π(a|s)ᵀ]

where ``M_s``, the Fisher of the distribution in its own parameters, has a closed form for every
distribution of Stable-Baselines3. ``F v`` then costs one Jacobian-vector product ``u = J v``,
an element-wise ``M u`` and one vector-Jacobian product ``Jᵀ (M u)``, all on a graph built once
at ``θ_old`` and reused by every conjugate-gradient iteration.

The closed forms, per state and per independent dimension or sub-distribution:

- Gaussian ``N(μ, σ²)`` in ``(μ, σ)``: ``M = diag(1/σ², 2/σ²)``. This covers SB3's diagonal
  Gaussian, its squashed variant (the KL of the underlying Gaussian is what TRPO bounds, and a
  bijection leaves the KL unchanged) and gSDE, whose ``σ_s`` depends on the state's features.
- Categorical with logits ``z`` and ``p = softmax(z)``: ``M = diag(p) − p pᵀ``, applied as
  ``p ⊙ u − p (pᵀ u)``; a multi-categorical distribution has one such block per sub-space.
- Bernoulli with logit ``z`` and ``p = sigmoid(z)``: ``M = p (1 − p)``.

Other distributions have no closed form here: :func:`analytic_fisher_vector_product` returns
``None`` and the caller uses :func:`sb3_trpo.common.fisher.autograd_fisher_vector_product`.
Tests check both routes against explicit Fisher matrices in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo.common.natural_gradient import MatrixVectorProduct, flat_concat
from sb3_trpo.common.reduction import mean_weights

DistributionParameters = tuple[th.Tensor, ...]
"""The tensors ``η`` a distribution is written in, each of shape ``(batch, ...)``."""

FisherMetric = Callable[[DistributionParameters, DistributionParameters], DistributionParameters]
"""``(η, u) -> M(η) u``, state by state: the Fisher of the distribution in ``η``, applied to ``u``."""


def gaussian_fisher_metric(parameters: DistributionParameters, tangent: DistributionParameters) -> DistributionParameters:
    """``M u`` for ``N(μ, σ²)`` in ``η = (μ, σ)``: ``M = diag(1/σ², 2/σ²)``, per dimension."""
    _, std = parameters
    tangent_mean, tangent_std = tangent
    precision = std.pow(-2)
    return tangent_mean * precision, 2.0 * tangent_std * precision


def categorical_fisher_metric(parameters: DistributionParameters, tangent: DistributionParameters) -> DistributionParameters:
    """``M u`` for categoricals in their logits ``z``: ``M = diag(p) − p pᵀ`` with ``p = softmax(z)``.

    One block per sub-distribution: ``parameters`` holds the logits of each, shape ``(batch, n_k)``.
    """
    return tuple(
        categorical_metric_product(th.softmax(logits, dim=-1), tangent_logits)
        for logits, tangent_logits in zip(parameters, tangent, strict=True)
    )


def categorical_metric_product(probs: th.Tensor, tangent_logits: th.Tensor) -> th.Tensor:
    """``(diag(p) − p pᵀ) u = p ⊙ (u − pᵀu)`` per state, from the probabilities ``p`` (the last dimension)."""
    return probs * (tangent_logits - (probs * tangent_logits).sum(dim=-1, keepdim=True))


def bernoulli_fisher_metric(parameters: DistributionParameters, tangent: DistributionParameters) -> DistributionParameters:
    """``M u`` for Bernoullis in their logits ``z``: ``M = p (1 − p)`` with ``p = sigmoid(z)``, per dimension."""
    (logits,), (tangent_logits,) = parameters, tangent
    probs = th.sigmoid(logits)
    return (probs * (1.0 - probs) * tangent_logits,)


def jacobian_fisher_vector_product(
    parameters: DistributionParameters,
    params: Sequence[th.Tensor],
    metric: FisherMetric,
    mask: th.Tensor | None = None,
) -> MatrixVectorProduct:
    """``F v = mean_s J_sᵀ M_s J_s v``, with ``J_s = ∂η_s/∂θ`` at the current ``θ``.

    Reverse mode gives ``Jᵀ w`` directly. ``J v`` comes from the same graph by the "double-vjp"
    trick: ``g(w) = Jᵀ w`` is linear in ``w``, so ``J v = ∂(g(w)ᵀ v)/∂w`` for any ``w``. Its graph
    is built once here (one backward pass, at ``w = 0``); after that each call costs two backward
    passes, one through ``g``'s graph (``J v``, with no forward pass of the network) and one
    through the network's (``Jᵀ w``). Nothing is ever differentiated twice in ``θ``.
    (``torch.func.linearize`` gives the same ``J v`` per call, but tracing it costs more than all
    the products of an update; a fresh ``torch.func.jvp`` per call redoes the forward pass and is
    slower than the autograd product: ``benchmarks/fvp_speed.py`` measures all of them.)

    The mean over states is ``batch_mean``'s: ``w_s = (∂ mean/∂x_s) M_s (J v)_s``.

    :param parameters: ``η(θ)``, the distribution parameters of every state of the batch with
        their autograd graph to ``params``, each of shape ``(batch, ...)``
    :param params: the parameters ``θ`` (``J``'s columns); those ``η`` does not use give zeros
    :param metric: ``(η, u) -> M(η) u`` state by state, e.g. :func:`gaussian_fisher_metric`
    :param mask: the states that count in the mean (``None``: all); padded states get weight 0
    :return: the function ``v -> F v`` on flat vectors ``[vec(θ_1); ...; vec(θ_k)]``
    """
    params = list(params)
    values = tuple(parameter.detach() for parameter in parameters)
    # Only the η that depend on θ take part in the graphs (a frozen log-std gives a constant σ).
    varying = [index for index, parameter in enumerate(parameters) if parameter.requires_grad]
    outputs = [parameters[index] for index in varying]
    with th.enable_grad():
        state_weights = mean_weights(values[0], mask)
        dummy_cotangents = [th.zeros_like(values[index], requires_grad=True) for index in varying]
        transposed = th.autograd.grad(outputs, params, dummy_cotangents, create_graph=True, allow_unused=True)
    used = [index for index, grad in enumerate(transposed) if grad is not None]
    sizes = [param.numel() for param in params]

    def jacobian_vector_product(vector: th.Tensor) -> DistributionParameters:
        products = [th.zeros_like(value) for value in values]
        if used:
            chunks = th.split(vector, sizes)
            grads = th.autograd.grad(
                [transposed[i] for i in used],
                dummy_cotangents,
                [chunks[i].view_as(params[i]) for i in used],
                retain_graph=True,
                allow_unused=True,
            )
            for index, grad in zip(varying, grads, strict=True):
                if grad is not None:
                    products[index] = grad
        return tuple(products)

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        weighted = [
            state_weights.view(-1, *[1] * (product.dim() - 1)) * product
            for product in metric(values, jacobian_vector_product(vector))
        ]
        grads = th.autograd.grad(outputs, params, [weighted[i] for i in varying], retain_graph=True, allow_unused=True)
        return flat_concat([th.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])

    return fisher_vector_product


def _normal_parameters(distribution: Distribution) -> DistributionParameters:
    normal = distribution.distribution
    assert isinstance(normal, th.distributions.Normal)
    return normal.loc, normal.scale


def _categorical_parameters(distribution: Distribution) -> DistributionParameters:
    categorical = distribution.distribution
    assert isinstance(categorical, th.distributions.Categorical)
    return (categorical.logits,)


def _multi_categorical_parameters(distribution: Distribution) -> DistributionParameters:
    assert isinstance(distribution, MultiCategoricalDistribution)
    return tuple(categorical.logits for categorical in distribution.distribution)


def _bernoulli_parameters(distribution: Distribution) -> DistributionParameters:
    bernoulli = distribution.distribution
    assert isinstance(bernoulli, th.distributions.Bernoulli)
    return (bernoulli.logits,)


# Exact types, not isinstance: a user's subclass may change what the distribution is, and the
# autograd product is right for any distribution.
_CLOSED_FORMS: dict[type[Distribution], tuple[Callable[[Distribution], DistributionParameters], FisherMetric]] = {
    DiagGaussianDistribution: (_normal_parameters, gaussian_fisher_metric),
    SquashedDiagGaussianDistribution: (_normal_parameters, gaussian_fisher_metric),
    StateDependentNoiseDistribution: (_normal_parameters, gaussian_fisher_metric),
    CategoricalDistribution: (_categorical_parameters, categorical_fisher_metric),
    MultiCategoricalDistribution: (_multi_categorical_parameters, categorical_fisher_metric),
    BernoulliDistribution: (_bernoulli_parameters, bernoulli_fisher_metric),
}


def supports_analytic_fisher(distribution: Distribution) -> bool:
    """Whether ``distribution`` (an SB3 distribution object) has a closed-form Fisher here."""
    return type(distribution) in _CLOSED_FORMS


def distribution_parameters(distribution: Distribution) -> DistributionParameters:
    """The parameters ``η`` in which :func:`fisher_metric` writes ``M``: ``(μ, σ)`` or the logits."""
    return _CLOSED_FORMS[type(distribution)][0](distribution)


def kl_terms_per_state(distribution: Distribution) -> int:
    """The number of terms per state of SB3's ``kl_divergence`` for ``distribution``'s type.

    One per action dimension for Gaussian and Bernoulli actions, one for categorical and
    multi-categorical actions (SB3 sums the latter's terms). The KL averaged over these terms
    (``kl_per_state(..., action_reduction="mean")``) has the Fisher ``F / kl_terms_per_state``.
    """
    if type(distribution) in (CategoricalDistribution, MultiCategoricalDistribution):
        return 1
    return distribution_parameters(distribution)[0][0].numel()


def fisher_metric(distribution: Distribution) -> FisherMetric:
    """The closed-form ``(η, u) -> M(η) u`` for ``distribution``'s type."""
    return _CLOSED_FORMS[type(distribution)][1]


def analytic_fisher_vector_product(
    distribution: Distribution, params: Sequence[th.Tensor], mask: th.Tensor | None = None
) -> MatrixVectorProduct | None:
    """The closed-form ``v -> F v`` of an SB3 action distribution, or ``None`` if it has none.

    The same product as :func:`~sb3_trpo.common.fisher.autograd_fisher_vector_product` on the
    mean KL over the distribution's states (flat vectors in the order of ``params``, mean over
    the states, undamped), at the parameters the distribution was computed with. The graph of
    :func:`jacobian_fisher_vector_product` is built at the first call, so a caller that never
    needs ``F`` (a first-order step) never pays for it; that call must come before ``params``
    change in place.

    :param distribution: the action distribution of a batch of states, computed with autograd
        enabled so that its tensors carry their graph to ``params``. They are read here, so SB3
        may reuse the object (``get_distribution`` does) once this returns.
    :param params: the actor's parameters ``θ``
    :param mask: the states that count in the mean over the batch (``None``: all)
    :return: the function ``v -> F v``, or ``None`` when the caller should use the autograd product
    """
    if not supports_analytic_fisher(distribution):
        return None
    parameters, metric, params = distribution_parameters(distribution), fisher_metric(distribution), list(params)
    build = functools.cache(lambda: jacobian_fisher_vector_product(parameters, params, metric, mask))

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        return build()(vector)

    return fisher_vector_product


def policy_fisher_vector_product(
    policy: ActorCriticPolicy, observations: PyTorchObs, params: Sequence[th.Tensor]
) -> MatrixVectorProduct | None:
    """:func:`analytic_fisher_vector_product` of ``policy``'s action distribution on ``observations``.

    One forward pass of the actor; use it for a batch whose distribution is not at hand (e.g. a
    sub-sample of the states for the Fisher).
    """
    return analytic_fisher_vector_product(policy.get_distribution(observations), params)


def action_reduced_fisher(
    joint: MatrixVectorProduct, distribution: Distribution, action_reduction: str
) -> MatrixVectorProduct:
    """The Fisher of the KL as ``action_reduction`` sums it, from ``joint``, the joint KL's.

    The KL averaged over its terms (``"mean"``) has the Fisher of the joint KL divided by their number
    (:func:`kl_terms_per_state`); ``"sum"`` is the joint KL itself.
    """
    if action_reduction != "mean":
        return joint
    scale = 1.0 / kl_terms_per_state(distribution)
    return lambda vector: joint(vector) * scale
