"""Fisher-vector products of SB3's MLP actor written out by hand: ``F v = Jᵀ M J v`` without autograd.

:mod:`sb3_trpo.common.analytic_fisher` computes ``J v`` and ``Jᵀ u`` with autograd on the policy's
graph, for any network. For SB3's standard actor (flatten → ``Linear``/activation pairs →
``action_net``) the two products are a few matrix products per layer, and autograd's graph
bookkeeping around them is avoidable overhead. Here, with the
activations ``a_l`` and derivatives ``D_l = φ'(h_l)`` of one forward pass at ``θ_old``:

- ``J v`` (forward tangent): ``z_l = a_{l−1} dW_lᵀ + db_l + t_{l−1} W_lᵀ``, ``t_l = D_l ⊙ z_l``, and
  ``J v = z_L`` for the distribution's parameters ``η`` (the mean, or the logits);
- ``u = w ⊙ M (J v)`` per state, with the closed-form metric ``M`` (``1/σ²`` for a Gaussian mean,
  ``diag(p) − p pᵀ`` for logits) and ``w`` the weights of the mean over states;
- ``Jᵀ u`` (backward): ``g_L = u``, ``∂W_l = g_lᵀ a_{l−1}``, ``∂b_l = Σ_s g_l``,
  ``g_{l−1} = (g_l W_l) ⊙ D_{l−1}``;
- the state-independent log-std of SB3's Gaussian adds its own block, ``2 (Σ_s w_s) v``.

These are the products autograd computes through the same layers, so both agree to rounding
(``tests/test_mlp_fisher.py`` checks against the autograd and analytic products in float64).
:func:`policy_mlp_fisher_vector_product` recognises the actor; anything else returns ``None`` and the
caller keeps the autograd-based products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch as th
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo.common.analytic_fisher import _mean_weights
from sb3_trpo.common.critic import Activation, activation_from_module
from sb3_trpo.common.natural_gradient import MatrixVectorProduct
from sb3_trpo.common.rollout import mlp_actor_critic_unsupported

Tensor = th.Tensor


@dataclass(frozen=True)
class HiddenLayer:
    """A hidden layer ``a = φ(h)``, ``h = a_prev Wᵀ + b``: the module, and ``φ`` with its derivative."""

    linear: nn.Linear
    activation: nn.Module
    spec: Activation  # the critic fit's description of φ, whose backward op gives φ'

    def derivative(self, pre_activation: Tensor, activation: Tensor) -> Tensor:
        """``φ'(h)``: the activation's own backward op applied to ones."""
        saved = activation if self.spec.backward_uses_output else pre_activation
        out = th.empty_like(pre_activation)
        self.spec.backward_fn()(th.ones_like(pre_activation), saved, out)
        return out


def mlp_jacobian_fisher_vector_product(
    hidden: Sequence[HiddenLayer],
    output: nn.Linear,
    x: Tensor,
    metric: Callable[[Tensor], Callable[[Tensor], Tensor]],
    state_weights: Tensor,
    params: Sequence[Tensor],
    log_std: Tensor | None = None,
) -> MatrixVectorProduct:
    """``v -> F v`` for ``η = output(φ(… φ(x W_1ᵀ + b_1) …))``, with ``F = Σ_s w_s J_sᵀ M_s J_s``.

    :param hidden: the hidden layers, input side first
    :param output: the linear layer that gives the distribution parameters ``η``
    :param x: the inputs (features), ``(N, n_0)``
    :param metric: ``η -> (z -> M(η) z)``, state by state (its constants computed once, from ``η``)
    :param state_weights: ``w_s``, the weight of each state in the mean over the batch
    :param params: ``θ``, the flat vector's order; each must be a weight or bias of the layers, or ``log_std``
    :param log_std: SB3's state-independent log-std of a Gaussian (its block is ``2 Σ_s w_s · I``)
    """
    linears = [layer.linear for layer in hidden] + [output]
    # θ_old's weights, kept: the products stay F(θ_old)'s while a line search moves the parameters.
    layer_weights = [linear.weight.detach().clone() for linear in linears]
    derivatives: list[Tensor] = []
    with th.no_grad():
        inputs = [x]
        for layer in hidden:
            pre_activation = layer.linear(inputs[-1])
            activation = layer.activation(pre_activation)
            derivatives.append(layer.derivative(pre_activation, activation))
            inputs.append(activation)
        eta = output(inputs[-1])
    weights = state_weights.view(-1, 1)
    total_weight = state_weights.sum()
    # Where each layer's weight and bias (and the log-std) sit among ``params``, or None if they are not there.
    slot = {id(p): i for i, p in enumerate(params)}
    layer_slots = [
        (slot.get(id(linear.weight)), None if linear.bias is None else slot.get(id(linear.bias))) for linear in linears
    ]
    log_std_slot = None if log_std is None else slot.get(id(log_std))
    sizes = [p.numel() for p in params]
    shapes = [p.shape for p in params]
    apply_metric = metric(eta)
    n_states = x.shape[0]

    def fisher_vector_product(vector: Tensor) -> Tensor:
        chunks = [chunk.view(shape) for chunk, shape in zip(th.split(vector, sizes), shapes, strict=True)]
        result = th.zeros_like(vector)  # blocks of parameters the layers do not use stay 0
        out = [chunk.view(shape) for chunk, shape in zip(th.split(result, sizes), shapes, strict=True)]
        with th.no_grad():
            # J v, layer by layer: z_l = a_{l−1} dW_lᵀ + db_l + t_{l−1} W_lᵀ (t_0 = 0), t_l = φ'(h_l) ⊙ z_l.
            tangent: Tensor | None = None
            for layer_index, (linear, (weight_slot, bias_slot)) in enumerate(zip(linears, layer_slots, strict=True)):
                z = None if tangent is None else th.mm(tangent, layer_weights[layer_index].t())
                d_weight = None if weight_slot is None else chunks[weight_slot]
                d_bias = None if bias_slot is None else chunks[bias_slot]
                if d_weight is not None:
                    z = th.mm(inputs[layer_index], d_weight.t()) if z is None else z.addmm_(inputs[layer_index], d_weight.t())
                if d_bias is not None:
                    z = d_bias.expand(n_states, -1).clone() if z is None else z.add_(d_bias)
                if z is None:
                    z = th.zeros(n_states, linear.out_features, dtype=x.dtype, device=x.device)
                tangent = z.mul_(derivatives[layer_index]) if layer_index < len(hidden) else z
            assert tangent is not None
            # Jᵀ (w ⊙ M J v), layer by layer backwards.
            grad = apply_metric(tangent).mul_(weights)
            for layer_index in range(len(linears) - 1, -1, -1):
                weight_slot, bias_slot = layer_slots[layer_index]
                if weight_slot is not None:
                    th.mm(grad.t(), inputs[layer_index], out=out[weight_slot])
                if bias_slot is not None:
                    th.sum(grad, dim=0, out=out[bias_slot])
                if layer_index > 0:
                    grad = th.mm(grad, layer_weights[layer_index]).mul_(derivatives[layer_index - 1])
            if log_std_slot is not None:
                th.mul(chunks[log_std_slot], 2 * total_weight, out=out[log_std_slot])
        return result

    return fisher_vector_product


def _gaussian_mean_metric(std: Tensor) -> Callable[[Tensor], Callable[[Tensor], Tensor]]:
    """``M z = z / σ²`` for the mean of SB3's Gaussian (σ is state-independent)."""
    inverse_variance = 1 / (std * std)
    return lambda eta: lambda z: z * inverse_variance


