"""SB3's MLP actor by hand: Fisher-vector products ``F v = Jᵀ M J v`` and the policy gradient without autograd.

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

The policy gradient of an objective ``L`` of the action distribution is ``Jᵀ ∂L/∂η`` with the same
backward pass (autograd only on the small graph from ``η`` to ``L``), and line-search candidates are
one forward pass each. These are the products autograd computes through the same layers, so both
agree to rounding (``tests/test_mlp_fisher.py`` checks against autograd in float64).
:class:`PolicyMLPActor` (and :func:`policy_mlp_fisher_vector_product`) recognise the actor; anything
else gives ``None`` and the caller keeps autograd.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch as th
import torch.nn.functional as F
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo.common.analytic_fisher import categorical_metric_product
from sb3_trpo.common.critic import Activation, activation_from_module, weight_gradient
from sb3_trpo.common.natural_gradient import MatrixVectorProduct
from sb3_trpo.common.reduction import mean_weights
from sb3_trpo.common.rollout import mlp_actor_critic_unsupported

Tensor = th.Tensor


@dataclass(frozen=True)
class HiddenLayer:
    """A hidden layer ``a = φ(h)``, ``h = a_prev Wᵀ + b``: the linear module, and ``φ`` with its derivative."""

    linear: nn.Linear
    spec: Activation  # the critic fit's description of φ, whose backward op gives φ'

    def derivative(self, pre_activation: Tensor, activation: Tensor) -> Tensor:
        """``φ'(h)``: the activation's own backward op applied to ones."""
        saved = activation if self.spec.backward_uses_output else pre_activation
        out = th.empty_like(pre_activation)
        self.spec.backward_fn()(th.ones_like(pre_activation), saved, out)
        return out


def mlp_forward(
    hidden: Sequence[HiddenLayer], output: nn.Linear, x: Tensor, derivatives: bool = True
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """One forward pass without autograd: the layer inputs ``a_0 = x … a_{L−1}``, ``φ'(h_l)`` and ``η``.

    The same kernels as the modules (``linear``, the activation's ``torch.nn.functional`` op; tanh on the
    CPU is NumPy's, see :meth:`~sb3_trpo.common.critic.Activation.forward_fn`). With
    ``derivatives=False`` the list of ``φ'(h_l)`` is empty.
    """
    inputs: list[Tensor] = [x]
    slopes: list[Tensor] = []
    with th.no_grad():
        for layer in hidden:
            pre_activation = F.linear(inputs[-1], layer.linear.weight, layer.linear.bias)
            activation = th.empty_like(pre_activation)
            layer.spec.forward_fn(x.device)(pre_activation, activation)
            if derivatives:
                slopes.append(layer.derivative(pre_activation, activation))
            inputs.append(activation)
        eta = F.linear(inputs[-1], output.weight, output.bias)
    return inputs, slopes, eta


def mlp_outputs(hidden: Sequence[HiddenLayer], output: nn.Linear, x: Tensor) -> Tensor:
    """``η = output(φ(… φ(x W_1ᵀ + b_1) …))`` at the current parameters, without autograd."""
    return mlp_forward(hidden, output, x, derivatives=False)[2]


class MLPJacobian:
    """The Jacobian ``J = ∂η/∂θ`` of an MLP at ``θ_old`` on a batch, as the products ``J v`` and ``Jᵀ u``.

    Built from one forward pass (:func:`mlp_forward`) with ``θ_old``'s weights kept, so the products
    stay ``θ_old``'s while a line search moves the parameters. ``θ`` is ``params``, flat, in their
    order; each must be a weight or bias of the layers, or ``log_std`` (which ``η`` does not depend on:
    its block of ``J`` is zero, and the callers add what it contributes).

    :param hidden: the hidden layers, input side first
    :param output: the linear layer that gives ``η`` (the mean, or the logits)
    :param x: the inputs (features), ``(N, n_0)``
    :param params: ``θ``
    :param log_std: SB3's state-independent log-std of a Gaussian, if it is among ``params``
    """

    def __init__(
        self,
        hidden: Sequence[HiddenLayer],
        output: nn.Linear,
        x: Tensor,
        params: Sequence[Tensor],
        log_std: Tensor | None = None,
    ) -> None:
        self.linears = [layer.linear for layer in hidden] + [output]
        self.layer_weights = [linear.weight.detach().clone() for linear in self.linears]
        self.inputs, self.derivatives, self.eta = mlp_forward(hidden, output, x)
        # Where each layer's weight and bias (and the log-std) sit among ``params``, or None if they are not there.
        slot = {id(p): i for i, p in enumerate(params)}
        self.layer_slots = [
            (slot.get(id(linear.weight)), None if linear.bias is None else slot.get(id(linear.bias)))
            for linear in self.linears
        ]
        self.log_std_slot = None if log_std is None else slot.get(id(log_std))
        self.sizes = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        # (shape, strides, offset) of each parameter's block in a contiguous flat vector: views cost less this way.
        offsets = [0]
        for size in self.sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self._blocks = [
            (shape, _contiguous_strides(shape), offset) for shape, offset in zip(self.shapes, offsets, strict=True)
        ]

    def subset(self, index: Tensor) -> MLPJacobian:
        """The same Jacobian on the states at ``index`` (the rows of every stored activation)."""
        subset = copy.copy(self)
        subset.inputs = [a[index] for a in self.inputs]
        subset.derivatives = [d[index] for d in self.derivatives]
        subset.eta = self.eta[index]
        return subset

    @property
    def n_states(self) -> int:
        return self.inputs[0].shape[0]

    def split(self, flat: Tensor) -> list[Tensor]:
        """A flat vector laid out like ``θ`` as one view per parameter."""
        if not flat.is_contiguous():
            return [chunk.view(shape) for chunk, shape in zip(th.split(flat, self.sizes), self.shapes, strict=True)]
        base = flat.storage_offset()
        return [flat.as_strided(shape, strides, base + offset) for shape, strides, offset in self._blocks]

    def jvp(self, chunks: Sequence[Tensor]) -> Tensor:
        """``J v``, ``(N, n_L)``, for ``v`` given as :meth:`split` views.

        Forwards: ``z_l = a_{l−1} dW_lᵀ + db_l + t_{l−1} W_lᵀ`` (``t_0 = 0``), ``t_l = φ'(h_l) ⊙ z_l``, ``J v = z_L``.
        """
        n_hidden, n_states = len(self.derivatives), self.n_states
        tangent: Tensor | None = None
        with th.no_grad():
            for index, (linear, (weight_slot, bias_slot)) in enumerate(zip(self.linears, self.layer_slots, strict=True)):
                z = None if tangent is None else th.mm(tangent, self.layer_weights[index].t())
                if weight_slot is not None:
                    d_weight = chunks[weight_slot]
                    z = th.mm(self.inputs[index], d_weight.t()) if z is None else z.addmm_(self.inputs[index], d_weight.t())
                if bias_slot is not None:
                    d_bias = chunks[bias_slot]
                    z = d_bias.expand(n_states, -1).clone() if z is None else z.add_(d_bias)
                if z is None:
                    z = self.eta.new_zeros(n_states, linear.out_features)
                tangent = z.mul_(self.derivatives[index]) if index < n_hidden else z
        assert tangent is not None
        return tangent

    def vjp_into(self, grad: Tensor, out: Sequence[Tensor]) -> None:
        """``Jᵀ u`` into the :meth:`split` views ``out`` (the log-std's left alone), ``u = grad``, ``(N, n_L)``.

        Backwards: ``∂W_l = g_lᵀ a_{l−1}``, ``∂b_l = Σ_s g_l``, ``g_{l−1} = (g_l W_l) ⊙ φ'(h_{l−1})``.
        """
        with th.no_grad():
            for index in range(len(self.linears) - 1, -1, -1):
                weight_slot, bias_slot = self.layer_slots[index]
                if weight_slot is not None:
                    weight_gradient(grad, self.inputs[index], out[weight_slot])
                if bias_slot is not None:
                    th.sum(grad, dim=0, out=out[bias_slot])
                if index > 0:
                    grad = th.mm(grad, self.layer_weights[index]).mul_(self.derivatives[index - 1])

    def vjp(self, grad: Tensor, grad_log_std: Tensor | None = None) -> Tensor:
        """``Jᵀ u`` as a flat vector laid out like ``θ``, the log-std's block ``grad_log_std`` (or 0)."""
        result = self.eta.new_zeros(sum(self.sizes))  # blocks of parameters the layers do not use stay 0
        out = self.split(result)
        self.vjp_into(grad, out)
        if self.log_std_slot is not None and grad_log_std is not None:
            out[self.log_std_slot].copy_(grad_log_std)
        return result

    def fisher_vector_product(
        self, metric: Callable[[Tensor], Callable[[Tensor], Tensor]], state_weights: Tensor
    ) -> MatrixVectorProduct:
        """``v -> F v`` with ``F = Σ_s w_s J_sᵀ M_s J_s`` (+ ``2 (Σ_s w_s) I`` on the log-std's block).

        :param metric: ``η -> (z -> M(η) z)``, state by state (its constants computed once, from ``η``)
        :param state_weights: ``w_s``, the weight of each state in the mean over the batch
        """
        apply_metric, weights, total_weight = metric(self.eta), state_weights.view(-1, 1), state_weights.sum()

        def fisher_vector_product(vector: Tensor) -> Tensor:
            chunks = self.split(vector)
            result = th.zeros_like(vector)  # blocks of parameters the layers do not use stay 0
            out = self.split(result)
            self.vjp_into(apply_metric(self.jvp(chunks)).mul_(weights), out)
            if self.log_std_slot is not None:
                th.mul(chunks[self.log_std_slot], 2 * total_weight, out=out[self.log_std_slot])
            return result

        return fisher_vector_product


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _gaussian_mean_metric(std: Tensor) -> Callable[[Tensor], Callable[[Tensor], Tensor]]:
    """``M z = z / σ²`` for the mean of SB3's Gaussian (σ is state-independent)."""
    inverse_variance = 1 / (std * std)
    return lambda eta: lambda z: z * inverse_variance


def _categorical_metric(eta: Tensor) -> Callable[[Tensor], Tensor]:
    """``M z = (diag(p) − p pᵀ) z`` in the logits, ``p = softmax(η)`` computed once for every product."""
    probs = th.softmax(eta, dim=-1)
    return lambda z: categorical_metric_product(probs, z)


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


def trainable_actor_params(policy: ActorCriticPolicy) -> list[Tensor]:
    """The MLP actor's parameters that require a gradient, in ``policy.parameters()``'s order."""
    actor = {id(p) for p in _actor_params(policy)}
    return [p for p in policy.parameters() if p.requires_grad and id(p) in actor]


class PolicyMLPActor:
    """SB3's MLP actor on a batch of observations, by hand: ``η`` and ``J`` at ``θ_old``, gradients, ``F v``.

    ``η`` (the Gaussian's mean or the logits) comes from one forward pass; the distributions are SB3's
    own, built from ``η`` as ``ActorCriticPolicy.get_distribution`` builds them. The policy gradient of
    an objective ``L(π)`` is ``Jᵀ ∂L/∂η`` (plus ``∂L/∂log σ``), with autograd only on the small graph
    from ``η`` to ``L``. Build it with :meth:`from_policy`, which says None where
    :func:`mlp_actor_unsupported` gives a reason.

    :param policy: an SB3 MLP ``ActorCriticPolicy`` with a diagonal Gaussian or categorical distribution
    :param observations: the batch, as the rollout buffer gives it
    :param params: ``θ``, the flat vectors' order (the actor's parameters, or some of them)
    :param mask: the states that count in the means over the batch (None: all)
    """

    def __init__(
        self, policy: ActorCriticPolicy, observations: PyTorchObs, params: Sequence[Tensor], mask: Tensor | None = None
    ) -> None:
        self.policy, self.params, self.mask = policy, list(params), mask
        sequential = list(policy.mlp_extractor.policy_net)
        self.hidden = [
            HiddenLayer(linear, activation_from_module(activation))  # type: ignore[arg-type]
            for linear, activation in zip(sequential[0::2], sequential[1::2], strict=True)
        ]
        with th.no_grad():
            inputs = preprocess_obs(observations, policy.observation_space, policy.normalize_images)
            # SB3's preprocessing casts to float32; the layers may be float64 (the tests' exact checks).
            self.features = policy.pi_features_extractor(inputs).to(policy.action_net.weight.dtype)
        assert isinstance(policy.action_net, nn.Linear)
        self.output = policy.action_net
        self.gaussian = isinstance(policy.action_dist, DiagGaussianDistribution)
        log_std = policy.log_std if self.gaussian else None
        self.jacobian = MLPJacobian(self.hidden, self.output, self.features, self.params, log_std)
        self.std_old = None if log_std is None else log_std.detach().exp()  # σ at θ_old, for the Fisher

    @classmethod
    def from_policy(
        cls,
        policy: nn.Module,
        observations: PyTorchObs,
        params: Sequence[Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> PolicyMLPActor | None:
        """The actor of ``policy`` on ``observations`` for ``params`` (default: :func:`trainable_actor_params`), or None."""
        # No parameters to check against yet: the default is the actor's own, a subset by construction.
        if mlp_actor_unsupported(policy, () if params is None else params) is not None:
            return None
        assert isinstance(policy, ActorCriticPolicy)
        params = trainable_actor_params(policy) if params is None else params
        return cls(policy, observations, params, mask) if params else None

    def subset(self, index: Tensor) -> PolicyMLPActor:
        """The same actor (still linearised at ``θ_old``) on the states at ``index``."""
        subset = copy.copy(self)
        subset.features = self.features[index]
        subset.mask = None if self.mask is None else self.mask[index]
        subset.jacobian = self.jacobian.subset(index)
        return subset

    @property
    def outputs_old(self) -> Tensor:
        """``η`` at ``θ_old``."""
        return self.jacobian.eta

    def outputs(self) -> Tensor:
        """``η`` at the parameters the policy has now (no autograd)."""
        return mlp_outputs(self.hidden, self.output, self.features)

    def distribution(self, outputs: Tensor) -> Distribution:
        """SB3's action distribution with parameters ``outputs`` (and the current log-std): a new object."""
        action_dist = self.policy.action_dist
        if self.gaussian:
            assert isinstance(action_dist, DiagGaussianDistribution)
            action_dist.proba_distribution(outputs, self.policy.log_std)
        else:
            assert isinstance(action_dist, CategoricalDistribution)
            action_dist.proba_distribution(outputs)
        # proba_distribution() sets the policy's distribution object in place: hand out a shallow copy.
        return copy.copy(action_dist)

    def gradient(self, objective: Callable[[Distribution], Tensor]) -> tuple[Tensor, Tensor]:
        """``L`` and ``∇_θ L = Jᵀ ∂L/∂η (+ ∂L/∂log σ)`` at ``θ_old``, ``L = objective(π_θold)``, flat over ``params``.

        ``σ`` is the policy's current one: call it before the parameters move (``J`` and ``η`` are kept).
        """
        outputs = self.jacobian.eta.detach().requires_grad_(True)
        value = objective(self.distribution(outputs))
        log_std_slot = self.jacobian.log_std_slot
        leaves = [outputs] if log_std_slot is None else [outputs, self.params[log_std_slot]]
        grads = th.autograd.grad(value, leaves)
        return value.detach(), self.jacobian.vjp(grads[0], grads[1] if len(grads) > 1 else None)

    def fisher_vector_product(self) -> MatrixVectorProduct:
        """``v -> F v`` at ``θ_old``, the Fisher of the mean KL of the joint action distribution over the batch."""
        state_weights = mean_weights(self.features[:, 0], self.mask)
        if self.std_old is not None:
            return self.jacobian.fisher_vector_product(_gaussian_mean_metric(self.std_old), state_weights)
        return self.jacobian.fisher_vector_product(_categorical_metric, state_weights)


def policy_mlp_fisher_vector_product(
    policy: nn.Module, observations: PyTorchObs, params: Sequence[Tensor], mask: Tensor | None = None
) -> MatrixVectorProduct | None:
    """``v -> F v`` of SB3's MLP actor on ``observations`` (mean over the states), or None if not covered.

    The same product as :func:`~sb3_trpo.common.analytic_fisher.analytic_fisher_vector_product` (and
    the autograd one) for the Fisher of the mean KL of the joint action distribution, at the
    parameters the policy has now.
    """
    actor = PolicyMLPActor.from_policy(policy, observations, params, mask)
    return None if actor is None else actor.fisher_vector_product()
