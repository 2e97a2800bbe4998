"""A fast critic fit: SB3's MLP value function regressed with a hand-written backward pass and Adam.

TRPO fits its critic by ``n_critic_updates`` epochs of minibatch Adam on the mean squared error to the
GAE returns. The network is tiny (HalfCheetah: 17 → 64 → 64 → 1), so with autograd and
``torch.optim.Adam`` each step costs far more in Python and dispatch overhead than in arithmetic.
Here the whole fit runs on one flat parameter buffer with preallocated work buffers:

- the value function ``v(x) = W_L φ(… φ(W_1 x + b_1) …) + b_L`` and the gradient of
  ``ℓ = (1/B) Σ_i (R_i − v(x_i))²`` are computed by hand, calling the same kernels autograd calls
  (``addmm`` forward, ``mm`` / ``sum`` backward, the activation's own ``*_backward`` op), so the
  gradient is the one autograd computes, to float rounding: two kernels differ, each faster on the
  CPU (NumPy's tanh, which rounds within a few ulps of torch's, and a narrow first layer's weight
  gradient summed in another order, see :func:`weight_gradient`);
- Adam updates the flat buffer in place with the operations of ``torch.optim.Adam``'s
  single-tensor step (the CPU default; its multi-tensor step computes the same expression).

Two layers:

- the core (:class:`FlatMLPCritic`, :class:`FlatAdam`, :func:`fit_value_function`) knows nothing of
  Stable-Baselines3: parameters are ``(weight, bias)`` tensors, minibatches are ``(x, R)`` pairs;
- the backend (:class:`FlatCritic`, built from the critic of an :class:`~sb3_trpo.accel.spec.MLPSpec`
  and a plain ``torch.optim.Adam``; :func:`rollout_minibatches` cuts the rollout buffer's minibatches
  cheaply) copies the critic's parameters and Adam state into the flat buffers, fits, and writes
  parameters, gradients and ``optimizer.state`` back in the format ``torch.optim.Adam`` uses, so that
  ``save()`` / ``load()``, ``optimizer.state_dict()`` and a later autograd step carry on exactly.
  ``tests/test_critic.py`` checks both layers against autograd + ``torch.optim.Adam``.

The minibatch mean goes through the reduction point (:mod:`sb3_trpo.common.reduction`): the
gradient is the sum over the minibatch times ``1/N`` of :func:`~sb3_trpo.common.reduction.mean_scale`
and passes :func:`~sb3_trpo.common.reduction.sum_across` once per step, one flat vector, which is
where training on many processes adds the other processes' minibatches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch as th
from torch import nn

from sb3_trpo.accel.activations import Activation, BackwardFn, ForwardFn
from sb3_trpo.accel.spec import MLPSpec
from sb3_trpo.accel.torch_compat import has_optimizer_hooks
from sb3_trpo.common.backends import CriticBackend, CriticFitResult
from sb3_trpo.common.reduction import mean_scale, sum_across

Tensor = th.Tensor
# ---------------------------------------------------------------------------------------------- the MLP


def _narrow_input(n_in: int, n_out: int) -> bool:
    """Whether :func:`weight_gradient` takes the ``(aᵀ δ)ᵀ`` form (and needs its scratch) for this layer."""
    return n_in < n_out


def weight_gradient(delta: Tensor, inputs: Tensor, out: Tensor, scratch: Tensor | None = None) -> None:
    """``out ← δᵀ a``, the gradient of a linear layer's weight ``(n_out, n_in)`` from ``δ (B, n_out)``, ``a (B, n_in)``.

    With a narrow input (``n_in < n_out``, e.g. the first layer on a few observation features) the CPU
    BLAS torch ships computes ``(aᵀ δ)ᵀ`` faster than ``δᵀ a`` (the product's long dimension is then the
    one it handles well); the same sums in another order, so equal to float rounding. ``scratch``
    (``(n_in, n_out)``) saves the temporary.
    """
    if _narrow_input(inputs.shape[1], delta.shape[1]):
        out.copy_(th.mm(inputs.t(), delta, out=scratch).t())
    else:
        th.mm(delta.t(), inputs, out=out)


@dataclass
class _Workspace:
    """Preallocated buffers for one minibatch size ``B``, and the argument tuples of every op of a step.

    Each tuple is built once (views included), so a step is nothing but the ops.
    """

    batch_size: int
    grad_scale: Tensor  # 2/B as autograd forms it: fl(1/B) in the working dtype, doubled (exactly); 0-dim
    hidden: list[tuple[Tensor, Tensor, Tensor, ForwardFn, Tensor]]  # (b_l, W_lᵀ, h_l, φ_l, a_l)
    output: tuple[Tensor, Tensor, Tensor]  # (b_L, W_Lᵀ, v (B, 1))
    values: Tensor  # v as (B,)
    residuals: Tensor  # v − R
    grad_values: Tensor  # δ_L = ∂ℓ/∂v as (B,)
    # top-down, l = L … 2: (δ_l, a_{l−1}, ∂ℓ/∂W_l, scratch_l, ∂ℓ/∂b_l, W_l, ∂ℓ/∂a_{l−1}, φ'_{l−1}, a or h_{l−1}, δ_{l−1});
    # scratch_l: :func:`weight_gradient`'s temporary where the layer's input is narrow, else None
    backward: list[tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor, BackwardFn, Tensor, Tensor]]
    first: tuple[Tensor, Tensor, Tensor | None, Tensor]  # (δ_1, ∂ℓ/∂W_1, scratch_1, ∂ℓ/∂b_1); a_0 = x is the minibatch


class FlatMLPCritic:
    """An MLP value function on one flat parameter buffer, with its MSE gradient computed by hand.

    ``h_1 = x W_1ᵀ + b_1``, ``a_l = φ_l(h_l)``, ``h_{l+1} = a_l W_{l+1}ᵀ + b_{l+1}``, ``v = h_L`` (one output).
    For a minibatch ``(x, R)`` of size ``B`` the loss is ``ℓ = (1/B) Σ_i (R_i − v_i)²`` and backpropagation
    gives, with ``δ_L = ∂ℓ/∂v = (2/B)(v − R)``:

    - ``∂ℓ/∂W_l = δ_lᵀ a_{l−1}`` (``a_0 = x``), ``∂ℓ/∂b_l = Σ_i δ_l,i``;
    - ``∂ℓ/∂a_{l−1} = δ_l W_l``, ``δ_{l−1} = ∂ℓ/∂a_{l−1} ⊙ φ'(h_{l−1})``.

    Each product is the call autograd makes for ``nn.Linear`` (``addmm`` forward; ``mm`` and ``sum``
    over the batch backward) and ``φ'`` is the activation's own backward op, so the gradient equals
    autograd's to float rounding: on the CPU tanh is NumPy's (see :meth:`Activation.forward_fn`),
    within a few float32 ulps of torch's, and the weight gradient of a layer with fewer inputs than
    outputs is summed in another order (:func:`weight_gradient`); otherwise bit for bit.

    :param layers: ``(W_l, b_l)`` for each layer, ``W_l`` of shape ``(n_l, n_{l−1})``, the last with ``n_L = 1``;
        copied into :attr:`params`, the flat buffer ``[vec(W_1); b_1; vec(W_2); b_2; …]``.
    :param activations: ``φ_l`` after each hidden layer (``len(layers) − 1`` of them), or one for all;
        an :class:`Activation` or its name.
    """

    def __init__(
        self,
        layers: Sequence[tuple[Tensor, Tensor]],
        activations: Activation | str | Sequence[Activation | str],
    ) -> None:
        if not layers:
            raise ValueError("layers must hold at least one (weight, bias) pair")
        n_hidden = len(layers) - 1
        if isinstance(activations, (Activation, str)):
            activations = [activations] * n_hidden
        self.activations = [a if isinstance(a, Activation) else Activation(a) for a in activations]
        if len(self.activations) != n_hidden:
            raise ValueError(f"{n_hidden} hidden layers need {n_hidden} activations, got {len(self.activations)}")
        self.layer_sizes = [int(layers[0][0].shape[1])]
        for weight, bias in layers:
            if weight.dim() != 2 or bias.shape != (weight.shape[0],) or weight.shape[1] != self.layer_sizes[-1]:
                raise ValueError(
                    f"layer shapes do not chain: weight {tuple(weight.shape)}, bias {tuple(bias.shape)} "
                    f"after {self.layer_sizes[-1]} features"
                )
            self.layer_sizes.append(int(weight.shape[0]))
        if self.layer_sizes[-1] != 1:
            raise ValueError(f"the last layer must have one output (the value), got {self.layer_sizes[-1]}")

        first = layers[0][0]
        self.dtype, self.device = first.dtype, first.device
        with th.no_grad():
            self.params = th.cat([t.detach().reshape(-1).to(self.dtype) for layer in layers for t in layer])
        self.grad = th.zeros_like(self.params)
        self.weights, self.biases = self._views(self.params)
        self.weight_grads, self.bias_grads = self._views(self.grad)
        self._largest: int = 0
        self._buffers: dict[str, list[Tensor]] = {}
        self._workspaces: dict[int, _Workspace] = {}

    @property
    def n_params(self) -> int:
        return self.params.numel()

    def _views(self, flat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``(W_l)`` and ``(b_l)`` as views of a flat buffer laid out like :attr:`params`."""
        weights, biases, offset = [], [], 0
        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:], strict=True):
            weights.append(flat[offset : offset + n_out * n_in].view(n_out, n_in))
            offset += n_out * n_in
            biases.append(flat[offset : offset + n_out])
            offset += n_out
        return weights, biases

    def split(self, flat: Tensor) -> list[Tensor]:
        """A flat vector laid out like :attr:`params` as ``[W_1, b_1, W_2, b_2, …]`` (views)."""
        weights, biases = self._views(flat)
        return [t for pair in zip(weights, biases, strict=True) for t in pair]

    def _workspace(self, batch_size: int) -> _Workspace:
        """The workspace for ``batch_size`` rows: row slices of buffers sized for the largest minibatch seen."""
        workspace = self._workspaces.get(batch_size)
        if workspace is None:
            # Buffers and views of the same kind as the parameters (inference tensors or not): they outlive the call.
            with th.inference_mode(self.params.is_inference()):
                if batch_size > self._largest:
                    self._allocate(batch_size)
                workspace = self._workspaces[batch_size] = self._build_workspace(batch_size)
        return workspace

    def _allocate(self, rows: int) -> None:
        def matrix(n: int) -> Tensor:
            return th.empty(rows, n, dtype=self.dtype, device=self.device)

        hidden = self.layer_sizes[1:-1]
        self._buffers = {
            name: [matrix(n) for n in hidden] for name in ("pre_activations", "activations", "grad_act", "grad_pre")
        }
        self._buffers["vectors"] = [matrix(1), matrix(1), matrix(1)]  # v, v − R, δ_L
        self._largest = rows
        self._workspaces.clear()

    def _build_workspace(self, rows: int) -> _Workspace:
        def rows_of(name: str) -> list[Tensor]:
            return [t[:rows] for t in self._buffers[name]]

        h, a, grad_a, delta = rows_of("pre_activations"), rows_of("activations"), rows_of("grad_act"), rows_of("grad_pre")
        values, residuals, grad_values = rows_of("vectors")
        deltas = [*delta, grad_values]  # δ_1 … δ_L
        inputs: list[Tensor | None] = [None, *a]  # a_0 = x … a_{L−1}
        backward = []
        for layer in range(len(self.activations), 0, -1):
            below = layer - 1
            activation = self.activations[below]
            saved = a[below] if activation.backward_uses_output else h[below]
            inputs_below = inputs[layer]
            assert inputs_below is not None
            backward.append(
                (
                    deltas[layer],
                    inputs_below,
                    self.weight_grads[layer],
                    self._weight_gradient_scratch(layer),
                    self.bias_grads[layer],
                    self.weights[layer],
                    grad_a[below],
                    activation.backward_fn(),
                    saved,
                    deltas[below],
                )
            )
        return _Workspace(
            batch_size=rows,
            # autograd's mean backward divides by B in the working dtype; the square's backward doubles.
            grad_scale=2 * mean_scale(rows, self.params),
            hidden=[
                (self.biases[i], self.weights[i].t(), h[i], self.activations[i].forward_fn(self.device), a[i])
                for i in range(len(self.activations))
            ],
            output=(self.biases[-1], self.weights[-1].t(), values),
            values=values.view(-1),
            residuals=residuals.view(-1),
            grad_values=grad_values.view(-1),
            backward=backward,
            first=(deltas[0], self.weight_grads[0], self._weight_gradient_scratch(0), self.bias_grads[0]),
        )

    def _weight_gradient_scratch(self, layer: int) -> Tensor | None:
        n_in, n_out = self.layer_sizes[layer], self.layer_sizes[layer + 1]
        return th.empty(n_in, n_out, dtype=self.dtype, device=self.device) if _narrow_input(n_in, n_out) else None

    def forward(self, x: Tensor) -> Tensor:
        """``v(x)``, shape ``(B, 1)``: a view of a work buffer, overwritten by the next call."""
        ws = self._workspace(x.shape[0])
        addmm, inputs = th.addmm, x
        for bias, weight_t, pre_activation, activation, out in ws.hidden:
            addmm(bias, inputs, weight_t, out=pre_activation)  # h_l = a_{l−1} W_lᵀ + b_l
            activation(pre_activation, out)  # a_l = φ_l(h_l)
            inputs = out
        bias, weight_t, values = ws.output
        addmm(bias, inputs, weight_t, out=values)
        return values

    def squared_error(self, x: Tensor, returns: Tensor) -> Tensor:
        """``Σ_i (v(x_i) − R_i)²``, a 0-dim tensor (``ℓ`` is it over ``B``); keeps what :meth:`backward` needs."""
        self.forward(x)
        ws = self._workspaces[x.shape[0]]
        th.sub(ws.values, returns, out=ws.residuals)
        return th.dot(ws.residuals, ws.residuals)

    def backward(self, x: Tensor) -> None:
        """``∇ℓ`` into :attr:`grad`, for the minibatch ``x`` of the last :meth:`squared_error` call."""
        ws = self._workspaces[x.shape[0]]
        mm, sum_, weight_grad = th.mm, th.sum, weight_gradient
        th.mul(ws.residuals, ws.grad_scale, out=ws.grad_values)  # δ_L = (2/B)(v − R)
        for delta, inputs, grad_weight, scratch, grad_bias, weight, grad_below, derivative, saved, out in ws.backward:
            weight_grad(delta, inputs, grad_weight, scratch)  # ∂ℓ/∂W_l = δ_lᵀ a_{l−1}
            sum_(delta, 0, out=grad_bias)  # ∂ℓ/∂b_l = Σ_i δ_l,i
            mm(delta, weight, out=grad_below)  # ∂ℓ/∂a_{l−1} = δ_l W_l
            derivative(grad_below, saved, out)  # δ_{l−1} = ∂ℓ/∂a_{l−1} ⊙ φ'(h_{l−1})
        delta, grad_weight, scratch, grad_bias = ws.first
        weight_grad(delta, x, grad_weight, scratch)
        sum_(delta, 0, out=grad_bias)

    def loss_and_gradient(self, x: Tensor, returns: Tensor) -> float:
        """``ℓ = (1/B) Σ_i (R_i − v(x_i))²``, with ``∇ℓ`` written into :attr:`grad`."""
        with th.no_grad():
            loss = self.squared_error(x, returns).item() / x.shape[0]
            self.backward(x)
        return loss