def _categorical_metric(eta: Tensor) -> Callable[[Tensor], Tensor]:
    """``M z = p ⊙ z − p (pᵀz)`` in the logits, ``p = softmax(η)``."""
    probs = th.softmax(eta, dim=-1)

    def apply(z: Tensor) -> Tensor:
        weighted = probs * z
        return weighted.sub_(probs * weighted.sum(dim=-1, keepdim=True))

    return apply


def mlp_actor_unsupported(policy: nn.Module, params: Sequence[Tensor]) -> str | None:
    """Why :func:`policy_mlp_fisher_vector_product` cannot compute ``policy``'s products for ``params``, or None."""
    if not isinstance(policy, ActorCriticPolicy):
        return f"the policy is a {type(policy).__name__}, not an ActorCriticPolicy"
    if type(policy).get_distribution is not ActorCriticPolicy.get_distribution:
        return f"{type(policy).__name__} overrides get_distribution"
    reason = mlp_actor_critic_unsupported(policy)
    if reason is not None:
        return reason
    actor = _actor_params(policy)
    if {id(p) for p in params} - {id(p) for p in actor}:
        return "some parameters of the policy step are not the MLP actor's"
    return None


def _actor_params(policy: ActorCriticPolicy) -> list[Tensor]:
    modules = [*policy.mlp_extractor.policy_net, policy.action_net]
    params = [p for module in modules for p in module.parameters()]
    return [*params, policy.log_std] if isinstance(policy.action_dist, DiagGaussianDistribution) else params


def policy_mlp_fisher_vector_product(
    policy: nn.Module, observations: PyTorchObs, params: Sequence[Tensor], mask: Tensor | None = None
) -> MatrixVectorProduct | None:
    """``v -> F v`` of SB3's MLP actor on ``observations`` (mean over the states), or None if not covered.

    The same product as :func:`~sb3_trpo.common.analytic_fisher.analytic_fisher_vector_product` (and
    the autograd one) for the Fisher of the mean KL of the joint action distribution, at the
    parameters the policy has now.
    """
    if mlp_actor_unsupported(policy, params) is not None:
        return None
    assert isinstance(policy, ActorCriticPolicy)
    params = list(params)
    sequential = list(policy.mlp_extractor.policy_net)
    hidden = [
        HiddenLayer(linear, activation, activation_from_module(activation))  # type: ignore[arg-type]
        for linear, activation in zip(sequential[0::2], sequential[1::2], strict=True)
    ]
    with th.no_grad():
        inputs = preprocess_obs(observations, policy.observation_space, policy.normalize_images)
        # SB3's preprocessing casts to float32; the layers may be float64 (the tests' exact checks).
        features = policy.pi_features_extractor(inputs).to(policy.action_net.weight.dtype)
    state_weights = _mean_weights(features[:, 0], mask)
    if isinstance(policy.action_dist, DiagGaussianDistribution):
        log_std = policy.log_std
        metric = _gaussian_mean_metric(log_std.detach().exp())
        return mlp_jacobian_fisher_vector_product(hidden, policy.action_net, features, metric, state_weights, params, log_std)  # type: ignore[arg-type]
    assert isinstance(policy.action_dist, CategoricalDistribution)
    return mlp_jacobian_fisher_vector_product(hidden, policy.action_net, features, _categorical_metric, state_weights, params)  # type: ignore[arg-type]
