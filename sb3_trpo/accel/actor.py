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
:class:`MLPActor` is the actor backend built on it, chosen once by the algorithm where
:func:`actor_unsupported` finds nothing against the policy's spec; elsewhere the reference backend
(autograd) runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch as th
import torch.nn.functional as F
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution, Distribution
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_trpo.accel.activations import Activation
from sb3_trpo.accel.critic import weight_gradient
from sb3_trpo.accel.spec import CATEGORICAL, GAUSSIAN, MLP, MLPSpec, recognise
from sb3_trpo.common.analytic_fisher import action_reduced_fisher, categorical_metric_product
from sb3_trpo.common.backends import ActorBackend
from sb3_trpo.common.natural_gradient import MatrixVectorProduct
from sb3_trpo.common.policy_step import ActorProblem, PolicyEvaluation, PolicyObjective
from sb3_trpo.common.reduction import mean_weights

Tensor = th.Tensor
HiddenLayers = Sequence[tuple[nn.Linear, Activation]]


def mlp_forward(mlp: MLP, x: Tensor, derivatives: bool = True) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """One forward pass without autograd: the layer inputs ``a_0 = x … a_{L−1}``, ``φ'(h_l)`` and ``η``.

    The same kernels as the modules (``linear``, the activation's kernel of the one table). With
    ``derivatives=False`` the list of ``φ'(h_l)`` is empty.
    """
    inputs: list[Tensor] = [x]
    slopes: list[Tensor] = []
    with th.no_grad():
        for linear, activation in mlp.hidden:
            pre_activation = F.linear(inputs[-1], linear.weight, linear.bias)
            out = th.empty_like(pre_activation)
            activation.forward_fn(x.device)(pre_activation, out)
            if derivatives:
                slopes.append(activation.derivative(pre_activation, out))
            inputs.append(out)
        eta = F.linear(inputs[-1], mlp.output.weight, mlp.output.bias)
    return inputs, slopes, eta


class MLPJacobian:
    """The Jacobian ``J = ∂η/∂θ`` of an MLP at ``θ_old`` on a batch, as the products ``J v`` and ``Jᵀ u``.

    Built from one forward pass (:func:`mlp_forward`) with ``θ_old``'s weights kept, so the products
    stay ``θ_old``'s while a line search moves the parameters. ``θ`` is ``params``, flat, in their
    order; each must be a weight or bias of the layers, or ``log_std`` (which ``η`` does not depend on:
    its block of ``J`` is zero, and the callers add what it contributes).

    :param mlp: the network; its output layer gives ``η`` (the mean, or the logits)
    :param x: the inputs (features), ``(N, n_0)``
    :param params: ``θ``
    :param log_std: SB3's state-independent log-std of a Gaussian, if it is among ``params``
    """

    def __init__(self, mlp: MLP, x: Tensor, params: Sequence[Tensor], log_std: Tensor | None = None) -> None:
        self.linears = mlp.linears
        self.layer_weights = [linear.weight.detach().clone() for linear in self.linears]
        self.inputs, self.derivatives, self.eta = mlp_forward(mlp, x)
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


def actor_unsupported(spec: MLPSpec | str, params: Sequence[Tensor] = ()) -> str | None:
    """Why :class:`PolicyMLPActor` cannot compute the products of ``spec``'s actor for ``params``, or None."""
    if isinstance(spec, str):
        return spec
    if spec.distribution not in (GAUSSIAN, CATEGORICAL):
        return f"the action distribution is a {spec.distribution}, not a diagonal Gaussian or categorical"
    if {id(p) for p in params} - {id(p) for p in spec.actor_parameters()}:
        return "some parameters of the policy step are not the MLP actor's"
    return None


def mlp_actor_unsupported(policy: nn.Module, params: Sequence[Tensor]) -> str | None:
    """:func:`actor_unsupported` of ``policy``'s spec."""
    return actor_unsupported(recognise(policy), params)


def trainable_actor_params(spec: MLPSpec) -> list[nn.Parameter]:
    """The MLP actor's parameters that require a gradient, in ``policy.parameters()``'s order."""
    actor = {id(p) for p in spec.actor_parameters()}
    return [p for p in spec.policy.parameters() if p.requires_grad and id(p) in actor]


