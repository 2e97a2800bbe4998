"""The one activation table: each hidden-layer nonlinearity with its torch and NumPy kernels and its derivative.

Every accelerator takes its activations from here: the NumPy rollouts (:mod:`~sb3_trpo.accel.rollout`),
the hand-written actor products (:mod:`~sb3_trpo.accel.actor`) and the flat critic fit
(:mod:`~sb3_trpo.accel.critic`). A row holds, for one activation ``a = φ(h)``:

- ``torch``: ``(h, out) -> out ← φ(h)``, the kernel the ``torch.nn`` module calls (on the CPU, tanh is
  NumPy's vectorised one on views of the same memory: much faster there on these sizes, within a few
  float32 ulps of torch's);
- ``numpy``: ``x -> φ(x)`` on float32 arrays, for the rollouts (torch's kernel on a view where NumPy
  has no equivalent);
- ``backward``: ``(∂ℓ/∂a, a or h, out) -> out ← ∂ℓ/∂a ⊙ φ'(h)``, the op autograd's derivative formula
  calls, so hand-written backward passes equal autograd's; ``backward_uses_output`` says whether it
  reads ``a`` (tanh, sigmoid, relu) or ``h``.

The backward ops are ``torch.ops.aten.*_backward.grad_input``, which torch does not promise to keep:
:func:`~sb3_trpo.accel.torch_compat.private_torch_api_unavailable` guards them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F
from torch import nn

Tensor = th.Tensor
ForwardFn = Callable[[Tensor, Tensor], object]  # (h, out) -> out ← φ(h)
BackwardFn = Callable[[Tensor, Tensor, Tensor], object]  # (∂ℓ/∂a, a or h, out) -> out ← ∂ℓ/∂h
NumpyFn = Callable[[np.ndarray], np.ndarray]
Options = dict[str, Any]


@dataclass(frozen=True)
class Kernels:
    """One row of :data:`ACTIVATIONS`: the module it describes and its kernels, each built from the options."""

    module: type[nn.Module]
    torch: Callable[[Options, th.device | None], ForwardFn]  # the device picks the kernel
    numpy: Callable[[Options], NumpyFn]
    backward: Callable[[Options], BackwardFn]
    backward_uses_output: bool
    options: Callable[[nn.Module], Options | None] = lambda module: {}  # None: this instance is not covered


def _aten(name: str) -> Callable[..., object]:
    return getattr(th.ops.aten, name).grad_input  # resolved when a kernel is built, after the version guard


def _torch_tanh(options: Options, device: th.device | None) -> ForwardFn:
    if device is not None and device.type == "cpu":
        return lambda h, out: np.tanh(h.numpy(), out=out.numpy())
    return lambda h, out: th.tanh(h, out=out)


def _via_torch(function: Callable[[Tensor], Tensor]) -> NumpyFn:
    """A NumPy kernel from a torch function, on a view of the array (no copy)."""
    return lambda x: function(th.from_numpy(x)).numpy()


def _copy_into(function: Callable[[Tensor], Tensor]) -> ForwardFn:
    return lambda h, out: out.copy_(function(h))


def _leaky_relu_options(module: nn.Module) -> Options | None:
    assert isinstance(module, nn.LeakyReLU)
    # In place, autograd tests the output's sign instead of the input's: the same test for a slope > 0.
    return None if module.inplace and module.negative_slope <= 0 else {"slope": float(module.negative_slope)}


def _elu_options(module: nn.Module) -> Options | None:
    assert isinstance(module, nn.ELU)
    return None if module.inplace else {"alpha": float(module.alpha)}  # in place, autograd differentiates from a


def _gelu_options(module: nn.Module) -> Options | None:
    assert isinstance(module, nn.GELU)
    return {"approximate": module.approximate}


ACTIVATIONS: dict[str, Kernels] = {
    "tanh": Kernels(
        nn.Tanh,
        torch=_torch_tanh,
        numpy=lambda o: np.tanh,
        backward=lambda o: lambda g, a, out: _aten("tanh_backward")(g, a, grad_input=out),
        backward_uses_output=True,
    ),
    "relu": Kernels(
        nn.ReLU,
        torch=lambda o, d: lambda h, out: th.clamp_min(h, 0, out=out),  # torch.relu is clamp_min(h, 0)
        numpy=lambda o: lambda x: np.maximum(x, 0),
        backward=lambda o: lambda g, a, out: _aten("threshold_backward")(g, a, 0, grad_input=out),
        backward_uses_output=True,
    ),
    "sigmoid": Kernels(
        nn.Sigmoid,
        torch=lambda o, d: lambda h, out: th.sigmoid(h, out=out),
        numpy=lambda o: _via_torch(th.sigmoid),
        backward=lambda o: lambda g, a, out: _aten("sigmoid_backward")(g, a, grad_input=out),
        backward_uses_output=True,
    ),
    "leaky_relu": Kernels(
        nn.LeakyReLU,
        torch=lambda o, d: _copy_into(lambda h: F.leaky_relu(h, o["slope"])),
        numpy=lambda o: lambda x: np.where(x > 0, x, x * np.float32(o["slope"])),
        backward=lambda o: lambda g, h, out: _aten("leaky_relu_backward")(g, h, o["slope"], False, grad_input=out),
        backward_uses_output=False,
        options=_leaky_relu_options,
    ),
    "elu": Kernels(
        nn.ELU,
        torch=lambda o, d: _copy_into(lambda h: F.elu(h, o["alpha"])),
        numpy=lambda o: lambda x: np.where(x > 0, x, np.float32(o["alpha"]) * np.expm1(x)),
        backward=lambda o: lambda g, h, out: _aten("elu_backward")(g, o["alpha"], 1, 1, False, h, grad_input=out),
        backward_uses_output=False,
        options=_elu_options,
    ),
    "silu": Kernels(
        nn.SiLU,
        torch=lambda o, d: _copy_into(F.silu),
        numpy=lambda o: _via_torch(F.silu),
        backward=lambda o: lambda g, h, out: _aten("silu_backward")(g, h, grad_input=out),
        backward_uses_output=False,
    ),
    "gelu": Kernels(
        nn.GELU,
        torch=lambda o, d: _copy_into(lambda h: F.gelu(h, approximate=o["approximate"])),
        numpy=lambda o: _via_torch(lambda h: F.gelu(h, approximate=o["approximate"])),
        backward=lambda o: lambda g, h, out: _aten("gelu_backward")(g, h, approximate=o["approximate"], grad_input=out),
        backward_uses_output=False,
        options=_gelu_options,
    ),
}
"""Each supported activation by name: tanh, relu, sigmoid, leaky_relu, elu, silu, gelu."""


@dataclass(frozen=True)
class Activation:
    """A hidden-layer nonlinearity ``a = φ(h)``: a row of :data:`ACTIVATIONS` and its options.

    :param name: a key of :data:`ACTIVATIONS`.
    :param options: the module's settings the kernels need (``slope`` of leaky_relu, ``alpha`` of elu,
        ``approximate`` of gelu), PyTorch's defaults when omitted.
    """

    name: str
    options: Options = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.name!r}")
        defaults: dict[str, Options] = {"leaky_relu": {"slope": 0.01}, "elu": {"alpha": 1.0}, "gelu": {"approximate": "none"}}
        object.__setattr__(self, "options", {**defaults.get(self.name, {}), **self.options})
        if self.options.get("approximate", "none") not in ("none", "tanh"):
            raise ValueError(f'approximate must be "none" or "tanh", got {self.options["approximate"]!r}')

    @property
    def kernels(self) -> Kernels:
        return ACTIVATIONS[self.name]

    @property
    def backward_uses_output(self) -> bool:
        """Whether ``∂ℓ/∂h`` is computed from ``a = φ(h)`` (tanh, sigmoid, relu) rather than from ``h``."""
        return self.kernels.backward_uses_output

    def forward_fn(self, device: th.device | None = None) -> ForwardFn:
        """``(h, out) -> out ← φ(h)`` with torch's kernel, for tensors on ``device`` (NumPy's tanh on the CPU)."""
        return self.kernels.torch(self.options, device)

    def numpy_fn(self) -> NumpyFn:
        """``x -> φ(x)`` on float32 arrays."""
        return self.kernels.numpy(self.options)

    def backward_fn(self) -> BackwardFn:
        """``(∂ℓ/∂a, a or h, out) -> out ← ∂ℓ/∂a ⊙ φ'(h)``, the op autograd calls."""
        return self.kernels.backward(self.options)

    def derivative(self, pre_activation: Tensor, activation: Tensor) -> Tensor:
        """``φ'(h)``: the backward op applied to ones."""
        saved = activation if self.backward_uses_output else pre_activation
        out = th.empty_like(pre_activation)
        self.backward_fn()(th.ones_like(pre_activation), saved, out)
        return out


def activation_from_module(module: nn.Module) -> Activation | None:
    """The :class:`Activation` an activation module computes, or None where the table has no exact counterpart."""
    for name, kernels in ACTIVATIONS.items():
        if type(module) is kernels.module:
            options = kernels.options(module)
            return None if options is None else Activation(name, options)
    return None