# ---------------------------------------------------------------------------------------------- Adam


@dataclass(frozen=True)
class AdamHyperparameters:
    """``torch.optim.Adam``'s options that enter the update (``amsgrad`` and ``maximize`` are not supported)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False


class FlatAdam:
    """``torch.optim.Adam`` on one flat parameter vector, with flat moment buffers.

    One step with gradient ``g`` (``t`` counts the steps, ``λ`` the weight decay):

    - ``θ ← θ (1 − η λ)`` if the decay is decoupled (AdamW), else ``g ← g + λ θ`` (L2);
    - ``m ← β₁ m + (1 − β₁) g`` (as ``m.lerp_(g, 1 − β₁)``), ``s ← β₂ s + (1 − β₂) g²``;
    - ``θ ← θ − η / (1 − β₁ᵗ) · m / (√s / √(1 − β₂ᵗ) + ε)``,

    the operations, in order and in the working dtype, of ``torch.optim.Adam``'s single-tensor step
    (bias corrections in Python floats, ``capturable=False``).

    :param params: the flat parameters ``θ``, updated in place.
    :param hyperparameters: ``η``, ``(β₁, β₂)``, ``ε``, ``λ``.
    :param exp_avg: ``m`` to continue from (copied); zeros if None.
    :param exp_avg_sq: ``s`` to continue from (copied); zeros if None.
    :param step: ``t`` so far.
    """

    def __init__(
        self,
        params: Tensor,
        hyperparameters: AdamHyperparameters,
        exp_avg: Tensor | None = None,
        exp_avg_sq: Tensor | None = None,
        step: int = 0,
    ) -> None:
        self.params = params
        self.hyperparameters = hyperparameters
        self.exp_avg = th.zeros_like(params) if exp_avg is None else exp_avg.detach().reshape(-1).to(params).clone()
        self.exp_avg_sq = th.zeros_like(params) if exp_avg_sq is None else exp_avg_sq.detach().reshape(-1).to(params).clone()
        self.step = step
        self._denominator = th.empty_like(params)
        self._decayed_grad = th.empty_like(params)
        # Constant factors as 0-dim tensors of the working dtype: the same value a Python float becomes
        # inside the kernel, without wrapping it into a tensor at every step.
        self._beta2, self._eps = (
            th.tensor(c, dtype=params.dtype, device=params.device) for c in (hyperparameters.betas[1], hyperparameters.eps)
        )

    def step_(self, grad: Tensor) -> None:
        """One Adam step with the flat gradient ``grad`` (left unchanged)."""
        lr, (beta1, beta2), weight_decay, decoupled = (
            self.hyperparameters.lr,
            self.hyperparameters.betas,
            self.hyperparameters.weight_decay,
            self.hyperparameters.decoupled_weight_decay,
        )
        params, denominator = self.params, self._denominator
        self.step += 1
        if weight_decay != 0:
            if decoupled:
                params.mul_(1 - lr * weight_decay)
            else:
                grad = th.add(grad, params, alpha=weight_decay, out=self._decayed_grad)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(self._beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.step)  # torch keeps t as a float tensor and reads it back with .item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        th.sqrt(self.exp_avg_sq, out=denominator)
        denominator.div_(bias_correction2_sqrt).add_(self._eps)
        params.addcdiv_(self.exp_avg, denominator, value=-step_size)


# ---------------------------------------------------------------------------------------------- the fit


def fit_value_function(
    critic: FlatMLPCritic, optimizer: FlatAdam, minibatches: Iterable[tuple[Tensor, Tensor]]
) -> CriticFitResult:
    """One Adam step on ``ℓ = (1/B) Σ_i (R_i − v(x_i))²`` per minibatch ``(x, R)``, in the order given.

    A minibatch whose loss is not finite is skipped (no gradient, no step, ``t`` unchanged) and counted,
    as in the autograd loop; ``critic.grad`` holds the gradient of the last applied step afterwards.
    """
    if optimizer.params is not critic.params:
        raise ValueError("the optimizer must update the critic's flat parameter buffer (critic.params)")
    result = CriticFitResult()
    squared_error, backward, step_, grad = critic.squared_error, critic.backward, optimizer.step_, critic.grad
    with th.inference_mode():  # the buffers are plain tensors: no autograd bookkeeping at all
        for x, returns in minibatches:
            batch_size = x.shape[0]
            # An empty minibatch has a NaN mean in the autograd loop: skipped there too.
            loss = squared_error(x, returns).item() / batch_size if batch_size else math.nan
            if not math.isfinite(loss):
                result.n_skipped_steps += 1
                continue
            backward(x)
            sum_across(grad)  # the reduction point: the other processes' minibatches, if any
            step_(grad)
            result.losses.append(loss)
    return result


def all_finite(*tensors: Tensor) -> bool:
    """Whether every element of ``tensors`` is finite (one reduction and one sync)."""
    return bool(th.stack([th.isfinite(t).all() for t in tensors]).all())


# ---------------------------------------------------------------------------------------------- the SB3 adapter

_ADAM_STATE_KEYS = {"step", "exp_avg", "exp_avg_sq"}


def critic_unsupported(spec: MLPSpec | str, optimizer: th.optim.Optimizer) -> str | None:
    """Why :class:`FlatCritic` cannot fit the critic of ``spec`` with ``optimizer`` as it steps, or None.

    Supported: the critic of an :class:`~sb3_trpo.accel.spec.MLPSpec` whose parameters all require a
    gradient, share a dtype and device, have no gradient hooks and are not shared with the rest of the
    policy; a plain ``torch.optim.Adam`` (or ``AdamW``) without amsgrad, maximize, capturable,
    differentiable or fused, the same settings for all the critic's parameters, no step hooks, and
    Adam state (if any) at the same step for all of them.
    """
    if isinstance(spec, str):
        return spec
    params = spec.critic.parameters()
    if not all(p.requires_grad for p in params):
        return "some critic parameters do not require a gradient"
    if len({(p.dtype, p.device) for p in params}) > 1 or not params[0].is_floating_point():
        return "the critic's parameters do not share one floating dtype and device"
    if any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in params):
        return "some critic parameters have gradient hooks"
    critic_ids = {id(p) for p in params}
    if len(critic_ids) != len(params):
        return "the critic uses a parameter twice"
    for name, p in spec.policy.named_parameters(remove_duplicate=False):
        if id(p) in critic_ids and not name.startswith(("mlp_extractor.value_net.", "value_net.")):
            return f"the critic shares a parameter with the rest of the policy ({name})"
    return _adam_unsupported(optimizer, params)


def _adam_unsupported(optimizer: th.optim.Optimizer, params: Sequence[nn.Parameter]) -> str | None:
    """Why the Adam step of :class:`FlatAdam` would not be ``optimizer.step()`` for ``params``, or None."""
    if type(optimizer) not in (th.optim.Adam, th.optim.AdamW) or "step" in vars(optimizer):
        return f"the optimizer is a {type(optimizer).__name__} (or a wrapped step), not a plain torch.optim.Adam"
    if has_optimizer_hooks(optimizer):
        return "the optimizer has step hooks"
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = [group_of.get(id(p)) for p in params]
    if any(group is None for group in groups):
        return "some critic parameters are not in the optimizer"
    settings = set()
    for group in groups:
        assert group is not None
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] or group["fused"]:
            return "the optimizer uses amsgrad, maximize, capturable, differentiable or fused"
        lr, betas = group["lr"], tuple(group["betas"])
        if any(isinstance(value, th.Tensor) for value in (lr, *betas)):
            return "the optimizer's lr or betas are tensors"
        settings.add((lr, betas, group["eps"], group["weight_decay"], bool(group.get("decoupled_weight_decay", False))))
    if len(settings) > 1:
        return "the critic's parameters are in param groups with different settings"
    steps = set()
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            steps.add(0.0)
        elif set(state) != _ADAM_STATE_KEYS:
            return f"unexpected Adam state keys {sorted(state)}"
        else:
            steps.add(float(state["step"]))
    if len(steps) > 1:
        return "the critic's parameters have taken different numbers of Adam steps"
    return None


def fast_critic_fit_unsupported(policy: nn.Module, optimizer: th.optim.Optimizer) -> str | None:
    """:func:`critic_unsupported` of ``policy``'s spec."""
    from sb3_trpo.accel.spec import recognise

    return critic_unsupported(recognise(policy), optimizer)