class PolicyMLPActor:
    """SB3's MLP actor on a batch of observations, by hand: ``η`` and ``J`` at ``θ_old``, gradients, ``F v``.

    ``η`` (the Gaussian's mean or the logits) comes from one forward pass; the distributions are SB3's
    own, built from ``η`` as ``ActorCriticPolicy.get_distribution`` builds them. The policy gradient of
    an objective ``L(π)`` is ``Jᵀ ∂L/∂η`` (plus ``∂L/∂log σ``), with autograd only on the small graph
    from ``η`` to ``L``.

    :param spec: SB3's MLP policy with a diagonal Gaussian or categorical distribution (see :func:`actor_unsupported`)
    :param observations: the batch, as the rollout buffer gives it
    :param params: ``θ``, the flat vectors' order (the actor's parameters, or some of them)
    :param mask: the states that count in the means over the batch (None: all)
    """

    def __init__(self, spec: MLPSpec, observations: PyTorchObs, params: Sequence[Tensor], mask: Tensor | None = None) -> None:
        self.spec, self.policy, self.params, self.mask = spec, spec.policy, list(params), mask
        with th.no_grad():
            features = preprocess_obs(observations, self.policy.observation_space, self.policy.normalize_images)
            assert isinstance(features, Tensor)
            # SB3's preprocessing casts to float32; the layers may be float64 (the tests' exact checks).
            self.features = features.flatten(1).to(spec.actor.output.weight.dtype)
        self.gaussian = spec.distribution == GAUSSIAN
        self.jacobian = MLPJacobian(spec.actor, self.features, self.params, spec.log_std)
        self.std_old = None if spec.log_std is None else spec.log_std.detach().exp()  # σ at θ_old, for the Fisher

    @classmethod
    def from_policy(
        cls,
        policy: nn.Module,
        observations: PyTorchObs,
        params: Sequence[Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> PolicyMLPActor | None:
        """The actor of ``policy`` on ``observations`` for ``params`` (default: :func:`trainable_actor_params`), or None."""
        spec = recognise(policy)
        if actor_unsupported(spec, () if params is None else params) is not None:
            return None
        assert isinstance(spec, MLPSpec)
        params = trainable_actor_params(spec) if params is None else params
        return cls(spec, observations, params, mask) if params else None

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
        return mlp_forward(self.spec.actor, self.features, derivatives=False)[2]

    def distribution(self, outputs: Tensor) -> Distribution:
        """SB3's action distribution with parameters ``outputs`` (and the current log-std): a new object."""
        action_dist = self.policy.action_dist
        if self.gaussian:
            assert isinstance(action_dist, DiagGaussianDistribution)
            action_dist.proba_distribution(outputs, self.spec.log_std)  # type: ignore[arg-type]
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
    """``v -> F v`` of SB3's MLP actor on ``observations`` (mean over the states), or None if not covered."""
    actor = PolicyMLPActor.from_policy(policy, observations, params, mask)
    return None if actor is None else actor.fisher_vector_product()


# ---------------------------------------------------------------------------------------------- the backend


class MLPActor(ActorBackend):
    """The actor backend for SB3's MLP: one forward pass at ``θ_old`` serves the whole policy step.

    The same quantities as :class:`~sb3_trpo.common.backends.TorchActor` (to float rounding,
    ``tests/test_mlp_fisher.py``): ``g = Jᵀ ∂L/∂η`` and ``F v = Jᵀ M J v`` by hand, the distributions
    SB3's own, built from ``η``; candidates of the line search by one plain forward pass.
    """

    name = "mlp"

    def __init__(self, spec: MLPSpec) -> None:
        self.spec, self.params = spec, trainable_actor_params(spec)

    def problem(self, objective: PolicyObjective, fisher_sub_sampling_factor: int = 1) -> ActorProblem:
        return MLPActorProblem(self, objective, fisher_sub_sampling_factor)


class MLPActorProblem(ActorProblem):
    """:class:`ActorProblem` of :class:`PolicyMLPActor`."""

    def __init__(self, backend: MLPActor, objective: PolicyObjective, fisher_sub_sampling_factor: int) -> None:
        batch = objective.batch
        self.objective, self.params = objective, backend.params
        self.actor = PolicyMLPActor(backend.spec, batch.observations, self.params, batch.mask)
        self.old_distribution = self.actor.distribution(self.actor.outputs_old)
        surrogate, self.gradient = self.actor.gradient(objective.surrogate)
        self.before = PolicyEvaluation(surrogate.item())
        fisher_actor = self.actor
        if fisher_sub_sampling_factor > 1:
            fisher_actor = self.actor.subset(th.arange(0, len(batch), fisher_sub_sampling_factor, device=batch.actions.device))
        self._product = action_reduced_fisher(
            fisher_actor.fisher_vector_product(), self.old_distribution, objective.kl_action_reduction
        )

    def fisher_vector_product(self, vector: Tensor) -> Tensor:
        return self._product(vector)

    def evaluate(self) -> PolicyEvaluation:
        with th.no_grad():
            return self.objective.evaluate(self.actor.distribution(self.actor.outputs()), self.old_distribution)