def _scalar_dtype() -> th.dtype:
    """The dtype ``torch.optim.Adam`` gives a new ``state['step']`` (capturable and fused off)."""
    return th.float64 if th.get_default_dtype() == th.float64 else th.float32


def fast_critic_fit(
    policy: nn.Module, optimizer: th.optim.Optimizer, minibatches: Iterable[tuple[Tensor, Tensor]]
) -> CriticFitResult | None:
    """:func:`fit_flat_critic` of ``policy``'s spec; None (nothing done, nothing drawn) where it is unsupported."""
    from sb3_trpo.accel.spec import recognise

    spec = recognise(policy)
    if critic_unsupported(spec, optimizer) is not None:
        return None
    assert isinstance(spec, MLPSpec)
    return fit_flat_critic(spec, optimizer, minibatches)


def fit_flat_critic(
    spec: MLPSpec, optimizer: th.optim.Optimizer, minibatches: Iterable[tuple[Tensor, Tensor]]
) -> CriticFitResult:
    """Fit the critic of ``spec`` as the autograd loop does, on flat buffers (the caller checked it is supported).

    Equivalent, minibatch for minibatch, to::

        for observations, returns in minibatches:
            loss = mean((returns - policy.predict_values(observations).flatten()) ** 2)
            if not isfinite(loss): skip
            optimizer.zero_grad(); loss.backward(); (actor grads ← None); optimizer.step()

    with the settings of ``optimizer``'s param group (its current ``lr``) and its Adam state for the
    critic's parameters, if any. Afterwards the critic's parameters, their ``.grad`` (the last applied
    step's) and ``optimizer.state`` (``step``, ``exp_avg``, ``exp_avg_sq``, the tensors ``torch.optim.Adam``
    keeps) are what that loop leaves. The actor's parameters and state are not touched.

    Nothing non-finite is ever written: a minibatch with a non-finite loss is skipped and counted, as in
    the loop; should the fitted parameters or moments still not be finite (a gradient overflowing while
    the loss did not), the whole fit is dropped, the policy and optimizer are left as they were, and
    every minibatch is counted as skipped.

    :param spec: SB3's MLP policy (see :func:`critic_unsupported`).
    :param optimizer: the optimizer of the autograd loop, normally ``policy.optimizer``.
    :param minibatches: ``(observations, returns)`` pairs as the rollout buffer gives them, in order.
    :return: the losses of the applied steps and the number of skipped steps.
    """
    from stable_baselines3.common.preprocessing import preprocess_obs

    policy, params = spec.policy, spec.critic.parameters()
    group = next(g for g in optimizer.param_groups if any(p is params[0] for p in g["params"]))
    hyperparameters = AdamHyperparameters(
        lr=float(group["lr"]),
        betas=(float(group["betas"][0]), float(group["betas"][1])),
        eps=float(group["eps"]),
        weight_decay=float(group["weight_decay"]),
        decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
    )
    states = [optimizer.state.get(p) or {} for p in params]
    step = int(float(states[0]["step"])) if states[0] else 0

    critic = FlatMLPCritic([(linear.weight, linear.bias) for linear in spec.critic.linears], spec.critic.activations)
    moments = None
    if step > 0:
        moments = [th.cat([state[key].detach().reshape(-1) for state in states]) for key in ("exp_avg", "exp_avg_sq")]
    exp_avg, exp_avg_sq = moments or (None, None)
    adam = FlatAdam(critic.params, hyperparameters, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, step=step)

    observation_space, normalize_images = policy.observation_space, policy.normalize_images

    def features() -> Iterable[tuple[Tensor, Tensor]]:
        for observations, returns in minibatches:
            x = preprocess_obs(observations, observation_space, normalize_images=normalize_images)
            assert isinstance(x, Tensor)
            if returns.shape != (x.shape[0],):
                raise ValueError(f"returns must have shape ({x.shape[0]},), got {tuple(returns.shape)}")
            yield x.flatten(1), returns

    result = fit_value_function(critic, adam, features())
    if result.n_steps == 0:
        return result
    if not all_finite(critic.params, adam.exp_avg, adam.exp_avg_sq):
        return CriticFitResult(losses=[], n_skipped_steps=result.n_steps + result.n_skipped_steps)

    with th.no_grad():
        for p, state, value, grad, exp_avg, exp_avg_sq in zip(
            params,
            states,
            critic.split(critic.params),
            critic.split(critic.grad),
            critic.split(adam.exp_avg),
            critic.split(adam.exp_avg_sq),
            strict=True,
        ):
            p.copy_(value)
            p.grad = grad.clone(memory_format=th.contiguous_format)
            if state and th.is_tensor(state["step"]):
                state["step"].fill_(float(adam.step))
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
            else:
                optimizer.state[p] = {
                    "step": th.tensor(float(adam.step), dtype=_scalar_dtype()),
                    "exp_avg": th.empty_like(p, memory_format=th.preserve_format).copy_(exp_avg),
                    "exp_avg_sq": th.empty_like(p, memory_format=th.preserve_format).copy_(exp_avg_sq),
                }
    return result


def rollout_minibatches(rollout_buffer: object, batch_size: int, n_epochs: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(observations, returns)`` of ``n_epochs`` passes of ``rollout_buffer.get(batch_size)``, drawn cheaper.

    The same minibatches, in the same order, from the same random permutations (one
    ``np.random.permutation`` per pass, drawn when the pass starts, as ``get()`` draws it), but cut from
    two tensors converted once instead of six arrays indexed and copied per minibatch. For SB3's own
    ``RolloutBuffer`` once ``get()`` has flattened it (TRPO's policy step does); any other buffer is read
    through ``get()`` itself.
    """
    from stable_baselines3.common.buffers import RolloutBuffer

    if type(rollout_buffer) is not RolloutBuffer or not rollout_buffer.generator_ready:
        for _ in range(n_epochs):
            for data in rollout_buffer.get(batch_size):  # type: ignore[attr-defined]
                yield data.observations, data.returns
        return
    n_samples = rollout_buffer.buffer_size * rollout_buffer.n_envs
    observations = rollout_buffer.to_torch(rollout_buffer.observations)
    returns = rollout_buffer.to_torch(rollout_buffer.returns).reshape(-1)
    for _ in range(n_epochs):
        indices = th.as_tensor(np.random.permutation(n_samples), device=observations.device)
        for start in range(0, n_samples, batch_size):
            batch = indices[start : start + batch_size]
            yield observations[batch], returns[batch]


class FlatCritic(CriticBackend):
    """The critic backend for SB3's MLP critic with Adam: :func:`fit_flat_critic` on the rollout's minibatches.

    Where the optimizer no longer allows it (its settings and state, checked before each fit, e.g. Adam
    state restored from elsewhere), that fit runs on ``fallback``, the reference backend, with a
    warning.
    """

    name = "flat"

    def __init__(self, spec: MLPSpec, actor_params: list[nn.Parameter], fallback: CriticBackend) -> None:
        self.spec, self.actor_params, self.fallback = spec, actor_params, fallback

    def fit(self, rollout_buffer: object, batch_size: int, n_epochs: int) -> CriticFitResult:
        optimizer = self.spec.policy.optimizer
        # The network was checked when the backend was chosen; the optimizer's state and settings may change since.
        reason = _adam_unsupported(optimizer, self.spec.critic.parameters())
        if reason is not None:
            import warnings

            warnings.warn(f"the flat critic fit cannot run this time ({reason}); fitting with torch", stacklevel=2)
            return self.fallback.fit(rollout_buffer, batch_size, n_epochs)  # type: ignore[arg-type]
        result = fit_flat_critic(self.spec, optimizer, rollout_minibatches(rollout_buffer, batch_size, n_epochs))
        for param in self.actor_params:  # as the reference loop leaves them, whatever the optimizer
            param.grad = None
        return result
